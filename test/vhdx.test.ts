/**
 * VHDX against qemu-img 7.2: images qemu-img makes (dynamic and fixed,
 * block sizes 1 to 256 MiB, log sizes, data past 4 GiB) read as qemu reads
 * them; images imgtool writes pass qemu-img check and compare; a log built
 * by hand from [MS-VHDX] is replayed in memory on reads (the file is not
 * changed; qemu-img check -r all replays it to the same bytes) and into the
 * file when opened for write; hostile fields end in typed errors.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, ftruncateSync, openSync, readFileSync, statSync, writeFileSync, writeSync, copyFileSync } from 'node:fs';
import { put32le, put64le, u32le, u64le } from '../src/core/bytes.js';
import { MemoryDevice } from '../src/core/memory.js';
import { ImageError } from '../src/core/errors.js';
import { openImage } from '../src/formats/index.js';
import { vhdx } from '../src/formats/vhdx/index.js';
import { readHeaders, readLayout } from '../src/formats/vhdx/layout.js';
import {
  FILE_PARAMETERS,
  Header,
  LogDataSector,
  LogDescriptor,
  LogEntryHeader,
  MetadataEntry,
  MetadataTableHeader,
  RegionEntry,
  RegionTableHeader,
  SIG_DATA,
  SIG_DESC,
  SIG_LOGE,
  SIG_ZERO,
  checksumWithout,
  isZeroGuid,
  sealChecksum,
} from '../src/formats/vhdx/structs.js';
import { exercise, expectFieldError } from './helpers/hostile.js';
import { imgtool, must, qemuCheck, qemuCompare, qemuInfo, run, runAsync, sha256File, tempDir, infoJson } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

const t = tempDir('imgtool-vhdx-');
afterAll(() => t.cleanup());

const MiB = 1 << 20;
const GiB = 1024 * MiB;
const KiB = 1024;

const VARIANTS = [
  ['big', 'dynamic', 'subformat=dynamic'],
  ['big', 'fixed-32M', 'subformat=fixed,block_size=32M'],
  ['big', 'dynamic-256M', 'block_size=256M'],
  ['small', 'dynamic-1M', 'block_size=1M'],
  ['small', 'dynamic-log8M', 'block_size=2M,log_size=8M'],
  ['small', 'fixed-1M', 'subformat=fixed,block_size=1M'],
  ['small', 'fixed', 'subformat=fixed'],
] as const;

const src = (s: string) => t.path(`${s}.raw`);

beforeAll(async () => {
  const fd = openSync(src('big'), 'w');
  ftruncateSync(fd, 5 * GiB);
  for (const [off, len, seed] of [[4096, 300_000, 1], [4 * GiB + 12 * MiB + 512, 300_000, 2], [5 * GiB - 512, 512, 3]] as const) writeSync(fd, pattern(len, seed), 0, len, off);
  closeSync(fd);
  const s = new Uint8Array(9 * MiB + 1536);
  s.set(pattern(100_000, 4), 1000);
  s.set(pattern(5000, 5), s.length - 5000);
  writeFileSync(src('small'), s);
  for (const [from, name, o] of VARIANTS) {
    const r = await runAsync('qemu-img', ['convert', '-f', 'raw', '-O', 'vhdx', '-o', o, src(from), t.path(`q-${name}.vhdx`)]);
    expect(r.status, r.stderr).toBe(0);
  }
}, 300_000);

describe('structures', () => {
  it('headers and region tables qemu-img wrote decode and encode back byte for byte, CRC-32C verifying', () => {
    const b = new Uint8Array(readFileSync(t.path('q-dynamic-1M.vhdx')).subarray(0, MiB));
    for (const at of [64 * KiB, 128 * KiB]) {
      const raw = b.subarray(at, at + 4 * KiB);
      const h = Header.parse(raw);
      expect(Buffer.compare(Header.encode(h), raw)).toBe(0);
      expect(checksumWithout(raw, 4)).toBe(h.checksum);
      expect(h.version).toBe(1);
    }
    const rt = b.subarray(192 * KiB, 256 * KiB);
    const th = RegionTableHeader.parse(rt);
    expect(checksumWithout(rt, 4)).toBe(th.checksum);
    const e = rt.subarray(16, 48);
    expect(Buffer.compare(RegionEntry.encode(RegionEntry.parse(e)), e)).toBe(0);
    expect(Header.offsetOf('logOffset')).toBe(72);
    expect(LogEntryHeader.size).toBe(64);
    expect(LogDescriptor.size).toBe(32);
    expect(LogDataSector.size).toBe(4096);
    expect(MetadataEntry.size).toBe(32);
  });
});

describe('images qemu-img made', () => {
  it.each(VARIANTS.map(([from, name]) => [name, from] as const))('%s: info agrees with qemu-img, converted to raw it is identical', (name, from) => {
    const file = t.path(`q-${name}.vhdx`);
    const stamp = () => (from === 'small' ? sha256File(file) : `${statSync(file).size}:${statSync(file).mtimeMs}`);
    const before = stamp();
    const ours = infoJson(['--output', 'json', file]);
    const theirs = qemuInfo(file);
    expect(ours.format).toBe('vhdx');
    expect(ours['virtual-size']).toBe(theirs['virtual-size']);
    expect(ours['cluster-size']).toBe(theirs['cluster-size']);
    const out = t.path(`r-${name}.raw`);
    const r = imgtool(['convert', '-O', 'raw', file, out]);
    expect(r.status, r.stderr).toBe(0);
    const cmp = qemuCompare(file, out, 'vhdx', 'raw');
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    expect(stamp()).toBe(before);
  }, 300_000);
});

describe('images imgtool writes', () => {
  it.each(VARIANTS.map(([from, name, o]) => [name, from, o] as const))('%s: qemu-img check is clean, compare identical, info agrees', (name, from, o) => {
    const out = t.path(`w-${name}.vhdx`);
    const r = imgtool(['convert', '-f', 'raw', '-O', 'vhdx', '-o', o, src(from), out]);
    expect(r.status, r.stderr).toBe(0);
    const c = qemuCheck(out, 'vhdx');
    expect(c.status, c.text).toBe(0);
    const ic = imgtool(['check', out]);
    expect(ic.status, ic.stdout + ic.stderr).toBe(0);
    const cmp = qemuCompare(src(from), out, 'raw', 'vhdx');
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    const theirs = qemuInfo(out);
    const ours = infoJson(['--output', 'json', out]);
    expect(ours['virtual-size']).toBe(theirs['virtual-size']);
    expect(ours['cluster-size']).toBe(theirs['cluster-size']);
  }, 300_000);

  it('refuses a block size that is not a power of two, and unknown options', () => {
    const a = imgtool(['convert', '-O', 'vhdx', '-o', 'block_size=3M', src('small'), t.path('bad.vhdx')]);
    expect(a.status).toBe(2);
    expect(a.stderr).toMatch(/block_size/);
    const b = imgtool(['convert', '-O', 'vhdx', '-o', 'bogus=1', src('small'), t.path('bad.vhdx')]);
    expect(b.status).toBe(2);
  });
});

describe('writing into an image qemu-img made', () => {
  it('writes through a writable open (new blocks and stored ones) read back by qemu-img as written', async () => {
    const file = t.path('rw.vhdx');
    copyFileSync(t.path('q-dynamic-1M.vhdx'), file);
    const expected = new Uint8Array(readFileSync(src('small')));
    const opened = await openImage(file, { writable: true });
    for (const [off, len, seed] of [[3 * MiB + 100, 70_000, 21], [500, 2000, 22], [expected.length - 4000, 4000, 23]] as const) {
      const data = pattern(len, seed);
      await opened.image.write(data, off);
      expected.set(data, off);
    }
    await opened.image.close();
    writeFileSync(t.path('rw-expected.raw'), expected);
    const cmp = qemuCompare(file, t.path('rw-expected.raw'), 'vhdx', 'raw');
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    const c = qemuCheck(file, 'vhdx');
    expect(c.status, c.text).toBe(0);
  });
});

// ---- a log built by hand from [MS-VHDX] 2.3 ----

const LOG_GUID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

interface Op {
  offset: number;
  data?: Uint8Array;
  zero?: number;
}

/** One log entry: header, descriptors (padded to 4 KiB), one data sector per write; CRC-32C over all of it. */
function logEntry(seq: bigint, ops: Op[], fileSize: number): Uint8Array {
  const writes = ops.filter((o) => o.data);
  const descBytes = Math.ceil((64 + 32 * ops.length) / 4096) * 4096;
  const entry = new Uint8Array(descBytes + 4096 * writes.length);
  LogEntryHeader.encode(
    { signature: SIG_LOGE, checksum: 0, entryLength: entry.length, tail: 0, sequenceNumber: seq, descriptorCount: ops.length, reserved: 0, logGuid: LOG_GUID, flushedFileOffset: BigInt(fileSize), lastFileOffset: BigInt(fileSize) },
    entry,
  );
  let dataAt = descBytes;
  ops.forEach((o, i) => {
    const leading = new Uint8Array(8);
    const trailing = new Uint8Array(4);
    if (o.data) {
      leading.set(o.data.subarray(0, 8));
      trailing.set(o.data.subarray(4092));
      entry.set(LogDataSector.encode({ signature: SIG_DATA, sequenceHigh: Number(seq >> 32n), data: o.data.subarray(8, 4092), sequenceLow: Number(seq & 0xffffffffn) }), dataAt);
      dataAt += 4096;
    } else put64le(leading, 0, o.zero!);
    entry.set(LogDescriptor.encode({ signature: o.data ? SIG_DESC : SIG_ZERO, trailing, leading, fileOffset: BigInt(o.offset), sequenceNumber: seq }), 64 + 32 * i);
  });
  return sealChecksum(entry, 4);
}

/** A copy of `base` whose log holds `entry` and whose headers name the log. */
function withLog(base: Uint8Array, entry: Uint8Array): Uint8Array {
  const b = base.slice();
  for (const at of [64 * KiB, 128 * KiB]) {
    const h = b.subarray(at, at + 4096);
    h.set(LOG_GUID, 48);
    sealChecksum(h, 4);
  }
  const h = Header.parse(b.subarray(64 * KiB));
  b.set(entry, Number(h.logOffset));
  return b;
}

describe('log replay', () => {
  let base: Uint8Array;
  let host0: number;
  let expected: Uint8Array;
  const write = pattern(4096, 9);

  beforeAll(async () => {
    base = new Uint8Array(readFileSync(t.path('q-dynamic-1M.vhdx')));
    const dev = MemoryDevice.from(base, { readOnly: true });
    const layout = await readLayout(dev, await readHeaders(dev));
    host0 = Number(u64le(base, layout.batOffset) >> 20n) * MiB;
    expect(host0).toBeGreaterThan(0);
    expected = new Uint8Array(readFileSync(src('small')));
    expected.set(write, 8192);
    expected.fill(0, 16384, 16384 + 8192);
    writeFileSync(t.path('expected.raw'), expected);
  });

  const entryFor = () =>
    logEntry(
      5n,
      [
        { offset: host0 + 8192, data: write },
        { offset: host0 + 16384, zero: 8192 },
      ],
      base.length,
    );

  it('a read replays the log in memory: the data is the replayed data, the file is unchanged; qemu-img check -r all replays it to the same bytes', () => {
    const file = t.path('logged.vhdx');
    writeFileSync(file, withLog(base, entryFor()));
    const hash = sha256File(file);
    const out = t.path('logged.raw');
    const r = imgtool(['convert', '-O', 'raw', file, out]);
    expect(r.status, r.stderr).toBe(0);
    expect(Buffer.compare(readFileSync(out).subarray(0, expected.length), expected)).toBe(0);
    expect(sha256File(file)).toBe(hash);
    // qemu replays the same log (it needs read-write for that) to the same guest bytes.
    const copy = t.path('logged-qemu.vhdx');
    copyFileSync(file, copy);
    must('qemu-img', ['check', '-r', 'all', copy]);
    expect(qemuCompare(copy, t.path('expected.raw'), 'vhdx', 'raw').status).toBe(0);
  });

  it('opening for write replays the log into the file and retires it (log GUID zero); qemu-img check is clean and the data is the replayed data', async () => {
    const file = t.path('logged-rw.vhdx');
    writeFileSync(file, withLog(base, entryFor()));
    const opened = await openImage(file, { writable: true });
    await opened.image.close();
    const dev = MemoryDevice.from(new Uint8Array(readFileSync(file)), { readOnly: true });
    expect(isZeroGuid((await readHeaders(dev)).header.logGuid)).toBe(true);
    const c = qemuCheck(file, 'vhdx');
    expect(c.status, c.text).toBe(0);
    expect(qemuCompare(file, t.path('expected.raw'), 'vhdx', 'raw').status).toBe(0);
  });

  it('check: refuses a log that needs replay without -r as qemu-img does; check -r all replays it and reports what qemu-img reports', () => {
    const bytes = withLog(base, entryFor());
    const [ours, theirs] = [t.path('check-ours.vhdx'), t.path('check-qemu.vhdx')];
    writeFileSync(ours, bytes);
    writeFileSync(theirs, bytes);
    const hash = sha256File(ours);
    const plain = imgtool(['check', ours]);
    expect(plain.status).not.toBe(0);
    expect(run('qemu-img', ['check', theirs]).status).not.toBe(0);
    expect(sha256File(ours)).toBe(hash);
    const r = imgtool(['check', '-r', 'all', '--output', 'json', ours]);
    const q = run('qemu-img', ['check', '-r', 'all', '--output=json', theirs]);
    expect(r.status, r.stderr).toBe(q.status);
    const strip = (j: string) => {
      const { filename: _f, ...rest } = JSON.parse(j);
      return rest;
    };
    expect(strip(r.stdout)).toEqual(strip(q.stdout));
    expect(qemuCompare(ours, t.path('expected.raw'), 'vhdx', 'raw').status).toBe(0);
    const c = qemuCheck(ours, 'vhdx');
    expect(c.status, c.text).toBe(0);
  });

  it('a log entry whose checksum fails is an error naming it; the file is unchanged', async () => {
    const entry = entryFor();
    entry[entry.length - 100] ^= 0xff; // inside the data sector
    const bytes = withLog(base, entry);
    await expectFieldError(vhdx, bytes, 'log entry checksum', 'corrupt');
    const file = t.path('bad-log.vhdx');
    writeFileSync(file, bytes);
    const hash = sha256File(file);
    const r = imgtool(['convert', '-O', 'raw', file, t.path('bad-log.raw')]);
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/log entry checksum/);
    expect(sha256File(file)).toBe(hash);
  });

  it('a log entry whose length is not a 4 KiB multiple is an error naming it', async () => {
    const entry = entryFor();
    put32le(entry, 8, entry.length - 100);
    sealChecksum(entry, 4);
    await expectFieldError(vhdx, withLog(base, entry), 'log entry length', 'corrupt');
  });

  it('a descriptor whose file offset is not 4 KiB aligned is an error naming it', async () => {
    await expectFieldError(vhdx, withLog(base, logEntry(5n, [{ offset: host0 + 100, data: write }], base.length)), 'log entry descriptor 0 file offset', 'corrupt');
  });
});

// ---- hostile fields ----

describe('hostile VHDXs', () => {
  let base: Uint8Array;
  let batOffset: number;
  let metaOffset: number;
  beforeAll(async () => {
    base = new Uint8Array(readFileSync(t.path('q-dynamic-1M.vhdx')));
    const dev = MemoryDevice.from(base, { readOnly: true });
    const l = await readLayout(dev, await readHeaders(dev));
    batOffset = l.batOffset;
    metaOffset = l.metadataOffset;
  });
  const mutate = (fn: (b: Uint8Array) => void): Uint8Array => {
    const b = base.slice();
    fn(b);
    return b;
  };
  /** Change region table entries (both copies) and reseal them. */
  const regions = (fn: (rt: Uint8Array) => void) =>
    mutate((b) => {
      for (const at of [192 * KiB, 256 * KiB]) {
        const rt = b.subarray(at, at + 64 * KiB);
        fn(rt);
        sealChecksum(rt, 4);
      }
    });
  /** Metadata table entry `i` of `b`. */
  const metaEntry = (b: Uint8Array, i: number) => b.subarray(metaOffset + MetadataTableHeader.size + 32 * i);
  /** Byte offset of the file parameters item (block size, flags). */
  const fileParams = (b: Uint8Array): number => {
    for (let i = 0; ; i++) if (Buffer.from(metaEntry(b, i).subarray(0, 16)).equals(Buffer.from(FILE_PARAMETERS))) return metaOffset + u32le(metaEntry(b, i), 16);
  };

  it('the unmodified image opens and reads', async () => {
    await exercise(vhdx, base);
  });

  it('a damaged header (either one: one of them is the current) or region table 1 is passed over for the intact copy', async () => {
    const ref = new Uint8Array(readFileSync(src('small')));
    for (const at of [64 * KiB + 300, 128 * KiB + 300, 192 * KiB + 300]) {
      const bytes = mutate((b) => { b[at] ^= 1; });
      const img = await vhdx.open(MemoryDevice.from(bytes, { readOnly: true }), {});
      const got = new Uint8Array(ref.length);
      await img.read(got, 0);
      await img.close();
      expect(Buffer.compare(got, ref)).toBe(0);
    }
  });

  it('both headers with failing checksums', async () => {
    await expectFieldError(vhdx, mutate((b) => { b[64 * KiB + 200] ^= 1; b[128 * KiB + 200] ^= 1; }), 'header', 'corrupt');
  });

  /** An overlap: an ImageError naming one of the two ranges, saying what it overlaps. */
  async function expectOverlap(bytes: Uint8Array, field: RegExp): Promise<void> {
    const e = await exercise(vhdx, bytes).then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(ImageError);
    const err = e as ImageError;
    expect(err.kind).toBe('corrupt');
    expect(err.context.field).toMatch(field);
    expect(err.message).toMatch(/overlaps/);
  }

  it('region table entries that overlap', async () => {
    const bytes = regions((rt) => put64le(rt.subarray(48, 80), 16, u64le(rt.subarray(16, 48), 16)));
    await expectOverlap(bytes, /^(BAT|metadata) region$/);
  });

  it('a region table entry count past 2047', async () => {
    await expectFieldError(vhdx, regions((rt) => put32le(rt, 8, 100_000)), 'region table entry count', 'corrupt');
  });

  it('a BAT entry past the end of the file', async () => {
    const bytes = mutate((b) => put64le(b, batOffset, (0xfffffn << 20n) | 6n));
    await expectFieldError(vhdx, bytes, 'BAT entry 0 file offset', 'corrupt');
  });

  it('a BAT entry putting a block over the metadata region', async () => {
    const bytes = mutate((b) => put64le(b, batOffset, (BigInt(metaOffset / MiB) << 20n) | 6n));
    const e = await expectFieldError(vhdx, bytes, 'BAT entry 0 file offset', 'corrupt');
    expect(e.message).toMatch(/metadata region/);
  });

  it('a last block only partly in the file (as older qemu wrote them) reads as qemu-img reads it', async () => {
    const dev = MemoryDevice.from(base, { readOnly: true });
    const l = await readLayout(dev, await readHeaders(dev));
    const last = l.blocks - 1;
    const host = Number(u64le(base, batOffset + 8 * (last + Math.floor(last / l.chunkRatio))) >> 20n) * MiB;
    expect(host + l.blockSize).toBe(base.length); // qemu-img appended it last
    const tail = l.size - last * l.blockSize;
    expect(tail).toBeLessThan(l.blockSize);
    const file = t.path('partial-last.vhdx');
    writeFileSync(file, base.subarray(0, host + tail));
    expect(qemuCompare(file, src('small'), 'vhdx', 'raw').status).toBe(0);
    const out = t.path('partial-last.raw');
    const r = imgtool(['convert', '-O', 'raw', file, out]);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuCompare(out, src('small'), 'raw', 'raw').status).toBe(0);
  });

  it('a BAT entry in a state no payload block has', async () => {
    await expectFieldError(vhdx, mutate((b) => put64le(b, batOffset, 5n)), 'BAT entry 0 state', 'corrupt');
  });

  it('a block size that is not a power of two', async () => {
    const bytes = mutate((b) => put32le(b, fileParams(b), 3 * MiB));
    await expectFieldError(vhdx, bytes, 'block size', 'invalid-format');
  });

  it('metadata items that overlap', async () => {
    await expectOverlap(mutate((b) => put32le(metaEntry(b, 1), 16, u32le(metaEntry(b, 0), 16))), /^metadata entry [01]$/);
  });

  it('a metadata entry count past 2047', async () => {
    await expectFieldError(vhdx, mutate((b) => put32le(b, metaOffset + 8, 5000 << 16)), 'metadata entry count', 'corrupt');
  });

  it('a metadata item outside the metadata region', async () => {
    await expectFieldError(vhdx, mutate((b) => put32le(metaEntry(b, 2), 16, 0x7fffffff)), 'metadata entry 2 offset', 'corrupt');
  });

  it('a differencing disk (has_parent) is refused as unsupported', async () => {
    const bytes = mutate((b) => put32le(b, fileParams(b) + 4, 2));
    await expectFieldError(vhdx, bytes, 'parent locator', 'unsupported');
  });
});
