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

export const QCOW_MAGIC = 0x514649fb;
export const QCOW_VERSION = 1;
export const HEADER_SIZE = 48;

export const OFF = {
  magic: 0,
  version: 4,
  backing_file_offset: 8,
  backing_file_size: 16,
  mtime: 20,
  size: 24,
  cluster_bits: 32,
  l2_bits: 33,
  padding: 34,
  crypt_method: 36,
  l1_table_offset: 40,
} as const;

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
  const v = new DataView(b.buffer);
  return {
    magic: v.getUint32(OFF.magic),
    version: v.getUint32(OFF.version),
    backingFileOffset: v.getBigUint64(OFF.backing_file_offset),
    backingFileSize: v.getUint32(OFF.backing_file_size),
    mtime: v.getUint32(OFF.mtime),
    size: v.getBigUint64(OFF.size),
    clusterBits: v.getUint8(OFF.cluster_bits),
    l2Bits: v.getUint8(OFF.l2_bits),
    cryptMethod: v.getUint32(OFF.crypt_method),
    l1TableOffset: v.getBigUint64(OFF.l1_table_offset),
  };
}

export function encodeHeader(h: QcowHeader): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(OFF.magic, h.magic);
  v.setUint32(OFF.version, h.version);
  v.setBigUint64(OFF.backing_file_offset, h.backingFileOffset);
  v.setUint32(OFF.backing_file_size, h.backingFileSize);
  v.setUint32(OFF.mtime, h.mtime);
  v.setBigUint64(OFF.size, h.size);
  v.setUint8(OFF.cluster_bits, h.clusterBits);
  v.setUint8(OFF.l2_bits, h.l2Bits);
  v.setUint32(OFF.crypt_method, h.cryptMethod);
  v.setBigUint64(OFF.l1_table_offset, h.l1TableOffset);
  return b;
}

/** Is this the start of a qcow version 1 file? (qcow2 shares the magic.) */
export function isQcow1(head: Uint8Array): boolean {
  if (head.length < 8) return false;
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
  return v.getUint32(0) === QCOW_MAGIC && v.getUint32(4) === QCOW_VERSION;
}
