/**
 * qcow (v1) L1 and L2 tables: arrays of big-endian u64 (layout in header.ts).
 *
 * | table | where                          | entries                              | entry                 |
 * |-------|--------------------------------|--------------------------------------|-----------------------|
 * | L1    | l1_table_offset                | ceil(size / 2^(cluster_bits+l2_bits)) | L2 table offset, 0    |
 * | L2    | L1 entry                       | 2^l2_bits                            | cluster (see header)  |
 *
 * Decoded L2 tables keep one number per entry for the offset and one for the
 * compressed length (0 for an uncompressed cluster), so the hot paths do no
 * BigInt arithmetic. Every entry is validated when its table is loaded.
 */

import { fieldError } from '../../core/errors.js';

export interface L2Table {
  /** L1 index this table serves. */
  readonly index: number;
  /** Byte offset of the table in the file. */
  readonly offset: number;
  /** Cluster (or compressed data) offset per entry; 0 = unallocated. */
  readonly off: Float64Array;
  /** Compressed length per entry; 0 = not compressed. */
  readonly csize: Uint32Array;
  /** Disk writes of this table in flight: a busy table is never evicted from the cache. */
  busy: number;
}

export interface TableGeometry {
  clusterBits: number;
  l2Bits: number;
  fileSize: number;
  virtualSize: number;
  /** Byte ranges no cluster or table may overlap (header, L1 table). */
  reserved: ReadonlyArray<readonly [number, number]>;
}

const TWO32 = 2 ** 32;

export function overlapsReserved(g: TableGeometry, start: number, end: number): readonly [number, number] | undefined {
  return g.reserved.find(([a, b]) => start < b && a < end);
}

/**
 * Decode and validate L1 entries read from the table at `l1Offset` into
 * l1[first ...]: the table may be read in chunks, failing at the first bad one.
 */
export function decodeL1(bytes: Uint8Array, g: TableGeometry, l1Offset: number, l1: Float64Array, first = 0): void {
  const n = bytes.byteLength / 8;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const l2Bytes = 8 * 2 ** g.l2Bits;
  for (let k = 0; k < n; k++) {
    const i = first + k;
    const hi = v.getUint32(8 * k);
    const lo = v.getUint32(8 * k + 4);
    if (hi === 0 && lo === 0) continue;
    const field = `l1_table[${i}]`;
    const at = l1Offset + 8 * i;
    const raw = (BigInt(hi) << 32n) | BigInt(lo);
    const off = hi * TWO32 + lo;
    if (hi >= 2 ** 21 || off + l2Bytes > g.fileSize) {
      throw fieldError('corrupt', 'qcow', field, at, raw, `points at an L2 table of ${l2Bytes} bytes past the end of the file (${g.fileSize} bytes)`);
    }
    const hit = overlapsReserved(g, off, off + l2Bytes);
    if (hit) {
      throw fieldError('corrupt', 'qcow', field, at, raw, `points at an L2 table overlapping image metadata [${hit[0]}, ${hit[1]})`);
    }
    l1[i] = off;
  }
}

/** Decode and validate one L2 table read from `offset` for L1 index `index`. */
export function decodeL2(bytes: Uint8Array, g: TableGeometry, index: number, offset: number): L2Table {
  const n = 2 ** g.l2Bits;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const t: L2Table = { index, offset, off: new Float64Array(n), csize: new Uint32Array(n), busy: 0 };
  const cs = 2 ** g.clusterBits;
  const sizeShift = 63 - g.clusterBits;
  const offsetMask = (1n << BigInt(sizeShift)) - 1n;
  const firstGuest = index * n * cs;
  for (let j = 0; j < n; j++) {
    const hi = v.getUint32(8 * j);
    const lo = v.getUint32(8 * j + 4);
    if (hi === 0 && lo === 0) continue;
    const field = `l2_table[${index}][${j}]`;
    const at = offset + 8 * j;
    const raw = (BigInt(hi) << 32n) | BigInt(lo);
    const guest = firstGuest + j * cs;
    if (hi & 0x80000000) {
      const csize = Number((raw >> BigInt(sizeShift)) & BigInt(cs - 1));
      const coff = Number(raw & offsetMask);
      if (csize === 0) throw fieldError('corrupt', 'qcow', field, at, raw, 'is a compressed cluster of length 0');
      if (coff + csize > g.fileSize) {
        throw fieldError(
          'corrupt',
          'qcow',
          field,
          at,
          raw,
          `points at compressed data [${coff}, ${coff + csize}) past the end of the file (${g.fileSize} bytes)`,
        );
      }
      const hit = overlapsReserved(g, coff, coff + csize);
      if (hit) throw fieldError('corrupt', 'qcow', field, at, raw, `points at compressed data overlapping image metadata [${hit[0]}, ${hit[1]})`);
      t.off[j] = coff;
      t.csize[j] = csize;
    } else {
      const off = hi * TWO32 + lo;
      if (off % 512 !== 0) throw fieldError('corrupt', 'qcow', field, at, raw, 'points at a cluster that is not 512-byte aligned');
      const needed = Math.max(0, Math.min(cs, g.virtualSize - guest));
      if (hi >= 2 ** 21 || off + needed > g.fileSize) {
        throw fieldError('corrupt', 'qcow', field, at, raw, `points at a cluster past the end of the file (${g.fileSize} bytes)`);
      }
      const hit = overlapsReserved(g, off, off + cs);
      if (hit) throw fieldError('corrupt', 'qcow', field, at, raw, `points at a cluster overlapping image metadata [${hit[0]}, ${hit[1]})`);
      t.off[j] = off;
    }
  }
  return t;
}

/** Encode entries [from, to) of an L2 table as big-endian u64. */
export function encodeL2Entries(t: L2Table, clusterBits: number, from: number, to: number): Uint8Array {
  const out = new Uint8Array(8 * (to - from));
  const v = new DataView(out.buffer);
  for (let j = from; j < to; j++) {
    v.setBigUint64(8 * (j - from), encodeEntry(t.off[j]!, t.csize[j]!, clusterBits));
  }
  return out;
}

export function encodeEntry(off: number, csize: number, clusterBits: number): bigint {
  if (off === 0 && csize === 0) return 0n;
  if (csize === 0) return BigInt(off);
  return (1n << 63n) | (BigInt(csize) << BigInt(63 - clusterBits)) | BigInt(off);
}

export function encodeU64(x: number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(x));
  return out;
}
