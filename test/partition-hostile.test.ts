/**
 * Hostile and damaged partition tables: every one must give warnings (or an
 * ImageError), within bounded time and reads, never a hang or a crash.
 * Where sfdisk has an opinion (damaged GPT, long EBR chains), we agree with it.
 */
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryDevice } from '../src/core/memory.js';
import type { BlockDevice } from '../src/core/device.js';
import { ImageError } from '../src/core/errors.js';
import { inspectDisk } from '../src/partition/inspect.js';
import { encodeGptEntries, encodeGptHeader, parseGptHeader } from '../src/partition/gpt.js';
import { readWithPartitioninfo } from '../src/partition/pinfo.js';
import { tempDir } from './helpers/peers.js';
import { blkid, pokeFile, readRange, runCli, sfdiskJson, sfdiskWrite, sparseFile } from './partition-helpers.js';
import type { DiskInfo } from '../src/partition/inspect.js';

const t = tempDir('imgtool-hostile-');
afterAll(() => t.cleanup());

const MiB = 1 << 20;

type Raw = [status: number, type: number, lba: number, sectors: number];

/** A table sector with arbitrary (possibly invalid) entries. */
function tableSector(entries: Raw[], signature = true): Uint8Array {
  const b = new Uint8Array(512);
  const v = new DataView(b.buffer);
  entries.forEach(([status, type, lba, sectors], i) => {
    const o = 446 + 16 * i;
    b[o] = status;
    b[o + 4] = type;
    v.setUint32(o + 8, lba, true);
    v.setUint32(o + 12, sectors, true);
  });
  if (signature) {
    b[510] = 0x55;
    b[511] = 0xaa;
  }
  return b;
}

/** A device that counts reads, to prove the work is bounded. */
class CountingDevice extends MemoryDevice {
  reads = 0;
  override async read(buf: Uint8Array, offset: number): Promise<void> {
    this.reads++;
    return super.read(buf, offset);
  }
}

function disk(size: number, sectors: [lba: number, bytes: Uint8Array][]): CountingDevice {
  const d = new CountingDevice(size);
  for (const [lba, bytes] of sectors) d.writeSync(bytes, lba * 512);
  return d;
}

async function timed(dev: BlockDevice): Promise<DiskInfo> {
  const t0 = Date.now();
  const info = await inspectDisk(dev);
  expect(Date.now() - t0).toBeLessThan(5000);
  return info;
}

describe('hostile MBR extended chains', () => {
  it('stops at an EBR that links back to itself, with a warning', async () => {
    const d = disk(64 * MiB, [
      [0, tableSector([[0, 0x05, 2048, 100000]])],
      [2048, tableSector([[0, 0x83, 2048, 4096], [0, 0x05, 0, 8192]])],
    ]);
    const info = await timed(d);
    expect(info.partitions.map((p) => p.number)).toEqual([1, 5]);
    expect(info.warnings.join('\n')).toMatch(/loops back to the EBR at byte 1048576/);
    expect(d.reads).toBeLessThan(100);
  });

  it('stops at a two-EBR cycle', async () => {
    const d = disk(64 * MiB, [
      [0, tableSector([[0x80, 0x0f, 2048, 100000]])],
      [2048, tableSector([[0, 0x83, 100, 1000], [0, 0x05, 4096, 4096]])],
      [6144, tableSector([[0, 0x82, 100, 1000], [0, 0x05, 0, 4096]])],
    ]);
    const info = await timed(d);
    expect(info.partitions.map((p) => [p.number, p.kind, p.type])).toEqual([
      [1, 'extended', 'f'],
      [5, 'logical', '83'],
      [6, 'logical', '82'],
    ]);
    expect(info.partitions[0]!.bootable).toBe(true);
    expect(info.warnings.join('\n')).toMatch(/loops back/);
  });

  it('stops at a link that points outside the disk or outside the extended partition', async () => {
    const outside = await timed(
      disk(8 * MiB, [
        [0, tableSector([[0, 0x05, 2048, 8192]])],
        [2048, tableSector([[0, 0x83, 2048, 1024], [0, 0x05, 0xfffff000, 8]])],
      ]),
    );
    expect(outside.warnings.join('\n')).toMatch(/beyond the end of the disk/);
    const leaves = await timed(
      disk(64 * MiB, [
        [0, tableSector([[0, 0x05, 2048, 8192]])],
        [2048, tableSector([[0, 0x83, 2048, 1024], [0, 0x05, 50000, 8]])],
      ]),
    );
    expect(leaves.partitions.filter((p) => p.kind === 'logical')).toHaveLength(1);
    expect(leaves.warnings.join('\n')).toMatch(/outside extended partition 1/);
  });

  it('cuts a chain of 100 EBRs after 56 logical partitions, as sfdisk does', async () => {
    const f = sparseFile(t.path('long-chain.img'), 64 * MiB);
    pokeFile(f, 0, tableSector([[0, 0x05, 2048, 120000]]));
    for (let i = 0; i < 100; i++) {
      const ebr = 2048 + i * 1024;
      const next: Raw[] = i < 99 ? [[0, 0x05, (i + 1) * 1024, 1024]] : [];
      pokeFile(f, ebr * 512, tableSector([[0, 0x83, 2, 1000], ...next]));
    }
    const r = await runCli(['part', 'list', '--output', 'json', f]);
    expect(r.status).toBe(0);
    const info = JSON.parse(r.stdout) as DiskInfo;
    const logicals = info.partitions.filter((p) => p.kind === 'logical');
    expect(logicals).toHaveLength(56);
    expect(info.warnings.join('\n')).toMatch(/more than 56 logical partitions/);
    const sf = sfdiskJson(f)!;
    expect(logicals.map((p) => [p.startSector, p.sectors])).toEqual(sf.partitions!.filter((p) => /\d+$/.test(p.node) && Number(/(\d+)$/.exec(p.node)![1]) > 4).map((p) => [p.start, p.size]));
  });

  it('survives a chain partitioninfo would follow forever (a hidden-extended 0x15 link), within its read budget', async () => {
    // Linux and sfdisk treat 0x15 as data; partitioninfo treats it as a link and would loop.
    const d = disk(64 * MiB, [
      [0, tableSector([[0, 0x05, 2048, 100000]])],
      [2048, tableSector([[0, 0x83, 16, 1000], [0, 0x15, 0, 4096]])],
    ]);
    const info = await timed(d);
    expect(info.partitions.map((p) => p.number)).toEqual([1, 5]);
    expect(info.warnings.join('\n')).toMatch(/partitioninfo library could not read this table \(partitioninfo asked for more than 4 reads\)/);
    expect(d.reads).toBeLessThan(100);
  });

  it('is what partitioninfo alone would do on that chain: run out of budget, not hang', async () => {
    const d = disk(64 * MiB, [
      [0, tableSector([[0, 0x05, 2048, 100000]])],
      [2048, tableSector([[0, 0x15, 0, 4096]])],
    ]);
    const r = await readWithPartitioninfo(d, 50);
    expect(r.ok).toBe(false);
    expect(d.reads).toBeLessThanOrEqual(50);
  });
});

describe('hostile MBR primaries', () => {
  it('does not take a coincidental 0x55AA inside a LUKS header for a table, as blkid does not', async () => {
    const f = sparseFile(t.path('luks-55aa.img'), 4 * MiB);
    const h = new Uint8Array(1024);
    h.set(Buffer.from('LUKS\xba\xbe', 'latin1'), 0);
    h[7] = 1; // version 1
    h.set(Buffer.from('4c5d6e7f-0000-4000-8000-123456789abc'), 168);
    for (let i = 400; i < 510; i++) h[i] = (i * 37) & 0xff; // key-slot bytes, including impossible status bytes
    h[446] = 0x37;
    h[510] = 0x55;
    h[511] = 0xaa;
    pokeFile(f, 0, h);
    const info = await listJson(f);
    const b = blkid(f);
    expect(b.PTTYPE).toBeUndefined();
    expect(info.scheme).toBe('none');
    expect(info.content).toMatchObject({ type: b.TYPE, uuid: b.UUID });
  });

  it('warns about partitions past the end of the disk and does not read them', async () => {
    const d = disk(4 * MiB, [[0, tableSector([[0, 0x83, 2048, 100000], [0, 0x83, 0xfffffff0, 16]])]]);
    const info = await timed(d);
    expect(info.partitions).toHaveLength(2);
    expect(info.partitions.every((p) => p.content.type === 'unknown')).toBe(true);
    expect(info.warnings.join('\n')).toMatch(/partition 1 ends at byte 52248576, beyond the end of the disk \(4194304 bytes\)/);
    expect(info.warnings.join('\n')).toMatch(/partition 2 starts at byte \d+, beyond the end of the disk/);
  });

  it('warns about overlapping partitions and invalid status bytes', async () => {
    const info = await timed(disk(16 * MiB, [[0, tableSector([[0x80, 0x83, 2048, 8192], [0x13, 0x82, 4096, 2048]])]]));
    const w = info.warnings.join('\n');
    expect(w).toMatch(/partition 2 overlaps partition 1/);
    expect(w).toMatch(/status byte 0x13/);
  });

  it('follows only the first of two extended partitions, as sfdisk does', async () => {
    const info = await timed(
      disk(16 * MiB, [
        [0, tableSector([[0, 0x05, 2048, 4096], [0, 0x05, 8192, 4096]])],
        [2048, tableSector([[0, 0x83, 16, 100]])],
        [8192, tableSector([[0, 0x83, 16, 100]])],
      ]),
    );
    expect(info.partitions.map((p) => p.number)).toEqual([1, 2, 5]);
    expect(info.warnings.join('\n')).toMatch(/ignoring extra extended partition 2/);
  });
});

/** A GPT written by sfdisk, for corrupting. */
function sfdiskGpt(name: string): string {
  const f = sparseFile(t.path(name), 16 * MiB);
  sfdiskWrite(f, 'label: gpt\nsize=2M, type=L, name=a\nsize=3M, type=S, name=b\ntype=U\n');
  return f;
}

async function listJson(f: string): Promise<DiskInfo> {
  const r = await runCli(['part', 'list', '--output', 'json', f]);
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout) as DiskInfo;
}

function samePartitionsAsSfdisk(info: DiskInfo, f: string): void {
  const sf = sfdiskJson(f)!;
  expect(info.partitions.map((p) => [p.startSector, p.sectors, p.type, p.uuid])).toEqual(sf.partitions!.map((p) => [p.start, p.size, p.type, p.uuid]));
}

describe('damaged and hostile GPTs', () => {
  it('uses the backup GPT when the primary header CRC is wrong, as sfdisk does', async () => {
    const f = sfdiskGpt('bad-hdr.img');
    const good = await listJson(f);
    pokeFile(f, 512 + 16, Uint8Array.of(1, 2, 3, 4));
    const info = await listJson(f);
    expect(info.warnings.join('\n')).toMatch(/primary GPT is damaged \(.*HeaderCRC32.*\); using the backup GPT at LBA 32767/);
    expect(info.gpt!.header).toBe('backup');
    expect(info.partitions.map((p) => [p.start, p.size, p.uuid, p.name])).toEqual(good.partitions.map((p) => [p.start, p.size, p.uuid, p.name]));
    samePartitionsAsSfdisk(info, f);
  });

  it('uses the backup GPT when the primary entry array does not match its CRC', async () => {
    const f = sfdiskGpt('bad-array.img');
    pokeFile(f, 1024 + 56, Buffer.from('X', 'utf16le'));
    const info = await listJson(f);
    expect(info.warnings.join('\n')).toMatch(/PartitionEntryArrayCRC32 .* does not match/);
    expect(info.partitions[0]!.name).toBe('a');
    samePartitionsAsSfdisk(info, f);
  });

  it('warns about a damaged backup while using a good primary', async () => {
    const f = sfdiskGpt('bad-backup.img');
    pokeFile(f, 16 * MiB - 512 + 16, Uint8Array.of(9, 9, 9, 9));
    const info = await listJson(f);
    expect(info.gpt!.header).toBe('primary');
    expect(info.warnings.join('\n')).toMatch(/backup GPT is damaged/);
    expect(info.partitions).toHaveLength(3);
  });

  it('reports no partitions and both reasons when both GPTs are damaged', async () => {
    const f = sfdiskGpt('bad-both.img');
    pokeFile(f, 512 + 16, Uint8Array.of(1));
    pokeFile(f, 16 * MiB - 512 + 16, Uint8Array.of(1));
    const info = await listJson(f);
    expect(info.scheme).toBe('gpt');
    expect(info.partitions).toEqual([]);
    expect(info.warnings.join('\n')).toMatch(/no valid GPT: primary: .*HeaderCRC32.*; backup: .*HeaderCRC32/);
  });

  it('warns when the backup header is not at the end of the disk (a grown image)', async () => {
    const f = sfdiskGpt('grown.img');
    const bigger = sparseFile(t.path('grown-bigger.img'), 32 * MiB);
    pokeFile(bigger, 0, readRange(f, 0, 16 * MiB));
    const info = await listJson(bigger);
    const w = info.warnings.join('\n');
    expect(w).toMatch(/backup GPT header is recorded at LBA 32767, not at the last LBA 65535/);
    expect(w).toMatch(/PMBR size mismatch/);
    expect(info.partitions).toHaveLength(3);
  });

  /** A GPT whose primary header has a valid CRC but hostile fields; the backup is intact. */
  async function withHostilePrimary(fields: { entryCount?: number; entrySize?: number; entriesLba?: number; myLba?: number }): Promise<DiskInfo> {
    const f = sfdiskGpt(`hostile-${JSON.stringify(fields).replace(/\W/g, '')}.img`);
    const hdr = parseGptHeader(readRange(f, 512, 512), 1, 32768);
    if (!hdr.ok) throw new Error('sfdisk wrote a bad header?');
    const array = readRange(f, 1024, 16384);
    const h = { ...hdr.header, ...fields };
    pokeFile(f, 512, encodeGptHeader({ ...h, headerCrc: undefined, entriesCrc: hdr.header.entriesCrc }, array));
    return listJson(f);
  }

  it('rejects an absurd entry count (valid CRC) and falls back to the backup, within bounded memory', async () => {
    const info = await withHostilePrimary({ entryCount: 0xffffffff });
    expect(info.warnings.join('\n')).toMatch(/NumberOfPartitionEntries \(at offset 592, value 4294967295\)/);
    expect(info.gpt!.header).toBe('backup');
    expect(info.partitions).toHaveLength(3);
  });

  it('rejects an entry size that is not 128 * 2^n, including zero', async () => {
    for (const entrySize of [0, 100, 129, 384]) {
      const info = await withHostilePrimary({ entrySize });
      expect(info.warnings.join('\n')).toMatch(new RegExp(`SizeOfPartitionEntry \\(at offset 596, value ${entrySize}\\) is not 128`));
      expect(info.partitions).toHaveLength(3);
    }
  });

  it('rejects an entry array placed outside the disk or over the header', async () => {
    expect((await withHostilePrimary({ entriesLba: 2 ** 40 })).warnings.join('\n')).toMatch(/PartitionEntryLBA .* outside the disk/);
    expect((await withHostilePrimary({ entriesLba: 1 })).warnings.join('\n')).toMatch(/PartitionEntryLBA/);
  });

  it('accepts a large, non-standard entry array it can read (256-byte entries, 1000 of them) and lists its partitions', async () => {
    const d = new MemoryDevice(64 * MiB);
    const blocks = 64 * 2048;
    const entries = [
      { slot: 1, typeGuid: '0FC63DAF-8483-4772-8E79-3D69D8477DE4', uniqueGuid: '11111111-2222-3333-4444-555555555555', firstLba: 4096, lastLba: 8191, name: 'one' },
      { slot: 999, typeGuid: '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F', uniqueGuid: '11111111-2222-3333-4444-666666666666', firstLba: 8192, lastLba: 9999, attributes: 4n },
    ];
    const array = encodeGptEntries(entries, 1000, 256);
    const arrayBlocks = array.length / 512;
    d.writeSync(tableSector([[0, 0xee, 1, blocks - 1]]), 0);
    d.writeSync(encodeGptHeader({ myLba: 1, alternateLba: blocks - 1, firstUsableLba: 2 + arrayBlocks, lastUsableLba: blocks - 2 - arrayBlocks, diskGuid: 'AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE', entriesLba: 2, entryCount: 1000, entrySize: 256 }, array), 512);
    d.writeSync(array, 1024);
    d.writeSync(encodeGptHeader({ myLba: blocks - 1, alternateLba: 1, firstUsableLba: 2 + arrayBlocks, lastUsableLba: blocks - 2 - arrayBlocks, diskGuid: 'AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE', entriesLba: blocks - 1 - arrayBlocks, entryCount: 1000, entrySize: 256 }, array), (blocks - 1) * 512);
    d.writeSync(array, (blocks - 1 - arrayBlocks) * 512);
    const info = await timed(d);
    expect(info.warnings).toEqual([]);
    expect(info.partitions.map((p) => [p.number, p.startSector, p.endSector, p.name, p.bootable])).toEqual([
      [1, 4096, 8191, 'one', false],
      [999, 8192, 9999, undefined, true],
    ]);
  });

  it('warns about a stale GPT header behind a DOS table and lists the DOS table, as sfdisk does', async () => {
    const f = sfdiskGpt('stale-gpt.img');
    pokeFile(f, 0, tableSector([[0x80, 0x83, 2048, 4096]]));
    const info = await listJson(f);
    expect(info.scheme).toBe('mbr');
    expect(sfdiskJson(f)!.label).toBe('dos');
    expect(info.partitions.map((p) => [p.startSector, p.sectors, p.bootable])).toEqual([[2048, 4096, true]]);
    expect(info.warnings.join('\n')).toMatch(/GPT header at LBA 1 is ignored/);
  });

  it('warns about a GPT header without a protective MBR and ignores it, as sfdisk does', async () => {
    const f = sfdiskGpt('no-pmbr.img');
    pokeFile(f, 0, new Uint8Array(512));
    expect(sfdiskJson(f)).toBeUndefined();
    const info = await listJson(f);
    expect(info.scheme).toBe('none');
    expect(info.warnings.join('\n')).toMatch(/GPT header at LBA 1 but no protective MBR/);
  });
});

describe('random garbage', () => {
  it('never crashes or hangs on random bytes in the MBR, EBR and GPT areas', async () => {
    const sector = fc.uint8Array({ minLength: 512, maxLength: 512 });
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ i: fc.integer({ min: 0, max: 3 }), status: fc.constantFrom(0, 0x80, 0x13), type: fc.constantFrom(0x05, 0x0f, 0x85, 0x83, 0xee, 0x15, 0), lba: fc.oneof(fc.integer({ min: 0, max: 4200 }), fc.integer({ min: 0, max: 0xffffffff })), n: fc.oneof(fc.integer({ min: 0, max: 4200 }), fc.integer({ min: 0, max: 0xffffffff })) }), { maxLength: 4 }),
        fc.array(fc.tuple(fc.integer({ min: 1, max: 4095 }), sector), { maxLength: 6 }),
        fc.boolean(),
        async (entries, extra, gptHeader) => {
          const d = new CountingDevice(2 * MiB);
          const raw: Raw[] = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]];
          for (const e of entries) raw[e.i] = [e.status, e.type, e.lba, e.n];
          d.writeSync(tableSector(raw), 0);
          for (const [lba, bytes] of extra) {
            const b = bytes.slice();
            if (gptHeader && lba === 1) b.set(Buffer.from('EFI PART'), 0);
            b[510] = 0x55;
            b[511] = 0xaa;
            d.writeSync(b, lba * 512);
          }
          try {
            const info = await inspectDisk(d);
            expect(info.warnings.length).toBeLessThanOrEqual(65);
          } catch (e) {
            expect(e).toBeInstanceOf(ImageError);
          }
          expect(d.reads).toBeLessThan(1000);
        },
      ),
      { numRuns: 300 },
    );
  });
});
