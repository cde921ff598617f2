/**
 * `create`, `measure`, `snapshot -l` and `info --backing-chain`, judged by
 * qemu-img 7.2: created images pass qemu-img check and qemu-img info agrees
 * on format, size, options and backing file; measure equals qemu-img measure
 * for qcow2 and what `convert` actually writes for every format.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, statSync } from 'node:fs';
import { imgtool, must, qemuCheck, qemuInfo, run, sha256File, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-cmd-create-');
afterAll(() => t.cleanup());
const GiB = 1 << 30;

function qemuIo(file: string, ...cmds: string[]): void {
  must('qemu-io', [...cmds.flatMap((c) => ['-c', c]), file]);
}

function ok(args: string[]): string {
  const r = imgtool(args);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return r.stdout;
}

let src: string;
let overlay: string;
beforeAll(() => {
  // A source with data, a hole, zero clusters, a compressed cluster and data past 4 GiB, under an overlay.
  src = t.path('src.qcow2');
  must('qemu-img', ['create', '-q', '-f', 'qcow2', src, `${5 * GiB}`]);
  qemuIo(src, 'write -P 1 0 64k', 'write -P 2 1M 300k', 'write -z 2M 64k', 'write -c -P 3 3M 64k', 'write -P 4 4400M 128k', `write -P 5 ${5 * GiB - 4096} 4096`);
  overlay = t.path('overlay.qcow2');
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'src.qcow2', '-F', 'qcow2', overlay]);
  qemuIo(overlay, 'write -P 6 64k 64k', 'write -P 7 4G 1M');
}, 60_000);

describe('measure', () => {
  const qemuMeasure = (args: string[]) => JSON.parse(must('qemu-img', ['measure', '--output=json', ...args]));
  const ours = (args: string[]) => JSON.parse(ok(['measure', '--output', 'json', ...args]));

  it('equals qemu-img measure for qcow2 output: --size and image sources, with options', () => {
    for (const size of ['1000', '1M', '1G', '100G', '3T']) {
      expect(ours(['-O', 'qcow2', '--size', size])).toEqual(qemuMeasure(['-O', 'qcow2', '--size', size]));
    }
    for (const o of ['cluster_size=4k', 'cluster_size=2M,refcount_bits=64', 'extended_l2=on', 'refcount_bits=1', 'compat=0.10', 'preallocation=metadata']) {
      expect(ours(['-O', 'qcow2', '-o', o, '--size', '7G'])).toEqual(qemuMeasure(['-O', 'qcow2', '-o', o, '--size', '7G']));
      // Not with clusters smaller than the source's: qemu also asks the host file (a partly written cluster at its end), imgtool does not.
      if (o !== 'cluster_size=4k') expect(ours(['-O', 'qcow2', '-o', o, src])).toEqual(qemuMeasure(['-O', 'qcow2', '-o', o, src]));
    }
    expect(ours(['-O', 'qcow2', '--backing', overlay])).toEqual(qemuMeasure(['-O', 'qcow2', overlay]));
    expect(ours(['-O', 'raw', src])).toEqual(qemuMeasure(['-O', 'raw', src]));
  });

  it('human output as qemu-img', () => {
    expect(ok(['measure', '-O', 'qcow2', src])).toBe(must('qemu-img', ['measure', '-O', 'qcow2', src]));
    expect(ok(['measure', '-O', 'qcow2', '--size', '1G'])).toBe(must('qemu-img', ['measure', '-O', 'qcow2', '--size', '1G']));
  });

  for (const [fmt, opts] of [
    ['qcow2', []],
    ['qcow2', ['-o', 'cluster_size=4k']],
    ['vdi', []],
    ['vdi', ['-o', 'static=on']],
    ['qcow', []],
    ['raw', []],
  ] as Array<[string, string[]]>) {
    it(`required bounds the file convert writes, exactly for whole clusters of data: ${fmt} ${opts.join(' ')}`, () => {
      const out = t.path(`m-${fmt}-${opts.length}.${fmt}`);
      ok(['convert', '-O', fmt, ...opts, '--backing', overlay, out]);
      const m = ours(['-O', fmt, ...opts, '--backing', overlay]);
      expect(statSync(out).size).toBeLessThanOrEqual(m.required);
      expect(m['fully-allocated']).toBeGreaterThanOrEqual(m.required);
      // A source whose data fills whole 64 KiB clusters: convert writes exactly `required`
      // (qcow2: qemu's required also counts the L2 tables of empty regions, so only with one L2 table's span).
      const aligned = t.path(`al-${fmt}-${opts.length}.qcow2`);
      must('qemu-img', ['create', '-q', '-f', 'qcow2', aligned, fmt === 'qcow2' ? '64M' : '3G']);
      qemuIo(aligned, 'write -P 1 0 64k', 'write -P 2 1M 2M', 'write -z 8M 64k', `write -P 3 ${fmt === 'qcow2' ? '60M' : '2G'} 128k`);
      const exact = t.path(`ex-${fmt}-${opts.length}.${fmt}`);
      ok(['convert', '-O', fmt, ...opts, aligned, exact]);
      if (fmt !== 'qcow2' || !opts.length) expect(statSync(exact).size).toBe(ours(['-O', fmt, ...opts, aligned]).required);
    });
  }

  it('--size with a file, and a format that cannot be measured, are refused', () => {
    expect(imgtool(['measure', '-O', 'qcow2', '--size', '1G', src]).status).not.toBe(0);
  });
});

describe('create', () => {
  const cases: Array<[string, string[], Record<string, unknown>]> = [
    ['raw', [], {}],
    ['qcow2', [], { compat: '1.1', 'refcount-bits': 16 }],
    ['qcow2', ['-o', 'compat=0.10'], { compat: '0.10' }],
    ['qcow2', ['-o', 'cluster_size=2M,refcount_bits=64,lazy_refcounts=on'], { 'refcount-bits': 64, 'lazy-refcounts': true }],
    ['qcow2', ['-o', 'extended_l2=on,compression_type=zstd'], { 'extended-l2': true, 'compression-type': 'zstd' }],
    ['qcow2', ['-o', 'preallocation=metadata'], {}],
    ['vdi', [], {}],
    ['vdi', ['-o', 'static=on'], {}],
    ['qcow', [], {}],
  ];
  for (const [fmt, opts, specific] of cases) {
    it(`${fmt} ${opts.join(' ')}: qemu-img check clean, info agrees`, () => {
      const file = t.path(`c-${fmt}-${opts.join('').replace(/\W/g, '')}.${fmt}`);
      const out = ok(['create', '-f', fmt, ...opts, file, '6G']);
      expect(out).toMatch(/^Formatting '.*', fmt=\w+ size=6442450944/);
      const info = qemuInfo(file);
      expect(info.format).toBe(fmt);
      expect(info['virtual-size']).toBe(6 * GiB);
      expect((info['format-specific'] as { data?: Record<string, unknown> } | undefined)?.data ?? {}).toMatchObject(specific);
      if (fmt === 'qcow2' || fmt === 'vdi') expect(qemuCheck(file).status).toBe(0);
      expect(run('qemu-img', ['compare', '-f', fmt, file, '-F', 'raw', t.path('c-raw-.raw')]).status).toBe(0);
    });
  }

  it('-b -F: an overlay recording its backing file, sized from it; qemu-img reads through it', () => {
    const base = t.path('small.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', base, '24M']);
    qemuIo(base, 'write -P 1 0 64k', 'write -P 2 20M 1M');
    for (const fmt of ['qcow2', 'qcow']) {
      const file = t.path(`ov.${fmt}`);
      const hash = sha256File(base);
      ok(['create', '-q', '-f', fmt, '-b', 'small.qcow2', '-F', 'qcow2', file]);
      const info = qemuInfo(file);
      expect(info['backing-filename']).toBe('small.qcow2');
      if (fmt === 'qcow2') expect(info['backing-filename-format']).toBe('qcow2');
      expect(info['virtual-size']).toBe(24 << 20);
      expect(run('qemu-img', ['compare', file, base]).status).toBe(0);
      if (fmt === 'qcow2') expect(qemuCheck(file).status).toBe(0);
      expect(sha256File(base)).toBe(hash);
    }
    // qcow overlays are laid out byte for byte as qemu-img lays them out.
    must('qemu-img', ['create', '-q', '-f', 'qcow', '-b', 'small.qcow2', '-F', 'qcow2', t.path('qemu-ov.qcow')]);
    expect(sha256File(t.path('ov.qcow'))).toBe(sha256File(t.path('qemu-ov.qcow')));
  });

  it('refusals exit 1 as qemu-img: no size, -b without -F, a missing backing file, -b on raw; nothing is left behind', () => {
    for (const args of [
      ['-f', 'qcow2', t.path('r1.qcow2')],
      ['-f', 'qcow2', '-b', 'src.qcow2', t.path('r2.qcow2')],
      ['-f', 'qcow2', '-b', 'nope.qcow2', '-F', 'qcow2', t.path('r3.qcow2')],
      ['-f', 'raw', '-b', 'src.qcow2', '-F', 'qcow2', t.path('r4.raw')],
    ]) {
      const r = imgtool(['create', ...args]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/^imgtool: /);
      expect(() => statSync(args[args.length - 1]!)).toThrow();
    }
  });
});

describe('snapshot -l and info --backing-chain', () => {
  it('snapshot -l prints the table qemu-img prints', () => {
    const file = t.path('snap.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', file, '16M']);
    must('qemu-img', ['snapshot', '-c', 'first', file]);
    qemuIo(file, 'write -P 1 0 64k');
    must('qemu-img', ['snapshot', '-c', 'a snapshot with a long name', file]);
    expect(ok(['snapshot', '-l', file])).toBe(must('qemu-img', ['snapshot', '-l', file]));
    expect(ok(['snapshot', '-l', src])).toBe('');
  });

  it('info --backing-chain lists every image, top first, as qemu-img', () => {
    const ours = JSON.parse(ok(['info', '--backing-chain', '--output=json', overlay])) as Array<Record<string, unknown>>;
    const qemu = JSON.parse(must('qemu-img', ['info', '--backing-chain', '--output=json', overlay])) as Array<Record<string, unknown>>;
    expect(ours.map((i) => [i.filename, i.format, i['virtual-size'], i['backing-filename']])).toEqual(
      qemu.map((i) => [i.filename, i.format, i['virtual-size'], i['backing-filename']]),
    );
    const human = ok(['info', '--backing-chain', overlay]);
    expect(human.split('\n\n').length).toBe(2);
  });

  it('info --backing-chain never opens a backing file outside the allowed directory', () => {
    const sub = t.path('sub');
    mkdirSync(sub);
    const esc = `${sub}/esc.qcow2`;
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '../src.qcow2', '-F', 'qcow2', esc]);
    const r = imgtool(['info', '--backing-chain', esc]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/outside the allowed directory/);
  });
});
