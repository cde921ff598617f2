/**
 * wrap --part: several filesystems of a Xen guest into one disk. Judged by
 * sfdisk (the layout, and byte-identical EBRs for more than four
 * partitions), host e2fsck -fn (every filesystem clean), dumpe2fs (grown to
 * the size asked), debugfs (the guest's fstab names each by UUID, contents
 * kept) and qemu-img check. The inputs never change.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { imgtool, must, mustAsync, peer, qemuCheck, run, sha256File, tempDir } from './helpers/peers.js';
import { readRange, sfdiskJson, sfdiskWrite, sparseFile } from './partition-helpers.js';

const t = tempDir('imgtool-wrappart-');
afterAll(() => t.cleanup());

const MiB = 1 << 20;
const FSTAB = [
  '/dev/xvda1\t/\text4\tdefaults\t0\t1',
  '/dev/xvda2\tnone\tswap\tsw\t0\t0',
  '/dev/xvda3\t/var\text4\tdefaults\t0\t2',
  '/dev/xvdb\t/home\text3\tdefaults\t0\t2',
  '/dev/xvdc1\t/srv\text2\tdefaults\t0\t2',
  '/dev/xvdd1\t/opt\text4\tdefaults\t0\t2',
  'proc\t/proc\tproc\tdefaults\t0\t0',
  '',
].join('\n');

/** name → [mke2fs type, size]: a root with the fstab above, and one filesystem per mount point. */
const FILESYSTEMS: Record<string, [string, string]> = { root: ['ext4', '24M'], var: ['ext4', '16M'], home: ['ext3', '12M'], srv: ['ext2', '8M'], opt: ['ext4', '10M'] };
const img = (name: string) => t.path(`${name}.img`);

beforeAll(async () => {
  for (const tool of ['mke2fs', 'e2fsck', 'dumpe2fs', 'debugfs', 'sfdisk', 'qemu-img']) peer(tool);
  for (const [name, [type, size]] of Object.entries(FILESYSTEMS)) {
    const dir = t.path(`${name}.d`);
    mkdirSync(`${dir}/etc`, { recursive: true });
    if (name === 'root') {
      writeFileSync(`${dir}/etc/fstab`, FSTAB);
      for (const m of ['var', 'home', 'srv', 'opt']) mkdirSync(`${dir}/${m}`);
    }
    writeFileSync(`${dir}/marker`, `${name}-marker\n`);
    await mustAsync(peer('mke2fs'), ['-q', '-F', '-t', type, '-d', dir, img(name), size]);
  }
}, 120_000);

interface Report {
  'disk-size': number;
  partitions: Array<{ number: number; start: number; size: number; type: string; content: string }>;
  filesystem: { uuid: string };
  parts: Array<{ mountpoint: string; uuid: string; partition: number; device: string; 'size-after': number; resized: boolean }>;
  swap?: { uuid: string };
  warnings: string[];
}

function wrap(out: string, args: string[]): Report {
  const inputs = ['root', 'var', 'home', 'srv', 'opt'].map(img);
  const before = inputs.map(sha256File);
  const r = imgtool(['wrap', img('root'), '-o', out, '--boot', 'none', '--output', 'json', '--force', ...args]);
  expect(r.status, r.stderr).toBe(0);
  expect(inputs.map(sha256File)).toEqual(before);
  return JSON.parse(r.stdout) as Report;
}

function toRaw(out: string, fmt: string): string {
  if (fmt === 'raw') return out;
  const raw = `${out}.raw`;
  must('qemu-img', ['convert', '-f', fmt, '-O', 'raw', out, raw]);
  return raw;
}

/** Host e2fsck -fn of the filesystem at byte `start` of a raw disk. */
function hostFsck(raw: string, start: number): void {
  const r = run('e2fsck', ['-fn', `${raw}?offset=${start}`]);
  expect(r.status, r.stdout + r.stderr).toBe(0);
}

function superblock(raw: string, start: number): { uuid: string; bytes: number } {
  const h = must('dumpe2fs', ['-h', `${raw}?offset=${start}`]);
  const field = (name: string) => new RegExp(`^${name}:\\s+(.+)$`, 'm').exec(h)![1]!.trim();
  return { uuid: field('Filesystem UUID'), bytes: Number(field('Block count')) * Number(field('Block size')) };
}

const guestFile = (raw: string, start: number, p: string) => must('debugfs', ['-R', `cat ${p}`, `${raw}?offset=${start}`]);

describe('wrap --part: several filesystems into one disk', () => {
  it.each(['qcow2', 'raw'])('root, swap, /var and /home as partitions 1-4 (%s): sfdisk, e2fsck -fn, sizes, UUIDs in fstab', (fmt) => {
    const out = t.path(`four.${fmt}`);
    const report = wrap(out, ['--swap', '16M', '--part', `/var=${img('var')}`, '--part', `/home=${img('home')}:48M`]);
    if (fmt === 'qcow2') expect(qemuCheck(out, fmt).status).toBe(0);
    const raw = toRaw(out, fmt);
    const sf = sfdiskJson(raw)!;
    expect(sf.partitions!.map((p) => [p.start * 512, p.size * 512, p.type, !!p.bootable])).toEqual([
      [MiB, 24 * MiB, '83', true],
      [25 * MiB, 16 * MiB, '82', false],
      [41 * MiB, 16 * MiB, '83', false],
      [57 * MiB, 48 * MiB, '83', false],
    ]);
    expect(report.parts.map((p) => [p.mountpoint, p.partition, p.device])).toEqual([
      ['/var', 3, '/dev/vda3'],
      ['/home', 4, '/dev/vda4'],
    ]);
    for (const p of sf.partitions!.filter((x) => x.type === '83')) hostFsck(raw, p.start * 512);
    // Each filesystem keeps its UUID and contents; /home grew to its 48M partition.
    for (const [name, start] of [['var', 41 * MiB], ['home', 57 * MiB]] as const) {
      const sb = superblock(raw, start);
      expect(sb.uuid).toBe(superblock(img(name), 0).uuid);
      expect(guestFile(raw, start, '/marker')).toBe(`${name}-marker\n`);
    }
    expect(superblock(raw, 57 * MiB).bytes).toBe(48 * MiB);
    expect(report.parts[1]!.resized).toBe(true);
    // The guest's fstab names every filesystem by UUID.
    const fstab = guestFile(raw, MiB, '/etc/fstab');
    expect(fstab).toContain(`UUID=${report.filesystem.uuid}\t/\text4`);
    expect(fstab).toContain(`UUID=${report.swap!.uuid}\tnone\tswap`);
    for (const p of report.parts) expect(fstab).toContain(`UUID=${p.uuid}\t${p.mountpoint}\t`);
    expect(fstab).not.toMatch(/^\/dev\/xvd[ab]/m);
  }, 120_000);

  it('more than four partitions: an extended partition with logical ones, EBRs byte-identical to sfdisk, every filesystem clean', () => {
    const out = t.path('seven.raw');
    const report = wrap(out, [
      '--swap', '16M',
      '--part', `/var=${img('var')}`, '--part', `/home=${img('home')}`, '--part', `/srv=${img('srv')}:20M`, '--part', `/opt=${img('opt')}`,
    ]);
    const sf = sfdiskJson(out)!;
    expect(sf.partitions!.map((p) => [Number(/(\d+)$/.exec(p.node)![1]), p.type])).toEqual([
      [1, '83'], [2, '82'], [3, '83'], [4, '5'], [5, '83'], [6, '83'], [7, '83'],
    ]);
    expect(report.parts.map((p) => [p.mountpoint, p.device])).toEqual([
      ['/var', '/dev/vda3'],
      ['/home', '/dev/vda5'],
      ['/srv', '/dev/vda6'],
      ['/opt', '/dev/vda7'],
    ]);
    const ext = sf.partitions!.find((p) => p.type === '5')!;
    const logicals = sf.partitions!.filter((p) => Number(/(\d+)$/.exec(p.node)![1]) > 4);
    expect(logicals.map((p) => p.size * 512)).toEqual([12 * MiB, 20 * MiB, 10 * MiB]);
    expect(ext.start + ext.size).toBe(logicals.at(-1)!.start + logicals.at(-1)!.size);
    for (const p of sf.partitions!.filter((x) => x.type === '83')) hostFsck(out, p.start * 512);
    // sfdisk, given our table, writes the same MBR and EBRs.
    const dump = must('sfdisk', ['--dump', out]).split(out).join('disk');
    const copy = sparseFile(t.path('seven.sfdisk'), report['disk-size']);
    sfdiskWrite(copy, dump);
    const ebrs = [ext.start * 512, ...logicals.slice(1).map((l) => l.start * 512 - MiB)];
    expect(readRange(out, 440, 72).toString('hex')).toBe(readRange(copy, 440, 72).toString('hex'));
    for (const off of ebrs) expect(readRange(out, off, 512).toString('hex'), `EBR at ${off}`).toBe(readRange(copy, off, 512).toString('hex'));
    const fstab = guestFile(out, MiB, '/etc/fstab');
    for (const p of report.parts) expect(fstab).toContain(`UUID=${p.uuid}\t${p.mountpoint}\t`);
  }, 120_000);

  it('--size gives root what the other partitions leave (EBR overhead counted); a --part image may be qcow2', () => {
    const opt = t.path('opt.qcow2');
    must('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', img('opt'), opt]);
    const out = t.path('sized.raw');
    const report = wrap(out, ['--size', '200M', '--swap', '16M', '--part', `/var=${img('var')}`, '--part', `/home=${img('home')}`, '--part', `/opt=${opt}`]);
    expect(report['disk-size']).toBe(200 * MiB);
    const sf = sfdiskJson(out)!;
    // 1 MiB before partition 1, swap 16M, var 16M, home 12M, opt 10M, and 1 MiB for each of the two EBRs.
    expect(sf.partitions![0]!.size * 512).toBe((200 - 1 - 16 - 16 - 12 - 10 - 2) * MiB);
    expect(superblock(out, MiB).bytes).toBe(sf.partitions![0]!.size * 512);
    const last = sf.partitions!.at(-1)!;
    expect((last.start + last.size) * 512).toBe(200 * MiB);
    for (const p of sf.partitions!.filter((x) => x.type === '83')) hostFsck(out, p.start * 512);
    expect(guestFile(out, last.start * 512, '/marker')).toBe('opt-marker\n');
  }, 120_000);

  it('repairs a part filesystem as e2fsck -p would, in the output only', () => {
    const dirty = t.path('dirty-var.img');
    must('cp', [img('var'), dirty]);
    // An in-use inode marked free in the inode bitmap: e2fsck -p fixes it without asking.
    must('debugfs', ['-w', '-R', 'freei /marker', dirty]);
    expect(run('e2fsck', ['-fn', dirty]).status).not.toBe(0);
    const hash = sha256File(dirty);
    const out = t.path('dirty.raw');
    const r = imgtool(['wrap', img('root'), '-o', out, '--boot', 'none', '--part', `/var=${dirty}`, '--output', 'json']);
    expect(r.status, r.stderr).toBe(0);
    expect(sha256File(dirty)).toBe(hash);
    const report = JSON.parse(r.stdout) as Report;
    expect(report.warnings.join('\n')).toMatch(/dirty-var\.img: e2fsck repaired/);
    hostFsck(out, report.partitions.find((p) => p.number === report.parts[0]!.partition)!.start);
  }, 120_000);

  it.each([
    ['a relative mount point', ['--part', 'var=VAR'], /mount point must be an absolute path/],
    ['the root mount point', ['--part', '/=VAR'], /mount point must be an absolute path other than \//],
    ['a mount point twice', ['--part', '/var=VAR', '--part', '/var=VAR'], /--part \/var is given twice/],
    ['a size below the filesystem', ['--part', '/var=VAR:4M'], /--part \/var: size 4 MiB is smaller than its filesystem/],
    ['no image', ['--part', '/var='], /--part wants MOUNTPOINT=IMAGE/],
  ])('refuses %s (exit 2)', (_what, args, message) => {
    const r = imgtool(['wrap', img('root'), '-o', t.path('refused.raw'), ...args.map((a) => a.replace('VAR', img('var')))]);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
  });

  it('a --part image that is not an ext filesystem: exit 3 naming it, no output, no scratch file left', () => {
    const dir = t.path('notext');
    mkdirSync(dir);
    const junk = sparseFile(`${dir}/junk.img`, 4 * MiB);
    const r = imgtool(['wrap', img('root'), '-o', `${dir}/out.raw`, '--part', `/var=${junk}`]);
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toContain(`${junk} is not an ext2/3/4 filesystem`);
    expect(readdirSync(dir)).toEqual(['junk.img']);
  });

  it('refuses to write over a --part input', () => {
    const copy = t.path('victim.img');
    must('cp', [img('var'), copy]);
    const hash = sha256File(copy);
    const r = imgtool(['wrap', img('root'), '-O', 'raw', '-o', copy, '--force', '--part', `/var=${copy}`]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/is the input/);
    expect(sha256File(copy)).toBe(hash);
  });
});
