/**
 * `npm run fuzz`, bounded: a fixed-seed slice of mutated images of every
 * format (seeds made by qemu-img), each read in the fuzz worker, plus a
 * differential slice against qemu-img convert. Fails on any crash, hang,
 * memory blow-up, modified input or data difference. The self-checks prove
 * the classification can fail: fake drivers that throw, loop, allocate
 * without bound or write their input are caught as what they are.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DRIVERS } from '../src/formats/index.js';
import { encodeHeader, type Qcow2Header } from '../src/formats/qcow2/header.js';
import { DEFAULTS, type FuzzOptions, runFuzz } from '../src/fuzz/engine.js';
import { mutate, readUint } from '../src/fuzz/mutate.js';
import { Rng } from '../src/fuzz/rng.js';
import { failures, formatSummary } from '../src/fuzz/summary.js';
import { QCOW2_FIELDS_V2, QCOW2_FIELDS_V3 } from '../src/fuzz/targets/qcow2.js';
import { allTargets } from '../src/fuzz/targets/index.js';
import type { FuzzTarget } from '../src/fuzz/types.js';
import { peer, tempDir } from './helpers/peers.js';

const tmp = tempDir('imgtool-fuzz-test-');
afterAll(() => tmp.cleanup());

function options(name: string, over: Partial<FuzzOptions>): FuzzOptions {
  const scratch = tmp.path(name);
  return {
    seed: 1,
    scratch,
    findings: path.join(scratch, 'findings'),
    diffRate: 0,
    timeoutMs: DEFAULTS.timeoutMs,
    heapMiB: DEFAULTS.heapMiB,
    rssMiB: DEFAULTS.rssMiB,
    limits: DEFAULTS.limits,
    keepNotes: 5,
    ...over,
  };
}

describe('fuzz: the CI slice', () => {
  it('reads 2,000 mutated images of every format (raw, qcow, qcow2, VDI, VMDK, VHD, VHDX) with no crash, hang, memory blow-up, modified input or data different from qemu-img', async () => {
    const report = await runFuzz(
      options('slice', { seed: 20261206, cases: 2000, diffRate: 0.05, qemuImg: peer('qemu-img'), qemuIo: peer('qemu-io') }),
    );
    const summary = formatSummary(report);
    expect(failures(report), summary).toBe(0);
    expect(report.cases).toBe(2000);
    for (const format of allTargets().map((t) => t.format)) {
      const s = report.stats.get(format);
      expect(s?.cases, `${format}\n${summary}`).toBeGreaterThan(40);
      if (format !== 'raw') {
        // The mutations reach both sides: images that still read, and images refused with an ImageError.
        expect(s!.byClass.ok, summary).toBeGreaterThan(0);
        expect(s!.byClass.rejected, summary).toBeGreaterThan(0);
      }
    }
    // The differential slice compared real data with qemu-img's.
    const same = [...report.stats.values()].reduce((a, s) => a + s.diff.same, 0);
    expect(same, summary).toBeGreaterThan(10);
  }, 300_000);
});

describe('fuzz: structure and determinism', () => {
  it("places qcow2 header fields where the format's encodeHeader writes them", () => {
    const h: Qcow2Header = {
      version: 3, backingFileOffset: 0, backingFileSize: 0, clusterBits: 16, size: 0x123456789a00, cryptMethod: 0,
      l1Size: 0x1234, l1TableOffset: 0x30000, refcountTableOffset: 0x10000, refcountTableClusters: 3, nbSnapshots: 7,
      snapshotsOffset: 0x70000, incompatible: 0x10, incompatibleHigh: 0, compatible: 1, compatibleHigh: 0, autoclear: 2,
      autoclearHigh: 0, refcountOrder: 5, headerLength: 112, compressionType: 1, featureNames: [], hasBitmaps: false,
    };
    const b = encodeHeader(h);
    const want: Record<string, number> = {
      magic: 0x514649fb, version: 3, backing_file_offset: 0, backing_file_size: 0, cluster_bits: 16, size: h.size,
      crypt_method: 0, l1_size: h.l1Size, l1_table_offset: h.l1TableOffset, refcount_table_offset: h.refcountTableOffset,
      refcount_table_clusters: 3, nb_snapshots: 7, snapshots_offset: h.snapshotsOffset, incompatible_features: 0x10,
      compatible_features: 1, autoclear_features: 2, refcount_order: 5, header_length: 112, compression_type: 1,
    };
    for (const f of [...QCOW2_FIELDS_V2, ...QCOW2_FIELDS_V3]) {
      expect(Number(readUint(b, f.offset, f.size, f.endian)), f.name).toBe(want[f.name]);
    }
  });

  it('has a target for every format imgtool reads (OVA is a tar of images the other targets cover)', () => {
    const readers = DRIVERS.map((d) => d.name).filter((n) => n !== 'ova');
    expect(allTargets().map((t) => t.format).sort()).toEqual(readers.sort());
  });

  it('mutates the same way for the same (seed, case) and differently for another case', () => {
    const seed = new Uint8Array(8192).map((_, i) => i * 7);
    const layout = {
      fields: [{ name: 'f', offset: 8, size: 8 as const, endian: 'be' as const }],
      tables: [{ name: 't', offset: 1024, count: 64, entrySize: 8 as const, endian: 'be' as const, pointsTo: 'offset' as const }],
      regions: [],
      unit: 512,
    };
    const a = mutate(new Rng(5, 17), seed, layout);
    const b = mutate(new Rng(5, 17), seed, layout);
    expect(Buffer.compare(a.bytes, b.bytes)).toBe(0);
    expect(a.mutations).toEqual(b.mutations);
    const others = [18, 19, 20, 21].map((i) => mutate(new Rng(5, i), seed, layout));
    expect(others.some((o) => Buffer.compare(o.bytes, a.bytes) !== 0)).toBe(true);
  });
});

/** A fake driver module that misbehaves in one way; the worker opens cases with it. */
function fakeTarget(dir: string, name: string, body: string, qemuFormat?: string): FuzzTarget {
  fs.mkdirSync(dir, { recursive: true });
  const errors = new URL('../dist/core/errors.js', import.meta.url).href;
  const module = path.join(dir, `${name}.mjs`);
  fs.writeFileSync(
    module,
    `import * as fs from 'node:fs';
import { ImageError } from ${JSON.stringify(errors)};
void fs; void ImageError;
export const driver = {
  name: ${JSON.stringify(name)}, extensions: [], probe: () => false,
  async open(child, opts) {
    return {
      format: ${JSON.stringify(name)}, size: child.size, readOnly: true,
      async read(buf, offset) { ${body} },
      async status(offset, length) { return { offset, length, kind: 'data' }; },
      async info() { return { format: ${JSON.stringify(name)}, 'virtual-size': child.size }; },
      async write() {}, async writeZeroes() {}, async flush() {},
      async close() { await child.close(); },
    };
  },
};
`,
  );
  return {
    format: name,
    driverModule: module,
    qemuFormat,
    async buildSeeds(ctx) {
      const file = path.join(ctx.dir, `${name}.img`);
      fs.writeFileSync(file, new Uint8Array(4096).fill(1));
      return [{ name, format: name, path: file }];
    },
    async layout() {
      return { fields: [], tables: [], regions: [], unit: 512 };
    },
  };
}

describe('fuzz: the classification can fail', () => {
  const cases: [string, string, string][] = [
    ['fine', 'buf.fill(0);', 'ok'],
    ['refuses', "throw new ImageError('corrupt', 'bad table', { field: 'x' });", 'rejected'],
    ['throws-typeerror', 'null.x;', 'crash'],
    ['loops', 'for (;;) {}', 'hang'],
    ['never-answers', 'await new Promise(() => {});', 'hang'],
    ['grows-heap', 'const a = []; for (;;) a.push(new Array(1e5).fill(offset));', 'memory'],
    ['grows-buffers', 'const a = []; for (;;) { a.push(Buffer.alloc(32 << 20, 1)); await new Promise((r) => setTimeout(r, 5)); }', 'memory'],
    ['writes-input', "fs.appendFileSync(opts?.path ?? '', 'x'); buf.fill(0);", 'modified'],
    ['stray-rejection', "Promise.reject(new RangeError('late')); buf.fill(0); await new Promise((r) => setTimeout(r, 50));", 'crash'],
    ['throws-after-replying', "buf.fill(0); if (offset === 0) setImmediate(() => { throw new RangeError('later'); });", 'crash'],
  ];
  it.each(cases)('a driver that %s is classified as expected and saved as a finding', async (name, body, want) => {
    const dir = tmp.path(`fake-${name}`);
    const target = fakeTarget(path.join(dir, 'module'), name, body);
    const report = await runFuzz(options(`fake-${name}`, { targets: [target], cases: 2, timeoutMs: 3000, heapMiB: 64, rssMiB: 256 }));
    const s = report.stats.get(name)!;
    expect(s.byClass[want], formatSummary(report)).toBe(2);
    const failing = ['crash', 'hang', 'memory', 'modified'].includes(want);
    expect(failures(report) > 0).toBe(failing);
    expect(report.findings.length).toBe(failing ? 2 : 0);
    for (const f of report.findings) {
      expect(fs.existsSync(f.image)).toBe(true);
      const saved = JSON.parse(fs.readFileSync(f.image.replace(/\.img$/, '.json'), 'utf8'));
      expect(saved.class).toBe(want);
      expect(saved.mutations.length).toBeGreaterThan(0);
      expect(saved.reproduce).toContain(`--case ${f.caseIndex}`);
    }
  }, 60_000);
});

describe('fuzz: the differential slice can fail', () => {
  it('counts a driver whose bytes differ from qemu-img\'s as `differs` and saves the case', async () => {
    const body = 'await child.read(buf, offset); if (offset === 0 && buf.length > 0) buf[0] ^= 0xff;';
    const target = fakeTarget(tmp.path('fake-lies/module'), 'lies', body, 'raw');
    const report = await runFuzz(options('fake-lies', { targets: [target], cases: 2, diffRate: 1, qemuImg: peer('qemu-img') }));
    const s = report.stats.get('lies')!;
    expect(s.diff.differs, formatSummary(report)).toBe(2);
    expect(failures(report)).toBe(2);
    expect(report.findings.map((f) => f.class)).toEqual(['differs', 'differs']);
    expect(report.findings[0]!.detail).toContain('first different byte at 0');
  }, 60_000);
});
