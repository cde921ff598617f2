/**
 * Devices laid end to end: the disk `wrap` builds is
 *   [MBR + gap] [filesystem] [swap] [trailing zeros]
 * each part its own device. Requests spanning parts are split.
 */

import { type BlockDevice, type Extent, checkRange, checkWritable } from './device.js';

export class ConcatDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  private readonly starts: number[] = [];

  constructor(readonly parts: readonly BlockDevice[]) {
    let pos = 0;
    for (const p of parts) {
      this.starts.push(pos);
      pos += p.size;
    }
    this.size = pos;
    // Writable if any part is: a write into a read-only part fails in that part.
    this.readOnly = parts.every((p) => p.readOnly);
  }

  /** Index of the part holding byte `offset` (offset < size). */
  private find(offset: number): number {
    let lo = 0;
    let hi = this.parts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    // Skip empty parts.
    while (this.parts[lo]!.size === 0 || this.starts[lo]! + this.parts[lo]!.size <= offset) lo++;
    return lo;
  }

  private async each(
    offset: number,
    length: number,
    fn: (part: BlockDevice, partOffset: number, done: number, n: number) => Promise<void>,
  ): Promise<void> {
    let done = 0;
    while (done < length) {
      const i = this.find(offset + done);
      const part = this.parts[i]!;
      const partOffset = offset + done - this.starts[i]!;
      const n = Math.min(length - done, part.size - partOffset);
      await fn(part, partOffset, done, n);
      done += n;
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    await this.each(offset, buf.length, (p, po, done, n) => p.read(buf.subarray(done, done + n), po));
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, buf.length, 'write');
    await this.each(offset, buf.length, (p, po, done, n) => p.write(buf.subarray(done, done + n), po));
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, length, 'writeZeroes');
    await this.each(offset, length, (p, po, _d, n) => p.writeZeroes(po, n));
  }

  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    const i = this.find(offset);
    const part = this.parts[i]!;
    const po = offset - this.starts[i]!;
    const e = await part.status(po, Math.min(length, part.size - po));
    return { offset, length: e.length, kind: e.kind };
  }

  async flush(): Promise<void> {
    for (const p of this.parts) await p.flush();
  }

  async close(): Promise<void> {
    for (const p of this.parts) await p.close();
  }
}
