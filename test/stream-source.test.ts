/**
 * Sources read front to back (a server without Range, --no-ranges, a pipe,
 * a gzip/xz wrapper): raw, streamOptimized VMDK (qemu-img's layout, tables
 * first, and VMware's, tables and footer last) and OVA convert without a
 * scratch file. Proof: the runs get TMPDIR pointing at a directory that does
 * not exist, where a spool could not be made (the qcow2 control fails there
 * and converts with a real one). The server counts what it sends: the body
 * once. qemu-img compare and check judge every output; corrupt markers and
 * a manifest mismatch fail clearly and leave no output behind.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { CLI, imgtoolAsync, must, qemuCheck, qemuCompare, runAsync, tempDir } from './helpers/peers.js';
import { serveDir, type TestServer } from './helpers/http-server.js';

const t = tempDir('imgtool-stream-');
const MiB = 1 << 20;
let plain: TestServer;
/** A scratch directory that cannot hold a spool: it does not exist. */
const noScratch = () => ({ ...process.env, TMPDIR: t.path('no-such-dir') });
const scratch = t.path('scratch');

const ovf = (file: string) => `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:id="file1" ovf:href="${file}"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:capacity="9" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm"><Info>A virtual machine</Info></VirtualSystem>
</Envelope>
`;
const sha = (alg: string, f: string) => createHash(alg).update(readFileSync(f)).digest('hex');

beforeAll(async () => {
  mkdirSync(scratch);
  mkdirSync(t.path('ova'));
  // 9 MiB: data at the start, in the middle (two patterns), and in the very last sector.
  must('qemu-img', ['create', '-q', '-f', 'raw', t.path('disk.raw'), '9M']);
  must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x5a 1M 1M', '-c', 'write -P 0x3c 7M 300k', '-c', `write -P 0x77 ${9 * MiB - 512} 512`, t.path('disk.raw')]);
  // random bytes too (grains that do not compress)
  const raw = readFileSync(t.path('disk.raw'));
  for (let i = 4 * MiB; i < 4 * MiB + 200_000; i++) raw[i] = (i * 2654435761) >>> 24;
  writeFileSync(t.path('disk.raw'), raw);
  must('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', t.path('disk.raw'), t.path('qemu.vmdk')]);
  // VMware's layout (tables, GD and footer after the grains), as imgtool writes it; qemu-img vouches for it.
  must('node', [new URL('../dist/bin/main.js', import.meta.url).pathname, 'convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', t.path('disk.raw'), t.path('vmware.vmdk')]);
  expect(qemuCompare(t.path('disk.raw'), t.path('vmware.vmdk'), 'raw', 'vmdk').status).toBe(0);
  must('qemu-img', ['convert', '-O', 'qcow2', t.path('disk.raw'), t.path('disk.qcow2')]);
  must('cp', [t.path('qemu.vmdk'), t.path('ova/disk.vmdk')]);
  writeFileSync(t.path('ova/vm.ovf'), ovf('disk.vmdk'));
  const ovaDir = t.path('ova');
  must('tar', ['-C', ovaDir, '-cf', t.path('plain.ova'), 'vm.ovf', 'disk.vmdk']);
  writeFileSync(t.path('ova/vm.mf'), `SHA1(vm.ovf)= ${sha('sha1', `${ovaDir}/vm.ovf`)}\nSHA256(disk.vmdk)= ${sha('sha256', `${ovaDir}/disk.vmdk`)}\n`);
  must('tar', ['-C', ovaDir, '-cf', t.path('manifest.ova'), 'vm.ovf', 'vm.mf', 'disk.vmdk']);
  // the manifest last (some tools write it there): checked once everything has passed
  must('tar', ['-C', ovaDir, '-cf', t.path('manifest-last.ova'), 'vm.ovf', 'disk.vmdk', 'vm.mf']);
  writeFileSync(t.path('ova/vm.mf'), `SHA1(vm.ovf)= ${sha('sha1', `${ovaDir}/vm.ovf`)}\nSHA256(disk.vmdk)= ${'0'.repeat(64)}\n`);
  must('tar', ['-C', ovaDir, '-cf', t.path('bad-manifest.ova'), 'vm.ovf', 'vm.mf', 'disk.vmdk']);
  // Two disks (--disk 1 is the second), a qcow2 disk (spooled alone), a '..' entry name.
  must('qemu-img', ['create', '-q', '-f', 'raw', t.path('other.raw'), '2M']);
  must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 512k 64k', t.path('other.raw')]);
  must('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', t.path('other.raw'), `${ovaDir}/other.vmdk`]);
  writeFileSync(`${ovaDir}/two.ovf`, ovf('other.vmdk').replace('</References>', '<File ovf:id="file2" ovf:href="disk.vmdk"/></References>').replace('</DiskSection>', '<Disk ovf:capacity="9" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk2" ovf:fileRef="file2"/></DiskSection>'));
  must('tar', ['-C', ovaDir, '-cf', t.path('two.ova'), 'two.ovf', 'other.vmdk', 'disk.vmdk']);
  must('qemu-img', ['convert', '-O', 'qcow2', t.path('disk.raw'), `${ovaDir}/disk.qcow2`]);
  writeFileSync(`${ovaDir}/qcow2.ovf`, ovf('disk.qcow2'));
  must('tar', ['-C', ovaDir, '-cf', t.path('qcow2.ova'), 'qcow2.ovf', 'disk.qcow2']);
  must('tar', ['-C', ovaDir, '-P', '--transform', 's,^disk,../disk,', '-cf', t.path('dotdot.ova'), 'vm.ovf', 'disk.vmdk']);
  for (const f of ['disk.raw', 'qemu.vmdk', 'vmware.vmdk', 'manifest.ova']) {
    must('sh', ['-c', `gzip -kc '${t.path(f)}' > '${t.path(f)}.gz' && xz -kc '${t.path(f)}' > '${t.path(f)}.xz'`]);
  }
  plain = await serveDir(t.dir, { ranges: false });
}, 120_000);
afterAll(async () => {
  await plain?.close();
  t.cleanup();
});

/** No temporary output left next to `out`, and `out` itself absent. */
function noOutputLeft(out: string): void {
  expect(existsSync(out)).toBe(false);
  expect(readdirSync(t.dir).filter((n) => n.includes('imgtool-tmp'))).toEqual([]);
}

async function convertsWithoutScratch(args: string[], out: string, fmt: string, input?: Buffer): Promise<void> {
  const r = await imgtoolAsync(['convert', ...args, out], { input, env: noScratch() });
  expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  expect(qemuCompare(t.path('disk.raw'), out, 'raw', fmt).status, `${args.join(' ')}: compare`).toBe(0);
  if (fmt !== 'raw') expect(qemuCheck(out, fmt).status, `${args.join(' ')}: check`).toBe(0);
}

describe('front to back, without a scratch file', () => {
  const sources = ['disk.raw', 'qemu.vmdk', 'vmware.vmdk', 'plain.ova', 'manifest.ova', 'manifest-last.ova'];

  it('from a server without Range: raw, both VMDK layouts and OVAs, the body fetched exactly once', async () => {
    for (const f of sources) {
      const out = t.path(`url-${f}.qcow2`);
      await convertsWithoutScratch([plain.url(f)], out, 'qcow2');
      expect(plain.requestsFor(`/${f}`), f).toBe(1);
      expect(plain.bodyBytes(`/${f}`), f).toBe(statSync(t.path(f)).size);
    }
  });

  it('--no-ranges against a server that has them streams too', async () => {
    const ranged = await serveDir(t.dir);
    try {
      await convertsWithoutScratch(['--no-ranges', ranged.url('qemu.vmdk')], t.path('noranges.vdi'), 'vdi');
      expect(ranged.requestsFor('/qemu.vmdk')).toBe(1);
      expect(ranged.bodyBytes('/qemu.vmdk')).toBe(statSync(t.path('qemu.vmdk')).size);
    } finally {
      await ranged.close();
    }
  });

  it('from a pipe: VMDKs and OVAs to qcow2; raw (length unknown) to raw', async () => {
    for (const f of sources.filter((s) => s !== 'disk.raw')) await convertsWithoutScratch(['-'], t.path(`pipe-${f}.qcow2`), 'qcow2', readFileSync(t.path(f)));
    await convertsWithoutScratch(['-', '-O', 'raw'], t.path('pipe-raw.img'), 'raw', readFileSync(t.path('disk.raw')));
    // holes stay holes: the 9 MiB output holds about the data
    expect(statSync(t.path('pipe-raw.img')).blocks * 512).toBeLessThan(4 * MiB);
    // ending right after the last grain, as qemu-img's larger streams do (no end-of-stream marker, no padding)
    const b = readFileSync(t.path('qemu.vmdk'));
    const last = markers(b).at(-1)!;
    writeFileSync(t.path('unpadded.vmdk'), b.subarray(0, last[0] + Math.ceil((12 + last[2]) / 512) * 512));
    expect(qemuCompare(t.path('disk.raw'), t.path('unpadded.vmdk'), 'raw', 'vmdk').status).toBe(0);
    await convertsWithoutScratch(['-'], t.path('unpadded.qcow2'), 'qcow2', readFileSync(t.path('unpadded.vmdk')));
    // a named pipe given as a path is read the same way
    const fifo = await runAsync('bash', ['-c', `exec "$0" "$1" convert <(cat '${t.path('manifest.ova.xz')}') '${t.path('fifo.qcow2')}'`, process.execPath, CLI], { env: noScratch() });
    expect(fifo.status, fifo.stderr).toBe(0);
    expect(qemuCompare(t.path('disk.raw'), t.path('fifo.qcow2'), 'raw', 'qcow2').status).toBe(0);
  });

  it('the library convert() takes the same path', async () => {
    const lib = (await import(new URL('../dist/index.js', import.meta.url).href)) as typeof import('../src/index.js');
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = t.path('no-such-dir');
    try {
      const r = await lib.convert(t.path('vmware.vmdk.xz'), t.path('lib.qcow2'));
      expect(r['source-format']).toBe('vmdk');
      expect(r['virtual-size']).toBe(9 * MiB);
    } finally {
      process.env.TMPDIR = saved;
    }
    expect(qemuCompare(t.path('disk.raw'), t.path('lib.qcow2'), 'raw', 'qcow2').status).toBe(0);
  });

  it('gzip and xz wrappers, from a file, a pipe and a URL without ranges', async () => {
    for (const ext of ['gz', 'xz']) {
      for (const f of ['qemu.vmdk', 'vmware.vmdk', 'manifest.ova']) {
        const src = `${f}.${ext}`;
        await convertsWithoutScratch([t.path(src)], t.path(`file-${src}.qcow2`), 'qcow2');
        await convertsWithoutScratch(['-'], t.path(`pipe-${src}.qcow2`), 'qcow2', readFileSync(t.path(src)));
        await convertsWithoutScratch([plain.url(src)], t.path(`url-${src}.qcow2`), 'qcow2');
        expect(plain.requestsFor(`/${src}`)).toBe(1);
      }
      await convertsWithoutScratch(['-O', 'raw', t.path(`disk.raw.${ext}`)], t.path(`raw-${ext}.img`), 'raw');
    }
  });

  it('qcow2 without ranges still spools (and converts), so the missing scratch directory is what the runs above did without', async () => {
    const spooled = await imgtoolAsync(['convert', plain.url('disk.qcow2'), t.path('spooled.qcow2')], { env: { ...process.env, TMPDIR: scratch } });
    expect(spooled.status, spooled.stderr).toBe(0);
    expect(qemuCompare(t.path('disk.raw'), t.path('spooled.qcow2'), 'raw', 'qcow2').status).toBe(0);
    expect(readdirSync(scratch)).toEqual([]);
    const cannot = await imgtoolAsync(['convert', plain.url('disk.qcow2'), t.path('nospool.qcow2')], { env: noScratch() });
    expect(cannot.status).not.toBe(0);
    expect(cannot.stderr).toMatch(/no-such-dir/);
    noOutputLeft(t.path('nospool.qcow2'));
    // and raw from a pipe to qcow2 (length unknown) spools as before
    const rawPipe = await imgtoolAsync(['convert', '-', t.path('rawpipe.qcow2')], { input: readFileSync(t.path('disk.raw')), env: noScratch() });
    expect(rawPipe.status).not.toBe(0);
    noOutputLeft(t.path('rawpipe.qcow2'));
  });

  it('an OVA: --disk 1 streams the second disk; a qcow2 disk inside is spooled alone, after the rest of the archive', async () => {
    await convertsWithoutScratch(['--disk', '1', '-'], t.path('disk1.qcow2'), 'qcow2', readFileSync(t.path('two.ova')));
    const d0 = await imgtoolAsync(['convert', '-O', 'raw', plain.url('two.ova'), t.path('disk0.raw')], { env: noScratch() });
    expect(d0.status, d0.stderr).toBe(0);
    expect(qemuCompare(t.path('other.raw'), t.path('disk0.raw'), 'raw', 'raw').status).toBe(0);
    const q = await imgtoolAsync(['convert', '-', t.path('ova-qcow2.qcow2')], { input: readFileSync(t.path('qcow2.ova')), env: { ...process.env, TMPDIR: scratch } });
    expect(q.status, q.stderr).toBe(0);
    expect(qemuCompare(t.path('disk.raw'), t.path('ova-qcow2.qcow2'), 'raw', 'qcow2').status).toBe(0);
    const cannot = await imgtoolAsync(['convert', '-', t.path('ova-qcow2-nospool.qcow2')], { input: readFileSync(t.path('qcow2.ova')), env: noScratch() });
    expect(cannot.status).not.toBe(0);
    noOutputLeft(t.path('ova-qcow2-nospool.qcow2'));
  });

  it('a streamOptimized VMDK whose tables lie after its grains is spooled (qemu-img reads it so too)', async () => {
    const b = readFileSync(t.path('qemu.vmdk'));
    const gdSector = Number(b.readBigUInt64LE(56));
    const gtSector = b.readUInt32LE(gdSector * 512);
    const newGt = Math.ceil(b.length / 512);
    const gd = Buffer.alloc(512);
    gd.writeUInt32LE(newGt, 0);
    const moved = Buffer.concat([b, Buffer.alloc(newGt * 512 - b.length), b.subarray(gtSector * 512, gtSector * 512 + 2048), gd]);
    moved.writeBigUInt64LE(BigInt(newGt + 4), 56);
    writeFileSync(t.path('moved.vmdk'), moved);
    expect(qemuCompare(t.path('disk.raw'), t.path('moved.vmdk'), 'raw', 'vmdk').status).toBe(0);
    const r = await imgtoolAsync(['convert', '-', t.path('moved.qcow2')], { input: moved, env: { ...process.env, TMPDIR: scratch } });
    expect(r.status, r.stderr).toBe(0);
    expect(qemuCompare(t.path('disk.raw'), t.path('moved.qcow2'), 'raw', 'qcow2').status).toBe(0);
    const cannot = await imgtoolAsync(['convert', '-', t.path('moved-nospool.qcow2')], { input: moved, env: noScratch() });
    expect(cannot.status).not.toBe(0);
    noOutputLeft(t.path('moved-nospool.qcow2'));
  });

  it('a bomb: a 9 MiB VMDK followed by 300 MiB of zeros in an xz stream stops at the cap the header declares', async () => {
    const bomb = t.path('bomb.vmdk.xz');
    must('sh', ['-c', `(cat '${t.path('qemu.vmdk')}'; head -c 300M /dev/zero) | xz -1 -T1 > '${bomb}'`]);
    const r = await imgtoolAsync(['convert', bomb, t.path('bomb.qcow2')], { env: noScratch() });
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/longer than \d+ bytes \(the vmdk image inside declares 9437184 bytes\)/);
    noOutputLeft(t.path('bomb.qcow2'));
  });
});

/** The grain markers of qemu.vmdk: [file offset, lba, size]. */
function markers(buf: Buffer): Array<[number, bigint, number]> {
  const out: Array<[number, bigint, number]> = [];
  let pos = Number(buf.readBigUInt64LE(64)) * 512; // overHead
  while (pos + 16 <= buf.length) {
    const lba = buf.readBigUInt64LE(pos);
    const size = buf.readUInt32LE(pos + 8);
    if (size === 0) return out;
    out.push([pos, lba, size]);
    pos += Math.ceil((12 + size) / 512) * 512;
  }
  return out;
}

describe('hostile streams fail clearly and leave no output', () => {
  const corrupt = async (name: string, edit: (b: Buffer, m: Array<[number, bigint, number]>) => void, message: RegExp) => {
    const b = Buffer.from(readFileSync(t.path('qemu.vmdk')));
    edit(b, markers(b));
    const out = t.path(`${name}.qcow2`);
    const r = await imgtoolAsync(['convert', '-', out], { input: b, env: noScratch() });
    expect(r.status, `${name}: ${r.stderr}`).toBe(3);
    expect(r.stderr.trim().split('\n'), name).toHaveLength(1);
    expect(r.stderr, name).toMatch(message);
    noOutputLeft(out);
  };

  it('a grain LBA beyond the capacity', async () => {
    await corrupt('lba-beyond', (b, m) => b.writeBigUInt64LE(BigInt(9 * 2048), m[2]![0]), /grain marker lba.*beyond the capacity/);
  });

  it('grain LBAs going backwards', async () => {
    await corrupt('lba-back', (b, m) => b.writeBigUInt64LE(m[0]![1], m[2]![0]), /grain marker lba.*not above the previous/);
  });

  it('a grain size that lies: too large for a grain, or cutting the data short', async () => {
    await corrupt('size-huge', (b, m) => b.writeUInt32LE(0x7fffffff, m[1]![0] + 8), /grain marker size.*zlib's bound/);
    await corrupt('size-short', (b, m) => b.writeUInt32LE(m[1]![2] - 20, m[1]![0] + 8), /zlib data are invalid or cut short|grain table entry/);
  });

  it('a grain the grain table does not point at', async () => {
    // move grain 1's LBA up by one grain (still increasing, still inside): the table says otherwise
    await corrupt('gt-mismatch', (b, m) => b.writeBigUInt64LE(m[1]![1] + 128n, m[1]![0]), /grain table entry/);
  });

  it('a stream cut after a whole grain (qemu-img writes no end-of-stream marker: the tables catch it)', async () => {
    const b = readFileSync(t.path('qemu.vmdk'));
    const m = markers(Buffer.from(b));
    const out = t.path('cut-vmdk.qcow2');
    const r = await imgtoolAsync(['convert', '-', out], { input: b.subarray(0, m[3]![0]), env: noScratch() });
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toMatch(new RegExp(`grain tables map ${m.length} grains, but the stream holds 3`));
    noOutputLeft(out);
  });

  it('mutated streams (both layouts): an error, or exactly what qemu-img reads from the same bytes', async () => {
    let seed = 12345;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    let accepted = 0;
    for (let i = 0; i < 16; i++) {
      const b = Buffer.from(readFileSync(t.path(i % 2 ? 'vmware.vmdk' : 'qemu.vmdk')));
      const overhead = Number(b.readBigUInt64LE(64)) * 512;
      for (let k = 0; k <= rand(3); k++) {
        const [from, to] = [[0, 512], [overhead, b.length], [b.length - 2048, b.length]][rand(3)]!;
        b[from + rand(to - from)] = rand(256);
      }
      const src = t.path(`mutated-${i}.vmdk`);
      const out = t.path(`mutated-${i}.qcow2`);
      writeFileSync(src, b);
      // (a mutated header may make it a VMDK that must be spooled: a scratch directory is there)
      const r = await imgtoolAsync(['convert', '--output', 'json', '-', out], { input: b, env: { ...process.env, TMPDIR: scratch } });
      expect([0, 3, 4], `${i}: ${r.stderr}`).toContain(r.status);
      if (r.status === 0) {
        accepted++;
        // (a broken magic makes it raw, for imgtool and qemu-img alike)
        const as = JSON.parse(r.stdout)['source-format'];
        expect(qemuCompare(src, out, as, 'qcow2').status, `mutation ${i} (${as})`).toBe(0);
      } else {
        expect(r.stderr.trim().split('\n'), `${i}`).toHaveLength(1);
        noOutputLeft(out);
      }
    }
    expect(accepted).toBeGreaterThan(0);
  });

  it("VMware's layout: a footer naming another grain directory", async () => {
    const b = Buffer.from(readFileSync(t.path('vmware.vmdk')));
    const footer = b.length - 2 * 512;
    b.writeBigUInt64LE(b.readBigUInt64LE(footer + 56) - 1n, footer + 56);
    const out = t.path('footer.qcow2');
    const r = await imgtoolAsync(['convert', '-', out], { input: b, env: noScratch() });
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/footer gdOffset.*is not the sector of the grain directory/);
    noOutputLeft(out);
  });

  it("an OVA entry named '../disk.vmdk', and an OVA cut short", async () => {
    const r = await imgtoolAsync(['convert', '-', t.path('dotdot.qcow2')], { input: readFileSync(t.path('dotdot.ova')), env: noScratch() });
    expect(r.status, r.stderr).toBe(3);
    expect(r.stderr).toMatch(/tar entry name '\.\.\/disk\.vmdk' leaves the archive/);
    noOutputLeft(t.path('dotdot.qcow2'));
    const whole = readFileSync(t.path('manifest.ova'));
    const cut = await imgtoolAsync(['convert', '-', t.path('cut.qcow2')], { input: whole.subarray(0, whole.length - 20_000), env: noScratch() });
    expect(cut.status, cut.stderr).toBe(3);
    expect(cut.stderr.trim().split('\n')).toHaveLength(1);
    noOutputLeft(t.path('cut.qcow2'));
  });

  it('an OVA whose manifest does not match its disk', async () => {
    for (const how of ['url', 'pipe'] as const) {
      const out = t.path(`bad-manifest-${how}.qcow2`);
      const r =
        how === 'url'
          ? await imgtoolAsync(['convert', plain.url('bad-manifest.ova'), out], { env: noScratch() })
          : await imgtoolAsync(['convert', '-', out], { input: readFileSync(t.path('bad-manifest.ova')), env: noScratch() });
      expect(r.status, r.stderr).toBe(3);
      expect(r.stderr).toMatch(/SHA256 of 'disk\.vmdk' is [0-9a-f]{64}, but the manifest says 0{64}/);
      noOutputLeft(out);
    }
  });
});
