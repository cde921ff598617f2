/**
 * OVA input: archives built with GNU tar from an OVF and streamOptimized
 * VMDKs made by qemu-img, read in place. convert (first disk and --disk N),
 * info (the OVF's disks with capacities), part list and wrap go through the
 * same open path; qemu-img, sfdisk and e2fsck judge the results. Manifest
 * mismatches, disks the archive lacks and entry names with '..' are errors.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { Header } from 'tar';
import { imgtool, must, qemuCheck, qemuCompare, run, sha256File, tempDir } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

const t = tempDir('imgtool-ova-');
afterAll(() => t.cleanup());
const MiB = 1 << 20;

const ovf = (disks: Array<{ file: string; capacity: string; units?: string }>) => `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
${disks.map((d, i) => `    <File ovf:id="file${i + 1}" ovf:href="${d.file}"/>`).join('\n')}
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
${disks
  .map(
    (d, i) =>
      `    <Disk ovf:capacity="${d.capacity}"${d.units ? ` ovf:capacityAllocationUnits="${d.units}"` : ''} ovf:diskId="vmdisk${i + 1}" ovf:fileRef="file${i + 1}" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>`,
  )
  .join('\n')}
  </DiskSection>
  <VirtualSystem ovf:id="vm"><Info>A virtual machine</Info></VirtualSystem>
</Envelope>
`;

const dir = t.path('src');
const fsRaw = t.path('src/root.img');
const dataRaw = t.path('src/data.raw');

/** A tar of `files` (in `dir`), the OVF first, made by GNU tar. (Set-up commands run synchronously: each takes well under a second.) */
function ova(name: string, files: string[]): string {
  const out = t.path(name);
  must('tar', ['-C', dir, '-cf', out, ...files]);
  return out;
}

beforeAll(() => {
  must('mkdir', ['-p', dir]);
  must('mke2fs', ['-q', '-F', '-t', 'ext4', fsRaw, '64M']);
  const data = new Uint8Array(24 * MiB);
  data.set(pattern(3 * MiB, 5), MiB + 512);
  data.set(pattern(100_000, 6), 20 * MiB);
  writeFileSync(dataRaw, data);
  must('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', fsRaw, `${dir}/root.vmdk`]);
  must('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', dataRaw, `${dir}/data.vmdk`]);
  writeFileSync(`${dir}/one.ovf`, ovf([{ file: 'root.vmdk', capacity: '64', units: 'byte * 2^20' }]));
  writeFileSync(`${dir}/two.ovf`, ovf([{ file: 'root.vmdk', capacity: '64', units: 'byte * 2^20' }, { file: 'data.vmdk', capacity: String(24 * MiB) }]));
  const line = (f: string) => `SHA256(${f})= ${sha256File(`${dir}/${f}`)}\n`;
  writeFileSync(`${dir}/two.mf`, line('two.ovf') + line('root.vmdk') + line('data.vmdk'));
  writeFileSync(`${dir}/bad.mf`, line('two.ovf') + line('root.vmdk') + `SHA256(data.vmdk)= ${'0'.repeat(64)}\n`);
  writeFileSync(`${dir}/missing.ovf`, ovf([{ file: 'root.vmdk', capacity: '64', units: 'byte * 2^20' }, { file: 'absent.vmdk', capacity: '1' }]));
  ova('one.ova', ['one.ovf', 'root.vmdk']);
  ova('two.ova', ['two.ovf', 'two.mf', 'root.vmdk', 'data.vmdk']);
  // tar copies the bad manifest under the name the OVA uses
  must('cp', [`${dir}/bad.mf`, `${dir}/badcopy.mf`]);
  ova('missing.ova', ['missing.ovf', 'root.vmdk']);
}, 300_000);

describe('OVA read in place', () => {
  it('converts its first disk (a streamOptimized VMDK) to qcow2, identical to the filesystem it holds', () => {
    const input = t.path('one.ova');
    const before = sha256File(input);
    const out = t.path('one.qcow2');
    const r = imgtool(['convert', input, out]);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuCheck(out, 'qcow2').status).toBe(0);
    expect(qemuCompare(fsRaw, out, 'raw', 'qcow2').status).toBe(0);
    expect(sha256File(input)).toBe(before);
  });

  it('info lists the disks of the OVF with capacities; the manifest is verified', () => {
    const r = imgtool(['info', '--output', 'json', t.path('two.ova')]);
    expect(r.status, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.format).toBe('ova');
    expect(info['virtual-size']).toBe(64 * MiB);
    const data = info['format-specific'].data;
    expect(data.manifest).toBe('verified');
    expect(data['disk-format']).toBe('vmdk');
    expect(data.disks.map((d: { file: string; capacity: number }) => [d.file, d.capacity])).toEqual([
      ['root.vmdk', 64 * MiB],
      ['data.vmdk', 24 * MiB],
    ]);
    const human = imgtool(['info', t.path('two.ova')]);
    expect(human.stdout).toContain('data.vmdk');
  });

  it('--disk 1 converts the second disk', () => {
    const out = t.path('two-1.raw');
    const r = imgtool(['convert', '--disk', '1', '-O', 'raw', t.path('two.ova'), out]);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuCompare(dataRaw, out, 'raw', 'raw').status).toBe(0);
    const none = imgtool(['convert', '--disk', '2', '-O', 'raw', t.path('two.ova'), t.path('x.raw')]);
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/no disk 2: the OVA has 2/);
  });

  it('part list reads the disk inside', () => {
    const r = imgtool(['part', 'list', '--output', 'json', t.path('two.ova')]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/ext4/);
  });

  it('wrap turns the filesystem disk of an OVA into a partitioned disk that qemu-img, sfdisk and e2fsck accept', () => {
    const out = t.path('wrapped.qcow2');
    const r = imgtool(['wrap', t.path('two.ova'), '-o', out, '--no-guest', '--boot', 'none']);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuCheck(out, 'qcow2').status).toBe(0);
    const raw = `${out}.raw`;
    must('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', out, raw]);
    const p1 = JSON.parse(must('sfdisk', ['--json', raw])).partitiontable.partitions[0];
    expect(p1.type).toBe('83');
    const fsck = run('e2fsck', ['-fn', `${raw}?offset=${p1.start * 512}`]);
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
  });
});

/** A tar built entry by entry with node-tar's Header (names GNU tar would refuse to write). */
function tarOf(entries: Array<[name: string, data: Uint8Array]>): Uint8Array {
  const parts: Buffer[] = [];
  for (const [name, data] of entries) {
    const h = Buffer.alloc(512);
    new Header({ path: name, mode: 0o644, size: data.length, type: 'File', mtime: new Date(0), uid: 0, gid: 0 }).encode(h, 0);
    parts.push(h, Buffer.from(data), Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

describe('hostile OVAs', () => {
  it('a manifest mismatch is an error naming the file', () => {
    const bad = tarOf([
      ['two.ovf', readFileSync(`${dir}/two.ovf`)],
      ['two.mf', readFileSync(`${dir}/bad.mf`)],
      ['root.vmdk', readFileSync(`${dir}/root.vmdk`)],
      ['data.vmdk', readFileSync(`${dir}/data.vmdk`)],
    ]);
    const file = t.path('bad-mf.ova');
    writeFileSync(file, bad);
    const r = imgtool(['convert', '-O', 'raw', file, t.path('bad.raw')]);
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/SHA256 of 'data\.vmdk' is [0-9a-f]{64}, but the manifest says 0{64}/);
  });

  it('a disk the OVF names but the archive lacks is an error naming it', () => {
    const r = imgtool(['convert', '--disk', '1', '-O', 'raw', t.path('missing.ova'), t.path('m.raw')]);
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/'absent\.vmdk', which the archive does not hold/);
  });

  it("an entry name with '..' is an error naming the entry", () => {
    const file = t.path('dotdot.ova');
    writeFileSync(file, tarOf([['vm.ovf', readFileSync(`${dir}/one.ovf`)], ['../root.vmdk', readFileSync(`${dir}/root.vmdk`)]]));
    const r = imgtool(['info', file]);
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/tar entry name '\.\.\/root\.vmdk' leaves the archive/);
  });

  it('a tar entry whose size runs past the archive is an error, not a read past the end', () => {
    const good = tarOf([['vm.ovf', readFileSync(`${dir}/one.ovf`)], ['root.vmdk', new Uint8Array(1024)]]);
    const cut = good.subarray(0, good.length - 1024 - 512);
    const file = t.path('cut.ova');
    writeFileSync(file, cut);
    const r = imgtool(['info', file]);
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/past the end/);
    expect(createHash('sha256').update(cut).digest('hex')).toBe(sha256File(file));
  });
});
