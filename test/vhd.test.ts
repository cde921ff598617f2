/**
 * VHD (qemu's vpc) against qemu-img 7.2: images qemu-img makes (fixed and
 * dynamic, with and without force_size, data past 4 GiB) read as qemu reads
 * them; images imgtool writes are identical for qemu-img compare and sized
 * as qemu-img sizes them; the Azure recipe gives a whole-MiB fixed VHD; the
 * tail probe; damaged footers; differencing disks; hostile fields.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, copyFileSync, ftruncateSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { put32be } from '../src/core/bytes.js';
import { vpc } from '../src/formats/vhd/index.js';
import { openImage } from '../src/formats/index.js';
import { DynHeader, Footer, chsFor, sizeForCreate, vhdChecksum } from '../src/formats/vhd/footer.js';
import { exercise, expectFieldError } from './helpers/hostile.js';
import { imgtool, must, qemuCompare, qemuInfo, runAsync, sha256File, tempDir, infoJson } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

const t = tempDir('imgtool-vhd-');
afterAll(() => t.cleanup());

const MiB = 1 << 20;
const GiB = 1024 * MiB;
const VARIANTS = [
  ['dynamic', 'subformat=dynamic'],
  ['fixed', 'subformat=fixed'],
  ['dynamic-force', 'subformat=dynamic,force_size=on'],
  ['fixed-force', 'subformat=fixed,force_size=on'],
] as const;

const big = t.path('big.raw');
const small = t.path('small.raw');

beforeAll(async () => {
  const fd = openSync(big, 'w');
  ftruncateSync(fd, 5 * GiB);
  for (const [off, len, seed] of [[4096, 300_000, 1], [4 * GiB + 12 * MiB + 512, 300_000, 2], [5 * GiB - 512, 512, 3]] as const) writeSync(fd, pattern(len, seed), 0, len, off);
  closeSync(fd);
  const s = new Uint8Array(7 * MiB + 3 * 512);
  s.set(pattern(100_000, 4), 1000);
  s.set(pattern(5000, 5), s.length - 5000);
  writeFileSync(small, s);
  for (const [name, o] of VARIANTS) {
    for (const src of ['big', 'small']) {
      const r = await runAsync('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', o, t.path(`${src}.raw`), t.path(`q-${src}-${name}.vhd`)]);
      expect(r.status, r.stderr).toBe(0);
    }
  }
}, 300_000);

const fixedPad = (file: string) => readFileSync(file);

describe('structures', () => {
  it('a footer and a dynamic header qemu-img wrote decode and encode back byte for byte, checksums verifying', () => {
    const b = new Uint8Array(fixedPad(t.path('q-small-dynamic.vhd')));
    const footer = b.subarray(0, 512);
    const f = Footer.parse(footer);
    expect(Buffer.from(f.cookie).toString()).toBe('conectix');
    expect(Buffer.compare(Footer.encode(f), footer)).toBe(0);
    expect(vhdChecksum(footer, Footer.offsetOf('checksum'))).toBe(f.checksum);
    const dyn = b.subarray(512, 1536);
    const h = DynHeader.parse(dyn);
    expect(Buffer.compare(DynHeader.encode(h), dyn)).toBe(0);
    expect(vhdChecksum(dyn, DynHeader.offsetOf('checksum'))).toBe(h.checksum);
    expect(h.blockSize).toBe(2 * MiB);
    expect(Footer.offsetOf('checksum')).toBe(64);
    expect(DynHeader.offsetOf('parentName')).toBe(64);
  });

  it('CHS geometry follows the specification (the sizes qemu-img gives)', () => {
    expect(chsFor(16 * 63 * 1024)).toEqual({ cylinders: 1024, heads: 16, sectorsPerTrack: 63 });
    for (const size of [1 * MiB, 100 * MiB, 127 * GiB, 200 * GiB, 3 * 512 + 7 * MiB]) {
      const r = must('qemu-img', ['create', '-f', 'vpc', t.path('geo.vhd'), String(size)]);
      expect(r).toContain('Formatting');
      expect(sizeForCreate(size, false).bytes).toBe(qemuInfo(t.path('geo.vhd'))['virtual-size']);
    }
  });
});

describe('images qemu-img made', () => {
  it.each(VARIANTS.flatMap(([n]) => ['big', 'small'].map((s) => [s, n] as const)))('%s %s: info agrees with qemu-img, converted to raw it is identical', (src, name) => {
    const file = t.path(`q-${src}-${name}.vhd`);
    // Inputs stay unchanged (hashed when small; a 5 GiB sparse file by its size and mtime).
    const stamp = () => (src === 'small' ? sha256File(file) : `${statSync(file).size}:${statSync(file).mtimeMs}`);
    const hash = stamp();
    const ours = infoJson(['--output', 'json', file]);
    const theirs = qemuInfo(file, 'vpc');
    expect(ours.format).toBe('vpc'); // found by the head probe, or by the tail probe for fixed disks
    expect(ours['virtual-size']).toBe(theirs['virtual-size']);
    expect(ours['cluster-size']).toBe(theirs['cluster-size']);
    const out = t.path(`r-${src}-${name}.raw`);
    const r = imgtool(['convert', '-O', 'raw', file, out]);
    expect(r.status, r.stderr).toBe(0);
    const cmp = qemuCompare(file, out, 'vpc', 'raw');
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    expect(stamp()).toBe(hash);
  }, 300_000);
});

describe('images imgtool writes', () => {
  it.each(VARIANTS.flatMap(([n, o]) => ['big', 'small'].map((s) => [s, n, o] as const)))('%s %s: qemu-img compare finds it identical to the source; sizes agree', (src, name, o) => {
    const out = t.path(`w-${src}-${name}.vhd`);
    const r = imgtool(['convert', '-f', 'raw', '-O', 'vpc', '-o', o, t.path(`${src}.raw`), out]);
    expect(r.status, r.stderr).toBe(0);
    const cmp = qemuCompare(t.path(`${src}.raw`), out, 'raw', 'vpc');
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
    // The Azure rule (fixed + force_size: whole MiB) is imgtool's; otherwise the size is qemu-img's.
    const theirs = qemuInfo(out, 'vpc')['virtual-size'] as number;
    if (name === 'fixed-force') expect(theirs % MiB).toBe(0);
    else expect(theirs).toBe(qemuInfo(t.path(`q-${src}-${name}.vhd`), 'vpc')['virtual-size']);
    expect(infoJson(['--output', 'json', out])['virtual-size']).toBe(theirs);
  }, 300_000);

  it('a fixed VHD for Azure: whole-MiB size, file = size + 512, footer fixed, "qem2", checksum verifying, qemu-img reads that size', () => {
    const out = t.path('azure.vhd');
    expect(imgtool(['convert', '-O', 'vpc', '-o', 'subformat=fixed,force_size=on', small, out]).status).toBe(0);
    const want = Math.ceil(statSync(small).size / MiB) * MiB;
    expect(statSync(out).size).toBe(want + 512);
    const tail = new Uint8Array(readFileSync(out).subarray(want));
    const f = Footer.parse(tail);
    expect(f.diskType).toBe(2);
    expect(Buffer.from(f.creatorApp).toString()).toBe('qem2');
    expect(f.currentSize).toBe(BigInt(want));
    expect(f.dataOffset).toBe(0xffffffffffffffffn);
    expect(vhdChecksum(tail, 64)).toBe(f.checksum);
    expect(qemuInfo(out, 'vpc')['virtual-size']).toBe(want);
    expect(qemuCompare(small, out, 'raw', 'vpc').status).toBe(0);
  });

  it.each(['dynamic', 'fixed'])('streams a %s VHD to a pipe; the saved stream is identical to the source', (sub) => {
    const out = t.path(`piped-${sub}.vhd`);
    const cli = new URL('../dist/bin/main.js', import.meta.url).pathname;
    must('bash', ['-c', `set -o pipefail; '${process.execPath}' '${cli}' convert -O vpc -o subformat=${sub} '${small}' - | cat > '${out}'`]);
    expect(qemuCompare(small, out, 'raw', 'vpc').status).toBe(0);
    expect(infoJson(['--output', 'json', out]).format).toBe('vpc');
  });
});

/** Rewrite the checksum of the footer at `at` after a change. */
function resealFooter(b: Uint8Array, at: number): void {
  put32be(b, at + 64, vhdChecksum(b.subarray(at, at + 512), 64));
}

describe('footers, probing, differencing disks', () => {
  it('a dynamic VHD whose end footer is damaged is read through the copy at offset 0, and info says so', async () => {
    const b = new Uint8Array(readFileSync(t.path('q-small-dynamic.vhd')));
    b[b.length - 512 + 40] ^= 0xff; // inside original_size: the checksum no longer verifies
    const file = t.path('damaged-end.vhd');
    writeFileSync(file, b);
    const hash = sha256File(file);
    const info = infoJson(['--output', 'json', file]);
    expect(info['format-specific'].data['footer-copy-used']).toBe(true);
    const out = t.path('damaged-end.raw');
    expect(imgtool(['convert', '-O', 'raw', file, out]).status).toBe(0);
    expect(qemuCompare(small, out, 'raw', 'raw').status).toBe(0);
    expect(sha256File(file)).toBe(hash);
  });

  it('a fixed VHD whose footer checksum fails is an error naming the checksum', async () => {
    const b = new Uint8Array(readFileSync(t.path('q-small-fixed.vhd')));
    b[b.length - 512 + 40] ^= 0xff;
    await expectFieldError(vpc, b, 'footer checksum', 'corrupt');
  });

  it('the tail probe: a fixed VHD is detected; a raw image ending in "conectix" without a valid footer stays raw; -f raw reads a fixed VHD as raw', () => {
    const fixed = t.path('q-small-fixed.vhd');
    expect(infoJson(['--output', 'json', fixed])['format-specific'].data['footer-at']).toMatch(/end only/);
    const b = new Uint8Array(readFileSync(fixed));
    b[b.length - 512 + 40] ^= 0xff;
    writeFileSync(t.path('looks.raw'), b);
    expect(infoJson(['--output', 'json', t.path('looks.raw')]).format).toBe('raw');
    const asRaw = infoJson(['-f', 'raw', '--output', 'json', fixed]);
    expect(asRaw.format).toBe('raw');
    expect(asRaw['virtual-size']).toBe(statSync(fixed).size);
  });

  it('a differencing disk is refused as unsupported, naming its parent', async () => {
    const b = new Uint8Array(readFileSync(t.path('q-small-dynamic.vhd')));
    for (const at of [0, b.length - 512]) {
      put32be(b, at + 60, 4);
      resealFooter(b, at);
    }
    b.set(Buffer.from('parent.vhd', 'utf16le').swap16(), 512 + 64);
    put32be(b, 512 + 36, vhdChecksum(b.subarray(512, 1536), 36));
    const e = await expectFieldError(vpc, b, 'parent_name', 'unsupported');
    expect(e.message).toContain('parent.vhd');
  });
});

describe('writing into an image qemu-img made', () => {
  it('writes through a writable open (new blocks and stored ones) read back by qemu-img as written', async () => {
    const file = t.path('rw.vhd');
    copyFileSync(t.path('q-small-dynamic.vhd'), file);
    const expected = new Uint8Array(readFileSync(small));
    const opened = await openImage(file, { writable: true });
    for (const [off, len, seed] of [[3 * MiB + 100, 70_000, 21], [500, 2000, 22], [expected.length - 4000, 4000, 23]] as const) {
      const data = pattern(len, seed);
      await opened.image.write(data, off);
      expected.set(data, off);
    }
    await opened.image.close();
    writeFileSync(t.path('rw-expected.raw'), expected);
    const cmp = qemuCompare(file, t.path('rw-expected.raw'), 'vpc', 'raw');
    expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
  });
});

describe('map', () => {
  it.each(['dynamic', 'fixed', 'dynamic-force'])('imgtool map of a %s VHD prints what qemu-img map prints', (name) => {
    const file = t.path(`q-small-${name}.vhd`);
    const ours = imgtool(['map', file]);
    expect(ours.status, ours.stderr).toBe(0);
    expect(ours.stdout).toBe(must('qemu-img', ['map', '-f', 'vpc', file]));
    const strip = (j: string) => JSON.parse(j).map(({ compressed: _c, ...e }: Record<string, unknown>) => e);
    const oj = strip(imgtool(['map', '--output', 'json', file]).stdout);
    const qj = strip(must('qemu-img', ['map', '--output=json', '-f', 'vpc', file]));
    // A fixed VHD's holes: qemu says data and zero at once, which imgtool's map (as for raw) reports as zero only.
    if (name === 'fixed') for (const e of qj) if (e.zero) e.data = false;
    expect(oj).toEqual(qj);
  });
});

describe('hostile VHDs (the fields iotests 088 pokes, and more)', () => {
  let dyn: Uint8Array;
  beforeAll(() => {
    dyn = new Uint8Array(readFileSync(t.path('q-small-dynamic.vhd')));
  });
  const withHeader = (fn: (b: Uint8Array) => void): Uint8Array => {
    const b = dyn.slice();
    fn(b);
    put32be(b, 512 + 36, vhdChecksum(b.subarray(512, 1536), 36));
    return b;
  };

  it('the unmodified image opens and reads', async () => {
    await exercise(vpc, dyn);
  });

  it.each([
    ['block_size', 512 + 32, 0x00300000, 'invalid-format'],
    ['block_size', 512 + 32, 256, 'invalid-format'],
    ['block_size', 512 + 32, 0x80000000, 'unsupported'],
    ['max_table_entries', 512 + 28, 0x7fffffff, 'unsupported'],
    ['max_table_entries', 512 + 28, 1, 'corrupt'],
  ] as const)('%s = %d ends in a typed error naming it', async (field, at, value, kind) => {
    await expectFieldError(vpc, withHeader((b) => put32be(b, at, value)), field, kind);
  });

  it('a BAT offset past the end of the file', async () => {
    await expectFieldError(vpc, withHeader((b) => put32be(b, 512 + 20, 0x7fffffff)), 'table_offset', 'corrupt');
  });

  it('a BAT entry pointing past the end of the file', async () => {
    const b = dyn.slice();
    put32be(b, 1536, 0x00ffffff);
    await expectFieldError(vpc, b, 'BAT entry 0', 'corrupt');
  });

  it('a BAT entry putting a block over the dynamic header and the BAT', async () => {
    const b = dyn.slice();
    put32be(b, 1536 + 4, 2); // block 1 at sector 2: over the dynamic header
    await expectFieldError(vpc, b, 'BAT entry 1', 'corrupt');
  });

  it('a dynamic header whose checksum fails', async () => {
    const b = dyn.slice();
    b[512 + 100] ^= 1;
    await expectFieldError(vpc, b, 'dynamic header checksum', 'corrupt');
  });

  it('a footer whose data offset points past the end', async () => {
    const b = dyn.slice();
    for (const at of [0, b.length - 512]) {
      b.set([0, 0, 0, 1, 0, 0, 0, 0], at + 16);
      resealFooter(b, at);
    }
    await expectFieldError(vpc, b, 'data_offset', 'corrupt');
  });

  it('a current size past 2040 GiB (Hyper-V creator)', async () => {
    const b = dyn.slice();
    for (const at of [0, b.length - 512]) {
      b.set(Buffer.from('win '), at + 28);
      b.set([0, 0, 0x40, 0, 0, 0, 0, 0], at + 48);
      resealFooter(b, at);
    }
    await expectFieldError(vpc, b, 'current_size', 'unsupported');
  });
});

describe('two valid footers that disagree (found by npm run fuzz)', () => {
  it('reads what qemu-img reads: the copy at offset 0 rules', async () => {
    const src = t.path('disagree-src.raw');
    writeFileSync(src, pattern(4 << 20, 21));
    const img = t.path('disagree.vhd');
    must('qemu-img', ['convert', '-O', 'vpc', src, img]);
    // The copy at 0 now names a fixed disk, checksum resealed; the end footer still says dynamic.
    const b = readFileSync(img);
    put32be(b, Footer.offsetOf('diskType'), 2);
    put32be(b, Footer.offsetOf('checksum'), vhdChecksum(b.subarray(0, 512), Footer.offsetOf('checksum')));
    writeFileSync(img, b);
    const ours = t.path('disagree-ours.raw');
    const theirs = t.path('disagree-qemu.raw');
    must('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', img, theirs]);
    const r = imgtool(['convert', '-f', 'vpc', '-O', 'raw', img, ours]);
    // qemu takes the file as fixed and reads past its end as zeros; imgtool, reading the
    // same footer, refuses a fixed disk larger than its file (typed, naming the field).
    // What it must never do is read the end footer's dynamic disk: different bytes.
    if (r.status === 0) expect(qemuCompare(theirs, ours, 'raw', 'raw').status).toBe(0);
    else {
      expect(r.status).toBe(3);
      expect(r.stderr).toMatch(/current_size/);
    }
  });
});
