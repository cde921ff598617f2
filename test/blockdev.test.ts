/**
 * Host block devices (a Xen guest's LVM volume is one) as input and output,
 * through loop devices; and a full disk during a write. Needs root (CI runs
 * as root), losetup and tmpfs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
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
