/**
 * Shared checks for hostile-input tests of format drivers: open a mutated
 * image and reach everything a caller can (data, status, info); expect an
 * ImageError naming the field, quickly and without large allocations; and on
 * images that open, check that writes read back after reopening.
 */
import { expect } from 'vitest';
import { extents } from '../../src/core/device.js';
import { ImageError } from '../../src/core/errors.js';
import { MemoryDevice } from '../../src/core/memory.js';
import type { FormatDriver, OpenOptions } from '../../src/formats/types.js';
import { pattern } from './devices.js';

const MiB = 1 << 20;

/** Open and read everything (data and status): the whole surface a caller can reach. */
export async function exercise(driver: FormatDriver, bytes: Uint8Array, opts: OpenOptions = {}): Promise<void> {
  const img = await driver.open(MemoryDevice.from(bytes, { readOnly: !opts.writable, growable: !!opts.writable }), opts);
  try {
    const buf = new Uint8Array(Math.min(img.size, 4 * MiB));
    for (let pos = 0; pos < img.size; pos += buf.length) {
      const n = Math.min(buf.length, img.size - pos);
      await img.read(buf.subarray(0, n), pos);
    }
    for await (const _ of extents(img)) {
      /* walk */
    }
    await img.info();
  } finally {
    await img.close();
  }
}

/**
 * On an image that opened cleanly: writes through a writable open read back
 * exactly, also after closing and reopening (the metadata written is valid).
 */
export async function writeAndVerify(driver: FormatDriver, bytes: Uint8Array, seed: number): Promise<void> {
  const dev = MemoryDevice.from(bytes, { growable: true });
  let img = await driver.open(dev, { writable: true });
  const size = img.size;
  if (size === 0 || size > 64 * MiB) {
    await img.close();
    return;
  }
  const ref = new Uint8Array(size);
  await img.read(ref, 0);
  for (let k = 0; k < 3; k++) {
    const off = (seed * (k + 7) * 7919) % size;
    const len = Math.min(size - off, 1 + ((seed * (k + 3)) % 150_000));
    const data = pattern(len, seed + k + 1);
    await img.write(data, off);
    ref.set(data, off);
  }
  await img.close();
  img = await driver.open(MemoryDevice.from(dev.toBytes(), { readOnly: true }), {});
  const got = new Uint8Array(size);
  await img.read(got, 0);
  await img.close();
  expect(Buffer.compare(got, ref)).toBe(0);
}

/** Expect an ImageError naming `field` (and the driver's format), within 5 s and without allocating hundreds of MiB. */
export async function expectFieldError(driver: FormatDriver, bytes: Uint8Array, field: string, kind?: string, opts: OpenOptions = {}): Promise<ImageError> {
  const before = process.memoryUsage().arrayBuffers;
  const t0 = Date.now();
  const err = await exercise(driver, bytes, opts).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(Date.now() - t0).toBeLessThan(5000);
  expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(256 * MiB);
  expect(err, `expected an error naming ${field}`).toBeInstanceOf(ImageError);
  const e = err as ImageError;
  expect(e.context.field, e.message).toBe(field);
  expect(e.message).toContain(field);
  if (kind) expect(e.kind, e.message).toBe(kind);
  return e;
}
