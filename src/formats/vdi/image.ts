/**
 * A VDI image: validation on open, the block map, and data blocks allocated
 * at the end of the data area.
 *
 * Spec: VirtualBox src/VBox/Storage/VDICore.h (structures) and VDI.cpp
 * (validation, layout); qemu block/vdi.c (what qemu accepts and writes).
 *
 * Vocabulary (VirtualBox / qemu / here):
 *   block (cbBlock)               cluster (block_size)        block
 *   blocks array (offBlocks)      bmap (offset_bmap)          block map
 *   data block index              bmap entry                  map entry
 *   cBlocksAllocated              blocks_allocated            blocksAllocated
 *   fixed image (TYPE_FIXED)      static image                fixed/static
 *   normal image (TYPE_NORMAL)    dynamic image               dynamic
 *
 * The image runs on the shared engine (../engine): this file holds only what
 * is VDI's own, the header checks, the block map and where new blocks go
 * (VdiFormat); the engine reads, writes, builds new blocks whole and
 * serialises allocation.
 */

import { type BlockDevice, checkRange, growDevice } from '../../core/device.js';
import { ImageError, fieldError } from '../../core/errors.js';
import { MappedDevice, type EngineOptions } from '../engine/engine.js';
import { DescribedImage } from '../engine/image.js';
import type { Mapping, MappedFormat } from '../engine/mapping.js';
import type { LayerRun } from '../types.js';
import type { WarningLog } from '../warnings.js';
import { BLOCK_FREE, BLOCK_ZERO, BlockMapChecker, decodeEntries, encodeEntries, isAllocated } from './blockmap.js';
import {
  HEADER1_SIZE,
  HEADER1PLUS_SIZE,
  HEADER_AREA,
  OFF,
  PRE_HEADER_SIZE,
  TYPE_DIFF,
  TYPE_FIXED,
  TYPE_NORMAL,
  TYPE_UNDO,
  VDI_SIGNATURE,
  VDI_TEXT,
  VDI_VERSION_1_1,
  type VdiHeader,
  encodeHeader,
  isNullUuid,
  parseHeader,
  randomVdiUuid,
} from './header.js';

const SECTOR = 512;
const MiB = 1024 * 1024;
/** qemu's limit: the map must stay below 2 GiB (block/vdi.c VDI_BLOCKS_IN_IMAGE_MAX). */
export const VDI_BLOCKS_IN_IMAGE_MAX = Math.floor((2 ** 31 - SECTOR) / 4);
/** VirtualBox opens block sizes from 1 MiB / 8 to 1 MiB * 128 (VDI.cpp vdiOpenImage). */
export const MIN_BLOCK_SIZE = MiB / 8;
export const MAX_BLOCK_SIZE = MiB * 128;
/** Entries read or written per chunk of the block map. */
export const MAP_CHUNK_ENTRIES = 256 * 1024;

export interface VdiGeometry {
  header: VdiHeader;
  /** Raw header bytes as read (pre-header + header), patched and rewritten on flush. */
  headerBytes: Uint8Array;
  virtualSize: number;
  fileSize: number;
}

const isPow2 = (x: number) => x > 0 && (x & (x - 1)) === 0;

/**
 * Read and validate the header. Throws ImageError naming the field.
 *
 * Fields qemu ignores when it reads (image_flags, the LCHS geometry, and for
 * an image opened read-only also header_size, an unknown image_type and
 * blocks_allocated, which only matter for writing) are reported to `log`
 * instead of refused.
 */
export async function readHeader(child: BlockDevice, opts: { log?: WarningLog; writable?: boolean } = {}): Promise<VdiGeometry> {
  const { log, writable } = opts;
  const fileSize = child.size;
  if (fileSize < PRE_HEADER_SIZE + HEADER1_SIZE) {
    throw fieldError(
      'invalid-format',
      'vdi',
      'header',
      0,
      fileSize,
      `is cut short: the file has ${fileSize} bytes, a VDI header needs ${PRE_HEADER_SIZE + HEADER1_SIZE}`,
    );
  }
  const headLen = Math.min(fileSize, HEADER_AREA);
  const head = new Uint8Array(headLen);
  await child.read(head, 0);
  const h = parseHeader(head);
  const err = (kind: 'invalid-format' | 'corrupt' | 'unsupported', field: keyof typeof OFF, value: number | bigint | string, why: string) =>
    fieldError(kind, 'vdi', field, OFF[field], value, why);

  if (h.signature !== VDI_SIGNATURE) {
    throw err('invalid-format', 'signature', `0x${h.signature.toString(16).padStart(8, '0')}`, 'is not the VDI signature 0xbeda107f');
  }
  if (h.version !== VDI_VERSION_1_1) {
    throw err(
      'unsupported',
      'version',
      h.version,
      `is VDI ${h.version >>> 16}.${h.version & 0xffff}; only version 1.1 (0x00010001) is supported`,
    );
  }
  const odd = (field: keyof typeof OFF, value: number | bigint | string, why: string) =>
    log?.add(field, field, OFF[field], value, `${why}, which qemu ignores when reading: ignored`);
  const readOnlyOdd = (kind: 'invalid-format' | 'corrupt', field: keyof typeof OFF, value: number, why: string) => {
    if (writable) throw err(kind, field, value, why);
    odd(field, value, `${why} (refused for writing)`);
  };
  // The header's own size only decides whether the LCHS geometry is there.
  const headerSize = h.headerSize === HEADER1_SIZE || h.headerSize === HEADER1PLUS_SIZE || writable ? h.headerSize : HEADER1_SIZE;
  if (h.headerSize < HEADER1_SIZE) {
    readOnlyOdd('invalid-format', 'header_size', h.headerSize, `is smaller than the version 1.1 header (${HEADER1_SIZE} bytes)`);
  } else if (headerSize !== h.headerSize) {
    odd('header_size', h.headerSize, `is neither ${HEADER1_SIZE} nor ${HEADER1PLUS_SIZE} (read as ${HEADER1_SIZE}, without the LCHS geometry)`);
  }
  if (headerSize >= HEADER1PLUS_SIZE && fileSize < HEADER_AREA) {
    throw err('invalid-format', 'header_size', h.headerSize, `says ${h.headerSize} bytes but the file ends at ${fileSize}`);
  }
  if (h.imageType === TYPE_UNDO || h.imageType === TYPE_DIFF) {
    throw err(
      'unsupported',
      'image_type',
      h.imageType,
      `is a ${h.imageType === TYPE_DIFF ? 'differencing' : 'undo'} image: only normal (dynamic) and fixed VDI images are supported; merge it into its parent with VirtualBox first`,
    );
  }
  if (h.imageType !== TYPE_NORMAL && h.imageType !== TYPE_FIXED) {
    readOnlyOdd('invalid-format', 'image_type', h.imageType, 'is not a VDI image type (1 normal, 2 fixed, 3 undo, 4 differencing)');
  }
  // VirtualBox's mask: fFlags << 8 within FIXED (0x10000) | DIFF (0x20000) | ZERO_EXPAND (0x100).
  if ((h.imageFlags & ~0x301) !== 0) {
    odd('image_flags', `0x${h.imageFlags.toString(16)}`, 'has bits VirtualBox does not define (valid: 0x1, 0x100, 0x200)');
  }
  if (!isNullUuid(h.uuidLink)) {
    throw err('unsupported', 'uuid_link', 0, 'is set: the image links to a parent image, which is not supported');
  }
  if (!isNullUuid(h.uuidParent)) {
    throw err('unsupported', 'uuid_parent', 0, "is set: the image depends on a parent image's state, which is not supported");
  }
  if (h.sectorSize !== SECTOR) {
    throw err('unsupported', 'sector_size', h.sectorSize, 'is not 512: only 512-byte sectors are supported');
  }
  if (h.lchs && headerSize >= HEADER1PLUS_SIZE && h.lchs.sectorSize !== SECTOR) {
    odd('lchs_sector_size', h.lchs.sectorSize, 'is not 512 (VirtualBox refuses such images)');
  }
  if (!isPow2(h.blockSize)) {
    throw err('invalid-format', 'block_size', h.blockSize, 'is not a power of two');
  }
  if (h.blockSize < MIN_BLOCK_SIZE || h.blockSize > MAX_BLOCK_SIZE) {
    throw err('unsupported', 'block_size', h.blockSize, `is outside ${MIN_BLOCK_SIZE}..${MAX_BLOCK_SIZE} bytes (the range VirtualBox opens)`);
  }
  if (h.blockExtra !== 0 && (!isPow2(h.blockExtra) || h.blockExtra > h.blockSize)) {
    throw err('invalid-format', 'block_extra', h.blockExtra, 'must be 0 or a power of two no larger than block_size');
  }
  if (h.blocksInImage > VDI_BLOCKS_IN_IMAGE_MAX) {
    throw err('unsupported', 'blocks_in_image', h.blocksInImage, `exceeds ${VDI_BLOCKS_IN_IMAGE_MAX} blocks (a block map above 2 GiB)`);
  }
  // qemu rounds an odd disk size up to a whole sector (VirtualBox rounds it down).
  const rounded = (h.diskSize + 511n) & ~511n;
  const capacity = BigInt(h.blocksInImage) * BigInt(h.blockSize);
  if (rounded > capacity) {
    throw err(
      'invalid-format',
      'disk_size',
      h.diskSize,
      `is larger than blocks_in_image (${h.blocksInImage}) x block_size (${h.blockSize}) = ${capacity} bytes`,
    );
  }
  if (rounded > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw err('unsupported', 'disk_size', h.diskSize, 'is above 2^53 bytes');
  }
  if (h.offsetBmap % SECTOR !== 0) {
    throw err('unsupported', 'offset_bmap', h.offsetBmap, 'is not a multiple of 512 (qemu refuses such images too)');
  }
  if (h.offsetBmap < PRE_HEADER_SIZE + headerSize) {
    throw err('invalid-format', 'offset_bmap', h.offsetBmap, `overlaps the header, which ends at ${PRE_HEADER_SIZE + headerSize}`);
  }
  if (h.offsetBmap > fileSize) {
    throw err('corrupt', 'offset_bmap', h.offsetBmap, `is past the end of the file (${fileSize} bytes)`);
  }
  const mapEnd = h.offsetBmap + 4 * h.blocksInImage;
  if (mapEnd > fileSize) {
    throw err(
      'corrupt',
      'blocks_in_image',
      h.blocksInImage,
      `needs a block map of ${4 * h.blocksInImage} bytes at offset ${h.offsetBmap}, past the end of the file (${fileSize} bytes)`,
    );
  }
  if (h.offsetData % SECTOR !== 0) {
    throw err('unsupported', 'offset_data', h.offsetData, 'is not a multiple of 512 (qemu refuses such images too)');
  }
  if (h.offsetData < mapEnd) {
    throw err('invalid-format', 'offset_data', h.offsetData, `overlaps the block map, which ends at ${mapEnd}`);
  }
  if (h.offsetData > fileSize) {
    throw err('corrupt', 'offset_data', h.offsetData, `is past the end of the file (${fileSize} bytes)`);
  }
  // blocks_allocated says where the next block goes: only writing depends on it.
  if (h.blocksAllocated > h.blocksInImage) {
    readOnlyOdd('corrupt', 'blocks_allocated', h.blocksAllocated, `is more than blocks_in_image (${h.blocksInImage})`);
  }
  // Every allocated block was written when it was allocated (by VirtualBox and
  // qemu alike): at least the last one must start inside the file.
  const lastBlockStart = h.offsetData + (h.blocksAllocated - 1) * (h.blockSize + h.blockExtra);
  if (h.blocksAllocated > 0 && lastBlockStart >= fileSize) {
    readOnlyOdd(
      'corrupt',
      'blocks_allocated',
      h.blocksAllocated,
      `says ${h.blocksAllocated} data blocks are allocated, but block ${h.blocksAllocated - 1} would start at ${lastBlockStart}, past the end of the file (${fileSize} bytes)`,
    );
  }
  const headerBytes = new Uint8Array(PRE_HEADER_SIZE + Math.min(h.headerSize, HEADER1PLUS_SIZE));
  headerBytes.set(head.subarray(0, headerBytes.length));
  return { header: h, headerBytes, virtualSize: Number(rounded), fileSize };
}

/**
 * Load and validate the block map. It is validated in chunks first, failing
 * at the first bad entry, and only then read into its final array, so a
 * hostile header over a large sparse file costs one chunk, not the map.
 */
export async function readBlockMap(child: BlockDevice, g: VdiGeometry, opts: { log?: WarningLog; writable?: boolean } = {}): Promise<Uint32Array> {
  const h = g.header;
  const checker = new BlockMapChecker({
    log: opts.writable ? undefined : opts.log,
    readOnly: !opts.writable,
    offsetBmap: h.offsetBmap,
    offsetData: h.offsetData,
    blockSize: h.blockSize,
    blockExtra: h.blockExtra,
    blocksAllocated: h.blocksAllocated,
    diskSize: g.virtualSize,
    fileSize: g.fileSize,
  });
  const chunkEntries = Math.min(MAP_CHUNK_ENTRIES, h.blocksInImage);
  const buf = new Uint8Array(chunkEntries * 4);
  const entries = new Uint32Array(chunkEntries);
  for (let first = 0; first < h.blocksInImage; first += MAP_CHUNK_ENTRIES) {
    const n = Math.min(MAP_CHUNK_ENTRIES, h.blocksInImage - first);
    await child.read(buf.subarray(0, n * 4), h.offsetBmap + first * 4);
    decodeEntries(buf.subarray(0, n * 4), entries);
    checker.check(entries.subarray(0, n), first);
  }
  if (h.blocksInImage <= MAP_CHUNK_ENTRIES) return entries;
  const map = new Uint32Array(h.blocksInImage);
  for (let first = 0; first < h.blocksInImage; first += MAP_CHUNK_ENTRIES) {
    const n = Math.min(MAP_CHUNK_ENTRIES, h.blocksInImage - first);
    await child.read(buf.subarray(0, n * 4), h.offsetBmap + first * 4);
    decodeEntries(buf.subarray(0, n * 4), map, first);
  }
  return map;
}

/**
 * The VDI driver for the engine: the block map is held whole (4 bytes per
 * block); blocks are the engine's clusters. New blocks are appended after
 * the last allocated one (blocks_allocated); the map sectors that changed
 * and the header are written back, coalesced, at flush, after the data they
 * describe, so a crash leaves at worst unreferenced blocks.
 *
 * Zero writes keep a stored block stored (qemu-img check counts
 * blocks_allocated against the map), so there is no markZero: free and
 * zero blocks already read as zero and the engine skips them.
 */
export class VdiFormat implements MappedFormat {
  readonly name = 'vdi';
  readonly size: number;
  readonly clusterSize: number;
  readonly h: VdiHeader;
  private readonly blockTotal: number;
  allocatedNow: number;
  /** 512-byte sectors of the block map that changed since the last flush. */
  private readonly dirtyMapSectors = new Set<number>();
  private headerDirty = false;
  private touched: boolean;

  constructor(
    private readonly child: BlockDevice,
    g: VdiGeometry,
    readonly map: Uint32Array,
    private readonly headerBytes: Uint8Array,
    fresh: boolean,
  ) {
    this.h = { ...g.header };
    this.size = g.virtualSize;
    this.clusterSize = g.header.blockSize;
    this.blockTotal = g.header.blockSize + g.header.blockExtra;
    this.allocatedNow = g.header.blocksAllocated;
    // A freshly created image already has fresh UUIDs.
    this.touched = fresh;
    if (this.h.blockExtra === 0) {
      this.allocateRun = (offset, clusters) => this.allocateBlocks(offset, clusters);
      this.commitRun = (offset, clusters, host) => this.commitBlocks(offset, clusters, host);
    }
  }

  dataOffset(entry: number): number {
    return this.h.offsetData + entry * this.blockTotal + this.h.blockExtra;
  }

  async lookup(offset: number, length: number): Promise<Mapping> {
    const bs = this.clusterSize;
    const map = this.map;
    let b = Math.floor(offset / bs);
    const first = map[b]!;
    const end = offset + length;
    let stop = (b + 1) * bs;
    if (isAllocated(first)) {
      const next = (e: number) => isAllocated(e) && e === first + (b + 1 - Math.floor(offset / bs));
      while (stop < end && next(map[b + 1]!)) {
        b++;
        stop += bs;
      }
      return { kind: 'data', length: Math.min(stop, end) - offset, host: this.dataOffset(first) + (offset % bs) };
    }
    while (stop < end && map[b + 1] === first) {
      b++;
      stop += bs;
    }
    return { kind: first === BLOCK_ZERO ? 'zero' : 'unallocated', length: Math.min(stop, end) - offset };
  }

  async allocate(_offset: number): Promise<number> {
    if (this.allocatedNow >= this.h.blocksInImage) {
      // Only an image that leaks blocks gets here (blocks_allocated above the blocks the map uses).
      throw fieldError('corrupt', 'vdi', 'blocks_allocated', OFF.blocks_allocated, this.allocatedNow, 'leaves no data block to allocate: it already equals blocks_in_image');
    }
    const idx = this.allocatedNow++;
    this.headerDirty = true;
    const host = this.dataOffset(idx);
    // The extra area before the block's data (none in images anyone writes today) reads as zero.
    if (this.h.blockExtra > 0) {
      await growDevice(this.child, host, 'vdi');
      await this.child.write(new Uint8Array(this.h.blockExtra), host - this.h.blockExtra);
    }
    return host;
  }

  async commit(offset: number, host: number): Promise<void> {
    const b = Math.floor(offset / this.clusterSize);
    this.map[b] = (host - this.h.blockExtra - this.h.offsetData) / this.blockTotal;
    this.dirtyMapSectors.add(Math.floor((b * 4) / SECTOR));
  }

  /**
   * Several whole blocks at once (the engine's run path): the next
   * `clusters` data blocks, contiguous in the file when blocks carry no
   * extra area (every image written today); with one, blocks are allocated
   * one by one (allocateRun is not offered then).
   */
  readonly allocateRun?: (offset: number, clusters: number) => Promise<number>;
  readonly commitRun?: (offset: number, clusters: number, host: number) => Promise<void>;

  private async allocateBlocks(_offset: number, clusters: number): Promise<number> {
    if (this.allocatedNow + clusters > this.h.blocksInImage) {
      throw fieldError('corrupt', 'vdi', 'blocks_allocated', OFF.blocks_allocated, this.allocatedNow, `leaves fewer than ${clusters} data blocks to allocate before blocks_in_image`);
    }
    const idx = this.allocatedNow;
    this.allocatedNow += clusters;
    this.headerDirty = true;
    return this.dataOffset(idx);
  }

  private async commitBlocks(offset: number, clusters: number, host: number): Promise<void> {
    for (let k = 0; k < clusters; k++) await this.commit(offset + k * this.clusterSize, host + k * this.blockTotal);
  }

  /** First modification after opening an existing image: VirtualBox gives it a new modification UUID. */
  touch(): void {
    if (this.touched) return;
    this.touched = true;
    this.h.uuidLastSnap = randomVdiUuid();
    this.headerDirty = true;
  }

  /** The changed block map sectors, coalesced into runs, then the header. */
  async flush(): Promise<void> {
    if (this.dirtyMapSectors.size) {
      const sectors = [...this.dirtyMapSectors].sort((a, b) => a - b);
      this.dirtyMapSectors.clear();
      const perSector = SECTOR / 4;
      let i = 0;
      while (i < sectors.length) {
        let j = i;
        while (j + 1 < sectors.length && sectors[j + 1] === sectors[j]! + 1 && j - i < 2047) j++;
        const first = sectors[i]! * perSector;
        const last = Math.min(this.h.blocksInImage, (sectors[j]! + 1) * perSector);
        await this.child.write(encodeEntries(this.map, first, last - first), this.h.offsetBmap + first * 4);
        i = j + 1;
      }
    }
    if (this.headerDirty) {
      this.headerDirty = false;
      const v = new DataView(this.headerBytes.buffer, this.headerBytes.byteOffset, this.headerBytes.byteLength);
      v.setUint32(OFF.blocks_allocated, this.allocatedNow, true);
      this.h.blocksAllocated = this.allocatedNow;
      this.headerBytes.set(this.h.uuidLastSnap, OFF.uuid_last_snap);
      await this.child.write(this.headerBytes, 0);
    }
  }
}

/**
 * The engine's device, giving the image a new modification UUID at its first
 * change (VirtualBox does): whole blocks not stored yet go through the
 * engine's run path (allocateRun), zeros onto blocks that read as zero store
 * nothing (skipZeroWrites), as before the move onto the engine.
 */
class VdiDevice extends MappedDevice {
  constructor(
    private readonly v: VdiFormat,
    o: EngineOptions,
  ) {
    super(v, { ...o, skipZeroWrites: true });
  }

  override write(buf: Uint8Array, offset: number): Promise<void> {
    if (!this.readOnly && buf.length > 0) this.v.touch();
    return super.write(buf, offset);
  }

  override writeZeroes(offset: number, length: number): Promise<void> {
    if (!this.readOnly && length > 0) this.v.touch();
    return super.writeZeroes(offset, length);
  }
}

export class VdiImage extends DescribedImage {
  /** See Image.warnings. */
  readonly warnings: readonly string[];
  private readonly v: VdiFormat;

  constructor(child: BlockDevice, g: VdiGeometry, map: Uint32Array, opts: { writable: boolean; fresh?: boolean; log?: WarningLog }) {
    const v = new VdiFormat(child, g, map, g.headerBytes, !!opts.fresh);
    const dev = new VdiDevice(v, { container: child, writable: opts.writable, zeroInit: !!opts.fresh && g.header.imageType !== TYPE_FIXED });
    super('vdi', dev, async () => ({ format: 'vdi', 'virtual-size': v.size, 'cluster-size': v.clusterSize, 'dirty-flag': false }));
    this.v = v;
    this.warnings = opts.log?.list ?? [];
  }

  /** 1 dynamic (normal), 2 fixed (static). */
  get imageType(): number {
    return this.v.h.imageType;
  }

  get blocksAllocated(): number {
    return this.v.allocatedNow;
  }

  /**
   * This layer's run at `offset`, with its host offset (map, check): see
   * LayerRun in ../types.ts. VDI has no backing file: a block not stored
   * reads as zero, and qemu maps it as present zeros.
   */
  override async layerStatus(offset: number, length: number): Promise<LayerRun> {
    checkRange(this, offset, length, 'layerStatus');
    const { map } = this.v;
    const bs = this.v.clusterSize;
    const end = offset + length;
    let b = Math.floor(offset / bs);
    const first = map[b]!;
    let stop = Math.min(end, (b + 1) * bs);
    if (!isAllocated(first)) {
      while (stop < end && !isAllocated(map[b + 1]!)) stop = Math.min(end, (++b + 1) * bs);
      return { kind: 'zero', length: stop - offset };
    }
    const host = this.v.dataOffset(first) + (offset - b * bs);
    while (stop < end && isAllocated(map[b + 1]!) && this.v.dataOffset(map[b + 1]!) === host + (stop - offset)) stop = Math.min(end, (++b + 1) * bs);
    return { kind: 'data', length: stop - offset, host };
  }
}

export interface VdiCreateParams {
  size: number;
  fixed: boolean;
}

/** qemu's boolean option spellings. */
function parseBool(key: string, value: string): boolean {
  const v = value.toLowerCase();
  if (['on', 'yes', 'true'].includes(v)) return true;
  if (['off', 'no', 'false'].includes(v)) return false;
  throw new ImageError('usage', `vdi: option ${key} takes on or off, not '${value}'`, { format: 'vdi', value });
}

export const VDI_CREATE_OPTIONS = {
  static: "on|off: a fixed-size image with every block allocated up front (VirtualBox 'Fixed size'); default off (dynamically allocated)",
} as const;

/** Check `-o` options, `-c` and the size of a new image. */
export function createParams(opts: { size: number; options: Record<string, string>; compress?: boolean }): VdiCreateParams {
  let fixed = false;
  for (const [key, value] of Object.entries(opts.options)) {
    if (key === 'static') fixed = parseBool(key, value);
    else {
      throw new ImageError('usage', `vdi: unknown option '${key}' (known: ${Object.keys(VDI_CREATE_OPTIONS).join(', ')})`, {
        format: 'vdi',
        value: key,
      });
    }
  }
  if (opts.compress) {
    throw new ImageError('usage', 'vdi images cannot be compressed (-c): VDI has no compressed blocks; use qcow2 or qcow', { format: 'vdi' });
  }
  if (!Number.isSafeInteger(opts.size) || opts.size < 0) {
    throw new ImageError('usage', `vdi: invalid size ${opts.size}`, { format: 'vdi', value: opts.size });
  }
  return { size: opts.size, fixed };
}

export interface VdiLayout {
  header: VdiHeader;
  virtualSize: number;
  blocks: number;
  blockSize: number;
}

/**
 * Plan a new image the way VirtualBox does (VDI.cpp vdiInitHeader): a
 * VDIHEADER1PLUS header, the block map at the next 1 MiB boundary
 * (VDI_DATA_ALIGN), data at the 1 MiB boundary after the map, 1 MiB blocks.
 * `blocksAllocated` is 0 (dynamic) or every block (fixed).
 */
export function planLayout(p: VdiCreateParams): VdiLayout {
  const blockSize = MiB;
  const align = MiB;
  const virtualSize = Math.ceil(p.size / SECTOR) * SECTOR;
  const blocks = Math.ceil(virtualSize / blockSize);
  if (blocks > VDI_BLOCKS_IN_IMAGE_MAX) {
    throw new ImageError('usage', `vdi: a ${virtualSize}-byte disk needs ${blocks} blocks, more than the ${VDI_BLOCKS_IN_IMAGE_MAX} a VDI can map`, {
      format: 'vdi',
      value: p.size,
    });
  }
  const offsetBmap = Math.ceil(HEADER_AREA / align) * align;
  const offsetData = Math.ceil((offsetBmap + blocks * 4) / align) * align;
  const header: VdiHeader = {
    text: VDI_TEXT,
    signature: VDI_SIGNATURE,
    version: VDI_VERSION_1_1,
    headerSize: HEADER1PLUS_SIZE,
    imageType: p.fixed ? TYPE_FIXED : TYPE_NORMAL,
    imageFlags: 0,
    description: '',
    offsetBmap,
    offsetData,
    // Geometry "not calculated" (0 C/H/S), as VirtualBox and qemu write it: the
    // hypervisor derives one from the size when the disk is attached.
    cylinders: 0,
    heads: 0,
    sectors: 0,
    sectorSize: SECTOR,
    diskSize: BigInt(virtualSize),
    blockSize,
    blockExtra: 0,
    blocksInImage: blocks,
    blocksAllocated: p.fixed ? blocks : 0,
    uuidImage: randomVdiUuid(),
    uuidLastSnap: randomVdiUuid(),
    uuidLink: new Uint8Array(16),
    uuidParent: new Uint8Array(16),
    lchs: { cylinders: 0, heads: 0, sectors: 0, sectorSize: SECTOR },
  };
  return { header, virtualSize, blocks, blockSize };
}

/**
 * Lay out a new image on an empty child (see planLayout). Fixed images have
 * an identity map and a file sized for every block (sparse).
 */
export async function createVdi(child: BlockDevice, p: VdiCreateParams): Promise<VdiImage> {
  const { header, virtualSize, blocks, blockSize } = planLayout(p);
  const headerBytes = encodeHeader(header);
  await child.write(headerBytes, 0);

  const map = new Uint32Array(blocks);
  if (p.fixed) for (let i = 0; i < blocks; i++) map[i] = i;
  else map.fill(BLOCK_FREE);
  for (let first = 0; first < blocks; first += MAP_CHUNK_ENTRIES) {
    const n = Math.min(MAP_CHUNK_ENTRIES, blocks - first);
    await child.write(encodeEntries(map, first, n), header.offsetBmap + first * 4);
  }
  const fileSize = header.offsetData + (p.fixed ? blocks * blockSize : 0);
  if (child.size < fileSize) await child.writeZeroes(child.size, fileSize - child.size);
  return new VdiImage(child, { header, headerBytes, virtualSize, fileSize }, map, { writable: true, fresh: true });
}
