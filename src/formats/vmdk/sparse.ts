/**
 * A hosted sparse extent (KDMV) as a MappedFormat for the shared engine:
 * header validation, the grain directory, grain tables (bounded cache),
 * grain markers of stream-optimized extents, and allocation for writable
 * monolithicSparse extents. Layouts: header.ts.
 *
 *   guest offset ──grain index──► GD[grain / numGTEsPerGT] = sector of a GT
 *                                 GT[grain % numGTEsPerGT] = GTE
 *   GTE 0                unallocated (backing file or zeros)
 *   GTE 1 + zeroed flag  zero
 *   GTE s, compressed    a grain marker at sector s: lba, size, zlib data
 *   GTE s                the grain's bytes at sector s
 */

import type { BlockDevice } from '../../core/device.js';
import { encodeU32le, put32le, safeNumber, u32le, u32leArray } from '../../core/bytes.js';
import { ImageError, fieldError } from '../../core/errors.js';
import { TableCache } from '../engine/cache.js';
import type { Mapping, MappedFormat } from '../engine/mapping.js';
import {
  COMPRESS_DEFLATE,
  FLAG_MARKER,
  FLAG_RGD,
  FLAG_ZERO_GRAIN,
  GD_AT_END,
  GTE_ZEROED,
  GrainMarker,
  type Header,
  MARKER_EOS,
  MARKER_FOOTER,
  MetaMarker,
  SECTOR,
  SparseHeader,
  VMDK4_MAGIC,
} from './header.js';

/** Grains larger than this are refused (qemu allows up to 1 GiB; VMware writes 64 KiB). */
export const MAX_GRAIN_SECTORS = 65536;
/** Grain directory entries held in memory at most (32 MiB). */
export const MAX_GD_ENTRIES = 8 << 20;
const GT_CACHE = 256;

function headerError(field: string, value: number | bigint, why: string, kind: 'invalid-format' | 'corrupt' | 'unsupported' = 'invalid-format', base = 0): ImageError {
  const off = base + SparseHeader.offsetOf(field as never);
  return fieldError(kind, 'vmdk', field, off, value, why);
}

export interface SparseLayout {
  header: Header;
  /** Byte offset of the header that rules (the footer's, when gdOffset says GD_AT_END). */
  headerAt: number;
  capacity: number;
  grainBytes: number;
  gtes: number;
  gdEntries: number;
  gdHost: number;
  rgdHost?: number;
  compressed: boolean;
  markers: boolean;
  zeroGrain: boolean;
}

/** The footer of a stream whose header says the GD is at the end: footer marker, header, end-of-stream marker. */
async function readFooter(child: BlockDevice): Promise<Header> {
  const at = child.size - 3 * SECTOR;
  if (at < SECTOR) throw headerError('gdOffset', GD_AT_END, 'says the grain directory is in a footer, but the file has no room for one');
  const tail = new Uint8Array(3 * SECTOR);
  await child.read(tail, at);
  const marker = MetaMarker.parse(tail);
  const eos = MetaMarker.parse(tail.subarray(2 * SECTOR));
  const footer = SparseHeader.parse(tail.subarray(SECTOR));
  if (marker.size !== 0 || marker.type !== MARKER_FOOTER) {
    throw fieldError('invalid-format', 'vmdk', 'footer marker', at, marker.type, 'is not a footer marker');
  }
  if (footer.magic !== VMDK4_MAGIC) throw fieldError('invalid-format', 'vmdk', 'footer magic', at + SECTOR, footer.magic, 'is not KDMV');
  if (eos.sectors !== 0n || eos.size !== 0 || eos.type !== MARKER_EOS) {
    throw fieldError('invalid-format', 'vmdk', 'end-of-stream marker', at + 2 * SECTOR, eos.type, 'is not an end-of-stream marker');
  }
  if (footer.gdOffset === GD_AT_END) throw headerError('gdOffset', GD_AT_END, 'is "at the end" in the footer too', 'invalid-format', at + SECTOR);
  return footer;
}

/** Sectors → bytes for a table position, checked to lie inside the file. */
function tableHost(field: string, sector: bigint, bytes: number, fileSize: number, base: number): number {
  const host = safeNumber(sector * 512n, 'vmdk', field, base + SparseHeader.offsetOf(field as never));
  if (host < SECTOR || host + bytes > fileSize) {
    throw headerError(field, sector, `puts ${bytes} bytes of table at ${host}, outside the ${fileSize}-byte file`, 'corrupt', base);
  }
  return host;
}

/** Read and validate the header (and footer) of a sparse extent. */
export async function readSparseLayout(child: BlockDevice): Promise<SparseLayout> {
  if (child.size < SECTOR) {
    throw new ImageError('invalid-format', `vmdk: the sparse extent is ${child.size} bytes, smaller than its header`, { format: 'vmdk', value: child.size });
  }
  const head = new Uint8Array(SECTOR);
  await child.read(head, 0);
  let h = SparseHeader.parse(head);
  if (h.magic !== VMDK4_MAGIC) throw headerError('magic', h.magic, 'is not KDMV');
  let headerAt = 0;
  if (h.gdOffset === GD_AT_END) {
    h = await readFooter(child);
    headerAt = child.size - 2 * SECTOR;
  }
  if (h.version < 1 || h.version > 3) throw headerError('version', h.version, 'is not 1, 2 or 3', 'unsupported', headerAt);
  if (h.compressAlgorithm > COMPRESS_DEFLATE) throw headerError('compressAlgorithm', h.compressAlgorithm, 'is not 0 (none) or 1 (deflate)', 'unsupported', headerAt);
  if (h.grainSize < 1n || h.grainSize > BigInt(MAX_GRAIN_SECTORS)) {
    throw headerError('grainSize', h.grainSize, `is not 1 .. ${MAX_GRAIN_SECTORS} sectors`, 'invalid-format', headerAt);
  }
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > 512) throw headerError('numGTEsPerGT', h.numGTEsPerGT, 'is not 1 .. 512', 'invalid-format', headerAt);
  const capacity = safeNumber(h.capacity * 512n, 'vmdk', 'capacity', headerAt + SparseHeader.offsetOf('capacity'));
  const grainBytes = Number(h.grainSize) * SECTOR;
  const gtes = h.numGTEsPerGT;
  const gdEntries = Math.ceil(capacity / (grainBytes * gtes));
  if (gdEntries > MAX_GD_ENTRIES) {
    throw headerError('capacity', h.capacity, `needs ${gdEntries} grain directory entries, more than ${MAX_GD_ENTRIES}`, 'unsupported', headerAt);
  }
  const gdHost = tableHost('gdOffset', h.gdOffset, gdEntries * 4, child.size, headerAt);
  const rgd = (h.flags & FLAG_RGD) !== 0 && h.rgdOffset !== 0n;
  const rgdHost = rgd ? tableHost('rgdOffset', h.rgdOffset, gdEntries * 4, child.size, headerAt) : undefined;
  return {
    header: h,
    headerAt,
    capacity,
    grainBytes,
    gtes,
    gdEntries,
    gdHost,
    rgdHost,
    compressed: h.compressAlgorithm === COMPRESS_DEFLATE,
    markers: (h.flags & FLAG_MARKER) !== 0,
    zeroGrain: (h.flags & FLAG_ZERO_GRAIN) !== 0,
  };
}

export class SparseExtent implements MappedFormat {
  readonly name = 'vmdk';
  readonly size: number;
  readonly clusterSize: number;
  private readonly gts = new TableCache<Uint32Array>(GT_CACHE);
  private next: number;

  private constructor(
    private readonly child: BlockDevice,
    readonly layout: SparseLayout,
    private readonly gd: Uint32Array,
    private readonly rgd: Uint32Array | undefined,
  ) {
    this.size = layout.capacity;
    this.clusterSize = layout.grainBytes;
    this.next = Math.ceil(child.size / SECTOR) * SECTOR;
  }

  static async open(child: BlockDevice, layout?: SparseLayout, writable = false): Promise<SparseExtent> {
    const l = layout ?? (await readSparseLayout(child));
    const readGd = async (host: number): Promise<Uint32Array> => {
      const raw = new Uint8Array(l.gdEntries * 4);
      await child.read(raw, host);
      return u32leArray(raw, l.gdEntries);
    };
    const gd = await readGd(l.gdHost);
    const rgd = writable && l.rgdHost !== undefined ? await readGd(l.rgdHost) : undefined;
    return new SparseExtent(child, l, gd, rgd);
  }

  private gtBytes(): number {
    return this.layout.gtes * 4;
  }

  /** Host offset of GT `i` (from `dir`), checked against the file. 0: no table. */
  private gtHost(dir: Uint32Array, i: number, which: string): number {
    const sector = dir[i]!;
    if (sector === 0) return 0;
    const host = sector * SECTOR;
    if (host + this.gtBytes() > this.child.size) {
      const base = which === 'rgd' ? this.layout.rgdHost! : this.layout.gdHost;
      throw fieldError('corrupt', 'vmdk', `${which === 'rgd' ? 'redundant ' : ''}grain directory entry ${i}`, base + 4 * i, sector, `puts a grain table outside the ${this.child.size}-byte file`);
    }
    return host;
  }

  private table(i: number, host: number): Promise<Uint32Array> {
    return this.gts.get(i, async () => {
      const raw = new Uint8Array(this.gtBytes());
      await this.child.read(raw, host);
      return u32leArray(raw, this.layout.gtes);
    });
  }

  async lookup(offset: number, length: number): Promise<Mapping> {
    const { grainBytes, gtes } = this.layout;
    const grain = Math.floor(offset / grainBytes);
    const gdIndex = Math.floor(grain / gtes);
    const within = offset - grain * grainBytes;
    const host = this.gtHost(this.gd, gdIndex, 'gd');
    if (host === 0) {
      const tableEnd = (gdIndex + 1) * gtes * grainBytes;
      return { kind: 'unallocated', length: Math.min(length, tableEnd - offset) };
    }
    const gt = await this.table(gdIndex, host);
    const first = grain % gtes;
    const gte = gt[first]!;
    const end = offset + length;
    // Extend the run over following grains of the same kind in this table.
    const runOf = (same: (e: number, k: number) => boolean): number => {
      let k = 1;
      while (first + k < gtes && (grain + k) * grainBytes < end && same(gt[first + k]!, k)) k++;
      return Math.min(length, k * grainBytes - within);
    };
    if (gte === 0) return { kind: 'unallocated', length: runOf((e) => e === 0) };
    if (gte === GTE_ZEROED && this.layout.zeroGrain) return { kind: 'zero', length: runOf((e) => e === GTE_ZEROED) };
    const gteOffset = host + 4 * first;
    const grainHost = gte * SECTOR;
    if (this.layout.compressed) return this.compressedRun(grainHost, gteOffset, gte, Math.min(length, grainBytes - within));
    const n = runOf((e, k) => e === gte + (k * grainBytes) / SECTOR);
    if (grainHost + within + n > this.child.size) {
      throw fieldError('corrupt', 'vmdk', `grain table entry ${first} of table ${gdIndex}`, gteOffset, gte, `puts grain data beyond the end of the ${this.child.size}-byte file`);
    }
    return { kind: 'data', length: n, host: grainHost + within };
  }

  private async compressedRun(grainHost: number, gteOffset: number, gte: number, length: number): Promise<Mapping> {
    const limit = 2 * this.layout.grainBytes + SECTOR;
    if (grainHost >= this.child.size) {
      throw fieldError('corrupt', 'vmdk', 'grain table entry', gteOffset, gte, `points beyond the end of the ${this.child.size}-byte file`);
    }
    if (!this.layout.markers) {
      return { kind: 'compressed', length, host: grainHost, stored: Math.min(limit, this.child.size - grainHost), codec: 'zlib' };
    }
    if (grainHost + GrainMarker.size > this.child.size) {
      throw fieldError('corrupt', 'vmdk', 'grain marker', grainHost, gte, 'is cut off by the end of the file');
    }
    const raw = new Uint8Array(GrainMarker.size);
    await this.child.read(raw, grainHost);
    const size = u32le(raw, 8);
    if (size === 0 || size > limit || grainHost + GrainMarker.size + size > this.child.size) {
      throw fieldError('corrupt', 'vmdk', 'grain marker size', grainHost + 8, size, `is not 1 .. ${limit} bytes inside the ${this.child.size}-byte file`);
    }
    return { kind: 'compressed', length, host: grainHost + GrainMarker.size, stored: size, codec: 'zlib' };
  }

  // --- allocation (writable, uncompressed extents) ---

  async allocate(_offset: number): Promise<number> {
    const host = this.next;
    checkGteRange(host);
    this.next += this.layout.grainBytes;
    return host;
  }

  async commit(offset: number, host: number): Promise<void> {
    await this.setEntry(offset, host / SECTOR);
  }

  async markZero(offset: number): Promise<boolean> {
    if (!this.layout.zeroGrain) return false;
    await this.setEntry(offset, GTE_ZEROED);
    return true;
  }

  /** Point the GTE of the grain at `offset` at `value`, in the GT and in the redundant GT. */
  private async setEntry(offset: number, value: number): Promise<void> {
    const { grainBytes, gtes } = this.layout;
    const grain = Math.floor(offset / grainBytes);
    const gdIndex = Math.floor(grain / gtes);
    const host = this.gtHost(this.gd, gdIndex, 'gd');
    if (host === 0) {
      throw new ImageError('unsupported', `vmdk: grain directory entry ${gdIndex} has no grain table to write into`, { format: 'vmdk', offset: this.layout.gdHost + 4 * gdIndex });
    }
    const gt = await this.table(gdIndex, host);
    gt[grain % gtes] = value;
    const entry = new Uint8Array(4);
    put32le(entry, 0, value);
    await this.child.write(entry, host + 4 * (grain % gtes));
    if (this.rgd) {
      const rhost = this.gtHost(this.rgd, gdIndex, 'rgd');
      if (rhost !== 0) await this.child.write(entry, rhost + 4 * (grain % gtes));
    }
  }
}

/** A grain table entry is a 32-bit sector number: grains end at 2 TiB into the file. */
export function checkGteRange(host: number): void {
  if (host / SECTOR > 0xffffffff) {
    throw new ImageError('unsupported', `vmdk: a grain at byte ${host} of the extent is past the 2 TiB a grain table entry can address`, { format: 'vmdk', offset: host });
  }
}

/** Grain directory and tables of a new extent: each GD entry points at its own preallocated GT. */
export function encodeDirectory(gdEntries: number, firstGtSector: number, gtSectors: number): Uint8Array {
  const gd = new Uint32Array(gdEntries);
  for (let i = 0; i < gdEntries; i++) gd[i] = firstGtSector + i * gtSectors;
  return encodeU32le(gd);
}
