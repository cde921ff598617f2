/**
 * `imgtool fsck` and `imgtool resize-fs` through the built CLI. The host's
 * e2fsprogs judges the filesystems, qemu-img the containers; inputs opened
 * for checking are byte-identical afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, statSync } from 'node:fs';
import { imgtool, must, qemuCheck, sha256File, tempDir } from './helpers/peers.js';
import { KINDS, blockSize, copy, damage, debugfsCat, extract, hostFsck, implant, makeTree, mbrDisk, mkfs, sha256Range } from './e2fsprogs-fixtures.js';

const t = tempDir('imgtool-fsck-cli-');
let tree: string;
beforeAll(() => {
  tree = makeTree(t.path('tree'));
});
afterAll(() => t.cleanup());

const ext4 = KINDS[3]!;

describe('imgtool fsck', () => {
  it('checks read-only by default (-n): e2fsck exit status, messages on stdout, the file unchanged', () => {
    const img = mkfs(t.path('n.img'), ext4, 16, tree);
    damage(img, 'inode-table');
    const host = hostFsck(img, '-fn');
    const before = sha256File(img);
    const r = imgtool(['fsck', img]);
    expect(r.status).toBe(host.status);
    expect(r.stdout).toMatch(/^Pass 1: Checking inodes, blocks, and sizes$/m);
    expect(r.stdout).toMatch(/WARNING: Filesystem still has errors/);
    expect(sha256File(img)).toBe(before);
    const n = imgtool(['fsck', '-n', img]);
    expect(n.status).toBe(host.status);
    expect(sha256File(img)).toBe(before);
  });

  it("accepts e2fsck's grouped -fy and -fn, and -f FMT as the image format", () => {
    const img = mkfs(t.path('fy.img'), ext4, 16, tree);
    damage(img, 'dir-block');
    const hostY = hostFsck(copy(img, t.path('fy-host.img')), '-fy');
    const fn = imgtool(['fsck', '-f', 'raw', '-fn', img]);
    expect(fn.status).toBe(hostFsck(img, '-fn').status);
    const fy = imgtool(['fsck', '-fy', '-f', 'raw', img]);
    expect(fy.status).toBe(hostY.status);
    expect(fy.status & 1).toBe(1);
    expect(hostFsck(img, '-fn').status).toBe(0);
    // A plain -f followed by the image is e2fsck's force (imgtool always forces).
    const f = imgtool(['fsck', '-f', img]);
    expect(f.status).toBe(0);
    const p = imgtool(['fsck', '-pf', img]);
    expect(p.status).toBe(0);
  });

  it('reports in JSON with --output json', () => {
    const img = mkfs(t.path('json.img'), KINDS[0]!, 8, tree);
    damage(img, 'block-bitmap');
    const r = imgtool(['fsck', '--output', 'json', img]);
    const j = JSON.parse(r.stdout);
    expect(r.status).toBe(4);
    expect(j).toMatchObject({ image: img, format: 'raw', partition: null, offset: 0, mode: 'check', 'exit-code': 4, status: ['uncorrected'] });
    expect(j.output).toMatch(/Block bitmap differences/);
  });

  it('checks and repairs partition 1 of a qcow2 disk; -n leaves the file as it was, -y touches only partition 1', () => {
    const fsImg = mkfs(t.path('q-fs.img'), ext4, 24, tree);
    damage(fsImg, 'block-bitmap');
    const hostN = hostFsck(fsImg, '-fn');
    const hostY = hostFsck(copy(fsImg, t.path('q-fs-host.img')), '-fy');
    const disk = mbrDisk(t.path('q.raw'), 24);
    implant(fsImg, disk.path, disk.parts[0]!.start);
    const q = t.path('q.qcow2');
    must('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', disk.path, q]);
    const before = sha256File(q);

    const none = imgtool(['fsck', q]);
    expect(none.status).toBe(16);
    expect(none.stderr).toMatch(/has an MBR partition table: choose the filesystem with --partition N \(partitions: 1 \(ext4, 24 MiB\), 2 /);

    const n = imgtool(['fsck', '-n', '--partition', '1', q]);
    expect(n.status).toBe(hostN.status);
    expect(sha256File(q)).toBe(before);

    const y = imgtool(['fsck', '-y', '--partition', '1', q]);
    expect(y.status).toBe(hostY.status);
    expect(qemuCheck(q, 'qcow2').status).toBe(0);
    const after = t.path('q-after.raw');
    must('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', q, after]);
    const p1 = disk.parts[0]!;
    expect(hostFsck(extract(after, p1.start, p1.size, t.path('q-p1.img')), '-fn').status).toBe(0);
    expect(sha256Range(after, 0, p1.start)).toBe(sha256Range(disk.path, 0, p1.start));
    const tail = statSync(disk.path).size - p1.start - p1.size;
    expect(sha256Range(after, p1.start + p1.size, tail)).toBe(sha256Range(disk.path, p1.start + p1.size, tail));
  });

  it('repairs the filesystem in partition 2 of a GPT disk in VDI', () => {
    const fsImg = mkfs(t.path('g-fs.img'), KINDS[1]!, 16, tree);
    damage(fsImg, 'dir-block');
    const hostY = hostFsck(copy(fsImg, t.path('g-fs-host.img')), '-fy');
    const raw = t.path('g.raw');
    must('truncate', ['-s', '40M', raw]);
    must('sfdisk', ['--no-reread', '--no-tell-kernel', raw], { input: 'label: gpt\nstart=2048, size=16384, type=L\nstart=18432, size=32768, type=L\n' });
    implant(fsImg, raw, 18432 * 512);
    const vdi = t.path('g.vdi');
    must('qemu-img', ['convert', '-f', 'raw', '-O', 'vdi', raw, vdi]);
    const r = imgtool(['fsck', '-y', '--partition', '2', vdi]);
    expect(r.status).toBe(hostY.status);
    expect(r.stdout).toMatch(/\/dev\/g\.vdi-p2: \*\*\*\*\* FILE SYSTEM WAS MODIFIED \*\*\*\*\*/);
    expect(qemuCheck(vdi, 'vdi').status).toBe(0);
    const after = t.path('g-after.raw');
    must('qemu-img', ['convert', '-f', 'vdi', '-O', 'raw', vdi, after]);
    expect(hostFsck(extract(after, 18432 * 512, 16 << 20, t.path('g-p2.img')), '-fn').status).toBe(0);
    expect(sha256Range(after, 0, 18432 * 512)).toBe(sha256Range(raw, 0, 18432 * 512));
    expect(sha256Range(after, (18432 + 32768) * 512, (40 << 20) - (18432 + 32768) * 512)).toBe(sha256Range(raw, (18432 + 32768) * 512, (40 << 20) - (18432 + 32768) * 512));
  });

  it('maps its own errors onto e2fsck exit codes: 8 for an image that is not ext, 16 for bad usage', () => {
    const junk = t.path('junk.img');
    must('truncate', ['-s', '4M', junk]);
    const r = imgtool(['fsck', junk]);
    expect(r.status).toBe(8);
    expect(r.stderr).toMatch(/^imgtool: not an ext2\/3\/4 filesystem: the superblock magic s_magic at offset 1080 has value 0x0000, not 0xef53, and no backup superblock was found; e2fsck gave up \(exit 8\)$/m);
    const img = mkfs(t.path('usage.img'), ext4, 8);
    const both = imgtool(['fsck', '-n', '-y', img]);
    expect(both.status).toBe(16);
    expect(both.stderr).toMatch(/only one of -n, -p and -y/);
    const part = imgtool(['fsck', '--partition', '1', img]);
    expect(part.status).toBe(16);
    expect(part.stderr).toMatch(/has no partition table: omit --partition/);
  });
});

describe('imgtool resize-fs', () => {
  for (const fmt of ['raw', 'qcow2'] as const) {
    it(`grows partition 1's filesystem in a ${fmt} disk to fill the partition; files and partition 2 unchanged`, () => {
      const fsImg = mkfs(t.path(`r-${fmt}-fs.img`), ext4, 12, tree);
      const disk = mbrDisk(t.path(`r-${fmt}.raw`), 40);
      implant(fsImg, disk.path, disk.parts[0]!.start);
      const [p1, p2] = disk.parts as [{ start: number; size: number }, { start: number; size: number }];
      let file = disk.path;
      if (fmt === 'qcow2') {
        file = t.path(`r-${fmt}.qcow2`);
        must('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', disk.path, file]);
      }
      const r = imgtool(['resize-fs', '--partition', '1', '--output', 'json', file]);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j).toMatchObject({ partition: 1, offset: p1.start, 'partition-size': p1.size, 'old-size': 12 << 20, 'new-size': 40 << 20 });
      expect(j.fsck['exit-code']).toBe(0);
      let rawAfter = file;
      if (fmt === 'qcow2') {
        expect(qemuCheck(file, 'qcow2').status).toBe(0);
        rawAfter = t.path(`r-${fmt}-after.raw`);
        must('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', file, rawAfter]);
      }
      const part = extract(rawAfter, p1.start, p1.size, t.path(`r-${fmt}-p1.img`));
      expect(hostFsck(part, '-fn').status).toBe(0);
      expect(must('dumpe2fs', ['-h', part])).toMatch(new RegExp(`^Block count:\\s+${(40 << 20) / blockSize(part)}$`, 'm'));
      expect(debugfsCat(part, '/deep/er/est/big.bin').equals(readFileSync(`${tree}/deep/er/est/big.bin`))).toBe(true);
      expect(debugfsCat(part, '/dir0/file7.bin').equals(readFileSync(`${tree}/dir0/file7.bin`))).toBe(true);
      const rest = statSync(disk.path).size - p2.start;
      expect(sha256Range(rawAfter, p2.start, rest)).toBe(sha256Range(disk.path, p2.start, rest));
      expect(sha256Range(rawAfter, 0, p1.start)).toBe(sha256Range(disk.path, 0, p1.start));
    });
  }

  it('shrinks a bare filesystem image to SIZE, and refuses a SIZE beyond the image', () => {
    const img = mkfs(t.path('s.img'), ext4, 32, tree);
    const big = imgtool(['resize-fs', img, '64M']);
    expect(big.status).toBe(2);
    expect(big.stderr).toMatch(/larger than the image/);
    const r = imgtool(['resize-fs', img, '20M']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/filesystem 32 MiB -> 20 MiB \(33554432 -> 20971520 bytes\)$/m);
    expect(hostFsck(img, '-fn').status).toBe(0);
    expect(debugfsCat(img, '/hello.txt').toString()).toBe('hello, world\n');
    const again = imgtool(['resize-fs', img, '20M']);
    expect(again.status).toBe(0);
    expect(again.stdout).toMatch(/already 20 MiB/);
  });

  it('refuses to resize a filesystem with errors e2fsck -p cannot fix, and says to run fsck -y', () => {
    const img = mkfs(t.path('bad.img'), ext4, 16, tree, { fileMiB: 24 });
    damage(img, 'inode-table');
    const r = imgtool(['resize-fs', img]);
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/e2fsck -fp found errors it cannot fix safely .*run 'imgtool fsck -y /);
    expect(must('dumpe2fs', ['-h', img])).toMatch(new RegExp(`^Block count:\\s+${(16 << 20) / blockSize(img)}$`, 'm'));
  });
});
