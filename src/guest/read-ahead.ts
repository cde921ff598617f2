/**
 * Views of the guest filesystem's device for libext2fs sessions: a read-only
 * one that caches and reads ahead, and a writable one that also keeps
 * written pages until the session ends.
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

  /** Drop what was read (the device below changed). */
  forget(): void {
    this.ranges = [];
  }

  /** The inner device stays open: it belongs to the caller. */
  async close(): Promise<void> {
    this.ranges = [];
  }
}

const PAGE = 4096;

/**
 * A writable view that keeps written pages in memory until `flush` (or until
 * `limit` bytes are waiting), and reads through a ReadAheadDevice. libext2fs
 * writing a 20 MB file writes each data block and, around it, the same
 * bitmap, group descriptor and indirect blocks again and again (90 MB of
 * writes in 20 000 calls for a 21 MB file): here they land in memory and
 * reach the device once, in runs. Call `flush` before using the device
 * below; a failed session's pages can simply be dropped.
 */
export class WriteBackDevice implements BlockDevice {
  readonly readOnly = false;
  readonly size: number;
  private readonly reader: ReadAheadDevice;
  private readonly pages = new Map<number, Uint8Array>();

  constructor(
    private readonly inner: BlockDevice,
    private readonly limit = 64 << 20,
  ) {
    this.size = inner.size;
    this.reader = new ReadAheadDevice(inner);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    const end = offset + buf.length;
    let pos = offset;
    while (pos < end) {
      const page = Math.floor(pos / PAGE);
      const pageEnd = Math.min((page + 1) * PAGE, end);
      const dirty = this.pages.get(page);
      if (dirty) {
        buf.set(dirty.subarray(pos - page * PAGE, pageEnd - page * PAGE), pos - offset);
        pos = pageEnd;
        continue;
      }
      // A run of clean pages, read at once.
      let runEnd = pageEnd;
      while (runEnd < end && !this.pages.has(runEnd / PAGE)) runEnd = Math.min(runEnd + PAGE, end);
      await this.reader.read(buf.subarray(pos - offset, runEnd - offset), pos);
      pos = runEnd;
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'write');
    const end = offset + buf.length;
    let pos = offset;
    while (pos < end) {
      const page = Math.floor(pos / PAGE);
      const start = page * PAGE;
      const pageEnd = Math.min(start + PAGE, end);
      let data = this.pages.get(page);
      if (!data) {
        data = new Uint8Array(Math.min(PAGE, this.size - start));
        // A partial page keeps the rest of its bytes.
        if (pos > start || pageEnd < start + data.length) await this.reader.read(data, start);
        this.pages.set(page, data);
      }
      data.set(buf.subarray(pos - offset, pageEnd - offset), pos - start);
      pos = pageEnd;
    }
    if (this.pages.size * PAGE > this.limit) await this.writeBack();
  }

  /** Write the waiting pages to the device below, in runs of consecutive pages. */
  private async writeBack(): Promise<void> {
    const order = [...this.pages.keys()].sort((a, b) => a - b);
    for (let i = 0; i < order.length; ) {
      let j = i + 1;
      while (j < order.length && order[j] === order[j - 1]! + 1 && j - i < 256) j++;
      const run = order.slice(i, j).map((p) => this.pages.get(p)!);
      await this.inner.write(run.length === 1 ? run[0]! : Buffer.concat(run), order[i]! * PAGE);
      i = j;
    }
    this.pages.clear();
    this.reader.forget();
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.writeBack();
    await this.inner.writeZeroes(offset, length);
    this.reader.forget();
  }

  async status(offset: number, length: number): Promise<Extent> {
    await this.writeBack();
    return this.inner.status(offset, length);
  }

  async flush(): Promise<void> {
    await this.writeBack();
    await this.inner.flush();
  }

  /** Writes the waiting pages back; the inner device stays open. */
  async close(): Promise<void> {
    await this.writeBack();
  }
}
