/**
 * The conversion matrix: every pair of {raw, qcow, qcow2, vdi, vmdk, vpc, vhdx} both ways,
 * through the CLI, over several patterned sources. qemu-img compare judges
 * every output against the source; qemu-img check judges every qcow2,
 * VDI, VMDK and VHDX output (qemu-img has no check for vpc); info agrees with qemu-img info. Pipes: a VDI written to
 * standard output and saved by cat is a valid, identical image.
 */
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { openSync, writeSync, closeSync, ftruncateSync, statSync } from 'node:fs';
import { imgtool, must, qemuCheck, qemuCompare, qemuInfo, runAsync, tempDir } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

const t = tempDir('imgtool-matrix-');
afterAll(() => t.cleanup());

const FORMATS = ['raw', 'qcow', 'qcow2', 'vdi', 'vmdk', 'vpc', 'vhdx'] as const;
const MIB = 1 << 20;

interface Source {
  name: string;
  size: number;
  writes: Array<[offset: number, length: number, seed: number]>;
}

const SOURCES: Source[] = [
  { name: 'empty', size: 4 * MIB, writes: [] },
  { name: 'ends', size: 16 * MIB, writes: [[0, 70_000, 1], [16 * MIB - 4096, 4096, 2]] },
  { name: 'full', size: 6 * MIB, writes: [[0, 6 * MIB, 3]] },
  { name: 'odd-size', size: 3 * MIB + 1536, writes: [[3 * MIB - 1000, 2536, 4], [12_345, 100_000, 5]] },
  { name: 'above-4g', size: 5 * 1024 * MIB, writes: [[4096, 8192, 6], [4 * 1024 * MIB + 12 * MIB + 512, 300_000, 7], [5 * 1024 * MIB - 512, 512, 8]] },
];

const path = (s: string, f: string) => t.path(`${s}.${f}`);

beforeAll(async () => {
  for (const s of SOURCES) {
    const raw = path(s.name, 'raw');
    const fd = openSync(raw, 'w');
    ftruncateSync(fd, s.size);
    for (const [off, len, seed] of s.writes) writeSync(fd, pattern(len, seed), 0, len, off);
    closeSync(fd);
    // The sources in the other formats are made by qemu-img, the reference.
    for (const f of ['qcow', 'qcow2', 'vdi', 'vmdk', 'vpc', 'vhdx']) {
      // Asynchronously: a worker blocked for a minute loses its connection to vitest.
      const r = await runAsync('qemu-img', ['convert', '-f', 'raw', '-O', f, raw, path(s.name, f)]);
      // qemu-img 7.2 exits 1 after writing a complete qcow (v1) image; compare proves it below.
      if (r.status !== 0 && f !== 'qcow') throw new Error(r.stderr);
      expect((await runAsync('qemu-img', ['compare', '-f', 'raw', '-F', f, raw, path(s.name, f)])).status).toBe(0);
    }
  }
}, 600_000);

describe.each(SOURCES.map((s) => s.name))('conversion matrix, source %s', (name) => {
  it.each(FORMATS.flatMap((from) => FORMATS.map((to) => [from, to] as const)))(
    '%s → %s gives an image identical to the source, clean for qemu-img check',
    (from, to) => {
      const src = path(name, from);
      const out = t.path(`${name}-${from}-to.${to}`);
      const r = imgtool(['convert', '-f', from, '-O', to, src, out]);
      expect(r.status, r.stderr).toBe(0);
      const cmp = qemuCompare(src, out, from, to);
      expect(cmp.status, cmp.stdout + cmp.stderr).toBe(0);
      if (to === 'qcow2' || to === 'vdi' || to === 'vmdk' || to === 'vhdx') {
        const c = qemuCheck(out, to);
        expect(c.status, c.text).toBe(0);
      }
      const ours = JSON.parse(imgtool(['info', '--output', 'json', out]).stdout);
      const theirs = qemuInfo(out, to);
      expect(ours.format).toBe(theirs.format);
      expect(ours['virtual-size']).toBe(theirs['virtual-size']);
    },
  );
});

describe('conversion to a pipe', () => {
  it.each(['raw', 'vdi', 'qcow2'])('writes %s to standard output; saved by cat, it is valid and identical to the source', (fmt) => {
    const src = path('ends', 'qcow2');
    const out = t.path(`piped.${fmt}`);
    const cli = new URL('../dist/bin/main.js', import.meta.url).pathname;
    must('bash', ['-c', `set -o pipefail; '${process.execPath}' '${cli}' convert -O ${fmt} '${src}' - | cat > '${out}'`]);
    expect(qemuCompare(src, out, 'qcow2', fmt).status).toBe(0);
    if (fmt !== 'raw') {
      const c = qemuCheck(out, fmt);
      expect(c.status, c.text).toBe(0);
      // The same layout size as the file written directly.
      const direct = t.path(`direct.${fmt}`);
      expect(imgtool(['convert', '-O', fmt, src, direct]).status).toBe(0);
      expect(statSync(out).size).toBe(statSync(direct).size);
    }
  });

  it('explains why a format cannot be written to a pipe', () => {
    const r = imgtool(['convert', '-O', 'qcow', path('ends', 'raw'), '-']);
    expect(r.status).toBe(4);
    expect(r.stderr).toMatch(/cannot be written to a pipe/);
  });
});
