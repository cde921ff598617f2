/**
 * The qcow (version 1) header, qemu block/qcow.c QCowHeader. Big-endian.
 *
 * | field               | offset | size | notes                                           |
 * |---------------------|--------|------|-------------------------------------------------|
 * | magic               |      0 |    4 | 'Q' 'F' 'I' 0xfb (shared with qcow2)            |
 * | version             |      4 |    4 | 1 (qcow2 has 2 or 3 here)                       |
 * | backing_file_offset |      8 |    8 | 0 = no backing file                             |
 * | backing_file_size   |     16 |    4 | bytes of the name, no NUL; qemu allows <= 1023  |
 * | mtime               |     20 |    4 | seconds; qemu writes 0                          |
 * | size                |     24 |    8 | guest bytes (qemu uses size / 512 sectors)      |
 * | cluster_bits        |     32 |    1 | 9..16                                           |
 * | l2_bits             |     33 |    1 | entries per L2 table = 2^l2_bits, 6..13         |
 * | padding             |     34 |    2 |                                                 |
 * | crypt_method        |     36 |    4 | 0 none, 1 AES (refused)                         |
 * | l1_table_offset     |     40 |    8 | L1: ceil(size / 2^(cluster_bits+l2_bits)) x u64 |
 *
 * L1 entry: byte offset of an L2 table (0 = none). L2 entry (u64):
 *   0                                   unallocated
 *   bit 63 clear                        byte offset of the cluster (512-aligned)
 *   bit 63 set (compressed)             bits 0 .. 62-cluster_bits: byte offset of
 *                                       the compressed data; the next
 *                                       cluster_bits bits (63-cluster_bits .. 62):
 *                                       its length in bytes. Raw deflate, window
 *                                       4 KiB (zlib windowBits -12), inflating to
 *                                       exactly one cluster.
 */

import { defineStruct } from '../engine/struct.js';

export const QCOW_MAGIC = 0x514649fb;
export const QCOW_VERSION = 1;

/** The header as declared: decoder, layout table and encoder in one (names are qemu's). */
export const QcowHeaderStruct = defineStruct('qcow header', [
  ['magic', 'u32be'],
  ['version', 'u32be'],
  ['backing_file_offset', 'u64be'],
  ['backing_file_size', 'u32be'],
  ['mtime', 'u32be'],
  ['size', 'u64be'],
  ['cluster_bits', 'u8'],
  ['l2_bits', 'u8'],
  ['padding', 'u16be'],
  ['crypt_method', 'u32be'],
  ['l1_table_offset', 'u64be'],
] as const);

export const HEADER_SIZE = QcowHeaderStruct.size; // 48

type FieldName = keyof ReturnType<typeof QcowHeaderStruct.parse>;
/** Field byte offsets (from the struct's layout table), for error messages and the fuzzer. */
export const OFF = Object.fromEntries(QcowHeaderStruct.layout.map((r) => [r.field, r.offset])) as Readonly<Record<FieldName, number>>;

export interface QcowHeader {
  magic: number;
  version: number;
  backingFileOffset: bigint;
  backingFileSize: number;
  mtime: number;
  size: bigint;
  clusterBits: number;
  l2Bits: number;
  cryptMethod: number;
  l1TableOffset: bigint;
}

/** Decode the first 48 bytes (shorter input is zero-extended). */
export function parseHeader(head: Uint8Array): QcowHeader {
  const b = new Uint8Array(HEADER_SIZE);
  b.set(head.subarray(0, HEADER_SIZE));
  const v = QcowHeaderStruct.parse(b);
  return {
    magic: v.magic,
    version: v.version,
    backingFileOffset: v.backing_file_offset,
    backingFileSize: v.backing_file_size,
    mtime: v.mtime,
    size: v.size,
    clusterBits: v.cluster_bits,
    l2Bits: v.l2_bits,
    cryptMethod: v.crypt_method,
    l1TableOffset: v.l1_table_offset,
  };
}

export function encodeHeader(h: QcowHeader): Uint8Array {
  return QcowHeaderStruct.encode({
    magic: h.magic,
    version: h.version,
    backing_file_offset: h.backingFileOffset,
    backing_file_size: h.backingFileSize,
    mtime: h.mtime,
    size: h.size,
    cluster_bits: h.clusterBits,
    l2_bits: h.l2Bits,
    padding: 0,
    crypt_method: h.cryptMethod,
    l1_table_offset: h.l1TableOffset,
  });
}

/** Is this the start of a qcow version 1 file? (qcow2 shares the magic.) */
export function isQcow1(head: Uint8Array): boolean {
  if (head.length < 8) return false;
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
  return v.getUint32(0) === QCOW_MAGIC && v.getUint32(4) === QCOW_VERSION;
}
