/**
 * VHDX structures ([MS-VHDX] "Virtual Hard Disk v2 (VHDX) File Format";
 * qemu block/vhdx.c, vhdx-log.c for what qemu-img 7.2 reads and writes).
 * Everything is little-endian; GUIDs are stored in Microsoft's mixed-endian
 * layout. Checksums are CRC-32C over the structure with its checksum as 0.
 *
 *   0        file type identifier  "vhdxfile", creator (UTF-16LE)
 *   64 KiB   header 1 (4 KiB)      }  the valid one with the higher
 *   128 KiB  header 2 (4 KiB)      }  sequence number rules
 *   192 KiB  region table 1 (64 KiB), 256 KiB region table 2 (its copy)
 *   1 MiB..  log, metadata region, BAT, payload blocks (1 MiB aligned)
 *
 * Header (4 KiB):
 *   off size field
 *     0   4  signature        "head"
 *     4   4  checksum         CRC-32C of the 4 KiB
 *     8   8  sequenceNumber
 *    16  16  fileWriteGuid
 *    32  16  dataWriteGuid
 *    48  16  logGuid          zero: no log to replay
 *    64   2  logVersion       0
 *    66   2  version          1
 *    68   4  logLength        bytes, a multiple of 1 MiB
 *    72   8  logOffset        bytes, a multiple of 1 MiB
 *
 * Region table (64 KiB): "regi", checksum, entryCount (≤ 2047), reserved;
 * entries of 32 bytes: guid, fileOffset (u64), length (u32), required (u32, bit 0).
 *
 * Metadata table (64 KiB at the metadata region's start): "metadata",
 * reserved (u16), entryCount (u16, ≤ 2047), 20 reserved; entries of 32
 * bytes: itemId, offset (u32, from the region's start, ≥ 64 KiB), length
 * (u32), flags (u32: bit 0 user, 1 virtual disk, 2 required), reserved.
 *
 * BAT entry (u64): bits 0-2 state, bits 20-63 file offset in MiB. Payload
 * states: 0 not present, 1 undefined, 2 zero, 3 unmapped, 6 fully present,
 * 7 partially present (differencing); every `chunkRatio` payload entries are
 * followed by one sector-bitmap entry (0 not present, 6 present).
 *
 * Log entry: a 64-byte header ("loge", checksum over the whole entry,
 * entryLength, tail, sequenceNumber, descriptorCount, reserved, logGuid,
 * flushedFileOffset, lastFileOffset), 32-byte descriptors ("desc": trailing
 * 4 bytes, leading 8 bytes, fileOffset, sequenceNumber; "zero": reserved,
 * zeroLength, fileOffset, sequenceNumber), padded to 4 KiB, then one 4 KiB
 * data sector per "desc" ("data", sequenceHigh, 4084 bytes, sequenceLow).
 */

import { crc32c } from '../../core/crc32.js';
import { put32le } from '../../core/bytes.js';
import { defineStruct } from '../engine/struct.js';

export const KIB = 1024;
export const MIB = 1 << 20;
export const HEADER_OFFSETS = [64 * KIB, 128 * KIB] as const;
export const REGION_OFFSETS = [192 * KIB, 256 * KIB] as const;
export const HEADER_SIZE = 4 * KIB;
export const REGION_SIZE = 64 * KIB;
export const METADATA_TABLE_SIZE = 64 * KIB;
export const LOG_SECTOR = 4 * KIB;

export const SIG_HEAD = 0x64616568; // "head"
export const SIG_REGI = 0x69676572; // "regi"
export const SIG_LOGE = 0x65676f6c; // "loge"
export const SIG_DESC = 0x63736564; // "desc"
export const SIG_ZERO = 0x6f72657a; // "zero"
export const SIG_DATA = 0x61746164; // "data"

export const PAYLOAD_NOT_PRESENT = 0;
export const PAYLOAD_UNDEFINED = 1;
export const PAYLOAD_ZERO = 2;
export const PAYLOAD_UNMAPPED = 3;
export const PAYLOAD_FULLY_PRESENT = 6;
export const PAYLOAD_PARTIALLY_PRESENT = 7;

/** A GUID in its text form → the 16 bytes VHDX stores (first three fields little-endian). */
export function guid(text: string): Uint8Array {
  const h = text.replace(/-/g, '');
  const b = Buffer.from(h, 'hex');
  const out = new Uint8Array(16);
  out.set([b[3]!, b[2]!, b[1]!, b[0]!, b[5]!, b[4]!, b[7]!, b[6]!]);
  out.set(b.subarray(8), 8);
  return out;
}

export const guidEqual = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a).equals(Buffer.from(b));
export const isZeroGuid = (a: Uint8Array): boolean => a.every((x) => x === 0);

export const BAT_GUID = guid('2DC27766-F623-4200-9D64-115E9BFD4A08');
export const METADATA_GUID = guid('8B7CA206-4790-4B9A-B8FE-575F050F886E');
export const FILE_PARAMETERS = guid('CAA16737-FA36-4D43-B3B6-33F0AA44E76B');
export const VIRTUAL_DISK_SIZE = guid('2FA54224-CD1B-4876-B211-5DBED83BF4B8');
export const PAGE83 = guid('BECA12AB-B2E6-4523-93EF-C309E000C746');
export const LOGICAL_SECTOR_SIZE = guid('8141BF1D-A96F-4709-BA47-F233A8FAAB5F');
export const PHYSICAL_SECTOR_SIZE = guid('CDA348C7-445D-4471-9CC9-E9885251C556');
export const PARENT_LOCATOR = guid('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C');

export const Header = defineStruct('vhdx header', [
  ['signature', 'u32le'],
  ['checksum', 'u32le'],
  ['sequenceNumber', 'u64le'],
  ['fileWriteGuid', { bytes: 16 }],
  ['dataWriteGuid', { bytes: 16 }],
  ['logGuid', { bytes: 16 }],
  ['logVersion', 'u16le'],
  ['version', 'u16le'],
  ['logLength', 'u32le'],
  ['logOffset', 'u64le'],
  ['reserved', { bytes: 4016 }],
] as const);
export type HeaderValue = ReturnType<typeof Header.parse>;

export const RegionTableHeader = defineStruct('vhdx region table header', [
  ['signature', 'u32le'],
  ['checksum', 'u32le'],
  ['entryCount', 'u32le'],
  ['reserved', 'u32le'],
] as const);

export const RegionEntry = defineStruct('vhdx region table entry', [
  ['guid', { bytes: 16 }],
  ['fileOffset', 'u64le'],
  ['length', 'u32le'],
  ['required', 'u32le'],
] as const);
export type RegionValue = ReturnType<typeof RegionEntry.parse>;

export const MetadataTableHeader = defineStruct('vhdx metadata table header', [
  ['signature', { bytes: 8 }],
  ['reserved', 'u16le'],
  ['entryCount', 'u16le'],
  ['reserved2', { bytes: 20 }],
] as const);

export const MetadataEntry = defineStruct('vhdx metadata table entry', [
  ['itemId', { bytes: 16 }],
  ['offset', 'u32le'],
  ['length', 'u32le'],
  ['flags', 'u32le'],
  ['reserved', 'u32le'],
] as const);
export type MetadataValue = ReturnType<typeof MetadataEntry.parse>;

export const LogEntryHeader = defineStruct('vhdx log entry header', [
  ['signature', 'u32le'],
  ['checksum', 'u32le'],
  ['entryLength', 'u32le'],
  ['tail', 'u32le'],
  ['sequenceNumber', 'u64le'],
  ['descriptorCount', 'u32le'],
  ['reserved', 'u32le'],
  ['logGuid', { bytes: 16 }],
  ['flushedFileOffset', 'u64le'],
  ['lastFileOffset', 'u64le'],
] as const);
export type LogEntryValue = ReturnType<typeof LogEntryHeader.parse>;

/** A data ("desc") or zero ("zero") descriptor: `trailing`/`leading` are the zero descriptor's reserved and zeroLength. */
export const LogDescriptor = defineStruct('vhdx log descriptor', [
  ['signature', 'u32le'],
  ['trailing', { bytes: 4 }],
  ['leading', { bytes: 8 }],
  ['fileOffset', 'u64le'],
  ['sequenceNumber', 'u64le'],
] as const);
export type LogDescriptorValue = ReturnType<typeof LogDescriptor.parse>;

export const LogDataSector = defineStruct('vhdx log data sector', [
  ['signature', 'u32le'],
  ['sequenceHigh', 'u32le'],
  ['data', { bytes: 4084 }],
  ['sequenceLow', 'u32le'],
] as const);

/** CRC-32C of `bytes` with the 4-byte checksum field at `at` counted as zero. */
export function checksumWithout(bytes: Uint8Array, at: number): number {
  const copy = new Uint8Array(bytes);
  put32le(copy, at, 0);
  return crc32c(copy);
}

/** Store the CRC-32C of `bytes` (checksum field at `at`) in place; returns `bytes`. */
export function sealChecksum(bytes: Uint8Array, at: number): Uint8Array {
  put32le(bytes, at, 0);
  put32le(bytes, at, crc32c(bytes));
  return bytes;
}

/** Payload blocks per sector-bitmap block: 2^23 sectors of the logical size, over the block size. */
export const chunkRatioOf = (logicalSector: number, blockSize: number): number => (2 ** 23 * logicalSector) / blockSize;

/** BAT index of payload block `i`: every chunk of payload entries is followed by a sector-bitmap entry. */
export const batIndex = (block: number, chunkRatio: number): number => block + Math.floor(block / chunkRatio);

/** BAT entries a disk of `blocks` payload blocks has (without a parent). */
export const batEntries = (blocks: number, chunkRatio: number): number => (blocks === 0 ? 0 : blocks + Math.floor((blocks - 1) / chunkRatio));
