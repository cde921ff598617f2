/**
 * Hostile VDI files: small valid images (one made by qemu-img, one by us)
 * with one field mutated at a time must end in an ImageError naming that
 * field, quickly and without large allocations; random mutations must end in
 * success or an ImageError, never another exception or a hang.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { ImageError } from '../src/core/errors.js';
import { MemoryDevice } from '../src/core/memory.js';
import { vdi } from '../src/formats/vdi/index.js';
import { exercise as exerciseWith, expectFieldError as expectFieldErrorWith, writeAndVerify as writeAndVerifyWith } from './helpers/hostile.js';
import type { OpenOptions } from '../src/formats/types.js';
import { must, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-vdi-hostile-');
afterAll(() => t.cleanup());
const MiB = 1 << 20;

let qemuBase: Uint8Array; // 4 MiB disk: header 512, map at 512 (4 entries), data at 1024; blocks 0 and 2 allocated
let oursBase: Uint8Array; // 4 MiB disk, VirtualBox layout: map at 1 MiB, data at 2 MiB; block 1 allocated

beforeAll(async () => {
  const q = t.path('q.vdi');
  must('qemu-img', ['create', '-q', '-f', 'vdi', q, '4M']);
  must('qemu-io', ['-f', 'vdi', '-c', 'write -P 0xab 0 8k', '-c', 'write -P 0xcd 2M 4k', q]);
  qemuBase = new Uint8Array(readFileSync(q));
  const child = new MemoryDevice(0, { growable: true });
  const img = await vdi.create!(child, { size: 4 * MiB, options: {} });
  await img.write(new Uint8Array(4096).fill(0x77), MiB + 4096);
  await img.flush();
  oursBase = child.toBytes();
});

function put32(b: Uint8Array, off: number, v: number): Uint8Array {
  const c = b.slice();
  new DataView(c.buffer).setUint32(off, v >>> 0, true);
  return c;
}
function put64(b: Uint8Array, off: number, v: bigint): Uint8Array {
  const c = b.slice();
  new DataView(c.buffer).setBigUint64(off, v, true);
  return c;
}

// Driver-bound forms of the shared hostile-input checks.
const exercise = (bytes: Uint8Array, opts: OpenOptions = {}) => exerciseWith(vdi, bytes, opts);
const writeAndVerify = (bytes: Uint8Array, seed: number) => writeAndVerifyWith(vdi, bytes, seed);
const expectFieldError = async (bytes: Uint8Array, field: string, kind?: string, opts: OpenOptions = {}) => {
  const e = await expectFieldErrorWith(vdi, bytes, field, kind, opts);
  expect(e.context.format).toBe('vdi');
  return e;
};

describe('hostile VDI headers', () => {
  it('opens and reads both unmutated bases (the mutations below are what breaks them)', async () => {
    await exercise(qemuBase);
    await exercise(oursBase);
  });

  // The last element, when true: refused only when opened for writing (read-only
  // opens read such images, as qemu does, with a warning: formats-warnings.test.ts).
  const cases: Array<[string, (b: Uint8Array) => Uint8Array, string, string, boolean?]> = [
    ['a wrong signature', (b) => put32(b, 64, 0x12345678), 'signature', 'invalid-format'],
    ['version 1.2', (b) => put32(b, 68, 0x00010002), 'version', 'unsupported'],
    ['version 0 (pre-1.1 VirtualBox)', (b) => put32(b, 68, 0x00000002), 'version', 'unsupported'],
    ['a header size below 384', (b) => put32(b, 72, 100), 'header_size', 'invalid-format', true],
    ['a differencing image', (b) => put32(b, 76, 4), 'image_type', 'unsupported'],
    ['an undo image', (b) => put32(b, 76, 3), 'image_type', 'unsupported'],
    ['an unknown image type', (b) => put32(b, 76, 9), 'image_type', 'invalid-format', true],
    ['an unaligned block map offset', (b) => put32(b, 340, 513), 'offset_bmap', 'unsupported'],
    ['a block map over the header', (b) => put32(b, 340, 0), 'offset_bmap', 'invalid-format'],
    ['a block map past the end of the file', (b) => put32(b, 340, 0x7ffffe00), 'offset_bmap', 'corrupt'],
    ['an unaligned data offset', (b) => put32(b, 344, 1025), 'offset_data', 'unsupported'],
    ['data over the block map', (b) => put32(b, 344, 0), 'offset_data', 'invalid-format'],
    ['data past the end of the file', (b) => put32(b, 344, 0x7ffffe00), 'offset_data', 'corrupt'],
    ['4096-byte sectors', (b) => put32(b, 360, 4096), 'sector_size', 'unsupported'],
    ['a disk size near 2^64', (b) => put64(b, 368, 0xfffffffffffffe00n), 'disk_size', 'invalid-format'],
    ['a disk larger than its blocks', (b) => put64(b, 368, 5n * BigInt(MiB)), 'disk_size', 'invalid-format'],
    ['a block size that is not a power of two', (b) => put32(b, 376, 1000), 'block_size', 'invalid-format'],
    ['a zero block size', (b) => put32(b, 376, 0), 'block_size', 'invalid-format'],
    ['a 1 GiB block size', (b) => put32(b, 376, 1 << 30), 'block_size', 'unsupported'],
    ['a 512-byte block size', (b) => put32(b, 376, 512), 'block_size', 'unsupported'],
    ['block_extra that is not a power of two', (b) => put32(b, 380, 3), 'block_extra', 'invalid-format'],
    ['block_extra larger than a block', (b) => put32(b, 380, 2 * MiB), 'block_extra', 'invalid-format'],
    ['2^32-1 blocks', (b) => put32(b, 384, 0xffffffff), 'blocks_in_image', 'unsupported'],
    ['a block map that runs past the end of the file', (b) => put32(b, 384, 0x1000000), 'blocks_in_image', 'corrupt'],
    ['too few blocks for the disk size', (b) => put32(b, 384, 1), 'disk_size', 'invalid-format'],
    ['more blocks allocated than exist', (b) => put32(b, 388, 5), 'blocks_allocated', 'corrupt', true],
    ['a link UUID (a child image)', (b) => put32(b, 424, 0xdeadbeef), 'uuid_link', 'unsupported'],
    ['a parent UUID', (b) => put32(b, 440, 0xdeadbeef), 'uuid_parent', 'unsupported'],
  ];

  for (const [what, mutate, field, kind, forWriting] of cases) {
    it(`rejects ${what} (${field}) in a qemu-made image${forWriting ? ' opened for writing' : ''}`, async () => {
      await expectFieldError(mutate(qemuBase), field, kind, { writable: !!forWriting });
    });
  }

  it('reads undefined image flags and a LCHS sector size other than 512 with a warning (was refused; qemu ignores both)', async () => {
    for (const [b, field] of [[put32(qemuBase, 80, 0x8000), 'image_flags'], [put32(oursBase, 468, 0), 'lchs_sector_size']] as const) {
      const img = await vdi.open(MemoryDevice.from(b, { readOnly: true }), {});
      expect(img.warnings).toEqual([expect.stringContaining(field)]);
      await img.close();
    }
  });

  it('rejects a file too short for any header', async () => {
    await expectFieldError(qemuBase.slice(0, 200), 'header', 'invalid-format');
  });
});

describe('hostile VDI block maps', () => {
  it('rejects two guest blocks sharing one data block, naming both entries', async () => {
    const e = await expectFieldError(put32(qemuBase, 512 + 4 * 1, 0), 'block_map[1]', 'corrupt');
    expect(e.message).toContain('block_map[0]');
  });

  it('rejects an entry at or beyond blocks_allocated when opened for writing (read-only: a warning)', async () => {
    await expectFieldError(put32(qemuBase, 512 + 4 * 3, 7), 'block_map[3]', 'corrupt', { writable: true });
    await expectFieldError(put32(qemuBase, 388, 1), 'block_map[2]', 'corrupt', { writable: true });
    // Read-only, an entry past blocks_allocated whose data is in the file reads (qemu ignores blocks_allocated).
    const img = await vdi.open(MemoryDevice.from(put32(qemuBase, 388, 1), { readOnly: true }), {});
    expect(img.warnings).toEqual([expect.stringContaining('block_map[2]')]);
    await img.close();
    // ... and one whose data is not in the file is still refused.
    await expectFieldError(put32(qemuBase, 512 + 4 * 3, 7), 'block_map[3]', 'corrupt');
  });

  it('rejects an entry whose data lies past the end of the file', async () => {
    await expectFieldError(qemuBase.slice(0, 1024 + MiB + 4096), 'block_map[2]', 'corrupt');
  });

  it('rejects blocks_allocated claiming more blocks than the file holds, when opened for writing', async () => {
    await expectFieldError(put32(qemuBase, 388, 3), 'blocks_allocated', 'corrupt', { writable: true });
    await expectFieldError(qemuBase.slice(0, 1024 + MiB), 'blocks_allocated', 'corrupt', { writable: true });
  });

  it('fails at the first chunk of a 2 GiB block map over a sparse file, without allocating the map', async () => {
    // 536,870,784 blocks of 1 MiB (qemu's maximum), map of zeros: block_map[1] repeats block_map[0].
    const dev = new MemoryDevice(2 * 1024 * MiB + 4 * MiB); // sparse: only written chunks cost memory
    let h = put32(qemuBase.slice(0, 512), 384, 0x1fffff80);
    h = put64(h, 368, 0x1fffff80n * BigInt(MiB));
    h = put32(put32(h, 388, 1), 344, 2 * 1024 * MiB + 2 * MiB);
    dev.writeSync(h, 0);
    dev.writeSync(new Uint8Array(4096).fill(1), 2 * 1024 * MiB + 2 * MiB); // block 0 data, in the file
    const before = process.memoryUsage().arrayBuffers;
    const t0 = Date.now();
    const err = await vdi.open(dev, {}).catch((e: unknown) => e);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * MiB);
    expect(err).toBeInstanceOf(ImageError);
    expect((err as ImageError).context.field).toBe('block_map[1]');
    expect((err as ImageError).message).toContain('block_map[0]');
  });

  it('rejects duplicate entries in an image laid out as VirtualBox does', async () => {
    // Guest block 1 owns data block 0; make guest block 3 point there too.
    const e = await expectFieldError(put32(oursBase, MiB + 4 * 3, 0), 'block_map[3]', 'corrupt');
    expect(e.message).toContain('block_map[1]');
  });

  it('reads zero blocks (0xFFFFFFFE) as zeros and reports them as zero', async () => {
    const img = await vdi.open(MemoryDevice.from(put32(qemuBase, 512, 0xfffffffe), { readOnly: true }), {});
    const st = await img.status(0, MiB);
    expect(st.kind).toBe('zero');
    const buf = new Uint8Array(8192).fill(1);
    await img.read(buf, 0);
    expect(buf.every((x) => x === 0)).toBe(true);
    await img.close();
  });
});

describe('random mutations of VDI files', () => {
  it('end in success or an ImageError, quickly, and writes into those that open read back (seeded)', async () => {
    const bases = [qemuBase, oursBase];
    await fc.assert(
      fc.asyncProperty(
        fc.nat(1),
        fc.array(
          fc.record({
            // Bias towards the header and the block map, where the structure is.
            where: fc.oneof(fc.integer({ min: 0, max: 511 }), fc.integer({ min: 512, max: 1100 }), fc.integer({ min: MiB, max: MiB + 64 })),
            value: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0, 0xff, 0x7f, 0x80)),
            wide: fc.boolean(),
            v32: fc.oneof(fc.nat(), fc.constantFrom(0, 1, 0xffffffff, 0xfffffffe, 0x80000000, 512, MiB)),
          }),
          { minLength: 1, maxLength: 6 },
        ),
        async (which, muts) => {
          let b: Uint8Array = bases[which]!.slice();
          for (const m of muts) {
            if (m.where >= b.length - 4) continue;
            if (m.wide) b = put32(b, m.where - (m.where % 4), m.v32);
            else b[m.where] = m.value;
          }
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
