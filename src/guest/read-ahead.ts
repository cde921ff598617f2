/**
 * A read-only view of a device that caches and reads ahead.
 *
 * libext2fs reads a file one filesystem block (1-4 KiB) at a time, each an
 * asynchronous read through the device stack (overlay, filter, slice, file:
 * a system call or two each), and on ext2/ext3 it reads the file's indirect
 * block again before every data block: 15 000 reads for a 20 MB initrd,
 * seconds on a busy host. This device keeps the last few ranges read; a read
 * that starts where a recent one ended (a file read block by block) fetches
 * a 256 KiB window instead, and the next reads come from it. Scattered
 * metadata reads pass through at their own size.
 */

import { type BlockDevice, type Extent, checkRange } from '../core/device.js';
import { ImageError } from '../core/errors.js';

const WINDOW = 256 << 10;
/** Ranges kept (at most WINDOW bytes each). */
const KEEP = 8;

export class ReadAheadDevice implements BlockDevice {
  readonly readOnly = true;
  readonly size: number;
  /** Most recently used first. */
  private ranges: Array<{ offset: number; data: Uint8Array }> = [];
  /** Where recent reads ended. */
  private ends: number[] = [];

  constructor(private readonly inner: BlockDevice) {
    this.size = inner.size;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    const end = offset + buf.length;
    const sequential = this.ends.includes(offset);
    this.ends = [end, ...this.ends.filter((e) => e !== end)].slice(0, KEEP);
    const i = this.ranges.findIndex((r) => offset >= r.offset && end <= r.offset + r.data.length);
    if (i >= 0) {
      const r = this.ranges[i]!;
      buf.set(r.data.subarray(offset - r.offset, end - r.offset));
      if (i) this.ranges = [r, ...this.ranges.filter((x) => x !== r)];
      return;
    }
    if (buf.length >= WINDOW) {
      await this.inner.read(buf, offset);
      return;
    }
    const data = new Uint8Array(sequential ? Math.min(WINDOW, this.size - offset) : buf.length);
    await this.inner.read(data, offset);
    this.ranges = [{ offset, data }, ...this.ranges].slice(0, KEEP);
    buf.set(data.subarray(0, buf.length));
  }

  async write(): Promise<void> {
    throw new ImageError('usage', 'internal: write to a read-ahead view');
  }

  async writeZeroes(): Promise<void> {
    throw new ImageError('usage', 'internal: write to a read-ahead view');
  }

  status(offset: number, length: number): Promise<Extent> {
    return this.inner.status(offset, length);
  }

  async flush(): Promise<void> {}

  /** The inner device stays open: it belongs to the caller. */
  async close(): Promise<void> {
    this.ranges = [];
  }
}
