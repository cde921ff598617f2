/**
 * VHD (qemu's `vpc`) structures: "Virtual Hard Disk Image Format
 * Specification" (Microsoft, 2006); qemu block/vpc.c for what qemu-img 7.2
 * reads and writes (size rules, creator codes, limits).
 *
 * Hard disk footer (512 bytes, big-endian; at the end of every VHD, and a
 * copy at offset 0 of dynamic and differencing disks):
 *
 *   off size field
 *     0   8  cookie            "conectix"
 *     8   4  features          2 (reserved bit, always set)
 *    12   4  version           0x00010000
 *    16   8  dataOffset        dynamic header's offset; all ones for fixed disks
 *    24   4  timestamp         seconds since 2000-01-01 00:00 UTC
 *    28   4  creatorApp        "qemu", "qem2" (qemu with force_size), "win ", "vpc ", "d2v ", ...
 *    32   4  creatorVersion
 *    36   4  creatorOs         "Wi2k" / "Mac "
 *    40   8  originalSize      bytes
 *    48   8  currentSize       bytes
 *    56   2  cylinders         CHS geometry
 *    58   1  heads
 *    59   1  sectorsPerTrack
 *    60   4  diskType          2 fixed, 3 dynamic, 4 differencing
 *    64   4  checksum          one's complement of the byte sum (this field as 0)
 *    68  16  uniqueId
 *    84   1  savedState
 *    85 427  reserved
 *
 * Dynamic disk header (1024 bytes, big-endian, at footer.dataOffset):
 *
 *   off size field
 *     0   8  cookie            "cxsparse"
 *     8   8  dataOffset        unused, all ones
 *    16   8  tableOffset       the BAT's byte offset
 *    24   4  headerVersion     0x00010000
 *    28   4  maxTableEntries   BAT entries
 *    32   4  blockSize         bytes per block (2 MiB as everyone writes)
 *    36   4  checksum          as the footer's
 *    40  16  parentUniqueId    (differencing)
 *    56   4  parentTimestamp
 *    60   4  reserved
 *    64 512  parentName        UTF-16BE
 *   576 192  parentLocators    8 entries of 24 bytes
 *   768 256  reserved
 *
 * Vocabulary: VHD "block" = our cluster; BAT = the block map (u32 sector
 * numbers, all ones for a block not stored); each stored block is a sector
 * bitmap (1 bit per sector, rounded up to 512 bytes) then the block's data.
 */

import { defineStruct } from '../engine/struct.js';

export const SECTOR = 512;
export const FOOTER_SIZE = 512;
export const DYN_HEADER_SIZE = 1024;
export const COOKIE = 'conectix';
export const DYN_COOKIE = 'cxsparse';
export const TYPE_FIXED = 2;
export const TYPE_DYNAMIC = 3;
export const TYPE_DIFFERENCING = 4;
export const NO_DATA_OFFSET = 0xffffffffffffffffn;
export const BAT_UNUSED = 0xffffffff;
/** 65535 cylinders × 16 heads × 255 sectors: the largest CHS geometry, a signal to use currentSize. */
export const MAX_GEOMETRY = 65535 * 16 * 255;
/** qemu's limit: 2040 GiB. */
export const MAX_SECTORS = 0xff000000;
/** Seconds from the Unix epoch to 2000-01-01 00:00 UTC (VHD timestamps). */
export const TIMESTAMP_BASE = 946684800;

export const Footer = defineStruct('vhd footer', [
  ['cookie', { bytes: 8 }],
  ['features', 'u32be'],
  ['version', 'u32be'],
  ['dataOffset', 'u64be'],
  ['timestamp', 'u32be'],
  ['creatorApp', { bytes: 4 }],
  ['creatorVersion', 'u32be'],
  ['creatorOs', { bytes: 4 }],
  ['originalSize', 'u64be'],
  ['currentSize', 'u64be'],
  ['cylinders', 'u16be'],
  ['heads', 'u8'],
  ['sectorsPerTrack', 'u8'],
  ['diskType', 'u32be'],
  ['checksum', 'u32be'],
  ['uniqueId', { bytes: 16 }],
  ['savedState', 'u8'],
  ['reserved', { bytes: 427 }],
] as const);

export const DynHeader = defineStruct('vhd dynamic disk header', [
  ['cookie', { bytes: 8 }],
  ['dataOffset', 'u64be'],
  ['tableOffset', 'u64be'],
  ['headerVersion', 'u32be'],
  ['maxTableEntries', 'u32be'],
  ['blockSize', 'u32be'],
  ['checksum', 'u32be'],
  ['parentUniqueId', { bytes: 16 }],
  ['parentTimestamp', 'u32be'],
  ['reserved1', 'u32be'],
  ['parentName', { bytes: 512 }],
  ['parentLocators', { bytes: 192 }],
  ['reserved2', { bytes: 256 }],
] as const);

export type FooterValue = ReturnType<typeof Footer.parse>;
export type DynHeaderValue = ReturnType<typeof DynHeader.parse>;

export const ascii = (b: Uint8Array): string => Buffer.from(b).toString('latin1');

/** One's complement of the sum of every byte, the checksum field (at `at`, 4 bytes) counted as zero. */
export function vhdChecksum(bytes: Uint8Array, at: number): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) if (i < at || i >= at + 4) sum += bytes[i]!;
  return ~sum >>> 0;
}

/** Encode a footer with its checksum computed. */
export function encodeFooter(f: Omit<FooterValue, 'checksum'>): Uint8Array {
  const out = Footer.encode({ ...f, checksum: 0 } as FooterValue);
  const sum = vhdChecksum(out, Footer.offsetOf('checksum'));
  return Footer.encode({ ...f, checksum: sum } as FooterValue);
}

/** Encode a dynamic header with its checksum computed. */
export function encodeDynHeader(h: Omit<DynHeaderValue, 'checksum'>): Uint8Array {
  const out = DynHeader.encode({ ...h, checksum: 0 } as DynHeaderValue);
  return DynHeader.encode({ ...h, checksum: vhdChecksum(out, DynHeader.offsetOf('checksum')) } as DynHeaderValue);
}

/** Does this 512-byte sector hold a footer whose checksum verifies? */
export function footerValid(sector: Uint8Array): boolean {
  if (sector.length < FOOTER_SIZE || ascii(sector.subarray(0, 8)) !== COOKIE) return false;
  const f = Footer.parse(sector);
  return f.checksum === vhdChecksum(sector.subarray(0, FOOTER_SIZE), Footer.offsetOf('checksum'));
}

export interface Geometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/** CHS geometry for a sector count, as the VHD specification's appendix computes it (qemu's calculate_geometry). */
export function chsFor(totalSectors: number): Geometry {
  const total = Math.min(totalSectors, MAX_GEOMETRY);
  let spt: number;
  let heads: number;
  let cth: number;
  if (total >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(total / spt);
  } else {
    spt = 17;
    cth = Math.floor(total / spt);
    heads = Math.max(4, Math.ceil(cth / 1024));
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(total / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(total / spt);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectorsPerTrack: spt };
}

export const chsSectors = (g: Geometry): number => g.cylinders * g.heads * g.sectorsPerTrack;

/**
 * Creator applications whose images are sized by currentSize, not by the CHS
 * geometry (qemu 7.2's list: Hyper-V "win ", qemu with force_size "qem2",
 * Disk2vhd "d2v ", XenConverter "CTXS", XenServer "tap\0"). Later qemu adds
 * Azure's "wa\0\0"; 7.2 does not, and neither do we (sizes agree with 7.2).
 */
export const CURRENT_SIZE_CREATORS = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'];

/** The guest size qemu-img 7.2 gives a footer: CHS unless the creator or a maximal geometry says currentSize. */
export function virtualSize(f: FooterValue): { bytes: number; rule: 'chs' | 'current_size' } {
  const chs = f.cylinders * f.heads * f.sectorsPerTrack;
  const useChs = !CURRENT_SIZE_CREATORS.includes(ascii(f.creatorApp));
  if (useChs && chs !== MAX_GEOMETRY) return { bytes: chs * SECTOR, rule: 'chs' };
  // currentSize / 512 sectors; a value past 2^53 fails the MAX_SECTORS check anyway.
  const sectors = f.currentSize / 512n;
  return { bytes: sectors > BigInt(MAX_SECTORS) + 1n ? Number.MAX_SAFE_INTEGER : Number(sectors) * SECTOR, rule: 'current_size' };
}

/** Guest size and geometry for a new image, as qemu-img 7.2 rounds them (calculate_rounded_image_size). */
export function sizeForCreate(requested: number, forceSize: boolean): { bytes: number; geometry: Geometry } {
  const size = Math.ceil(requested / SECTOR) * SECTOR;
  if (forceSize) return { bytes: size, geometry: { cylinders: 65535, heads: 16, sectorsPerTrack: 255 } };
  const want = Math.min(MAX_GEOMETRY, size / SECTOR);
  let g: Geometry = { cylinders: 0, heads: 0, sectorsPerTrack: 0 };
  for (let i = 0; want > chsSectors(g); i++) g = chsFor(want + i);
  return { bytes: chsSectors(g) === MAX_GEOMETRY ? size : chsSectors(g) * SECTOR, geometry: g };
}

/** A parent's name from a dynamic header (UTF-16BE, NUL-terminated). */
export function parentName(h: DynHeaderValue): string {
  const b = Buffer.from(h.parentName);
  let end = 0;
  while (end + 1 < b.length && (b[end] !== 0 || b[end + 1] !== 0)) end += 2;
  return b.subarray(0, end).swap16().toString('utf16le');
}
