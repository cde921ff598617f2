/**
 * Fixtures for the e2fsprogs tests: small ext2/3/4 images made by the host's
 * mke2fs -d, corrupted at places the host's own debugfs/dumpe2fs name, and
 * the host's e2fsck as the judge.
 */
import { copyFileSync, existsSync, mkdirSync, openSync, writeSync, closeSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync, ftruncateSync, readSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { gunzipSync } from 'node:zlib';
import { must, peer, run } from './helpers/peers.js';
import { FileDevice } from '../src/core/file.js';

/** Deterministic bytes. */
export function bytesOf(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** A small tree: nested directories, ~80 files from 0 bytes to 300 KiB, a symlink. */
export function makeTree(dir: string): string {
  mkdirSync(dir, { recursive: true });
  for (let d = 0; d < 4; d++) {
    const sub = join(dir, `dir${d}`);
    mkdirSync(sub, { recursive: true });
    for (let f = 0; f < 20; f++) writeFileSync(join(sub, `file${f}.bin`), bytesOf((f * 7919 * (d + 1)) % 20000, d * 100 + f + 1));
  }
  mkdirSync(join(dir, 'deep', 'er', 'est'), { recursive: true });
  writeFileSync(join(dir, 'deep', 'er', 'est', 'big.bin'), bytesOf(300 * 1024, 4242));
  writeFileSync(join(dir, 'hello.txt'), 'hello, world\n');
  symlinkSync('hello.txt', join(dir, 'link'));
  return dir;
}

export interface FsKind {
  name: string;
  type: 'ext2' | 'ext3' | 'ext4';
  features?: string;
}

/** The four kinds the acceptance tests cover. */
export const KINDS: FsKind[] = [
  { name: 'ext2', type: 'ext2' },
  { name: 'ext3', type: 'ext3' },
  { name: 'ext4 (uninit_bg, 32-bit)', type: 'ext4', features: '^metadata_csum,^64bit,uninit_bg' },
  { name: 'ext4 (metadata_csum, 64bit)', type: 'ext4', features: 'metadata_csum,64bit' },
];

/** mke2fs -d `tree` into a new file of `sizeMiB` (the file may be larger: `fileMiB`). */
export function mkfs(img: string, kind: FsKind, sizeMiB: number, tree?: string, opts: { fileMiB?: number; label?: string; blockSize?: number } = {}): string {
  const fd = openSync(img, 'w');
  ftruncateSync(fd, (opts.fileMiB ?? sizeMiB) << 20);
  closeSync(fd);
  const args = ['-q', '-F', '-t', kind.type];
  if (kind.features) args.push('-O', kind.features);
  if (opts.label) args.push('-L', opts.label);
  if (opts.blockSize) args.push('-b', String(opts.blockSize));
  if (tree) args.push('-d', tree);
  args.push(img, `${sizeMiB}M`);
  must('mke2fs', args);
  return img;
}

export function blockSize(img: string): number {
  const out = must('dumpe2fs', ['-h', img]);
  return Number(/^Block size:\s+(\d+)/m.exec(out)![1]);
}

/** Write `data` (or bytes) over `img` at `offset`. */
export function overwrite(img: string, offset: number, data: Buffer | number[]): void {
  if (Array.isArray(data)) data = Buffer.from(data);
  const fd = openSync(img, 'r+');
  writeSync(fd, data, 0, data.length, offset);
  closeSync(fd);
}

export type Damage = 'inode-table' | 'block-bitmap' | 'dir-block';
export const DAMAGES: Damage[] = ['inode-table', 'block-bitmap', 'dir-block'];

/**
 * Damage a filesystem image where the host's debugfs/dumpe2fs say the
 * structure is:
 *  - inode-table: the on-disk inode of /dir1/file3.bin gets 0xff bytes
 *  - block-bitmap: group 0's block bitmap is zeroed
 *  - dir-block: the first block of /dir2 gets garbage
 */
export function damage(img: string, what: Damage): void {
  const bs = blockSize(img);
  if (what === 'inode-table') {
    const out = must('debugfs', ['-R', 'imap /dir1/file3.bin', img]);
    const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(out)!;
    overwrite(img, Number(m[1]) * bs + parseInt(m[2]!, 16), Buffer.alloc(128, 0xff));
  } else if (what === 'block-bitmap') {
    const out = must('dumpe2fs', [img]);
    const m = /Block bitmap at (\d+)/.exec(out)!;
    overwrite(img, Number(m[1]) * bs, Buffer.alloc(bs));
  } else {
    const out = must('debugfs', ['-R', 'blocks /dir2', img]);
    const first = Number(out.trim().split(/\s+/)[0]);
    if (!first) throw new Error(`debugfs gave no blocks for /dir2: ${out}`);
    overwrite(img, first * bs, bytesOf(bs, 77));
  }
}

export interface HostFsck {
  status: number;
  output: string;
  stdout: string;
  stderr: string;
}

/** The host's e2fsck (flags like -fn, -fy) on a file. */
export function hostFsck(img: string, flags: string): HostFsck {
  const r = run('e2fsck', [flags, img]);
  return { status: r.status, output: r.stdout + r.stderr, stdout: r.stdout, stderr: r.stderr };
}

/** Our e2fsck's streams and the host's are the same once the device names are replaced. */
export function sameMessages(ours: { stdout: string; stderr: string }, ourName: string, host: HostFsck, hostName: string): { stdout: [string, string]; stderr: [string, string] } {
  return {
    stdout: [normalize(ours.stdout, ourName), normalize(host.stdout, hostName)],
    stderr: [normalize(ours.stderr, ourName), normalize(host.stderr, hostName)],
  };
}

/** e2fsck output with the device name replaced, for comparing ours (/dev/NAME) with the host's (a path). */
export function normalize(output: string, name: string): string {
  return output.split(name).join('DEVICE').trim();
}

export function copy(src: string, dst: string): string {
  copyFileSync(src, dst);
  return dst;
}

export function sha256Range(path: string, offset: number, length: number): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  const buf = Buffer.alloc(1 << 20);
  let pos = offset;
  const end = offset + length;
  while (pos < end) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, end - pos), pos);
    if (n <= 0) break;
    h.update(buf.subarray(0, n));
    pos += n;
  }
  closeSync(fd);
  return h.digest('hex');
}

/** Copy [offset, offset + length) of `src` into a new file `dst` (a partition, for the host tools). */
export function extract(src: string, offset: number, length: number, dst: string): string {
  const fdIn = openSync(src, 'r');
  const fdOut = openSync(dst, 'w');
  const buf = Buffer.alloc(1 << 20);
  for (let pos = 0; pos < length; ) {
    const n = readSync(fdIn, buf, 0, Math.min(buf.length, length - pos), offset + pos);
    if (n <= 0) throw new Error(`short read at ${offset + pos}`);
    writeSync(fdOut, buf, 0, n, pos);
    pos += n;
  }
  closeSync(fdIn);
  closeSync(fdOut);
  return dst;
}

/** Place file `fsImg` at byte `offset` of `disk`. */
export function implant(fsImg: string, disk: string, offset: number): void {
  overwrite(disk, offset, readFileSync(fsImg));
}

export interface MbrDisk {
  path: string;
  /** Byte ranges of the partitions. */
  parts: Array<{ start: number; size: number }>;
}

/**
 * A raw MBR disk made by sfdisk: partition 1 = `p1MiB` at 1 MiB, partition 2
 * = 8 MiB of patterned bytes after it, then 3 MiB of free, patterned space.
 */
export function mbrDisk(path: string, p1MiB: number): MbrDisk {
  const total = 1 + p1MiB + 8 + 3;
  const fd = openSync(path, 'w');
  ftruncateSync(fd, total << 20);
  // Pattern everything after the table so "untouched" is a strong claim.
  const pat = bytesOf(1 << 20, 9);
  for (let m = 1; m < total; m++) writeSync(fd, pat, 0, pat.length, m << 20);
  closeSync(fd);
  must('sfdisk', ['--no-reread', '--no-tell-kernel', path], { input: `label: dos\nstart=2048, size=${p1MiB * 2048}, type=83\nstart=${(1 + p1MiB) * 2048}, size=${8 * 2048}, type=83\n` });
  return {
    path,
    parts: [
      { start: 1 << 20, size: p1MiB << 20 },
      { start: (1 + p1MiB) << 20, size: 8 << 20 },
    ],
  };
}

/** debugfs -R 'cat PATH' on an image file: the file's bytes. */
export function debugfsCat(img: string, path: string): Buffer {
  return execFileSync(peer('debugfs'), ['-R', `cat ${path}`, img], { maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'ignore'] });
}

/** Where `npm run setup` (wasm/build.sh) leaves e2fsprogs' source: the .orig tarball holds its test images. */
export const E2FSPROGS_SOURCE = new URL('../wasm/src/e2fsprogs_1.47.0.orig.tar.gz', import.meta.url).pathname;
const IMAGES_CACHE = new URL('./.cache/e2fsprogs-1.47.0-f-images/', import.meta.url).pathname;

export interface E2fsprogsImage {
  /** The test's name, e.g. f_dup_de. */
  name: string;
  /** Its image.gz (in test/.cache, unpacked from the source tarball; never written to). */
  gz: string;
}

/**
 * e2fsprogs 1.47.0's own e2fsck test images (tests/f_*\/image.gz, 185 of
 * them), unpacked once from the source tarball wasm/build.sh downloaded. A
 * missing tarball fails the test (it is a peer's data, as the peers are):
 * `npm run setup` fetches it (`bash wasm/build.sh --force` when the build is
 * already up to date).
 */
export function e2fsprogsTestImages(): E2fsprogsImage[] {
  if (!existsSync(E2FSPROGS_SOURCE)) {
    throw new Error(`e2fsprogs' source ${E2FSPROGS_SOURCE} is missing: run 'npm run setup' (or 'bash wasm/build.sh --force' if the build is up to date)`);
  }
  const root = join(IMAGES_CACHE, 'e2fsprogs-1.47.0', 'tests');
  const stamp = join(IMAGES_CACHE, '.unpacked');
  if (!existsSync(stamp)) {
    rmSync(IMAGES_CACHE, { recursive: true, force: true });
    mkdirSync(IMAGES_CACHE, { recursive: true });
    execFileSync('tar', ['-xzf', E2FSPROGS_SOURCE, '-C', IMAGES_CACHE, '--wildcards', 'e2fsprogs-1.47.0/tests/f_*/image.gz'], { stdio: 'pipe' });
    writeFileSync(stamp, '');
  }
  return readdirSync(root)
    .filter((n) => n.startsWith('f_') && existsSync(join(root, n, 'image.gz')))
    .sort()
    .map((name) => ({ name, gz: join(root, name, 'image.gz') }));
}

/** Decompress an e2fsprogs test image into a new file `dst`. */
export function gunzipTo(gz: string, dst: string): string {
  writeFileSync(dst, gunzipSync(readFileSync(gz)));
  return dst;
}

export interface HostLoopingFsck {
  /** e2fsck's exit status, or 'loop' when it restarted `restarts` times (it was killed then). */
  status: number | 'loop';
  output: string;
}

/**
 * The host's e2fsck (flags like -fn) on a file, stopped once it has
 * restarted from the beginning `maxRestarts` times: on some images it
 * restarts forever (its legitimate runs restart at most a few times).
 */
export function hostFsckUntilLoop(img: string, flags: string, maxRestarts = 20): Promise<HostLoopingFsck> {
  return new Promise((resolve, reject) => {
    const child = spawn(peer('e2fsck'), [flags, img], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let restarts = 0;
    let looped = false;
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    const take = (d: Buffer) => {
      const s = d.toString('latin1');
      if (output.length < 1 << 20) output += s;
      restarts += s.split('Restarting e2fsck from the beginning').length - 1;
      if (restarts >= maxRestarts && !looped) {
        looped = true;
        child.kill('SIGKILL');
      }
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      if (looped) resolve({ status: 'loop', output });
      else if (signal) reject(new Error(`host e2fsck ${flags} ${img} killed by ${signal} (timeout)`));
      else resolve({ status: status ?? -1, output });
    });
  });
}

/** Run `fn` on a FileDevice of `path`, closed afterwards. */
export async function onFile<T>(path: string, writable: boolean, fn: (dev: FileDevice) => Promise<T>): Promise<T> {
  const dev = await FileDevice.open(path, { writable });
  try {
    return await fn(dev);
  } finally {
    await dev.close();
  }
}
