/** A read-only device of zeros that stores nothing: padding, swap bodies, grown space. */

import { type BlockDevice, type Extent, checkRange } from './device.js';
import { ImageError } from './errors.js';

export class ZeroDevice implements BlockDevice {
  readonly readOnly = true;
  constructor(readonly size: number) {}
  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    buf.fill(0);
  }
  async write(): Promise<void> {
    throw new ImageError('usage', 'the zero device is read-only', { operation: 'write' });
  }
  async writeZeroes(): Promise<void> {
    throw new ImageError('usage', 'the zero device is read-only', { operation: 'write' });
  }
  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    return { offset, length, kind: 'unallocated' };
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
