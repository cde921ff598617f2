/**
 * VMDK against the real qemu-img: every subformat qemu-img creates reads as
 * qemu-img reads it (compare), also past 4 GiB; every VMDK imgtool writes
 * passes qemu-img check and compare; streamOptimized to a pipe equals the
 * file; info agrees with qemu-img info; header structures round-trip.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, ftruncateSync, openSync, readFileSync, readSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { imgtool, must, qemuCheck, qemuCompare, qemuInfo, runAsync, tempDir } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';
import { GrainMarker, MetaMarker, SparseHeader } from '../src/formats/vmdk/header.js';
import { openImage } from '../src/formats/index.js';

const t = tempDir('imgtool-vmdk-');
afterAll(() => t.cleanup());
const MiB = 1 << 20;
const GiB = 1024 * MiB;
const SIZE = 5 * GiB;
const WRITES: Array<[number, number, number]> = [
  [0, 70_000, 1],
  [3 * MiB + 512, 200_000, 2],
  [4 * GiB - 4096, 8192, 3], // across 4 GiB
  [4 * GiB + 12 * MiB + 512, 300_000, 4],
  [SIZE - 512, 512, 5],
];
const src = t.path('src.raw');

beforeAll(async () => {
  const fd = openSync(src, 'w');
  ftruncateSync(fd, SIZE);
  for (const [off, len, seed] of WRITES) writeSync(fd, pattern(len, seed), 0, len, off);
  closeSync(fd);
});

// Every variant qemu-img can create (qemu-img create -o help: subformat, compat6, zeroed_grain; -c).
const QEMU_VARIANTS: Array<[name: string, args: string[]]> = [
  ['monolithicSparse', ['-o', 'subformat=monolithicSparse']],
  ['monolithicFlat', ['-o', 'subformat=monolithicFlat']],
  ['twoGbMaxExtentSparse', ['-o', 'subformat=twoGbMaxExtentSparse']],
  ['twoGbMaxExtentFlat', ['-o', 'subformat=twoGbMaxExtentFlat']],
  ['streamOptimized', ['-o', 'subformat=streamOptimized']],
  ['streamOptimized-c', ['-c', '-o', 'subformat=streamOptimized']],
  ['compat6', ['-o', 'compat6=on']],
  ['zeroed_grain', ['-o', 'zeroed_grain=on']],
];

describe('VMDKs made by qemu-img read as qemu-img reads them', () => {
  it.each(QEMU_VARIANTS)('%s (5 GiB, data past 4 GiB)', async (name, args) => {
    const dir = t.path(name);
    must('mkdir', ['-p', dir]);
    const vmdk = `${dir}/disk.vmdk`;
    const r = await runAsync('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', ...args, src, vmdk]);
    expect(r.status, r.stderr).toBe(0);
    if (name === 'zeroed_grain') {
      // A zero write over data: qemu records the grain as zeroed (GTE 1).
      must('qemu-io', ['-f', 'vmdk', '-c', 'write -z 0 64k', vmdk]);
    }
    const out = `${dir}/out.raw`;
    const c = imgtool(['convert', '-O', 'raw', vmdk, out]);
    expect(c.status, c.stderr).toBe(0);
    const cmp = qemuCompare(out, vmdk, 'raw', 'vmdk');
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    if (name === 'zeroed_grain') {
      const head = Buffer.alloc(65536);
      const fd = openSync(out, 'r');
      readSync(fd, head, 0, head.length, 0);
      closeSync(fd);
      expect(head.every((b) => b === 0)).toBe(true);
      // qemu recorded the grain as zeroed (GTE 1), which is what this variant is for.
      const m = JSON.parse(must('qemu-img', ['map', '--output=json', '-f', 'vmdk', vmdk]))[0];
      expect(m).toMatchObject({ start: 0, zero: true, data: false });
    }
  });

  it('info agrees with qemu-img info (format, size, create type, CID, extents)', () => {
    for (const [name] of QEMU_VARIANTS) {
      const vmdk = t.path(`${name}/disk.vmdk`);
      const ours = JSON.parse(imgtool(['info', '--output', 'json', vmdk]).stdout);
      const theirs = qemuInfo(vmdk, 'vmdk');
      expect(ours.format).toBe('vmdk');
      expect(ours['virtual-size']).toBe(theirs['virtual-size']);
      expect(ours['cluster-size']).toBe(theirs['cluster-size']);
      expect(ours['format-specific']).toEqual(theirs['format-specific']);
    }
  });
});

describe('VMDKs imgtool writes pass qemu-img check and compare', () => {
  const VARIANTS: Array<[name: string, opts: string]> = [
    ['monolithicSparse', ''],
    ['streamOptimized', 'subformat=streamOptimized'],
    ['lsilogic-hw8', 'adapter_type=lsilogic,hwversion=8'],
    ['compat6-zeroed', 'compat6=on,zeroed_grain=on,adapter_type=buslogic'],
  ];
  it.each(VARIANTS)('%s', (name, opts) => {
    const out = t.path(`w-${name}.vmdk`);
    const r = imgtool(['convert', '-O', 'vmdk', ...(opts ? ['-o', opts] : []), src, out]);
    expect(r.status, r.stderr).toBe(0);
    const c = qemuCheck(out, 'vmdk');
    expect(c.status, c.text).toBe(0);
    const cmp = qemuCompare(src, out, 'raw', 'vmdk');
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    // The descriptor as qemu-img writes it: geometry, adapter, hardware version, CID.
    const info = qemuInfo(out, 'vmdk');
    const data = (info['format-specific'] as { data: Record<string, unknown> }).data;
    expect(data['create-type']).toBe(name === 'streamOptimized' ? 'streamOptimized' : 'monolithicSparse');
    const desc = readFileSync(out).subarray(512, 512 * 21).toString('latin1');
    expect(desc).toMatch(/^CID=[0-9a-f]{8}$/m);
    const adapter = /adapter_type=(\w+)/.exec(opts)?.[1] ?? 'ide';
    const heads = adapter === 'ide' ? 16 : 255;
    expect(desc).toContain(`ddb.adapterType = "${adapter}"`);
    expect(desc).toContain(`ddb.geometry.heads = "${heads}"`);
    expect(desc).toContain(`ddb.geometry.cylinders = "${Math.floor(SIZE / 512 / (heads * 63))}"`);
    expect(desc).toContain(`ddb.virtualHWVersion = "${/hwversion=(\d+)/.exec(opts)?.[1] ?? (opts.includes('compat6') ? 6 : 4)}"`);
    // And we read back what we wrote.
    const back = t.path(`w-${name}.raw`);
    expect(imgtool(['convert', '-O', 'raw', out, back]).status).toBe(0);
    expect(qemuCompare(src, back, 'raw', 'raw').status).toBe(0);
  });

  it('streamOptimized written to a pipe is the file written directly (but for the random CID and the extent name)', () => {
    const small = t.path('small.raw');
    const fd = openSync(small, 'w');
    ftruncateSync(fd, 40 * MiB);
    for (let k = 0; k < 12; k++) writeSync(fd, pattern(3 * MiB + 777 * k, 10 + k), 0, 3 * MiB + 777 * k, k * 3 * MiB + 1000 * k);
    closeSync(fd);
    const direct = t.path('direct.vmdk');
    const piped = t.path('piped.vmdk');
    expect(imgtool(['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', small, direct]).status).toBe(0);
    const cli = new URL('../dist/bin/main.js', import.meta.url).pathname;
    must('bash', ['-c', `set -o pipefail; '${process.execPath}' '${cli}' convert -O vmdk -o subformat=streamOptimized '${small}' - | cat > '${piped}'`]);
    const a = readFileSync(direct);
    const b = readFileSync(piped);
    expect(b.length).toBe(a.length);
    expect(Buffer.compare(a.subarray(0, 512), b.subarray(0, 512))).toBe(0);
    expect(Buffer.compare(a.subarray(512 * 21), b.subarray(512 * 21))).toBe(0);
    const norm = (x: Buffer) =>
      x.subarray(512, 512 * 21).toString('latin1').replace(/\0+$/, '').replace(/CID=\w+/, '').replace(/"[^"]*\.vmdk"/, '');
    expect(norm(b)).toBe(norm(a));
    expect(qemuCheck(piped, 'vmdk').status).toBe(0);
    expect(qemuCompare(small, piped, 'raw', 'vmdk').status).toBe(0);
  });

  it('refuses to send monolithicSparse to a pipe, naming streamOptimized', () => {
    const r = imgtool(['convert', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', src, '-']);
    expect(r.status).toBe(4);
    expect(r.stderr).toMatch(/streamOptimized/);
  });
});

describe('writing into VMDKs qemu-img made', () => {
  it.each(['monolithicSparse', 'twoGbMaxExtentSparse', 'zeroed_grain', 'monolithicFlat'])(
    '%s: writes through the engine (new grains, partial grains, zero writes) pass qemu-img check and compare',
    async (name) => {
      const dir = t.path(`inplace-${name}`);
      must('mkdir', ['-p', dir]);
      const base = t.path('inplace.raw');
      const data = new Uint8Array(40 * MiB);
      data.set(pattern(5 * MiB, 41), 3 * MiB + 512);
      writeFileSync(base, data);
      const opts = name === 'zeroed_grain' ? 'zeroed_grain=on' : `subformat=${name}`;
      must('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', opts, base, `${dir}/disk.vmdk`]);
      const opened = await openImage(`${dir}/disk.vmdk`, { writable: true });
      const edits: Array<[number, Uint8Array | number]> = [
        [100, pattern(1000, 42)], // inside an existing grain
        [20 * MiB + 7, pattern(200_000, 43)], // new grains, partial at both ends
        [4 * MiB, 128 * 1024], // zeros over data: whole grains
        [39 * MiB, pattern(MiB, 44)],
      ];
      for (const [off, what] of edits) {
        if (typeof what === 'number') {
          await opened.image.writeZeroes(off, what);
          data.fill(0, off, off + what);
        } else {
          await opened.image.write(what, off);
          data.set(what, off);
        }
      }
      await opened.image.close();
      writeFileSync(base, data);
      const c = qemuCheck(`${dir}/disk.vmdk`, 'vmdk');
      expect(c.status, c.text).toBe(0);
      const cmp = qemuCompare(base, `${dir}/disk.vmdk`, 'raw', 'vmdk');
      expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    },
  );
});

describe('descriptor files imgtool reads', () => {
  it('vmfs and custom descriptors with FLAT, VMFS and ZERO extents', () => {
    const dir = t.path('desc');
    must('mkdir', ['-p', dir]);
    writeFileSync(`${dir}/a-flat.vmdk`, pattern(2 * MiB, 31));
    writeFileSync(`${dir}/b-flat.vmdk`, Buffer.concat([Buffer.alloc(4096), Buffer.from(pattern(MiB, 32))]));
    // (qemu 7.2 counts an extent line twice when it ends the file: the DDB follows it, as VMware writes it)
    writeFileSync(
      `${dir}/vmfs.vmdk`,
      '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="vmfs"\n\n# Extent description\nRW 4096 VMFS "a-flat.vmdk"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = "lsilogic"\n',
    );
    // qemu agrees on the vmfs descriptor
    const out = `${dir}/vmfs.raw`;
    expect(imgtool(['convert', '-O', 'raw', `${dir}/vmfs.vmdk`, out]).status).toBe(0);
    expect(qemuCompare(out, `${dir}/vmfs.vmdk`, 'raw', 'vmdk').status).toBe(0);
    // FLAT with an offset, then a ZERO run, then a VMFS extent (qemu skips ZERO lines, so we check the bytes ourselves)
    writeFileSync(
      `${dir}/mixed.vmdk`,
      '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 2048 FLAT "b-flat.vmdk" 8\nRW 1024 ZERO\nRW 4096 VMFS "a-flat.vmdk"\n',
    );
    const mixed = `${dir}/mixed.raw`;
    const r = imgtool(['convert', '-O', 'raw', `${dir}/mixed.vmdk`, mixed]);
    expect(r.status, r.stderr).toBe(0);
    const got = readFileSync(mixed);
    expect(got.length).toBe(MiB + 512 * 1024 + 2 * MiB);
    expect(Buffer.compare(got.subarray(0, MiB), Buffer.from(pattern(MiB, 32)))).toBe(0);
    expect(got.subarray(MiB, MiB + 512 * 1024).every((x) => x === 0)).toBe(true);
    expect(Buffer.compare(got.subarray(MiB + 512 * 1024), Buffer.from(pattern(2 * MiB, 31)))).toBe(0);
  });

  it('a descriptor reached through a symlink in another directory still confines extents to its own directory', () => {
    const dir = t.path('viasym');
    must('mkdir', ['-p', dir]);
    symlinkSync(t.path('desc/vmfs.vmdk'), `${dir}/link.vmdk`);
    const r = imgtool(['info', `${dir}/link.vmdk`]);
    // The link's directory has no a-flat.vmdk: the extent is looked for next to the name given, never elsewhere.
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/a-flat\.vmdk/);
  });
});

describe('header and marker structures', () => {
  /** The first sector of a 5 GiB monolithicSparse VMDK made by qemu-img. */
  const qemuHeader = (): Buffer => {
    const file = t.path('header.vmdk');
    must('qemu-img', ['create', '-f', 'vmdk', file, String(SIZE)]);
    return readFileSync(file).subarray(0, 512);
  };
  it('decode and re-encode a header qemu-img wrote byte for byte; the layout table follows the spec', () => {
    const head = qemuHeader();
    const h = SparseHeader.parse(head);
    expect(h.capacity).toBe(BigInt(SIZE / 512));
    expect(h.grainSize).toBe(128n);
    expect(Buffer.compare(Buffer.from(SparseHeader.encode(h)), head)).toBe(0);
    expect(SparseHeader.size).toBe(512);
    const at = Object.fromEntries(SparseHeader.layout.map((r) => [r.field, r.offset]));
    expect(at).toMatchObject({ capacity: 12, grainSize: 20, descriptorOffset: 28, numGTEsPerGT: 44, rgdOffset: 48, gdOffset: 56, overHead: 64, compressAlgorithm: 77 });
    expect(GrainMarker.size).toBe(12);
    expect(MetaMarker.size).toBe(512);
  });

  it('64-bit fields past 2^53 survive as BigInt', () => {
    const v = SparseHeader.parse(qemuHeader());
    const big = { ...v, gdOffset: 0xffffffffffffffffn, capacity: (1n << 60n) + 3n };
    const back = SparseHeader.parse(SparseHeader.encode(big));
    expect(back.gdOffset).toBe(0xffffffffffffffffn);
    expect(back.capacity).toBe((1n << 60n) + 3n);
    const m = GrainMarker.parse(GrainMarker.encode({ lba: (1n << 56n) + 1n, size: 4096 }));
    expect(m).toEqual({ lba: (1n << 56n) + 1n, size: 4096 });
  });
});
