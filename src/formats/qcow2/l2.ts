/**
 * qcow2 L1 and L2 entry bits (qemu docs/interop/qcow2.rst, "Cluster mapping",
 * "Extended L2 Entries"). Entries are 64-bit big-endian; we read them as two
 * 32-bit halves (`hi` = bits 32..63, `lo` = bits 0..31) so the hot path needs
 * no BigInt.
 *
 * L1 entry
 *   bits  0..8    reserved (0)
 *   bits  9..55   offset of the L2 table (cluster aligned); 0 = unallocated
 *   bits 56..62   reserved (0)
 *   bit  63       refcount is exactly one ("copied")
 *
 * L2 entry (standard, 8 bytes; extended, 16 bytes = entry + bitmap)
 *   bits  0..61   cluster descriptor
 *   bit  62       compressed
 *   bit  63       refcount is exactly one (standard clusters)
 *
 * Standard cluster descriptor
 *   bit   0       reads as zero (v3, not with extended L2)
 *   bits  1..8    reserved (0)
 *   bits  9..55   host cluster offset (cluster aligned); 0 = unallocated
 *   bits 56..61   reserved (0)
 *
 * Compressed cluster descriptor, x = 62 - (cluster_bits - 8)
 *   bits  0..x-1  host byte offset (not aligned)
 *   bits  x..61   additional 512-byte sectors after the first
 *
 * Extended L2 bitmap (second 8 bytes): bits 0..31 subcluster allocated,
 * bits 32..63 subcluster reads as zero. In big-endian bytes: [8..12) are
 * the zero bits, [12..16) the allocation bits.
 */

export const TWO32 = 2 ** 32;
export const COPIED_HI = 0x80000000;
export const COMPRESSED_HI = 0x40000000;

/** Bits 9..55 of a (hi, lo) pair: the host offset of a standard entry or an L1 entry. */
export function stdOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
}

/** Reserved bits of a standard L2 descriptor (1..8 and 56..61): qemu ignores them on read (a warning here). */
export function stdReserved(hi: number, lo: number): number {
  return ((hi >>> 24) & 0x3f) | (lo & 0x1fe);
}

/** Reserved bits of an L1 entry (0..8 and 56..62). */
export function l1Reserved(hi: number, lo: number): number {
  return ((hi >>> 24) & 0x7f) | (lo & 0x1ff);
}

export interface CompressedDesc {
  /** Host byte offset of the compressed data, or -1 when it does not fit in 2^53. */
  offset: number;
  /** Bytes to read: (sectors + 1) * 512 - (offset % 512). */
  length: number;
}

/** Decode a compressed descriptor for a given cluster_bits. */
export function compressedDesc(hi: number, lo: number, clusterBits: number): CompressedDesc {
  const x = 62 - (clusterBits - 8); // 49..61: the offset field always spills into `hi`
  const hiBits = x - 32;
  const offHi = hi & ((1 << hiBits) - 1);
  const offset = offHi >= 2 ** 21 ? -1 : offHi * TWO32 + lo;
  const sectors = ((hi & 0x3fffffff) >>> hiBits) & ((1 << (clusterBits - 8)) - 1);
  return { offset, length: (sectors + 1) * 512 - (offset >= 0 ? offset % 512 : 0) };
}

/** Encode a compressed descriptor (with bit 62) as (hi, lo). */
export function encodeCompressed(offset: number, bytes: number, clusterBits: number): [number, number] {
  const x = 62 - (clusterBits - 8);
  const hiBits = x - 32;
  const sectors = Math.floor((offset + bytes - 1) / 512) - Math.floor(offset / 512);
  const hi = (COMPRESSED_HI | (sectors << hiBits) | Math.floor(offset / TWO32)) >>> 0;
  return [hi, offset >>> 0];
}

/** Encode a standard entry: host offset, copied flag, zero flag. */
export function encodeStd(offset: number, copied: boolean, zero = false): [number, number] {
  const hi = ((copied ? COPIED_HI : 0) | Math.floor(offset / TWO32)) >>> 0;
  const lo = ((offset >>> 0) | (zero ? 1 : 0)) >>> 0;
  return [hi, lo];
}

/** Subcluster helpers for extended L2. */
export const ALL_SUBCLUSTERS = 0xffffffff;

/** The allocation and zero bits of subclusters [first, first + n) as a mask. */
export function subMask(first: number, n: number): number {
  if (n >= 32) return ALL_SUBCLUSTERS;
  return (((1 << n) - 1) << first) >>> 0;
}
