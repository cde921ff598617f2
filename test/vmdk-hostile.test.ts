/**
 * Hostile VMDKs: the fields qemu's iotests 059 pokes (grain size, GTEs per
 * GT, GD offset, capacity, descriptor size, extent counts), grain table
 * entries, stream markers that lie, footers that are missing; descriptors
 * naming files outside their directory. Each ends in an ImageError naming
 * the field, quickly, with memory bounded, and no outside file is opened.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { put32le, put64le, u32le, u64le } from '../src/core/bytes.js';
import { vmdk } from '../src/formats/vmdk/index.js';
import { SparseHeader } from '../src/formats/vmdk/header.js';
import { exercise, expectFieldError } from './helpers/hostile.js';
import { imgtool, must, tempDir } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

const t = tempDir('imgtool-vmdk-hostile-');
afterAll(() => t.cleanup());
const MiB = 1 << 20;
let sparse: Uint8Array;
let stream: Uint8Array;
let ours: Uint8Array;

const at = (f: string) => SparseHeader.offsetOf(f as never);
function mutate(base: Uint8Array, fn: (b: Uint8Array) => void): Uint8Array {
  const b = base.slice();
  fn(b);
  return b;
}

beforeAll(() => {
  const raw = t.path('src.raw');
  const data = new Uint8Array(8 * MiB);
  data.set(pattern(300_000, 3), 4096);
  data.set(pattern(70_000, 4), 6 * MiB);
  writeFileSync(raw, data);
  for (const [name, opts] of [['sparse', 'subformat=monolithicSparse'], ['stream', 'subformat=streamOptimized']] as const) {
    must('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', opts, raw, t.path(`${name}.vmdk`)]); // 8 MiB: well under a second
  }
  sparse = new Uint8Array(readFileSync(t.path('sparse.vmdk')));
  stream = new Uint8Array(readFileSync(t.path('stream.vmdk')));
  expect(imgtool(['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, t.path('ours.vmdk')]).status).toBe(0);
  ours = new Uint8Array(readFileSync(t.path('ours.vmdk')));
});

describe('hostile sparse headers (iotests 059 fields)', () => {
  it('the unmodified images open and read', async () => {
    await exercise(vmdk, sparse);
    await exercise(vmdk, stream);
    await exercise(vmdk, ours);
  });

  it.each([
    ['grainSize', 'u64', 0xffffffffn],
    ['grainSize', 'u64', 0n],
    ['numGTEsPerGT', 'u32', 0],
    ['numGTEsPerGT', 'u32', 0x20000000],
    ['gdOffset', 'u64', 0x7ffffffffn],
    ['gdOffset', 'u64', 0n],
    ['capacity', 'u64', 1n << 62n], // past 2^53 bytes
    ['version', 'u32', 4],
    ['compressAlgorithm', 'u16', 7],
  ] as const)('%s (%s) set to %s', async (field, type, value) => {
    const b = mutate(sparse, (x) => {
      if (type === 'u64') put64le(x, at(field), value as bigint);
      else if (type === 'u32') put32le(x, at(field), value as number);
      else new DataView(x.buffer).setUint16(at(field), value as number, true);
    });
    await expectFieldError(vmdk, b, field);
  });

  it('a capacity that needs a grain directory larger than memory allows is refused by name', async () => {
    const b = mutate(sparse, (x) => {
      put64le(x, at('capacity'), 1n << 40n);
      put64le(x, at('grainSize'), 1n);
      put32le(x, at('numGTEsPerGT'), 1);
    });
    await expectFieldError(vmdk, b, 'capacity');
  });

  it('an embedded descriptor larger than the bound is refused by name', async () => {
    await expectFieldError(vmdk, mutate(sparse, (x) => put64le(x, at('descriptorSize'), 1n << 40n)), 'descriptorSize');
  });

  it('a grain directory entry pointing outside the file', async () => {
    const gd = Number(u64le(sparse, at('gdOffset'))) * 512;
    await expectFieldError(vmdk, mutate(sparse, (x) => put32le(x, gd, 0x7fffffff)), 'grain directory entry 0', 'corrupt');
  });

  it('a grain table entry pointing past the end of the file', async () => {
    const gd = Number(u64le(sparse, at('gdOffset'))) * 512;
    const gt = u32le(sparse, gd) * 512;
    const b = mutate(sparse, (x) => put32le(x, gt + 4 * 1, 0x7fffff00));
    const e = await expectFieldError(vmdk, b, 'grain table entry 1 of table 0', 'corrupt');
    expect(e.message).toMatch(/beyond the end/);
  });
});

describe('hostile stream-optimized images', () => {
  it('a grain marker whose size lies is refused by name', async () => {
    const first = Number(u64le(stream, at('overHead'))) * 512;
    expect(Number(u64le(stream, first))).toBe(0); // lba of grain 0
    await expectFieldError(vmdk, mutate(stream, (x) => put32le(x, first + 8, 0x7fffffff)), 'grain marker size', 'corrupt');
  });

  it('a grain whose marker size cuts its zlib stream short is refused, never read as zeros (qemu: uncompress fails)', async () => {
    const first = Number(u64le(stream, at('overHead'))) * 512;
    const size = u32le(stream, first + 8);
    expect(size).toBeGreaterThan(16);
    const cut = mutate(stream, (x) => put32le(x, first + 8, size - 8));
    const e = await expectFieldError(vmdk, cut, 'compressed cluster', 'corrupt');
    expect(e.message).toMatch(/zlib data is invalid/);
  });

  it('a header saying the GD is in the footer, with no footer, is refused by name', async () => {
    await expectFieldError(vmdk, ours.slice(0, ours.length - 512), 'footer marker');
    const noEos = mutate(ours, (x) => x.fill(0xaa, x.length - 512));
    await expectFieldError(vmdk, noEos, 'end-of-stream marker');
  });
});

describe('hostile descriptors', () => {
  const dir = t.path('d');
  const outside = t.path('outside');
  const watched = `${outside}/secret.fifo`;
  beforeAll(() => {
    mkdirSync(dir, { recursive: true });
    mkdirSync(outside, { recursive: true });
    // The watched file: a FIFO. Opening it for reading blocks until a writer comes, so an
    // imgtool that opened it would hang and be killed by the timeout below, failing the test.
    execFileSync('mkfifo', [watched]);
    writeFileSync(`${outside}/flat.img`, pattern(MiB, 9));
    symlinkSync(watched, `${dir}/link-out.img`);
  });
  const descriptor = (extent: string) =>
    `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 2048 FLAT "${extent}" 0\n\n#DDB\n`;

  it.each([
    ['an absolute path', () => watched],
    ['a path with ..', () => '../outside/secret.fifo'],
    ['a symlink out of the directory', () => 'link-out.img'],
  ])('%s: refused before anything outside is opened', (_what, name) => {
    const file = `${dir}/evil-${_what.replace(/\W+/g, '-')}.vmdk`;
    writeFileSync(file, descriptor(name()));
    for (const args of [['info', file], ['convert', '-O', 'raw', file, `${dir}/out.raw`]]) {
      const r = imgtool(args, { timeout: 20_000 });
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/extent file .* outside the allowed directory/);
    }
  });

  it('an extent inside the directory that is a FIFO is refused, not opened (no hang)', () => {
    execFileSync('mkfifo', [`${dir}/inside.fifo`]);
    writeFileSync(`${dir}/fifo.vmdk`, descriptor('inside.fifo'));
    const r = imgtool(['info', `${dir}/fifo.vmdk`], { timeout: 20_000 });
    expect(r.status, r.stderr).toBe(4);
    expect(r.stderr).toMatch(/extent file .*inside\.fifo is a FIFO/);
  });

  it('a descriptor file larger than the bound is refused by name', async () => {
    const big = new Uint8Array(2 << 20).fill(0x20);
    big.set(new TextEncoder().encode('# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n'));
    await expectFieldError(vmdk, big, 'descriptor size');
  });

  it.each([
    ['RW 2048 VMFS "flat.img" 1', /only FLAT extents have/],
    ['RW 2048 SPARSE "x.vmdk" 0', /only FLAT extents have/],
    ['RW 2048 FLAT "flat.img"', /FLAT extent without an offset/],
    ['RW 0 FLAT "flat.img" 0', /extent sectors '0'/],
    ['RW 99999999999999999999 FLAT "flat.img" 0', /extent sectors/],
  ])('an invalid extent line (%s) is refused by name (iotests 059)', async (line, why) => {
    const text = `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n${line}\n`;
    const e = await exercise(vmdk, new TextEncoder().encode(text), { openExtent: async () => { throw new Error('must not open'); } }).catch((x: unknown) => x as Error);
    expect(String(e)).toMatch(why);
    expect((e as { kind?: string }).kind).toBe('invalid-format');
  });

  it('more extent lines than the bound are refused by name', async () => {
    const lines = Array.from({ length: 5000 }, () => 'RW 1 ZERO').join('\n');
    const text = `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n${lines}\n`;
    await expectFieldError(vmdk, new TextEncoder().encode(text), 'extent count');
  });

  it('VMFSSPARSE extents and unknown create types are refused by name', async () => {
    const v = `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfsSparse"\nRW 2048 VMFSSPARSE "x.vmdk"\n`;
    const e = await exercise(vmdk, new TextEncoder().encode(v)).catch((x: unknown) => x as Error);
    expect(String(e)).toMatch(/vmfsSparse/);
    const w = `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 VMFSSPARSE "x.vmdk"\n`;
    const f = await exercise(vmdk, new TextEncoder().encode(w), { openExtent: async () => { throw new Error('must not open'); } }).catch((x: unknown) => x as Error);
    expect(String(f)).toMatch(/VMFSSPARSE extent 'x.vmdk' is not supported/);
  });

  it('a delta link (parentFileNameHint) is reported by info and refused by convert (exit 4, naming the parent)', () => {
    const base = t.path('base.vmdk');
    must('qemu-img', ['create', '-f', 'vmdk', base, '8M']);
    const delta = t.path('delta.vmdk');
    execFileSync('qemu-img', ['create', '-f', 'vmdk', '-b', base, '-F', 'vmdk', delta]);
    const info = JSON.parse(imgtool(['info', '--output', 'json', delta]).stdout);
    expect(info['backing-filename']).toBe(base);
    const r = imgtool(['convert', '-O', 'raw', delta, t.path('delta.raw')]);
    expect(r.status).toBe(4);
    expect(r.stderr).toContain(base);
    const ok = imgtool(['convert', '--backing', '-O', 'raw', delta, t.path('delta.raw')]);
    expect(ok.status, ok.stderr).toBe(0);
  });
});

describe('limits of the format', () => {
  it('a grain past the 2 TiB a 32-bit grain table entry addresses is refused, not wrapped', async () => {
    const { checkGteRange } = await import('../src/formats/vmdk/sparse.js');
    expect(() => checkGteRange(2 ** 41 - 512)).not.toThrow();
    expect(() => checkGteRange(2 ** 41 + 512)).toThrow(/past the 2 TiB/);
  });
});
