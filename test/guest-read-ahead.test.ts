/**
 * The read-ahead view the guest fix-ups read the filesystem through: every
 * read returns the device's bytes whatever the pattern, writes are refused,
 * and a file read block by block with its indirect block read again before
 * each data block (libext2fs on ext3) costs a few large reads, not one each.
 */
import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '../src/core/memory.js';
import { ImageError } from '../src/core/errors.js';
import { ReadAheadDevice } from '../src/guest/read-ahead.js';
import { pattern } from './helpers/devices.js';

async function source(size: number) {
  const dev = new MemoryDevice(size);
  const bytes = pattern(size, 5);
  await dev.write(bytes, 0);
  let reads = 0;
  const counting = Object.assign(Object.create(dev) as MemoryDevice, {
    read: (buf: Uint8Array, offset: number) => {
      reads++;
      return dev.read(buf, offset);
    },
  });
  return { dev: counting, bytes, reads: () => reads };
}

describe('ReadAheadDevice', () => {
  it('returns the bytes of the device for sequential, alternating and scattered reads, up to its end', async () => {
    const size = (3 << 20) + 3000;
    const { dev, bytes } = await source(size);
    const ra = new ReadAheadDevice(dev);
    const check = async (offset: number, length: number) => {
      const buf = new Uint8Array(length);
      await ra.read(buf, offset);
      expect(Buffer.compare(buf, bytes.subarray(offset, offset + length)), `${offset}+${length}`).toBe(0);
    };
    for (let b = 0; b < 600; b++) {
      await check(4096 * (b + 10), 4096);
      await check(4096 * 3, 4096); // the indirect block, again and again
    }
    const rnd = pattern(4000, 9);
    for (let i = 0; i < 500; i++) {
      const offset = ((rnd[i * 4]! << 16) | (rnd[i * 4 + 1]! << 8) | rnd[i * 4 + 2]!) % size;
      await check(offset, Math.min(size - offset, 1 + ((rnd[i * 4 + 3]! * 997) % 300_000)));
    }
    // Sequential reads that run into the end of the device.
    for (let p = size - 20_000; p < size; p += 1000) await check(p, Math.min(1000, size - p));
    await expect(ra.read(new Uint8Array(10), size - 5)).rejects.toBeInstanceOf(ImageError);
    await expect(ra.write()).rejects.toBeInstanceOf(ImageError);
  });

  it('reads a file read block by block, its indirect block between, in windows', async () => {
    const { dev, reads } = await source(32 << 20);
    const ra = new ReadAheadDevice(dev);
    const buf = new Uint8Array(4096);
    for (let b = 0; b < 5000; b++) {
      await ra.read(buf, 4096 * (b + 100));
      await ra.read(buf, 4096 * 50);
    }
    // 20 MB in 256 KiB windows: about 80 reads, not 10 000.
    expect(reads()).toBeLessThan(200);
  });
});
