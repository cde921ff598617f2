/**
 * imgtool wrap, judged by real tools: qemu-img check, sfdisk --json, host
 * e2fsck -fn, blkid -p, debugfs rdump (every file's content by hash), and
 * the input's hash before and after.
 */
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync, symlinkSync, linkSync, readdirSync, lstatSync, readFileSync, readlinkSync, openSync, writeSync, closeSync, ftruncateSync, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { imgtool, must, mustAsync, qemuCheck, run, sha256File, tempDir } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

const t = tempDir('imgtool-wrap-');
afterAll(() => t.cleanup());

const MIB = 1 << 20;

/** The guest tree: a few thousand files, one over 100 MB, symlinks, hard links, a fifo, a device node, xattrs. */
function makeTree(dir: string): void {
  mkdirSync(join(dir, 'etc'), { recursive: true });
  writeFileSync(join(dir, 'etc/fstab'), '/dev/xvda1 / ext4 defaults 0 1\n/dev/xvda2 none swap sw 0 0\n');
  for (let d = 0; d < 30; d++) {
    const sub = join(dir, `usr/share/d${d}`);
    mkdirSync(sub, { recursive: true });
    for (let f = 0; f < 70; f++) writeFileSync(join(sub, `f${f}.txt`), `file ${d}/${f}\n`.repeat((d * 7 + f) % 300));
  }
  writeFileSync(join(dir, 'big.bin'), pattern(105 * MIB, 11));
  writeFileSync(join(dir, 'medium.bin'), pattern(3 * MIB + 123, 12));
  symlinkSync('usr/share/d1/f1.txt', join(dir, 'link-to-f1'));
  symlinkSync('/nonexistent/target', join(dir, 'dangling'));
  linkSync(join(dir, 'medium.bin'), join(dir, 'medium-hardlink.bin'));
  must('mkfifo', [join(dir, 'fifo')]);
  must('mknod', [join(dir, 'null-dev'), 'c', '1', '3']);
  must('setfattr', ['-n', 'user.imgtool', '-v', 'xattr-value', join(dir, 'medium.bin')]);
}

/** sha256 of every regular file and the target of every symlink, by relative path. */
function treeHashes(dir: string, base = dir, out = new Map<string, string>()): Map<string, string> {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const rel = p.slice(base.length + 1);
    const st = lstatSync(p);
    if (st.isDirectory()) {
      if (rel !== 'lost+found') treeHashes(p, base, out);
    } else if (st.isSymbolicLink()) out.set(rel, `link:${readlinkSync(p)}`);
    else if (st.isFile()) out.set(rel, createHash('sha256').update(readFileSync(p)).digest('hex'));
    else out.set(rel, st.isFIFO() ? 'fifo' : st.isCharacterDevice() ? `chr:${st.rdev}` : 'other');
  }
  return out;
}

let tree: string;
let treeSums: Map<string, string>;
const inputs: Record<string, string> = {};

beforeAll(async () => {
  tree = t.path('tree');
  makeTree(tree);
  treeSums = treeHashes(tree);
  for (const type of ['ext2', 'ext3', 'ext4']) {
    const img = t.path(`${type}.img`);
    await mustAsync('mke2fs', ['-q', '-F', '-t', type, '-d', tree, img, '160M']);
    inputs[type] = img;
  }
  await mustAsync('qemu-img', ['convert', '-O', 'qcow2', inputs.ext4!, t.path('ext4.qcow2')]);
  await mustAsync('qemu-img', ['convert', '-O', 'vdi', inputs.ext4!, t.path('ext4.vdi')]);
  inputs['ext4-qcow2'] = t.path('ext4.qcow2');
  inputs['ext4-vdi'] = t.path('ext4.vdi');
}, 600_000);

interface Verified {
  raw: string;
  layout: { partitions: Array<{ start: number; size: number; type: string; bootable?: boolean }> };
}

/** Convert an output to raw with qemu-img (the judge reads it) and check everything. */
function verifyDisk(out: string, fmt: string, opts: { swap: boolean }): Verified {
  if (fmt !== 'raw') {
    const c = qemuCheck(out, fmt);
    expect(c.status, c.text).toBe(0);
  }
  const raw = `${out}.check.raw`;
  must('qemu-img', ['convert', '-f', fmt, '-O', 'raw', out, raw]);
  const layout = JSON.parse(must('sfdisk', ['--json', raw])).partitiontable;
  expect(layout.label).toBe('dos');
  const p1 = layout.partitions[0];
  expect(p1.start).toBe(2048);
  expect(p1.type).toBe('83');
  expect(p1.bootable).toBe(true);
  const fsck = run('e2fsck', ['-fn', `${raw}?offset=${p1.start * 512}`]);
  expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
  if (opts.swap) {
    const p2 = layout.partitions[1];
    expect(p2.type).toBe('82');
    expect(p2.start % 2048).toBe(0);
    const blk = must('blkid', ['-p', '-o', 'export', '-O', String(p2.start * 512), '-S', String(p2.size * 512), raw]);
    expect(blk).toMatch(/^TYPE=swap$/m);
  }
  // Every file's content and every link, read back by debugfs from partition 1.
  const dump = `${out}.dump`;
  mkdirSync(dump);
  const part = `${out}.p1`;
  must('dd', [`if=${raw}`, `of=${part}`, 'bs=1M', `skip=${p1.start * 512}`, `count=${p1.size * 512}`, 'iflag=count_bytes,skip_bytes', 'conv=sparse', 'status=none']);
  must('debugfs', ['-R', `rdump / ${dump}`, part]);
  const got = treeHashes(dump);
  // rdump writes regular files, directories and links; special files are checked by stat.
  // /etc/fstab is the one file wrap changes (guest fix-up): checked by content.
  const expected = new Map([...treeSums].filter(([k, v]) => v !== 'fifo' && !v.startsWith('chr:') && k !== 'etc/fstab'));
  const fstab = readFileSync(join(dump, 'etc/fstab'), 'utf8');
  got.delete('etc/fstab');
  expect(got).toEqual(expected);
  // Lines the fix-ups could not map are kept as comments for the admin.
  expect(fstab.split('\n').filter((l) => !l.startsWith('#')).join('\n')).not.toMatch(/xvda/);
  expect(fstab).toMatch(/^UUID=[0-9a-f-]{36}\s+\/\s+ext/m);
  if (opts.swap) expect(fstab).toMatch(/^UUID=[0-9a-f-]{36}\s+none\s+swap/m);
  expect(must('debugfs', ['-R', 'stat /fifo', part])).toMatch(/Type: FIFO/);
  const dev = must('debugfs', ['-R', 'stat /null-dev', part]);
  expect(dev).toMatch(/Type: character special/);
  expect(dev).toMatch(/Device major\/minor number: 0?1:0?3/);
  expect(must('debugfs', ['-R', 'ea_get /medium.bin user.imgtool', part])).toMatch(/xattr-value/);
  return { raw, layout };
}

describe('imgtool wrap', () => {
  const cases: Array<[string, string]> = [
    ['ext2', 'raw'],
    ['ext2', 'qcow2'],
    ['ext3', 'vdi'],
    ['ext3', 'qcow2'],
    ['ext4', 'raw'],
    ['ext4', 'qcow2'],
    ['ext4', 'vdi'],
    ['ext4-qcow2', 'raw'],
    ['ext4-qcow2', 'qcow2'],
    ['ext4-qcow2', 'vdi'],
    ['ext4-vdi', 'raw'],
    ['ext4-vdi', 'qcow2'],
    ['ext4-vdi', 'vdi'],
  ];
  it.each(cases)('wraps %s into a %s disk that qemu-img, sfdisk, e2fsck, blkid and debugfs accept, leaving the input unchanged', (input, fmt) => {
    const src = inputs[input]!;
    const before = sha256File(src);
    const out = t.path(`${input}-wrapped.${fmt}`);
    const r = imgtool(['wrap', src, '--swap', '64M', '-o', out, '--output', 'json']);
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.partitions).toHaveLength(2);
    verifyDisk(out, fmt, { swap: true });
    expect(sha256File(src)).toBe(before);
  });

  it('grows the filesystem to fill partition 1 with --size four times the filesystem', () => {
    const out = t.path('grown.qcow2');
    const r = imgtool(['wrap', inputs.ext4!, '--size', '640M', '--swap', '32M', '-o', out, '--output', 'json']);
    expect(r.status, r.stderr).toBe(0);
    const { raw, layout } = verifyDisk(out, 'qcow2', { swap: true });
    const p1 = layout.partitions[0]!;
    const dumpe2fs = must('dumpe2fs', ['-h', `${raw}?offset=${p1.start * 512}`]);
    const blocks = Number(/Block count:\s+(\d+)/.exec(dumpe2fs)![1]);
    const bsize = Number(/Block size:\s+(\d+)/.exec(dumpe2fs)![1]);
    expect(blocks * bsize).toBe(p1.size * 512);
    expect(p1.size * 512).toBeGreaterThan(600 * MIB - 32 * MIB - 2 * MIB);
  });

  it('copies only the used blocks of a fully allocated input whose free blocks hold garbage', () => {
    const img = t.path('dirty.img');
    const fd = openSync(img, 'w');
    const junk = pattern(4 * MIB, 99);
    for (let off = 0; off < 700 * MIB; off += junk.length) writeSync(fd, junk, 0, junk.length, off);
    closeSync(fd);
    must('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'nodiscard', '-d', tree, img]);
    const used = (() => {
      const h = must('dumpe2fs', ['-h', img]);
      const count = Number(/Block count:\s+(\d+)/.exec(h)![1]);
      const free = Number(/Free blocks:\s+(\d+)/.exec(h)![1]);
      return (count - free) * Number(/Block size:\s+(\d+)/.exec(h)![1]);
    })();
    const out = t.path('dirty.qcow2');
    const r = imgtool(['wrap', img, '--no-grow', '-o', out]);
    expect(r.status, r.stderr).toBe(0);
    const actual = statSync(out).blocks * 512;
    expect(actual).toBeLessThan(used * 1.1 + 8 * MIB);
    expect(actual).toBeGreaterThan(used * 0.5);
    verifyDisk(out, 'qcow2', { swap: false });
  });

  it('refuses a partitioned input, pointing at part list, and writes nothing', () => {
    const disk = t.path('disk.img');
    const fd = openSync(disk, 'w');
    ftruncateSync(fd, 16 * MIB);
    closeSync(fd);
    must('sfdisk', [disk], { input: 'label: dos\n,,83\n' });
    const out = t.path('nope.qcow2');
    const r = imgtool(['wrap', disk, '-o', out]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/partition table.*imgtool part list/);
    expect(existsSync(out)).toBe(false);
  });

  it('refuses a --size too small, an existing output, and an output that is the input', () => {
    const small = imgtool(['wrap', inputs.ext2!, '--size', '100M', '-o', t.path('small.qcow2')]);
    expect(small.status).toBe(2);
    expect(small.stderr).toMatch(/--size .* too small/);
    const existing = t.path('exists.qcow2');
    writeFileSync(existing, 'x');
    const ex = imgtool(['wrap', inputs.ext2!, '-o', existing]);
    expect(ex.status).toBe(2);
    expect(readFileSync(existing, 'utf8')).toBe('x');
    const same = imgtool(['wrap', inputs.ext2!, '-O', 'raw', '-o', inputs.ext2!, '--force']);
    expect(same.status).toBe(2);
    expect(same.stderr).toMatch(/is the input/);
  });

  it('refuses something that is not an ext filesystem, saying so', () => {
    const junk = t.path('junk.img');
    writeFileSync(junk, pattern(4 * MIB, 5));
    const r = imgtool(['wrap', junk, '-o', t.path('junk.qcow2')]);
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/not an ext2\/3\/4 filesystem/);
  });
});
