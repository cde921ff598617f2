/**
 * A qcow (version 1) image as a block device.
 *
 * Spec: qemu block/qcow.c (there is no other specification of qcow v1);
 * qemu iotests 092 for the header checks.
 *
 * Vocabulary (qemu / here): cluster = cluster; L1 table / L2 table = same;
 * "compressed cluster" = an L2 entry with bit 63 set; backing file = the image
 * that unallocated clusters read from. qcow v1 has no refcounts, no zero
 * clusters, no snapshots: space of overwritten compressed clusters is simply
 * leaked, as qemu does.
 *
 * Concurrency: reads and writes into clusters that are already allocated
 * (uncompressed) go straight to the file. Everything that changes metadata
 * (allocating an L2 table or a cluster, rewriting a compressed cluster,
 * deallocating) runs under one mutex, which also covers the append point
 * (`end`). Compression happens before taking the mutex, so concurrent writes
 * compress in parallel and only the append is serialised. Metadata is
 * written through (data first, then the L2 entries, then the L1 entry for a
 * new table), so the file is consistent after every write.
 */

import * as path from 'node:path';
import { type BlockDevice, type Extent, checkRange, checkWritable, isZero, growDevice } from '../../core/device.js';
import { Mutex } from '../../core/mutex.js';
import { ImageError, fieldError } from '../../core/errors.js';
import type { Image, ImageInfo } from '../types.js';
import { compressCluster, decompressCluster } from './compress.js';
import { HEADER_SIZE, OFF, QCOW_MAGIC, QCOW_VERSION, type QcowHeader, encodeHeader, parseHeader } from './header.js';
import { type L2Table, type TableGeometry, decodeL1, decodeL2, encodeL2Entries, encodeU64 } from './tables.js';


/**
 * L1 entries we hold in memory at most (256 MiB): 64 TiB of disk with the
 * default 2 MiB per L2 table, far more with larger clusters. qemu allows up to
 * 2 GiB of L1; an image needing more than this is refused, not loaded.
 */
export const MAX_L1_ENTRIES = 32 * 1024 * 1024;

export interface QcowGeometry {
  header: QcowHeader;
  virtualSize: number;
  fileSize: number;
  l1Offset: number;
  l1Size: number;
  backingName?: string;
  reserved: Array<readonly [number, number]>;
}

/** Read and validate the header (iotests 092 checks and more). */
export async function readHeader(child: BlockDevice): Promise<QcowGeometry> {
  const fileSize = child.size;
  if (fileSize < HEADER_SIZE) {
    throw fieldError('invalid-format', 'qcow', 'header', 0, fileSize, `is cut short: the file has ${fileSize} bytes, the header needs ${HEADER_SIZE}`);
  }
  const head = new Uint8Array(HEADER_SIZE);
  await child.read(head, 0);
  const h = parseHeader(head);
  const err = (kind: 'invalid-format' | 'corrupt' | 'unsupported', field: keyof typeof OFF, value: number | bigint | string, why: string) =>
    fieldError(kind, 'qcow', field, OFF[field], value, why);
  if (h.magic !== QCOW_MAGIC) throw err('invalid-format', 'magic', `0x${h.magic.toString(16)}`, "is not the qcow magic 'QFI\\xfb'");
  if (h.version !== QCOW_VERSION) {
    throw err('invalid-format', 'version', h.version, h.version === 2 || h.version === 3 ? 'is a qcow2 image, not qcow (version 1)' : 'is not 1');
  }
  if (h.clusterBits < 9 || h.clusterBits > 16) {
    throw err('invalid-format', 'cluster_bits', h.clusterBits, 'must be 9..16 (clusters of 512 bytes to 64 KiB)');
  }
  if (h.l2Bits < 9 - 3 || h.l2Bits > 16 - 3) {
    throw err('invalid-format', 'l2_bits', h.l2Bits, 'must be 6..13 (L2 tables of 512 bytes to 64 KiB)');
  }
  if (h.cryptMethod === 1) {
    throw err('unsupported', 'crypt_method', h.cryptMethod, 'is AES: encrypted qcow images are not supported (qemu refuses them in system emulators too)');
  }
  if (h.cryptMethod !== 0) throw err('invalid-format', 'crypt_method', h.cryptMethod, 'is not a qcow encryption method');
  if (h.size <= 1n) throw err('invalid-format', 'size', h.size, 'is too small (qemu requires at least 2 bytes)');
  const shift = BigInt(h.clusterBits + h.l2Bits);
  if (h.size > (1n << 64n) - 1n - (1n << shift)) throw err('invalid-format', 'size', h.size, 'overflows when rounded up to whole L2 tables');
  const l1SizeBig = (h.size + (1n << shift) - 1n) >> shift;
  if (l1SizeBig * 8n > BigInt(fileSize)) {
    throw err(
      'corrupt',
      'size',
      h.size,
      `needs an L1 table of ${l1SizeBig} entries (${l1SizeBig * 8n} bytes), more than the whole file (${fileSize} bytes)`,
    );
  }
  if (h.size > BigInt(Number.MAX_SAFE_INTEGER)) throw err('unsupported', 'size', h.size, 'is above 2^53 bytes');
  if (l1SizeBig > BigInt(MAX_L1_ENTRIES)) {
    throw err('unsupported', 'size', h.size, `needs an L1 table of ${l1SizeBig} entries; at most ${MAX_L1_ENTRIES} are supported`);
  }
  const l1Size = Number(l1SizeBig);
  if (h.l1TableOffset + BigInt(l1Size * 8) > BigInt(fileSize)) {
    throw err(
      'corrupt',
      'l1_table_offset',
      h.l1TableOffset,
      `puts the L1 table (${l1Size * 8} bytes) past the end of the file (${fileSize} bytes)`,
    );
  }
  const l1Offset = Number(h.l1TableOffset);
  if (l1Size > 0 && l1Offset < HEADER_SIZE) {
    throw err('corrupt', 'l1_table_offset', h.l1TableOffset, `overlaps the header (${HEADER_SIZE} bytes)`);
  }
  const reserved: Array<readonly [number, number]> = [[0, HEADER_SIZE]];
  if (l1Size > 0) reserved.push([l1Offset, l1Offset + 8 * l1Size]);
  let backingName: string | undefined;
  if (h.backingFileOffset !== 0n) {
    if (h.backingFileSize > 1023) throw err('invalid-format', 'backing_file_size', h.backingFileSize, 'is longer than 1023 bytes');
    if (h.backingFileOffset + BigInt(h.backingFileSize) > BigInt(fileSize)) {
      throw err('corrupt', 'backing_file_offset', h.backingFileOffset, `puts the backing file name past the end of the file (${fileSize} bytes)`);
    }
    const bo = Number(h.backingFileOffset);
    const nameBytes = new Uint8Array(h.backingFileSize);
    await child.read(nameBytes, bo);
    const nul = nameBytes.indexOf(0);
    backingName = Buffer.from(nul < 0 ? nameBytes : nameBytes.subarray(0, nul)).toString('utf8');
    if (backingName === '') backingName = undefined;
    if (h.backingFileSize > 0) reserved.push([bo, bo + h.backingFileSize]);
  }
  // qemu sees size / 512 whole sectors.
  const virtualSize = Number(h.size / 512n) * 512;
  return { header: h, virtualSize, fileSize, l1Offset, l1Size, backingName, reserved };
}

/** Read and validate the L1 table in chunks of 128 Ki entries. */
export async function readL1(child: BlockDevice, g: QcowGeometry): Promise<Float64Array> {
  const l1 = new Float64Array(g.l1Size);
  const tg = tableGeometry(g);
  const CHUNK = 128 * 1024;
  const bytes = new Uint8Array(8 * Math.min(CHUNK, g.l1Size));
  for (let first = 0; first < g.l1Size; first += CHUNK) {
    const n = Math.min(CHUNK, g.l1Size - first);
    const view = bytes.subarray(0, 8 * n);
    await child.read(view, g.l1Offset + 8 * first);
    decodeL1(view, tg, g.l1Offset, l1, first);
  }
  return l1;
}

function tableGeometry(g: QcowGeometry): TableGeometry {
  return {
    clusterBits: g.header.clusterBits,
    l2Bits: g.header.l2Bits,
    fileSize: g.fileSize,
    virtualSize: g.virtualSize,
    reserved: g.reserved,
  };
}

interface Piece {
  cluster: number;
  inCluster: number;
  /** Position in the caller's buffer. */
  pos: number;
  data: Uint8Array;
  /** The piece covers the whole cluster (up to the end of the disk). */
  full: boolean;
  compressed?: Uint8Array;
}

export interface QcowImageOptions {
  writable: boolean;
  compress?: boolean;
  backing?: Image;
  /** The image's path, for `full-backing-filename`. */
  path?: string;
}

export class QcowImage implements Image {
  readonly format = 'qcow';
  readonly size: number;
  readonly readOnly: boolean;
  readonly backingName?: string;
  private readonly cs: number;
  private readonly cb: number;
  private readonly l2Entries: number;
  private readonly meta = new Mutex();
  private readonly tables = new Map<number, Promise<L2Table>>();
  private readonly loaded = new Map<number, L2Table>();
  private readonly cacheCap: number;
  private end: number;
  private geometry: TableGeometry;
  private lastCompressed?: { off: number; data: Uint8Array };
  private closed = false;

  constructor(
    private readonly child: BlockDevice,
    private readonly g: QcowGeometry,
    private readonly l1: Float64Array,
    private readonly opts: QcowImageOptions,
  ) {
    this.size = g.virtualSize;
    this.readOnly = !opts.writable;
    this.cb = g.header.clusterBits;
    this.cs = 2 ** this.cb;
    this.l2Entries = 2 ** g.header.l2Bits;
    this.backingName = g.backingName;
    this.end = g.fileSize;
    this.geometry = tableGeometry(g);
    // Keep about 32 MiB of decoded L2 tables (12 bytes per entry), at least 16.
    this.cacheCap = Math.max(16, Math.floor((32 << 20) / (12 * this.l2Entries)));
  }

  get clusterSize(): number {
    return this.cs;
  }

  /**
   * Before writing into an existing image: prove that no two structures share
   * storage. qcow has no reference counts, and qemu never checks this, but a
   * cluster placed over an L2 table or over another cluster would turn our
   * writes into corruption of something else. Reads every L2 table once;
   * memory is two bitmaps of one bit per 512 bytes of file.
   *
   * Header, L1 table and backing file name, L2 tables and uncompressed
   * clusters must each own their 512-byte sectors; compressed data may share
   * sectors with other compressed data (qemu packs it back to back) but not
   * with anything else.
   */
  async verifyNoOverlaps(): Promise<void> {
    const sectors = Math.ceil(this.end / 512) + 1;
    const exclusive = new Uint8Array(Math.ceil(sectors / 8));
    const shared = new Uint8Array(Math.ceil(sectors / 8));
    const test = (bm: Uint8Array, s: number) => (bm[s >>> 3]! >> (s & 7)) & 1;
    const set = (bm: Uint8Array, s: number) => (bm[s >>> 3]! |= 1 << (s & 7));
    const claim = (start: number, end: number, isShared: boolean, what: () => [string, number, number | bigint]) => {
      for (let s = Math.floor(start / 512); s < Math.ceil(end / 512); s++) {
        if (test(exclusive, s) || (!isShared && test(shared, s))) {
          const [field, at, value] = what();
          throw fieldError('corrupt', 'qcow', field, at, value, `shares the file's bytes [${s * 512}, ${s * 512 + 512}) with another structure of the image`);
        }
        set(isShared ? shared : exclusive, s);
      }
    };
    let metaEnd = 0;
    for (const [a, b] of this.g.reserved) {
      for (let s = Math.floor(a / 512); s < Math.ceil(b / 512); s++) set(exclusive, s);
      metaEnd = Math.max(metaEnd, b);
    }
    const l2Bytes = 8 * this.l2Entries;
    const buf = new Uint8Array(l2Bytes);
    for (let i = 0; i < this.l1.length; i++) {
      const off = this.l1[i]!;
      if (off === 0) continue;
      claim(off, off + l2Bytes, false, () => [`l1_table[${i}]`, this.g.l1Offset + 8 * i, off]);
      await this.child.read(buf, off);
      const t = decodeL2(buf, this.geometry, i, off);
      for (let j = 0; j < this.l2Entries; j++) {
        const c = t.off[j]!;
        if (c === 0) continue;
        const len = t.csize[j] || this.cs;
        claim(c, c + len, t.csize[j]! > 0, () => [`l2_table[${i}][${j}]`, off + 8 * j, c]);
      }
    }
  }

  // ---- L2 tables -------------------------------------------------------

  private async table(index: number): Promise<L2Table | undefined> {
    const off = this.l1[index]!;
    if (off === 0) return undefined;
    const cached = this.tables.get(index);
    if (cached) {
      this.tables.delete(index);
      this.tables.set(index, cached);
      return cached;
    }
    const p = (async () => {
      const bytes = new Uint8Array(8 * this.l2Entries);
      await this.child.read(bytes, off);
      // Entries may point at clusters appended since open: validate against the current end.
      this.geometry = { ...this.geometry, fileSize: Math.max(this.end, this.child.size) };
      const t = decodeL2(bytes, this.geometry, index, off);
      this.loaded.set(index, t);
      return t;
    })();
    this.tables.set(index, p);
    p.catch(() => {
      if (this.tables.get(index) === p) this.tables.delete(index);
    });
    this.evict();
    return p;
  }

  /**
   * The cached table for `index`, marked busy so it stays cached (and so the
   * only copy anyone modifies) until `unpin`. Undefined when there is none.
   */
  private async pin(index: number): Promise<L2Table | undefined> {
    for (;;) {
      const t = await this.table(index);
      if (!t) return undefined;
      // Evicted between load and now? Load again: the disk copy is current.
      if (this.loaded.get(index) === t) {
        t.busy++;
        return t;
      }
    }
  }

  private unpin(t: L2Table): void {
    t.busy--;
  }

  private evict(): void {
    if (this.tables.size <= this.cacheCap) return;
    for (const k of this.tables.keys()) {
      if (this.tables.size <= this.cacheCap) break;
      const t = this.loaded.get(k);
      if (t && t.busy === 0) {
        this.tables.delete(k);
        this.loaded.delete(k);
      }
    }
  }

  private clusterEntry(t: L2Table | undefined, cluster: number): { off: number; csize: number } {
    if (!t) return { off: 0, csize: 0 };
    const j = cluster % this.l2Entries;
    return { off: t.off[j]!, csize: t.csize[j]! };
  }

  // ---- reads -----------------------------------------------------------

  private async readCompressed(off: number, csize: number, cluster: number): Promise<Uint8Array> {
    if (this.lastCompressed?.off === off) return this.lastCompressed.data;
    const raw = new Uint8Array(csize);
    await this.child.read(raw, off);
    const data = await decompressCluster(raw, this.cs);
    if (!data) {
      const index = Math.floor(cluster / this.l2Entries);
      const j = cluster % this.l2Entries;
      const t = this.loaded.get(index);
      throw fieldError(
        'corrupt',
        'qcow',
        `l2_table[${index}][${j}]`,
        (t?.offset ?? 0) + 8 * j,
        off,
        `points at compressed data [${off}, ${off + csize}) that does not inflate to one ${this.cs}-byte cluster`,
      );
    }
    this.lastCompressed = { off, data };
    return data;
  }

  private async readBacking(buf: Uint8Array, offset: number): Promise<void> {
    const b = this.opts.backing;
    if (!b) {
      buf.fill(0);
      return;
    }
    const avail = Math.max(0, Math.min(buf.length, b.size - offset));
    if (avail > 0) await b.read(buf.subarray(0, avail), offset);
    buf.fill(0, avail);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    const jobs: Promise<void>[] = [];
    let runFile = -1;
    let runStart = 0;
    let runLen = 0;
    const flushRun = () => {
      if (runLen > 0) track(jobs, this.child.read(buf.subarray(runStart, runStart + runLen), runFile));
      runLen = 0;
    };
    let pos = 0;
    let t: L2Table | undefined;
    let tIndex = -1;
    try {
      while (pos < buf.length) {
        const abs = offset + pos;
        const cluster = Math.floor(abs / this.cs);
        const inCluster = abs - cluster * this.cs;
        const n = Math.min(this.cs - inCluster, buf.length - pos);
        const index = Math.floor(cluster / this.l2Entries);
        if (index !== tIndex) {
          t = await this.table(index);
          tIndex = index;
        }
        const e = this.clusterEntry(t, cluster);
        const view = buf.subarray(pos, pos + n);
        if (e.off === 0) {
          flushRun();
          track(jobs, this.readBacking(view, abs));
        } else if (e.csize > 0) {
          flushRun();
          const at = pos;
          track(jobs, this.readCompressed(e.off, e.csize, cluster).then((d) => buf.set(d.subarray(inCluster, inCluster + n), at)));
        } else {
          const fileOff = e.off + inCluster;
          if (runLen > 0 && runFile + runLen === fileOff) runLen += n;
          else {
            flushRun();
            runFile = fileOff;
            runStart = pos;
            runLen = n;
          }
        }
        pos += n;
      }
      flushRun();
    } catch (e) {
      await Promise.allSettled(jobs); // no request left running (or rejecting unobserved)
      throw e;
    }
    await Promise.all(jobs);
  }

  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    if (length === 0) return { offset, length: 0, kind: 'unallocated' };
    const end = offset + length;
    const n = this.l2Entries;
    let cluster = Math.floor(offset / this.cs);
    let kind: 'data' | 'unallocated' | undefined;
    let stop = offset;
    // One table lookup per L2 table; the entries inside it are scanned synchronously.
    scan: while (stop < end) {
      const index = Math.floor(cluster / n);
      const t = this.l1[index] === 0 ? undefined : await this.table(index);
      const tableEnd = (index + 1) * n;
      for (; cluster < tableEnd; cluster++) {
        const k = t && t.off[cluster - index * n] !== 0 ? 'data' : 'unallocated';
        if (kind === undefined) kind = k;
        else if (k !== kind) break scan;
        stop = Math.min(end, (cluster + 1) * this.cs);
        if (stop >= end) break scan;
      }
    }
    if (kind === 'unallocated' && this.opts.backing) {
      // This layer has nothing here: what the guest sees is the backing file's.
      const b = this.opts.backing;
      if (offset >= b.size) return { offset, length: stop - offset, kind: 'unallocated' };
      const e = await b.status(offset, Math.min(stop, b.size) - offset);
      return { offset, length: e.length, kind: e.kind };
    }
    return { offset, length: stop - offset, kind: kind! };
  }

  /** This layer's run at `offset`, with its host offset (map, check): see LayerRun in ../types.ts. */
  async layerStatus(offset: number, length: number): Promise<import('../types.js').LayerRun> {
    checkRange(this, offset, length, 'layerStatus');
    const end = offset + length;
    let run: import('../types.js').LayerRun | undefined;
    for (let pos = offset; pos < end; ) {
      const cluster = Math.floor(pos / this.cs);
      const index = Math.floor(cluster / this.l2Entries);
      const e = this.clusterEntry(this.l1[index] === 0 ? undefined : await this.table(index), cluster);
      const n = Math.min((cluster + 1) * this.cs, end) - pos;
      const host = e.off + (pos - cluster * this.cs);
      const kind = e.off === 0 ? 'unallocated' : e.csize > 0 ? 'compressed' : 'data';
      if (!run) run = kind === 'data' ? { kind, length: n, host } : { kind, length: n };
      else if (kind !== run.kind || kind === 'compressed' || (kind === 'data' && run.host! + run.length !== host)) break;
      else run.length += n;
      pos += n;
    }
    return run ?? { kind: 'unallocated', length };
  }

  get backingImage(): Image | undefined {
    return this.opts.backing;
  }

  // ---- writes ----------------------------------------------------------

  private split(buf: Uint8Array, offset: number): Piece[] {
    const pieces: Piece[] = [];
    let pos = 0;
    while (pos < buf.length) {
      const abs = offset + pos;
      const cluster = Math.floor(abs / this.cs);
      const inCluster = abs - cluster * this.cs;
      const n = Math.min(this.cs - inCluster, buf.length - pos);
      const full = inCluster === 0 && (n === this.cs || abs + n === this.size);
      pieces.push({ cluster, inCluster, pos, data: buf.subarray(pos, pos + n), full });
      pos += n;
    }
    return pieces;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, buf.length, 'write');
    if (buf.length === 0) return;
    const direct: Promise<void>[] = [];
    const needAlloc: Piece[] = [];
    let t: L2Table | undefined;
    let tIndex = -1;
    try {
      for (const p of this.split(buf, offset)) {
        const index = Math.floor(p.cluster / this.l2Entries);
        if (index !== tIndex) {
          t = await this.table(index);
          tIndex = index;
        }
        const e = this.clusterEntry(t, p.cluster);
        if (e.off !== 0 && e.csize === 0) track(direct, this.child.write(p.data, e.off + p.inCluster));
        else if (e.off === 0 && !this.opts.backing && isZero(p.data)) continue; // already reads as zero
        else needAlloc.push(p);
      }
    } catch (e) {
      await Promise.allSettled(direct);
      throw e;
    }
    if (needAlloc.length) {
      if (this.opts.compress) {
        await Promise.all(
          needAlloc.map(async (p) => {
            if (!p.full || isZero(p.data)) return;
            const cluster = p.data.length === this.cs ? p.data : padded(p.data, this.cs);
            p.compressed = await compressCluster(cluster);
          }),
        );
      }
      direct.push(this.allocate(needAlloc));
    }
    await Promise.all(direct);
  }

  /** Allocate clusters for pieces (under the metadata mutex) and write them. */
  private async allocate(pieces: Piece[]): Promise<void> {
    const release = await this.meta.lock();
    // Tables touched, pinned while we change them; new tables are published last.
    const touched = new Map<number, { t: L2Table; isNew: boolean; from: number; to: number }>();
    try {
      const writes: Array<{ off: number; data: Uint8Array }> = [];
      const compressedBlobs: Array<{ p: Piece; t: L2Table; j: number }> = [];
      const normal: Array<{ t: L2Table; j: number; content: Uint8Array }> = [];

      for (const p of pieces) {
        const index = Math.floor(p.cluster / this.l2Entries);
        const j = p.cluster % this.l2Entries;
        let entry = touched.get(index);
        if (!entry) {
          const existing = await this.pin(index);
          if (existing) entry = { t: existing, isNew: false, from: j, to: j };
          else {
            const off = alignUp(this.end, this.cs);
            this.end = off + 8 * this.l2Entries;
            const t: L2Table = {
              index,
              offset: off,
              off: new Float64Array(this.l2Entries),
              csize: new Uint32Array(this.l2Entries),
              busy: 1,
            };
            entry = { t, isNew: true, from: j, to: j };
          }
          touched.set(index, entry);
        }
        const t = entry.t;
        // Re-check under the mutex: another writer may have allocated it meanwhile.
        if (t.off[j] !== 0 && t.csize[j] === 0) {
          writes.push({ off: t.off[j]! + p.inCluster, data: p.data });
          continue;
        }
        if (t.off[j] === 0 && !this.opts.backing && isZero(p.data)) continue;
        entry.from = entry.to === entry.from ? j : Math.min(entry.from, j);
        entry.to = Math.max(entry.to, j + 1);
        if (p.compressed) {
          compressedBlobs.push({ p, t, j });
          continue;
        }
        let content: Uint8Array;
        if (p.full && p.data.length === this.cs) content = p.data;
        else {
          content = new Uint8Array(this.cs);
          const guest = p.cluster * this.cs;
          if (t.off[j] !== 0) content.set(await this.readCompressed(t.off[j]!, t.csize[j]!, p.cluster));
          else if (this.opts.backing) await this.readBacking(content.subarray(0, Math.min(this.cs, this.size - guest)), guest);
          content.set(p.data, p.inCluster);
        }
        normal.push({ t, j, content });
      }

      // Normal clusters: consecutive at the aligned end; neighbours merge into one write.
      let runOff = -1;
      let run: Uint8Array[] = [];
      let runBytes = 0;
      const flushRun = () => {
        if (run.length === 0) return;
        writes.push({ off: runOff, data: run.length === 1 ? run[0]! : concat(run, runBytes) });
        run = [];
        runBytes = 0;
      };
      const assigned: Array<{ t: L2Table; j: number; off: number; csize: number }> = [];
      for (const n of normal) {
        const off = alignUp(this.end, this.cs);
        this.end = off + this.cs;
        if (run.length && runOff + runBytes === off && runBytes < 8 << 20) {
          run.push(n.content);
          runBytes += this.cs;
        } else {
          flushRun();
          runOff = off;
          run = [n.content];
          runBytes = this.cs;
        }
        assigned.push({ t: n.t, j: n.j, off, csize: 0 });
      }
      flushRun();
      // Compressed clusters: appended back to back, unaligned, in one write.
      if (compressedBlobs.length) {
        const start = this.end;
        let total = 0;
        for (const c of compressedBlobs) total += c.p.compressed!.length;
        const blob = new Uint8Array(total);
        let at = 0;
        for (const c of compressedBlobs) {
          blob.set(c.p.compressed!, at);
          assigned.push({ t: c.t, j: c.j, off: start + at, csize: c.p.compressed!.length });
          at += c.p.compressed!.length;
        }
        this.end = start + total;
        writes.push({ off: start, data: blob });
      }
      // Data first; only then do the tables point at it.
      await this.ensureChildSize(this.end);
      await Promise.all(writes.map((w) => this.child.write(w.data, w.off)));
      for (const a of assigned) {
        a.t.off[a.j] = a.off;
        a.t.csize[a.j] = a.csize;
      }
      this.lastCompressed = undefined;
      for (const [index, e] of touched) {
        if (e.isNew) {
          await this.child.write(encodeL2Entries(e.t, this.cb, 0, this.l2Entries), e.t.offset);
          await this.child.write(encodeU64(e.t.offset), this.g.l1Offset + 8 * index);
          this.l1[index] = e.t.offset;
          this.loaded.set(index, e.t);
          this.tables.set(index, Promise.resolve(e.t));
        } else if (e.to > e.from) {
          await this.child.write(encodeL2Entries(e.t, this.cb, e.from, e.to), e.t.offset + 8 * e.from);
        }
      }
    } finally {
      for (const e of touched.values()) this.unpin(e.t);
      this.evict();
      release();
    }
  }

  /**
   * Make the child at least `end` bytes long: growable children (new files)
   * extend by writing, an existing file opened for writing through resize
   * (only ever growing it: we hold the metadata mutex).
   */
  private async ensureChildSize(end: number): Promise<void> {
    await growDevice(this.child, end, 'qcow');
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, length, 'writeZeroes');
    const zero = new Uint8Array(Math.min(length, 1 << 20));
    const dealloc: number[] = [];
    const partial: Array<[number, number]> = [];
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const cluster = Math.floor(pos / this.cs);
      const inCluster = pos - cluster * this.cs;
      const n = Math.min(this.cs - inCluster, end - pos);
      const t = await this.table(Math.floor(cluster / this.l2Entries));
      const e = this.clusterEntry(t, cluster);
      const full = inCluster === 0 && (n === this.cs || pos + n === this.size);
      if (!this.opts.backing && e.off === 0) {
        /* already zero */
      } else if (!this.opts.backing && full) dealloc.push(cluster);
      else partial.push([pos, n]);
      pos += n;
    }
    for (const [at, n] of partial) {
      for (let done = 0; done < n; done += zero.length) await this.write(zero.subarray(0, Math.min(zero.length, n - done)), at + done);
    }
    if (dealloc.length) await this.deallocate(dealloc);
  }

  /** Without a backing file an unallocated cluster reads as zero: drop the mapping (the space is leaked, as in qemu). */
  private async deallocate(clusters: number[]): Promise<void> {
    const release = await this.meta.lock();
    const spans = new Map<number, { t: L2Table; from: number; to: number }>();
    try {
      for (const c of clusters) {
        const index = Math.floor(c / this.l2Entries);
        const j = c % this.l2Entries;
        let s = spans.get(index);
        if (!s) {
          const t = await this.pin(index);
          if (!t) continue;
          s = { t, from: j, to: j };
          spans.set(index, s);
        }
        if (s.t.off[j] === 0) continue;
        s.t.off[j] = 0;
        s.t.csize[j] = 0;
        s.from = s.to === s.from ? j : Math.min(s.from, j);
        s.to = Math.max(s.to, j + 1);
      }
      this.lastCompressed = undefined;
      for (const s of spans.values()) {
        if (s.to > s.from) await this.child.write(encodeL2Entries(s.t, this.cb, s.from, s.to), s.t.offset + 8 * s.from);
      }
    } finally {
      for (const s of spans.values()) this.unpin(s.t);
      this.evict();
      release();
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.closed) return;
    // Wait for metadata updates in progress, then make them durable.
    const release = await this.meta.lock();
    release();
    await this.child.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      await this.flush();
    } finally {
      this.closed = true;
      await this.child.close();
      await this.opts.backing?.close();
    }
  }

  async info(): Promise<ImageInfo> {
    const info: ImageInfo = { format: 'qcow', 'virtual-size': this.size, 'cluster-size': this.cs, 'dirty-flag': false };
    if (this.backingName !== undefined) {
      info['backing-filename'] = this.backingName;
      // As qemu: a relative name is relative to the image's directory.
      if (this.opts.path !== undefined) {
        info['full-backing-filename'] = path.isAbsolute(this.backingName)
          ? this.backingName
          : path.join(path.dirname(this.opts.path), this.backingName);
      }
    }
    return info;
  }
}

/**
 * Keep a request for a later Promise.all, observing its rejection now: the
 * caller may still be awaiting other things when it fails, and an unobserved
 * rejection must not escape as an unhandled one.
 */
function track(jobs: Promise<void>[], p: Promise<void>): void {
  p.catch(() => {});
  jobs.push(p);
}

function alignUp(x: number, a: number): number {
  return Math.ceil(x / a) * a;
}

function padded(data: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  out.set(data);
  return out;
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Lay out a new image as qemu-img does: 48-byte header, L1 table right after
 * it, zero-filled in whole 512-byte sectors; 4 KiB clusters, 512-entry
 * (4 KiB) L2 tables. The size is rounded up to a whole sector, as qemu does.
 */
export async function createQcow(child: BlockDevice, p: { size: number; compress: boolean }): Promise<QcowImage> {
  const clusterBits = 12;
  const l2Bits = 9;
  const size = Math.ceil(p.size / 512) * 512;
  if (size === 0) throw new ImageError('usage', 'qcow: image size is too small, cannot be zero length', { format: 'qcow', value: p.size });
  const l1Size = Math.ceil(size / 2 ** (clusterBits + l2Bits));
  const l1Offset = HEADER_SIZE;
  const header: QcowHeader = {
    magic: QCOW_MAGIC,
    version: QCOW_VERSION,
    backingFileOffset: 0n,
    backingFileSize: 0,
    mtime: 0,
    size: BigInt(size),
    clusterBits,
    l2Bits,
    cryptMethod: 0,
    l1TableOffset: BigInt(l1Offset),
  };
  await child.write(encodeHeader(header), 0);
  const l1Bytes = Math.ceil((8 * l1Size) / 512) * 512;
  const zero = new Uint8Array(Math.min(l1Bytes, 1 << 20));
  for (let at = 0; at < l1Bytes; at += zero.length) {
    await child.write(zero.subarray(0, Math.min(zero.length, l1Bytes - at)), l1Offset + at);
  }
  const fileSize = l1Offset + l1Bytes;
  const g: QcowGeometry = {
    header,
    virtualSize: size,
    fileSize,
    l1Offset,
    l1Size,
    reserved: [
      [0, HEADER_SIZE],
      [l1Offset, l1Offset + 8 * l1Size],
    ],
  };
  return new QcowImage(child, g, new Float64Array(l1Size), { writable: true, compress: p.compress });
}
