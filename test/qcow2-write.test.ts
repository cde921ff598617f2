/**
 * Writing qcow2: images we create (every option) and writes into existing
 * images (qemu's, ours, compressed ones) pass `qemu-img check` with no
 * errors and no leaks, and are identical by `qemu-img compare` to what they
 * should hold.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { closeSync, createWriteStream, openSync, readSync, writeSync, statSync } from 'node:fs';
import { writeToStdout } from '../src/convert/stream.js';
import { createImage, openImage } from '../src/formats/index.js';
import { convertImage } from '../src/convert/image.js';
import { ImageError } from '../src/core/errors.js';
import { MemoryDevice } from '../src/core/memory.js';
import { qcow2 } from '../src/formats/qcow2/index.js';
import { pattern } from './helpers/devices.js';
import { qemuCheck, qemuInfo, tempDir } from './helpers/peers.js';
import { expectCheckClean, expectIdentical, patternedRaw, qemuImg, qemuIo } from './qcow2-helpers.js';

const tmp = tempDir('imgtool-qcow2-write-');
afterAll(() => tmp.cleanup());
let n = 0;

const SIZE = 9 * 1024 * 1024 + 1536;

function sourceRaw(): string {
  const raw = tmp.path(`src${n++}.raw`);
  patternedRaw(raw, SIZE, [
    [0, 70 * 1024],
    [1024 * 1024, 3 * 1024 * 1024],
    [6 * 1024 * 1024 + 512, 1000],
    [SIZE - 3000, 3000],
  ]);
  // A compressible run too.
  qemuIo(raw, ['write -P 0x77 5M 512k'], 'raw');
  return raw;
}

async function convertWithUs(src: string, dst: string, options: Record<string, string>, compress = false): Promise<void> {
  const opened = await openImage(src);
  try {
    await convertImage(opened, dst, { format: 'qcow2', options, compress });
  } finally {
    await opened.image.close();
  }
}

function compareInfo(ours: Record<string, unknown>, theirs: Record<string, unknown>): void {
  for (const k of ['format', 'virtual-size', 'cluster-size', 'dirty-flag']) expect(ours[k], k).toEqual(theirs[k]);
  expect(ours['format-specific']).toEqual(theirs['format-specific']);
}

describe('qcow2 images we create', () => {
  const variants: Array<[string, Record<string, string>, boolean]> = [
    ['default options', {}, false],
    ['compat=0.10', { compat: '0.10' }, false],
    ['compat=v2', { compat: 'v2' }, false],
    ['compat=1.1', { compat: '1.1' }, false],
    ['512-byte clusters', { cluster_size: '512' }, false],
    ['4k clusters', { cluster_size: '4k' }, false],
    ['2M clusters', { cluster_size: '2M' }, false],
    ['1-bit refcounts and 512-byte clusters', { refcount_bits: '1', cluster_size: '512' }, false],
    ['8-bit refcounts', { refcount_bits: '8' }, false],
    ['64-bit refcounts and 512-byte clusters', { refcount_bits: '64', cluster_size: '512' }, false],
    ['lazy_refcounts=on', { lazy_refcounts: 'on' }, false],
    ['extended_l2=on', { extended_l2: 'on' }, false],
    ['compression (-c)', {}, true],
    ['compression with 4k clusters', { cluster_size: '4k' }, true],
    ['compression with compat=0.10 and 512-byte clusters', { compat: '0.10', cluster_size: '512' }, true],
    ['compression with extended_l2=on', { extended_l2: 'on' }, true],
    ['preallocation=off', { preallocation: 'off' }, false],
    ['preallocation=metadata', { preallocation: 'metadata' }, false],
    ['preallocation=metadata and extended_l2=on', { preallocation: 'metadata', extended_l2: 'on' }, false],
  ];
  for (const [name, options, compress] of variants) {
    it(`writes an image with ${name} that qemu-img checks clean and compares identical`, async () => {
      const raw = sourceRaw();
      const img = tmp.path(`w${n++}.qcow2`);
      await convertWithUs(raw, img, options, compress);
      expectCheckClean(img);
      expectIdentical(img, raw);
      const opened = await openImage(img);
      try {
        compareInfo((await opened.image.info()) as unknown as Record<string, unknown>, qemuInfo(img, 'qcow2'));
      } finally {
        await opened.image.close();
      }
      if (compress) {
        const check = qemuCheck(img, 'qcow2').json!;
        expect(check['compressed-clusters']).toBeGreaterThan(0);
        expect(statSync(img).size).toBeLessThan(statSync(raw).size);
      }
    });
  }

  it('writes an image larger than 4 GiB with data beyond 4 GiB', async () => {
    const src = tmp.path(`bigsrc${n++}.qcow2`);
    const size = 5 * 1024 ** 3 + 4096;
    qemuImg(['create', '-q', '-f', 'qcow2', src, String(size)]);
    qemuIo(src, ['write -P 0x61 0 4k', 'write -P 0x62 4294967196 200', 'write -P 0x63 5G 4k']);
    const img = tmp.path(`big${n++}.qcow2`);
    await convertWithUs(src, img, {});
    expectCheckClean(img);
    expectIdentical(img, src, 'qcow2', 'qcow2');
  });

  it('writes an empty image and a zero-sized image', async () => {
    for (const size of [0, 3 * 1024 * 1024]) {
      const raw = tmp.path(`empty${n++}.raw`);
      patternedRaw(raw, size, []);
      const img = tmp.path(`empty${n++}.qcow2`);
      await convertWithUs(raw, img, {});
      expectCheckClean(img);
      expectIdentical(img, raw);
      expect(statSync(img).size).toBeLessThanOrEqual(4 * 65536);
    }
  });

  for (const [what, options] of [
    ['default options', {}],
    ['compat=0.10 and 512-byte clusters', { compat: '0.10', cluster_size: '512' }],
    ['extended_l2=on and 1-bit refcounts', { extended_l2: 'on', refcount_bits: '1' }],
  ] as Array<[string, Record<string, string>]>) {
    it(`streams an image with ${what} front to back (a pipe) that qemu-img checks clean`, async () => {
      const raw = sourceRaw();
      const img = tmp.path(`st${n++}.qcow2`);
      const src = await openImage(raw);
      const out = createWriteStream(img);
      try {
        await writeToStdout(src.image, qcow2, { size: src.image.size, options }, out);
      } finally {
        await new Promise<void>((r) => out.end(r));
        await src.image.close();
      }
      expectCheckClean(img);
      expectIdentical(img, raw);
    });
  }

  it('refuses to stream a compressed image', async () => {
    const raw = sourceRaw();
    const src = await openImage(raw);
    const gen = qcow2.stream!(src.image, { size: src.image.size, options: {}, compress: true });
    const e = await gen[Symbol.asyncIterator]().next().catch((x: unknown) => x);
    await src.image.close();
    expect((e as ImageError).kind).toBe('unsupported');
  });

  it('does not allocate clusters for zeros written to a fresh image', async () => {
    const child = new MemoryDevice(0, { growable: true });
    const img = await qcow2.create!(child, { size: 8 << 20, options: {} });
    await img.write(new Uint8Array(1 << 20), 0);
    await img.writeZeroes(2 << 20, 1 << 20);
    await img.write(new Uint8Array(4096), (4 << 20) + 512);
    expect((await img.status(0, 8 << 20)).kind).toBe('unallocated');
    await img.close();
    // Header, refcount table, refcount block, L1 and the one L2 table the writes looked at.
    expect(child.size).toBeLessThanOrEqual(5 * 65536);
  });

  it('refuses unknown options, zstd on version 2 and preallocation', async () => {
    const make = (options: Record<string, string>) =>
      qcow2.create!(new MemoryDevice(0, { growable: true }), { size: 1 << 20, options }).catch((e: unknown) => e as ImageError);
    expect(((await make({ bogus: '1' })) as ImageError).kind).toBe('usage');
    expect(((await make({ cluster_size: '1000' })) as ImageError).kind).toBe('usage');
    expect(((await make({ cluster_size: '4M' })) as ImageError).kind).toBe('usage');
    expect(((await make({ compat: '0.10', refcount_bits: '8' })) as ImageError).kind).toBe('usage');
    expect(((await make({ compat: '0.10', lazy_refcounts: 'on' })) as ImageError).kind).toBe('usage');
    expect(((await make({ extended_l2: 'on', cluster_size: '4k' })) as ImageError).kind).toBe('usage');
    expect(((await make({ compat: '0.10', compression_type: 'zstd' })) as ImageError).kind).toBe('usage');
    expect(((await make({ compression_type: 'lz4' })) as ImageError).kind).toBe('usage');
    expect(((await make({ preallocation: 'full' })) as ImageError).kind).toBe('unsupported');
  });

  it('refuses a virtual size whose L1 table would exceed qemu limits', async () => {
    const e = await qcow2.create!(new MemoryDevice(0, { growable: true }), { size: 2 ** 40, options: { cluster_size: '512' } }).catch((x: unknown) => x);
    expect((e as ImageError).kind).toBe('usage');
  });
});

/** Apply the same writes to a qcow2 (through our driver) and to a raw file. */
async function writeBoth(img: string, raw: string, writes: Array<[number, number] | [number, number, 'zero']>, opts: { backing?: boolean } = {}): Promise<void> {
  const opened = await openImage(img, { writable: true, backing: opts.backing });
  const fd = openSync(raw, 'r+');
  try {
    let seed = 100;
    for (const w of writes) {
      if (w[2] === 'zero') {
        await opened.image.writeZeroes(w[0], w[1]);
        writeSync(fd, new Uint8Array(w[1]), 0, w[1], w[0]);
      } else {
        const data = pattern(w[1], seed++);
        await opened.image.write(data, w[0]);
        writeSync(fd, data, 0, w[1], w[0]);
      }
    }
  } finally {
    closeSync(fd);
    await opened.image.close();
  }
}

const WRITES: Array<[number, number] | [number, number, 'zero']> = [
  [0, 512], // partial cluster over data
  [60 * 1024, 10 * 1024], // straddles a cluster boundary
  [2 * 1024 * 1024 + 100, 300], // inside a zero cluster
  [3 * 1024 * 1024, 256 * 1024], // unallocated, aligned, several clusters
  [3 * 1024 * 1024 + 300 * 1024, 1000], // unallocated, partial
  [64 * 1024, 64 * 1024, 'zero'],
  [1024 * 1024 + 10, 5000, 'zero'],
  [SIZE - 700, 700], // the short last cluster
];

describe('writing into existing qcow2 images', () => {
  const qemuMade: Array<[string, string]> = [
    ['a default qemu-made image', ''],
    ['a compat=0.10 qemu-made image', 'compat=0.10'],
    ['a qemu-made image with 4k clusters and 1-bit refcounts', 'cluster_size=4k,refcount_bits=1'],
    ['a qemu-made image with extended L2 entries', 'extended_l2=on'],
    ['a qemu-made image with lazy refcounts', 'lazy_refcounts=on'],
    ['a qemu-made image with metadata preallocation', 'preallocation=metadata'],
  ];
  for (const [name, o] of qemuMade) {
    it(`writes patterns into ${name}; qemu-img check is clean and content matches`, async () => {
      const raw = sourceRaw();
      const img = tmp.path(`e${n++}.qcow2`);
      qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', ...(o ? ['-o', o] : []), raw, img]);
      qemuIo(img, ['write -z 2M 64k']);
      qemuIo(raw, ['write -z 2M 64k'], 'raw');
      await writeBoth(img, raw, WRITES);
      expectCheckClean(img);
      expectIdentical(img, raw);
    });
  }

  it('writes patterns into an image of ours and into a compressed one', async () => {
    for (const compress of [false, true]) {
      const raw = sourceRaw();
      const img = tmp.path(`o${n++}.qcow2`);
      await convertWithUs(raw, img, {}, compress);
      await writeBoth(img, raw, WRITES);
      expectCheckClean(img);
      expectIdentical(img, raw);
    }
  });

  it('writes into a qemu-compressed zstd image', async () => {
    const raw = sourceRaw();
    const img = tmp.path(`z${n++}.qcow2`);
    qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd', raw, img]);
    await writeBoth(img, raw, WRITES);
    expectCheckClean(img);
    expectIdentical(img, raw);
  });

  /** A qemu-made image of sourceRaw() with an internal snapshot 'before', and a raw copy of what the snapshot holds. */
  function snapshotted(): { raw: string; img: string; snapRaw: string } {
    const raw = sourceRaw();
    const img = tmp.path(`snap${n++}.qcow2`);
    const snapRaw = tmp.path(`snap${n++}.raw`);
    qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', raw, img]);
    qemuImg(['snapshot', '-c', 'before', img]);
    qemuImg(['convert', '-f', 'raw', '-O', 'raw', raw, snapRaw]);
    return { raw, img, snapRaw };
  }

  /** The snapshot still holds the old contents. */
  function expectSnapshotKept(img: string, snapRaw: string): void {
    const snapOut = tmp.path(`snap${n++}.raw`);
    qemuImg(['convert', '-f', 'qcow2', '-l', 'snapshot.name=before', '-O', 'raw', img, snapOut]);
    expectIdentical(snapOut, snapRaw, 'raw', 'raw');
  }

  it('writes into an image with internal snapshots without touching them', async () => {
    const { raw, img, snapRaw } = snapshotted();
    await writeBoth(img, raw, WRITES);
    expectCheckClean(img);
    expectIdentical(img, raw);
    expectSnapshotKept(img, snapRaw);
  });

  it('rewrites whole shared clusters of a snapshotted image as one contiguous run, copying them, and the snapshot keeps its data', async () => {
    const { raw, img, snapRaw } = snapshotted();
    const M = 1024 * 1024;
    type MapEntry = { start: number; length: number; data: boolean; offset?: number };
    /** The host offset of guest byte M, and whether [M, M + 512 KiB) is one host-contiguous entry (qemu-img map joins those). */
    const hostAtM = (): [number, boolean] => {
      const e = (JSON.parse(qemuImg(['map', '--output=json', img])) as MapEntry[]).find((x) => x.start <= M && x.start + x.length > M)!;
      return [e.offset! + (M - e.start), e.data && e.start + e.length >= M + M / 2];
    };
    const [before] = hostAtM();
    // Eight whole 64 KiB clusters of shared data (the engine's run path), then a partial write into another shared cluster.
    await writeBoth(img, raw, [[M, M / 2], [M + M / 2 + 100, 1000]]);
    expectCheckClean(img);
    expectIdentical(img, raw);
    const [after, contiguous] = hostAtM();
    expect(after).not.toBe(before); // copied, not written in place
    expect(contiguous).toBe(true); // one host range for the run
    expectSnapshotKept(img, snapRaw);
  });

  it('writes into an image with a backing file, copying partial clusters from it', async () => {
    const base = sourceRaw();
    const img = tmp.path(`ov${n++}.qcow2`);
    const expected = tmp.path(`ov${n++}.raw`);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', img]);
    qemuImg(['convert', '-f', 'raw', '-O', 'raw', base, expected]);
    await writeBoth(img, expected, WRITES, { backing: true });
    expectCheckClean(img);
    const r = qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', img, expected]);
    expect(r).toContain('identical');
  });

  it('writes into an image whose data lives in an external data file', async () => {
    const img = tmp.path(`xd${n++}.qcow2`);
    const data = tmp.path(`xd${n++}.data`);
    const expected = tmp.path(`xd${n++}.raw`);
    patternedRaw(expected, 2 * 1024 * 1024, [[0, 100 * 1024]]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${data}`, img, '2M']);
    qemuImg(['convert', '-n', '-f', 'raw', '-O', 'qcow2', expected, img]);
    const opened = await openImage(img, { writable: true, dataFile: true });
    const fd = openSync(expected, 'r+');
    for (const [off, len] of [[50, 1000], [3 * 65536 + 5, 1000], [1024 * 1024, 65536]]) {
      const d = pattern(len!, off!);
      await opened.image.write(d, off!);
      writeSync(fd, d, 0, len!, off!);
    }
    await opened.image.writeZeroes(65536, 65536);
    writeSync(fd, new Uint8Array(65536), 0, 65536, 65536);
    closeSync(fd);
    await opened.image.close();
    expectCheckClean(img);
    expectIdentical(img, expected);
  });

  it('creates an image on a container larger than the image (a block device) and keeps it valid', async () => {
    const child = MemoryDevice.from(new Uint8Array(4 << 20).fill(0xee));
    const img = await qcow2.create!(child, { size: 1 << 20, options: {} });
    await img.write(pattern(70000, 9), 1000);
    await img.close();
    const reopened = await qcow2.open(child, {});
    const back = new Uint8Array(70000);
    await reopened.read(back, 1000);
    expect(Buffer.compare(back, pattern(70000, 9))).toBe(0);
    const zeros = new Uint8Array(1000);
    await reopened.read(zeros, 0);
    expect(zeros.every((b) => b === 0)).toBe(true);
    expect(child.size).toBe(4 << 20);
  });

  it('grows the refcount table when the image outgrows it', async () => {
    const raw = tmp.path(`g${n++}.raw`);
    const size = 24 * 1024 * 1024;
    patternedRaw(raw, size, []);
    const img = tmp.path(`g${n++}.qcow2`);
    // 512-byte clusters with 64-bit refcounts: one refcount block covers 32 KiB, one table cluster 2 MiB.
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=64', img, String(size)]);
    const rtField = () => {
      const fd = openSync(img, 'r');
      const b = Buffer.alloc(12);
      readSync(fd, b, 0, 12, 48);
      closeSync(fd);
      return [Number(b.readBigUInt64BE(0)), b.readUInt32BE(8)];
    };
    const before = rtField();
    await writeBoth(img, raw, [[0, 20 * 1024 * 1024]]);
    expect(rtField()).not.toEqual(before);
    expect(rtField()[1]).toBeGreaterThan(before[1]!);
    expectCheckClean(img);
    expectIdentical(img, raw);
  });

  it('refuses to open for writing an image marked corrupt', async () => {
    const img = tmp.path(`corrupt${n++}.qcow2`);
    qemuImg(['create', '-q', '-f', 'qcow2', img, '1M']);
    const fd = openSync(img, 'r+');
    writeSync(fd, Buffer.from([2]), 0, 1, 79);
    closeSync(fd);
    const e = await openImage(img, { writable: true }).catch((x: unknown) => x);
    expect((e as ImageError).kind).toBe('unsupported');
    const ro = await openImage(img);
    await ro.image.close();
  });

  it('refuses to write into an image with persistent bitmaps rather than invalidate them', async () => {
    const img = tmp.path(`bm${n++}.qcow2`);
    qemuImg(['create', '-q', '-f', 'qcow2', img, '4M']);
    qemuImg(['bitmap', '--add', img, 'b0']);
    const e = await openImage(img, { writable: true }).catch((x: unknown) => x);
    expect((e as ImageError).kind).toBe('unsupported');
    expect((e as ImageError).message).toContain('bitmaps');
    expectCheckClean(img);
  });

  it('handles concurrent writes to disjoint ranges, including inside one cluster', async () => {
    const raw = tmp.path(`cc${n++}.raw`);
    patternedRaw(raw, SIZE, [[0, SIZE]]);
    const img = tmp.path(`cc${n++}.qcow2`);
    qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, img]);
    const opened = await openImage(img, { writable: true });
    const fd = openSync(raw, 'r+');
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 64; i++) {
      const off = i * 37 * 1024 + (i % 3) * 512;
      const data = pattern(4096, 500 + i);
      writeSync(fd, data, 0, data.length, off);
      jobs.push(opened.image.write(data, off));
    }
    await Promise.all(jobs);
    closeSync(fd);
    await opened.image.close();
    expectCheckClean(img);
    expectIdentical(img, raw);
  });

  for (const [what, o, c] of [
    ['a compressed image with 4k clusters', 'cluster_size=4k', true],
    ['an extended-L2 image', 'extended_l2=on,cluster_size=32k', false],
    ['a version 2 image with 512-byte clusters', 'compat=0.10,cluster_size=512', false],
    ['an image with 2-bit refcounts', 'refcount_bits=2', false],
  ] as Array<[string, string, boolean]>) {
    it(`survives a few hundred random concurrent writes and zeroes into ${what}`, async () => {
      const raw = sourceRaw();
      const img = tmp.path(`rnd${n++}.qcow2`);
      qemuImg(['convert', ...(c ? ['-c'] : []), '-f', 'raw', '-O', 'qcow2', '-o', o, raw, img]);
      const opened = await openImage(img, { writable: true });
      const fd = openSync(raw, 'r+');
      let seed = 0x9e3779b9;
      const rnd = (m: number) => {
        seed ^= seed << 13;
        seed >>>= 0;
        seed ^= seed >>> 17;
        seed ^= seed << 5;
        seed >>>= 0;
        return seed % m;
      };
      for (let batch = 0; batch < 60; batch++) {
        // Four disjoint ranges at once: the image is split into four quarters.
        const quarter = Math.floor(SIZE / 4);
        const jobs: Promise<void>[] = [];
        for (let q = 0; q < 4; q++) {
          const len = 1 + rnd(rnd(2) ? 4096 : 200 * 1024);
          const off = q * quarter + rnd(quarter - len);
          if (rnd(4) === 0) {
            writeSync(fd, new Uint8Array(len), 0, len, off);
            jobs.push(opened.image.writeZeroes(off, len));
          } else {
            const d = rnd(5) === 0 ? new Uint8Array(len) : pattern(len, batch * 4 + q + 1);
            writeSync(fd, d, 0, len, off);
            jobs.push(opened.image.write(d, off));
          }
        }
        await Promise.all(jobs);
      }
      closeSync(fd);
      await opened.image.close();
      expectCheckClean(img);
      expectIdentical(img, raw);
    });
  }

  it('keeps a -c image valid under random concurrent writes, partial and whole clusters, through the creating handle', async () => {
    const img = tmp.path(`rc${n++}.qcow2`);
    const raw = tmp.path(`rc${n++}.raw`);
    patternedRaw(raw, SIZE, []);
    const created = await createImage(img, 'qcow2', { size: SIZE, options: { cluster_size: '16k' }, compress: true });
    const fd = openSync(raw, 'r+');
    let seed = 12345;
    const rnd = (m: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return (seed >>> 8) % m;
    };
    for (let batch = 0; batch < 50; batch++) {
      const quarter = Math.floor(SIZE / 4);
      const jobs: Promise<void>[] = [];
      for (let q = 0; q < 4; q++) {
        const whole = rnd(2) === 0;
        const len = whole ? 16384 * (1 + rnd(8)) : 1 + rnd(40000);
        const off = whole ? Math.floor((q * quarter + rnd(quarter - len - 16384)) / 16384) * 16384 + (q === 0 ? 0 : 16384) : q * quarter + rnd(quarter - len);
        const d = rnd(3) === 0 ? new Uint8Array(len).fill(0x61 + q) : pattern(len, batch * 4 + q + 1);
        writeSync(fd, d, 0, len, off);
        jobs.push(created.image.write(d, off));
      }
      await Promise.all(jobs);
    }
    closeSync(fd);
    await created.image.close();
    await created.output.commit();
    expectCheckClean(img);
    expectIdentical(img, raw);
    expect(qemuCheck(img, 'qcow2').json!['compressed-clusters']).toBeGreaterThan(0);
  });

  it('creates through createImage and leaves no temporary file on success', async () => {
    const img = tmp.path(`ci${n++}.qcow2`);
    const created = await createImage(img, 'qcow2', { size: 1 << 20, options: {} });
    await created.image.write(pattern(65536, 3), 0);
    await created.image.close();
    await created.output.commit();
    expectCheckClean(img);
  });
});
