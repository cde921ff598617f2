/**
 * A window [start, start + size) of another device: a partition inside a
 * disk, a filesystem inside a container. Every request is bounds-checked
 * against the window before it reaches the parent, so a partition view can
 * never read or write its neighbours.
 */

import { type BlockDevice, type Extent, checkRange, checkWritable } from './device.js';
import { ImageError } from './errors.js';

export class SliceDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;

  constructor(
    readonly parent: BlockDevice,
    readonly start: number,
    size: number,
    opts: { readOnly?: boolean } = {},
  ) {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(size) || start < 0 || size < 0 || start + size > parent.size) {
      throw new ImageError('out-of-bounds', `slice [${start}, ${start + size}) is outside the device [0, ${parent.size})`, {
        offset: start,
        value: size,
      });
    }
    this.size = size;
    this.readOnly = parent.readOnly || !!opts.readOnly;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    await this.parent.read(buf, this.start + offset);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, buf.length, 'write');
    await this.parent.write(buf, this.start + offset);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, length, 'writeZeroes');
    await this.parent.writeZeroes(this.start + offset, length);
  }

  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    const e = await this.parent.status(this.start + offset, length);
    return { offset, length: Math.min(e.length, length), kind: e.kind };
  }

  async flush(): Promise<void> {
    await this.parent.flush();
  }

  /** Closing a slice does not close its parent. */
  async close(): Promise<void> {}
}
