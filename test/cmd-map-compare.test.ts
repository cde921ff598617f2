/**
 * `imgtool map` and `imgtool compare` against qemu-img 7.2 on a corpus of
 * images made by qemu-img and by imgtool: holes, zero clusters, compressed
 * clusters, data past 4 GiB, backing chains, every format.
 *
 * map: the JSON equals qemu-img's after dropping `compressed` (a field newer
 * qemu prints and 7.2 does not). compare: the same exit code and message as
 * qemu-img compare.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, copyFileSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { pattern } from './helpers/devices.js';
import { imgtool, must, run, sha256File, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-cmd-map-');
afterAll(() => t.cleanup());
const MiB = 1 << 20;
const GiB = 1 << 30;

function qemuIo(file: string, ...cmds: string[]): void {
  must('qemu-io', [...cmds.flatMap((c) => ['-c', c]), file]);
}

function poke(file: string, offset: number, byte: number): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.from([byte]), 0, 1, offset);
  closeSync(fd);
}

/** qemu-img's map entries without the fields 7.2 does not print. */
function qemuMap(file: string, fmt?: string): unknown[] {
  return JSON.parse(must('qemu-img', ['map', '--output=json', ...(fmt ? ['-f', fmt] : []), file]));
}

function ourMap(args: string[]): Array<Record<string, unknown>> {
  const r = imgtool(['map', ...args]);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout);
}

const CORPUS: Record<string, string> = {};

beforeAll(() => {
  // qcow2 by qemu-img: data, a hole, zero clusters, a compressed cluster, data past 4 GiB.
  const base = t.path('base.qcow2');
  must('qemu-img', ['create', '-q', '-f', 'qcow2', base, `${5 * GiB}`]);
  qemuIo(base, 'write -P 1 0 64k', 'write -P 2 1M 192k', 'write -z 2M 64k', 'write -P 3 4400M 128k', `write -P 4 ${5 * GiB - 512} 512`);
  CORPUS.base = base;
  const comp = t.path('comp.qcow2');
  must('qemu-img', ['create', '-q', '-f', 'qcow2', comp, '8M']);
  qemuIo(comp, 'write -c -P 7 0 64k', 'write -P 8 64k 64k', 'write -c -P 9 1M 64k');
  CORPUS.comp = comp;
  // An overlay and an overlay of the overlay.
  const mid = t.path('mid.qcow2');
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', mid]);
  qemuIo(mid, 'write -P 5 64k 64k', 'write -z 1M 64k', 'write -P 6 4400M 4k');
  CORPUS.mid = mid;
  const top = t.path('top.qcow2');
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', top]);
  qemuIo(top, 'write -P 10 2M 4k');
  CORPUS.top = top;
  // The other formats, by qemu-img and by imgtool.
  for (const fmt of ['vdi', 'qcow']) {
    CORPUS[`q-${fmt}`] = t.path(`q.${fmt}`);
    must('qemu-img', ['convert', '-O', fmt, comp, CORPUS[`q-${fmt}`]!]);
    CORPUS[`i-${fmt}`] = t.path(`i.${fmt}`);
    expect(imgtool(['convert', '-O', fmt, comp, CORPUS[`i-${fmt}`]!]).status).toBe(0);
  }
  // Formats on the shared engine (their layers answer through the driver's lookup): as qemu-img writes them.
  for (const [name, fmt, opts] of [
    ['q-vmdk', 'vmdk', []],
    ['q-vmdk-stream', 'vmdk', ['-o', 'subformat=streamOptimized']],
    ['q-vpc', 'vpc', []],
  ] as Array<[string, string, string[]]>) {
    CORPUS[name] = t.path(`${name}.${fmt}`);
    must('qemu-img', ['convert', '-O', fmt, ...opts, comp, CORPUS[name]!]);
  }
  CORPUS['i-qcow2'] = t.path('i.qcow2');
  expect(imgtool(['convert', '-O', 'qcow2', '--backing', top, CORPUS['i-qcow2']!]).status).toBe(0);
  CORPUS['i-qcow2c'] = t.path('ic.qcow2');
  expect(imgtool(['convert', '-c', '-O', 'qcow2', comp, CORPUS['i-qcow2c']!]).status).toBe(0);
  CORPUS['q-vdi-static'] = t.path('s.vdi');
  must('qemu-img', ['convert', '-O', 'vdi', '-o', 'static=on', comp, CORPUS['q-vdi-static']!]);
  // Raw fully written (imgtool does not see a file's holes; a written file has none).
  CORPUS.raw = t.path('full.raw');
  writeFileSync(CORPUS.raw, pattern(3 * MiB, 5));
}, 120_000);

describe('map --output json equals qemu-img map --output=json', () => {
  for (const name of ['base', 'comp', 'mid', 'top', 'q-vdi', 'i-vdi', 'q-qcow', 'i-qcow', 'i-qcow2', 'i-qcow2c', 'raw', 'q-vmdk', 'q-vmdk-stream', 'q-vpc']) {
    // Not here: a fixed VDI (qemu looks for holes in the file under its blocks; imgtool does not), and
    // vhdx (qemu 7.2 has no block status for it: it maps the whole disk as data without offsets).
    it(name, () => {
      const file = CORPUS[name]!;
      const hash = sha256File(file);
      const ours = ourMap(['--output', 'json', '--backing', file]);
      for (const e of ours) {
        expect(typeof e.compressed).toBe('boolean');
        delete e.compressed;
      }
      expect(ours).toEqual(qemuMap(file));
      expect(sha256File(file)).toBe(hash);
    });
  }

  it('accepts --output=json and names compressed clusters', () => {
    const ours = ourMap(['--output=json', CORPUS.comp!]);
    expect(ours.filter((e) => e.compressed).map((e) => e.start)).toEqual([0, MiB]);
  });

  it('without --backing an overlay maps its own layer only, never opening the backing file', () => {
    const ours = ourMap(['--output', 'json', CORPUS.top!]);
    expect(ours.every((e) => e.depth === 0)).toBe(true);
    expect(ours.find((e) => e.start === 0)).toMatchObject({ present: false, zero: false, data: false });
    expect(ours.find((e) => e.start === 2 * MiB)).toMatchObject({ present: true, data: true });
  });

  it('--start-offset and --max-length take a window, as qemu-img', () => {
    const args = ['--start-offset', '1M', '--max-length', '3M'];
    const ours = ourMap(['--output', 'json', '--backing', ...args, CORPUS.top!]).map(({ compressed: _c, ...e }) => e);
    expect(ours).toEqual(JSON.parse(must('qemu-img', ['map', '--output=json', '--start-offset=1M', '--max-length=3M', CORPUS.top!])));
  });

  it('human output equals qemu-img map', () => {
    const r = imgtool(['map', '--backing', CORPUS.top!]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(must('qemu-img', ['map', CORPUS.top!]));
  });

  it('human output refuses compressed clusters with exit 1, as qemu-img', () => {
    const r = imgtool(['map', CORPUS.comp!]);
    const q = run('qemu-img', ['map', CORPUS.comp!]);
    expect(q.status).toBe(1);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('compressed clusters');
  });
});

describe('compare gives qemu-img compare exit codes and messages', () => {
  let raw: string;
  beforeAll(() => {
    raw = t.path('cmp.raw');
    must('qemu-img', ['convert', '-O', 'raw', CORPUS.comp!, raw]);
  });

  function both(a: string, b: string, extra: string[] = []): { ours: ReturnType<typeof imgtool>; qemu: ReturnType<typeof run> } {
    return { ours: imgtool(['compare', ...extra, '--backing', a, b]), qemu: run('qemu-img', ['compare', ...extra, a, b]) };
  }

  function expectSame(a: string, b: string, extra: string[] = []): number {
    const { ours, qemu } = both(a, b, extra);
    expect(ours.status).toBe(qemu.status);
    expect(ours.stdout).toBe(qemu.stdout);
    return ours.status;
  }

  it('identical pairs across formats and chains', () => {
    for (const other of ['q-vdi', 'i-vdi', 'q-qcow', 'i-qcow', 'i-qcow2c', 'q-vdi-static']) expect(expectSame(CORPUS.comp!, CORPUS[other]!)).toBe(0);
    expect(expectSame(CORPUS.top!, CORPUS['i-qcow2']!)).toBe(0);
  });

  for (const [where, offset] of [
    ['first byte', 0],
    ['middle', 4 * MiB + 777],
    ['last byte', 8 * MiB - 1],
  ] as const) {
    it(`one byte differing at the ${where}`, () => {
      const copy = t.path(`cmp-${offset}.raw`);
      copyFileSync(raw, copy);
      poke(copy, offset, 0x5a);
      expect(expectSame(CORPUS.comp!, copy)).toBe(1);
      expect(expectSame(copy, CORPUS['i-qcow2c']!)).toBe(1);
      expect(expectSame(CORPUS['q-vdi']!, copy)).toBe(1);
    });
  }

  it('a larger image: equal when its excess reads as zero, different when not; -s counts the size', () => {
    const big = t.path('big.qcow2');
    must('qemu-img', ['convert', '-O', 'qcow2', raw, big]);
    must('qemu-img', ['resize', '-q', big, '12M']);
    expect(expectSame(raw, big)).toBe(0);
    expect(expectSame(big, raw)).toBe(0);
    expect(expectSame(raw, big, ['-s'])).toBe(1);
    qemuIo(big, 'write -P 1 10M 1');
    expect(expectSame(raw, big)).toBe(1);
    expect(expectSame(big, raw)).toBe(1);
    const { ours } = both(raw, big);
    expect(ours.stdout).toBe('Warning: Image size mismatch!\nContent mismatch at offset 10485760!\n');
  });

  it('-s reports allocation differences', () => {
    const z = t.path('zero.qcow2');
    must('qemu-img', ['convert', '-O', 'qcow2', CORPUS.comp!, z]);
    qemuIo(z, 'write -z 4M 64k');
    expect(expectSame(CORPUS.comp!, z)).toBe(0);
    expect(expectSame(CORPUS.comp!, z, ['-s'])).toBe(1);
  });

  it('an image that cannot be opened: exit 2; -q prints nothing', () => {
    const r = imgtool(['compare', CORPUS.comp!, t.path('missing.qcow2')]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/missing\.qcow2/);
    const q = imgtool(['compare', '-q', CORPUS.comp!, CORPUS['q-vdi']!]);
    expect(q.status).toBe(0);
    expect(q.stdout).toBe('');
  });
});
