/**
 * The qcow2 image: open (with validation), read, status, write, info.
 *
 * Spec: qemu docs/interop/qcow2.rst. Vocabulary map (spec -> here):
 *   guest cluster / virtual offset  -> `gc`, `pos` (bytes in the guest view)
 *   host cluster offset             -> `host` (bytes in the container, or the data file)
 *   L1 table                        -> `l1` (Float64Array of L2 table offsets) + `l1Copied`
 *   L2 table                        -> cluster-sized buffers in `l2cache`
 *   refcount table / block          -> `rt` (Float64Array) / buffers in `rbcache`
 *   "copied" flag (bit 63)          -> refcount exactly one
 *   zero cluster (v3 bit 0)         -> K_ZERO
 *   subcluster (extended L2)        -> 1/32 of a cluster, bitmaps after each entry
 *   external data file              -> `data` (the device guest clusters live on)
 *
 * Writes allocate at the end of the file, copy-on-write partially written
 * clusters that are not exclusively ours (compressed, zero, unallocated,
 * shared), and keep refcounts exact at all times (the dirty bit is never
 * needed). Metadata is cached and written back data first, then refcounts,
 * then L2 tables, then L1 and the header.
 */

import { type BlockDevice, type Extent, checkRange, checkWritable, isZero } from '../../core/device.js';
import { Mutex } from '../../core/mutex.js';
import { ImageError, fieldError } from '../../core/errors.js';
import { escapeLine } from '../../core/escape.js';
import type { Image, ImageInfo, OpenOptions } from '../types.js';
import { TableCache } from './cache.js';
import { WarningLog } from '../warnings.js';
import { compressCluster, decompressCluster } from '../engine/codecs.js';
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  FORMAT,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN,
  MAX_L1_BYTES,
  MAX_REFTABLE_BYTES,
  type Qcow2Header,
  encodeMutableFields,
  featureName,
  putU64,
  readHeader,
} from './header.js';
import {
  ALL_SUBCLUSTERS,
  COMPRESSED_HI,
  COPIED_HI,
  TWO32,
  compressedDesc,
  encodeCompressed,
  encodeStd,
  l1Reserved,
  stdOffset,
  stdReserved,
  subMask,
} from './l2.js';
import { getRefcount, maxRefcount, refcountOverflow, setRefcount } from './refcount.js';
import { type Snapshot, readSnapshots } from './snapshot.js';

const K_DATA = 0;
const K_ZERO = 1;
const K_UNALLOC = 2;
const K_COMP = 3;

/** Metadata cache budgets (bytes). Memory stays bounded whatever the image size. */
const L2_CACHE_BYTES = 16 << 20;
const RB_CACHE_BYTES = 8 << 20;
/** Growable containers are extended ahead by up to this much (trimmed at close). */
const GROW_STEP = 1 << 30;

type Visit = (kind: number, guest: number, length: number, host: number, hi: number, lo: number) => boolean;


interface Growable {
  growable?: boolean;
}

const hex = (hi: number, lo: number) => '0x' + hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');

export interface Qcow2OpenExtras {
  /** Compress full-cluster writes (images created with -c). */
  compress?: boolean;
  /** Allocation end of a freshly laid-out image (the container may be larger: a host block device). */
  allocEnd?: number;
}

export class Qcow2Image implements Image {
  readonly format = 'qcow2';
  readonly size: number;
  readonly readOnly: boolean;
  readonly cs: number;
  readonly clusterBits: number;
  readonly l2Entries: number;
  readonly entryBytes: number;
  readonly extL2: boolean;
  readonly subSize: number;
  readonly refOrder: number;
  readonly refPerBlock: number;
  readonly hasDataFile: boolean;
  private readonly l1: Float64Array;
  private readonly l1Copied: Uint8Array;
  /** L1 entries whose L2 table we verified to have refcount 1 (writes only). */
  private readonly l1Owned: Uint8Array;
  private readonly l1Dirty = new Set<number>();
  private readonly l2cache: TableCache;
  private readonly rbcache: TableCache;
  private rt = new Float64Array(0);
  private rtDirty = false;
  private headerDirty = false;
  private autoclearPending = false;
  /** Allocation end: the first byte after every cluster in use (cluster aligned). */
  private end = 0;
  private compCluster = -1;
  private compUsed = 0;
  private readonly lock = new Mutex();
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly compCache = new Map<number, Uint8Array>();
  private closed = false;
  private grownAhead = false;
  private readonly compress: boolean;

  constructor(
    private readonly child: BlockDevice,
    private readonly h: Qcow2Header,
    l1: Float64Array,
    l1Copied: Uint8Array,
    private readonly snapshots: Snapshot[],
    private readonly backing: import('../types.js').Image | undefined,
    private readonly data: BlockDevice,
    writable: boolean,
    private readonly path: string | undefined,
    extras: Qcow2OpenExtras,
    private readonly log: WarningLog,
  ) {
    this.size = h.size;
    this.readOnly = !writable;
    this.clusterBits = h.clusterBits;
    this.cs = 2 ** h.clusterBits;
    this.extL2 = (h.incompatible & INCOMPAT_EXTL2) !== 0;
    this.entryBytes = this.extL2 ? 16 : 8;
    this.l2Entries = this.cs / this.entryBytes;
    this.subSize = this.extL2 ? this.cs / 32 : this.cs;
    this.refOrder = h.refcountOrder;
    this.refPerBlock = (this.cs * 8) >> this.refOrder;
    this.hasDataFile = (h.incompatible & INCOMPAT_DATA_FILE) !== 0;
    this.l1 = l1;
    this.l1Copied = l1Copied;
    this.l1Owned = new Uint8Array(writable ? l1.length : 0);
    this.compress = !!extras.compress;
    this.l2cache = new TableCache(Math.max(16, Math.floor(L2_CACHE_BYTES / this.cs)), (off) => this.loadTable(off));
    this.rbcache = new TableCache(Math.max(16, Math.floor(RB_CACHE_BYTES / this.cs)), (off) => this.loadTable(off));
    this.end = extras.allocEnd ?? Math.ceil(child.size / this.cs) * this.cs;
  }

  /** The codec of this image's compressed clusters (compression_type). */
  private get codec(): 'deflate' | 'zstd' {
    return this.h.compressionType === 1 ? 'zstd' : 'deflate';
  }

  get warnings(): readonly string[] {
    return this.log.list;
  }

  private async loadTable(off: number): Promise<Uint8Array> {
    const buf = new Uint8Array(this.cs);
    const avail = Math.min(this.cs, this.child.size - off);
    if (avail > 0) await this.child.read(buf.subarray(0, avail), off);
    return buf;
  }

  // ---------------------------------------------------------------- reading

  private corruptEntry(what: string, l2off: number, idx: number, hi: number, lo: number): ImageError {
    return fieldError('corrupt', FORMAT, `L2 entry ${idx} of the table at ${l2off}`, l2off + idx * this.entryBytes, hex(hi, lo), what);
  }

  /** An L2 entry field qemu ignores on read: warn once per kind (`key`), read on. */
  private ignoredInEntry(key: string, what: string, l2off: number, idx: number, hi: number, lo: number): void {
    this.log.add(key, `L2 entry ${idx} of the table at ${l2off}`, l2off + idx * this.entryBytes, hex(hi, lo), `${what}, which qemu ignores when reading: ignored (further L2 entries like it are not reported)`);
  }

  /**
   * Walk [offset, offset + length) of the guest, calling `visit` with merged
   * runs: data runs merge while their host offsets are contiguous, zero and
   * unallocated runs merge, compressed clusters come one by one. Stops when
   * `visit` returns false. Unallocated L1 entries are skipped whole.
   */
  private async walk(offset: number, length: number, visit: Visit): Promise<void> {
    const cs = this.cs;
    const end = offset + length;
    let pk = -1;
    let pg = 0;
    let pl = 0;
    let ph = 0;
    let phi = 0;
    let plo = 0;
    let stop = false;
    const emit = (kind: number, g: number, len: number, host: number, hi: number, lo: number): void => {
      if (pk === kind && kind !== K_COMP && (kind !== K_DATA || ph + pl === host)) {
        pl += len;
        return;
      }
      if (pk >= 0 && !visit(pk, pg, pl, ph, phi, plo)) {
        stop = true;
        return;
      }
      pk = kind;
      pg = g;
      pl = len;
      ph = host;
      phi = hi;
      plo = lo;
    };
    const span = this.l2Entries * cs;
    let pos = offset;
    while (pos < end && !stop) {
      const l1i = Math.floor(pos / span);
      const tableEnd = Math.min(end, (l1i + 1) * span);
      const l2off = this.l1[l1i]!;
      if (l2off === 0) {
        emit(K_UNALLOC, pos, tableEnd - pos, 0, 0, 0);
        pos = tableEnd;
        continue;
      }
      const t = await this.l2cache.get(l2off);
      let gc = Math.floor(pos / cs);
      let idx = gc - l1i * this.l2Entries;
      while (pos < tableEnd && !stop) {
        const gStart = gc * cs;
        const within = pos - gStart;
        const n = Math.min(cs - within, tableEnd - pos);
        const o = idx * this.entryBytes;
        const hi = ((t[o]! << 24) | (t[o + 1]! << 16) | (t[o + 2]! << 8) | t[o + 3]!) >>> 0;
        const lo = ((t[o + 4]! << 24) | (t[o + 5]! << 16) | (t[o + 6]! << 8) | t[o + 7]!) >>> 0;
        if (hi & COMPRESSED_HI) {
          this.checkCompressed(hi, lo, l2off, idx, t, o);
          emit(K_COMP, pos, n, 0, hi, lo);
        } else {
          const host = stdOffset(hi, lo);
          if (stdReserved(hi, lo)) this.ignoredInEntry('l2 reserved', 'has reserved bits set', l2off, idx, hi, lo);
          const zeroBit = lo & 1;
          if (!this.extL2) {
            if (zeroBit) {
              if (this.h.version === 2) throw this.corruptEntry('has the zero flag, which version 2 images do not have', l2off, idx, hi, lo);
              emit(K_ZERO, pos, n, 0, 0, 0);
            } else if (host === 0 && !(this.hasDataFile && hi & COPIED_HI)) {
              emit(K_UNALLOC, pos, n, 0, 0, 0);
            } else {
              this.checkHost(host, gStart, l2off, idx, hi, lo);
              emit(K_DATA, pos, n, host + within, 0, 0);
            }
          } else {
            if (zeroBit) this.ignoredInEntry('l2 bit 0', 'has bit 0 set (reserved with extended L2 entries)', l2off, idx, hi, lo);
            const zbits = ((t[o + 8]! << 24) | (t[o + 9]! << 16) | (t[o + 10]! << 8) | t[o + 11]!) >>> 0;
            const abits = ((t[o + 12]! << 24) | (t[o + 13]! << 16) | (t[o + 14]! << 8) | t[o + 15]!) >>> 0;
            if ((zbits & abits) !== 0) throw this.corruptEntry('has subclusters both allocated and zero', l2off, idx, hi, lo);
            const hasHost = host !== 0 || (this.hasDataFile && (hi & COPIED_HI) !== 0);
            if (abits && !hasHost) throw this.corruptEntry('has allocated subclusters but no host offset', l2off, idx, hi, lo);
            if (abits) this.checkHost(host, gStart, l2off, idx, hi, lo);
            let p = within;
            const stopAt = within + n;
            while (p < stopAt) {
              const sc = Math.floor(p / this.subSize);
              const scEnd = Math.min(stopAt, (sc + 1) * this.subSize);
              const bit = 1 << sc;
              if (abits & bit) emit(K_DATA, gStart + p, scEnd - p, host + p, 0, 0);
              else if (zbits & bit) emit(K_ZERO, gStart + p, scEnd - p, 0, 0, 0);
              else emit(K_UNALLOC, gStart + p, scEnd - p, 0, 0, 0);
              if (stop) break;
              p = scEnd;
            }
          }
        }
        pos += n;
        gc++;
        idx++;
      }
    }
    if (!stop && pk >= 0) visit(pk, pg, pl, ph, phi, plo);
  }

  private checkHost(host: number, gStart: number, l2off: number, idx: number, hi: number, lo: number): void {
    if (host % this.cs !== 0) throw this.corruptEntry('host offset is not cluster aligned', l2off, idx, hi, lo);
    if (this.hasDataFile) {
      if (host !== gStart) throw this.corruptEntry(`host offset differs from the guest offset ${gStart} (external data file)`, l2off, idx, hi, lo);
      return;
    }
    if (host < this.cs) throw this.corruptEntry('host offset points into the header cluster', l2off, idx, hi, lo);
    if (host >= this.data.size && host >= this.end) throw this.corruptEntry(`host offset is past the end of the file (${this.data.size})`, l2off, idx, hi, lo);
  }

  private checkCompressed(hi: number, lo: number, l2off: number, idx: number, t: Uint8Array, o: number): void {
    if (this.hasDataFile) throw this.corruptEntry('is compressed, which images with an external data file cannot have', l2off, idx, hi, lo);
    if (hi & COPIED_HI) this.ignoredInEntry('compressed copied', 'is compressed and has the copied flag', l2off, idx, hi, lo);
    const d = compressedDesc(hi, lo, this.clusterBits);
    if (d.offset < this.cs || d.offset >= this.child.size) {
      throw this.corruptEntry(`compressed data offset ${d.offset} is outside the file (${this.cs}..${this.child.size})`, l2off, idx, hi, lo);
    }
    if (this.extL2 && (t[o + 8]! | t[o + 9]! | t[o + 10]! | t[o + 11]! | t[o + 12]! | t[o + 13]! | t[o + 14]! | t[o + 15]!)) {
      this.ignoredInEntry('compressed bitmap', 'is compressed but has a subcluster bitmap', l2off, idx, hi, lo);
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    if (buf.length === 0) return;
    await this.readGuest(buf, offset);
  }

  private async readGuest(buf: Uint8Array, offset: number): Promise<void> {
    const tasks: Promise<void>[] = [];
    const comp: Array<{ dst: Uint8Array; within: number; guest: number; off: number; len: number }> = [];
    await this.walk(offset, buf.length, (kind, g, len, host, hi, lo) => {
      const dst = buf.subarray(g - offset, g - offset + len);
      if (kind === K_DATA) tasks.push(this.readHost(this.data, dst, host));
      else if (kind === K_ZERO) dst.fill(0);
      else if (kind === K_UNALLOC) {
        if (this.backing) tasks.push(this.readHost(this.backing, dst, g));
        else dst.fill(0);
      } else {
        const d = compressedDesc(hi, lo, this.clusterBits);
        comp.push({ dst, within: g % this.cs, guest: g - (g % this.cs), off: d.offset, len: Math.min(d.length, this.child.size - d.offset) });
      }
      return true;
    });
    // Compressed clusters usually sit back to back: read neighbours in one
    // request (up to 4 MiB), then decompress them in parallel.
    for (let i = 0; i < comp.length; ) {
      const first = comp[i]!;
      let lo = first.off;
      let hi = first.off + first.len;
      let j = i + 1;
      while (j < comp.length) {
        const c = comp[j]!;
        const nlo = Math.min(lo, c.off);
        const nhi = Math.max(hi, c.off + c.len);
        if (c.off > hi + 4096 || c.off + c.len < lo - 4096 || nhi - nlo > 4 << 20) break;
        lo = nlo;
        hi = nhi;
        j++;
      }
      const group = comp.slice(i, j);
      i = j;
      if (group.length === 1) {
        const c = group[0]!;
        tasks.push(this.readCompressed(c.guest, c.off, c.len).then((out) => c.dst.set(out.subarray(c.within, c.within + c.dst.length))));
        continue;
      }
      tasks.push(
        (async () => {
          const span = new Uint8Array(hi - lo);
          await this.child.read(span, lo);
          await Promise.all(
            group.map((c) =>
              this.readCompressed(c.guest, c.off, c.len, span.subarray(c.off - lo, c.off - lo + c.len)).then((out) =>
                c.dst.set(out.subarray(c.within, c.within + c.dst.length)),
              ),
            ),
          );
        })(),
      );
    }
    await Promise.all(tasks);
  }

  /** Read what the device has of [host, host + dst.length); zeros past its end. */
  private async readHost(dev: BlockDevice, dst: Uint8Array, host: number): Promise<void> {
    const avail = Math.max(0, Math.min(dst.length, dev.size - host));
    if (avail > 0) await dev.read(dst.subarray(0, avail), host);
    if (avail < dst.length) dst.fill(0, avail);
  }

  /** The guest cluster at `guest`, decompressed from `len` bytes at host `off` (already read into `src` when given). */
  private async readCompressed(guest: number, off: number, len: number, src?: Uint8Array): Promise<Uint8Array> {
    const cached = this.compCache.get(off);
    if (cached) return cached;
    if (!src) {
      src = new Uint8Array(len);
      await this.child.read(src, off);
    }
    const out = await decompressCluster(FORMAT, this.codec, src, this.cs, off, { guest, exact: true });
    if (this.compCache.size >= 8) this.compCache.delete(this.compCache.keys().next().value!);
    this.compCache.set(off, out);
    return out;
  }

  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    let kind: Extent['kind'] | undefined;
    let len = 0;
    await this.walk(offset, length, (k, _g, l) => {
      const ek: Extent['kind'] = k === K_ZERO ? 'zero' : k === K_UNALLOC ? 'unallocated' : 'data';
      if (kind === undefined) kind = ek;
      else if (ek !== kind) return false;
      len += l;
      return true;
    });
    if (kind === 'unallocated' && this.backing) {
      if (offset >= this.backing.size) return { offset, length: len, kind };
      const e = await this.backing.status(offset, Math.min(len, this.backing.size - offset));
      return { offset, length: e.length, kind: e.kind };
    }
    return { offset, length: len, kind: kind ?? 'unallocated' };
  }

  /** This layer's run at `offset`, with its host offset (map, check): see LayerRun in ../types.ts. */
  async layerStatus(offset: number, length: number): Promise<import('../types.js').LayerRun> {
    checkRange(this, offset, length, 'layerStatus');
    let run: import('../types.js').LayerRun = { kind: 'unallocated', length };
    await this.walk(offset, length, (k, _g, l, host) => {
      run = k === K_DATA ? { kind: 'data', length: l, host } : { kind: k === K_ZERO ? 'zero' : k === K_COMP ? 'compressed' : 'unallocated', length: l };
      return false;
    });
    return run;
  }

  get backingImage(): import('../types.js').Image | undefined {
    return this.backing;
  }

  // ---------------------------------------------------------------- info

  async info(): Promise<ImageInfo> {
    const h = this.h;
    const data: Record<string, unknown> = {
      compat: h.version === 2 ? '0.10' : '1.1',
      'compression-type': h.compressionType === 1 ? 'zstd' : 'zlib',
    };
    if (h.version === 3) data['lazy-refcounts'] = (h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0;
    data['refcount-bits'] = 1 << h.refcountOrder;
    if (this.hasDataFile) {
      if (h.dataFile !== undefined) data['data-file'] = h.dataFile;
      data['data-file-raw'] = (h.autoclear & AUTOCLEAR_DATA_FILE_RAW) !== 0;
    }
    if (h.version === 3) {
      data.corrupt = (h.incompatible & INCOMPAT_CORRUPT) !== 0;
      data['extended-l2'] = this.extL2;
    }
    const out: ImageInfo = {
      format: 'qcow2',
      'virtual-size': this.size,
      'cluster-size': this.cs,
      'dirty-flag': (h.incompatible & INCOMPAT_DIRTY) !== 0,
      'format-specific': { type: 'qcow2', data },
    };
    if (h.backingFile !== undefined) out['backing-filename'] = h.backingFile;
    if (h.backingFormat !== undefined) out['backing-filename-format'] = h.backingFormat;
    if (this.snapshots.length) {
      out.snapshots = this.snapshots.map((s) => {
        const r: import('../types.js').SnapshotInfo = {
          id: s.id,
          name: s.name,
          'vm-state-size': s['vm-state-size'],
          'date-sec': s['date-sec'],
          'date-nsec': s['date-nsec'],
          'vm-clock-sec': s['vm-clock-sec'],
          'vm-clock-nsec': s['vm-clock-nsec'],
        };
        if (s.icount !== undefined) r.icount = s.icount;
        return r;
      });
    }
    return out;
  }

  // ---------------------------------------------------------------- refcounts and allocation

  /** Load the refcount table (writable opens). */
  async loadRefcountTable(): Promise<void> {
    const h = this.h;
    const bytes = h.refcountTableClusters * this.cs;
    const raw = new Uint8Array(bytes);
    await this.child.read(raw, h.refcountTableOffset);
    const n = bytes / 8;
    this.rt = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const o = i * 8;
      const hi = ((raw[o]! << 24) | (raw[o + 1]! << 16) | (raw[o + 2]! << 8) | raw[o + 3]!) >>> 0;
      const lo = ((raw[o + 4]! << 24) | (raw[o + 5]! << 16) | (raw[o + 6]! << 8) | raw[o + 7]!) >>> 0;
      if (hi === 0 && lo === 0) continue;
      const off = hi * TWO32 + lo;
      if (lo & 0x1ff || hi >= 2 ** 21 || off % this.cs !== 0 || off + this.cs > this.child.size || off < this.cs) {
        throw fieldError('corrupt', FORMAT, `refcount table entry ${i}`, h.refcountTableOffset + o, hex(hi, lo), 'is unaligned, reserved bits set, or past the end of the file');
      }
      this.rt[i] = off;
    }
  }

  private async refcountAt(host: number): Promise<number> {
    const ci = Math.floor(host / this.cs);
    const ti = Math.floor(ci / this.refPerBlock);
    if (ti >= this.rt.length) return 0;
    const b = this.rt[ti]!;
    if (b === 0) return 0;
    const v = getRefcount(await this.rbcache.get(b), this.refOrder, ci % this.refPerBlock);
    if (v < 0) throw new ImageError('unsupported', `qcow2: refcount of the cluster at ${host} is larger than 2^53`, { format: FORMAT, offset: host });
    return v;
  }

  private async adjustRefcount(host: number, delta: number): Promise<void> {
    const ci = Math.floor(host / this.cs);
    const ti = Math.floor(ci / this.refPerBlock);
    if (ti >= this.rt.length) {
      if (delta < 0) throw new ImageError('corrupt', `qcow2: freeing the cluster at ${host}, which has no refcount`, { format: FORMAT, offset: host });
      await this.growRefcountTable(ti + 1);
    }
    let b = this.rt[ti]!;
    if (b === 0) {
      if (delta < 0) throw new ImageError('corrupt', `qcow2: freeing the cluster at ${host}, whose refcount is 0`, { format: FORMAT, offset: host });
      b = this.end;
      this.end += this.cs;
      await this.growChild(this.end);
      this.rbcache.markDirty(b, new Uint8Array(this.cs));
      this.rt[ti] = b;
      this.rtDirty = true;
      await this.adjustRefcount(b, 1);
    }
    const block = await this.rbcache.get(b);
    const i = ci % this.refPerBlock;
    const v = getRefcount(block, this.refOrder, i);
    const nv = v + delta;
    if (v < 0 || nv < 0) throw new ImageError('corrupt', `qcow2: refcount of the cluster at ${host} would become negative`, { format: FORMAT, offset: host });
    if (nv > maxRefcount(this.refOrder)) throw refcountOverflow(host, this.refOrder);
    setRefcount(block, this.refOrder, i, nv);
    this.rbcache.markDirty(b, block);
    if (nv === 0) {
      this.l2cache.drop(host);
      this.compCache.delete(host);
    }
  }

  /** Replace the refcount table with a bigger one at the end of the file. */
  private async growRefcountTable(minEntries: number): Promise<void> {
    const cs = this.cs;
    let entries = Math.max(minEntries + 1, this.rt.length * 2);
    let clusters = 0;
    for (;;) {
      clusters = Math.ceil((entries * 8) / cs);
      const total = this.end / cs + clusters + Math.ceil(clusters / this.refPerBlock) + 4;
      const need = Math.ceil(total / this.refPerBlock) + 1;
      if (entries >= need) break;
      entries = need;
    }
    if (clusters * cs > MAX_REFTABLE_BYTES) {
      throw new ImageError('unsupported', `qcow2: the refcount table would exceed ${MAX_REFTABLE_BYTES} bytes (qemu's limit)`, { format: FORMAT });
    }
    const oldOff = this.h.refcountTableOffset;
    const oldClusters = this.h.refcountTableClusters;
    const at = this.end;
    this.end += clusters * cs;
    await this.growChild(this.end);
    const nrt = new Float64Array((clusters * cs) / 8);
    nrt.set(this.rt);
    this.rt = nrt;
    this.h.refcountTableOffset = at;
    this.h.refcountTableClusters = clusters;
    this.rtDirty = true;
    this.headerDirty = true;
    for (let k = 0; k < clusters; k++) await this.adjustRefcount(at + k * cs, 1);
    for (let k = 0; k < oldClusters; k++) await this.adjustRefcount(oldOff + k * cs, -1);
  }

  /** Take `n` contiguous free clusters at the end of the file and count them. `exact`: fail (-1) unless they start at the current end. */
  private async allocClusters(n: number, exact = false): Promise<number> {
    const cs = this.cs;
    let skipped = 0;
    for (;;) {
      const at = this.end;
      let busy = -1;
      for (let k = 0; k < n; k++) {
        if ((await this.refcountAt(at + k * cs)) !== 0) busy = k;
      }
      if (busy < 0) break;
      if (exact) return -1;
      this.end = at + (busy + 1) * cs;
      skipped += busy + 1;
      if (skipped > 65536 && this.end > this.child.size) {
        throw new ImageError('corrupt', `qcow2: refcounts mark clusters past the end of the file (${this.child.size}) as in use, up to ${this.end}`, { format: FORMAT, path: this.path, offset: this.end });
      }
    }
    const at = this.end;
    this.end += n * cs;
    await this.growChild(this.end);
    for (let k = 0; k < n; k++) await this.adjustRefcount(at + k * cs, 1);
    return at;
  }

  /** Give the cluster(s) of a compressed descriptor back. */
  private async freeCompressed(hi: number, lo: number): Promise<void> {
    const d = compressedDesc(hi, lo, this.clusterBits);
    const first = Math.floor(d.offset / this.cs);
    const last = Math.floor((d.offset + d.length - 1) / this.cs);
    for (let c = first; c <= last; c++) await this.adjustRefcount(c * this.cs, -1);
    this.compCache.delete(d.offset);
  }

  /** Room for `len` bytes of compressed data, packed after the previous one as qemu does. */
  private async allocCompressed(len: number): Promise<number> {
    const cs = this.cs;
    let at: number;
    if (this.compCluster >= 0 && this.compUsed + len <= cs) {
      at = this.compCluster + this.compUsed;
      await this.adjustRefcount(this.compCluster, 1);
    } else if (this.compCluster >= 0 && this.compCluster + cs === this.end) {
      const extra = Math.ceil((this.compUsed + len - cs) / cs);
      const more = await this.allocClusters(extra, true);
      if (more >= 0) {
        at = this.compCluster + this.compUsed;
        await this.adjustRefcount(this.compCluster, 1);
      } else {
        at = await this.allocClusters(Math.ceil(len / cs));
      }
    } else {
      at = await this.allocClusters(Math.ceil(len / cs));
    }
    const last = at + len;
    this.compCluster = last % cs === 0 ? -1 : Math.floor(last / cs) * cs;
    this.compUsed = last - Math.max(0, this.compCluster);
    return at;
  }

  /**
   * Make sure the container (or data file) can take writes up to `size`.
   * Files are extended ahead in steps (a hole, trimmed at close): writes
   * inside the file's size avoid the filesystem's serialised size updates
   * that appending writes pay.
   */
  private async growChild(size: number, dev: BlockDevice = this.child): Promise<void> {
    if (dev.size >= size) return;
    const t = dev as BlockDevice & Growable;
    if (typeof dev.resize === 'function') {
      const ahead = dev === this.child && t.growable ? Math.min(GROW_STEP, Math.max(64 << 20, dev.size)) : 0;
      this.grownAhead = this.grownAhead || ahead > 0;
      return dev.resize(size + ahead);
    }
    if (t.growable) return; // writes past the end extend it
    throw new ImageError('unsupported', `qcow2: the container cannot grow to ${size} bytes`, { format: FORMAT, path: this.path });
  }

  private async writeChild(dev: BlockDevice, buf: Uint8Array, off: number): Promise<void> {
    await this.growChild(off + buf.length, dev);
    await dev.write(buf, off);
  }

  // ---------------------------------------------------------------- metadata write-back

  private async waitInflight(): Promise<void> {
    while (this.inflight.size) await Promise.allSettled([...this.inflight]);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    const done = () => this.inflight.delete(p);
    p.then(done, done);
    return p;
  }

  /** Write back all dirty metadata in crash-safe order: data, refcounts, L2, L1, header. Caller holds the lock. */
  private async writeMetadata(): Promise<void> {
    await this.waitInflight();
    const byOffset = (a: [number, Uint8Array], b: [number, Uint8Array]) => a[0] - b[0];
    for (const [off, buf] of this.rbcache.dirtyEntries().sort(byOffset)) {
      await this.writeChild(this.child, buf, off);
      this.rbcache.markClean(off, buf);
    }
    if (this.rtDirty) {
      const raw = new Uint8Array(this.h.refcountTableClusters * this.cs);
      for (let i = 0; i < this.rt.length; i++) if (this.rt[i]) putU64(raw, i * 8, this.rt[i]!);
      await this.writeChild(this.child, raw, this.h.refcountTableOffset);
      this.rtDirty = false;
    }
    if (this.headerDirty) await this.writeHeaderFields();
    for (const [off, buf] of this.l2cache.dirtyEntries().sort(byOffset)) {
      await this.writeChild(this.child, buf, off);
      this.l2cache.markClean(off, buf);
    }
    if (this.l1Dirty.size) {
      const idx = [...this.l1Dirty].sort((a, b) => a - b);
      let i = 0;
      while (i < idx.length) {
        let j = i;
        while (j + 1 < idx.length && idx[j + 1]! - idx[j]! <= 64) j++;
        const first = idx[i]!;
        const last = idx[j]!;
        const raw = new Uint8Array((last - first + 1) * 8);
        for (let k = first; k <= last; k++) this.encodeL1(raw, (k - first) * 8, k);
        await this.writeChild(this.child, raw, this.h.l1TableOffset + first * 8);
        i = j + 1;
      }
      this.l1Dirty.clear();
    }
  }

  private encodeL1(raw: Uint8Array, o: number, k: number): void {
    const off = this.l1[k]!;
    if (off === 0) return;
    const hi = ((this.l1Copied[k] ? COPIED_HI : 0) | Math.floor(off / TWO32)) >>> 0;
    raw[o] = hi >>> 24;
    raw[o + 1] = (hi >>> 16) & 0xff;
    raw[o + 2] = (hi >>> 8) & 0xff;
    raw[o + 3] = hi & 0xff;
    raw[o + 4] = (off >>> 24) & 0xff;
    raw[o + 5] = (off >>> 16) & 0xff;
    raw[o + 6] = (off >>> 8) & 0xff;
    raw[o + 7] = off & 0xff;
  }

  private async writeHeaderFields(): Promise<void> {
    const { offset, bytes } = encodeMutableFields(this.h);
    await this.child.write(bytes, offset);
    this.headerDirty = false;
  }

  private async maybeWriteBack(): Promise<void> {
    if (this.l2cache.dirty > this.l2cache.capacity / 2 || this.rbcache.dirty > this.rbcache.capacity / 2) {
      await this.writeMetadata();
    }
  }

  /** First write to an image with auto-clear bits: clear them first (we do not maintain bitmaps). */
  private async beforeFirstWrite(): Promise<void> {
    if (!this.autoclearPending) return;
    this.autoclearPending = false;
    this.h.autoclear &= AUTOCLEAR_DATA_FILE_RAW;
    this.h.autoclearHigh = 0;
    await this.writeHeaderFields();
    await this.child.flush();
  }

  setWritableState(): void {
    if (this.h.version === 3 && (this.h.autoclear & ~AUTOCLEAR_DATA_FILE_RAW || this.h.autoclearHigh)) this.autoclearPending = true;
  }

  // ---------------------------------------------------------------- writing

  /** The L2 table for guest cluster `gc`, allocated or copied so that we own it. Caller holds the lock. */
  private async l2ForWrite(gc: number): Promise<{ table: Uint8Array; l2off: number; idx: number }> {
    const l1i = Math.floor(gc / this.l2Entries);
    const idx = gc - l1i * this.l2Entries;
    let off = this.l1[l1i]!;
    if (off === 0) {
      off = await this.allocClusters(1);
      const table = new Uint8Array(this.cs);
      this.l2cache.markDirty(off, table);
      this.l1[l1i] = off;
      this.l1Copied[l1i] = 1;
      this.l1Owned[l1i] = 1;
      this.l1Dirty.add(l1i);
      return { table, l2off: off, idx };
    }
    let table = await this.l2cache.get(off);
    if (!this.l1Owned[l1i]) {
      const rc = await this.refcountAt(off);
      if (rc === 0) {
        throw fieldError('corrupt', FORMAT, `L1 entry ${l1i}`, this.h.l1TableOffset + l1i * 8, off, 'points to an L2 table whose refcount is 0');
      }
      if (rc > 1) {
        const copy = table.slice();
        const noff = await this.allocClusters(1);
        this.l2cache.markDirty(noff, copy);
        await this.adjustRefcount(off, -1);
        this.l1[l1i] = noff;
        off = noff;
        table = copy;
        this.l1Copied[l1i] = 1;
        this.l1Dirty.add(l1i);
      } else if (!this.l1Copied[l1i]) {
        this.l1Copied[l1i] = 1;
        this.l1Dirty.add(l1i);
      }
      this.l1Owned[l1i] = 1;
    }
    return { table, l2off: off, idx };
  }

  private setEntry(table: Uint8Array, idx: number, hi: number, lo: number, zbits = 0, abits = 0): void {
    const o = idx * this.entryBytes;
    const put = (p: number, v: number) => {
      table[p] = v >>> 24;
      table[p + 1] = (v >>> 16) & 0xff;
      table[p + 2] = (v >>> 8) & 0xff;
      table[p + 3] = v & 0xff;
    };
    put(o, hi);
    put(o + 4, lo);
    if (this.extL2) {
      put(o + 8, zbits);
      put(o + 12, abits);
    }
  }

  private entryAt(table: Uint8Array, idx: number): [number, number, number, number] {
    const o = idx * this.entryBytes;
    const g = (p: number) => ((table[p]! << 24) | (table[p + 1]! << 16) | (table[p + 2]! << 8) | table[p + 3]!) >>> 0;
    return [g(o), g(o + 4), this.extL2 ? g(o + 8) : 0, this.extL2 ? g(o + 12) : 0];
  }

  /** Host offset of a standard entry that holds a host cluster (data or preallocated zero), else -1. */
  private entryHost(hi: number, lo: number): number {
    if (hi & COMPRESSED_HI) return -1;
    const host = stdOffset(hi, lo);
    if (host !== 0) return host;
    return this.hasDataFile && hi & COPIED_HI ? 0 : -1;
  }

  /** Does every byte of the cluster described by this entry read as zero (no backing data shows through)? */
  private entryReadsZero(hi: number, lo: number, zbits: number, abits: number): boolean {
    if (hi & COMPRESSED_HI) return false;
    if (this.extL2) {
      if (abits) return false;
      return this.backing ? zbits === ALL_SUBCLUSTERS : true;
    }
    if (lo & 1) return true;
    return this.entryHost(hi, lo) < 0 && !this.backing;
  }

  /** Release what an entry held (before it is overwritten). */
  private async releaseEntry(hi: number, lo: number): Promise<void> {
    if (hi & COMPRESSED_HI) return this.freeCompressed(hi, lo);
    if (this.hasDataFile) return;
    const host = this.entryHost(hi, lo);
    if (host > 0) await this.adjustRefcount(host, -1);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkWritable(this, this.path);
    checkRange(this, offset, buf.length, 'write');
    if (buf.length === 0) return;
    if (this.compress) return this.writeCompressed(buf, offset);
    return this.writeNormal(buf, offset);
  }

  private async writeNormal(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.cs;
    const release = await this.lock.lock();
    let released = false;
    try {
      await this.beforeFirstWrite();
      await this.maybeWriteBack();
      const writes: Array<{ host: number; data: Uint8Array }> = [];
      const push = (host: number, data: Uint8Array) => {
        const last = writes[writes.length - 1];
        if (
          last &&
          last.host + last.data.length === host &&
          last.data.buffer === data.buffer &&
          last.data.byteOffset + last.data.length === data.byteOffset
        ) {
          last.data = new Uint8Array(data.buffer, last.data.byteOffset, last.data.length + data.length);
        } else writes.push({ host, data });
      };
      let cow = false;
      const end = offset + buf.length;
      let pos = offset;
      while (pos < end) {
        const gc = Math.floor(pos / cs);
        const gStart = gc * cs;
        const within = pos - gStart;
        const clen = Math.min(cs, this.size - gStart);
        const n = Math.min(clen - within, end - pos);
        const src = buf.subarray(pos - offset, pos - offset + n);
        const full = n === clen;
        const { table, l2off, idx } = await this.l2ForWrite(gc);
        const [hi, lo, zbits, abits] = this.entryAt(table, idx);
        const host = this.entryHost(hi, lo);
        const fullyAllocated = !this.extL2 || (abits === ALL_SUBCLUSTERS && zbits === 0);
        const zeroFlag = !this.extL2 && (lo & 1) === 1;
        let owned = false;
        if (host >= 0) {
          if (host % cs !== 0 || (host < cs && !this.hasDataFile)) throw this.corruptEntry('host offset is invalid', l2off, idx, hi, lo);
          owned = this.hasDataFile || (await this.refcountAt(host)) === 1;
        }
        if (owned && fullyAllocated && !zeroFlag) {
          push(host + within, src);
        } else if (this.entryReadsZero(hi, lo, zbits, abits) && isZero(src)) {
          // Zeros onto zeros: nothing to do.
        } else {
          let content = src;
          if (!full) {
            content = new Uint8Array(clen);
            await this.readGuest(content, gStart);
            content.set(src, within);
            cow = true;
          }
          let nhost: number;
          if (owned) nhost = host;
          else {
            if (this.hasDataFile) {
              nhost = gStart;
            } else {
              nhost = await this.allocClusters(1);
            }
            await this.releaseEntry(hi, lo);
          }
          const [nhi, nlo] = encodeStd(nhost, true);
          this.setEntry(table, idx, nhi, nlo, 0, this.extL2 ? ALL_SUBCLUSTERS : 0);
          this.l2cache.markDirty(l2off, table);
          push(nhost, content);
        }
        pos += n;
      }
      const doWrites = () => Promise.all(writes.map((w) => this.writeChild(this.data, w.data, w.host)));
      if (cow) {
        await doWrites();
      } else {
        const p = this.track(doWrites());
        release();
        released = true;
        await p;
      }
    } finally {
      if (!released) release();
    }
  }

  private async writeCompressed(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.cs;
    const end = offset + buf.length;
    // Partial clusters at either end go the normal way.
    const firstFull = Math.ceil(offset / cs) * cs;
    let lastFull = Math.floor(end / cs) * cs;
    if (end === this.size) lastFull = Math.ceil(end / cs) * cs; // the short last cluster counts as full
    if (firstFull >= lastFull) return this.writeNormal(buf, offset);
    if (firstFull > offset) await this.writeNormal(buf.subarray(0, firstFull - offset), offset);
    const jobs: Array<{ g: number; src: Uint8Array; z?: Uint8Array }> = [];
    for (let g = firstFull; g < Math.min(lastFull, end); g += cs) {
      const src = buf.subarray(g - offset, Math.min(g + cs, end) - offset);
      jobs.push({ g, src });
    }
    await Promise.all(
      jobs.map(async (j) => {
        if (isZero(j.src)) return;
        let input = j.src;
        if (input.length < cs) {
          input = new Uint8Array(cs);
          input.set(j.src);
        }
        // As qemu: a cluster is stored compressed only when that saves at least a byte.
        const z = await compressCluster(this.codec, input);
        if (z.length < cs) j.z = z;
      }),
    );
    const fallback: typeof jobs = [];
    const release = await this.lock.lock();
    let released = false;
    try {
      await this.beforeFirstWrite();
      await this.maybeWriteBack();
      const writes: Array<Promise<void>> = [];
      const placed: Array<{ at: number; z: Uint8Array }> = [];
      for (const j of jobs) {
        const gc = j.g / cs;
        const { table, l2off, idx } = await this.l2ForWrite(gc);
        const [hi, lo, zbits, abits] = this.entryAt(table, idx);
        const readsZero = this.entryReadsZero(hi, lo, zbits, abits);
        if (!j.z) {
          if (!(readsZero && isZero(j.src))) fallback.push(j);
          continue;
        }
        if (!readsZero && !(hi & COMPRESSED_HI) && this.entryHost(hi, lo) >= 0) {
          fallback.push(j); // an allocated cluster: overwrite in place, as qemu does not compress over data
          continue;
        }
        await this.releaseEntry(hi, lo);
        const at = await this.allocCompressed(j.z.length);
        const [nhi, nlo] = encodeCompressed(at, j.z.length, this.clusterBits);
        this.setEntry(table, idx, nhi, nlo, 0, 0);
        this.l2cache.markDirty(l2off, table);
        placed.push({ at, z: j.z });
      }
      // Compressed clusters were packed back to back: write contiguous ones at once.
      placed.sort((a, b) => a.at - b.at);
      for (let i = 0; i < placed.length; ) {
        let j = i + 1;
        let endAt = placed[i]!.at + placed[i]!.z.length;
        while (j < placed.length && placed[j]!.at === endAt) endAt += placed[j++]!.z.length;
        const data = j === i + 1 ? placed[i]!.z : Buffer.concat(placed.slice(i, j).map((p) => p.z));
        writes.push(this.writeChild(this.child, data, placed[i]!.at));
        i = j;
      }
      const all = this.track(Promise.all(writes));
      release();
      released = true;
      await all;
    } finally {
      if (!released) release();
    }
    // Clusters that did not compress: contiguous ones in one normal write.
    for (let i = 0; i < fallback.length; ) {
      let j = i + 1;
      while (j < fallback.length && fallback[j]!.g === fallback[j - 1]!.g + cs) j++;
      const g = fallback[i]!.g;
      const last = fallback[j - 1]!;
      await this.writeNormal(buf.subarray(g - offset, last.g - offset + last.src.length), g);
      i = j;
    }
    if (lastFull < end) await this.writeNormal(buf.subarray(lastFull - offset), lastFull);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkWritable(this, this.path);
    checkRange(this, offset, length, 'writeZeroes');
    if (length === 0) return;
    const cs = this.cs;
    const partial: Array<[number, number]> = [];
    const release = await this.lock.lock();
    try {
      await this.beforeFirstWrite();
      await this.maybeWriteBack();
      const end = offset + length;
      let pos = offset;
      while (pos < end) {
        const gc = Math.floor(pos / cs);
        const gStart = gc * cs;
        const within = pos - gStart;
        const clen = Math.min(cs, this.size - gStart);
        const n = Math.min(clen - within, end - pos);
        // A whole unallocated L2 range with nothing behind it already reads as zero.
        const span = this.l2Entries * cs;
        const l1i = Math.floor(pos / span);
        if (this.l1[l1i] === 0 && !this.backing && !this.hasDataFile) {
          pos = Math.min(end, (l1i + 1) * span);
          continue;
        }
        if (n !== clen || this.hasDataFile || (this.h.version === 2 && this.backing)) {
          partial.push([pos, n]);
          pos += n;
          continue;
        }
        const { table, l2off, idx } = await this.l2ForWrite(gc);
        const [hi, lo, zbits, abits] = this.entryAt(table, idx);
        if (!this.entryReadsZero(hi, lo, zbits, abits) || (!this.extL2 && this.entryHost(hi, lo) >= 0)) {
          await this.releaseEntry(hi, lo);
          if (this.extL2) this.setEntry(table, idx, 0, 0, this.backing ? ALL_SUBCLUSTERS : 0, 0);
          else this.setEntry(table, idx, 0, this.h.version === 3 && this.backing ? 1 : 0);
          this.l2cache.markDirty(l2off, table);
        }
        pos += n;
      }
    } finally {
      release();
    }
    for (const [p, n] of partial) {
      const z = new Uint8Array(Math.min(n, 1 << 20));
      for (let q = p; q < p + n; q += z.length) {
        const m = Math.min(z.length, p + n - q);
        await this.writeNormal(z.subarray(0, m), q);
      }
    }
  }

  /**
   * preallocation=metadata: every L2 table and a host cluster for every guest
   * cluster, laid out in guest order. Only for fresh containers, whose
   * unwritten space reads as zero (the clusters are holes until written).
   */
  async preallocateMetadata(): Promise<void> {
    const release = await this.lock.lock();
    try {
      const count = Math.ceil(this.size / this.cs);
      for (let gc = 0; gc < count; ) {
        const { table, l2off, idx } = await this.l2ForWrite(gc);
        const n = Math.min(this.l2Entries - idx, count - gc);
        const host = await this.allocClusters(n);
        for (let k = 0; k < n; k++) {
          const [hi, lo] = encodeStd(host + k * this.cs, true);
          this.setEntry(table, idx + k, hi, lo, 0, this.extL2 ? ALL_SUBCLUSTERS : 0);
        }
        this.l2cache.markDirty(l2off, table);
        gc += n;
        await this.maybeWriteBack();
      }
    } finally {
      release();
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.closed) return;
    const release = await this.lock.lock();
    try {
      await this.writeMetadata();
      await this.child.flush();
      if (this.data !== this.child) await this.data.flush();
    } finally {
      release();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.readOnly) {
        const release = await this.lock.lock();
        try {
          await this.writeMetadata();
          // End the file on a cluster boundary, as qemu does.
          const c = this.child;
          if (this.grownAhead && c.size > this.end && c.resize) await c.resize(this.end);
          else if (c.size < this.end && c.resize) await c.resize(this.end);
          else if (this.child.size < this.end) await this.child.writeZeroes(this.child.size, this.end - this.child.size);
          await this.child.flush();
          if (this.data !== this.child) await this.data.flush();
        } finally {
          release();
        }
      }
    } finally {
      this.closed = true;
      await this.child.close();
      if (this.data !== this.child) await this.data.close();
      if (this.backing) await this.backing.close();
    }
  }
}

/** Validate everything the header says, load the L1 table, open backing and data files. */
export async function openQcow2(child: BlockDevice, opts: OpenOptions, extras: Qcow2OpenExtras = {}): Promise<Qcow2Image> {
  const log = new WarningLog(FORMAT, opts.warn);
  const h = await readHeader(child, log);
  const cs = 2 ** h.clusterBits;
  const fileSize = child.size;
  const where = opts.path ? `${opts.path}: ` : '';

  if (h.cryptMethod !== 0) {
    throw fieldError('unsupported', FORMAT, 'crypt_method', 32, h.cryptMethod, 'encrypted images are not supported');
  }
  const unknownLow = h.incompatible & ~INCOMPAT_KNOWN;
  if (unknownLow || h.incompatibleHigh) {
    let bit = 0;
    if (unknownLow) while (!((unknownLow >>> bit) & 1)) bit++;
    else {
      while (!((h.incompatibleHigh >>> bit) & 1)) bit++;
      bit += 32;
    }
    const name = featureName(h, 0, bit);
    throw fieldError(
      'unsupported',
      FORMAT,
      'incompatible_features',
      72,
      `bit ${bit}`,
      `sets unknown incompatible feature bit ${bit}${name ? ` ('${escapeLine(name)}')` : ''}`,
    );
  }
  if (h.incompatible & INCOMPAT_COMPRESSION) {
    if (h.headerLength <= 104 || h.compressionType === 0) {
      throw fieldError('invalid-format', FORMAT, 'compression_type', 104, h.compressionType, 'must be present and non-zero when the compression type bit is set');
    }
  } else if (h.compressionType !== 0) {
    throw fieldError('invalid-format', FORMAT, 'compression_type', 104, h.compressionType, 'is set but the compression type feature bit is not');
  }
  if (h.compressionType > 1) {
    throw fieldError('unsupported', FORMAT, 'compression_type', 104, h.compressionType, 'is not deflate (0) or zstd (1)');
  }
  const extL2 = (h.incompatible & INCOMPAT_EXTL2) !== 0;
  if (extL2 && h.clusterBits < 14) {
    throw fieldError('invalid-format', FORMAT, 'cluster_bits', 20, h.clusterBits, 'must be at least 14 with extended L2 entries');
  }
  const writable = !!opts.writable;
  if (writable && child.readOnly) throw new ImageError('usage', `${where}container is read-only`, { path: opts.path, format: FORMAT });
  if (writable && h.incompatible & INCOMPAT_DIRTY) {
    throw new ImageError('unsupported', `${where}qcow2 image has the dirty bit set (lazy refcounts not written back): repair it with 'qemu-img check -r all' before writing`, { path: opts.path, format: FORMAT, field: 'incompatible_features' });
  }
  if (writable && h.hasBitmaps && h.autoclear & AUTOCLEAR_BITMAPS) {
    // Writing would make every bitmap inconsistent (and its clusters leak): refuse rather than damage them.
    throw new ImageError('unsupported', `${where}qcow2 image has persistent dirty bitmaps, which imgtool cannot keep up to date: remove them first ('qemu-img bitmap --remove')`, { path: opts.path, format: FORMAT, field: 'bitmaps extension' });
  }
  if (writable && h.incompatible & INCOMPAT_CORRUPT) {
    throw new ImageError('unsupported', `${where}qcow2 image is marked corrupt: it may only be opened read-only`, { path: opts.path, format: FORMAT, field: 'incompatible_features' });
  }

  // Refcount table.
  if (h.refcountTableOffset % cs !== 0 || h.refcountTableOffset === 0) {
    throw fieldError('invalid-format', FORMAT, 'refcount_table_offset', 48, h.refcountTableOffset, 'is not a non-zero multiple of the cluster size');
  }
  if (h.refcountTableClusters === 0 || h.refcountTableClusters * cs > MAX_REFTABLE_BYTES) {
    throw fieldError('invalid-format', FORMAT, 'refcount_table_clusters', 56, h.refcountTableClusters, `must be 1..${MAX_REFTABLE_BYTES / cs}`);
  }
  const rtEnd = h.refcountTableOffset + h.refcountTableClusters * cs;
  if (rtEnd > fileSize) {
    throw fieldError('invalid-format', FORMAT, 'refcount_table_offset', 48, h.refcountTableOffset, `the table (${h.refcountTableClusters} clusters) ends past the end of the file (${fileSize})`);
  }

  // L1 table.
  const l2Entries = cs / (extL2 ? 16 : 8);
  const span = l2Entries * cs;
  const needL1 = Math.ceil(h.size / span);
  if (h.l1Size * 8 > MAX_L1_BYTES) {
    throw fieldError('invalid-format', FORMAT, 'l1_size', 36, h.l1Size, `is more than ${MAX_L1_BYTES / 8} entries (qemu's limit)`);
  }
  if (h.l1Size < needL1) {
    throw fieldError('invalid-format', FORMAT, 'l1_size', 36, h.l1Size, `is too small for the virtual size ${h.size} (needs ${needL1} entries)`);
  }
  if (h.l1TableOffset % cs !== 0) {
    throw fieldError('invalid-format', FORMAT, 'l1_table_offset', 40, h.l1TableOffset, 'is not a multiple of the cluster size');
  }
  const l1Bytes = h.l1Size * 8;
  if (h.l1Size > 0) {
    if (h.l1TableOffset === 0) throw fieldError('invalid-format', FORMAT, 'l1_table_offset', 40, 0, 'points into the header cluster');
    if (h.l1TableOffset + l1Bytes > fileSize) {
      throw fieldError('invalid-format', FORMAT, 'l1_table_offset', 40, h.l1TableOffset, `the table (${h.l1Size} entries) ends past the end of the file (${fileSize})`);
    }
    if (h.l1TableOffset < rtEnd && h.refcountTableOffset < h.l1TableOffset + l1Bytes) {
      throw fieldError('corrupt', FORMAT, 'l1_table_offset', 40, h.l1TableOffset, `the L1 table overlaps the refcount table at ${h.refcountTableOffset}`);
    }
  }
  // Only the entries that map the virtual disk matter; the rest (VM state) are ignored.
  const used = needL1;
  const raw = new Uint8Array(used * 8);
  if (used) await child.read(raw, h.l1TableOffset);
  const l1 = new Float64Array(used);
  const l1Copied = new Uint8Array(used);
  for (let i = 0; i < used; i++) {
    const o = i * 8;
    const hi = ((raw[o]! << 24) | (raw[o + 1]! << 16) | (raw[o + 2]! << 8) | raw[o + 3]!) >>> 0;
    const lo = ((raw[o + 4]! << 24) | (raw[o + 5]! << 16) | (raw[o + 6]! << 8) | raw[o + 7]!) >>> 0;
    const off = stdOffset(hi, lo);
    const field = `L1 entry ${i}`;
    if (l1Reserved(hi, lo)) {
      log.add('l1 reserved', field, h.l1TableOffset + o, hex(hi, lo), 'has reserved bits set, which qemu ignores when reading: ignored (further L1 entries like it are not reported)');
    }
    if (off === 0) continue;
    if (off % cs !== 0) throw fieldError('corrupt', FORMAT, field, h.l1TableOffset + o, hex(hi, lo), 'L2 table offset is not cluster aligned');
    if (off + cs > fileSize) throw fieldError('corrupt', FORMAT, field, h.l1TableOffset + o, hex(hi, lo), `L2 table is past the end of the file (${fileSize})`);
    if ((off < h.l1TableOffset + l1Bytes && h.l1TableOffset < off + cs) || (off < rtEnd && h.refcountTableOffset < off + cs)) {
      throw fieldError('corrupt', FORMAT, field, h.l1TableOffset + o, hex(hi, lo), 'L2 table overlaps the L1 or refcount table');
    }
    l1[i] = off;
    l1Copied[i] = hi & COPIED_HI ? 1 : 0;
  }

  const snapshots = await readSnapshots(child, h.nbSnapshots, h.snapshotsOffset, cs);

  // Files the image names: only through the caller's openers.
  let data: BlockDevice = child;
  let backing: Image | undefined;
  let opened: BlockDevice | undefined;
  try {
    if (h.incompatible & INCOMPAT_DATA_FILE) {
      if (!opts.openDataFile) {
        throw new ImageError('unsupported', `${where}qcow2 image stores its data in an external data file${h.dataFile ? ` '${escapeLine(h.dataFile)}'` : ''}; pass --data-file to read it`, { path: opts.path, format: FORMAT });
      }
      if (h.dataFile === undefined) {
        throw new ImageError('unsupported', `${where}qcow2 image uses an external data file but does not name it`, { path: opts.path, format: FORMAT });
      }
      data = await opts.openDataFile(h.dataFile);
      opened = data;
    }
    if (h.backingFile !== undefined) {
      if (!opts.openBacking) {
        throw new ImageError('unsupported', `${where}qcow2 image has a backing file ${escapeLine(h.backingFile)}; pass --backing to read through it`, { path: opts.path, format: FORMAT });
      }
      const formatField = h.backingFormatOffset === undefined ? undefined : { field: 'backing format extension (0xe2792aca)', offset: h.backingFormatOffset };
      backing = await opts.openBacking({ name: h.backingFile, format: h.backingFormat, formatField });
    }
  } catch (e) {
    if (opened) await opened.close().catch(() => {});
    throw e;
  }
  const img = new Qcow2Image(child, h, l1, l1Copied, snapshots, backing, data, writable, opts.path, extras, log);
  if (writable) {
    try {
      await img.loadRefcountTable();
    } catch (e) {
      if (opened) await opened.close().catch(() => {});
      if (backing) await backing.close().catch(() => {});
      throw e;
    }
    img.setWritableState();
  }
  return img;
}

