/**
 * Copy-on-write overlay: reads come from the base until a chunk is written;
 * writes land in a store (memory by default, or a sparse scratch file for
 * large amounts), so the base is never touched. `wrap` runs e2fsck and
 * resize2fs on an overlay over the read-only input.
 *
 * Granularity is CHUNK bytes: the first write into a chunk copies the base's
 * chunk into the store, then applies the write.
 */

import { type BlockDevice, type Extent, checkRange } from './device.js';
import type { FileDevice } from './file.js';
import type { Range } from './filter.js';
import { MemoryDevice } from './memory.js';
import { Mutex } from './mutex.js';

/**
 * What the base is, when it is plain bytes of a local file: bytes
 * [offset + x] of `file` for x inside the sorted `used` ranges and below
 * `end`, zeros everywhere else (wrap's allocation filter over a raw input,
 * then zeros to the partition's end). A helper that reads the file itself
 * (e2fsprogs' direct I/O) needs nothing else to read the base.
 */
export interface HostBase {
  file: FileDevice;
  offset: number;
  used: readonly Range[];
  end: number;
}

const CHUNK = 64 * 1024;

export class OverlayDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly = false;
  /** chunk index -> offset in store; -1 for a chunk written as all zeros. */
  private map = new Map<number, number>();
  private storeEnd = 0;
  /** Serialises chunk allocation so concurrent writes to one chunk stay correct. */
  private readonly lock = new Mutex();

  constructor(
    readonly base: BlockDevice,
    readonly store: BlockDevice = new MemoryDevice(0, { growable: true }),
    /** Set when the base is plain bytes of a local file (see HostBase). */
    readonly hostBase?: HostBase,
  ) {
    this.size = base.size;
  }

  /** CHUNK, the map as flat (chunk index, store offset or -1) pairs, and the store's end: for a helper doing this overlay's I/O while it is idle. */
  lend(): { chunk: number; entries: number[]; storeEnd: number } {
    return { chunk: CHUNK, entries: [...this.map].flat(), storeEnd: this.storeEnd };
  }

  /** Take back what such a helper wrote: new (chunk index, store offset) pairs and the store's new end. */
  adopt(entries: readonly number[], storeEnd: number): void {
    for (let i = 0; i + 1 < entries.length; i += 2) this.map.set(entries[i]!, entries[i + 1]!);
    this.storeEnd = Math.max(this.storeEnd, storeEnd);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    let done = 0;
    while (done < buf.length) {
      const pos = offset + done;
      const idx = Math.floor(pos / CHUNK);
      const within = pos - idx * CHUNK;
      // Gather a run of chunks that all come from the base, to read it in one call.
      let n = Math.min(CHUNK - within, buf.length - done);
      const where = this.map.get(idx);
      if (where === undefined) {
        while (done + n < buf.length && !this.map.has(Math.floor((pos + n) / CHUNK))) {
          n = Math.min(n + CHUNK, buf.length - done);
        }
        await this.base.read(buf.subarray(done, done + n), pos);
      } else if (where < 0) {
        buf.fill(0, done, done + n);
      } else {
        await this.store.read(buf.subarray(done, done + n), where + within);
      }
      done += n;
    }
  }



  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'write');
    await this.lock.run(async () => {
      let done = 0;
      while (done < buf.length) {
        const pos = offset + done;
        const idx = Math.floor(pos / CHUNK);
        const within = pos - idx * CHUNK;
        const n = Math.min(CHUNK - within, buf.length - done);
        const chunkLen = Math.min(CHUNK, this.size - idx * CHUNK);
        let where = this.map.get(idx);
        if (where === undefined || where < 0) {
          const chunk = new Uint8Array(chunkLen);
          if (where === undefined && n < chunkLen) await this.base.read(chunk, idx * CHUNK);
          chunk.set(buf.subarray(done, done + n), within);
          where = this.storeEnd;
          this.storeEnd += CHUNK;
          await this.store.write(chunk, where);
          this.map.set(idx, where);
        } else {
          await this.store.write(buf.subarray(done, done + n), where + within);
        }
        done += n;
      }
    });
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length, 'writeZeroes');
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const idx = Math.floor(pos / CHUNK);
      const within = pos - idx * CHUNK;
      const chunkLen = Math.min(CHUNK, this.size - idx * CHUNK);
      const n = Math.min(chunkLen - within, end - pos);
      if (within === 0 && n === chunkLen) this.map.set(idx, -1);
      else await this.write(new Uint8Array(n), pos);
      pos += n;
    }
  }

  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    const idx = Math.floor(offset / CHUNK);
    const chunkEnd = Math.min((idx + 1) * CHUNK, offset + length);
    const where = this.map.get(idx);
    if (where !== undefined) {
      // Extend over following chunks of the same kind.
      const kind = where < 0 ? 'zero' : 'data';
      let end = chunkEnd;
      while (end < offset + length) {
        const w = this.map.get(end / CHUNK);
        if (w === undefined || (w < 0 ? 'zero' : 'data') !== kind) break;
        end = Math.min(end + CHUNK, offset + length);
      }
      return { offset, length: end - offset, kind };
    }
    // From the base, up to the next changed chunk.
    let end = chunkEnd;
    while (end < offset + length && !this.map.has(end / CHUNK)) end = Math.min(end + CHUNK, offset + length);
    const e = await this.base.status(offset, end - offset);
    return { offset, length: e.length, kind: e.kind };
  }

  async flush(): Promise<void> {}

  /** Closes the store, not the base. */
  async close(): Promise<void> {
    await this.store.close();
  }
}
