/**
 * Fields qemu ignores when it reads an image are warnings here, not errors:
 * for each relaxed field, an image qemu-img made is mutated there; qemu-img
 * must read it (the judge), imgtool must read exactly the same bytes and
 * report one warning naming the field. Fields that change which bytes are
 * read stay refused (their tests are in the *-hostile tests).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { ImageError } from '../src/core/errors.js';
import { openImage } from '../src/formats/index.js';
import { imgtool, must, run, tempDir } from './helpers/peers.js';

const t = tempDir();
afterAll(() => t.cleanup());

/** 4 MiB with data in four places; compressible text so -c makes compressed clusters. */
function source(): Buffer {
  const b = Buffer.alloc(4 << 20);
  const text = Buffer.from(Array.from({ length: 20000 }, (_, i) => `line ${i} of a compressible disk\n`).join(''));
  for (const off of [0, 70000, 1 << 20, 3 << 20]) text.copy(b, off, off % 100000, (off % 100000) + 65536);
  return b;
}

const be64 = (b: Buffer, o: number) => b.readBigUInt64BE(o);
const setBe64 = (b: Buffer, o: number, v: bigint) => b.writeBigUInt64BE(v, o);

/** Offsets of the first L1 entry and the first L2 entry of a qcow2 image. */
function qcow2Tables(b: Buffer): { l1: number; l2: number } {
  const l1 = Number(be64(b, 40));
  return { l1, l2: Number(be64(b, l1) & 0x00fffffffffffe00n) };
}

/** The offset of a qcow2 header extension's length field, by type. */
function extension(b: Buffer, type: number): number {
  for (let p = b.readUInt32BE(100); p + 8 <= 4096; ) {
    const ty = b.readUInt32BE(p);
    if (ty === 0) break;
    if (ty === type) return p + 4;
    p += 8 + Math.ceil(b.readUInt32BE(p + 4) / 8) * 8;
  }
  throw new Error(`no extension 0x${type.toString(16)}`);
}

interface Case {
  name: string;
  base: string; // fixture key
  fmt: string;
  mutate(b: Buffer): void;
  /** Text the warning must contain (the field). */
  field: string;
}

const fixtures: Record<string, string> = {};

beforeAll(() => {
  const raw = t.path('src.raw');
  writeFileSync(raw, source());
  const make = (name: string, fmt: string, opts: string[]) => {
    fixtures[name] = t.path(name);
    must('qemu-img', ['convert', '-q', '-f', 'raw', '-O', fmt, ...opts, raw, fixtures[name]!]);
  };
  make('plain.qcow2', 'qcow2', []);
  make('extl2.qcow2', 'qcow2', ['-o', 'extended_l2=on']);
  make('comp.qcow2', 'qcow2', ['-c']);
  make('compx.qcow2', 'qcow2', ['-c', '-o', 'extended_l2=on']);
  make('plain.vdi', 'vdi', []);
});

const CASES: Case[] = [
  { name: 'qcow2 L1 entry reserved bit 0', base: 'plain.qcow2', fmt: 'qcow2', field: 'L1 entry 0', mutate: (b) => setBe64(b, qcow2Tables(b).l1, be64(b, qcow2Tables(b).l1) | 1n) },
  { name: 'qcow2 L1 entry reserved bit 56', base: 'plain.qcow2', fmt: 'qcow2', field: 'L1 entry 0', mutate: (b) => setBe64(b, qcow2Tables(b).l1, be64(b, qcow2Tables(b).l1) | (1n << 56n)) },
  { name: 'qcow2 L2 entry reserved bit 1', base: 'plain.qcow2', fmt: 'qcow2', field: 'L2 entry 0', mutate: (b) => setBe64(b, qcow2Tables(b).l2, be64(b, qcow2Tables(b).l2) | 2n) },
  { name: 'qcow2 L2 entry reserved bit 61', base: 'plain.qcow2', fmt: 'qcow2', field: 'L2 entry 0', mutate: (b) => setBe64(b, qcow2Tables(b).l2, be64(b, qcow2Tables(b).l2) | (1n << 61n)) },
  { name: 'qcow2 extended L2 entry bit 0', base: 'extl2.qcow2', fmt: 'qcow2', field: 'L2 entry 0', mutate: (b) => setBe64(b, qcow2Tables(b).l2, be64(b, qcow2Tables(b).l2) | 1n) },
  { name: 'qcow2 compressed entry with the copied flag', base: 'comp.qcow2', fmt: 'qcow2', field: 'L2 entry 0', mutate: (b) => setBe64(b, qcow2Tables(b).l2, be64(b, qcow2Tables(b).l2) | (1n << 63n)) },
  { name: 'qcow2 compressed extended entry with a subcluster bitmap', base: 'compx.qcow2', fmt: 'qcow2', field: 'L2 entry 0', mutate: (b) => setBe64(b, qcow2Tables(b).l2 + 8, 0x1_0000_0001n) },
  { name: 'qcow2 snapshots_offset past 2^53 with no snapshots', base: 'plain.qcow2', fmt: 'qcow2', field: 'snapshots_offset', mutate: (b) => setBe64(b, 64, 1n << 60n) },
  { name: 'qcow2 backing_file_offset with a zero backing_file_size', base: 'plain.qcow2', fmt: 'qcow2', field: 'backing_file_size', mutate: (b) => setBe64(b, 8, 600n) },
  { name: 'qcow2 feature name table length not a multiple of 48', base: 'plain.qcow2', fmt: 'qcow2', field: 'feature name table length', mutate: (b) => b.writeUInt32BE(b.readUInt32BE(extension(b, 0x6803f857)) - 1, extension(b, 0x6803f857)) },
  { name: 'qcow2 header_length not a multiple of 8', base: 'plain.qcow2', fmt: 'qcow2', field: 'header_length', mutate: (b) => b.writeUInt32BE(116, 100) },
  { name: 'vdi image_flags with undefined bits', base: 'plain.vdi', fmt: 'vdi', field: 'image_flags', mutate: (b) => b.writeUInt32LE(0x12345, 80) },
  { name: 'vdi unknown image_type', base: 'plain.vdi', fmt: 'vdi', field: 'image_type', mutate: (b) => b.writeUInt32LE(7, 76) },
  { name: 'vdi header_size 200', base: 'plain.vdi', fmt: 'vdi', field: 'header_size', mutate: (b) => b.writeUInt32LE(200, 72) },
  { name: 'vdi header_size 10000', base: 'plain.vdi', fmt: 'vdi', field: 'header_size', mutate: (b) => b.writeUInt32LE(10000, 72) },
  { name: 'vdi lchs_sector_size 4096', base: 'plain.vdi', fmt: 'vdi', field: 'lchs_sector_size', mutate: (b) => { b.writeUInt32LE(400, 72); b.writeUInt32LE(4096, 468); } },
  { name: 'vdi blocks_allocated larger than blocks_in_image', base: 'plain.vdi', fmt: 'vdi', field: 'blocks_allocated', mutate: (b) => b.writeUInt32LE(1000, 388) },
  { name: 'vdi blocks_allocated 0 while blocks are mapped', base: 'plain.vdi', fmt: 'vdi', field: 'block_map', mutate: (b) => b.writeUInt32LE(0, 388) },
];

async function readAll(path: string, fmt: string): Promise<{ bytes: Buffer; warnings: string[]; heard: string[] }> {
  const heard: string[] = [];
  const opened = await openImage(path, { format: fmt, warn: (w) => heard.push(w) });
  try {
    const bytes = Buffer.alloc(opened.image.size);
    await opened.image.read(bytes, 0);
    return { bytes, warnings: [...(opened.image.warnings ?? [])], heard };
  } finally {
    await opened.image.close();
  }
}

describe('fields qemu ignores on read are warnings', () => {
  for (const c of CASES) {
    it(`${c.name}: qemu-img reads it, imgtool reads identical bytes and warns once`, async () => {
      const b = readFileSync(fixtures[c.base]!);
      c.mutate(b);
      const img = t.path(`case.${c.fmt}`);
      writeFileSync(img, b);
      const qraw = t.path('case-qemu.raw');
      const q = run('qemu-img', ['convert', '-f', c.fmt, '-O', 'raw', img, qraw]);
      expect(q.status, q.stderr).toBe(0);
      const ours = await readAll(img, c.fmt);
      expect(Buffer.compare(ours.bytes, readFileSync(qraw))).toBe(0);
      const mine = ours.warnings.filter((w) => w.includes(c.field));
      expect(mine, ours.warnings.join('\n')).toHaveLength(1);
      expect(mine[0]).toMatch(/\(at offset \d+, value [^)]+\)/);
      expect(ours.heard).toEqual(ours.warnings);
    });
  }

  it('a field that only matters for writing is still refused for writing (VDI blocks_allocated)', async () => {
    const b = readFileSync(fixtures['plain.vdi']!);
    b.writeUInt32LE(0, 388);
    const img = t.path('alloc0.vdi');
    writeFileSync(img, b);
    const e = await openImage(img, { writable: true }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ImageError);
    expect((e as ImageError).message).toMatch(/block_map\[0\].*blocks_allocated/);
  });
});

describe('warnings through the CLI', () => {
  let img: string;
  beforeAll(() => {
    const b = readFileSync(fixtures['plain.qcow2']!);
    const { l1, l2 } = qcow2Tables(b);
    setBe64(b, l1, be64(b, l1) | 1n);
    // Two L2 entries with reserved bits: reported once.
    setBe64(b, l2, be64(b, l2) | 2n);
    setBe64(b, l2 + 8, be64(b, l2 + 8) | 4n);
    img = t.path('cli.qcow2');
    writeFileSync(img, b);
  });

  it('convert prints each warning once on stderr and converts', () => {
    const out = t.path('cli.raw');
    const r = imgtool(['convert', '-O', 'raw', img, out]);
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stderr.trim().split('\n');
    expect(lines.every((l) => l.startsWith('imgtool: warning: qcow2: '))).toBe(true);
    expect(lines.filter((l) => l.includes('L1 entry 0'))).toHaveLength(1);
    expect(lines.filter((l) => l.includes('L2 entry'))).toHaveLength(1);
    expect(run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', img, out]).status).toBe(0);
  });

  it('info lists them under a warnings key (JSON) and in its text; none on stderr; no key when there are none', () => {
    const j = imgtool(['info', '--output', 'json', img]);
    expect(j.status).toBe(0);
    expect(j.stderr).toBe('');
    const info = JSON.parse(j.stdout) as { warnings?: string[] };
    expect(info.warnings?.some((w) => w.includes('L1 entry 0'))).toBe(true);
    const h = imgtool(['info', img]);
    expect(h.stdout).toMatch(/Warnings.*\n\s+qcow2: L1 entry 0 \(at offset \d+, value 0x[0-9a-f]+\)/);
    const clean = JSON.parse(imgtool(['info', '--output', 'json', fixtures['plain.qcow2']!]).stdout) as Record<string, unknown>;
    expect('warnings' in clean).toBe(false);
  });
});
