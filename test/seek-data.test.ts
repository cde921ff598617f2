/**
 * A raw file's extents come from the kernel (lseek SEEK_DATA/SEEK_HOLE), on
 * ext4 (or whatever /tmp is) and on tmpfs, including data written a moment
 * before and not yet flushed (delayed allocation: FIEMAP without a sync would
 * call it a hole). The fallback (IMGTOOL_NO_SEEK_DATA) reads everything and
 * gives the same conversion.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { FileDevice } from '../src/core/file.js';
import { extents } from '../src/core/device.js';
import { imgtool, must, qemuCompare, run, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-seek-');
const MIB = 1 << 20;
let tmpfsDir = '';

beforeAll(() => {
  tmpfsDir = t.path('tmpfs');
  mkdirSync(tmpfsDir);
  must('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', tmpfsDir]);
});
afterAll(() => {
  run('umount', [tmpfsDir]);
  t.cleanup();
});

/** A 64 MiB file, holes except [4 MiB, 5 MiB) and [40 MiB, 40 MiB + 4 KiB), written just now (no fsync). */
function freshSparseFile(path: string): void {
  const fd = openSync(path, 'w');
  writeSync(fd, Buffer.alloc(MIB, 0x11), 0, MIB, 4 * MIB);
  writeSync(fd, Buffer.alloc(4096, 0x22), 0, 4096, 40 * MIB);
  writeSync(fd, Buffer.alloc(1), 0, 1, 64 * MIB - 1); // sets the size; the last block is data
  closeSync(fd);
}

async function dataRuns(path: string): Promise<[number, number][]> {
  const dev = await FileDevice.open(path);
  try {
    const out: [number, number][] = [];
    for await (const e of extents(dev)) {
      expect(e.kind === 'data' || e.kind === 'zero').toBe(true);
      if (e.kind === 'data') out.push([e.offset, e.offset + e.length]);
    }
    return out;
  } finally {
    await dev.close();
  }
}

describe('raw file extents from the kernel', () => {
  for (const where of ['the work disk', 'tmpfs'] as const) {
    it(`reports exactly the written blocks of a just-written file as data on ${where}`, async () => {
      const file = where === 'tmpfs' ? `${tmpfsDir}/fresh.img` : t.path('fresh.img');
      freshSparseFile(file);
      const runs = await dataRuns(file);
      // Block granularity: each run covers the written bytes and nothing far beyond them.
      const covers = (a: number, b: number) => runs.some(([s, e]) => s <= a && e >= b);
      expect(covers(4 * MIB, 5 * MIB)).toBe(true);
      expect(covers(40 * MIB, 40 * MIB + 4096)).toBe(true);
      expect(covers(64 * MIB - 1, 64 * MIB)).toBe(true);
      const total = runs.reduce((n, [s, e]) => n + (e - s), 0);
      expect(total).toBeLessThan(MIB + 3 * 64 * 1024);
      expect(runs.some(([s, e]) => s < 2 * MIB && e > MIB)).toBe(false);
    });
  }

  it('converts the same with and without the kernel map (IMGTOOL_NO_SEEK_DATA), judged by qemu-img compare', () => {
    const src = `${tmpfsDir}/conv.img`;
    freshSparseFile(src);
    const fast = t.path('fast.qcow2');
    const slow = t.path('slow.qcow2');
    expect(imgtool(['convert', src, fast]).status).toBe(0);
    expect(imgtool(['convert', src, slow], { env: { ...process.env, IMGTOOL_NO_SEEK_DATA: '1' } }).status).toBe(0);
    expect(qemuCompare(src, fast, 'raw', 'qcow2').status).toBe(0);
    expect(qemuCompare(src, slow, 'raw', 'qcow2').status).toBe(0);
    expect(qemuCompare(fast, slow, 'qcow2', 'qcow2').status).toBe(0);
    expect(run('qemu-img', ['check', fast]).status).toBe(0);
  });

  it('says with --debug when it falls back', () => {
    const src = t.path('dbg.img');
    freshSparseFile(src);
    const r = imgtool(['convert', '--debug', src, t.path('dbg.qcow2')], { env: { ...process.env, IMGTOOL_NO_SEEK_DATA: '1' } });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/debug: lseek\(SEEK_DATA\) is not available/);
  });
});
