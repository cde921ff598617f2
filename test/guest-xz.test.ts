/**
 * Compressed initramfs members read in process (xz through xz-decompress,
 * zstd through fzstd) and through the host's tools, against the host's xz and
 * zstd (the peers that wrote the data): presets, check types, block sizes and
 * lc/lp/pb settings, incompressible data, several blocks and streams; corrupt
 * or truncated data fails with an ImageError, never a hang or another error;
 * the decompressed size is capped.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ImageError } from '../src/core/errors.js';
import { xzDecode, zstdDecode } from '../src/guest/decode.js';
import { listInitrd } from '../src/guest/initrd.js';
import { all, failure } from './helpers/async.js';
import { pattern } from './helpers/devices.js';
import { peer } from './helpers/peers.js';

const xz = (data: Uint8Array, args: string[]): Buffer => execFileSync(peer('xz'), ['-c', ...args], { input: data, maxBuffer: 256 << 20 });
const zstd = (data: Uint8Array, args: string[]): Buffer => execFileSync(peer('zstd'), ['-c', '-q', ...args], { input: data, maxBuffer: 256 << 20 });

const decodeXz = (data: Uint8Array) => all(xzDecode(data));

/** Text-like data with repeats at many distances, runs of zeros, and random stretches. */
function mixed(size: number): Uint8Array {
  const out = Buffer.alloc(size);
  let pos = 0;
  let i = 0;
  const rnd = pattern(size, 7);
  while (pos < size) {
    const kind = i++ % 5;
    let chunk: Uint8Array;
    if (kind === 0) chunk = Buffer.from(`line ${i % 97} of the initramfs /lib/modules/6.1.0/kernel/drivers/virtio/virtio_${i % 13}.ko\n`);
    else if (kind === 1) chunk = new Uint8Array(1 + ((i * 37) % 700));
    else if (kind === 2) chunk = rnd.subarray(pos % (size - 300), (pos % (size - 300)) + 1 + ((i * 13) % 300));
    else if (kind === 3) chunk = out.subarray(Math.max(0, pos - 1 - ((i * 7919) % 65536)), Math.max(0, pos - 1 - ((i * 7919) % 65536)) + ((i * 31) % 273));
    else chunk = Buffer.from('ABABABABABAB'.repeat(1 + (i % 9)));
    const n = Math.min(chunk.length, size - pos);
    out.set(chunk.subarray(0, n), pos);
    pos += n;
  }
  return out;
}

/** A newc archive of the host's busybox binary and a text file, written by busybox cpio. */
function busyboxCpio(): Buffer {
  return execFileSync(peer('busybox'), ['sh', '-c', 'cd / && printf "bin/busybox\\netc/hostname\\n" | busybox cpio -o -H newc 2>/dev/null'], { maxBuffer: 64 << 20 });
}

/** Run `fn` with the host's decompressors on PATH or not. */
async function withPath<T>(hostTools: boolean, fn: () => Promise<T>): Promise<T> {
  const path = process.env.PATH;
  process.env.PATH = hostTools ? path : '/nonexistent';
  try {
    return await fn();
  } finally {
    process.env.PATH = path;
  }
}

describe('xz in process (xz-decompress)', () => {
  const data = mixed(600_000);
  const busybox = readFileSync(peer('busybox'));

  it('decodes what xz writes with every preset and the check types the kernel reads', async () => {
    for (const args of [['-0'], ['-1', '--check=none'], ['-6', '--check=crc32'], ['-9e', '--check=crc64'], ['-3', '--check=crc32']]) {
      expect(Buffer.compare(await decodeXz(xz(data, args)), data), args.join(' ')).toBe(0);
    }
  });

  it('decodes real binaries, incompressible data, long zero runs and an empty stream', async () => {
    expect(Buffer.compare(await decodeXz(xz(busybox, ['--check=crc32'])), busybox)).toBe(0);
    const random = pattern(300_000, 3);
    expect(Buffer.compare(await decodeXz(xz(random, [])), random)).toBe(0);
    const zeros = new Uint8Array(5 << 20);
    expect(Buffer.compare(await decodeXz(xz(zeros, [])), zeros)).toBe(0);
    expect((await decodeXz(xz(new Uint8Array(0), []))).length).toBe(0);
  });

  it('decodes unusual literal and position settings, several blocks and chunks, and concatenated streams', async () => {
    for (const f of ['--lzma2=preset=6,lc=0,lp=4,pb=0', '--lzma2=preset=2,lc=4,lp=0,pb=4', '--lzma2=preset=6,lc=1,lp=3,pb=1,dict=64KiB']) {
      expect(Buffer.compare(await decodeXz(xz(data, [f])), data), f).toBe(0);
    }
    expect(Buffer.compare(await decodeXz(xz(data, ['--block-size=200KiB'])), data)).toBe(0);
    const big = mixed(5 << 20);
    expect(Buffer.compare(await decodeXz(xz(big, ['-1'])), big)).toBe(0);
    const two = Buffer.concat([xz(data.subarray(0, 1000), []), Buffer.alloc(8), xz(data.subarray(1000, 5000), [])]);
    expect(Buffer.compare(await decodeXz(two), data.subarray(0, 5000))).toBe(0);
  });

  it('declines BCJ filters and SHA-256 checks (the kernel reads neither) with an unsupported error', async () => {
    for (const args of [['--x86', '--lzma2'], ['--check=sha256']]) {
      const e = await failure(decodeXz(xz(busybox.subarray(0, 100_000), args)));
      expect(e, args.join(' ')).toBeInstanceOf(ImageError);
      expect((e as ImageError).kind).toBe('unsupported');
      expect((e as ImageError).message).toMatch(/BCJ/);
    }
  });

  it('fails corrupt and truncated data with an ImageError (or decodes something), never another error or a hang', async () => {
    const enc = xz(data.subarray(0, 200_000), ['--check=crc32']);
    const rnd = pattern(4000, 11);
    for (let i = 0; i < 200; i++) {
      const bad = Buffer.from(enc);
      const at = 12 + ((rnd[i * 4]! | (rnd[i * 4 + 1]! << 8) | (rnd[i * 4 + 2]! << 16)) % (bad.length - 12));
      bad[at] ^= 1 + (rnd[i * 4 + 3]! % 255);
      const e = await failure(decodeXz(bad));
      if (e !== undefined && !(e instanceof ImageError)) throw new Error(`corrupting byte ${at} gave ${String(e)}`);
    }
    for (const n of [0, 5, 12, 13, 20, 40, enc.length - 40, enc.length - 12, enc.length - 1]) {
      const e = await failure(decodeXz(enc.subarray(0, n)));
      expect(e, `truncated to ${n}`).toBeInstanceOf(ImageError);
      expect((e as ImageError).message, `truncated to ${n}`).toMatch(/^xz: /);
    }
    // The decoder is still usable after all those failures (the package serialises its contexts).
    expect(Buffer.compare(await decodeXz(enc), data.subarray(0, 200_000))).toBe(0);
  });
});

describe('zstd in process (fzstd)', () => {
  it('decodes what zstd writes, several frames in a row, and fails truncated data with an ImageError', async () => {
    const data = mixed(3 << 20);
    for (const args of [['-1'], ['-19'], ['--no-check']]) {
      expect(Buffer.compare(await all(zstdDecode(zstd(data, args))), data), args.join(' ')).toBe(0);
    }
    const two = Buffer.concat([zstd(data.subarray(0, 1000), []), zstd(data.subarray(1000), [])]);
    expect(Buffer.compare(await all(zstdDecode(two)), data)).toBe(0);
    const enc = zstd(data, ['-3']);
    const e = await failure(all(zstdDecode(enc.subarray(0, enc.length >> 1))));
    expect(e).toBeInstanceOf(ImageError);
  });
});

describe('initrd inspection through the host tools and in process', () => {
  const cpio = busyboxCpio();

  it.each([true, false])('reads xz and zstd initramfs images (host tools on PATH: %s); lzma only with the host xz', async (hostTools) => {
    const images: Array<[string, Buffer]> = [
      ['xz', xz(cpio, ['-1', '--check=crc32'])],
      ['zstd', zstd(cpio, ['-3'])],
      ['lzma', xz(cpio, ['-1', '--format=lzma'])],
    ];
    for (const [name, img] of images) {
      const c = await withPath(hostTools, () => listInitrd(img, (n) => n === 'etc/hostname'));
      if (name === 'lzma' && !hostTools) {
        expect(c.problem).toMatch(/lzma-compressed, and 'xz' is not installed/);
        continue;
      }
      expect(c.problem, name).toBeUndefined();
      expect(c.segments, name).toEqual([name, 'cpio']);
      expect(c.files, name).toEqual(['bin/busybox', 'etc/hostname']);
      expect(Buffer.from(c.kept.get('etc/hostname')!.data).toString(), name).toBe(readFileSync('/etc/hostname', 'utf8'));
    }
  });

  it.each([true, false])('caps the decompressed size of a member (host tools on PATH: %s)', async (hostTools) => {
    // 64 MiB of zeros in a cpio entry: a few KiB compressed.
    const bomb = Buffer.concat([
      Buffer.from(`070701${'0'.repeat(8)}000081A4${'0'.repeat(32)}04000000${'0'.repeat(32)}00000002${'0'.repeat(8)}`, 'latin1'),
      Buffer.from('z\0'),
      new Uint8Array(64 << 20),
    ]);
    for (const [name, img] of [
      ['xz', xz(bomb, ['-1', '--check=crc32'])],
      ['zstd', zstd(bomb, ['-3'])],
    ] as const) {
      const c = await withPath(hostTools, () => listInitrd(img, undefined, 8 << 20));
      expect(c.problem, name).toBe(`${name} stream decompresses to more than ${8 << 20} bytes`);
    }
  });

  it('reports a corrupt xz member of an initramfs as a problem naming xz', async () => {
    const img = xz(cpio, ['-1', '--check=crc32']);
    const bad = Buffer.from(img);
    bad[img.length >> 1] ^= 0x55;
    for (const hostTools of [true, false]) {
      const c = await withPath(hostTools, () => listInitrd(bad));
      expect(c.problem, `host tools: ${hostTools}`).toMatch(/xz/);
      expect(c.appendable).toBe(false);
    }
  });
});
