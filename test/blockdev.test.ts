/**
 * Host block devices (a Xen guest's LVM volume is one) as input and output,
 * through loop devices; and a full disk during a write. Needs root (CI runs
 * as root), losetup and tmpfs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { FileDevice } from '../src/core/file.js';
import { imgtool, must, qemuCompare, run, sha256File, tempDir } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

const t = tempDir('imgtool-blk-');
const loops: string[] = [];
const mounts: string[] = [];
const MIB = 1 << 20;

function loop(file: string): string {
  const dev = must('losetup', ['-f', '--show', file]).trim();
  loops.push(dev);
  return dev;
}

let fsImg = '';

beforeAll(() => {
  const root = t.path('root');
  mkdirSync(`${root}/etc`, { recursive: true });
  writeFileSync(`${root}/etc/fstab`, '/dev/xvda1 / ext4 defaults 0 1\n');
  writeFileSync(`${root}/data.bin`, pattern(5 * MIB, 3));
  fsImg = t.path('guest.img');
  must('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', root, fsImg, '48M']);
});

afterAll(() => {
  for (const d of loops) run('losetup', ['-d', d]);
  for (const m of mounts) run('umount', [m]);
  t.cleanup();
});

describe('host block devices', () => {
  it('takes the size of a block device from the system, not from stat (which says 0)', async () => {
    const dev = await FileDevice.open(loop(fsImg));
    expect(dev.isBlockDevice).toBe(true);
    expect(dev.size).toBe(48 * MIB);
    await dev.close();
  });

  it('wraps a block device holding a bare filesystem (a Xen LVM volume), leaving it unchanged', () => {
    const src = loop(fsImg);
    const before = sha256File(src);
    const out = t.path('from-blockdev.qcow2');
    const r = imgtool(['wrap', src, '--swap', '16M', '-o', out]);
    expect(r.status, r.stderr).toBe(0);
    expect(sha256File(src)).toBe(before);
    const raw = t.path('from-blockdev.raw');
    must('qemu-img', ['convert', '-O', 'raw', out, raw]);
    expect(run('e2fsck', ['-fn', `${raw}?offset=${MIB}`]).status).toBe(0);
  });

  it('writes a wrapped disk onto a block device in place, only with --force', () => {
    const target = t.path('target.img');
    writeFileSync(target, '');
    must('truncate', ['-s', String(80 * MIB), target]);
    const dst = loop(target);
    const refused = imgtool(['wrap', fsImg, '-O', 'raw', '-o', dst]);
    expect(refused.status).toBe(2);
    expect(refused.stderr).toMatch(/--force/);
    const r = imgtool(['wrap', fsImg, '-O', 'raw', '--swap', '16M', '-o', dst, '--force']);
    expect(r.status, r.stderr).toBe(0);
    const table = JSON.parse(must('sfdisk', ['--json', dst])).partitiontable;
    expect(table.partitions[0]).toMatchObject({ start: 2048, type: '83', bootable: true });
    expect(table.partitions[1]).toMatchObject({ type: '82' });
    expect(run('e2fsck', ['-fn', `${target}?offset=${MIB}`]).status).toBe(0);
  });

  it('converts a block device like a file, judged by qemu-img compare', () => {
    const src = loop(fsImg);
    const out = t.path('blk.vdi');
    expect(imgtool(['convert', src, out]).status).toBe(0);
    expect(qemuCompare(src, out, 'raw', 'vdi').status).toBe(0);
  });
});

/** A loop device over a file filled with 0xAA: old bytes everywhere a copy must write zeros. */
function patternedTarget(name: string, size: number): string {
  const file = t.path(name);
  writeFileSync(file, Buffer.alloc(size, 0xaa));
  return loop(file);
}

describe('writing onto a block device that holds old bytes (it does not read as zero)', () => {
  // Sources with every kind of nothing: a raw hole, data that is all zeros,
  // qcow2 zero clusters and unallocated clusters, and a range of 20 MiB that
  // is large enough for the kernel's zero-out path.
  let rawSrc = '';
  let qcowSrc = '';
  beforeAll(() => {
    rawSrc = t.path('holes.raw');
    must('truncate', ['-s', String(40 * MIB), rawSrc]);
    must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 0 64k', '-c', 'write -P 0 1M 1M', '-c', 'write -P 0x33 30M 4k', rawSrc]);
    qcowSrc = t.path('holes.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', qcowSrc, String(40 * MIB)]);
    must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5c 0 64k', '-c', 'write -z 1M 1M', '-c', 'write -P 0 3M 64k', '-c', 'write -P 0x33 30M 4k', qcowSrc]);
  });

  for (const [label, get, fmt] of [
    ['raw', () => rawSrc, 'raw'],
    ['qcow2', () => qcowSrc, 'qcow2'],
  ] as const) {
    it(`convert -O raw of a ${label} source with holes and zeros leaves none of the old bytes (qemu-img compare)`, () => {
      const dst = patternedTarget(`pat-${label}.img`, 40 * MIB);
      const r = imgtool(['convert', '-O', 'raw', get(), dst, '--force']);
      expect(r.status, r.stderr).toBe(0);
      const cmp = qemuCompare(get(), dst, fmt, 'raw');
      expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    });
  }

  it('convert -O qcow2 onto a patterned block device: the new image maps nothing, so it reads as zero', () => {
    const dst = patternedTarget('pat-q2.img', 40 * MIB);
    const r = imgtool(['convert', '-O', 'qcow2', rawSrc, dst, '--force']);
    expect(r.status, r.stderr).toBe(0);
    expect(run('qemu-img', ['check', '-f', 'qcow2', dst]).status).toBe(0);
    expect(qemuCompare(rawSrc, dst, 'raw', 'qcow2').status).toBe(0);
  });

  it('wrap -O raw onto a patterned block device: the gaps, the padding and free space read as zero', () => {
    const dst = patternedTarget('pat-wrap.img', 80 * MIB);
    const r = imgtool(['wrap', fsImg, '-O', 'raw', '--swap', '16M', '-o', dst, '--force', '--no-guest']);
    expect(r.status, r.stderr).toBe(0);
    // Every sector the same wrap into a fresh file leaves zero must be zero
    // here too: an old 0xAA sector is the bug (timestamps and fresh UUIDs
    // differ between two runs, so the images are not compared byte for byte).
    const ref = t.path('pat-wrap-ref.img');
    expect(imgtool(['wrap', fsImg, '-O', 'raw', '--swap', '16M', '-o', ref, '--no-guest']).status).toBe(0);
    const a = readFileSync(t.path('pat-wrap.img'));
    const b = readFileSync(ref);
    expect(a.length).toBe(80 * MIB);
    // The disk is the filesystem plus swap (65 MiB); the device's tail past it is not part of the disk.
    expect(b.length).toBe(65 * MIB);
    const old = Buffer.alloc(512, 0xaa);
    const stale: number[] = [];
    for (let off = 0; off < b.length; off += 512) {
      if (a.subarray(off, off + 512).equals(old) && !b.subarray(off, off + 512).equals(old)) stale.push(off);
    }
    expect(stale.slice(0, 5), `${stale.length} sectors still hold the device's old bytes`).toEqual([]);
    expect(run('e2fsck', ['-fn', `${t.path('pat-wrap.img')}?offset=${MIB}`]).status).toBe(0);
  });
});

describe('a full disk', () => {
  it('fails with an I/O error and removes the partial output', () => {
    const dir = t.path('small');
    mkdirSync(dir);
    must('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', dir]);
    mounts.push(dir);
    const r = imgtool(['wrap', fsImg, '-O', 'raw', '-o', `${dir}/out.img`]);
    expect(r.status).toBe(5);
    expect(r.stderr).toMatch(/ENOSPC|no space/i);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(readdirSync(dir)).toEqual([]);
  });
});
