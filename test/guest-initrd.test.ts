/**
 * Adding to a guest's initramfs without a chroot: the newc writer (read back
 * by the host's cpio), where compressed members end (archives made by the
 * host's gzip, zstd, xz and lz4, with an archive appended after them), the
 * plan for an initramfs-tools or dracut initrd (modules from the guest's
 * modules.dep, indexes from the host's depmod, conf/modules, RESUME), advice
 * when the guest lacks the modules, and what the network configuration says.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { ImageError } from '../src/core/errors.js';
import { S_IFDIR, S_IFREG, encodeNewc } from '../src/guest/cpio.js';
import { listInitrd, modulesIn } from '../src/guest/initrd.js';
import { depmodIndexes, fixResumeText, planInitrd, storageAdvice, type GuestReader } from '../src/guest/initrd-virtio.js';
import { filesNamingEth, type ConfigReader } from '../src/guest/network.js';
import { must, peer, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-initrd-');
afterAll(() => t.cleanup());

let counter = 0;
/** A newc archive made by busybox cpio from {path: contents}. */
function busyboxCpio(files: Record<string, string>): Buffer {
  const dir = t.path(`tree${++counter}`);
  for (const [p, c] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, p)), { recursive: true });
    writeFileSync(join(dir, p), c);
  }
  return execFileSync(peer('busybox'), ['sh', '-c', `cd '${dir}' && find . | busybox cpio -o -H newc 2>/dev/null`], { maxBuffer: 64 << 20 });
}

/** Compress with a host tool. */
function hostCompress(tool: string, args: string[], data: Buffer): Buffer {
  return execFileSync(peer(tool), args, { input: data, maxBuffer: 64 << 20 });
}

/** Names in a newc archive, by the host's cpio. */
function hostList(archive: Uint8Array): string[] {
  const f = t.path(`list${++counter}.cpio`);
  writeFileSync(f, archive);
  return must('sh', ['-c', `cpio -t --quiet <'${f}'`]).trim().split('\n');
}
function hostExtract(archive: Uint8Array, name: string): string {
  const f = t.path(`x${++counter}.cpio`);
  writeFileSync(f, archive);
  return must('sh', ['-c', `cpio -i --quiet --to-stdout '${name}' <'${f}'`]);
}

const pad4 = (b: Uint8Array) => Buffer.concat([b, Buffer.alloc(((b.length + 3) & ~3) - b.length)]);

describe('newc writer', () => {
  it('writes archives the host cpio lists and extracts, directories and files, a multiple of 4 long', async () => {
    const a = encodeNewc([
      { name: 'conf', mode: S_IFDIR | 0o755 },
      { name: 'conf/modules', mode: S_IFREG | 0o644, data: Buffer.from('virtio_pci\n') },
      { name: 'lib/x.ko', mode: S_IFREG | 0o644, data: Buffer.from('abc') },
      { name: 'empty', mode: S_IFREG | 0o644 },
    ]);
    expect(a.length % 4).toBe(0);
    expect(hostList(a)).toEqual(['conf', 'conf/modules', 'lib/x.ko', 'empty']);
    expect(hostExtract(a, 'conf/modules')).toBe('virtio_pci\n');
    expect(hostExtract(a, 'lib/x.ko')).toBe('abc');
    expect(await listInitrd(a)).toMatchObject({ files: ['conf', 'conf/modules', 'lib/x.ko', 'empty'], segments: ['cpio'], appendable: true });
  });
});

describe('initrd walk: an archive appended after a compressed one', () => {
  const first = busyboxCpio({ init: '#!/bin/sh\n', 'conf/modules': 'xen-blkfront\n', 'big.bin': 'x'.repeat(300_000) });
  const appended = encodeNewc([{ name: 'conf/modules', mode: S_IFREG | 0o644, data: Buffer.from('xen-blkfront\nvirtio_blk\n') }]);

  it.each([
    ['gzip', ['-9c']],
    ['zstd', ['-19', '-q', '-c']],
    ['xz', ['--check=crc32', '-c']],
  ])('reads both archives after %s, and the later conf/modules wins', async (tool, args) => {
    const image = Buffer.concat([pad4(hostCompress(tool, args, first)), appended]);
    const c = await listInitrd(image, (n) => n === 'conf/modules');
    expect(c.problem).toBeUndefined();
    expect(c.segments).toEqual([tool, 'cpio', 'cpio']);
    expect(c.appendable).toBe(true);
    expect(c.files.filter((f) => f === 'conf/modules')).toHaveLength(2);
    expect(Buffer.from(c.kept.get('conf/modules')!.data).toString()).toBe('xen-blkfront\nvirtio_blk\n');
  });

  it('reads several gzip members and zstd frames in a row', async () => {
    const gz = Buffer.concat([gzipSync(first), gzipSync(busyboxCpio({ 'second.txt': 'b' }))]);
    expect((await listInitrd(gz)).files).toContain('second.txt');
    const zs = Buffer.concat([hostCompress('zstd', ['-q', '-c'], first), hostCompress('zstd', ['-q', '-c'], busyboxCpio({ 'z2.txt': 'c' }))]);
    expect(await listInitrd(zs)).toMatchObject({ segments: ['zstd', 'cpio', 'cpio'], appendable: true });
    expect((await listInitrd(zs)).files).toContain('z2.txt');
  });

  it('says nothing can be appended after lz4 (its end is not known)', async () => {
    const image = hostCompress('lz4', ['-l', '-c'], first);
    const c = await listInitrd(image);
    expect(c.files).toContain('init');
    expect(c.appendable).toBe(false);
  });

  it('fails a truncated gzip or zstd member with a problem, not a throw', async () => {
    const gz = gzipSync(first);
    expect((await listInitrd(gz.subarray(0, gz.length - 20))).problem).toBeDefined();
    const zs = hostCompress('zstd', ['-q', '-c'], first);
    expect((await listInitrd(zs.subarray(0, zs.length - 20))).problem).toMatch(/zstd/);
    const badCrc = Buffer.from(gz);
    badCrc[badCrc.length - 6]! ^= 0xff;
    expect((await listInitrd(badCrc)).problem).toMatch(/gzip: the trailer does not match the data \(CRC32 or size\)/);
  });
});

const V = '6.1.0-9-amd64';
const DEP = [
  'kernel/drivers/block/xen-blkfront.ko:',
  'kernel/drivers/virtio/virtio.ko:',
  'kernel/drivers/virtio/virtio_ring.ko:',
  'kernel/drivers/virtio/virtio_pci_modern_dev.ko:',
  'kernel/drivers/virtio/virtio_pci_legacy_dev.ko:',
  'kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko',
  'kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko',
  'kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/drivers/net/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko',
  'kernel/drivers/net/net_failover.ko: kernel/drivers/net/failover.ko',
  'kernel/drivers/net/failover.ko:',
  '',
].join('\n');

/** A guest as a map of files (module files hold their own path, so copies can be checked). */
function guestReader(files: Record<string, string>): GuestReader {
  return async (p) => (p in files ? Buffer.from(files[p]!) : null);
}
function guestWithModules(dep = DEP): Record<string, string> {
  const files: Record<string, string> = { [`/lib/modules/${V}/modules.dep`]: dep, [`/lib/modules/${V}/modules.order`]: 'kernel/drivers/block/virtio_blk.ko\n' };
  for (const line of dep.split('\n')) {
    const m = /^([^:]+):/.exec(line);
    if (m) files[`/lib/modules/${V}/${m[1]}`] = `module ${m[1]}`;
  }
  return files;
}
const initramfsTools = (extra: Record<string, string> = {}) =>
  gzipSync(
    busyboxCpio({
      init: '#!/bin/sh\n',
      'conf/initramfs.conf': 'MODULES=most\n',
      'conf/modules': '# modules\nxen-blkfront\n',
      'conf/conf.d/resume': 'RESUME=/dev/xvda2\n',
      [`lib/modules/${V}/kernel/drivers/block/xen-blkfront.ko`]: 'module xen-blkfront',
      [`lib/modules/${V}/modules.dep`]: 'kernel/drivers/block/xen-blkfront.ko:\n',
      ...extra,
    }),
  );

describe('planning the archive appended to an initrd', () => {
  it('adds the virtio modules with their dependencies, depmod indexes, conf/modules and RESUME (initramfs-tools)', async () => {
    const image = initramfsTools();
    const p = await planInitrd(guestReader(guestWithModules()), image, {
      version: V,
      initrd: `/boot/initrd.img-${V}`,
      addVirtio: true,
      resume: 'UUID=aaaa-bbbb',
      builtin: new Set(),
    });
    expect(p.problem).toBeUndefined();
    const patch = p.patch!;
    expect(patch).toMatchObject({ flavour: 'initramfs-tools', backup: `/boot/initrd.img-${V}.imgtool-orig`, kernelArgs: [] });
    const prefix = `lib/modules/${V}/`;
    // Dependencies first, each once, as the guest has them (virtio_blk stays .ko.xz).
    expect(patch.modules.map((m) => m.slice(prefix.length))).toEqual([
      'kernel/drivers/virtio/virtio.ko',
      'kernel/drivers/virtio/virtio_ring.ko',
      'kernel/drivers/virtio/virtio_pci_legacy_dev.ko',
      'kernel/drivers/virtio/virtio_pci_modern_dev.ko',
      'kernel/drivers/virtio/virtio_pci.ko',
      'kernel/drivers/block/virtio_blk.ko.xz',
      'kernel/drivers/net/failover.ko',
      'kernel/drivers/net/net_failover.ko',
      'kernel/drivers/net/virtio_net.ko',
    ]);
    expect(patch.indexes).toEqual(expect.arrayContaining([`${prefix}modules.dep`, `${prefix}modules.dep.bin`, `${prefix}modules.alias`]));
    expect(patch.texts).toEqual([
      { name: 'conf/modules', before: '# modules\nxen-blkfront\n', after: '# modules\nxen-blkfront\nvirtio_pci\nvirtio_blk\nvirtio_net\n' },
      { name: 'conf/conf.d/resume', before: 'RESUME=/dev/xvda2\n', after: 'RESUME=UUID=aaaa-bbbb\n' },
    ]);
    // The tail starts where the kernel looks for the next archive, and the host cpio reads it.
    const whole = Buffer.concat([image, patch.tail]);
    const start = (image.length + 3) & ~3;
    const names = hostList(whole.subarray(start));
    expect(names).toContain(`${prefix}kernel/drivers/block/virtio_blk.ko.xz`);
    expect(names).toContain(`${prefix}kernel/drivers/virtio`); // a directory the initrd lacked
    expect(names).not.toContain('conf'); // one it has
    expect(hostExtract(whole.subarray(start), `${prefix}kernel/drivers/block/virtio_blk.ko.xz`)).toBe('module kernel/drivers/block/virtio_blk.ko.xz');
    expect(hostExtract(whole.subarray(start), `${prefix}modules.dep`)).toMatch(/^kernel\/drivers\/block\/virtio_blk\.ko\.xz:/m);
    expect(hostExtract(whole.subarray(start), `${prefix}modules.dep`)).toMatch(/^kernel\/drivers\/block\/xen-blkfront\.ko:/m);
    // Our own reader sees the modules now, and the new conf/modules wins.
    const after = await listInitrd(whole, (n) => n === 'conf/modules');
    expect(modulesIn(after.files).has('virtio_blk')).toBe(true);
    expect(Buffer.from(after.kept.get('conf/modules')!.data).toString()).toContain('virtio_blk');
  });

  it('leaves out modules built into the kernel or already in the initrd, and only fixes RESUME when virtio is there', async () => {
    const p = await planInitrd(guestReader(guestWithModules()), initramfsTools({ [`lib/modules/${V}/kernel/drivers/virtio/virtio.ko`]: 'module virtio' }), {
      version: V,
      initrd: '/boot/i',
      addVirtio: true,
      builtin: new Set(['virtio_net', 'virtio_pci']),
    });
    expect(p.patch!.modules.map((m) => m.replace(/^.*\//, ''))).toEqual(['virtio_ring.ko', 'virtio_blk.ko.xz']);
    expect(p.patch!.texts.map((x) => x.after)).toEqual(['# modules\nxen-blkfront\nvirtio_blk\n']);
    const r = await planInitrd(guestReader({}), initramfsTools(), { version: V, initrd: '/boot/i', addVirtio: false, resume: 'none', builtin: new Set() });
    expect(r.patch!.modules).toEqual([]);
    expect(r.patch!.texts).toEqual([{ name: 'conf/conf.d/resume', before: 'RESUME=/dev/xvda2\n', after: 'RESUME=none\n' }]);
    const none = await planInitrd(guestReader({}), initramfsTools({ 'conf/conf.d/resume': 'RESUME=UUID=x\n' }), { version: V, initrd: '/boot/i', addVirtio: false, resume: 'UUID=x', builtin: new Set() });
    expect(none.patch).toBeUndefined();
  });

  it('asks dracut for the modules with rd.driver.pre= on the command line', async () => {
    const image = gzipSync(busyboxCpio({ init: '', 'usr/lib/dracut/build-parameter.txt': '', [`usr/lib/modules/${V}/modules.dep`]: '' }));
    const p = await planInitrd(guestReader(guestWithModules()), image, { version: V, initrd: '/boot/initramfs.img', addVirtio: true, builtin: new Set() });
    expect(p.patch!.flavour).toBe('dracut');
    expect(p.patch!.kernelArgs).toEqual(['rd.driver.pre=virtio_pci,virtio_blk']);
    expect(p.patch!.texts).toEqual([]);
    // Where dracut keeps its modules.
    expect(p.patch!.modules[0]).toMatch(new RegExp(`^usr/lib/modules/${V}/kernel/`));
  });

  it('says why when the modules cannot be added, with advice true for the drivers the initrd has', async () => {
    const noBlk = DEP.split('\n').filter((l) => !/virtio_blk/.test(l)).join('\n');
    const p = await planInitrd(guestReader(guestWithModules(noBlk)), initramfsTools({ [`lib/modules/${V}/kernel/ata/ahci.ko`]: 'm', [`lib/modules/${V}/kernel/scsi/sd_mod.ko`]: 'm' }), {
      version: V,
      initrd: '/boot/i',
      addVirtio: true,
      builtin: new Set(),
    });
    expect(p.problem).toBe(`the guest's /lib/modules/${V} has no virtio_blk`);
    expect(p.storage).toEqual(['ahci', 'sd_mod', 'xen_blkfront']);
    expect(storageAdvice(p.storage)).toMatch(/have ahci, sd_mod, xen_blkfront: until then, attach the disk as SATA \(bus='sata'\)/);
    expect(storageAdvice(['ata_piix'])).toMatch(/no disk bus QEMU offers works/); // IDE without sd_mod reaches no disk
    expect(storageAdvice([])).toMatch(/have no storage driver: no disk bus QEMU offers works/);
    const unknown = await planInitrd(guestReader(guestWithModules()), gzipSync(busyboxCpio({ init: '' })), { version: V, initrd: '/boot/i', addVirtio: true, builtin: new Set() });
    expect(unknown.problem).toMatch(/neither initramfs-tools nor dracut/);
    const lz4 = await planInitrd(guestReader(guestWithModules()), hostCompress('lz4', ['-l', '-c'], busyboxCpio({ 'conf/initramfs.conf': '' })), { version: V, initrd: '/boot/i', addVirtio: true, builtin: new Set() });
    expect(lz4.problem).toMatch(/holds lz4 data whose end imgtool cannot find/);
  });

  it('never copies a module whose modules.dep path leaves the module tree', async () => {
    const hostile = `../../../../etc/shadow:\nkernel/drivers/virtio/virtio_pci.ko: ../../x.ko\nkernel/drivers/block/virtio_blk.ko:\n`;
    const files = { ...guestWithModules(hostile), '/etc/shadow': 'secret' };
    const p = await planInitrd(guestReader(files), initramfsTools(), { version: V, initrd: '/boot/i', addVirtio: true, builtin: new Set() });
    // The line naming ../../x.ko is dropped: virtio_pci is then missing.
    expect(p.problem).toBe(`the guest's /lib/modules/${V} has no virtio_pci`);
  });

  it("fails clearly when the host's depmod is missing", () => {
    const e = (() => {
      try {
        depmodIndexes(V, new Map(), []);
      } catch (x) {
        return x;
      }
    })();
    expect(e).toBeInstanceOf(ImageError);
    expect((e as ImageError).message).toMatch(/depmod is not installed on this machine \(Debian\/Ubuntu package kmod\)/);
  });

  it('points RESUME= at the new swap, leaving none, auto and the right value alone', () => {
    expect(fixResumeText('RESUME=/dev/xvda2\n', 'UUID=n')).toBe('RESUME=UUID=n\n');
    expect(fixResumeText('# c\nRESUME="UUID=old"\n', 'UUID=n')).toBe('# c\nRESUME=UUID=n\n');
    expect(fixResumeText('RESUME=none\n', 'UUID=n')).toBe('RESUME=none\n');
    expect(fixResumeText('RESUME=auto\n', 'none')).toBe('RESUME=auto\n');
    expect(fixResumeText('RESUME=UUID=n\n', 'UUID=n')).toBe('RESUME=UUID=n\n');
  });
});

describe('network configuration naming ethN', () => {
  function reader(files: Record<string, string>): ConfigReader {
    return {
      read: async (p) => files[p] ?? null,
      readdir: async (d) => Object.keys(files).filter((p) => p.startsWith(`${d}/`)).map((p) => p.slice(d.length + 1)),
      isDir: async (d) => Object.keys(files).some((p) => p.startsWith(`${d}/`)),
    };
  }

  it('finds eth0 in ifupdown, ifcfg, netplan and systemd-networkd files, and ignores comments and other names', async () => {
    const w: string[] = [];
    const found = await filesNamingEth(
      reader({
        '/etc/network/interfaces': 'auto lo\niface lo inet loopback\n# eth0 was here\n',
        '/etc/network/interfaces.d/eth0': 'auto eth0\niface eth0 inet dhcp\n',
        '/etc/sysconfig/network-scripts/ifcfg-eth1': 'BOOTPROTO=dhcp\n',
        '/etc/sysconfig/network-scripts/ifcfg-lo': 'DEVICE=lo\n',
        '/etc/netplan/50-cloud-init.yaml': 'network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n',
        '/etc/systemd/network/10-ens3.network': '[Match]\nName=ens3\n[Network]\nDHCP=yes\n',
        '/etc/systemd/network/20-eth.network': '[Match]\nName=eth2\n',
      }),
      w,
    );
    expect(found).toEqual([
      '/etc/network/interfaces.d/eth0',
      '/etc/sysconfig/network-scripts/ifcfg-eth1',
      '/etc/netplan/50-cloud-init.yaml',
      '/etc/systemd/network/20-eth.network',
    ]);
    expect(w).toEqual([]);
  });

  it('warns about files it cannot parse or read, and finds nothing in a predictable-names guest', async () => {
    const w: string[] = [];
    const r = reader({ '/etc/netplan/01.yaml': 'network:\n\tethernets:\n\t\teth0: {}\n', '/etc/systemd/network/x.network': '[Match]\nthis is not a key\n' });
    r.read = async (p) => {
      if (p === '/etc/network/interfaces') throw new Error('EIO');
      return { '/etc/netplan/01.yaml': 'network:\n\tethernets:\n\t\teth0: {}\n', '/etc/systemd/network/x.network': '[Match]\nthis is not a key\n' }[p] ?? null;
    };
    expect(await filesNamingEth(r, w)).toEqual([]);
    expect(w).toEqual([
      '/etc/network/interfaces could not be read (EIO): cannot tell whether it names eth0; if it does, add net.ifnames=0 to the kernel command line',
      '/etc/netplan/01.yaml could not be parsed (line 2 is indented with a tab, which YAML forbids): cannot tell which interfaces it configures',
      '/etc/systemd/network/x.network could not be parsed (line 2 is neither a [Section] nor Key=Value): cannot tell which interfaces it configures',
    ]);
    expect(await filesNamingEth(reader({ '/etc/network/interfaces': 'auto ens3\niface ens3 inet dhcp\n' }), [])).toEqual([]);
  });
});

