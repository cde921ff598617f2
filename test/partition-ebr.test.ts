/**
 * Extended partitions written by us (layoutDos + encodeEbrChain): sfdisk
 * reads back the layout asked for, and sfdisk fed the dump of our table
 * writes the same bytes in the MBR and in every EBR (CHS fields included),
 * on small disks and past cylinder 1023. Our own EBR reader agrees.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { must, tempDir } from './helpers/peers.js';
import { pokeFile, readRange, sfdiskJson, sfdiskWrite, sparseFile } from './partition-helpers.js';
import { type PartSpec, layoutDos, layoutMbr } from '../src/partition/layout.js';
import { encodeEbrChain, walkEbrChain } from '../src/partition/ebr.js';
import { encodeMbr } from '../src/partition/mbr.js';
import { ImageError } from '../src/core/errors.js';

const t = tempDir('imgtool-pebr-');
afterAll(() => t.cleanup());

const MiB = 1 << 20;
const S = 512;

/** Write the table of `specs` (MBR and EBRs) to a sparse file of `size` bytes; return where the table sectors are. */
function writeTable(name: string, size: number, specs: PartSpec[]): { file: string; sectors: number[] } {
  const file = sparseFile(t.path(name), size);
  const { parts, extended } = layoutDos(size, specs);
  const primary = [...parts.filter((p) => p.number <= 4), ...(extended ? [extended] : [])];
  const entries = [1, 2, 3, 4].map((n) => primary.find((p) => p.number === n)).map((p) => p && { bootable: p.bootable, type: p.type, start: p.start, size: p.size });
  pokeFile(file, 0, encodeMbr({ signature: 0x1234abcd, entries, bootCode: new Uint8Array(440) }, size));
  const sectors = [0];
  if (extended) {
    const logicals = parts.filter((p) => p.number > 4).map((p) => ({ ebr: p.ebr!, start: p.start, size: p.size, type: p.type }));
    for (const e of encodeEbrChain(logicals, extended, size)) {
      pokeFile(file, e.offset, e.sector);
      sectors.push(e.offset);
    }
  }
  return { file, sectors };
}

/** sfdisk, given the dump of `file`'s table, on a fresh disk of the same size. */
function sfdiskRewrite(file: string, size: number): string {
  const dump = must('sfdisk', ['--dump', file]).replace(new RegExp(file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&'), 'g'), 'disk');
  const copy = sparseFile(`${file}.sfdisk`, size);
  sfdiskWrite(copy, dump);
  return copy;
}

const layouts: Array<[string, number, PartSpec[]]> = [
  ['five partitions: root, swap, three more', 256 * MiB, [
    { size: 64 * MiB, type: 'linux', bootable: true },
    { size: 32 * MiB, type: 'swap' },
    { size: 16 * MiB, type: 'linux' },
    { size: 24 * MiB, type: 'linux' },
    { size: 8 * MiB, type: 'linux' },
  ]],
  ['eight partitions, the last one taking the rest', 512 * MiB, [
    { size: 100 * MiB, type: 'linux', bootable: true },
    { size: 20 * MiB, type: 'swap' },
    ...Array.from({ length: 5 }, (_, i) => ({ size: (i + 3) * MiB, type: 'linux' })),
    { size: 'rest', type: 'lvm' },
  ]],
  ['logical partitions past cylinder 1023 (CHS FE FF FF)', 20 * 1024 * MiB, [
    { size: 9 * 1024 * MiB, type: 'linux', bootable: true },
    { size: 1024 * MiB, type: 'swap' },
    { size: 1024 * MiB, type: 'linux' },
    { size: 3 * 1024 * MiB, type: 'linux' },
    { size: 'rest', type: 'linux' },
  ]],
];

describe('extended and logical partitions, as sfdisk writes them', () => {
  it.each(layouts)('%s: sfdisk reads the layout; its own table for the same layout is byte-identical', async (_name, size, specs) => {
    const { file, sectors } = writeTable(`${_name.replace(/\W+/g, '-')}.img`, size, specs);
    const { parts, extended } = layoutDos(size, specs);
    const sf = sfdiskJson(file)!;
    expect(sf.label).toBe('dos');
    const want = [...parts, extended!].sort((a, b) => a.number - b.number);
    expect(sf.partitions!.map((p) => ({ n: Number(/(\d+)$/.exec(p.node)![1]), start: p.start, size: p.size, type: p.type, bootable: !!p.bootable }))).toEqual(
      want.map((p) => ({ n: p.number, start: p.start / S, size: p.size / S, type: p.type.toString(16), bootable: p.bootable })),
    );
    // Logical partitions follow each other: each 1 MiB after its EBR, the EBR where the one before ends.
    const logicals = parts.filter((p) => p.number > 4);
    expect(logicals[0]!.ebr).toBe(extended!.start);
    for (const [i, l] of logicals.entries()) {
      expect(l.start - l.ebr!).toBe(MiB);
      if (i > 0) expect(l.ebr).toBe(logicals[i - 1]!.start + logicals[i - 1]!.size);
    }
    expect(extended!.start + extended!.size).toBe(logicals.at(-1)!.start + logicals.at(-1)!.size);
    const copy = sfdiskRewrite(file, size);
    for (const off of sectors) {
      // The MBR's boot code is ours to leave zero, as sfdisk does on a blank disk; compare whole sectors.
      expect(readRange(file, off, S).toString('hex'), `table sector at byte ${off}`).toBe(readRange(copy, off, S).toString('hex'));
    }
    // Our reader walks the chain we wrote.
    const walk = await walkEbrChain(async (o) => new Uint8Array(readRange(file, o, S)), { number: 4, start: extended!.start, size: extended!.size }, size);
    expect(walk.warnings).toEqual([]);
    expect(walk.complete).toBe(true);
    expect(walk.logicals.map((l) => [l.number, l.start, l.size, l.type])).toEqual(logicals.map((l) => [l.number, l.start, l.size, l.type]));
  });

  it('four partitions or fewer stay primary, exactly as layoutMbr places them', () => {
    const specs: PartSpec[] = [{ size: 8 * MiB, type: 'linux' }, { size: 4 * MiB, type: 'swap' }, { size: 'rest', type: 'linux' }];
    expect(layoutDos(64 * MiB, specs)).toEqual({ parts: layoutMbr(64 * MiB, specs) });
  });

  it("refuses 'rest' before the last partition, more than 59 partitions, and partitions that do not fit", () => {
    const p = (size: number | 'rest'): PartSpec => ({ size, type: 'linux' });
    expect(() => layoutDos(64 * MiB, [p(MiB), p(MiB), p(MiB), p('rest'), p(MiB)])).toThrow(/'rest' is only allowed for the last partition/);
    expect(() => layoutDos(1024 * MiB, Array.from({ length: 60 }, () => p(MiB)))).toThrow(/at most 59 partitions/);
    expect(() => layoutDos(16 * MiB, [p(4 * MiB), p(4 * MiB), p(4 * MiB), p(MiB), p(MiB)])).toThrow(ImageError);
  });

  it('refuses an EBR chain whose logical partitions leave the extended partition or overlap', () => {
    const ext = { start: 10 * MiB, size: 10 * MiB };
    expect(() => encodeEbrChain([{ ebr: 10 * MiB, start: 11 * MiB, size: 10 * MiB, type: 0x83 }], ext, 64 * MiB)).toThrow(/does not fit extended partition/);
    expect(() =>
      encodeEbrChain(
        [
          { ebr: 10 * MiB, start: 11 * MiB, size: 4 * MiB, type: 0x83 },
          { ebr: 12 * MiB, start: 13 * MiB, size: MiB, type: 0x83 },
        ],
        ext,
        64 * MiB,
      ),
    ).toThrow(/does not fit extended partition/);
  });
});
