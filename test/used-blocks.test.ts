/**
 * The used-block map that decides what wrap copies, judged by dumpe2fs: the
 * free ranges we compute must be exactly the ones dumpe2fs lists per group.
 */
import { describe, expect, it, afterAll } from 'vitest';
import { mkdirSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { FileDevice } from '../src/core/file.js';
import { MemoryDevice } from '../src/core/memory.js';
import { AllocationFilterDevice } from '../src/core/filter.js';
import { extents } from '../src/core/device.js';
import { extUsedRanges } from '../src/fs/used-blocks.js';
import { readExtSuperblock } from '../src/fs/ext-superblock.js';
import { must, sha256File, tempDir } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

const t = tempDir();
afterAll(() => t.cleanup());

function makeFs(name: string, type: string, extra: string[] = []): string {
  const root = t.path(`${name}-root`);
  mkdirSync(`${root}/etc`, { recursive: true });
  writeFileSync(`${root}/etc/fstab`, '/dev/xvda1 / ext4 defaults 0 1\n');
  writeFileSync(`${root}/big.bin`, pattern(3_000_000, 4));
  for (let i = 0; i < 50; i++) writeFileSync(`${root}/etc/f${i}`, `file ${i}\n`.repeat(i * 10));
  const img = t.path(`${name}.img`);
  // Garbage everywhere first: free blocks keep it (nodiscard).
  const fd = openSync(img, 'w');
  const junk = pattern(1 << 20, 77);
  for (let i = 0; i < 48; i++) writeSync(fd, junk, 0, junk.length, i << 20);
  closeSync(fd);
  must('mke2fs', ['-q', '-F', '-t', type, '-E', 'nodiscard', ...extra, '-d', root, img]);
  return img;
}

/** Free byte ranges as dumpe2fs lists them ("Free blocks: 1-5, 9"). */
function dumpe2fsFree(img: string, blockSize: number): Array<[number, number]> {
  const out = must('dumpe2fs', [img]);
  const ranges: Array<[number, number]> = [];
  for (const m of out.matchAll(/^\s+Free blocks: (.*)$/gm)) {
    for (const part of m[1]!.split(',').map((s) => s.trim()).filter(Boolean)) {
      const [a, b] = part.split('-').map(Number);
      ranges.push([a! * blockSize, ((b ?? a!) + 1) * blockSize]);
    }
  }
  // Merge neighbours across groups.
  const merged: Array<[number, number]> = [];
  for (const r of ranges.sort((x, y) => x[0] - y[0])) {
    const last = merged[merged.length - 1];
    if (last && last[1] === r[0]) last[1] = r[1];
    else merged.push([...r]);
  }
  return merged;
}

describe.each([
  ['ext2', []],
  ['ext3', []],
  ['ext4', []],
  ['ext4', ['-O', 'metadata_csum,64bit,^resize_inode', '-b', '4096']],
])('used blocks of %s %j', (type, extra) => {
  it('match the free ranges dumpe2fs reports, and the input is unchanged', async () => {
    const img = makeFs(`${type}-${extra.length}`, type, extra as string[]);
    const before = sha256File(img);
    const dev = await FileDevice.open(img);
    const sb = (await readExtSuperblock(dev))!;
    expect(sb.type).toBe(type);
    const used = await extUsedRanges(dev);
    const free: Array<[number, number]> = [];
    let pos = 0;
    for (const u of used) {
      if (u.offset > pos) free.push([pos, u.offset]);
      pos = u.offset + u.length;
    }
    if (pos < sb.size) free.push([pos, sb.size]);
    expect(free).toEqual(dumpe2fsFree(img, sb.blockSize));

    // Through the filter, free blocks read as zeros and report unallocated.
    const f = new AllocationFilterDevice(dev, used);
    let data = 0;
    for await (const e of extents(f)) if (e.kind === 'data') data += e.length;
    expect(data).toBe(used.reduce((s, r) => s + r.length, 0));
    const [a, b] = free[free.length - 1]!;
    const buf = new Uint8Array(Math.min(b - a, 1 << 20));
    await f.read(buf, a);
    expect(buf.every((x) => x === 0)).toBe(true);
    await dev.close();
    expect(sha256File(img)).toBe(before);
  });
});

describe('AllocationFilterDevice.status', () => {
  /** A memory device whose status() calls are counted. */
  class Counted extends MemoryDevice {
    calls = 0;
    override async status(offset: number, length: number) {
      this.calls++;
      return super.status(offset, length);
    }
  }

  it('asks the base once per base extent, not once per used range, and still sees the base holes inside used ranges', async () => {
    const size = 8 << 20;
    const base = new Counted(size);
    // Data in [0, 3 MiB) and [5 MiB, 8 MiB); a hole (reads zero, reported zero) in between.
    await base.write(pattern(3 << 20, 1), 0);
    await base.write(pattern(3 << 20, 2), 5 << 20);
    const used = Array.from({ length: 200 }, (_, i) => ({ offset: i * 40960, length: 8192 }));
    const f = new AllocationFilterDevice(base, used);
    const seen: Array<[number, number, string]> = [];
    for await (const e of extents(f)) seen.push([e.offset, e.offset + e.length, e.kind]);
    // Every used range below 3 MiB is data, those in the hole are not, the gaps are unallocated.
    for (const u of used) {
      const inData = u.offset + u.length <= 3 << 20 || u.offset >= 5 << 20;
      const e = seen.find(([a, b]) => a <= u.offset && u.offset < b)!;
      expect(e[2] === 'data').toBe(inData);
      expect(e[1]).toBeGreaterThanOrEqual(Math.min(u.offset + u.length, inData ? Infinity : (5 << 20)));
    }
    expect(seen.filter(([, , k]) => k === 'data').reduce((s, [a, b]) => s + b - a, 0)).toBe(
      used.filter((u) => u.offset + u.length <= 3 << 20 || u.offset >= 5 << 20).length * 8192,
    );
    // Three base extents (data, hole, data): a handful of calls for 200 used ranges.
    expect(base.calls).toBeLessThanOrEqual(4);
  });
});
