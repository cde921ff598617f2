/**
 * The read-ahead view the guest fix-ups read the filesystem through: every
 * read returns the device's bytes whatever the pattern, writes are refused,
 * and a file read block by block with its indirect block read again before
 * each data block (libext2fs on ext3) costs a few large reads, not one each.
 * The write-back view reads back what was written, leaves the device alone
 * until flush, then leaves it exactly as direct writes would have.
 */
import { describe, expect, it } from 'vitest';
import { MemoryDevice } from '../src/core/memory.js';
import { ImageError } from '../src/core/errors.js';
import { ReadAheadDevice, WriteBackDevice } from '../src/guest/read-ahead.js';
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

describe('WriteBackDevice', () => {
  it('reads what was written, touches the device only at flush, and ends with the same bytes as direct writes', async () => {
    const size = (1 << 20) + 1234; // a partial last page
    const { dev, bytes } = await source(size);
    const model = Buffer.from(bytes);
    const before = Buffer.from(bytes);
    const wb = new WriteBackDevice(dev);
    const rnd = pattern(8000, 13);
    const at = (i: number) => ((rnd[i]! << 16) | (rnd[i + 1]! << 8) | rnd[i + 2]!) % size;
    for (let i = 0; i < 400; i++) {
      const offset = at(i * 6);
      const length = Math.min(size - offset, 1 + ((rnd[i * 6 + 3]! * 131 + rnd[i * 6 + 4]!) % 20_000));
      if (rnd[i * 6 + 5]! & 1) {
        const data = pattern(length, i + 100);
        await wb.write(data, offset);
        model.set(data, offset);
      } else {
        const buf = new Uint8Array(length);
        await wb.read(buf, offset);
        expect(Buffer.compare(buf, model.subarray(offset, offset + length)), `read ${offset}+${length}`).toBe(0);
      }
    }
    await wb.write(Uint8Array.from([1, 2, 3]), size - 3);
    model.set([1, 2, 3], size - 3);
    const inner = new Uint8Array(size);
    await dev.read(inner, 0);
    expect(Buffer.compare(inner, before)).toBe(0);
    await wb.flush();
    await dev.read(inner, 0);
    expect(Buffer.compare(inner, model)).toBe(0);
    // After the flush, reads see the device (no stale read-ahead).
    const whole = new Uint8Array(size);
    await wb.read(whole, 0);
    expect(Buffer.compare(whole, model)).toBe(0);
    await expect(wb.write(new Uint8Array(4), size - 2)).rejects.toBeInstanceOf(ImageError);
  });

  it('writes waiting pages back in runs once more than its limit waits', async () => {
    const { dev, bytes } = await source(4 << 20);
    let writes = 0;
    const counting = Object.assign(Object.create(dev) as MemoryDevice, {
      write: (buf: Uint8Array, offset: number) => {
        writes++;
        return dev.write(buf, offset);
      },
    });
    const wb = new WriteBackDevice(counting, 1 << 20);
    const block = new Uint8Array(4096).fill(7);
    for (let b = 0; b < 300; b++) {
      await wb.write(block, b * 4096);
      await wb.write(block, 1000 * 4096); // the same metadata block, again and again
    }
    expect(writes).toBeGreaterThan(0); // 1 MiB waiting: written back once
    await wb.flush();
    expect(writes).toBeLessThan(10);
    const got = new Uint8Array(4096);
    await dev.read(got, 299 * 4096);
    expect(got.every((x) => x === 7)).toBe(true);
    await dev.read(got, 300 * 4096);
    expect(Buffer.compare(got, bytes.subarray(300 * 4096, 301 * 4096))).toBe(0);
  });
});
