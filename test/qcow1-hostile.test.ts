/**
 * Hostile qcow (v1) files (qemu iotests 092 style): a small valid image made
 * by qemu-img/qemu-io with one field mutated at a time must end in an
 * ImageError naming that field, quickly and without large allocations;
 * random mutations end in success or an ImageError.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { ImageError } from '../src/core/errors.js';
import { MemoryDevice } from '../src/core/memory.js';
import { qcow } from '../src/formats/qcow/index.js';
import { exercise as exerciseWith, expectFieldError as expectFieldErrorWith, writeAndVerify as writeAndVerifyWith } from './helpers/hostile.js';
import type { OpenOptions } from '../src/formats/types.js';
import { must, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-qcow1-hostile-');
afterAll(() => t.cleanup());
const MiB = 1 << 20;

/**
 * 4 MiB disk, 4 KiB clusters, 512-entry L2 tables. L1 (2 entries) at 48.
 * Data at 0 (8 KiB), 3 MiB (4 KiB) and a compressed cluster at 1 MiB.
 */
let base: Uint8Array;
let l2a: number; // offset of the first L2 table
let l2b: number; // offset of the second
let compressedEntry: bigint;

const be64 = (b: Uint8Array, off: number) => new DataView(b.buffer, b.byteOffset).getBigUint64(off);

beforeAll(() => {
  const p = t.path('h.qcow');
  must('qemu-img', ['create', '-q', '-f', 'qcow', p, '4M']);
  must('qemu-io', ['-f', 'qcow', '-c', 'write -P 0xab 0 8k', '-c', 'write -P 0xcd 3M 4k', '-c', 'write -c -P 0x61 1M 4k', p]);
  base = new Uint8Array(readFileSync(p));
  l2a = Number(be64(base, 48));
  l2b = Number(be64(base, 56));
  compressedEntry = be64(base, l2a + 8 * 256);
});

function put(b: Uint8Array, off: number, v: bigint | number, width: 1 | 4 | 8): Uint8Array {
  const c = b.slice();
  const d = new DataView(c.buffer);
  if (width === 1) d.setUint8(off, Number(v));
  else if (width === 4) d.setUint32(off, Number(v));
  else d.setBigUint64(off, BigInt(v));
  return c;
}

// Driver-bound forms of the shared hostile-input checks.
const exercise = (bytes: Uint8Array, opts: OpenOptions = {}) => exerciseWith(qcow, bytes, opts);
const writeAndVerify = (bytes: Uint8Array, seed: number) => writeAndVerifyWith(qcow, bytes, seed);
const expectFieldError = async (bytes: Uint8Array, field: string, kind?: string) => {
  const e = await expectFieldErrorWith(qcow, bytes, field, kind);
  expect(e.context.format).toBe('qcow');
  return e;
};

describe('hostile qcow headers', () => {
  it('opens and reads the unmutated base, including its compressed cluster', async () => {
    expect(compressedEntry >> 63n).toBe(1n);
    await exercise(base);
    const img = await qcow.open(MemoryDevice.from(base, { readOnly: true }), {});
    const buf = new Uint8Array(4096);
    await img.read(buf, MiB);
    expect(buf.every((x) => x === 0x61)).toBe(true);
    await img.close();
  });

  const cases: Array<[string, (b: Uint8Array) => Uint8Array, string, string?]> = [
    ['a wrong magic', (b) => put(b, 0, 0x514649fa, 4), 'magic', 'invalid-format'],
    ['version 2 (qcow2)', (b) => put(b, 4, 2, 4), 'version', 'invalid-format'],
    ['cluster_bits 8', (b) => put(b, 32, 8, 1), 'cluster_bits', 'invalid-format'],
    ['cluster_bits 17', (b) => put(b, 32, 17, 1), 'cluster_bits', 'invalid-format'],
    ['cluster_bits 255', (b) => put(b, 32, 255, 1), 'cluster_bits', 'invalid-format'],
    ['l2_bits 5', (b) => put(b, 33, 5, 1), 'l2_bits', 'invalid-format'],
    ['l2_bits 14', (b) => put(b, 33, 14, 1), 'l2_bits', 'invalid-format'],
    ['size 0', (b) => put(b, 24, 0n, 8), 'size', 'invalid-format'],
    ['size 1', (b) => put(b, 24, 1n, 8), 'size', 'invalid-format'],
    ['a size that overflows with the L1 size', (b) => put(b, 24, 0xffffffffffffffffn, 8), 'size', 'invalid-format'],
    ['a size whose L1 table cannot fit in the file', (b) => put(b, 24, 1n << 60n, 8), 'size', 'corrupt'],
    ['a 2^55-byte size with the largest clusters and tables', (b) => put(put(put(b, 24, 1n << 55n, 8), 32, 16, 1), 33, 13, 1), 'size', 'corrupt'],
    ['an L1 table past the end of the file', (b) => put(b, 40, 1n << 62n, 8), 'l1_table_offset', 'corrupt'],
    ['an L1 table over the header', (b) => put(b, 40, 0n, 8), 'l1_table_offset', 'corrupt'],
    ['an L1 table ending past the file', (b) => put(b, 40, BigInt(b.length - 8), 8), 'l1_table_offset', 'corrupt'],
    ['AES encryption', (b) => put(b, 36, 1, 4), 'crypt_method', 'unsupported'],
    ['an unknown encryption method', (b) => put(b, 36, 2, 4), 'crypt_method', 'invalid-format'],
    ['a backing file name past the end of the file', (b) => put(put(b, 8, 1n << 40n, 8), 16, 10, 4), 'backing_file_offset', 'corrupt'],
    ['a backing file name longer than 1023 bytes', (b) => put(put(b, 8, 48n, 8), 16, 5000, 4), 'backing_file_size', 'invalid-format'],
  ];

  for (const [what, mutate, field, kind] of cases) {
    it(`rejects ${what} (${field})`, async () => {
      await expectFieldError(mutate(base), field, kind);
    });
  }

  it('refuses an L1 table above 32 Mi entries in a large sparse file without loading it', async () => {
    const dev = new MemoryDevice(300 * MiB); // sparse: only written chunks cost memory
    dev.writeSync(put(base.slice(0, 48), 24, ((1n << 25n) + 1n) << 21n, 8), 0);
    const before = process.memoryUsage().arrayBuffers;
    const err = await qcow.open(dev, {}).catch((e: unknown) => e);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * MiB);
    expect(err).toMatchObject({ kind: 'unsupported', context: { field: 'size' } });
  });

  it('rejects a file too short for the header', async () => {
    await expectFieldError(base.slice(0, 20), 'header', 'invalid-format');
  });

  it('refuses a backing file without an opener, naming it and --backing', async () => {
    const b = new Uint8Array(base.length + 16);
    b.set(base);
    b.set(Buffer.from('base.img'), base.length);
    const m = put(put(b, 8, BigInt(base.length), 8), 16, 8, 4);
    const e = await exercise(m).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ImageError);
    expect(e).toMatchObject({ kind: 'unsupported', context: { field: 'backing_file', value: 'base.img' } });
    expect((e as ImageError).message).toMatch(/base\.img.*--backing/);
  });
});

describe('hostile qcow tables', () => {
  it('rejects an L1 entry pointing past the end of the file', async () => {
    await expectFieldError(put(base, 48, 1n << 40n, 8), 'l1_table[0]', 'corrupt');
    await expectFieldError(put(base, 56, BigInt(base.length - 100), 8), 'l1_table[1]', 'corrupt');
  });

  it('rejects an L1 entry pointing into the header or the L1 table', async () => {
    await expectFieldError(put(base, 48, 8n, 8), 'l1_table[0]', 'corrupt');
  });

  it('rejects L2 entries pointing past the end of the file', async () => {
    await expectFieldError(put(base, l2a + 8, 1n << 45n, 8), 'l2_table[0][1]', 'corrupt');
    await expectFieldError(put(base, l2b + 8 * 256, BigInt(base.length), 8), 'l2_table[1][256]', 'corrupt');
    await expectFieldError(put(base, l2a, 0x7fffffffffffff00n, 8), 'l2_table[0][0]', 'corrupt');
  });

  it('rejects an unaligned cluster offset', async () => {
    await expectFieldError(put(base, l2a, 0x2001n, 8), 'l2_table[0][0]', 'corrupt');
  });

  it('rejects compressed data overlapping the header or the L1 table', async () => {
    const sizeShift = 63n - 12n;
    await expectFieldError(put(base, l2a + 8 * 256, (1n << 63n) | (100n << sizeShift) | 4n, 8), 'l2_table[0][256]', 'corrupt');
    await expectFieldError(put(base, l2a + 8 * 256, (1n << 63n) | (8n << sizeShift) | 52n, 8), 'l2_table[0][256]', 'corrupt');
  });

  it('rejects compressed entries past the end of the file or of length zero', async () => {
    const sizeShift = 63n - 12n;
    const compressed = (off: bigint, len: bigint) => (1n << 63n) | (len << sizeShift) | off;
    await expectFieldError(put(base, l2a + 8 * 256, compressed(BigInt(base.length - 10), 100n), 8), 'l2_table[0][256]', 'corrupt');
    await expectFieldError(put(base, l2a + 8 * 256, compressed(8192n, 0n), 8), 'l2_table[0][256]', 'corrupt');
  });

  it('rejects compressed data that does not inflate to one cluster, on read', async () => {
    const sizeShift = 63n - 12n;
    // Point the compressed entry at the 0xab data cluster: not a deflate stream of 4096 bytes.
    const m = put(base, l2a + 8 * 256, (1n << 63n) | (200n << sizeShift) | 8192n, 8);
    const img = await qcow.open(MemoryDevice.from(m, { readOnly: true }), {});
    const err = await img.read(new Uint8Array(4096), MiB).catch((e: unknown) => e);
    await img.close();
    expect(err).toBeInstanceOf(ImageError);
    expect((err as ImageError).context.field).toBe('l2_table[0][256]');
    expect((err as ImageError).kind).toBe('corrupt');
  });
});

describe('overlapping structures in qcow files', () => {
  // qemu reads such images without complaint (qcow has no reference counts);
  // writing into them would corrupt the structure a cluster overlaps.
  // [what, mutation, field named, still readable]
  const overlapping: Array<[string, () => Uint8Array, string, boolean]> = [
    ['a cluster placed over an L2 table', () => put(base, l2b + 8 * 256, BigInt(l2a), 8), 'l2_table[1][256]', true],
    ['two guest clusters sharing one host cluster', () => put(base, l2b + 8 * 256, be64(base, l2a), 8), 'l2_table[1][256]', true],
    ['an L2 table placed over a data cluster', () => put(base, 56, be64(base, l2a), 8), 'l1_table[1]', false],
    [
      'compressed data inside a data cluster',
      () => put(base, l2a + 8 * 256, (1n << 63n) | (50n << 51n) | (be64(base, l2a) + 100n), 8),
      'l2_table[0][256]',
      false,
    ],
  ];
  for (const [what, make, field, readable] of overlapping) {
    it(`refuses a writable open of ${what}, naming ${field}`, async () => {
      const bytes = make();
      const err = await qcow.open(MemoryDevice.from(bytes, { growable: true }), { writable: true }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ImageError);
      expect((err as ImageError).context.field).toBe(field);
      expect((err as ImageError).kind).toBe('corrupt');
      expect((err as ImageError).message).toContain('shares');
      // Reading such an image is harmless, as in qemu (when its contents make sense at all).
      if (readable) await exercise(bytes);
    });
  }
});

describe('random mutations of qcow files', () => {
  it('end in success or an ImageError, quickly, and writes into those that open read back (seeded)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            where: fc.oneof(
              fc.integer({ min: 0, max: 63 }),
              fc.integer({ min: l2a, max: l2a + 8 * 260 }),
              fc.integer({ min: l2b + 8 * 250, max: l2b + 8 * 260 }),
              fc.integer({ min: 0, max: base.length - 1 }),
            ),
            value: fc.integer({ min: 0, max: 255 }),
          }),
          { minLength: 1, maxLength: 8 },
        ),
        async (muts) => {
          const b = base.slice();
          for (const m of muts) b[m.where] = m.value;
          const t0 = Date.now();
          try {
            await exercise(b);
            await writeAndVerify(b, muts.length * 131 + b[muts[0]!.where % b.length]!);
          } catch (e) {
            if (!(e instanceof ImageError)) throw e;
          }
          expect(Date.now() - t0).toBeLessThan(5000);
        },
      ),
      { seed: 20260322, numRuns: 400 },
    );
  });
});
