/**
 * qcow2 refcounts (qemu docs/interop/qcow2.rst, "Host cluster management").
 *
 * Two levels. The refcount table (contiguous, refcount_table_clusters
 * clusters) holds 64-bit entries: bits 9..63 = offset of a refcount block
 * (cluster aligned), 0 = not allocated (all its refcounts are 0). A refcount
 * block is one cluster of refcount_bits-wide entries (refcount_bits = 1 <<
 * refcount_order, 1..64), big-endian; sub-byte widths pack from the least
 * significant bit of each byte.
 *
 *   entries per block   = cluster_size * 8 / refcount_bits
 *   table index         = host_cluster / entries_per_block
 *   block index         = host_cluster % entries_per_block
 *
 * Refcounts above 2^53 cannot be represented here: reading one is an error
 * (no real image has them); we never write more than a few.
 */

import { ImageError } from '../../core/errors.js';

/** Read entry `i` of a refcount block of width 2^order bits. Returns -1 when the value exceeds 2^53. */
export function getRefcount(block: Uint8Array, order: number, i: number): number {
  switch (order) {
    case 4:
      return (block[i * 2]! << 8) | block[i * 2 + 1]!;
    case 0:
      return (block[i >>> 3]! >>> (i & 7)) & 1;
    case 1:
      return (block[i >>> 2]! >>> ((i & 3) * 2)) & 3;
    case 2:
      return (block[i >>> 1]! >>> ((i & 1) * 4)) & 15;
    case 3:
      return block[i]!;
    case 5: {
      const o = i * 4;
      return ((block[o]! << 24) >>> 0) + (block[o + 1]! << 16) + (block[o + 2]! << 8) + block[o + 3]!;
    }
    case 6: {
      const o = i * 8;
      const hi = ((block[o]! << 24) >>> 0) + (block[o + 1]! << 16) + (block[o + 2]! << 8) + block[o + 3]!;
      const lo = ((block[o + 4]! << 24) >>> 0) + (block[o + 5]! << 16) + (block[o + 6]! << 8) + block[o + 7]!;
      if (hi >= 2 ** 21) return -1;
      return hi * 2 ** 32 + lo;
    }
    default:
      throw new Error(`bad refcount order ${order}`);
  }
}

/** Write entry `i`. The caller checked that `v` fits the width. */
export function setRefcount(block: Uint8Array, order: number, i: number, v: number): void {
  switch (order) {
    case 4:
      block[i * 2] = v >>> 8;
      block[i * 2 + 1] = v & 0xff;
      return;
    case 0:
      block[i >>> 3] = (block[i >>> 3]! & ~(1 << (i & 7))) | ((v & 1) << (i & 7));
      return;
    case 1: {
      const s = (i & 3) * 2;
      block[i >>> 2] = (block[i >>> 2]! & ~(3 << s)) | ((v & 3) << s);
      return;
    }
    case 2: {
      const s = (i & 1) * 4;
      block[i >>> 1] = (block[i >>> 1]! & ~(15 << s)) | ((v & 15) << s);
      return;
    }
    case 3:
      block[i] = v;
      return;
    case 5: {
      const o = i * 4;
      block[o] = v >>> 24;
      block[o + 1] = (v >>> 16) & 0xff;
      block[o + 2] = (v >>> 8) & 0xff;
      block[o + 3] = v & 0xff;
      return;
    }
    case 6: {
      const o = i * 8;
      const hi = Math.floor(v / 2 ** 32);
      block[o] = hi >>> 24;
      block[o + 1] = (hi >>> 16) & 0xff;
      block[o + 2] = (hi >>> 8) & 0xff;
      block[o + 3] = hi & 0xff;
      block[o + 4] = v >>> 24;
      block[o + 5] = (v >>> 16) & 0xff;
      block[o + 6] = (v >>> 8) & 0xff;
      block[o + 7] = v & 0xff;
      return;
    }
    default:
      throw new Error(`bad refcount order ${order}`);
  }
}

/** Largest refcount a width can hold (capped at 2^53 - 1 for 64-bit). */
export function maxRefcount(order: number): number {
  return order >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (1 << order) - 1;
}

/** Refcount blocks needed (upper bound) so that `clusters` host clusters, plus the blocks themselves, are covered. */
export function blocksFor(clusters: number, perBlock: number): number {
  // Each block covers perBlock clusters, including itself.
  let blocks = Math.ceil(clusters / perBlock);
  while (blocks * perBlock < clusters + blocks) blocks++;
  return blocks;
}

export function refcountOverflow(offset: number, order: number): ImageError {
  return new ImageError('unsupported', `qcow2: refcount of the cluster at ${offset} would exceed ${maxRefcount(order)} (refcount_bits ${1 << order})`, {
    format: 'qcow2',
    offset,
  });
}
