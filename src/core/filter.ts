/**
 * A view of a device restricted to a set of used ranges: bytes outside them
 * read as zero and report `unallocated`. `wrap` puts this over the input
 * filesystem so that only blocks the filesystem uses are read and copied;
 * old data in free blocks (a fully allocated input) never reaches the output.
 */

import { type BlockDevice, type Extent, checkRange } from './device.js';
import { ImageError } from './errors.js';

export interface Range {
  offset: number;
  length: number;
}

export class AllocationFilterDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly = true;
  private readonly starts: number[];
  private readonly ranges: Range[];

  /** `used` must be sorted and non-overlapping. */
  constructor(
    readonly base: BlockDevice,
    used: Range[],
  ) {
    this.size = base.size;
    this.ranges = used.filter((r) => r.length > 0);
    this.starts = this.ranges.map((r) => r.offset);
  }

  /** Index of the last range starting at or before pos, or -1. */
  private find(pos: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    let ans = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid]! <= pos) {
        ans = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return ans;
  }

  /** The piece of [offset, offset + length) up to the next range boundary, and whether it is inside a used range. */
  private span(offset: number, length: number): { used: boolean; length: number } {
    const i = this.find(offset);
    const r = i >= 0 ? this.ranges[i]! : undefined;
    if (r && offset < r.offset + r.length) return { used: true, length: Math.min(length, r.offset + r.length - offset) };
    const next = this.ranges[i + 1];
    const end = next ? Math.min(offset + length, next.offset) : offset + length;
    return { used: false, length: end - offset };
  }

  /**
   * The base's last extent asked for, reaching as far as the base says (not
   * only to the end of the used range that asked). A filesystem's used
   * ranges are many and short (one per run of used blocks), and a raw
   * base answers each with two lseek calls: asking once per base extent
   * instead took a 2 GiB guest's extent walk from ~20,000 calls to a few.
   */
  private known: Extent | undefined;

  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    const s = this.span(offset, length);
    if (!s.used) return { offset, length: s.length, kind: 'unallocated' };
    let k = this.known;
    if (!k || offset < k.offset || offset >= k.offset + k.length) {
      k = this.known = await this.base.status(offset, this.size - offset);
    }
    return { offset, length: Math.min(s.length, k.offset + k.length - offset), kind: k.kind };
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    let pos = offset;
    const end = offset + buf.length;
    // Used ranges are read from the base as they are (its holes read as
    // zero): asking the base's status first would cost two lseek calls per
    // range on a raw file, for nothing.
    while (pos < end) {
      const s = this.span(pos, end - pos);
      const view = buf.subarray(pos - offset, pos - offset + s.length);
      if (s.used) await this.base.read(view, pos);
      else view.fill(0);
      pos += s.length;
    }
  }

  async write(): Promise<void> {
    throw new ImageError('usage', 'an allocation filter is read-only (put an overlay over it)', { operation: 'write' });
  }
  async writeZeroes(): Promise<void> {
    throw new ImageError('usage', 'an allocation filter is read-only (put an overlay over it)', { operation: 'write' });
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}

  /** Bytes inside the used ranges. */
  get usedBytes(): number {
    return this.ranges.reduce((s, r) => s + r.length, 0);
  }
}
