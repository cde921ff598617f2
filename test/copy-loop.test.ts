/**
 * The conversion copy loop (copyDevice) and its zero check: writes reach the
 * target one at a time and in ascending order whatever order the reads
 * finish in; zero blocks are found wherever they sit in a chunk; an abort
 * stops the loop without leaving a write in flight.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { isZero, isZeroRange } from '../src/core/device.js';
import { MemoryDevice } from '../src/core/memory.js';
import { copyDevice } from '../src/convert/convert.js';
import { ImageError } from '../src/core/errors.js';

const MIB = 1 << 20;

/** A memory device whose reads finish after a delay that varies by offset (later chunks often first). */
class SlowReads extends MemoryDevice {
  override async read(buf: Uint8Array, offset: number): Promise<void> {
    await new Promise((r) => setTimeout(r, ((offset / MIB) * 7) % 5));
    return super.read(buf, offset);
  }
}

/** A memory device that records every write and counts writes in flight. */
class Recorder extends MemoryDevice {
  writes: Array<[number, number]> = [];
  inFlight = 0;
  maxInFlight = 0;
  afterEnd = 0;
  ended = false;
  override async write(buf: Uint8Array, offset: number): Promise<void> {
    if (this.ended) this.afterEnd++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    this.writes.push([offset, offset + buf.length]);
    await new Promise((r) => setTimeout(r, 1));
    await super.write(buf, offset);
    this.inFlight--;
  }
}

describe('isZeroRange', () => {
  it('agrees with a byte loop wherever the non-zero byte is', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 3 * MIB }), fc.integer({ min: 0, max: 3 * MIB }), fc.option(fc.integer({ min: 0, max: 3 * MIB - 1 })), (a, b, hot) => {
        const buf = new Uint8Array(3 * MIB);
        if (hot !== null) buf[hot] = 0x5a;
        const [start, end] = a <= b ? [a, b] : [b, a];
        const expected = hot === null || hot < start || hot >= end;
        expect(isZeroRange(buf, start, end)).toBe(expected);
        expect(isZero(buf.subarray(start, end))).toBe(expected);
      }),
      { numRuns: 300 },
    );
  });

  it('looks only inside [start, end)', () => {
    const buf = new Uint8Array(8192).fill(1);
    buf.fill(0, 100, 5000);
    expect(isZeroRange(buf, 100, 5000)).toBe(true);
    expect(isZeroRange(buf, 99, 5000)).toBe(false);
    expect(isZeroRange(buf, 100, 5001)).toBe(false);
    expect(isZeroRange(buf, 7, 7)).toBe(true);
  });
});

describe('copyDevice', () => {
  it('writes one request at a time, in ascending order, while reads finish out of order; the copy is exact', async () => {
    const size = 24 * MIB + 12345;
    const src = new SlowReads(size);
    // Data with zero blocks inside chunks, at chunk edges and a whole zero chunk.
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i += 4093) data[i] = (i % 251) + 1;
    data.fill(0, 3 * MIB - 8192, 3 * MIB + 8192);
    data.fill(0, 10 * MIB, 12 * MIB);
    data.fill(0, 5 * MIB + 4096, 5 * MIB + 3 * 4096);
    await src.write(data, 0);
    const dst = new Recorder(size);
    const stats = await copyDevice(src, dst, { concurrency: 4 });
    dst.ended = true;

    expect(dst.maxInFlight).toBe(1);
    for (let i = 1; i < dst.writes.length; i++) expect(dst.writes[i]![0]).toBeGreaterThanOrEqual(dst.writes[i - 1]![1]);
    const back = new Uint8Array(size);
    await dst.read(back, 0);
    expect(Buffer.compare(back, data)).toBe(0);
    // The zero blocks were detected, not written (the filled ranges, and a short tail block the pattern misses).
    let zeroBytes = 0;
    for (let at = 0; at < size; at += 4096) {
      const block = data.subarray(at, Math.min(size, at + 4096));
      if (block.every((x) => x === 0)) zeroBytes += block.length;
    }
    expect(zeroBytes).toBeGreaterThanOrEqual(2 * MIB + 16384 + 8192);
    expect(stats.zeroDetectedBytes).toBe(zeroBytes);
    for (const [a, b] of dst.writes) {
      const zeroBlock = (at: number) => data.subarray(at, Math.min(size, at + 4096)).every((x) => x === 0);
      expect(zeroBlock(a)).toBe(false);
      expect(zeroBlock(b - 1 - ((b - 1) % 4096))).toBe(false);
    }
  });

  it('with orderedWrites: false (a compressing target) writes go out as chunks are read, several at once; the copy is still exact', async () => {
    const size = 16 * MIB;
    const src = new SlowReads(size);
    const data = new Uint8Array(size).fill(3);
    await src.write(data, 0);
    const dst = new Recorder(size);
    await copyDevice(src, dst, { concurrency: 4, orderedWrites: false });
    expect(dst.maxInFlight).toBeGreaterThan(1);
    const back = new Uint8Array(size);
    await dst.read(back, 0);
    expect(Buffer.compare(back, data)).toBe(0);
  });

  it('stops on abort, and no write is left in flight when it throws', async () => {
    const size = 40 * MIB;
    const src = new SlowReads(size);
    await src.write(new Uint8Array(size).fill(9), 0);
    const dst = new Recorder(size);
    const stop = new AbortController();
    let chunks = 0;
    const run = copyDevice(src, dst, {
      concurrency: 4,
      signal: stop.signal,
      progress: {
        start: () => {},
        update: () => {
          if (++chunks === 3) stop.abort();
        },
        finish: () => {},
      },
    });
    const err = await run.catch((e: unknown) => e);
    dst.ended = true;
    expect(err).toBeInstanceOf(ImageError);
    expect((err as ImageError).kind).toBe('interrupted');
    expect(dst.inFlight).toBe(0);
    // Stopped early: far fewer than the 20 chunks of the whole device.
    expect(dst.writes.length).toBeLessThan(10);
    await new Promise((r) => setTimeout(r, 50));
    expect(dst.afterEnd).toBe(0);
  });
});
