/**
 * The MBR and GPT codecs and the partitioner, judged by sfdisk where bytes
 * on disk are concerned, plus round-trip properties over random layouts.
 */
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { randomUUID } from 'node:crypto';
import { ImageError } from '../src/core/errors.js';
import { type Mbr, decodeChs, encodeChs, encodeMbr, parseMbr } from '../src/partition/mbr.js';
import { layoutMbr } from '../src/partition/layout.js';
import { parseMbrType } from '../src/partition/types.js';
import { checkEntryArray, encodeGptEntries, encodeGptHeader, parseGptEntries, parseGptHeader } from '../src/partition/gpt.js';
import { crc32, crc32c } from '../src/partition/crc32.js';
import { tempDir } from './helpers/peers.js';
import { readRange, sfdiskWrite, sparseFile } from './partition-helpers.js';

const t = tempDir('imgtool-mbr-');
afterAll(() => t.cleanup());

const MiB = 1 << 20;
const GiB = 2 ** 30;

/** What sfdisk writes in bytes 440..511 for these sector-based entries. */
function sfdiskTableBytes(diskSize: number, id: number, parts: { start: number; size: number; type: number; boot?: boolean }[]): Buffer {
  const f = sparseFile(t.path(`sf-${randomUUID()}.img`), diskSize);
  const lines = parts.map((p) => `start=${p.start}, size=${p.size}, type=${p.type.toString(16)}${p.boot ? ', bootable' : ''}`);
  sfdiskWrite(f, `label: dos\nlabel-id: 0x${id.toString(16)}\nunit: sectors\n\n${lines.join('\n')}\n`);
  return readRange(f, 440, 72);
}

describe('MBR encoding matches what sfdisk writes', () => {
  const cases: { name: string; disk: number; parts: { start: number; size: number; type: number; boot?: boolean }[] }[] = [
    { name: 'a small disk with a bootable first partition', disk: 64 * MiB, parts: [{ start: 2048, size: 16384, type: 0x83, boot: true }, { start: 18432, size: 32768, type: 0x82 }, { start: 51200, size: 79872, type: 0x8e }] },
    { name: 'a 20 GiB disk whose second partition starts beyond cylinder 1023', disk: 20 * GiB, parts: [{ start: 2048, size: 20971520, type: 0x83 }, { start: 20973568, size: 20969472, type: 0x0c, boot: true }] },
    { name: 'partitions ending exactly at the CHS limit and just past it', disk: 16 * GiB, parts: [{ start: 2048, size: 16450560 - 2048, type: 0xfd }, { start: 16450560, size: 2048, type: 0xef }, { start: 16452608, size: 4096, type: 0x07 }] },
    { name: 'a 3 TiB disk using the last addressable sectors', disk: 3 * 2 ** 40, parts: [{ start: 2048, size: 0xffffffff - 2048 - 4096, type: 0x83 }, { start: 0xffffffff - 4096, size: 4096, type: 0x82 }] },
  ];
  for (const c of cases) {
    it(`writes the same entries, CHS fields, disk id and signature as sfdisk for ${c.name}`, () => {
      const id = 0x1234abcd;
      const ours = encodeMbr(
        {
          signature: id,
          bootCode: new Uint8Array(440),
          entries: [0, 1, 2, 3].map((i) => {
            const p = c.parts[i];
            return p ? { bootable: !!p.boot, type: p.type, start: p.start * 512, size: p.size * 512 } : undefined;
          }),
        },
        c.disk,
      );
      expect(Buffer.from(ours.subarray(440, 512)).toString('hex')).toBe(sfdiskTableBytes(c.disk, id, c.parts).toString('hex'));
    });
  }

  it('maps sectors to CHS with 255 heads and 63 sectors, and to 1023/254/63 beyond', () => {
    expect(encodeChs(0)).toEqual([0, 1, 0]);
    expect(encodeChs(2048)).toEqual([32, 33, 0]);
    const last = 1024 * 255 * 63 - 1;
    expect(encodeChs(last)).toEqual([254, 0xff, 0xff]);
    expect(encodeChs(last + 1)).toEqual([254, 0xff, 0xff]);
    const b = Uint8Array.from(encodeChs(16065 * 700 + 63 * 3 + 5));
    expect(decodeChs(b, 0)).toEqual({ cylinder: 700, head: 3, sector: 6 });
  });
});

const entryArb = (diskSectors: number) =>
  fc
    .record({
      bootable: fc.boolean(),
      type: fc.integer({ min: 1, max: 255 }),
      start: fc.integer({ min: 1, max: diskSectors - 1 }),
      len: fc.integer({ min: 1, max: diskSectors }),
    })
    .map((e) => ({ bootable: e.bootable, type: e.type, start: e.start * 512, size: Math.min(e.len, diskSectors - e.start) * 512 }));

describe('MBR round trip', () => {
  it('parses back exactly what it encodes, for random valid tables', () => {
    const diskSectors = 2 ** 32 + 5000;
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.uint8Array({ minLength: 440, maxLength: 440 }),
        fc.array(fc.option(entryArb(0xffffffff), { nil: undefined }), { minLength: 4, maxLength: 4 }),
        (signature, bootCode, entries) => {
          const mbr: Mbr = { signature, bootCode, entries };
          const bytes = encodeMbr(mbr, diskSectors * 512);
          const back = parseMbr(bytes)!;
          expect(back.signature).toBe(signature);
          expect(Buffer.from(back.bootCode).equals(Buffer.from(bootCode))).toBe(true);
          expect(back.entries).toEqual(entries);
          expect(Buffer.from(encodeMbr(back, diskSectors * 512)).equals(Buffer.from(bytes))).toBe(true);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('places random layouts inside the disk, aligned, in order, and encodes them losslessly', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 8, max: 4096 }).map((m) => m * MiB + 512 * 7),
        fc.array(fc.record({ mib: fc.integer({ min: 1, max: 900 }), extra: fc.integer({ min: 0, max: 4095 }), type: fc.constantFrom('linux', 'swap', 'efi', 'fat32', 'lvm', 'raid', '0x07', 'da'), boot: fc.boolean() }), { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        (disk, specs, rest) => {
          const s = specs.map((x, i) => ({ size: rest && i === specs.length - 1 ? ('rest' as const) : x.mib * MiB + x.extra, type: x.type, bootable: x.boot }));
          let placed;
          try {
            placed = layoutMbr(disk, s);
          } catch (e) {
            expect(e).toBeInstanceOf(ImageError);
            expect((e as ImageError).kind).toBe('usage');
            return;
          }
          let prevEnd = 0;
          placed.forEach((p, i) => {
            expect(p.number).toBe(i + 1);
            expect(p.start % MiB).toBe(0);
            expect(p.start).toBeGreaterThanOrEqual(Math.max(prevEnd, MiB));
            expect(p.size % 512).toBe(0);
            const spec = s[i]!;
            if (spec.size !== 'rest') expect(p.size).toBe(Math.ceil(spec.size / 512) * 512);
            else expect(p.start + p.size).toBe(Math.floor(disk / 512) * 512);
            prevEnd = p.start + p.size;
          });
          expect(prevEnd).toBeLessThanOrEqual(disk);
          const mbr: Mbr = { signature: 1, bootCode: new Uint8Array(440), entries: [0, 1, 2, 3].map((i) => placed[i] && { bootable: placed[i].bootable, type: placed[i].type, start: placed[i].start, size: placed[i].size }) };
          expect(parseMbr(encodeMbr(mbr, disk))!.entries).toEqual(mbr.entries);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('layoutMbr', () => {
  it('starts at 1 MiB, aligns every start to 1 MiB and lets rest fill the disk', () => {
    const p = layoutMbr(100 * MiB, [{ size: 10 * MiB + 1, type: 'linux', bootable: true }, { size: 5 * MiB, type: 'swap' }, { size: 'rest', type: '8e' }]);
    expect(p).toEqual([
      { number: 1, start: MiB, size: 10 * MiB + 512, type: 0x83, bootable: true },
      { number: 2, start: 12 * MiB, size: 5 * MiB, type: 0x82, bootable: false },
      { number: 3, start: 17 * MiB, size: 83 * MiB, type: 0x8e, bootable: false },
    ]);
  });

  it('honours a custom alignment', () => {
    const p = layoutMbr(10 * MiB, [{ size: 100_000, type: 83 }, { size: 'rest', type: 83 }], { align: 4096 });
    expect(p.map((x) => x.start)).toEqual([4096, 106_496]); // 4096 + 100352 rounded up to 4 KiB
  });

  it('refuses a layout that does not fit, naming the partition', () => {
    expect(() => layoutMbr(10 * MiB, [{ size: 8 * MiB, type: 'linux' }, { size: 2 * MiB, type: 'swap' }])).toThrow(/partition 2 .*does not fit/);
    expect(() => layoutMbr(MiB, [{ size: 'rest', type: 'linux' }])).toThrow(/no space is left/);
  });

  it('refuses more than four partitions, rest before the last, and non-primary types', () => {
    const one = { size: MiB, type: 'linux' };
    expect(() => layoutMbr(GiB, [one, one, one, one, one])).toThrow(/4 primary partitions/);
    expect(() => layoutMbr(GiB, [{ size: 'rest', type: 'linux' }, one])).toThrow(/only allowed for the last/);
    expect(() => layoutMbr(GiB, [{ size: MiB, type: '5' }])).toThrow(/extended/);
    expect(() => layoutMbr(GiB, [{ size: MiB, type: 'ee' }])).toThrow(/protective/);
    expect(() => layoutMbr(GiB, [{ size: MiB, type: 'bogus' }])).toThrow(/not a known name/);
  });

  it('limits rest to what an MBR can address on a disk larger than 2 TiB', () => {
    const p = layoutMbr(3 * 2 ** 40, [{ size: 'rest', type: 'linux' }]);
    expect(p[0]!.start + p[0]!.size).toBe(2 ** 32 * 512);
  });

  it('resolves type names and hex codes', () => {
    expect([parseMbrType('linux'), parseMbrType('swap'), parseMbrType('efi'), parseMbrType('fat32'), parseMbrType('lvm'), parseMbrType('raid')]).toEqual([0x83, 0x82, 0xef, 0x0c, 0x8e, 0xfd]);
    expect([parseMbrType('0x7'), parseMbrType('DA'), parseMbrType(0x83)]).toEqual([7, 0xda, 0x83]);
    expect(() => parseMbrType('0')).toThrow(/0x01 to 0xff/);
  });
});

describe('GPT codec', () => {
  it('parses back random headers and entry arrays it encodes, with valid CRCs', () => {
    const guid = fc.uuid().map((u) => u.toUpperCase());
    fc.assert(
      fc.property(
        guid,
        fc.array(fc.record({ type: guid, id: guid, first: fc.integer({ min: 34, max: 1_000_000 }), len: fc.integer({ min: 1, max: 1_000_000 }), name: fc.string({ maxLength: 36 }).filter((s) => Buffer.byteLength(s, 'utf16le') <= 72 && !s.includes('\0')), attrs: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }), { maxLength: 20 }),
        (diskGuid, raw) => {
          const entries = raw
            .filter((e) => e.type !== '00000000-0000-0000-0000-000000000000')
            .map((e, i) => ({ slot: i * 3 + 1, typeGuid: e.type, uniqueGuid: e.id, firstLba: e.first, lastLba: e.first + e.len - 1, attributes: e.attrs, name: e.name }));
          const array = encodeGptEntries(entries);
          const header = encodeGptHeader({ myLba: 1, alternateLba: 4_000_000 - 1, firstUsableLba: 34, lastUsableLba: 4_000_000 - 34, diskGuid, entriesLba: 2, entryCount: 128, entrySize: 128 }, array);
          const h = parseGptHeader(header, 1, 4_000_000);
          expect(h.ok).toBe(true);
          if (!h.ok) return;
          expect(h.header.diskGuid).toBe(diskGuid);
          expect(checkEntryArray(h.header, array)).toBeUndefined();
          const back = parseGptEntries(h.header, array);
          expect(back.problems).toEqual([]);
          expect(back.entries).toEqual(entries);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('computes the standard CRC-32 and CRC-32C check values', () => {
    const data = Buffer.from('123456789');
    expect(crc32(data)).toBe(0xcbf43926);
    expect(crc32c(data)).toBe(0xe3069283);
  });
});
