/**
 * Direct I/O of the e2fsprogs worker: over a local file (a raw image, or a
 * partition window inside one) the worker reads and writes the file itself
 * instead of asking the main thread for every block (src/fs/e2fsprogs.ts).
 * Both paths must give e2fsck the same bytes: the same exit code and
 * messages on damaged filesystems, repairs the host's e2fsck finds clean,
 * nothing outside the window touched, and a check that has the file open
 * read-only only. FileDevice.bytesRead tells the paths apart: the direct
 * path does not read through the device.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, readdirSync, readlinkSync, realpathSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { FileDevice } from '../src/core/file.js';
import { SliceDevice } from '../src/core/slice.js';
import { openImage } from '../src/formats/index.js';
import { type FsckResult, e2fsck, rawHostFile, resize2fs } from '../src/fs/e2fsprogs.js';
import { readExtSuperblock } from '../src/fs/ext-superblock.js';
import { stageFs } from '../src/wrap/filesystem.js';
import { noProgress } from '../src/convert/progress.js';
import { imgtool, must, qemuCheck, sha256File, tempDir } from './helpers/peers.js';
import { DAMAGES, type Damage, type FsKind, KINDS, blockSize, copy, damage, debugfsCat, extract, hostFsck, implant, makeTree, mbrDisk, mkfs, overwrite, sha256Range } from './e2fsprogs-fixtures.js';
import { execFileSync } from 'node:child_process';

const t = tempDir('imgtool-e2fs-direct-');
let tree: string;
beforeAll(() => {
  tree = makeTree(t.path('tree'));
});
afterAll(() => t.cleanup());

/** Access modes (0 O_RDONLY, 1 O_WRONLY, 2 O_RDWR) of this process's descriptors open on `path`. */
function openModes(path: string): number[] {
  const real = realpathSync(path);
  const modes: number[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    let info: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
      info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
    } catch {
      continue; // closed meanwhile (readdir's own descriptor)
    }
    if (target === real) modes.push(parseInt(/^flags:\s+([0-7]+)/m.exec(info)![1]!, 8) & 3);
  }
  return modes.sort();
}

interface Run {
  result: FsckResult;
  /** Bytes read through the FileDevice: 0 on the direct path. */
  bytesRead: number;
  /** openModes(path) seen while the tool ran (at its first output). */
  modes: number[];
}

async function fsckFile(path: string, mode: 'check' | 'repair', direct: boolean): Promise<Run> {
  const dev = await FileDevice.open(path, { writable: mode !== 'check' });
  let modes: number[] | undefined;
  try {
    const result = await e2fsck(dev, { mode, direct, onOutput: () => void (modes ??= openModes(path)) });
    return { result, bytesRead: dev.bytesRead, modes: modes ?? [] };
  } finally {
    await dev.close();
  }
}

/**
 * Bytes a run reads through the device on the direct path: none, or the
 * superblock e2fsck() reads to explain an exit with bit 8. A run on the
 * message path reads all e2fsck reads (some 500 KiB on these 16 MiB
 * filesystems).
 */
const SUPERBLOCK_ONLY = 1024;
const THROUGH_DEVICE = 256 << 10;

/** The two streams of a run, for comparing two runs on copies of one image. */
const streams = (r: FsckResult) => ({ exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr });

describe('direct I/O and the message path give e2fsck the same filesystem', () => {
  for (const kind of [KINDS[0]!, KINDS[3]!]) {
    for (const what of DAMAGES) {
      it(`${kind.name}, ${what} damaged: same -n and -y results on both paths, as the host's`, async () => {
        const img = mkfs(t.path(`d-${kind.type}-${what}.img`), kind, 16, tree);
        damage(img, what);
        const hostN = hostFsck(copy(img, t.path(`d-${kind.type}-${what}-hn.img`)), '-fn');
        const hostY = hostFsck(copy(img, t.path(`d-${kind.type}-${what}-hy.img`)), '-fy');
        expect(hostN.status).toBeGreaterThan(0);
        const a = copy(img, t.path(`d-${kind.type}-${what}-a.img`));
        const b = copy(img, t.path(`d-${kind.type}-${what}-b.img`));
        const before = sha256File(img);

        const nA = await fsckFile(a, 'check', true);
        const nB = await fsckFile(b, 'check', false);
        expect(nA.bytesRead).toBeLessThanOrEqual(SUPERBLOCK_ONLY);
        expect(nB.bytesRead).toBeGreaterThan(THROUGH_DEVICE);
        expect(streams(nA.result)).toEqual(streams(nB.result));
        expect(nA.result.exitCode).toBe(hostN.status);
        // -n: the file is open read-only only (the device's descriptor and the worker's), and unchanged.
        expect(nA.modes).toEqual([0, 0]);
        expect(nB.modes).toEqual([0]);
        expect([sha256File(a), sha256File(b)]).toEqual([before, before]);

        const yA = await fsckFile(a, 'repair', true);
        const yB = await fsckFile(b, 'repair', false);
        expect(yA.bytesRead).toBeLessThanOrEqual(SUPERBLOCK_ONLY);
        expect(yB.bytesRead).toBeGreaterThan(THROUGH_DEVICE);
        expect(yA.modes).toEqual([2, 2]);
        expect(streams(yA.result)).toEqual(streams(yB.result));
        expect(yA.result.exitCode).toBe(hostY.status);
        expect(hostFsck(a, '-fn').status).toBe(0);
        expect(hostFsck(b, '-fn').status).toBe(0);
      });
    }
  }
});

/**
 * A raw MBR disk (mbrDisk) whose partition 1 holds a filesystem of `fsMiB`
 * made from the tree, damaged as `what` says; `outside()` hashes every byte
 * of the disk outside [start, start + window) (default: partition 1).
 */
function diskWithFs(name: string, kind: FsKind, fsMiB: number, partMiB: number, what?: Damage, window = partMiB << 20) {
  const fsImg = mkfs(t.path(`${name}-fs.img`), kind, fsMiB, tree);
  if (what) damage(fsImg, what);
  const hostY = what ? hostFsck(copy(fsImg, t.path(`${name}-host.img`)), '-fy') : undefined;
  const disk = mbrDisk(t.path(`${name}.raw`), partMiB);
  const p1 = disk.parts[0]!;
  implant(fsImg, disk.path, p1.start);
  const size = statSync(disk.path).size;
  const outside = (path = disk.path) => [sha256Range(path, 0, p1.start), sha256Range(path, p1.start + window, size - p1.start - window)];
  return { path: disk.path, p1, size, hostY, outside };
}

describe('direct I/O on a window of a file', () => {
  it('repairs the filesystem in partition 1 of a raw disk without touching a byte outside it', async () => {
    const disk = diskWithFs('w', KINDS[3]!, 24, 24, 'dir-block');
    const { p1 } = disk;
    const outsideBefore = disk.outside();
    const viaMessages = copy(disk.path, t.path('w-msg.raw'));

    const runOn = async (path: string, direct: boolean) => {
      const dev = await FileDevice.open(path, { writable: true });
      try {
        const result = await e2fsck(new SliceDevice(dev, p1.start, p1.size), { mode: 'repair', direct });
        return { result, bytesRead: dev.bytesRead };
      } finally {
        await dev.close();
      }
    };
    const d = await runOn(disk.path, true);
    const m = await runOn(viaMessages, false);
    expect(d.bytesRead).toBeLessThanOrEqual(SUPERBLOCK_ONLY);
    expect(m.bytesRead).toBeGreaterThan(THROUGH_DEVICE);
    expect(streams(d.result)).toEqual(streams(m.result));
    expect(d.result.exitCode).toBe(disk.hostY!.status);
    expect(d.result.exitCode).toBe(1);
    expect(disk.outside()).toEqual(outsideBefore);
    expect(hostFsck(extract(disk.path, p1.start, p1.size, t.path('w-p1.img')), '-fn').status).toBe(0);
    expect(statSync(disk.path).size).toBe(disk.size);
  });

  it('keeps to a window smaller than the filesystem in it: same verdict as the message path, nothing beyond written', async () => {
    // A 24 MiB filesystem in a 16 MiB window: e2fsck's reads past the window get end of file.
    const window = 16 << 20;
    const disk = diskWithFs('s', KINDS[3]!, 24, 24, undefined, window);
    const start = disk.p1.start;
    const viaMessages = copy(disk.path, t.path('s-msg.raw'));
    const outsideBefore = disk.outside();
    const runOn = async (path: string, direct: boolean) => {
      const dev = await FileDevice.open(path, { writable: true });
      try {
        return await e2fsck(new SliceDevice(dev, start, window), { mode: 'repair', direct });
      } finally {
        await dev.close();
      }
    };
    const d = await runOn(disk.path, true);
    const m = await runOn(viaMessages, false);
    expect(streams(d)).toEqual(streams(m));
    expect(d.stdout + d.stderr).toMatch(/physical size of the device/);
    expect(disk.outside()).toEqual(outsideBefore);
    expect(disk.outside(viaMessages)).toEqual(outsideBefore);
  });

  it('grows the filesystem of partition 1 with resize2fs; partition 2 and the free space unchanged', async () => {
    const disk = diskWithFs('g', KINDS[3]!, 12, 32);
    const { p1 } = disk;
    const outsideBefore = disk.outside();
    const dev = await FileDevice.open(disk.path, { writable: true });
    let r;
    try {
      r = await resize2fs(new SliceDevice(dev, p1.start, p1.size));
      expect(dev.bytesRead).toBeLessThanOrEqual(4 * SUPERBLOCK_ONLY); // the superblock checks before and after; the tool's I/O went direct
    } finally {
      await dev.close();
    }
    expect(r.exitCode).toBe(0);
    expect([r.oldSize, r.newSize]).toEqual([12 << 20, 32 << 20]);
    expect(disk.outside()).toEqual(outsideBefore);
    const p1Img = extract(disk.path, p1.start, p1.size, t.path('g-p1.img'));
    expect(hostFsck(p1Img, '-fn').status).toBe(0);
    expect(debugfsCat(p1Img, '/deep/er/est/big.bin')).toEqual(readFileSync(`${tree}/deep/er/est/big.bin`));
  });

  it("takes a raw image's file from the caller (rawHostFile), and falls back to messages for a window the file does not hold", async () => {
    const img = mkfs(t.path('h.img'), KINDS[3]!, 16, tree);
    damage(img, 'inode-table');
    const hostN = hostFsck(copy(img, t.path('h-host.img')), '-fn');
    const opened = await openImage(img, { format: 'raw' });
    try {
      const file = opened.file as FileDevice;
      const opening = file.bytesRead; // openImage's own look at the head
      const good = await e2fsck(opened.image, { mode: 'check', hostFile: rawHostFile(opened.driver.name, file, 0) });
      expect(file.bytesRead - opening).toBeLessThanOrEqual(SUPERBLOCK_ONLY);
      const seen = file.bytesRead;
      const beyond = await e2fsck(opened.image, { mode: 'check', hostFile: { file, offset: 4096 } });
      expect(file.bytesRead - seen).toBeGreaterThan(THROUGH_DEVICE);
      expect(streams(beyond)).toEqual(streams(good));
      expect(good.exitCode).toBe(hostN.status);
      expect(rawHostFile('qcow2', file, 0)).toBeUndefined();
    } finally {
      await opened.image.close();
    }
  });

  it('never goes direct through a path replaced since the device was opened: the open file is checked', async () => {
    const img = mkfs(t.path('r.img'), KINDS[3]!, 16, tree);
    damage(img, 'inode-table');
    const hostN = hostFsck(copy(img, t.path('r-host.img')), '-fn');
    const dev = await FileDevice.open(img);
    try {
      // A clean filesystem of the same size now sits at the path; the device still holds the damaged one.
      mkfs(t.path('r-clean.img'), KINDS[3]!, 16, tree);
      renameSync(t.path('r-clean.img'), img);
      const r = await e2fsck(dev, { mode: 'check' });
      expect(dev.bytesRead).toBeGreaterThan(THROUGH_DEVICE);
      expect(r.exitCode).toBe(hostN.status);
      expect(r.exitCode).not.toBe(0);
    } finally {
      await dev.close();
    }
  });

  it('imgtool fsck -y --partition 1 on a raw disk goes direct, inside the partition only', () => {
    const disk = diskWithFs('c', KINDS[2]!, 16, 16, 'block-bitmap');
    const { p1 } = disk;
    const outsideBefore = disk.outside();
    const env = { ...process.env, IMGTOOL_WASI_TRACE: '1' };
    const before = sha256File(disk.path);
    const n = imgtool(['fsck', '-n', '--partition', '1', disk.path], { env });
    expect(n.stderr).toContain(`[e2fsck] direct I/O on ${disk.path} [${p1.start}, ${p1.start + p1.size}) read-only\n`);
    expect(n.status).toBe(4);
    expect(sha256File(disk.path)).toBe(before);
    const y = imgtool(['fsck', '-y', '--partition', '1', disk.path], { env });
    expect(y.stderr).toContain(`[e2fsck] direct I/O on ${disk.path} [${p1.start}, ${p1.start + p1.size})\n`);
    expect(y.status).toBe(disk.hostY!.status);
    expect(disk.outside()).toEqual(outsideBefore);
    expect(hostFsck(extract(disk.path, p1.start, p1.size, t.path('c-p1.img')), '-fn').status).toBe(0);
  });
});

describe("direct I/O through wrap's overlay (a raw input's used blocks, a scratch store)", () => {
  /** Stage `img` as wrap does: an overlay over its used blocks, zeros to `partMiB`, a scratch file as the store; `host` lets tools go direct. */
  async function staged(img: string, partMiB: number, host: boolean) {
    const opened = await openImage(img, { format: 'raw' });
    const sb = (await readExtSuperblock(opened.image))!;
    const storePath = t.path(`store-${host ? 'direct' : 'msg'}-${Math.random().toString(16).slice(2)}.tmp`);
    const store = await FileDevice.open(storePath, { create: true });
    const file = opened.file as FileDevice;
    const fs = await stageFs(opened.image, sb, partMiB << 20, store, noProgress, host ? rawHostFile(opened.driver.name, file, 0) : undefined);
    const all = async () => {
      const b = new Uint8Array(fs.dev.size);
      await fs.dev.read(b, 0);
      return b;
    };
    return { dev: fs.dev, file, all, close: async () => (await fs.dev.close(), await opened.image.close()) };
  }

  it('e2fsck -fy, resize2fs and e2fsck -fn give what the message path gives; the input is only read, its free blocks read as zero', async () => {
    const img = mkfs(t.path('ov.img'), KINDS[3]!, 16, tree);
    damage(img, 'dir-block');
    const hostY = hostFsck(copy(img, t.path('ov-host.img')), '-fy');
    // Junk in a free block near the end: both paths must read it as zero (the overlay's base is the used blocks only).
    const bs = blockSize(img);
    const free = Math.floor((15 << 20) / bs);
    expect(execFileSync('debugfs', ['-R', `testb ${free}`, img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toContain('not in use');
    overwrite(img, free * bs, Buffer.alloc(bs, 0xa5));
    const before = sha256File(img);
    const d = await staged(img, 24, true);
    const m = await staged(img, 24, false);
    try {
      const opening = d.file.bytesRead;
      const yD = await e2fsck(d.dev, { mode: 'repair' });
      const yM = await e2fsck(m.dev, { mode: 'repair' });
      expect(d.file.bytesRead - opening).toBeLessThanOrEqual(SUPERBLOCK_ONLY);
      expect(m.file.bytesRead).toBeGreaterThan(THROUGH_DEVICE);
      expect(streams(yD)).toEqual(streams(yM));
      expect(yD.exitCode).toBe(hostY.status);
      expect(yD.exitCode).toBe(1);
      // The same bytes, but for the primary superblock's times.
      const [a, b] = [await d.all(), await m.all()];
      expect(a.subarray(free * bs, (free + 1) * bs).every((x) => x === 0)).toBe(true);
      a.fill(0, 1024, 2048);
      b.fill(0, 1024, 2048);
      expect(Buffer.compare(a, b)).toBe(0);

      const rD = await resize2fs(d.dev);
      const rM = await resize2fs(m.dev);
      expect([rD.exitCode, rD.oldSize, rD.newSize]).toEqual([0, 16 << 20, 24 << 20]);
      expect([rM.exitCode, rM.newSize]).toEqual([0, 24 << 20]);
      const nD = await e2fsck(d.dev, { mode: 'check' });
      const nM = await e2fsck(m.dev, { mode: 'check' });
      expect(streams(nD)).toEqual(streams(nM));
      expect(nD.exitCode).toBe(0);

      // The overlay as the main thread reads it (what wrap copies) is a clean, grown filesystem with the tree's files.
      const out = t.path('ov-out.img');
      writeFileSync(out, await d.all());
      expect(hostFsck(out, '-fn').status).toBe(0);
      expect(debugfsCat(out, '/deep/er/est/big.bin')).toEqual(readFileSync(`${tree}/deep/er/est/big.bin`));
      expect(d.file.bytesRead - opening).toBeGreaterThan(0); // that last read went through the devices
    } finally {
      await d.close();
      await m.close();
    }
    expect(sha256File(img)).toBe(before);
  });

  it('wrap goes direct through its overlays (IMGTOOL_WASI_TRACE says so), and the disk it writes checks clean', () => {
    const img = mkfs(t.path('wrap-in.img'), KINDS[1]!, 16, tree);
    const out = t.path('wrap-out.qcow2');
    const r = imgtool(['wrap', img, '--no-guest', '--size', '40M', '-o', out], { env: { ...process.env, IMGTOOL_WASI_TRACE: '1' } });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain(`[e2fsck] direct I/O on ${img} through the overlay`);
    expect(r.stderr).toContain(`[resize2fs] direct I/O on ${img} through the overlay`);
    expect(qemuCheck(out, 'qcow2').status).toBe(0);
    const raw = t.path('wrap-out.raw');
    must('qemu-img', ['convert', '-O', 'raw', out, raw]);
    const p1 = (JSON.parse(must('sfdisk', ['--json', raw])) as { partitiontable: { partitions: Array<{ start: number; size: number }> } }).partitiontable.partitions[0]!;
    const fsOut = extract(raw, p1.start * 512, p1.size * 512, t.path('wrap-p1.img'));
    expect(hostFsck(fsOut, '-fn').status).toBe(0);
    expect(debugfsCat(fsOut, '/deep/er/est/big.bin')).toEqual(readFileSync(`${tree}/deep/er/est/big.bin`));
  });
});
