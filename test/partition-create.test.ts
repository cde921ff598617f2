/**
 * `imgtool part create`: tables read back by sfdisk exactly as asked, byte
 * for byte what sfdisk writes for the same layout (CHS included), in raw,
 * qcow2 and VDI images that qemu-img checks.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, readdirSync } from 'node:fs';
import { imgtool, must, qemuCheck, sha256File, tempDir } from './helpers/peers.js';
import { blkid, pokeFile, readRange, runCli, sfdiskJson, sfdiskWrite, sparseFile } from './partition-helpers.js';
import type { DiskInfo } from '../src/partition/inspect.js';

const t = tempDir('imgtool-pcreate-');
afterAll(() => t.cleanup());

const MiB = 1 << 20;

/** What sfdisk writes (bytes 440..511) when fed the dump of `file`'s table, on a fresh image of the same size. */
function sfdiskRewrite(file: string, size: number): Buffer {
  const dump = must('sfdisk', ['--dump', file]);
  const copy = sparseFile(t.path(`rewrite-${Math.random().toString(36).slice(2)}.img`), size);
  sfdiskWrite(copy, dump);
  return readRange(copy, 440, 72);
}

function toRaw(file: string, fmt: string): string {
  const out = `${file}.raw`;
  must('qemu-img', ['convert', '-f', fmt, '-O', 'raw', file, out]);
  return out;
}

describe('part create on a new image', () => {
  it('writes the partitions asked for, read back by sfdisk with boot flag and types, byte-identical to sfdisk', async () => {
    const f = t.path('new.img');
    const r = await runCli([
      'part', 'create', f, '--size', '64M', '--signature', '0xdeadbeef', '--output', 'json',
      '--part', '16M:linux:boot', '--part', '8M:swap', '--part', '4M:efi', '--part', 'rest:lvm',
    ]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const sf = sfdiskJson(f)!;
    expect(sf.label).toBe('dos');
    expect(sf.id).toBe('0xdeadbeef');
    expect(sf.partitions!.map((p) => ({ start: p.start, size: p.size, type: p.type, bootable: !!p.bootable }))).toEqual([
      { start: 2048, size: 32768, type: '83', bootable: true },
      { start: 34816, size: 16384, type: '82', bootable: false },
      { start: 51200, size: 8192, type: 'ef', bootable: false },
      { start: 59392, size: 131072 - 59392, type: '8e', bootable: false },
    ]);
    const layout = JSON.parse(r.stdout) as { diskId: string; partitions: { startSector: number; sectors: number; type: string; bootable: boolean }[] };
    expect(layout.diskId).toBe('0xdeadbeef');
    expect(layout.partitions.map((p) => [p.startSector, p.sectors, p.type, p.bootable])).toEqual(sf.partitions!.map((p) => [p.start, p.size, p.type, !!p.bootable]));
    expect(readRange(f, 440, 72).toString('hex')).toBe(sfdiskRewrite(f, 64 * MiB).toString('hex'));
    const b = blkid(f);
    expect(b.PTTYPE).toBe('dos');
    expect(b.PTUUID).toBe('deadbeef');
  });

  it('writes CHS fields as sfdisk does on a disk larger than 8 GiB', async () => {
    const f = t.path('big.img');
    const r = await runCli(['part', 'create', f, '--size', '20G', '--part', '9G:linux:boot', '--part', '2G:swap', '--part', 'rest:83']);
    expect(r.status).toBe(0);
    expect(readRange(f, 440, 72).toString('hex')).toBe(sfdiskRewrite(f, 20 * 2 ** 30).toString('hex'));
  });

  it('chooses a random, non-zero disk signature each time', async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const f = t.path(`rand${i}.img`);
      expect((await runCli(['part', 'create', f, '--size', '8M', '--part', 'rest:linux'])).status).toBe(0);
      ids.add(sfdiskJson(f)!.id);
    }
    expect(ids.size).toBe(3);
    expect(ids.has('0x00000000')).toBe(false);
  });

  for (const [name, extra, fmt] of [
    ['new.qcow2', [], 'qcow2'],
    ['new-vdi.bin', ['-O', 'vdi'], 'vdi'],
  ] as const) {
    it(`creates a ${fmt} image that qemu-img checks and whose table sfdisk reads (${name})`, async () => {
      const f = t.path(name);
      const r = await runCli(['part', 'create', f, '--size', '32M', ...extra, '--part', '8M:linux:boot', '--part', 'rest:swap']);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(qemuCheck(f, fmt).status).toBe(0);
      const raw = toRaw(f, fmt);
      expect(sfdiskJson(raw)!.partitions!.map((p) => [p.start, p.size, p.type, !!p.bootable])).toEqual([
        [2048, 16384, '83', true],
        [18432, 65536 - 18432, '82', false],
      ]);
      const listed = JSON.parse((await runCli(['part', 'list', '--output', 'json', f])).stdout) as DiskInfo;
      expect(listed.partitions.map((p) => [p.startSector, p.sectors])).toEqual([
        [2048, 16384],
        [18432, 65536 - 18432],
      ]);
      expect(listed.warnings).toEqual([]);
    });
  }

  it('leaves no file behind when the layout does not fit', async () => {
    const f = t.path('nofit.img');
    const r = await runCli(['part', 'create', f, '--size', '8M', '--part', '8M:linux']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/partition 1 .*does not fit/);
    expect(existsSync(f)).toBe(false);
    expect(readdirSync(t.dir).filter((n) => n.includes('imgtool-tmp'))).toEqual([]);
  });

  it('asks for --size to create an image and rejects malformed --part values', async () => {
    expect((await runCli(['part', 'create', t.path('nosize.img'), '--part', '1M:linux'])).stderr).toMatch(/give --size/);
    const bad = await runCli(['part', 'create', t.path('bad.img'), '--size', '8M', '--part', '1M:linux:bootable']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/third field can only be 'boot'/);
    expect((await runCli(['part', 'create', t.path('bad2.img'), '--size', '8M', '--part', '1M:nosuchtype'])).stderr).toMatch(/not a known name/);
  });
});

describe('part create on an existing image', () => {
  it('refuses to replace an existing table without --force and leaves the image untouched', async () => {
    const f = sparseFile(t.path('existing.img'), 32 * MiB);
    sfdiskWrite(f, 'label: dos\n,4M,83\n,,82\n');
    const before = sha256File(f);
    const r = await runCli(['part', 'create', f, '--part', 'rest:linux']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/already has an MBR partition table: use --force/);
    expect(sha256File(f)).toBe(before);
  });

  it('replaces a table with --force and keeps the boot code already in the MBR', async () => {
    const f = sparseFile(t.path('bootcode.img'), 32 * MiB);
    sfdiskWrite(f, 'label: dos\n,4M,83\n,,82\n');
    const code = Buffer.alloc(440, 0);
    code.write('\xeb\x63\x90GRUB-LIKE BOOT CODE', 0, 'latin1');
    pokeFile(f, 0, code);
    const r = await runCli(['part', 'create', '--force', f, '--part', '10M:linux:boot', '--part', 'rest:swap']);
    expect(r.status).toBe(0);
    expect(readRange(f, 0, 440).equals(code)).toBe(true);
    expect(sfdiskJson(f)!.partitions!.map((p) => [p.start, p.size, p.type, !!p.bootable])).toEqual([
      [2048, 20480, '83', true],
      [22528, 65536 - 22528, '82', false],
    ]);
  });

  it('erases a GPT it replaces, so sfdisk and blkid see only the new MBR', async () => {
    const f = sparseFile(t.path('was-gpt.img'), 32 * MiB);
    sfdiskWrite(f, 'label: gpt\nsize=4M, type=L\n');
    expect((await runCli(['part', 'create', f, '--part', 'rest:linux'])).stderr).toMatch(/already has a GPT/);
    const r = await runCli(['part', 'create', '--force', f, '--part', 'rest:linux']);
    expect(r.status).toBe(0);
    expect(sfdiskJson(f)!.label).toBe('dos');
    expect(readRange(f, 512, 8).toString()).not.toBe('EFI PART');
    expect(readRange(f, 32 * MiB - 512, 8).toString()).not.toBe('EFI PART');
    const b = blkid(f);
    expect(b.PTTYPE).toBe('dos');
    const listed = JSON.parse((await runCli(['part', 'list', '--output', 'json', f])).stdout) as DiskInfo;
    expect(listed.scheme).toBe('mbr');
    expect(listed.warnings).toEqual([]);
  });

  it('refuses to write a table over a bare filesystem without --force', async () => {
    const f = sparseFile(t.path('bare.img'), 16 * MiB);
    must('mke2fs', ['-q', '-F', '-t', 'ext4', f]);
    const r = await runCli(['part', 'create', f, '--part', 'rest:linux']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/holds a bare ext4 signature and no partition table: use --force/);
  });

  it('writes a table into an existing qcow2 image through its driver', async () => {
    const f = t.path('existing.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', f, '48M']);
    const r = await runCli(['part', 'create', f, '--part', '16M:linux:boot', '--part', 'rest:linux']);
    expect(r.status).toBe(0);
    expect(qemuCheck(f, 'qcow2').status).toBe(0);
    expect(sfdiskJson(toRaw(f, 'qcow2'))!.partitions!.map((p) => [p.start, p.size, !!p.bootable])).toEqual([
      [2048, 32768, true],
      [34816, 98304 - 34816, false],
    ]);
  });

  it('refuses -O and a different --size on an existing image', async () => {
    const f = sparseFile(t.path('opts.img'), 8 * MiB);
    expect((await runCli(['part', 'create', f, '-O', 'qcow2', '--part', 'rest:linux'])).stderr).toMatch(/-O applies only when creating/);
    expect((await runCli(['part', 'create', f, '--size', '16M', '--part', 'rest:linux'])).stderr).toMatch(/--size applies only when creating/);
  });
});

describe('the built imgtool binary', () => {
  it('creates a partitioned qcow2 image and lists it, with sfdisk agreeing', () => {
    const f = t.path('bin.qcow2');
    const c = imgtool(['part', 'create', f, '--size', '24M', '--part', '8M:linux:boot', '--part', 'rest:swap']);
    expect(c.stderr).toBe('');
    expect(c.status).toBe(0);
    const l = imgtool(['part', 'list', '--output', 'json', f]);
    expect(l.status).toBe(0);
    const info = JSON.parse(l.stdout) as DiskInfo;
    const sf = sfdiskJson(toRaw(f, 'qcow2'))!;
    expect(info.diskId).toBe(sf.id);
    expect(info.partitions.map((p) => [p.startSector, p.sectors, p.type, p.bootable])).toEqual(sf.partitions!.map((p) => [p.start, p.size, p.type, !!p.bootable]));
    const bad = imgtool(['part', 'list', t.path('missing.img')]);
    expect(bad.status).toBe(5);
    expect(bad.stderr).toMatch(/^imgtool: .*ENOENT/);
  });
});
