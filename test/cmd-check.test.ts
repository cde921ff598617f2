/**
 * `imgtool check` against qemu-img check 7.2 on qcow2 images damaged the way
 * qemu's iotests 060 and 112 damage them (hand edits of refcounts and
 * L1/L2 entries, the corrupt bit): the same messages, exit code and counts;
 * after `check -r`, qemu-img check agrees with the result and the guest data
 * equals qemu-img's own repair of the same damage. Without -r nothing is
 * written; raw has no check (63); mutated metadata never crashes it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { imgtool, must, qemuCheck, run, sha256File, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-cmd-check-');
afterAll(() => t.cleanup());
const CS = 65536;

let pristine: string;
beforeAll(() => {
  pristine = t.path('pristine.qcow2');
  must('qemu-img', ['create', '-q', '-f', 'qcow2', pristine, '64M']);
  must('qemu-io', ['-c', 'write -P 1 0 128k', '-c', 'write -c -P 2 1M 64k', '-c', 'write -P 3 40M 64k', pristine]);
  must('qemu-img', ['snapshot', '-c', 'snap', pristine]);
  must('qemu-io', ['-c', 'write -P 4 0 64k', pristine]);
});

const u64 = (d: Buffer, o: number) => Number(d.readBigUInt64BE(o));
const OFFSET_MASK = (1n << 56n) - 512n;

/** Damage a copy of the pristine image as iotests 060/112 do: by editing its tables. */
function damaged(kind: string): string {
  const file = t.path(`${kind}.qcow2`);
  copyFileSync(pristine, file);
  let d = readFileSync(file);
  const rt = u64(d, 48);
  const rb = u64(d, rt);
  const l1 = u64(d, 40);
  const l2 = Number(d.readBigUInt64BE(l1) & OFFSET_MASK);
  const data = Number(d.readBigUInt64BE(l2) & OFFSET_MASK);
  switch (kind) {
    case 'leak': {
      const n = Math.ceil(d.length / CS);
      d = Buffer.concat([d, Buffer.alloc(n * CS + CS - d.length)]);
      d.writeUInt16BE(1, rb + 2 * n);
      break;
    }
    case 'refcount-too-high':
      d.writeUInt16BE(3, rb + 2 * (data / CS));
      break;
    case 'refcount-too-low':
      d.writeUInt16BE(0, rb + 2 * (data / CS));
      break;
    case 'l2-into-refcount-table':
      d.writeBigUInt64BE((1n << 63n) | BigInt(rt), l2 + 8 * 5);
      break;
    case 'l2-past-the-end':
      d.writeBigUInt64BE((1n << 63n) | (1n << 30n), l2 + 8 * 5);
      break;
    case 'l1-into-refcount-block':
      d.writeBigUInt64BE((1n << 63n) | BigInt(rb), l1);
      break;
    case 'corrupt-bit':
      d.writeBigUInt64BE(d.readBigUInt64BE(72) | 2n, 72);
      break;
    case 'copied-flag-missing':
      d.writeBigUInt64BE(d.readBigUInt64BE(l2 + 8) & ~(1n << 63n), l2 + 8);
      break;
  }
  writeFileSync(file, d);
  return file;
}

const KINDS = ['leak', 'refcount-too-high', 'refcount-too-low', 'l2-into-refcount-table', 'l2-past-the-end', 'l1-into-refcount-block', 'corrupt-bit', 'copied-flag-missing'];
const COUNTS = ['leaks', 'corruptions', 'check-errors', 'allocated-clusters', 'fragmented-clusters', 'compressed-clusters', 'total-clusters', 'image-end-offset'];
const pick = (j: Record<string, unknown>) => Object.fromEntries(COUNTS.map((k) => [k, j[k] ?? 0]));

describe('qcow2 check as qemu-img check', () => {
  it('a pristine image (with a snapshot and a compressed cluster) is clean', () => {
    const r = imgtool(['check', pristine]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(must('qemu-img', ['check', pristine]));
  });

  for (const kind of KINDS) {
    it(`${kind}: same messages, exit code and counts; without -r nothing is written`, () => {
      const file = damaged(kind);
      const hash = sha256File(file);
      const ours = imgtool(['check', file]);
      const q = run('qemu-img', ['check', file]);
      expect(ours.status).toBe(q.status);
      expect(ours.stdout).toBe(q.stdout);
      expect(ours.stderr).toBe(q.stderr);
      const j = imgtool(['check', '--output=json', file]);
      const qj = qemuCheck(file);
      expect(pick(JSON.parse(j.stdout))).toEqual(pick(qj.json!));
      expect(JSON.parse(j.stdout)).toMatchObject({ filename: file, format: 'qcow2' });
      expect(sha256File(file)).toBe(hash);
    });

    for (const mode of ['leaks', 'all']) {
      it(`${kind}: check -r ${mode} ends where qemu-img's repair ends`, () => {
        const ours = t.path(`${kind}-${mode}-ours.qcow2`);
        const theirs = t.path(`${kind}-${mode}-qemu.qcow2`);
        copyFileSync(damaged(kind), ours);
        copyFileSync(ours, theirs);
        const r = imgtool(['check', '-r', mode, ours]);
        const q = run('qemu-img', ['check', '-r', mode, theirs]);
        if (kind === 'l1-into-refcount-block' || (kind === 'refcount-too-low' && mode === 'leaks')) {
          // The refcount structure needs rebuilding: imgtool refuses (exit 1, nothing written); qemu rebuilds with -r all.
          expect(r.status).toBe(1);
          expect(r.stderr).toMatch(/need to rebuild refcount structures/);
          expect(sha256File(ours)).toBe(sha256File(damaged(kind)));
          return;
        }
        expect(r.status).toBe(q.status);
        // qemu rebuilds the refcount structure for a refcount of 0 (elsewhere in the file); imgtool writes the one refcount.
        const noEnd = (s: string) => (kind === 'refcount-too-low' ? s.replace(/Image end offset: \d+\n/, '') : s);
        expect(noEnd(r.stdout)).toBe(noEnd(q.stdout));
        expect(qemuCheck(ours).status).toBe(qemuCheck(theirs).status);
        expect(run('qemu-img', ['compare', ours, theirs]).status).toBe(0);
        if (mode === 'all' && kind !== 'l2-past-the-end') {
          expect(qemuCheck(ours).status).toBe(0);
          if (!kind.startsWith('l2-')) expect(run('qemu-img', ['compare', ours, pristine]).status).toBe(0);
        }
      });
    }
  }

  it('-r all on a refcount too low: qemu-img check clean, guest data unchanged', () => {
    const file = damaged('refcount-too-low');
    expect(imgtool(['check', '-r', 'all', file]).status).toBe(0);
    expect(qemuCheck(file).status).toBe(0);
    expect(run('qemu-img', ['compare', file, pristine]).status).toBe(0);
  });

  it('-r all clears the corrupt bit of a consistent image', () => {
    const file = damaged('corrupt-bit');
    expect(imgtool(['check', '-r', 'all', file]).status).toBe(0);
    expect((readFileSync(file).readBigUInt64BE(72) & 2n) === 0n).toBe(true);
  });
});

describe('vdi check as qemu-img check; qcow structure', () => {
  let vdi: string;
  beforeAll(() => {
    vdi = t.path('v.vdi');
    must('qemu-img', ['convert', '-O', 'vdi', pristine, vdi]);
  });

  /** Damage a copy of the VDI's block map or header (fields little-endian). */
  function vdiDamaged(kind: string): string {
    const file = t.path(`v-${kind}.vdi`);
    const d = readFileSync(vdi);
    const bmap = d.readUInt32LE(0x154);
    if (kind === 'duplicate') d.writeUInt32LE(d.readUInt32LE(bmap), bmap + 4 * 40);
    if (kind === 'index-too-large') d.writeUInt32LE(100000, bmap + 4 * 3);
    if (kind === 'blocks-allocated') d.writeUInt32LE(d.readUInt32LE(0x184) + 2, 0x184);
    writeFileSync(file, d);
    return file;
  }

  for (const kind of ['clean', 'duplicate', 'index-too-large', 'blocks-allocated']) {
    it(`vdi ${kind}: same messages, exit code and JSON; -r answers 63 as qemu-img`, () => {
      const file = kind === 'clean' ? vdi : vdiDamaged(kind);
      const hash = sha256File(file);
      const ours = imgtool(['check', file]);
      const q = run('qemu-img', ['check', file]);
      expect(ours.status).toBe(q.status);
      expect(ours.stdout).toBe(q.stdout);
      expect(ours.stderr).toBe(q.stderr);
      expect(JSON.parse(imgtool(['check', '--output', 'json', file]).stdout)).toEqual(qemuCheck(file).json);
      expect(imgtool(['check', '-r', 'all', file]).status).toBe(run('qemu-img', ['check', '-r', 'all', file]).status);
      expect(sha256File(file)).toBe(hash);
    });
  }

  it('qcow: clean images pass; a data cluster past the end and overlapping clusters are corruptions (exit 2)', () => {
    const file = t.path('q.qcow');
    expect(imgtool(['convert', '-O', 'qcow', pristine, file]).status).toBe(0);
    expect(imgtool(['check', file]).status).toBe(0);
    const d = readFileSync(file);
    const l2 = Number(d.readBigUInt64BE(Number(d.readBigUInt64BE(40))));
    d.writeBigUInt64BE(d.readBigUInt64BE(l2), l2 + 8 * 7); // a second reference to the first data cluster
    d.writeBigUInt64BE(1n << 40n, l2 + 8 * 9); // past the end
    const bad = t.path('bad.qcow');
    writeFileSync(bad, d);
    const r = imgtool(['check', bad]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/past the end of the file/);
    expect(r.stderr).toMatch(/overlaps/);
    expect(JSON.parse(imgtool(['check', '--output', 'json', bad]).stdout).corruptions).toBe(2);
  });
});

describe('other formats and hostile input', () => {
  it('raw has no check: exit 63, as qemu-img', () => {
    const file = t.path('a.raw');
    writeFileSync(file, Buffer.alloc(65536));
    const r = imgtool(['check', file]);
    expect(r.status).toBe(63);
    expect(run('qemu-img', ['check', '-f', 'raw', file]).status).toBe(63);
  });

  it('an L1 table of 256k entries all naming one L2 table completes (each table is read once, not 256k times)', () => {
    const d = readFileSync(pristine);
    const l2 = d.readBigUInt64BE(Number(d.readBigUInt64BE(40)));
    const entries = 1 << 18;
    const at = Math.ceil(d.length / CS) * CS;
    const l1 = Buffer.alloc(entries * 8);
    for (let i = 0; i < entries; i++) l1.writeBigUInt64BE(l2, i * 8);
    const out = Buffer.concat([d, Buffer.alloc(at - d.length), l1]);
    out.writeBigUInt64BE(BigInt(entries) * 512n * 1024n * 1024n, 24); // the size those entries map
    out.writeUInt32BE(entries, 36);
    out.writeBigUInt64BE(BigInt(at), 40);
    const file = t.path('many-l1.qcow2');
    writeFileSync(file, out);
    const r = imgtool(['check', '--output', 'json', file], { timeout: 120_000 });
    expect(r.status).toBe(2);
    expect(JSON.parse(r.stdout).corruptions).toBeGreaterThan(0);
  });

  it('mutated metadata: a completed check or a clear error, never a crash', () => {
    const base = readFileSync(pristine);
    let seed = 12345;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const meta = [0, u64(base, 48), u64(base, u64(base, 48)), u64(base, 40), Number(base.readBigUInt64BE(u64(base, 40)) & OFFSET_MASK), u64(base, 64)];
    for (let n = 0; n < 24; n++) {
      const d = Buffer.from(base);
      for (let k = 0; k < 4; k++) {
        const at = meta[Math.floor(rnd() * meta.length)]! + Math.floor(rnd() * 256);
        d[at] = Math.floor(rnd() * 256);
      }
      const file = t.path(`mut-${n}.qcow2`);
      writeFileSync(file, d);
      const hash = sha256File(file);
      const r = imgtool(['check', '--output', 'json', file], { timeout: 60_000 });
      expect([0, 1, 2, 3, 4, 5]).toContain(r.status);
      expect(r.stderr).not.toMatch(/internal error/);
      expect(sha256File(file)).toBe(hash);
      const m = imgtool(['map', '--output=json', file], { timeout: 60_000 });
      expect(m.stderr).not.toMatch(/internal error/);
    }
  });
});
