/**
 * GUID Partition Table codec, following the UEFI specification 2.10,
 * section 5.3 ("GUID Partition Table (GPT) Disk Layout"), for 512-byte
 * logical blocks.
 *
 * Header (at LBA 1; the backup at the disk's last LBA), little-endian:
 *
 *   field                          offset  size
 *   Signature "EFI PART"                0     8
 *   Revision (0x00010000)               8     4
 *   HeaderSize (92..block size)        12     4
 *   HeaderCRC32                        16     4   CRC-32 of HeaderSize bytes, this field zeroed
 *   Reserved                           20     4
 *   MyLBA                              24     8   where this header is
 *   AlternateLBA                       32     8   where the other header is
 *   FirstUsableLBA                     40     8
 *   LastUsableLBA                      48     8   inclusive
 *   DiskGUID                           56    16
 *   PartitionEntryLBA                  72     8   start of the entry array
 *   NumberOfPartitionEntries           80     4
 *   SizeOfPartitionEntry               84     4   128 * 2^n
 *   PartitionEntryArrayCRC32           88     4   CRC-32 of entries * size bytes
 *
 * Partition entry (SizeOfPartitionEntry bytes; the first 128 defined):
 *
 *   field                          offset  size
 *   PartitionTypeGUID                   0    16   all zero: unused slot
 *   UniquePartitionGUID                16    16
 *   StartingLBA                        32     8
 *   EndingLBA                          40     8   inclusive
 *   Attributes                         48     8   bit 0 RequiredPartition, 1 NoBlockIOProtocol,
 *                                                 2 LegacyBIOSBootable, 48..63 type-specific
 *   PartitionName                      56    72   UTF-16LE, NUL-padded
 *
 * GUIDs are stored mixed-endian: the first three groups little-endian, the
 * last two as bytes. We print them upper-case, as sfdisk does.
 *
 * Everything here counts in LBAs (512-byte blocks); inspect.ts turns them
 * into bytes. Every 64-bit field is read as a BigInt and range-checked.
 */

import { ImageError } from '../core/errors.js';
import { crc32 } from './crc32.js';

export const GPT_SIGNATURE = 'EFI PART';
export const GPT_REVISION = 0x00010000;
export const GPT_HEADER_SIZE = 92;
export const GPT_ENTRY_SIZE = 128;
/**
 * The largest entry array we read (4 MiB: 32768 entries of 128 bytes; the
 * standard array is 16 KiB). A header asking for more is treated as damaged.
 */
export const MAX_ENTRY_ARRAY = 4 << 20;
export const MAX_ENTRY_SIZE = 4096;

export interface GptHeader {
  revision: number;
  headerSize: number;
  headerCrc: number;
  myLba: number;
  alternateLba: number;
  firstUsableLba: number;
  lastUsableLba: number;
  diskGuid: string;
  entriesLba: number;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

export interface GptEntry {
  /** 1-based slot number in the entry array (what Linux and sfdisk call the partition number). */
  slot: number;
  typeGuid: string;
  uniqueGuid: string;
  firstLba: number;
  /** Inclusive. */
  lastLba: number;
  attributes: bigint;
  name: string;
}

const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

export function decodeGuid(b: Uint8Array, off: number): string {
  const h = (i: number) => b[off + i]!.toString(16).padStart(2, '0');
  return (
    h(3) + h(2) + h(1) + h(0) + '-' + h(5) + h(4) + '-' + h(7) + h(6) + '-' + h(8) + h(9) + '-' +
    h(10) + h(11) + h(12) + h(13) + h(14) + h(15)
  ).toUpperCase();
}

export function encodeGuid(guid: string, b: Uint8Array, off: number): void {
  const hex = guid.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new ImageError('usage', `'${guid}' is not a GUID`, { value: guid });
  const byte = (i: number) => parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  const order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
  for (let i = 0; i < 16; i++) b[off + i] = byte(order[i]!);
}

export const ZERO_GUID = '00000000-0000-0000-0000-000000000000';

/** The largest LBA whose byte offset is still an exact JavaScript number (2^44 blocks: 8 PiB). */
export const MAX_GPT_LBA = Math.floor(Number.MAX_SAFE_INTEGER / 512) - 1;

/** A 64-bit LBA field as a number, or a field error when it cannot be a real sector number. */
function lba64(b: Uint8Array, off: number, field: string, at: number): number {
  const v = dv(b).getBigUint64(off, true);
  if (v > BigInt(MAX_GPT_LBA)) throw new GptFieldError(field, at + off, v, 'is beyond any disk imgtool can address (8 PiB)');
  return Number(v);
}

class GptFieldError extends Error {
  constructor(
    readonly field: string,
    readonly offset: number,
    readonly value: number | bigint | string,
    why: string,
  ) {
    super(`${field} (at offset ${offset}, value ${String(value)}) ${why}`);
  }
}

export type HeaderResult = { ok: true; header: GptHeader } | { ok: false; reason: string; error?: ImageError };

/**
 * Parse and validate the header in `block` (one 512-byte block read from
 * LBA `lba`, whose byte offset is used in messages). Checks the signature,
 * sizes, the header CRC, MyLBA, and that the entry array lies inside a disk
 * of `diskBlocks` blocks, does not overlap the header and is not absurdly
 * large. Never throws; a damaged header is `{ ok: false, reason }`.
 */
export function parseGptHeader(block: Uint8Array, lba: number, diskBlocks: number): HeaderResult {
  const at = lba * 512;
  const fail = (e: GptFieldError | string): HeaderResult => {
    if (typeof e === 'string') return { ok: false, reason: e };
    return {
      ok: false,
      reason: `GPT header at LBA ${lba}: ${e.message}`,
      error: new ImageError('corrupt', `GPT header at LBA ${lba}: ${e.message}`, {
        format: 'gpt',
        field: e.field,
        offset: e.offset,
        value: e.value,
      }),
    };
  };
  if (block.length < 512) return fail(`GPT header at LBA ${lba}: short read`);
  const sig = String.fromCharCode(...block.subarray(0, 8));
  if (sig !== GPT_SIGNATURE) return fail(`no GPT header at LBA ${lba} (signature ${JSON.stringify(sig)})`);
  const v = dv(block);
  try {
    const headerSize = v.getUint32(12, true);
    if (headerSize < GPT_HEADER_SIZE || headerSize > 512) {
      throw new GptFieldError('HeaderSize', at + 12, headerSize, `is outside ${GPT_HEADER_SIZE}..512`);
    }
    const headerCrc = v.getUint32(16, true);
    const copy = block.slice(0, headerSize);
    copy.fill(0, 16, 20);
    const computed = crc32(copy);
    if (computed !== headerCrc) {
      throw new GptFieldError('HeaderCRC32', at + 16, `0x${headerCrc.toString(16)}`, `does not match the header (computed 0x${computed.toString(16)})`);
    }
    const myLba = lba64(block, 24, 'MyLBA', at);
    if (myLba !== lba) throw new GptFieldError('MyLBA', at + 24, myLba, `does not name the block it was read from (${lba})`);
    const entrySize = v.getUint32(84, true);
    if (entrySize < GPT_ENTRY_SIZE || entrySize > MAX_ENTRY_SIZE || (entrySize & (entrySize - 1)) !== 0) {
      throw new GptFieldError('SizeOfPartitionEntry', at + 84, entrySize, `is not 128 * 2^n (128..${MAX_ENTRY_SIZE})`);
    }
    const entryCount = v.getUint32(80, true);
    if (entryCount * entrySize > MAX_ENTRY_ARRAY) {
      throw new GptFieldError('NumberOfPartitionEntries', at + 80, entryCount, `asks for a ${entryCount * entrySize}-byte entry array (limit ${MAX_ENTRY_ARRAY})`);
    }
    const entriesLba = lba64(block, 72, 'PartitionEntryLBA', at);
    const arrayBlocks = Math.ceil((entryCount * entrySize) / 512);
    if (entriesLba < 2 || entriesLba + arrayBlocks > diskBlocks) {
      throw new GptFieldError('PartitionEntryLBA', at + 72, entriesLba, `puts the ${arrayBlocks}-block entry array outside the disk (${diskBlocks} blocks)`);
    }
    if (lba >= entriesLba && lba < entriesLba + arrayBlocks) {
      throw new GptFieldError('PartitionEntryLBA', at + 72, entriesLba, 'puts the entry array over the header');
    }
    const header: GptHeader = {
      revision: v.getUint32(8, true),
      headerSize,
      headerCrc,
      myLba,
      alternateLba: lba64(block, 32, 'AlternateLBA', at),
      firstUsableLba: lba64(block, 40, 'FirstUsableLBA', at),
      lastUsableLba: lba64(block, 48, 'LastUsableLBA', at),
      diskGuid: decodeGuid(block, 56),
      entriesLba,
      entryCount,
      entrySize,
      entriesCrc: v.getUint32(88, true),
    };
    if (header.firstUsableLba > header.lastUsableLba + 1) {
      throw new GptFieldError('FirstUsableLBA', at + 40, header.firstUsableLba, `is after LastUsableLBA ${header.lastUsableLba}`);
    }
    return { ok: true, header };
  } catch (e) {
    if (e instanceof GptFieldError) return fail(e);
    throw e;
  }
}

/** Bytes of the entry array the header describes. */
export function entryArrayBytes(h: GptHeader): number {
  return h.entryCount * h.entrySize;
}

/** Check the array CRC; returns a reason when it does not match. */
export function checkEntryArray(h: GptHeader, array: Uint8Array): string | undefined {
  const computed = crc32(array.subarray(0, entryArrayBytes(h)));
  if (computed !== h.entriesCrc) {
    return `PartitionEntryArrayCRC32 of the header at LBA ${h.myLba} (value 0x${h.entriesCrc.toString(16)}) does not match its entry array at LBA ${h.entriesLba} (computed 0x${computed.toString(16)})`;
  }
  return undefined;
}

/**
 * Decode the used slots of an entry array. Entries whose LBAs cannot be
 * numbers (beyond 2^53) are reported in `problems` and skipped.
 */
export function parseGptEntries(h: GptHeader, array: Uint8Array): { entries: GptEntry[]; problems: string[] } {
  const entries: GptEntry[] = [];
  const problems: string[] = [];
  const base = h.entriesLba * 512;
  for (let i = 0; i < h.entryCount; i++) {
    const off = i * h.entrySize;
    const e = array.subarray(off, off + GPT_ENTRY_SIZE);
    let used = false;
    for (let k = 0; k < 16; k++) if (e[k] !== 0) used = true;
    if (!used) continue;
    try {
      const firstLba = lba64(e, 32, 'StartingLBA', base + off);
      const lastLba = lba64(e, 40, 'EndingLBA', base + off);
      entries.push({
        slot: i + 1,
        typeGuid: decodeGuid(e, 0),
        uniqueGuid: decodeGuid(e, 16),
        firstLba,
        lastLba,
        attributes: dv(e).getBigUint64(48, true),
        name: decodeName(e.subarray(56, 128)),
      });
    } catch (err) {
      if (!(err instanceof GptFieldError)) throw err;
      problems.push(`GPT entry ${i + 1}: ${err.message}; entry ignored`);
    }
  }
  return { entries, problems };
}

function decodeName(b: Uint8Array): string {
  let end = 0;
  while (end + 1 < b.length && (b[end] !== 0 || b[end + 1] !== 0)) end += 2;
  return Buffer.from(b.buffer, b.byteOffset, end).toString('utf16le');
}

const ATTR_NAMES: [bigint, string][] = [
  [0n, 'RequiredPartition'],
  [1n, 'NoBlockIOProtocol'],
  [2n, 'LegacyBIOSBootable'],
];

/** Attribute bits as sfdisk writes them in `attrs="..."`: names for bits 0-2, `GUID:n,m` for 48-63. */
export function formatGptAttributes(attrs: bigint): string {
  const parts: string[] = [];
  for (const [bit, name] of ATTR_NAMES) if (attrs & (1n << bit)) parts.push(name);
  const guidBits: number[] = [];
  for (let bit = 48; bit < 64; bit++) if (attrs & (1n << BigInt(bit))) guidBits.push(bit);
  if (guidBits.length) parts.push(`GUID:${guidBits.join(',')}`);
  return parts.join(' ');
}

export const LEGACY_BIOS_BOOTABLE = 1n << 2n;

// ---- encoders (used by tests to build hostile tables with valid CRCs, and by future writers) ----

export interface GptEntryInput {
  slot: number;
  typeGuid: string;
  uniqueGuid: string;
  firstLba: number;
  lastLba: number;
  attributes?: bigint;
  name?: string;
}

/** Encode an entry array of `count` slots of `size` bytes. */
export function encodeGptEntries(entries: GptEntryInput[], count = 128, size = GPT_ENTRY_SIZE): Uint8Array {
  const array = new Uint8Array(count * size);
  const v = dv(array);
  for (const e of entries) {
    if (e.slot < 1 || e.slot > count) throw new ImageError('usage', `GPT slot ${e.slot} is outside 1..${count}`);
    const off = (e.slot - 1) * size;
    encodeGuid(e.typeGuid, array, off);
    encodeGuid(e.uniqueGuid, array, off + 16);
    v.setBigUint64(off + 32, BigInt(e.firstLba), true);
    v.setBigUint64(off + 40, BigInt(e.lastLba), true);
    v.setBigUint64(off + 48, e.attributes ?? 0n, true);
    const name = Buffer.from(e.name ?? '', 'utf16le');
    if (name.length > 72) throw new ImageError('usage', `GPT partition name '${e.name}' is longer than 36 UTF-16 units`);
    array.set(name, off + 56);
  }
  return array;
}

/** Encode a header block (512 bytes) with both CRCs filled in from `array`. */
export function encodeGptHeader(h: Omit<GptHeader, 'headerCrc' | 'entriesCrc' | 'revision' | 'headerSize'> & Partial<GptHeader>, array: Uint8Array): Uint8Array {
  const b = new Uint8Array(512);
  const v = dv(b);
  b.set(Buffer.from(GPT_SIGNATURE, 'ascii'), 0);
  const headerSize = h.headerSize ?? GPT_HEADER_SIZE;
  v.setUint32(8, h.revision ?? GPT_REVISION, true);
  v.setUint32(12, headerSize, true);
  v.setBigUint64(24, BigInt(h.myLba), true);
  v.setBigUint64(32, BigInt(h.alternateLba), true);
  v.setBigUint64(40, BigInt(h.firstUsableLba), true);
  v.setBigUint64(48, BigInt(h.lastUsableLba), true);
  encodeGuid(h.diskGuid, b, 56);
  v.setBigUint64(72, BigInt(h.entriesLba), true);
  v.setUint32(80, h.entryCount, true);
  v.setUint32(84, h.entrySize, true);
  v.setUint32(88, h.entriesCrc ?? crc32(array.subarray(0, h.entryCount * h.entrySize)), true);
  v.setUint32(16, h.headerCrc ?? crc32(b.subarray(0, Math.min(headerSize, 512))), true);
  return b;
}
