/**
 * A qcow (version 1) image on the shared engine (../engine): this file holds
 * only what is qcow's own, the header checks, the L1/L2 tables and where new
 * clusters go; the engine reads, writes, copies on write, compresses and
 * decompresses.
 *
 * Spec: qemu block/qcow.c (there is no other specification of qcow v1);
 * qemu iotests 092 for the header checks.
 *
 * Vocabulary (qemu / here): cluster = cluster; L1 table / L2 table = same;
 * "compressed cluster" = an L2 entry with bit 63 set; backing file = the image
 * that unallocated clusters read from. qcow v1 has no refcounts, no zero
 * clusters, no snapshots: space of overwritten compressed clusters is simply
 * leaked, as qemu does, and a cluster written as zero (without a backing
 * file) is unmapped.
 *
 * Allocation is append-only: a new L2 table, then clusters, at the end of the
 * file (compressed data back to back, unaligned); a run of whole clusters
 * gets every new L2 table it crosses first, then one host range. The engine writes a
 * cluster's data before `commit` points the table at it; changed L2 entries
 * are written back in batches (at most DIRTY_TABLES tables held, and at
 * flush), a new table before the L1 entry that points at it, so the file is
 * consistent whenever the tables reach it.
 */

import * as path from 'node:path';
import type { BlockDevice } from '../../core/device.js';
import { Mutex } from '../../core/mutex.js';
import { ImageError, fieldError } from '../../core/errors.js';
import type { Image, ImageInfo } from '../types.js';
import { TableCache } from '../engine/cache.js';
import { MappedDevice, type EngineOptions } from '../engine/engine.js';
import { DescribedImage } from '../engine/image.js';
import type { Mapping, MappedFormat } from '../engine/mapping.js';
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

export interface QcowImageOptions {
  writable: boolean;
  compress?: boolean;
  backing?: Image;
  /** The image's path, for `full-backing-filename`. */
  path?: string;
  /** The image is new: it reads as zero everywhere. */
  zeroInit?: boolean;
}

/** Clusters reserved at a time for packing compressed data. */
const PACK_CLUSTERS = 16;

/** Changed L2 tables held before they are written back. */
const DIRTY_TABLES = 64;

interface Dirty {
  t: L2Table;
  /** The table is new: written whole, then its L1 entry. */
  isNew: boolean;
  from: number;
  to: number;
}

/** The qcow driver for the engine: lookup over the L1/L2 tables, append allocation, batched table write-back. */
export class QcowFormat implements MappedFormat {
  readonly name = 'qcow';
  readonly size: number;
  readonly clusterSize: number;
  readonly writeCodec = 'deflate' as const;
  private readonly cb: number;
  readonly l2Entries: number;
  private readonly cache: TableCache<L2Table>;
  private readonly dirty = new Map<number, Dirty>();
  private readonly writeBack = new Mutex();
  /** The append point. */
  private end: number;
  /** The run compressed data is packed into: [packAt, packEnd) is free. */
  private packAt = 0;
  private packEnd = 0;

  constructor(
    private readonly child: BlockDevice,
    readonly g: QcowGeometry,
    private readonly l1: Float64Array,
    private readonly hasBacking: boolean,
  ) {
    this.size = g.virtualSize;
    this.cb = g.header.clusterBits;
    this.clusterSize = 2 ** this.cb;
    this.l2Entries = 2 ** g.header.l2Bits;
    this.end = g.fileSize;
    // Keep about 32 MiB of decoded L2 tables (12 bytes per entry), at least 16.
    this.cache = new TableCache(Math.max(16, Math.floor((32 << 20) / (12 * this.l2Entries))));
  }

  /** The L2 table for L1 index `index` (a changed one as changed), or undefined when there is none. */
  private async table(index: number): Promise<L2Table | undefined> {
    const d = this.dirty.get(index);
    if (d) return d.t;
    const off = this.l1[index]!;
    if (off === 0) return undefined;
    return this.cache.get(index, async () => {
      const bytes = new Uint8Array(8 * this.l2Entries);
      await this.child.read(bytes, off);
      // Entries may point at clusters appended since open: validate against the current end.
      return decodeL2(bytes, { ...tableGeometry(this.g), fileSize: Math.max(this.end, this.child.size) }, index, off);
    });
  }

  async lookup(offset: number, length: number): Promise<Mapping> {
    const cs = this.clusterSize;
    const n = this.l2Entries;
    const end = offset + length;
    let cluster = Math.floor(offset / cs);
    const within = offset - cluster * cs;
    let index = Math.floor(cluster / n);
    let t = await this.table(index);
    const j0 = cluster - index * n;
    const off = t ? t.off[j0]! : 0;
    if (off !== 0 && t!.csize[j0]! > 0) {
      return { kind: 'compressed', length: Math.min(length, cs - within), host: off, stored: t!.csize[j0]!, codec: 'deflate' };
    }
    // A run of unallocated clusters, or of data clusters stored one after another.
    let stop = (cluster + 1) * cs;
    for (cluster++; stop < end; cluster++) {
      if (cluster >= (index + 1) * n) {
        index++;
        t = await this.table(index);
      }
      if (!t && off === 0) {
        // No table: all of it is unallocated.
        stop = (index + 1) * n * cs;
        cluster = (index + 1) * n - 1;
        continue;
      }
      const j = cluster - index * n;
      const o = t ? t.off[j]! : 0;
      if (off === 0 ? o !== 0 : o !== off + (cluster * cs - (offset - within)) || t!.csize[j]! > 0) break;
      stop += cs;
    }
    const len = Math.min(stop, end) - offset;
    return off === 0 ? { kind: 'unallocated', length: len } : { kind: 'data', length: len, host: off + within };
  }

  /** The table for the cluster at `offset`, made (in memory, at the end of the file) when there is none. */
  private async tableFor(offset: number): Promise<{ t: L2Table; j: number }> {
    const cluster = Math.floor(offset / this.clusterSize);
    const index = Math.floor(cluster / this.l2Entries);
    let t = await this.table(index);
    if (!t) {
      const at = alignUp(this.end, this.clusterSize);
      this.end = at + 8 * this.l2Entries;
      t = { index, offset: at, off: new Float64Array(this.l2Entries), csize: new Uint32Array(this.l2Entries), busy: 0 };
      this.dirty.set(index, { t, isNew: true, from: 0, to: 0 });
    }
    return { t, j: cluster - index * this.l2Entries };
  }

  allocate(offset: number): Promise<number> {
    return this.allocateRun(offset, 1);
  }

  /**
   * Host space for `clusters` whole clusters from `offset`, one after
   * another (the engine's run path; `allocate` is a run of one). qcow v1
   * places L2 tables and data clusters at the same append point, so every
   * L2 table the run crosses that does not exist yet is made here, before
   * the data range: made later (at commit) a table would land after it, and
   * one made in the middle would split it. A run may so cross any number of
   * tables and still be one host range, one write (the engine never has to
   * cut it at a table boundary). Under the engine's allocation lock.
   */
  async allocateRun(offset: number, clusters: number): Promise<number> {
    const first = Math.floor(offset / this.clusterSize);
    for (let c = first; c < first + clusters; c += this.l2Entries - (c % this.l2Entries)) await this.tableFor(c * this.clusterSize);
    const at = alignUp(this.end, this.clusterSize);
    this.end = at + clusters * this.clusterSize;
    return at;
  }

  /** Map `clusters` clusters from `offset` to the clusters from `host` (written already). Under the engine's allocation lock. */
  async commitRun(offset: number, clusters: number, host: number): Promise<void> {
    for (let i = 0; i < clusters; i++) await this.setEntry(offset + i * this.clusterSize, host + i * this.clusterSize, 0);
    await this.flushIfFull();
  }

  /**
   * Compressed data is packed back to back into runs of PACK_CLUSTERS
   * clusters, so that clusters stored whole (allocated between them by
   * concurrent writers) stay aligned without a gap before each.
   */
  async allocateCompressed(offset: number, stored: number): Promise<number> {
    await this.tableFor(offset);
    if (this.packAt + stored > this.packEnd) {
      const chunk = Math.max(PACK_CLUSTERS * this.clusterSize, alignUp(stored, this.clusterSize));
      if (this.packEnd !== this.end || this.packEnd === 0) this.packAt = alignUp(this.end, this.clusterSize);
      this.packEnd = this.packAt + chunk;
      this.end = this.packEnd;
    }
    const at = this.packAt;
    this.packAt += stored;
    return at;
  }

  async commit(offset: number, host: number): Promise<void> {
    await this.setEntry(offset, host, 0);
    await this.flushIfFull();
  }

  async commitCompressed(offset: number, host: number, stored: number): Promise<void> {
    await this.setEntry(offset, host, stored);
    await this.flushIfFull();
  }

  /** Without a backing file an unmapped cluster reads as zero: unmap it (its space is leaked, as in qemu). */
  async markZero(offset: number): Promise<boolean> {
    if (this.hasBacking) return false;
    const cluster = Math.floor(offset / this.clusterSize);
    const t = await this.table(Math.floor(cluster / this.l2Entries));
    if (t && t.off[cluster % this.l2Entries] !== 0) {
      await this.setEntry(offset, 0, 0);
      await this.flushIfFull();
    }
    return true;
  }

  /** Point the L2 entry of the cluster at `offset` to `host` (`stored` bytes when compressed), the table marked changed. */
  private async setEntry(offset: number, host: number, stored: number): Promise<void> {
    const { t, j } = await this.tableFor(offset);
    t.off[j] = host;
    t.csize[j] = stored;
    const d = this.dirty.get(t.index);
    if (!d) this.dirty.set(t.index, { t, isNew: false, from: j, to: j + 1 });
    else if (d.to === d.from) Object.assign(d, { from: j, to: j + 1 });
    else Object.assign(d, { from: Math.min(d.from, j), to: Math.max(d.to, j + 1) });
  }

  private async flushIfFull(): Promise<void> {
    if (this.dirty.size > DIRTY_TABLES) await this.flush();
  }

  /** Write the changed tables back: entries of existing tables; a new table whole, then its L1 entry. */
  async flush(): Promise<void> {
    await this.writeBack.run(async () => {
      const batch = [...this.dirty.values()];
      this.dirty.clear();
      // The tables stay visible to lookups while they are written (data is on disk already).
      for (const d of batch) {
        if (d.isNew) this.l1[d.t.index] = d.t.offset;
        this.cache.put(d.t.index, d.t);
      }
      for (const d of batch) {
        if (d.isNew) {
          await this.child.write(encodeL2Entries(d.t, this.cb, 0, this.l2Entries), d.t.offset);
          await this.child.write(encodeU64(d.t.offset), this.g.l1Offset + 8 * d.t.index);
        } else if (d.to > d.from) {
          await this.child.write(encodeL2Entries(d.t, this.cb, d.from, d.to), d.t.offset + 8 * d.from);
        }
      }
    });
  }

  /** Where the compressed cluster at host offset `host` is mapped from, for a message (scans the range). */
  async entryOf(offset: number, length: number, host: number): Promise<{ field: string; at: number; csize: number } | undefined> {
    const cs = this.clusterSize;
    for (let pos = offset - (offset % cs); pos < offset + length; pos += cs) {
      const cluster = pos / cs;
      const index = Math.floor(cluster / this.l2Entries);
      const j = cluster % this.l2Entries;
      const t = await this.table(index);
      if (t && t.off[j] === host && t.csize[j]! > 0) return { field: `l2_table[${index}][${j}]`, at: t.offset + 8 * j, csize: t.csize[j]! };
    }
    return undefined;
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
    for (const [a, b] of this.g.reserved) {
      for (let s = Math.floor(a / 512); s < Math.ceil(b / 512); s++) set(exclusive, s);
    }
    const l2Bytes = 8 * this.l2Entries;
    const buf = new Uint8Array(l2Bytes);
    const geometry = tableGeometry(this.g);
    for (let i = 0; i < this.l1.length; i++) {
      const off = this.l1[i]!;
      if (off === 0) continue;
      claim(off, off + l2Bytes, false, () => [`l1_table[${i}]`, this.g.l1Offset + 8 * i, off]);
      await this.child.read(buf, off);
      const t = decodeL2(buf, geometry, i, off);
      for (let j = 0; j < this.l2Entries; j++) {
        const c = t.off[j]!;
        if (c === 0) continue;
        const len = t.csize[j] || this.clusterSize;
        claim(c, c + len, t.csize[j]! > 0, () => [`l2_table[${i}][${j}]`, off + 8 * j, c]);
      }
    }
  }
}

/**
 * The engine's device, naming the L2 entry of a compressed cluster that does
 * not inflate (as qcow always did). Whole clusters not stored yet take the
 * engine's run path (allocateRun/commitRun: one host range and one write for
 * all of them, across L2 tables); zeros written where the image reads zero
 * (no backing file) store nothing (skipZeroWrites), as qemu's qcow leaves
 * them unallocated.
 */
class QcowDevice extends MappedDevice {
  constructor(
    private readonly q: QcowFormat,
    o: EngineOptions,
  ) {
    super(q, { ...o, skipZeroWrites: true });
  }

  override async read(buf: Uint8Array, offset: number): Promise<void> {
    try {
      await super.read(buf, offset);
    } catch (e) {
      if (!(e instanceof ImageError) || e.context.field !== 'compressed cluster' || typeof e.context.offset !== 'number') throw e;
      const host = e.context.offset;
      const entry = await this.q.entryOf(offset, buf.length, host);
      if (!entry) throw e;
      throw fieldError(
        'corrupt',
        'qcow',
        entry.field,
        entry.at,
        host,
        `points at compressed data [${host}, ${host + entry.csize}) that does not inflate to one ${this.q.clusterSize}-byte cluster`,
      );
    }
  }
}

export class QcowImage extends DescribedImage {
  readonly backingName?: string;
  private readonly q: QcowFormat;
  private readonly backing?: Image;

  constructor(child: BlockDevice, g: QcowGeometry, l1: Float64Array, opts: QcowImageOptions) {
    const q = new QcowFormat(child, g, l1, !!opts.backing);
    const dev = new QcowDevice(q, { container: child, writable: opts.writable, backing: opts.backing, compress: opts.compress, zeroInit: opts.zeroInit });
    super('qcow', dev, async () => describeQcow(q, g.backingName, opts.path));
    this.q = q;
    this.backing = opts.backing;
    this.backingName = g.backingName;
  }

  get clusterSize(): number {
    return this.q.clusterSize;
  }

  get backingImage(): Image | undefined {
    return this.backing;
  }

  verifyNoOverlaps(): Promise<void> {
    return this.q.verifyNoOverlaps();
  }
}

function describeQcow(q: QcowFormat, backingName: string | undefined, imagePath: string | undefined): ImageInfo {
  const info: ImageInfo = { format: 'qcow', 'virtual-size': q.size, 'cluster-size': q.clusterSize, 'dirty-flag': false };
  if (backingName !== undefined) {
    info['backing-filename'] = backingName;
    // As qemu: a relative name is relative to the image's directory.
    if (imagePath !== undefined) {
      info['full-backing-filename'] = path.isAbsolute(backingName) ? backingName : path.join(path.dirname(imagePath), backingName);
    }
  }
  return info;
}

function alignUp(x: number, a: number): number {
  return Math.ceil(x / a) * a;
}

/**
 * Lay out a new image as qemu-img does: 48-byte header, L1 table right after
 * it, zero-filled in whole 512-byte sectors; 4 KiB clusters, 512-entry
 * (4 KiB) L2 tables. The size is rounded up to a whole sector, as qemu does.
 * (`clusterBits` / `l2Bits`: other geometries qemu reads, 9..16 and 6..13,
 * for tests that need L2 tables covering little; qemu-img never makes them.)
 */
export async function createQcow(child: BlockDevice, p: { size: number; compress: boolean; clusterBits?: number; l2Bits?: number }): Promise<QcowImage> {
  const clusterBits = p.clusterBits ?? 12;
  const l2Bits = p.l2Bits ?? 9;
  if (clusterBits < 9 || clusterBits > 16 || l2Bits < 6 || l2Bits > 13) {
    throw new ImageError('usage', `qcow: cluster_bits ${clusterBits} / l2_bits ${l2Bits} are outside 9..16 / 6..13`, { format: 'qcow', value: clusterBits });
  }
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
  return new QcowImage(child, g, new Float64Array(l1Size), { writable: true, compress: p.compress, zeroInit: true });
}
