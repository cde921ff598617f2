/**
 * `imgtool part list --output json` against sfdisk and blkid, on tables and
 * filesystems the real tools wrote (sfdisk, mke2fs, mkswap, busybox
 * mkdosfs), in raw images and after `qemu-img convert` to qcow2 and VDI.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { must, sha256File, tempDir } from './helpers/peers.js';
import { type SfdiskTable, blkid, copyInto, runCli, sfdiskJson, sfdiskWrite, sparseFile } from './partition-helpers.js';
import type { DiskInfo, PartitionInfo } from '../src/partition/inspect.js';

const t = tempDir('imgtool-plist-');
afterAll(() => t.cleanup());

const MiB = 1 << 20;

function mkext(file: string, offset: number, size: number, type: 'ext2' | 'ext3' | 'ext4', label?: string): void {
  must('mke2fs', ['-q', '-F', '-t', type, ...(label ? ['-L', label] : []), '-E', `offset=${offset}`, file, `${size / 1024}k`]);
}

function mkswapAt(file: string, offset: number, size: number, label?: string): void {
  const tmp = sparseFile(t.path(`swap-${offset}-${size}.tmp`), size);
  must('mkswap', ['-q', ...(label ? ['-L', label] : []), tmp]);
  copyInto(tmp, file, offset);
}

function mkvfatAt(file: string, offset: number, size: number, label: string): void {
  const tmp = sparseFile(t.path(`fat-${offset}.tmp`), size);
  must('busybox', ['mkdosfs', '-n', label, tmp]);
  copyInto(tmp, file, offset);
}

interface Shape {
  name: string;
  build(file: string): void;
}

const SHAPES: Shape[] = [
  {
    name: 'an MBR with primary partitions and a boot flag',
    build(f) {
      sparseFile(f, 64 * MiB);
      sfdiskWrite(f, 'label: dos\n,16M,83,*\n,8M,82\n,,83\n');
      mkext(f, 1 * MiB, 16 * MiB, 'ext4', 'rootfs');
      mkswapAt(f, 17 * MiB, 8 * MiB, 'swap0');
      mkext(f, 25 * MiB, 39 * MiB, 'ext2');
    },
  },
  {
    name: 'an MBR with an extended partition holding three logical ones',
    build(f) {
      sparseFile(f, 64 * MiB);
      sfdiskWrite(f, 'label: dos\n,8M,83\n,,E\n,12M,83\n,8M,82\n,,8e\n');
      const parts = sfdiskJson(f)!.partitions!;
      mkext(f, parts[0]!.start * 512, parts[0]!.size * 512, 'ext3', 'boot');
      mkext(f, parts[2]!.start * 512, parts[2]!.size * 512, 'ext4', 'logical5');
      mkswapAt(f, parts[3]!.start * 512, parts[3]!.size * 512);
    },
  },
  {
    name: 'a GPT with five partitions',
    build(f) {
      sparseFile(f, 80 * MiB);
      sfdiskWrite(
        f,
        'label: gpt\nsize=33M, type=U, name="EFI system"\nsize=8M, type=L, name=root\nsize=8M, type=S\n' +
          'size=4M, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\ntype=L, attrs="RequiredPartition LegacyBIOSBootable GUID:60"\n',
      );
      const parts = sfdiskJson(f)!.partitions!;
      mkvfatAt(f, parts[0]!.start * 512, parts[0]!.size * 512, 'ESP');
      mkext(f, parts[1]!.start * 512, parts[1]!.size * 512, 'ext4', 'root');
      mkswapAt(f, parts[2]!.start * 512, parts[2]!.size * 512, 'gptswap');
      mkext(f, parts[4]!.start * 512, parts[4]!.size * 512, 'ext2', 'data');
    },
  },
  {
    name: 'an empty disk with no table',
    build(f) {
      sparseFile(f, 16 * MiB);
    },
  },
  {
    name: 'a bare ext4 filesystem (a Xen single-filesystem image)',
    build(f) {
      sparseFile(f, 32 * MiB);
      mkext(f, 0, 32 * MiB, 'ext4', 'xenroot');
    },
  },
  {
    name: 'a bare swap area',
    build(f) {
      sparseFile(f, 16 * MiB);
      must('mkswap', ['-q', '-L', 'bareswap', f]);
    },
  },
];

function sfdiskNumber(node: string): number {
  return Number(/(\d+)$/.exec(node)![1]);
}

/** Compare a content report with what blkid says about the same bytes. */
function expectContentMatchesBlkid(content: DiskInfo['content'] | PartitionInfo['content'], b: Record<string, string>, where: string): void {
  expect(content, where).toBeDefined();
  expect(content!.type, `${where}: type`).toBe(b.TYPE ?? 'unknown');
  expect(content!.uuid, `${where}: UUID`).toBe(b.UUID);
  expect(content!.label, `${where}: LABEL`).toBe(b.LABEL);
  if (b.VERSION) expect(content!.version, `${where}: VERSION`).toBe(b.VERSION);
  if (b.BLOCK_SIZE && content!.type !== 'vfat') expect(content!.blockSize, `${where}: BLOCK_SIZE`).toBe(Number(b.BLOCK_SIZE));
}

function expectAgreesWithPeers(info: DiskInfo, rawFile: string, sf: SfdiskTable | undefined): void {
  if (!sf || (sf.label === 'dos' && !sf.partitions && info.scheme === 'none')) {
    // No table (sfdisk reports an empty dos label over a FAT boot sector; blkid calls it a filesystem).
    expect(info.scheme).toBe('none');
    expect(info.partitions).toEqual([]);
    expectContentMatchesBlkid(info.content, blkid(rawFile), 'whole disk');
    return;
  }
  expect(info.scheme).toBe(sf.label === 'dos' ? 'mbr' : 'gpt');
  expect(info.diskId).toBe(sf.id);
  const theirs = sf.partitions ?? [];
  expect(info.partitions.map((p) => p.number)).toEqual(theirs.map((p) => sfdiskNumber(p.node)));
  theirs.forEach((s, i) => {
    const p = info.partitions[i]!;
    const where = `partition ${p.number}`;
    expect(p.startSector, where).toBe(s.start);
    expect(p.sectors, where).toBe(s.size);
    expect(p.start, where).toBe(s.start * 512);
    expect(p.size, where).toBe(s.size * 512);
    expect(p.end, where).toBe((s.start + s.size) * 512);
    expect(p.endSector, where).toBe(s.start + s.size - 1);
    expect(p.type, where).toBe(s.type);
    if (sf.label === 'dos') {
      expect(p.bootable, where).toBe(!!s.bootable);
      expect(p.kind, where).toBe(['5', 'f', '85'].includes(s.type) ? 'extended' : p.number > 4 ? 'logical' : 'primary');
    } else {
      expect(p.uuid, where).toBe(s.uuid);
      expect(p.name, where).toBe(s.name);
      expect(p.attrs, where).toBe(s.attrs);
      expect(p.bootable, where).toBe(/LegacyBIOSBootable/.test(s.attrs ?? ''));
    }
    if (p.kind !== 'extended') expectContentMatchesBlkid(p.content, blkid(rawFile, { offset: p.start, size: p.size }), where);
  });
}

const built = new Map<string, string>();
beforeAll(() => {
  SHAPES.forEach((s, i) => {
    const f = t.path(`shape${i}.img`);
    s.build(f);
    built.set(s.name, f);
    must('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', f, t.path(`shape${i}.qcow2`)]);
    must('qemu-img', ['convert', '-f', 'raw', '-O', 'vdi', f, t.path(`shape${i}.vdi`)]);
  });
});

describe('part list agrees with sfdisk and blkid', () => {
  for (const shape of SHAPES) {
    for (const fmt of ['raw', 'qcow2', 'vdi'] as const) {
      it(`reads ${shape.name} (${fmt}) as sfdisk and blkid do`, async () => {
        const raw = built.get(shape.name)!;
        const file = fmt === 'raw' ? raw : raw.replace(/\.img$/, `.${fmt}`);
        const before = sha256File(file);
        const r = await runCli(['part', 'list', '--output', 'json', file]);
        expect(r.stderr).toBe('');
        expect(r.status).toBe(0);
        const info = JSON.parse(r.stdout) as DiskInfo;
        expect(info.warnings).toEqual([]);
        expect(info.size).toBe(Number(must('stat', ['-c', '%s', raw]).trim()));
        expectAgreesWithPeers(info, raw, sfdiskJson(raw));
        expect(sha256File(file)).toBe(before);
      });
    }
  }

  it('finds ext3, ext4, swap and nothing in the logical partitions, and lists the extended one itself', async () => {
    const r = await runCli(['part', 'list', '--output', 'json', built.get(SHAPES[1]!.name)!]);
    const info = JSON.parse(r.stdout) as DiskInfo;
    expect(info.partitions.map((p) => [p.number, p.kind, p.content.type])).toEqual([
      [1, 'primary', 'ext3'],
      [2, 'extended', 'unknown'],
      [5, 'logical', 'ext4'],
      [6, 'logical', 'swap'],
      [7, 'logical', 'unknown'],
    ]);
  });

  it('gives a bare filesystem a hint that wrap can make it a bootable disk, with the ext4 details', async () => {
    const r = await runCli(['part', 'list', '--output', 'json', built.get(SHAPES[4]!.name)!]);
    const info = JSON.parse(r.stdout) as DiskInfo;
    expect(info.scheme).toBe('none');
    expect(info.hint).toMatch(/Xen single-filesystem image.*imgtool wrap/);
    expect(info.content!.features).toEqual(expect.arrayContaining(['has_journal', 'extent', 'dir_index', 'metadata_csum']));
    expect(info.content!.size).toBe(32 * MiB);
    const human = await runCli(['part', 'list', built.get(SHAPES[4]!.name)!]);
    expect(human.status).toBe(0);
    expect(human.stdout).toMatch(/Partition table: none/);
    expect(human.stdout).toMatch(/Content: ext4 LABEL="xenroot" UUID=/);
    expect(human.stderr).toMatch(/hint: .*imgtool wrap/);
    const swap = JSON.parse((await runCli(['part', 'list', '--output', 'json', built.get(SHAPES[5]!.name)!])).stdout) as DiskInfo;
    expect(swap.hint).toBeUndefined();
  });

  it('prints a human table with the boot flag, types and contents', async () => {
    const r = await runCli(['part', 'list', built.get(SHAPES[0]!.name)!]);
    expect(r.status).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines.find((l) => /^1\s+\*\s+2048\s+34815\s+32768/.test(l))).toMatch(/83 Linux\s+primary\s+ext4 LABEL="rootfs"/);
    expect(lines.find((l) => /^2\s+34816/.test(l))).toMatch(/82 Linux swap \/ Solaris\s+primary\s+swap v1 LABEL="swap0"/);
  });
});
