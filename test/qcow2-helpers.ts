/** Shared by the qcow2 tests: fixtures made with qemu-img / qemu-io, and our image -> raw. */
import { closeSync, openSync, writeSync, ftruncateSync } from 'node:fs';
import { expect } from 'vitest';
import { FileDevice } from '../src/core/file.js';
import { openImage } from '../src/formats/index.js';
import { must, qemuCheck, qemuCompare } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

/** Run qemu-io commands on an image (each -c one command). */
export function qemuIo(img: string, cmds: string[], fmt = 'qcow2'): void {
  const args = ['-f', fmt];
  for (const c of cmds) args.push('-c', c);
  must('qemu-io', [...args, img]);
}

export function qemuImg(args: string[]): string {
  return must('qemu-img', args);
}

/** A sparse raw file of `size` bytes holding patterned data at the given [offset, length) ranges. */
export function patternedRaw(path: string, size: number, ranges: Array<[number, number]>, seed = 7): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    for (const [off, len] of ranges) writeSync(fd, pattern(len, seed + off), 0, len, off);
  } finally {
    closeSync(fd);
  }
}

/** Read the whole image through our driver and write it to a raw file; returns the bytes read from the container. */
export async function ourToRaw(src: string, dst: string, opts: { backing?: boolean; dataFile?: boolean } = {}): Promise<number> {
  const opened = await openImage(src, { backing: opts.backing, dataFile: opts.dataFile });
  const out = await FileDevice.open(dst, { create: true });
  try {
    await out.resize(opened.image.size);
    const chunk = 1 << 20;
    const buf = new Uint8Array(chunk);
    // Walk extents so sparse images read only what they hold.
    let pos = 0;
    while (pos < opened.image.size) {
      const e = await opened.image.status(pos, opened.image.size - pos);
      if (e.kind === 'data') {
        for (let p = e.offset; p < e.offset + e.length; p += chunk) {
          const n = Math.min(chunk, e.offset + e.length - p);
          await opened.image.read(buf.subarray(0, n), p);
          await out.write(buf.subarray(0, n), p);
        }
      }
      pos = e.offset + e.length;
    }
    return opened.file.bytesRead;
  } finally {
    await out.close();
    await opened.image.close();
  }
}

export function expectIdentical(a: string, b: string, fa = 'qcow2', fb = 'raw'): void {
  const r = qemuCompare(a, b, fa, fb);
  expect(r.stdout + r.stderr).toContain('Images are identical');
  expect(r.status).toBe(0);
}

export function expectCheckClean(img: string): void {
  const c = qemuCheck(img, 'qcow2');
  expect(c.text).not.toMatch(/ERROR|Leaked|leaked cluster/);
  expect(c.status).toBe(0);
  expect(c.json?.['check-errors']).toBe(0);
  expect(c.json?.['leaks'] ?? 0).toBe(0);
  expect(c.json?.['corruptions'] ?? 0).toBe(0);
}
