/**
 * The qcow2 image: open (with validation), and the driver the shared engine
 * (../engine) reads, writes and compresses through: lookups, allocation,
 * refcounts, metadata write-back, info.
 *
 * Spec: qemu docs/interop/qcow2.rst. Vocabulary map (spec -> here):
 *   guest cluster / virtual offset  -> `gc`, `pos` (bytes in the guest view)
 *   host cluster offset             -> `host` (bytes in the container, or the data file)
 *   L1 table                        -> `l1` (Float64Array of L2 table offsets) + `l1Copied`
 *   L2 table                        -> cluster-sized buffers in `l2cache`
 *   refcount table / block          -> `rt` (Float64Array) / buffers in `rbcache`
 *   "copied" flag (bit 63)          -> refcount exactly one
 *   zero cluster (v3 bit 0)         -> a 'zero' run
 *   subcluster (extended L2)        -> 1/32 of a cluster, bitmaps after each entry
 *   external data file              -> `data` (the device guest clusters live on)
 *
 * Writes allocate at the end of the file, copy-on-write partially written
 * clusters that are not exclusively ours (compressed, zero, unallocated,
 * shared), and keep refcounts exact at all times (the dirty bit is never
 * needed). Metadata is cached and written back data first, then refcounts,
 * then L2 tables, then L1 and the header.
 */

import { type BlockDevice, checkRange, checkWritable, growDevice } from '../../core/device.js';
import { ImageError, fieldError } from '../../core/errors.js';
import { escapeLine } from '../../core/escape.js';
import type { Image, ImageInfo, LayerRun, OpenOptions } from '../types.js';
import { WarningLog } from '../warnings.js';
import { type Codec, type Mapping, type MappedFormat, MappedDevice, WriteBackCache, DescribedImage } from '../engine/index.js';
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
} from './l2.js';
import { getRefcount, maxRefcount, refcountOverflow, setRefcount } from './refcount.js';
import { type Snapshot, readSnapshots } from './snapshot.js';

/** Metadata cache budgets (bytes). Memory stays bounded whatever the image size. */
const L2_CACHE_BYTES = 16 << 20;
const RB_CACHE_BYTES = 8 << 20;

const hex = (hi: number, lo: number) => '0x' + hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');

export interface Qcow2OpenExtras {
  /** Compress full-cluster writes (images created with -c). */
  compress?: boolean;
  /** Allocation end of a freshly laid-out image (the container may be larger: a host block device). */
  allocEnd?: number;
}

/**
 * The qcow2 driver for the shared engine (../engine): L1/L2 lookups,
 * allocation at the end of the file with exact refcounts, L2 tables copied
 * before they are changed when they are shared, and the metadata write-back.
 *
 * How qcow2 specifics reach the engine:
 *   - a data cluster whose refcount is not 1 (snapshots) is a `shared` data
 *     run: the engine copies it; `commit` drops our reference to the old one
 *   - extended L2: runs per subcluster; the data subclusters of a cluster not
 *     wholly allocated are `shared` too, so a write into the cluster rebuilds
 *     it whole under the allocation lock (`allocate` hands back the cluster
 *     itself when it is ours alone) and `commit` marks every subcluster
 *     allocated
 *   - external data file: host offset = guest offset; the engine writes data
 *     runs to the data file (engine option `data`)
 *   - a compressed or zero cluster that gets data: `commit` frees what the
 *     entry held
 */
export class Qcow2Format implements MappedFormat {
  readonly name = FORMAT;
  readonly size: number;
  readonly clusterSize: number;
  readonly clusterBits: number;
  readonly l2Entries: number;
  readonly entryBytes: number;
  readonly extL2: boolean;
  readonly subSize: number;
  readonly refOrder: number;
  readonly refPerBlock: number;
  readonly hasDataFile: boolean;
  readonly writeCodec: Codec;
  private readonly cs: number;
  /** L1 entries whose L2 table we verified to have refcount 1 (writes only). */
  private readonly l1Owned: Uint8Array;
  private readonly l1Dirty = new Set<number>();
  private readonly l2cache: WriteBackCache;
  private readonly rbcache: WriteBackCache;
  private rt = new Float64Array(0);
  private rtDirty = false;
  private headerDirty = false;
  private autoclearPending = false;
  private firstWrite: Promise<void> | undefined;
  /** Allocation end: the first byte after every cluster in use (cluster aligned). */
  private end = 0;
  private compCluster = -1;
  private compUsed = 0;

  constructor(
    private readonly child: BlockDevice,
    private readonly h: Qcow2Header,
    private readonly l1: Float64Array,
    private readonly l1Copied: Uint8Array,
    /** A backing file shows through unallocated clusters. */
    private readonly backed: boolean,
    /** The size of the device data clusters live on (the container, or the external data file). */
    private readonly dataSize: () => number,
    private readonly writable: boolean,
    private readonly path: string | undefined,
    allocEnd: number | undefined,
    private readonly log: WarningLog,
  ) {
    this.size = h.size;
    this.clusterBits = h.clusterBits;
    this.cs = this.clusterSize = 2 ** h.clusterBits;
    this.extL2 = (h.incompatible & INCOMPAT_EXTL2) !== 0;
    this.entryBytes = this.extL2 ? 16 : 8;
    this.l2Entries = this.cs / this.entryBytes;
    this.subSize = this.extL2 ? this.cs / 32 : this.cs;
    this.refOrder = h.refcountOrder;
    this.refPerBlock = (this.cs * 8) >> this.refOrder;
    this.hasDataFile = (h.incompatible & INCOMPAT_DATA_FILE) !== 0;
    this.writeCodec = h.compressionType === 1 ? 'zstd' : 'deflate';
    this.l1Owned = new Uint8Array(writable ? l1.length : 0);
    this.l2cache = new WriteBackCache(Math.max(16, Math.floor(L2_CACHE_BYTES / this.cs)), (off) => this.loadTable(off));
    this.rbcache = new WriteBackCache(Math.max(16, Math.floor(RB_CACHE_BYTES / this.cs)), (off) => this.loadTable(off));
    this.end = allocEnd ?? Math.ceil(child.size / this.cs) * this.cs;
    if (writable && h.version === 3 && (h.autoclear & ~AUTOCLEAR_DATA_FILE_RAW || h.autoclearHigh)) this.autoclearPending = true;
  }

  private async loadTable(off: number): Promise<Uint8Array> {
    const buf = new Uint8Array(this.cs);
    const avail = Math.min(this.cs, this.child.size - off);
    if (avail > 0) await this.child.read(buf.subarray(0, avail), off);
    return buf;
  }

  // ---------------------------------------------------------------- lookup

  private corruptEntry(what: string, l2off: number, idx: number, hi: number, lo: number): ImageError {
    return fieldError('corrupt', FORMAT, `L2 entry ${idx} of the table at ${l2off}`, l2off + idx * this.entryBytes, hex(hi, lo), what);
  }

  /** An L2 entry field qemu ignores on read: warn once per kind (`key`), read on. */
  private ignoredInEntry(key: string, what: string, l2off: number, idx: number, hi: number, lo: number): void {
    this.log.add(key, `L2 entry ${idx} of the table at ${l2off}`, l2off + idx * this.entryBytes, hex(hi, lo), `${what}, which qemu ignores when reading: ignored (further L2 entries like it are not reported)`);
  }

  /**
   * The run at `offset` (see MappedFormat.lookup): data runs merge while their
   * host offsets are contiguous (and their sharing agrees), zero and
   * unallocated runs merge, a compressed cluster comes alone. Unallocated L1
   * entries are skipped whole.
   */
  async lookup(offset: number, length: number): Promise<Mapping> {
    const cs = this.cs;
    const end = offset + length;
    let first: Mapping | undefined;
    let len = 0;
    /** Add a piece; false when it does not join the run (the run is complete). */
    const add = (m: Mapping): boolean => {
      if (!first) {
        first = m;
        len = m.length;
        return m.kind !== 'compressed';
      }
      if (m.kind !== first.kind || m.kind === 'compressed') return false;
      if (m.kind === 'data' && first.kind === 'data' && (m.host !== first.host + len || !!m.shared !== !!first.shared)) return false;
      len += m.length;
      return true;
    };
    const span = this.l2Entries * cs;
    let pos = offset;
    outer: while (pos < end) {
      const l1i = Math.floor(pos / span);
      const tableEnd = Math.min(end, (l1i + 1) * span);
      const l2off = this.l1[l1i]!;
      if (l2off === 0) {
        if (!add({ kind: 'unallocated', length: tableEnd - pos })) break;
        pos = tableEnd;
        continue;
      }
      const t = await this.l2cache.get(l2off);
      let gc = Math.floor(pos / cs);
      let idx = gc - l1i * this.l2Entries;
      while (pos < tableEnd) {
        const gStart = gc * cs;
        const within = pos - gStart;
        const n = Math.min(cs - within, tableEnd - pos);
        const o = idx * this.entryBytes;
        const hi = ((t[o]! << 24) | (t[o + 1]! << 16) | (t[o + 2]! << 8) | t[o + 3]!) >>> 0;
        const lo = ((t[o + 4]! << 24) | (t[o + 5]! << 16) | (t[o + 6]! << 8) | t[o + 7]!) >>> 0;
        if (hi & COMPRESSED_HI) {
          this.checkCompressed(hi, lo, l2off, idx, t, o);
          const d = compressedDesc(hi, lo, this.clusterBits);
          const stored = Math.min(d.length, this.child.size - d.offset);
          if (!add({ kind: 'compressed', length: n, host: d.offset, stored, codec: this.writeCodec, exact: true })) break outer;
        } else {
          const host = stdOffset(hi, lo);
          if (stdReserved(hi, lo)) this.ignoredInEntry('l2 reserved', 'has reserved bits set', l2off, idx, hi, lo);
          const zeroBit = lo & 1;
          if (!this.extL2) {
            let piece: Mapping;
            if (zeroBit) {
              if (this.h.version === 2) throw this.corruptEntry('has the zero flag, which version 2 images do not have', l2off, idx, hi, lo);
              piece = { kind: 'zero', length: n };
            } else if (host === 0 && !(this.hasDataFile && hi & COPIED_HI)) {
              piece = { kind: 'unallocated', length: n };
            } else {
              this.checkHost(host, gStart, l2off, idx, hi, lo);
              piece = await this.dataPiece(host, within, n, false);
            }
            if (!add(piece)) break outer;
          } else {
            if (zeroBit) this.ignoredInEntry('l2 bit 0', 'has bit 0 set (reserved with extended L2 entries)', l2off, idx, hi, lo);
            const zbits = ((t[o + 8]! << 24) | (t[o + 9]! << 16) | (t[o + 10]! << 8) | t[o + 11]!) >>> 0;
            const abits = ((t[o + 12]! << 24) | (t[o + 13]! << 16) | (t[o + 14]! << 8) | t[o + 15]!) >>> 0;
            if ((zbits & abits) !== 0) throw this.corruptEntry('has subclusters both allocated and zero', l2off, idx, hi, lo);
            const hasHost = host !== 0 || (this.hasDataFile && (hi & COPIED_HI) !== 0);
            if (abits && !hasHost) throw this.corruptEntry('has allocated subclusters but no host offset', l2off, idx, hi, lo);
            if (abits) this.checkHost(host, gStart, l2off, idx, hi, lo);
            // A cluster not wholly allocated is rebuilt whole under the lock when written.
            const partial = abits !== ALL_SUBCLUSTERS;
            let p = within;
            const stopAt = within + n;
            while (p < stopAt) {
              const sc = Math.floor(p / this.subSize);
              const scEnd = Math.min(stopAt, (sc + 1) * this.subSize);
              const bit = 1 << sc;
              let piece: Mapping;
              if (abits & bit) piece = await this.dataPiece(host, p, scEnd - p, partial);
              else if (zbits & bit) piece = { kind: 'zero', length: scEnd - p };
              else piece = { kind: 'unallocated', length: scEnd - p };
              if (!add(piece)) break outer;
              p = scEnd;
            }
          }
        }
        pos += n;
        gc++;
        idx++;
      }
    }
    return { ...first!, length: len };
  }

  /** A data piece at `host + within`: shared unless the cluster is ours alone (writable images); past the end of the data file it reads as zero. */
  private async dataPiece(host: number, within: number, n: number, partial: boolean): Promise<Mapping> {
    const at = host + within;
    const avail = this.dataSize() - at;
    if (avail <= 0) return { kind: 'zero', length: n };
    const length = Math.min(n, avail);
    const shared = this.writable && (partial || (!this.hasDataFile && (await this.refcountAt(host)) !== 1));
    return shared ? { kind: 'data', length, host: at, shared } : { kind: 'data', length, host: at };
  }

  private checkHost(host: number, gStart: number, l2off: number, idx: number, hi: number, lo: number): void {
    if (host % this.cs !== 0) throw this.corruptEntry('host offset is not cluster aligned', l2off, idx, hi, lo);
    if (this.hasDataFile) {
      if (host !== gStart) throw this.corruptEntry(`host offset differs from the guest offset ${gStart} (external data file)`, l2off, idx, hi, lo);
      return;
    }
    if (host < this.cs) throw this.corruptEntry('host offset points into the header cluster', l2off, idx, hi, lo);
    if (host >= this.dataSize() && host >= this.end) throw this.corruptEntry(`host offset is past the end of the file (${this.dataSize()})`, l2off, idx, hi, lo);
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

  // ---------------------------------------------------------------- info

  /** The image description (Image.info). */
  async info(snapshots: Snapshot[]): Promise<ImageInfo> {
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
      'cluster-size': this.clusterSize,
      'dirty-flag': (h.incompatible & INCOMPAT_DIRTY) !== 0,
      'format-specific': { type: 'qcow2', data },
    };
    if (h.backingFile !== undefined) out['backing-filename'] = h.backingFile;
    if (h.backingFormat !== undefined) out['backing-filename-format'] = h.backingFormat;
    if (snapshots.length) {
      out.snapshots = snapshots.map((s) => {
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
    if (nv === 0) this.l2cache.drop(host);
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
    for (let k = 0; k < n; k++) await this.adjustRefcount(at + k * cs, 1);
    return at;
  }

  /** Give the cluster(s) of a compressed descriptor back. */
  private async freeCompressed(hi: number, lo: number): Promise<void> {
    const d = compressedDesc(hi, lo, this.clusterBits);
    const first = Math.floor(d.offset / this.cs);
    const last = Math.floor((d.offset + d.length - 1) / this.cs);
    for (let c = first; c <= last; c++) await this.adjustRefcount(c * this.cs, -1);
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

  // ---------------------------------------------------------------- metadata write-back

  /**
   * Write back all dirty metadata in crash-safe order: refcounts, L2, L1,
   * header (data is written before `commit` reaches the tables). Under the
   * engine's allocation lock.
   */
  private async writeMetadata(): Promise<void> {
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

  private async writeChild(dev: BlockDevice, buf: Uint8Array, off: number): Promise<void> {
    await growDevice(dev, off + buf.length, FORMAT);
    await dev.write(buf, off);
  }

  private async maybeWriteBack(): Promise<void> {
    if (this.l2cache.dirty > this.l2cache.capacity / 2 || this.rbcache.dirty > this.rbcache.capacity / 2) {
      await this.writeMetadata();
    }
  }

  /** Before the first write to an image with auto-clear bits: clear them (we do not maintain bitmaps). */
  beforeFirstWrite(): Promise<void> {
    if (!this.autoclearPending) return Promise.resolve();
    this.firstWrite ??= (async () => {
      this.h.autoclear &= AUTOCLEAR_DATA_FILE_RAW;
      this.h.autoclearHigh = 0;
      await this.writeHeaderFields();
      await this.child.flush();
      this.autoclearPending = false;
    })();
    return this.firstWrite;
  }

  /** Write back the metadata; the file ends where its last cluster does. */
  async flush(): Promise<void> {
    await this.writeMetadata();
    const c = this.child;
    if (c.size < this.end) {
      if (c.resize) await c.resize(this.end);
      else await c.writeZeroes(c.size, this.end - c.size);
    }
  }

  hostEnd(): number {
    return this.end;
  }

  // ---------------------------------------------------------------- allocation for the engine

  /** The L2 table for guest cluster `gc`, allocated or copied so that we own it. Called under the engine's allocation lock. */
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

  /** Release what an entry held (before it is overwritten). */
  private async releaseEntry(hi: number, lo: number): Promise<void> {
    if (hi & COMPRESSED_HI) return this.freeCompressed(hi, lo);
    if (this.hasDataFile) return;
    const host = this.entryHost(hi, lo);
    if (host > 0) await this.adjustRefcount(host, -1);
  }

  /** Point guest cluster `gc` at `host` (all subclusters allocated), releasing what the entry held. */
  private async setData(gc: number, host: number): Promise<void> {
    const { table, l2off, idx } = await this.l2ForWrite(gc);
    const [hi, lo] = this.entryAt(table, idx);
    if (this.entryHost(hi, lo) !== host || hi & COMPRESSED_HI) await this.releaseEntry(hi, lo);
    const [nhi, nlo] = encodeStd(host, true);
    this.setEntry(table, idx, nhi, nlo, 0, this.extL2 ? ALL_SUBCLUSTERS : 0);
    this.l2cache.markDirty(l2off, table);
  }

  /** The cluster's own host cluster when it is ours alone (refcount 1, or the data file), for a rebuild in place; else new space. */
  async allocate(offset: number): Promise<number> {
    const gc = Math.floor(offset / this.cs);
    if (this.hasDataFile) return gc * this.cs;
    const { table, idx } = await this.l2ForWrite(gc);
    const [hi, lo] = this.entryAt(table, idx);
    const host = this.entryHost(hi, lo);
    if (host >= this.cs && host % this.cs === 0 && (await this.refcountAt(host)) === 1) return host;
    return this.allocClusters(1);
  }

  async commit(offset: number, host: number): Promise<void> {
    await this.setData(Math.floor(offset / this.cs), host);
    await this.maybeWriteBack();
  }

  /** `clusters` contiguous clusters at the end of the file; their L2 tables are made ours first, so they do not land in the middle. */
  async allocateRun(offset: number, clusters: number): Promise<number> {
    const gc = Math.floor(offset / this.cs);
    for (let c = gc; c < gc + clusters; c += this.l2Entries - (c % this.l2Entries)) await this.l2ForWrite(c);
    if (this.hasDataFile) return gc * this.cs;
    return this.allocClusters(clusters);
  }

  async commitRun(offset: number, clusters: number, host: number): Promise<void> {
    const gc = Math.floor(offset / this.cs);
    for (let k = 0; k < clusters; k++) await this.setData(gc + k, host + k * this.cs);
    await this.maybeWriteBack();
  }

  /** Record a whole cluster as zero: the zero flag (v3, extended L2 zero bits) over a backing file, unallocated without one. */
  async markZero(offset: number): Promise<boolean> {
    if (this.hasDataFile || (this.h.version === 2 && this.backed)) return false;
    const { table, l2off, idx } = await this.l2ForWrite(Math.floor(offset / this.cs));
    const [hi, lo] = this.entryAt(table, idx);
    await this.releaseEntry(hi, lo);
    if (this.extL2) this.setEntry(table, idx, 0, 0, this.backed ? ALL_SUBCLUSTERS : 0, 0);
    else this.setEntry(table, idx, 0, this.h.version === 3 && this.backed ? 1 : 0);
    this.l2cache.markDirty(l2off, table);
    await this.maybeWriteBack();
    return true;
  }

  async allocateCompressed(offset: number, stored: number): Promise<number> {
    await this.l2ForWrite(Math.floor(offset / this.cs));
    return this.allocCompressed(stored);
  }

  async commitCompressed(offset: number, host: number, stored: number): Promise<void> {
    const { table, l2off, idx } = await this.l2ForWrite(Math.floor(offset / this.cs));
    const [hi, lo] = this.entryAt(table, idx);
    await this.releaseEntry(hi, lo);
    const [nhi, nlo] = encodeCompressed(host, stored, this.clusterBits);
    this.setEntry(table, idx, nhi, nlo, 0, 0);
    this.l2cache.markDirty(l2off, table);
    await this.maybeWriteBack();
  }

  /**
   * preallocation=metadata: every L2 table and a host cluster for every guest
   * cluster, laid out in guest order. Only for fresh containers, whose
   * unwritten space reads as zero (the clusters are holes until written).
   */
  async preallocateMetadata(): Promise<void> {
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
    await this.flush();
  }
}

/** The qcow2 Image: the engine's device over the driver, with qcow2's description, warnings and backing image. */
export class Qcow2Image extends DescribedImage {
  constructor(
    readonly fmt: Qcow2Format,
    readonly device: MappedDevice,
    snapshots: Snapshot[],
    private readonly backing: Image | undefined,
    private readonly path: string | undefined,
    private readonly log: WarningLog,
  ) {
    super(FORMAT, device, () => fmt.info(snapshots));
  }

  get warnings(): readonly string[] {
    return this.log.list;
  }

  get backingImage(): Image | undefined {
    return this.backing;
  }

  override async write(buf: Uint8Array, offset: number): Promise<void> {
    checkWritable(this, this.path);
    checkRange(this, offset, buf.length, 'write');
    if (buf.length === 0) return;
    await this.fmt.beforeFirstWrite();
    return super.write(buf, offset);
  }

  override async writeZeroes(offset: number, length: number): Promise<void> {
    checkWritable(this, this.path);
    checkRange(this, offset, length, 'writeZeroes');
    if (length === 0) return;
    await this.fmt.beforeFirstWrite();
    return super.writeZeroes(offset, length);
  }

  override async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    if (buf.length === 0) return;
    return super.read(buf, offset);
  }

  /** This layer's run at `offset`, with its host offset (map, check): see LayerRun in ../types.ts. */
  override async layerStatus(offset: number, length: number): Promise<LayerRun> {
    checkRange(this, offset, length, 'layerStatus');
    return super.layerStatus(offset, length);
  }

  async preallocateMetadata(): Promise<void> {
    await this.fmt.preallocateMetadata();
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
  const fmt = new Qcow2Format(child, h, l1, l1Copied, backing !== undefined, () => data.size, writable, opts.path, extras.allocEnd, log);
  if (writable) {
    try {
      await fmt.loadRefcountTable();
    } catch (e) {
      if (opened) await opened.close().catch(() => {});
      if (backing) await backing.close().catch(() => {});
      throw e;
    }
  }
  const dev = new MappedDevice(fmt, {
    container: child,
    writable,
    backing,
    compress: !!extras.compress,
    growAhead: writable,
    skipZeroWrites: true,
    unallocatedPastBacking: true,
    ...(data !== child ? { data } : {}),
  });
  return new Qcow2Image(fmt, dev, snapshots, backing, opts.path, log);
}
