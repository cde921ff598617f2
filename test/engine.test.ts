/**
 * The shared engine for mapped formats, driven by a toy format whose table
 * is a Map: reads, status, writes with copy-on-write of partial clusters,
 * zero writes, compressed clusters, data-before-metadata order, concurrent
 * writers inside one new cluster, the bounded table cache.
 */
import { describe, expect, it } from 'vitest';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { extents } from '../src/core/device.js';
import { ImageError } from '../src/core/errors.js';
import { MemoryDevice } from '../src/core/memory.js';
import { FileDevice } from '../src/core/file.js';
import { statSync } from 'node:fs';
import { MappedDevice, TableCache, compressCluster, decompressCluster, type Mapping, type MappedFormat } from '../src/formats/engine/index.js';
import { pattern } from './helpers/devices.js';
import { tempDir } from './helpers/peers.js';

const CS = 4096;

type Entry = { host: number; shared?: boolean } | 'zero' | { host: number; stored: number };

/** A toy mapped format: one Map entry per cluster, clusters appended to the container. */
class Toy implements MappedFormat {
  readonly name = 'toy';
  readonly clusterSize = CS;
  readonly table = new Map<number, Entry>();
  readonly log: string[] = [];
  next = 0;
  constructor(
    readonly size: number,
    private readonly zeroable = true,
  ) {}
  async lookup(offset: number, length: number): Promise<Mapping> {
    const c = Math.floor(offset / CS);
    const within = offset - c * CS;
    const n = Math.min(length, CS - within);
    const e = this.table.get(c);
    if (e === undefined) return { kind: 'unallocated', length: n };
    if (e === 'zero') return { kind: 'zero', length: n };
    if ('stored' in e) return { kind: 'compressed', length: n, host: e.host, stored: e.stored, codec: 'deflate' };
    return { kind: 'data', length: n, host: e.host + within, ...(e.shared ? { shared: true } : {}) };
  }
  async allocate(): Promise<number> {
    const h = this.next;
    this.next += CS;
    this.log.push(`allocate ${h}`);
    return h;
  }
  async commit(offset: number, host: number): Promise<void> {
    this.log.push(`commit ${host}`);
    this.table.set(Math.floor(offset / CS), { host });
  }
  readonly writeCodec = 'deflate' as const;
  async allocateCompressed(_offset: number, stored: number): Promise<number> {
    const h = this.next;
    this.next += stored;
    return h;
  }
  async commitCompressed(offset: number, host: number, stored: number): Promise<void> {
    this.table.set(Math.floor(offset / CS), { host, stored });
  }
  async markZero(offset: number): Promise<boolean> {
    if (!this.zeroable) return false;
    this.table.set(Math.floor(offset / CS), 'zero');
    return true;
  }
}

/** The toy with whole-cluster runs: one host range per run, merged data runs, and a host end for growAhead. */
class ToyRun extends Toy {
  override async lookup(offset: number, length: number): Promise<Mapping> {
    const first = await super.lookup(offset, length);
    if (first.kind === 'compressed') return first;
    // Merge following clusters of the same kind (data: contiguous on the host, same sharing).
    let len = first.length;
    while (len < length) {
      const next = await super.lookup(offset + len, length - len);
      if (next.kind !== first.kind) break;
      if (next.kind === 'data' && first.kind === 'data' && (next.host !== first.host + len || !!next.shared !== !!first.shared)) break;
      len += next.length;
    }
    return { ...first, length: len };
  }
  async allocateRun(offset: number, clusters: number): Promise<number> {
    const h = this.next;
    this.next += clusters * CS;
    this.log.push(`allocateRun ${offset / CS}+${clusters} at ${h}`);
    return h;
  }
  async commitRun(offset: number, clusters: number, host: number): Promise<void> {
    this.log.push(`commitRun ${host}`);
    for (let k = 0; k < clusters; k++) this.table.set(offset / CS + k, { host: host + k * CS });
  }
  hostEnd(): number {
    return this.next;
  }
}

/** A container that logs writes, to check data lands before the table points at it. */
function loggingContainer(toy: Toy): MemoryDevice {
  const dev = new MemoryDevice(0, { growable: true });
  const write = dev.write.bind(dev);
  dev.write = async (buf, offset) => {
    toy.log.push(`data ${offset}`);
    return write(buf, offset);
  };
  return dev;
}

describe('shared engine', () => {
  it('random writes, zero writes and partial clusters read back like a plain memory device', async () => {
    for (const zeroable of [true, false]) {
      const size = 40 * CS + 100;
      const toy = new Toy(size, zeroable);
      const dev = new MappedDevice(toy, { container: new MemoryDevice(0, { growable: true }), writable: true, zeroInit: true });
      const ref = new Uint8Array(size);
      let seed = 7;
      const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n;
      for (let k = 0; k < 200; k++) {
        const off = rnd(size);
        const len = 1 + rnd(Math.min(3 * CS, size - off));
        if (rnd(4) === 0) {
          await dev.writeZeroes(off, len);
          ref.fill(0, off, off + len);
        } else {
          const data = pattern(len, k + 1);
          await dev.write(data, off);
          ref.set(data, off);
        }
      }
      const got = new Uint8Array(size);
      await dev.read(got, 0);
      expect(Buffer.compare(got, ref)).toBe(0);
      let covered = 0;
      for await (const e of extents(dev)) covered += e.length;
      expect(covered).toBe(size);
      if (zeroable) expect([...toy.table.values()]).toContain('zero');
    }
  });

  it('copy-on-write fills a partial cluster from the backing file, then data is written before the table entry', async () => {
    const backing = MemoryDevice.from(pattern(8 * CS, 99));
    const toy = new Toy(8 * CS);
    const dev = new MappedDevice(toy, { container: loggingContainer(toy), writable: true, backing });
    await dev.write(pattern(100, 5), 3 * CS + 1000);
    const got = new Uint8Array(CS);
    await dev.read(got, 3 * CS);
    const want = pattern(8 * CS, 99).slice(3 * CS, 4 * CS);
    want.set(pattern(100, 5), 1000);
    expect(Buffer.compare(got, want)).toBe(0);
    expect(toy.log).toEqual(['allocate 0', 'data 0', 'commit 0']);
    // Unallocated runs report the backing file's status; allocated ones report data.
    expect((await dev.status(0, CS)).kind).toBe('data');
    expect((await dev.status(3 * CS, CS)).kind).toBe('data');
  });

  it('two writers to disjoint halves of one new cluster both land (allocation is serialised, the second sees the first)', async () => {
    const toy = new Toy(4 * CS);
    const dev = new MappedDevice(toy, { container: new MemoryDevice(0, { growable: true }), writable: true });
    const a = pattern(CS / 2, 1);
    const b = pattern(CS / 2, 2);
    await Promise.all([dev.write(a, CS), dev.write(b, CS + CS / 2)]);
    const got = new Uint8Array(CS);
    await dev.read(got, CS);
    expect(Buffer.compare(got.subarray(0, CS / 2), a)).toBe(0);
    expect(Buffer.compare(got.subarray(CS / 2), b)).toBe(0);
    expect(toy.next).toBe(CS); // one cluster allocated, not two
  });

  it('reads compressed clusters (any part of them) and rewrites them as data on a partial write', async () => {
    const plain = pattern(CS, 42);
    const stored = deflateRawSync(plain);
    const container = new MemoryDevice(0, { growable: true });
    await container.write(stored, 0);
    const toy = new Toy(2 * CS);
    toy.next = CS;
    toy.table.set(0, { host: 0, stored: stored.length });
    const dev = new MappedDevice(toy, { container, writable: true });
    const part = new Uint8Array(300);
    await dev.read(part, 1000);
    expect(Buffer.compare(part, plain.subarray(1000, 1300))).toBe(0);
    expect((await dev.status(0, CS)).kind).toBe('data');
    await dev.write(new Uint8Array([1, 2, 3]), 10);
    const all = new Uint8Array(CS);
    await dev.read(all, 0);
    const want = plain.slice();
    want.set([1, 2, 3], 10);
    expect(Buffer.compare(all, want)).toBe(0);
  });

  it('with compress, new clusters are stored compressed when they shrink, as data when they do not, and read back', async () => {
    const size = 16 * CS;
    const toy = new Toy(size);
    const dev = new MappedDevice(toy, { container: new MemoryDevice(0, { growable: true }), writable: true, compress: true });
    const ref = new Uint8Array(size);
    const text = new TextEncoder().encode('compressible '.repeat(4 * CS)).subarray(0, 8 * CS);
    await dev.write(text, 0);
    ref.set(text, 0);
    const noise = pattern(4 * CS, 77);
    await dev.write(noise, 8 * CS);
    ref.set(noise, 8 * CS);
    await dev.write(new Uint8Array([9, 9]), 12 * CS + 5); // a partial cluster: COW, then compressed
    ref.set([9, 9], 12 * CS + 5);
    const got = new Uint8Array(size);
    await dev.read(got, 0);
    expect(Buffer.compare(got, ref)).toBe(0);
    const kinds = [...Array(13).keys()].map((c) => {
      const e = toy.table.get(c);
      return e === undefined || e === 'zero' ? String(e) : 'stored' in e ? 'compressed' : 'data';
    });
    expect(kinds).toEqual([...Array(8).fill('compressed'), ...Array(4).fill('data'), 'compressed']);
  });

  it('corrupt compressed data is an ImageError naming the cluster, not a crash', async () => {
    const container = MemoryDevice.from(new Uint8Array(64).fill(0xff));
    const toy = new Toy(CS);
    toy.table.set(0, { host: 0, stored: 64 });
    const dev = new MappedDevice(toy, { container });
    const err = await dev.read(new Uint8Array(10), 0).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageError);
    expect((err as ImageError).kind).toBe('corrupt');
    expect((err as ImageError).context.field).toBe('compressed cluster');
  });

  it('a read-only image refuses writes', async () => {
    const dev = new MappedDevice(new Toy(CS), { container: new MemoryDevice(0) });
    await expect(dev.write(new Uint8Array(1), 0)).rejects.toBeInstanceOf(ImageError);
  });
});

describe('shared engine: whole-cluster runs, shared clusters, data device, growing ahead', () => {
  it('a write over several whole new clusters takes one host range, one data write, then one commit; edges go cluster by cluster', async () => {
    const toy = new ToyRun(64 * CS);
    const dev = new MappedDevice(toy, { container: loggingContainer(toy), writable: true });
    const data = pattern(10 * CS + 300, 3);
    await dev.write(data, 2 * CS - 100); // 100 bytes into cluster 1, clusters 2..11 whole, 200 bytes into cluster 12
    expect(toy.log).toEqual([
      'allocate 0', 'data 0', 'commit 0',
      `allocateRun 2+10 at ${CS}`, `data ${CS}`, `commitRun ${CS}`,
      `allocate ${11 * CS}`, `data ${11 * CS}`, `commit ${11 * CS}`,
    ]);
    const got = new Uint8Array(data.length);
    await dev.read(got, 2 * CS - 100);
    expect(Buffer.compare(got, data)).toBe(0);
    // Over allocated data: in place, one write for the contiguous run.
    toy.log.length = 0;
    await dev.write(pattern(10 * CS, 4), 2 * CS);
    expect(toy.log).toEqual([`data ${CS}`]);
  });

  it('random concurrent writes with runs read back like a plain memory device, and no host space is handed out twice', async () => {
    const size = 96 * CS;
    const toy = new ToyRun(size);
    const dev = new MappedDevice(toy, { container: new MemoryDevice(0, { growable: true }), writable: true, zeroInit: true });
    const ref = new Uint8Array(size);
    let seed = 11;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) % n;
    for (let round = 0; round < 30; round++) {
      // Four disjoint requests in flight at once (the formats/types.ts contract), some sharing a cluster.
      const jobs: Array<Promise<void>> = [];
      const start = (q: number) => (q === 4 ? size : q * 24 * CS + (q ? 2000 : 0)); // windows meet inside a cluster
      for (let q = 0; q < 4; q++) {
        const off = start(q) + rnd(12 * CS);
        const len = 1 + rnd(start(q + 1) - off);
        const buf = pattern(len, round * 4 + q + 1);
        ref.set(buf, off);
        jobs.push(dev.write(buf, off));
      }
      await Promise.all(jobs);
    }
    const got = new Uint8Array(size);
    await dev.read(got, 0);
    expect(Buffer.compare(got, ref)).toBe(0);
    // Every cluster was placed once: host space is never handed out twice.
    const hosts = [...toy.table.values()].map((e) => (e as { host: number }).host);
    expect(new Set(hosts).size).toBe(hosts.length);
    expect(toy.log.some((l) => l.startsWith('allocateRun'))).toBe(true);
  });

  it('a shared cluster is copied, never written in place: the other table still reads the old bytes', async () => {
    const old = pattern(4 * CS, 8);
    const container = new MemoryDevice(0, { growable: true });
    await container.write(old, 0);
    for (const toy of [new Toy(8 * CS), new ToyRun(8 * CS)]) {
      toy.next = 4 * CS;
      for (let c = 0; c < 4; c++) toy.table.set(c, { host: c * CS, shared: true });
      const dev = new MappedDevice(toy, { container, writable: true, ownsContainer: false });
      await dev.write(new Uint8Array([7, 7, 7]), CS + 10); // partial: copy-on-write of cluster 1
      await dev.write(pattern(2 * CS, 9), 2 * CS); // whole clusters 2 and 3
      const want = old.slice();
      want.set([7, 7, 7], CS + 10);
      want.set(pattern(2 * CS, 9), 2 * CS);
      const got = new Uint8Array(4 * CS);
      await dev.read(got, 0);
      expect(Buffer.compare(got, want)).toBe(0);
      const first = new Uint8Array(4 * CS);
      await container.read(first, 0);
      expect(Buffer.compare(first, old)).toBe(0); // the shared host clusters are untouched
      expect((toy.table.get(0) as { host: number }).host).toBe(0);
      for (const c of [1, 2, 3]) expect((toy.table.get(c) as { host: number }).host).toBeGreaterThanOrEqual(4 * CS);
    }
  });

  it('data runs live on the data device when one is given; compressed ones stay in the container', async () => {
    const toy = new ToyRun(8 * CS);
    const container = new MemoryDevice(0, { growable: true });
    const data = new MemoryDevice(0, { growable: true });
    const dev = new MappedDevice(toy, { container, data, writable: true });
    await dev.write(pattern(3 * CS, 5), 0);
    await dev.write(new Uint8Array([1]), 5 * CS);
    expect(container.size).toBe(0);
    expect(data.size).toBe(4 * CS);
    const got = new Uint8Array(3 * CS);
    await dev.read(got, 0);
    expect(Buffer.compare(got, pattern(3 * CS, 5))).toBe(0);
  });

  it('skipZeroWrites: zeros onto clusters that read as zero store nothing, and a run stops at a zero cluster', async () => {
    const toy = new ToyRun(16 * CS);
    const dev = new MappedDevice(toy, { container: new MemoryDevice(0, { growable: true }), writable: true, skipZeroWrites: true });
    await dev.write(new Uint8Array(6 * CS + 100), CS - 50); // all zeros: partial, whole run, partial
    expect(toy.next).toBe(0);
    const mixed = pattern(6 * CS, 2);
    mixed.fill(0, 2 * CS, 3 * CS); // cluster 10 of the write is zero
    await dev.write(mixed, 8 * CS);
    expect([...toy.table.keys()].sort((a, b) => a - b)).toEqual([8, 9, 11, 12, 13]);
    expect(toy.log.filter((l) => l.startsWith('allocateRun'))).toEqual([`allocateRun 8+2 at 0`, `allocateRun 11+3 at ${2 * CS}`]);
    const got = new Uint8Array(6 * CS);
    await dev.read(got, 8 * CS);
    expect(Buffer.compare(got, mixed)).toBe(0);
    // Without the option, zeros are stored like any data (the engine's default).
    const plain = new ToyRun(4 * CS);
    await new MappedDevice(plain, { container: new MemoryDevice(0, { growable: true }), writable: true }).write(new Uint8Array(2 * CS), 0);
    expect(plain.next).toBe(2 * CS);
  });

  it('unallocatedPastBacking: status past the backing file\'s end says unallocated instead of zero', async () => {
    const backing = MemoryDevice.from(pattern(2 * CS, 1));
    for (const [opt, kind] of [[false, 'zero'], [true, 'unallocated']] as const) {
      const dev = new MappedDevice(new ToyRun(4 * CS), { container: new MemoryDevice(0), backing, unallocatedPastBacking: opt, ownsContainer: false });
      expect((await dev.status(0, 4 * CS)).kind).toBe('data');
      expect(await dev.status(2 * CS, 2 * CS)).toEqual({ offset: 2 * CS, length: 2 * CS, kind });
    }
  });

  it('growAhead extends a growable file in steps ahead of the writes and trims it to the host end at close', async () => {
    const t = tempDir();
    try {
      const file = await FileDevice.open(t.path('c.img'), { create: true });
      const toy = new ToyRun(64 * CS);
      const dev = new MappedDevice(toy, { container: file, writable: true, growAhead: true });
      await dev.write(pattern(5 * CS, 1), 0);
      expect(file.size).toBeGreaterThanOrEqual(64 << 20); // grown ahead, not to 5 clusters
      await dev.write(pattern(100, 2), 20 * CS);
      await dev.close();
      expect(statSync(t.path('c.img')).size).toBe(6 * CS);
      const back = await FileDevice.open(t.path('c.img'));
      const got = new Uint8Array(5 * CS);
      await back.read(got, 0);
      expect(Buffer.compare(got, pattern(5 * CS, 1))).toBe(0);
      await back.close();
    } finally {
      t.cleanup();
    }
  });
});

describe('table cache', () => {
  it('holds at most its capacity, drops the least recently used, and loads a key once for concurrent callers', async () => {
    const c = new TableCache<number>(2);
    let loads = 0;
    const load = (v: number) => async () => {
      loads++;
      return v;
    };
    const [x, y] = await Promise.all([c.get(1, load(10)), c.get(1, load(10))]);
    expect([x, y, loads]).toEqual([10, 10, 1]);
    await c.get(2, load(20));
    await c.get(1, load(10)); // 1 is now most recent
    await c.get(3, load(30)); // evicts 2
    expect(c.size).toBe(2);
    expect(c.peek(2)).toBeUndefined();
    expect(c.peek(1)).toBe(10);
  });
});

describe('codecs', () => {
  const text = new TextEncoder().encode('a cluster of text that compresses well; '.repeat(4000)).subarray(0, 65536);

  it('deflate is written with a window qemu inflates (4 KiB), zstd as one frame; both decode back, on the pool', async () => {
    const d = await compressCluster('deflate', text);
    expect(d.length).toBeLessThan(text.length);
    // qemu inflates qcow/qcow2 clusters with inflateInit2(-12): a larger window fails there.
    expect(Buffer.compare(inflateRawSync(d, { windowBits: 12 }), text)).toBe(0);
    const z = await compressCluster('zstd', text);
    expect(Buffer.from(z).readUInt32LE(0)).toBe(0xfd2fb528);
    for (const [codec, stored] of [['deflate', d], ['zstd', z]] as const) {
      const out = await decompressCluster('toy', codec, stored, text.length, 0, { exact: true });
      expect(Buffer.compare(out, text)).toBe(0);
    }
  });

  it('exact decoding fails a short cluster with the guest offset in the message; zstd must fill the cluster', async () => {
    const half = text.subarray(0, 32768);
    for (const codec of ['deflate', 'zstd'] as const) {
      const stored = await compressCluster(codec, half);
      const err = await decompressCluster('toy', codec, stored, text.length, 512, { guest: 65536, exact: codec === 'deflate' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ImageError);
      expect((err as ImageError).kind).toBe('corrupt');
      expect((err as ImageError).message).toMatch(/guest offset 65536 \(host offset 512\)/);
    }
    // Without `exact`, deflate gives what the stream holds (VMDK grains may be short).
    expect((await decompressCluster('toy', 'deflate', await compressCluster('deflate', half), text.length, 0)).length).toBe(32768);
  });
});
