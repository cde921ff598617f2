/**
 * The in-process .xz / .lzma decoder against the host's xz (the peer that
 * wrote the data): every preset, check type, block size and lc/lp/pb the
 * encoder offers, incompressible data (LZMA2 uncompressed chunks), multiple
 * chunks, blocks and streams; corrupt data fails with an ImageError, never a
 * hang or a crash.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ImageError } from '../src/core/errors.js';
import { decodeLzmaAlone, decodeXz } from '../src/guest/xz.js';
import { listInitrd } from '../src/guest/initrd.js';
import { pattern } from './helpers/devices.js';
import { peer } from './helpers/peers.js';

const xz = (data: Uint8Array, args: string[]): Buffer => execFileSync(peer('xz'), ['-c', ...args], { input: data, maxBuffer: 256 << 20 });

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

describe('xz decoder', () => {
  const data = mixed(600_000);
  /** More than one LZMA2 chunk (2 MiB of output at most each). */
  const big = mixed(5 << 20);
  const busybox = readFileSync(peer('busybox'));

  it('decodes what xz writes with every preset and check type', () => {
    for (const args of [['-0'], ['-1', '--check=none'], ['-6', '--check=crc32'], ['-9e', '--check=crc64'], ['-3', '--check=sha256']]) {
      const got = decodeXz(xz(data, args), 64 << 20);
      expect(Buffer.compare(got, data), args.join(' ')).toBe(0);
    }
  });

  it('decodes real binaries, incompressible data (uncompressed chunks) and long zero runs', () => {
    expect(Buffer.compare(decodeXz(xz(busybox, ['--check=crc32']), 64 << 20), busybox)).toBe(0);
    const random = pattern(300_000, 3);
    expect(Buffer.compare(decodeXz(xz(random, []), 64 << 20), random)).toBe(0);
    const zeros = new Uint8Array(5 << 20);
    expect(Buffer.compare(decodeXz(xz(zeros, []), 64 << 20), zeros)).toBe(0);
    expect(decodeXz(xz(new Uint8Array(0), []), 1024).length).toBe(0);
  });

  it('decodes unusual literal and position settings, several blocks, and concatenated streams', () => {
    for (const f of ['--lzma2=preset=6,lc=0,lp=4,pb=0', '--lzma2=preset=2,lc=4,lp=0,pb=4', '--lzma2=preset=6,lc=1,lp=3,pb=1,dict=64KiB']) {
      expect(Buffer.compare(decodeXz(xz(data, [f]), 64 << 20), data), f).toBe(0);
    }
    const blocks = xz(data, ['--block-size=200KiB']);
    expect(Buffer.compare(decodeXz(blocks, 64 << 20), data)).toBe(0);
    expect(Buffer.compare(decodeXz(xz(big, ['-1']), 64 << 20), big)).toBe(0);
    const two = Buffer.concat([xz(data.subarray(0, 1000), []), Buffer.alloc(8), xz(data.subarray(1000, 5000), [])]);
    expect(Buffer.compare(decodeXz(two, 64 << 20), data.subarray(0, 5000))).toBe(0);
  });

  it('decodes legacy .lzma files, with and without the end marker', () => {
    for (const args of [['--format=lzma'], ['--format=lzma', '--lzma1=preset=9,lc=4,lp=0,pb=0'], ['--format=lzma', '--lzma1=preset=1,lc=0,lp=4,pb=4'], ['--format=lzma', '-0']]) {
      const got = decodeLzmaAlone(xz(data, args), 64 << 20);
      expect(Buffer.compare(got, data), args.join(' ')).toBe(0);
    }
    // xz writes an unknown size and an end marker through a pipe; a known size without a marker is also valid.
    const enc = Buffer.from(xz(busybox, ['--format=lzma']));
    expect(enc.readUInt32LE(5)).toBe(0xffffffff);
    const withSize = Buffer.from(enc);
    withSize.writeUInt32LE(busybox.length, 5);
    withSize.writeUInt32LE(0, 9);
    expect(Buffer.compare(decodeLzmaAlone(withSize, 64 << 20), busybox)).toBe(0);
  });

  it('declines filters other than LZMA2 with an unsupported error', () => {
    const bcj = xz(busybox.subarray(0, 100_000), ['--x86', '--lzma2']);
    const e = (() => {
      try {
        decodeXz(bcj, 64 << 20);
      } catch (x) {
        return x as ImageError;
      }
    })();
    expect(e).toBeInstanceOf(ImageError);
    expect(e!.kind).toBe('unsupported');
    expect(e!.message).toMatch(/filter 0x4/);
  });

  it('stops at the output cap', () => {
    const e = (() => {
      try {
        decodeXz(xz(new Uint8Array(4 << 20), []), 1 << 20);
      } catch (x) {
        return x as ImageError;
      }
    })();
    expect(e).toBeInstanceOf(ImageError);
    expect(e!.message).toMatch(/more than 1048576 bytes/);
  });

  it('fails corrupt data with an ImageError (or decodes something), never another error or a hang', () => {
    const enc = xz(data.subarray(0, 200_000), ['--check=crc32']);
    const rnd = pattern(4000, 11);
    const t0 = Date.now();
    for (let i = 0; i < 300; i++) {
      const bad = Buffer.from(enc);
      const at = 12 + ((rnd[i * 4]! | (rnd[i * 4 + 1]! << 8) | (rnd[i * 4 + 2]! << 16)) % (bad.length - 12));
      bad[at] ^= 1 + (rnd[i * 4 + 3]! % 255);
      try {
        decodeXz(bad, 8 << 20);
      } catch (x) {
        if (!(x instanceof ImageError)) throw new Error(`corrupting byte ${at} gave ${String(x)}`);
      }
    }
    // Truncations at every kind of boundary.
    for (const n of [0, 5, 12, 13, 20, 40, enc.length - 40, enc.length - 12, enc.length - 1]) {
      try {
        decodeXz(enc.subarray(0, n), 8 << 20);
      } catch (x) {
        expect(x, `truncated to ${n}`).toBeInstanceOf(ImageError);
      }
    }
    expect(Date.now() - t0).toBeLessThan(60_000);
  });

  it('lets initrd inspection read xz and lzma initramfs images, with the host xz or without it', () => {
    const cpio = execFileSync(peer('busybox'), ['sh', '-c', 'cd / && echo bin/busybox | busybox cpio -o -H newc 2>/dev/null'], { maxBuffer: 64 << 20 });
    const images = [xz(cpio, ['-1', '--check=crc32']), xz(cpio, ['-1', '--format=lzma'])];
    const path = process.env.PATH;
    try {
      for (const withTool of [true, false]) {
        // Without the host tool on PATH, the in-process decoder does the work.
        process.env.PATH = withTool ? path : '/nonexistent';
        for (const img of images) {
          const c = listInitrd(img);
          expect(c.problem, `host xz: ${withTool}`).toBeUndefined();
          expect(c.files).toEqual(['bin/busybox']);
        }
      }
    } finally {
      process.env.PATH = path;
    }
  });
});
