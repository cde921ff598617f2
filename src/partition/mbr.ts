/**
 * The DOS/MBR partition table sector (also the layout of every EBR in an
 * extended partition's chain). Pure codec: bytes in, bytes out.
 *
 * Sector layout (512 bytes, little-endian):
 *
 *   field              offset  size
 *   boot code               0   440   kept as-is by writers that replace a table
 *   disk signature        440     4   sfdisk's "label-id", shown as 0x%08x
 *   reserved              444     2   (0x5A5A = copy-protected; normally 0)
 *   partition entry 1     446    16
 *   partition entry 2     462    16
 *   partition entry 3     478    16
 *   partition entry 4     494    16
 *   boot signature        510     2   0x55 0xAA
 *
 * Partition entry (16 bytes):
 *
 *   field              offset  size
 *   status                  0     1   0x80 bootable ("active"), 0x00 not; anything else is invalid
 *   CHS of first sector     1     3   head, sector | (cylinder >> 2 & 0xC0), cylinder & 0xFF
 *   type                    4     1   system id (0x83 Linux, 0x05 extended, 0xEE GPT protective, ...)
 *   CHS of last sector      5     3
 *   first LBA               8     4   in 512-byte sectors (relative to the EBR in an extended chain)
 *   sector count           12     4
 *
 * CHS fields are written as libfdisk (sfdisk, fdisk) and parted write them
 * for a disk image: a 255-head, 63-sector geometry, and 1023/254/63 (bytes
 * FE FF FF) for any address at cylinder 1024 or beyond.
 *
 * Vocabulary: the codec speaks bytes at its interface (MbrEntry.start/size);
 * sectors (LBA) exist only inside this file.
 */

import { ImageError } from '../core/errors.js';

export const SECTOR = 512;
/** The largest sector number (and count) an entry can hold. */
export const MAX_LBA = 0xffffffff;
export const HEADS = 255;
export const SECTORS_PER_TRACK = 63;

export interface MbrEntry {
  bootable: boolean;
  type: number;
  /** Byte offset (from the start of the disk for a primary entry; codec users of EBRs add the base themselves). */
  start: number;
  /** Bytes. */
  size: number;
}

export interface Mbr {
  /** The 32-bit disk signature at offset 440. */
  signature: number;
  /** Always 4 slots; `undefined` for a slot whose 16 bytes are all zero. */
  entries: (MbrEntry | undefined)[];
  /** Bytes 0..439. */
  bootCode: Uint8Array;
}

export interface Chs {
  cylinder: number;
  head: number;
  sector: number;
}

/** MBR types that mark an extended partition (the EBR chain starts in it). Same list as the Linux kernel and libfdisk. */
export const EXTENDED_TYPES: ReadonlySet<number> = new Set([0x05, 0x0f, 0x85]);
export const GPT_PROTECTIVE = 0xee;

export function isExtendedType(type: number): boolean {
  return EXTENDED_TYPES.has(type);
}

const ENTRY = (i: number) => 446 + 16 * i;

function u32(b: Uint8Array, off: number): number {
  return (b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16)) + b[off + 3]! * 0x1000000;
}

function putU32(b: Uint8Array, off: number, v: number): void {
  b[off] = v & 0xff;
  b[off + 1] = (v >>> 8) & 0xff;
  b[off + 2] = (v >>> 16) & 0xff;
  b[off + 3] = (v >>> 24) & 0xff;
}

/** True when the sector ends with the 0x55 0xAA boot signature. */
export function hasBootSignature(sector: Uint8Array): boolean {
  return sector.length >= SECTOR && sector[510] === 0x55 && sector[511] === 0xaa;
}

/** Parse a table sector; undefined when it is shorter than 512 bytes or has no 0x55AA signature. */
export function parseMbr(sector: Uint8Array): Mbr | undefined {
  if (!hasBootSignature(sector)) return undefined;
  const entries: (MbrEntry | undefined)[] = [];
  for (let i = 0; i < 4; i++) {
    const o = ENTRY(i);
    let empty = true;
    for (let k = 0; k < 16; k++) if (sector[o + k] !== 0) empty = false;
    // libfdisk lists a slot unless all 16 bytes are zero (even type 0 or size 0); we do the same.
    entries.push(
      empty
        ? undefined
        : {
            bootable: sector[o] === 0x80,
            type: sector[o + 4]!,
            start: u32(sector, o + 8) * SECTOR,
            size: u32(sector, o + 12) * SECTOR,
          },
    );
  }
  return { signature: u32(sector, 440), entries, bootCode: sector.slice(0, 440) };
}

/** The raw status byte of entry `i` (0x00 or 0x80 in a valid table). */
export function entryStatus(sector: Uint8Array, i: number): number {
  return sector[ENTRY(i)]!;
}

/** The CHS addresses stored in entry `i`, decoded. */
export function entryChs(sector: Uint8Array, i: number): { first: Chs; last: Chs } {
  const o = ENTRY(i);
  return { first: decodeChs(sector, o + 1), last: decodeChs(sector, o + 5) };
}

export function decodeChs(b: Uint8Array, off: number): Chs {
  const head = b[off]!;
  const s = b[off + 1]!;
  return { head, sector: s & 0x3f, cylinder: ((s & 0xc0) << 2) | b[off + 2]! };
}

/** The three CHS bytes libfdisk writes for sector `lba` (255 heads, 63 sectors; FE FF FF past cylinder 1023). */
export function encodeChs(lba: number): [number, number, number] {
  const perCylinder = HEADS * SECTORS_PER_TRACK;
  if (Math.floor(lba / perCylinder) > 1023) lba = 1024 * perCylinder - 1;
  const sector = (lba % SECTORS_PER_TRACK) + 1;
  const track = Math.floor(lba / SECTORS_PER_TRACK);
  const head = track % HEADS;
  const cylinder = Math.floor(track / HEADS);
  return [head, sector | ((cylinder >> 2) & 0xc0), cylinder & 0xff];
}

function checkEntry(e: MbrEntry, slot: number, diskSize: number, base: number): void {
  const bad = (field: string, value: number, why: string) =>
    new ImageError('usage', `MBR entry ${slot + 1}: ${field} ${value} ${why}`, { field, value });
  if (!Number.isInteger(e.type) || e.type < 0 || e.type > 0xff) throw bad('type', e.type, 'is not a byte');
  for (const [field, v] of [
    ['start', e.start],
    ['size', e.size],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0 || v % SECTOR !== 0) throw bad(field, v, 'is not a whole number of 512-byte sectors');
    if (v / SECTOR > MAX_LBA) throw bad(field, v, 'is beyond what an MBR entry can hold (2 TiB)');
  }
  if (base + e.start + e.size > diskSize) {
    throw bad('end', base + e.start + e.size, `is beyond the end of the disk (${diskSize} bytes)`);
  }
}

/**
 * Encode a table sector. Entries are checked (whole sectors, 32-bit LBA
 * fields, inside `diskSize`); CHS fields are computed from the LBA fields.
 *
 * In an EBR, entry starts are relative (the logical partition to its EBR,
 * the link to the extended partition): `bases[i]` is what entry i's start is
 * relative to, in bytes. CHS fields are absolute, as libfdisk writes them.
 */
export function encodeMbr(mbr: Mbr, diskSize: number, bases: readonly number[] = []): Uint8Array {
  if (mbr.entries.length > 4) {
    throw new ImageError('usage', `an MBR holds 4 entries, not ${mbr.entries.length}`, { value: mbr.entries.length });
  }
  if (mbr.bootCode.length > 440) {
    throw new ImageError('usage', `MBR boot code is ${mbr.bootCode.length} bytes; at most 440 fit`, { value: mbr.bootCode.length });
  }
  if (!Number.isInteger(mbr.signature) || mbr.signature < 0 || mbr.signature > 0xffffffff) {
    throw new ImageError('usage', `MBR disk signature ${mbr.signature} is not a 32-bit value`, { value: mbr.signature });
  }
  const b = new Uint8Array(SECTOR);
  b.set(mbr.bootCode, 0);
  putU32(b, 440, mbr.signature);
  mbr.entries.forEach((e, i) => {
    if (!e) return;
    const base = bases[i] ?? 0;
    checkEntry(e, i, diskSize, base);
    const o = ENTRY(i);
    const first = e.start / SECTOR;
    const count = e.size / SECTOR;
    const abs = (base + e.start) / SECTOR;
    b[o] = e.bootable ? 0x80 : 0;
    b.set(encodeChs(abs), o + 1);
    b[o + 4] = e.type;
    b.set(encodeChs(count > 0 ? abs + count - 1 : abs), o + 5);
    putU32(b, o + 8, first);
    putU32(b, o + 12, count);
  });
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

/** `0x1234abcd`, as sfdisk prints a disk signature. */
export function formatSignature(sig: number): string {
  return '0x' + sig.toString(16).padStart(8, '0');
}
