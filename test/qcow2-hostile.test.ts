/**
 * Hostile qcow2 files (qemu iotests 080/060 style): each header field and
 * table of a small valid image is damaged in turn; opening it (or reading
 * all of it) must end in an ImageError naming the field, quickly and without
 * large allocations. Then a seeded random-mutation run: never anything but
 * success or an ImageError, never a hang.
 */
import { beforeAll, afterAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { ImageError } from '../src/core/errors.js';
import { MemoryDevice } from '../src/core/memory.js';
import { qcow2 } from '../src/formats/qcow2/index.js';
import { tempDir } from './helpers/peers.js';
import { qemuImg, qemuIo } from './qcow2-helpers.js';

const tmp = tempDir('imgtool-qcow2-hostile-');
afterAll(() => tmp.cleanup());

let base: Buffer; // compressed + plain + zero clusters, a snapshot; 4 KiB clusters
let extl2: Buffer; // extended L2 entries
let zstd: Buffer;

beforeAll(() => {
  const raw = tmp.path('h.raw');
  qemuImg(['create', '-q', '-f', 'raw', raw, '1M']);
  qemuIo(raw, ['write -P 0x5a 0 256k', 'write -P 0x11 512k 100k'], 'raw');
  const img = tmp.path('h.qcow2');
  qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4k', raw, img]);
  qemuIo(img, ['write -P 0x22 700k 8k', 'write -z 800k 4k']);
  qemuImg(['snapshot', '-c', 's1', img]);
  base = readFileSync(img);
  const e = tmp.path('e.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=16k', e, '1M']);
  qemuIo(e, ['write -P 0x33 0 4k', 'write -z 64k 16k']);
  extl2 = readFileSync(e);
  const z = tmp.path('z.qcow2');
  qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd,cluster_size=4k', raw, z]);
  zstd = readFileSync(z);
});

const be32 = (b: Buffer, o: number) => b.readUInt32BE(o);
const be64 = (b: Buffer, o: number) => Number(b.readBigUInt64BE(o));

/** Open and read everything (bounded), returning the error if any. */
async function openAndRead(bytes: Uint8Array, opts: { writable?: boolean } = {}): Promise<unknown> {
  const dev = MemoryDevice.from(bytes, { readOnly: !opts.writable, growable: !!opts.writable });
  try {
    const img = await qcow2.open(dev, { writable: opts.writable });
    try {
      const limit = Math.min(img.size, 8 << 20);
      for (let pos = 0; pos < img.size; ) {
        const e = await img.status(pos, img.size - pos);
        pos = e.offset + e.length;
      }
      const buf = new Uint8Array(Math.min(limit, 1 << 20));
      for (let pos = 0; pos < limit; pos += buf.length) await img.read(buf.subarray(0, Math.min(buf.length, limit - pos)), pos);
      await img.info();
      if (opts.writable) {
        await img.write(new Uint8Array(4096).fill(9), 0);
        await img.writeZeroes(Math.min(img.size, 65536) - Math.min(img.size, 4096), Math.min(img.size, 4096));
        await img.flush();
      }
    } finally {
      await img.close().catch(() => {});
    }
    return undefined;
  } catch (e) {
    return e;
  }
}

async function expectFieldError(bytes: Uint8Array, field: string | RegExp, opts: { writable?: boolean } = {}): Promise<ImageError> {
  const t0 = performance.now();
  const err = await openAndRead(bytes, opts);
  expect(performance.now() - t0).toBeLessThan(3000);
  expect(err, `expected an error naming ${String(field)}`).toBeInstanceOf(ImageError);
  const e = err as ImageError;
  if (typeof field === 'string') expect(e.context.field ?? '').toContain(field);
  else expect(e.context.field ?? '').toMatch(field);
  expect(e.message.length).toBeGreaterThan(0);
  return e;
}

/** Open and read everything; the warnings the image gave (it must open). */
async function warningsOf(bytes: Uint8Array): Promise<readonly string[]> {
  const img = await qcow2.open(MemoryDevice.from(bytes, { readOnly: true }), {});
  try {
    await img.read(new Uint8Array(img.size), 0);
    return img.warnings ?? [];
  } finally {
    await img.close();
  }
}

function mutate(src: Buffer, edits: Array<[number, number, number | bigint]>): Buffer {
  const b = Buffer.from(src);
  for (const [off, size, v] of edits) {
    if (size === 8) b.writeBigUInt64BE(BigInt(v), off);
    else if (size === 4) b.writeUInt32BE(Number(v) >>> 0, off);
    else if (size === 2) b.writeUInt16BE(Number(v), off);
    else b[off] = Number(v);
  }
  return b;
}

describe('qcow2 header validation', () => {
  it('reads the unmodified fixtures without error', async () => {
    expect(await openAndRead(base)).toBeUndefined();
    expect(await openAndRead(extl2)).toBeUndefined();
    expect(await openAndRead(zstd)).toBeUndefined();
    expect(await openAndRead(base, { writable: true })).toBeUndefined();
  });

  const cases: Array<[string, Array<[number, number, number | bigint]>, string | RegExp]> = [
    ['a bad magic', [[0, 4, 0x51464900]], 'magic'],
    ['version 1', [[4, 4, 1]], 'version'],
    ['version 4', [[4, 4, 4]], 'version'],
    ['a backing name offset beyond 2^53', [[8, 8, 2n ** 62n], [16, 4, 10]], 'backing_file_offset'],
    ['a backing name outside the first cluster', [[8, 8, 0x10000], [16, 4, 10]], 'backing_file_offset'],
    ['a backing name longer than 1023 bytes', [[8, 8, 0x200], [16, 4, 5000]], 'backing_file_size'],
    ['cluster_bits 8', [[20, 4, 8]], 'cluster_bits'],
    ['cluster_bits 22', [[20, 4, 22]], 'cluster_bits'],
    ['cluster_bits 0xffffffff', [[20, 4, 0xffffffff]], 'cluster_bits'],
    ['a virtual size beyond 2^53', [[24, 8, 2n ** 62n]], 'size'],
    ['a virtual size larger than the L1 table maps', [[24, 8, 2n ** 40n]], 'l1_size'],
    ['AES encryption', [[32, 4, 1]], 'crypt_method'],
    ['LUKS encryption', [[32, 4, 2]], 'crypt_method'],
    ['l1_size 0xffffffff', [[36, 4, 0xffffffff]], 'l1_size'],
    ['l1_size 0 for a non-empty disk', [[36, 4, 0]], 'l1_size'],
    ['an unaligned L1 table', [[40, 8, 0x3001]], 'l1_table_offset'],
    ['an L1 table past the end of the file', [[40, 8, 0x100000]], 'l1_table_offset'],
    ['an L1 table offset beyond 2^53', [[40, 8, 2n ** 60n]], 'l1_table_offset'],
    ['an L1 table in the header cluster', [[40, 8, 0]], 'l1_table_offset'],
    ['an L1 table overlapping the refcount table', [[40, 8, 0x1000]], 'l1_table_offset'],
    ['an unaligned refcount table', [[48, 8, 0x1001]], 'refcount_table_offset'],
    ['a refcount table at offset 0', [[48, 8, 0]], 'refcount_table_offset'],
    ['a refcount table past the end of the file', [[48, 8, 0x1000000]], 'refcount_table_offset'],
    ['refcount_table_clusters 0', [[56, 4, 0]], 'refcount_table_clusters'],
    ['refcount_table_clusters 0xffffffff', [[56, 4, 0xffffffff]], 'refcount_table_clusters'],
    ['nb_snapshots 0xffffffff', [[60, 4, 0xffffffff]], 'nb_snapshots'],
    ['more snapshots than the file can hold', [[60, 4, 60000]], 'snapshots_offset'],
    ['an unaligned snapshot table', [[64, 8, 0x9001]], 'snapshots_offset'],
    ['an unknown incompatible feature bit', [[79, 1, 0x20]], 'incompatible_features'],
    ['a high unknown incompatible feature bit', [[72, 4, 0x100]], 'incompatible_features'],
    ['refcount_order 7', [[96, 4, 7]], 'refcount_order'],
    ['header_length 50', [[100, 4, 50]], 'header_length'],
    ['header_length 100', [[100, 4, 100]], 'header_length'],
    ['header_length beyond the cluster', [[100, 4, 0x100000]], 'header_length'],
    ['an unknown compression type', [[79, 1, 8], [104, 1, 5]], 'compression_type'],
    ['a compression type without its feature bit', [[104, 1, 1]], 'compression_type'],
    ['the compression bit with a zero compression type', [[79, 1, 8]], 'compression_type'],
    ['a header extension running past the first cluster', [[116, 4, 0xfff0]], /header extension/],
  ];
  for (const [what, edits, field] of cases) {
    it(`rejects ${what}, naming ${String(field)}`, async () => {
      // The extended-L2 fixture has header extensions (qemu drops them when it adds a snapshot).
      await expectFieldError(mutate(/extension/.test(what) ? extl2 : base, edits), field);
    });
  }

  it('names an unknown incompatible feature from the feature name table', async () => {
    // Rename the table's entry for bit 4 to bit 5 ('extended L2 entries').
    const b = Buffer.from(extl2);
    const nameAt = b.indexOf('extended L2', 0, 'latin1');
    expect(nameAt).toBeGreaterThan(0);
    b[nameAt - 1] = 5;
    b[79] |= 0x20;
    const e = await expectFieldError(b, 'incompatible_features');
    expect(e.message).toContain('extended L2');
    expect(e.kind).toBe('unsupported');
  });

  it('refuses an external data file unless allowed, and an extended-L2 image with small clusters', async () => {
    const e = (await openAndRead(mutate(base, [[79, 1, 4]]))) as ImageError;
    expect(e).toBeInstanceOf(ImageError);
    expect(e.kind).toBe('unsupported');
    await expectFieldError(mutate(base, [[79, 1, 16]]), 'cluster_bits');
  });
});

describe('qcow2 table validation', () => {
  const l1Off = () => be64(base, 40);
  const l2Off = () => be64(base, l1Off()) & 0x00fffffffffffe00;
  /** The L2 entry of guest cluster `c` in the base image (4 KiB clusters, 512 entries per table). */
  const l2Entry = (c: number) => l2Off() + c * 8;

  it('rejects an L1 entry pointing past the end of the file', async () => {
    await expectFieldError(mutate(base, [[l1Off(), 8, 0x80000000_00100000n]]), 'L1 entry 0');
  });
  it('rejects an unaligned L1 entry', async () => {
    await expectFieldError(mutate(base, [[l1Off(), 8, BigInt(l2Off() + 512) | (1n << 63n)]]), 'L1 entry 0');
  });
  it('reads an L1 entry with reserved bits (qemu ignores them) and warns', async () => {
    // Was refused; reserved bits do not change which bytes are read (formats-warnings.test.ts compares with qemu-img).
    expect(await warningsOf(mutate(base, [[l1Off(), 8, BigInt(l2Off()) | (1n << 58n)]]))).toEqual([expect.stringContaining('L1 entry 0')]);
  });
  it('rejects an L1 entry pointing at the L1 table itself', async () => {
    await expectFieldError(mutate(base, [[l1Off(), 8, BigInt(l1Off()) | (1n << 63n)]]), 'L1 entry 0');
  });

  it('rejects L2 entries pointing past the end of the file, unaligned or into the header; warns about reserved bits', async () => {
    // Guest cluster 175 (700k) is a plain data cluster written by qemu-io.
    const c = 700 / 4;
    const e = l2Entry(c);
    expect(base.readBigUInt64BE(e) & 0x00fffffffffffe00n).not.toBe(0n);
    // Reserved bit 8: was refused, now read (qemu ignores it) with a warning.
    expect(await warningsOf(mutate(base, [[e, 8, 0x80000000_00009000n | 0x100n]]))).toEqual([expect.stringContaining('L2 entry 175')]);
    for (const v of [0x80000000_10000000n, 0x80000000_00009200n, 0x80000000_00000000n | 0n]) {
      const entry = v === 0x80000000_00000000n ? 0x80000000_00000000n : v;
      const bytes = mutate(base, [[e, 8, entry]]);
      if (entry === 0x80000000_00000000n) {
        // offset 0 with the copied bit and no data file: reads as unallocated (qemu agrees): not an error
        expect(await openAndRead(bytes)).toBeUndefined();
        continue;
      }
      await expectFieldError(bytes, 'L2 entry 175');
    }
    await expectFieldError(mutate(base, [[e, 8, 0x80000000_00000200n]]), 'L2 entry 175');
  });

  it('rejects compressed descriptors outside the file and compressed data that does not inflate', async () => {
    const e = l2Entry(0);
    const hi = base.readUInt32BE(e);
    expect(hi & 0x40000000).not.toBe(0);
    // Offset field beyond the end of the file (x = 62 - (12 - 8) = 58 bits of offset).
    await expectFieldError(mutate(base, [[e, 8, (1n << 62n) | 0x0000000f_00000000n]]), 'L2 entry 0');
    // Offset inside the header cluster.
    await expectFieldError(mutate(base, [[e, 8, (1n << 62n) | 16n]]), 'L2 entry 0');
    // Garbage where the deflate stream was.
    const lo = BigInt(base.readUInt32BE(e + 4));
    const off = Number(((BigInt(hi & ((1 << 26) - 1)) << 32n) | lo));
    const bad = Buffer.from(base);
    bad.fill(0xff, off, off + 64);
    const err = await expectFieldError(bad, 'compressed cluster');
    expect(err.kind).toBe('corrupt');
  });

  it('rejects zstd data that does not decode', async () => {
    const l1 = be64(zstd, 40);
    const l2 = be64(zstd, l1) & 0x00fffffffffffe00;
    const hi = zstd.readUInt32BE(l2);
    expect(hi & 0x40000000).not.toBe(0);
    const off = Number((BigInt(hi & ((1 << 26) - 1)) << 32n) | BigInt(zstd.readUInt32BE(l2 + 4)));
    for (const fill of [0x00, 0xff]) {
      const bad = Buffer.from(zstd);
      bad.fill(fill, off + 4, off + 40);
      await expectFieldError(bad, 'compressed cluster');
    }
  });

  it('rejects extended L2 entries with subclusters both allocated and zero', async () => {
    const l1 = be64(extl2, 40);
    const l2 = be64(extl2, l1) & 0x00fffffffffffe00;
    // entry 0: bitmap at +8 (zero bits) / +12 (allocation bits)
    const abits = extl2.readUInt32BE(l2 + 12);
    expect(abits).not.toBe(0);
    await expectFieldError(mutate(extl2, [[l2 + 8, 4, abits]]), 'L2 entry 0');
    // bit 0 of the descriptor is reserved with extended L2: was refused, now read (qemu ignores it) with a warning
    expect(await warningsOf(mutate(extl2, [[l2 + 7, 1, extl2[l2 + 7]! | 1]]))).toEqual([expect.stringContaining('L2 entry 0')]);
  });

  it('rejects a snapshot entry with oversized extra data or L1 table', async () => {
    const sn = be64(base, 64);
    await expectFieldError(mutate(base, [[sn + 36, 4, 0x7fffffff]]), 'snapshot 0 extra_data_size');
    await expectFieldError(mutate(base, [[sn + 8, 4, 0x7fffffff]]), 'snapshot 0 l1_size');
    await expectFieldError(mutate(base, [[sn, 8, 0x123]]), 'snapshot 0 l1_table_offset');
  });

  it('rejects refcount table entries past the end of the file when opened for writing', async () => {
    const rt = be64(base, 48);
    await expectFieldError(mutate(base, [[rt, 8, 0x10000000]]), 'refcount table entry 0', { writable: true });
    await expectFieldError(mutate(base, [[rt, 8, be64(base, rt) + 1]]), 'refcount table entry 0', { writable: true });
  });
});

describe('qcow2 hostile refcounts when writing', () => {
  it('stops, rather than scanning forever, when refcounts claim every cluster past the end of the file', async () => {
    const b = Buffer.from(base);
    const rt = be64(b, 48);
    const block0 = be64(b, rt);
    for (let i = 0; i < 512; i++) b.writeBigUInt64BE(BigInt(block0), rt + i * 8);
    for (let i = 0; i < 2048; i++) b.writeUInt16BE(1, block0 + i * 2);
    const t0 = performance.now();
    const err = await openAndRead(b, { writable: true });
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(err).toBeInstanceOf(ImageError);
    expect((err as ImageError).kind).toBe('corrupt');
  });
});

describe('qcow2 random mutations', () => {
  it('ends every open and read of a few hundred mutated images in success or an ImageError, quickly', async () => {
    let seed = 0x2545f491;
    const rnd = () => {
      seed ^= seed << 13;
      seed >>>= 0;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      seed >>>= 0;
      return seed;
    };
    const l1 = be64(base, 40);
    const l2 = be64(base, l1) & 0x00fffffffffffe00;
    const sn = be64(base, 64);
    const hot = [0, 0, 0, l1, l2, l2 + 1000, sn, be64(base, 48)];
    let errors = 0;
    const heap0 = process.memoryUsage().heapUsed;
    for (let i = 0; i < 300; i++) {
      const src = [base, extl2, zstd][i % 3]!;
      const b = Buffer.from(src);
      const count = 1 + (rnd() % 4);
      for (let k = 0; k < count; k++) {
        const region = hot[rnd() % hot.length]!;
        const at = (region + (rnd() % (region === 0 ? 128 : 512))) % b.length;
        const r = rnd();
        if (r % 3 === 0) b[at] = r >>> 24;
        else if (r % 3 === 1) b[at] ^= 1 << ((r >>> 8) % 8);
        else b.writeUInt32BE(rnd(), Math.min(at, b.length - 4));
      }
      const t0 = performance.now();
      const err = await Promise.race([
        openAndRead(b, { writable: i % 5 === 0 }),
        new Promise((r) => setTimeout(() => r(new Error('timeout')), 5000)),
      ]);
      expect(performance.now() - t0).toBeLessThan(5000);
      if (err !== undefined) {
        if (!(err instanceof ImageError)) throw new Error(`mutation ${i} threw a non-ImageError: ${String(err)}\n${(err as Error).stack}`);
        errors++;
      }
    }
    expect(errors).toBeGreaterThan(30);
    expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(512 << 20);
  });
});
