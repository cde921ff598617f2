/**
 * A device held in memory: tests, small images, metadata scratch space.
 * Sparse: storage is kept in 64 KiB chunks and unwritten chunks read as zero
 * and report `unallocated`, so a "1 TiB" memory device costs nothing.
 */

import { type BlockDevice, type Extent, checkRange, checkWritable } from './device.js';

const CHUNK = 64 * 1024;

export class MemoryDevice implements BlockDevice {
  size: number;
  readOnly: boolean;
  /** When true, writes past the end extend the device (like a file). */
  readonly growable: boolean;
  /** A new memory device reads as zero (MemoryDevice.from copies bytes in: not). */
  zeroInit = true;
  private chunks = new Map<number, Uint8Array>();

  constructor(size: number, opts: { readOnly?: boolean; growable?: boolean } = {}) {
    this.size = size;
    this.readOnly = opts.readOnly ?? false;
    this.growable = opts.growable ?? false;
  }

  static from(bytes: Uint8Array, opts: { readOnly?: boolean; growable?: boolean } = {}): MemoryDevice {
    const dev = new MemoryDevice(bytes.length, { growable: opts.growable });
    dev.writeSync(bytes, 0);
    dev.zeroInit = false;
    dev.readOnly = opts.readOnly ?? false;
    return dev;
  }

  readSync(buf: Uint8Array, offset: number): void {
    checkRange(this, offset, buf.length, 'read');
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const idx = Math.floor(pos / CHUNK);
      const within = pos - idx * CHUNK;
      const n = Math.min(CHUNK - within, buf.length - done);
      const c = this.chunks.get(idx);
      if (c) buf.set(c.subarray(within, within + n), done);
      else buf.fill(0, done, done + n);
      done += n;
    }
  }

  writeSync(buf: Uint8Array, offset: number): void {
    checkWritable(this);
    if (this.growable && offset + buf.length > this.size) this.size = offset + buf.length;
    checkRange(this, offset, buf.length, 'write');
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const idx = Math.floor(pos / CHUNK);
      const within = pos - idx * CHUNK;
      const n = Math.min(CHUNK - within, buf.length - done);
      let c = this.chunks.get(idx);
      if (!c) {
        c = new Uint8Array(CHUNK);
        this.chunks.set(idx, c);
      }
      c.set(buf.subarray(done, done + n), within);
      done += n;
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.readSync(buf, offset);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.writeSync(buf, offset);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkWritable(this);
    if (this.growable && offset + length > this.size) this.size = offset + length;
    checkRange(this, offset, length, 'writeZeroes');
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const idx = Math.floor(pos / CHUNK);
      const within = pos - idx * CHUNK;
      const n = Math.min(CHUNK - within, end - pos);
      if (n === CHUNK) this.chunks.delete(idx);
      else this.chunks.get(idx)?.fill(0, within, within + n);
      pos += n;
    }
  }

  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    const first = Math.floor(offset / CHUNK);
    const kind = this.chunks.has(first) ? 'data' : 'unallocated';
    let end = Math.min(offset + length, (first + 1) * CHUNK);
    while (end < offset + length) {
      const idx = end / CHUNK;
      if ((this.chunks.has(idx) ? 'data' : 'unallocated') !== kind) break;
      end = Math.min(offset + length, end + CHUNK);
    }
    return { offset, length: end - offset, kind };
  }

  /** A copy of the whole contents (tests). */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.size);
    this.readSync(out, 0);
    return out;
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
