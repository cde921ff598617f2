/**
 * The VDI block map (VirtualBox: the "blocks array", paBlocks; qemu: bmap).
 *
 * | field          | offset                  | size | notes                                  |
 * |----------------|-------------------------|------|----------------------------------------|
 * | block_map[i]   | offset_bmap + 4 * i     |    4 | little-endian, one per guest block     |
 *
 * Entry values:
 *   0 .. blocks_allocated-1  index of the data block in the file: its bytes
 *                            are at offset_data + index * (block_extra +
 *                            block_size) + block_extra
 *   0xFFFFFFFF (FREE)        never allocated: reads as zero in a base image
 *   0xFFFFFFFE (ZERO)        discarded: reads as zero
 *
 * Two guest blocks pointing at one data block would alias each other's
 * writes; `checkEntries` refuses that, and entries that point outside the
 * allocated area or past the end of the file.
 */

import { fieldError } from '../../core/errors.js';
import type { WarningLog } from '../warnings.js';

export const BLOCK_FREE = 0xffffffff;
export const BLOCK_ZERO = 0xfffffffe;

export function isAllocated(entry: number): boolean {
  return entry < BLOCK_ZERO;
}

export interface MapGeometry {
  offsetBmap: number;
  offsetData: number;
  blockSize: number;
  blockExtra: number;
  blocksAllocated: number;
  /** Guest bytes (rounded virtual size): the last block may be partly outside. */
  diskSize: number;
  fileSize: number;
  /**
   * Opened read-only: an entry at or beyond blocks_allocated is reported to
   * `log` (blocks_allocated only matters for writing; qemu ignores it)
   * instead of refused.
   */
  readOnly?: boolean;
  log?: WarningLog;
}

/**
 * Validates the map chunk by chunk, so hostile maps fail at the first bad
 * entry. Remembers which guest block owns each data block (4 bytes per
 * allocated block, which the header checks bound by the file size) to name
 * both entries of a duplicate.
 */
export class BlockMapChecker {
  private readonly owner: Uint32Array;
  constructor(private readonly g: MapGeometry) {
    // Read-only, blocks_allocated is not trusted (it may be anything): the
    // data blocks that start inside the file bound the map instead.
    const inFile = Math.max(0, Math.ceil((g.fileSize - g.offsetData) / (g.blockSize + g.blockExtra)));
    this.owner = new Uint32Array(g.readOnly ? inFile : g.blocksAllocated).fill(BLOCK_FREE);
  }

  /** Validate `entries`, which are map entries [first, first + entries.length). */
  check(entries: Uint32Array, first: number): void {
    const g = this.g;
    const total = g.blockSize + g.blockExtra;
    for (let k = 0; k < entries.length; k++) {
      const e = entries[k]!;
      if (!isAllocated(e)) continue;
      const i = first + k;
      const field = `block_map[${i}]`;
      const at = g.offsetBmap + 4 * i;
      if (e >= g.blocksAllocated && g.readOnly) {
        g.log?.add(
          'block_map beyond blocks_allocated',
          field,
          at,
          e,
          `points at data block ${e}, but the header says only ${g.blocksAllocated} blocks are allocated (blocks_allocated), which qemu ignores when reading: read (refused for writing; further entries like it are not reported)`,
        );
      } else if (e >= g.blocksAllocated) {
        throw fieldError(
          'corrupt',
          'vdi',
          field,
          at,
          e,
          `points at data block ${e}, but the header says only ${g.blocksAllocated} blocks are allocated (blocks_allocated)`,
        );
      }
      // The bytes of this block the guest can reach must be inside the file.
      const guestStart = i * g.blockSize;
      const needed = Math.max(0, Math.min(g.blockSize, g.diskSize - guestStart));
      const dataStart = g.offsetData + e * total + g.blockExtra;
      if (dataStart + needed > g.fileSize) {
        throw fieldError(
          'corrupt',
          'vdi',
          field,
          at,
          e,
          `points at data [${dataStart}, ${dataStart + needed}) past the end of the file (${g.fileSize} bytes)`,
        );
      }
      const other = this.owner[e] ?? BLOCK_FREE;
      if (other !== BLOCK_FREE) {
        throw fieldError(
          'corrupt',
          'vdi',
          field,
          at,
          e,
          `points at data block ${e}, which block_map[${other}] also uses: the two guest blocks would share storage`,
        );
      }
      if (e < this.owner.length) this.owner[e] = i;
    }
  }
}

/** Decode little-endian entries from `bytes` into map[first ..]. */
export function decodeEntries(bytes: Uint8Array, map: Uint32Array, first = 0): void {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Math.floor(bytes.byteLength / 4);
  for (let k = 0; k < n; k++) map[first + k] = v.getUint32(4 * k, true);
}

/** Encode entries map[first, first + count) as little-endian bytes. */
export function encodeEntries(map: Uint32Array, first: number, count: number): Uint8Array {
  const out = new Uint8Array(count * 4);
  const v = new DataView(out.buffer);
  for (let k = 0; k < count; k++) v.setUint32(4 * k, map[first + k]!, true);
  return out;
}
