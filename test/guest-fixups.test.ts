/**
 * Guest fix-ups on small ext4 images built by the host's mke2fs -d from a
 * directory tree: what changes, what the diffs say (GNU patch applies them),
 * that dry runs write nothing, and that host e2fsck finds the result clean.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFileSync as exec } from 'node:child_process';
import { dirname, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { FileDevice } from '../src/core/file.js';
import { MemoryDevice } from '../src/core/memory.js';
import { ImageError } from '../src/core/errors.js';
import { fixGuest, fixBootConfigText, fixFstabText, fixInittabText, fixKernelArgs, type GuestFixReport } from '../src/guest/fixups.js';
import { listInitrd, modulesIn } from '../src/guest/initrd.js';
import { unifiedDiff } from '../src/guest/diff.js';
import { must, peer, run, sha256File, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-guest-');
afterAll(() => t.cleanup());

let counter = 0;

/** Write a tree of files ({path: content | {link}}) and make an ext4 image of it with mke2fs -d. */
function makeFs(files: Record<string, string | Uint8Array | { link: string }>, size = '16M'): string {
  const n = ++counter;
  const root = t.path(`root${n}`);
  mkdirSync(root);
  for (const [p, c] of Object.entries(files)) {
    const full = join(root, p);
    mkdirSync(dirname(full), { recursive: true });
    if (typeof c === 'object' && 'link' in c) symlinkSync(c.link, full);
    else writeFileSync(full, c);
  }
  const img = t.path(`fs${n}.img`);
  must('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', root, img, size]);
  return img;
}

/** A file debugfs reads out of the image (the host's view, not ours). */
function debugfsCat(img: string, p: string): string {
  return must('debugfs', ['-R', `cat ${p}`, img]);
}
function debugfsLs(img: string, dir: string): string {
  return must('debugfs', ['-R', `ls -l ${dir}`, img]);
}

async function fix(img: string, opts: Partial<Parameters<typeof fixGuest>[1]> = {}): Promise<GuestFixReport> {
  const dev = await FileDevice.open(img, { writable: !opts.dryRun });
  try {
    return await fixGuest(dev, { rootDevice: '/dev/vda1', ...opts });
  } finally {
    await dev.close();
  }
}

function fsckClean(img: string): void {
  const r = run('e2fsck', ['-fn', img]);
  expect(r.stdout + r.stderr).not.toMatch(/UNEXPECTED|Fix\?|incorrect|corrupt/i);
  expect(r.status).toBe(0);
}

/** A fake x86 kernel: enough of a bzImage header (0x55AA at 0x1fe, "HdrS" at 0x202) to be recognised. */
function fakeBzImage(): Uint8Array {
  const b = new Uint8Array(4096);
  b[0x1fe] = 0x55;
  b[0x1ff] = 0xaa;
  b.set(Buffer.from('HdrS'), 0x202);
  return b;
}

/** A newc cpio made by busybox cpio from the given paths (relative); `contents` overrides what a file holds. */
function cpio(files: string[], contents: Record<string, string> = {}): Buffer {
  const n = ++counter;
  const dir = t.path(`cpio${n}`);
  for (const f of files) {
    mkdirSync(dirname(join(dir, f)), { recursive: true });
    writeFileSync(join(dir, f), contents[f] ?? `contents of ${f}\n`);
  }
  return exec(peer('busybox'), ['sh', '-c', `cd '${dir}' && find . | busybox cpio -o -H newc 2>/dev/null`], { maxBuffer: 64 << 20 });
}

const VIRTIO = ['lib/modules/5.10.0-1-amd64/kernel/drivers/block/virtio_blk.ko', 'lib/modules/5.10.0-1-amd64/kernel/drivers/virtio/virtio_pci.ko'];

const ROOT_UUID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
const SWAP_UUID = 'aaaabbbb-cccc-dddd-eeee-ffff00001111';

describe('fstab', () => {
  it('maps xvd, sd and hd names to the new UUIDs and keeps the whitespace of each line', () => {
    const w: string[] = [];
    const out = fixFstabText('/dev/xvda1  /  ext3  defaults 0 1\n/dev/sda2\tnone\tswap\tsw\t0\t0\nproc /proc proc defaults 0 0\n', { root: `UUID=${ROOT_UUID}`, swap: `UUID=${SWAP_UUID}` }, w);
    expect(out).toBe(`UUID=${ROOT_UUID}  /  ext3  defaults 0 1\nUUID=${SWAP_UUID}\tnone\tswap\tsw\t0\t0\nproc /proc proc defaults 0 0\n`);
    expect(w).toEqual([]);
  });

  it('uses /dev/vdX names when no UUID is given, and adds a swap line when there is none', () => {
    const w: string[] = [];
    const out = fixFstabText('# root\n/dev/hda1 / ext2 defaults 1 1\n', { root: '/dev/vda1', swap: '/dev/vda2' }, w);
    expect(out).toBe('# root\n/dev/vda1 / ext2 defaults 1 1\n/dev/vda2\tnone\tswap\tsw\t0\t0\n');
  });

  it('comments out a Xen swap line when the new disk has no swap, and warns', () => {
    const w: string[] = [];
    const out = fixFstabText('/dev/xvda1 / ext4 defaults 0 1\n/dev/xvda2 none swap sw 0 0\n', { root: '/dev/vda1' }, w);
    expect(out).toContain('# imgtool: no swap device on the KVM disk: /dev/xvda2 none swap sw 0 0');
    expect(w.join()).toMatch(/swap on \/dev\/xvda2 has no counterpart/);
  });

  it('renames a second Xen disk to its virtio name but warns that this is an assumption', () => {
    const w: string[] = [];
    const out = fixFstabText('/dev/xvda1 / ext4 defaults 0 1\n/dev/xvdb1 /data ext4 defaults 0 2\n', { root: '/dev/vda1' }, w);
    expect(out).toContain('/dev/vdb1 /data ext4');
    expect(w.join()).toMatch(/\/dev\/xvdb1 \(\/data\) is not part of the wrapped disk; renamed to \/dev\/vdb1/);
  });

  it('points an old swap UUID= or LABEL= at the new swap area', () => {
    const w: string[] = [];
    const text = 'LABEL=root / ext4 defaults 0 1\nUUID=0000-old none swap sw 0 0\nLABEL=SWAP-xvda2 none swap sw 0 0\n';
    expect(fixFstabText(text, { root: `UUID=${ROOT_UUID}`, swap: `UUID=${SWAP_UUID}` }, w)).toBe(
      `LABEL=root / ext4 defaults 0 1\nUUID=${SWAP_UUID} none swap sw 0 0\nUUID=${SWAP_UUID} none swap sw 0 0\n`,
    );
  });

  it('rewrites the entries of filesystems on the new disk (wrap --part) by mount point to UUID=, keeping type and options', () => {
    const w: string[] = [];
    const text = [
      '/dev/xvda1 / ext4 defaults 0 1',
      '/dev/xvda3\t/var\text3\tdefaults,noatime\t0\t2',
      'LABEL=home /home/ ext4 nodev,nosuid 0 2',
      '/dev/xvdc1 /srv ext4 defaults 0 2',
      '/dev/xvda2 none swap sw 0 0',
      '',
    ].join('\n');
    const mounts = [
      { mountpoint: '/var', uuid: '11111111-2222-3333-4444-555555555555', device: '/dev/vda5' },
      { mountpoint: '/home', uuid: '66666666-7777-8888-9999-aaaaaaaaaaaa', device: '/dev/vda6' },
      { mountpoint: '/opt', uuid: 'bbbbbbbb-cccc-dddd-eeee-ffffffffffff', device: '/dev/vda7' },
    ];
    const out = fixFstabText(text, { root: `UUID=${ROOT_UUID}`, swap: `UUID=${SWAP_UUID}`, mounts }, w);
    expect(out.split('\n')).toEqual([
      `UUID=${ROOT_UUID} / ext4 defaults 0 1`,
      'UUID=11111111-2222-3333-4444-555555555555\t/var\text3\tdefaults,noatime\t0\t2',
      'UUID=66666666-7777-8888-9999-aaaaaaaaaaaa /home/ ext4 nodev,nosuid 0 2',
      // Not on the new disk: today's behaviour (a virtio name and a warning).
      '/dev/vdc1 /srv ext4 defaults 0 2',
      `UUID=${SWAP_UUID} none swap sw 0 0`,
      '',
    ]);
    expect(w.join('\n')).toMatch(/\/dev\/xvdc1 \(\/srv\) is not part of the wrapped disk; renamed to \/dev\/vdc1/);
    expect(w.join('\n')).toMatch(/\/etc\/fstab has no entry for \/opt: the filesystem on \/dev\/vda7 \(UUID=bbbbbbbb-cccc-dddd-eeee-ffffffffffff\) is not mounted/);
    expect(w).toHaveLength(2);
  });

  it('leaves LABEL= and UUID= roots alone', () => {
    const w: string[] = [];
    const text = 'LABEL=root / ext4 defaults 0 1\n';
    expect(fixFstabText(text, { root: `UUID=${ROOT_UUID}` }, w)).toBe(text);
  });
});

describe('consoles and boot configs (text)', () => {
  it('turns an inittab getty on xvc0 into ttyS0 at 115200 and adds tty1 when missing', () => {
    const w: string[] = [];
    const out = fixInittabText('id:3:initdefault:\nco:2345:respawn:/sbin/agetty xvc0 9600 vt100-nav\n', w);
    expect(out).toBe('id:3:initdefault:\n1:2345:respawn:/sbin/agetty tty1 38400 linux\nco:2345:respawn:/sbin/agetty ttyS0 115200 vt100-nav\n');
  });

  it('replaces mingetty, which cannot drive a serial line, by agetty', () => {
    const out = fixInittabText('1:2345:respawn:/sbin/mingetty tty1\nco:2345:respawn:/sbin/mingetty hvc0\n', []);
    expect(out).toContain('co:2345:respawn:/sbin/agetty -L ttyS0 115200 vt100');
    expect(out.match(/tty1/g)).toHaveLength(1);
  });

  it('gives ttyS0 one getty when the inittab has gettys on both hvc0 and xvc0, and keeps tty1', () => {
    const w: string[] = [];
    const text = 'id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\nh0:2345:respawn:/sbin/getty 38400 hvc0\nx0:2345:respawn:/sbin/getty 38400 xvc0\n';
    expect(fixInittabText(text, w)).toBe(
      'id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\nh0:2345:respawn:/sbin/getty 115200 ttyS0\n' +
        '# imgtool: ttyS0 has a getty already (this one ran on xvc0): x0:2345:respawn:/sbin/getty 38400 xvc0\n',
    );
    expect(w.join()).toMatch(/the getty on xvc0 \(id x0\) is commented out/);
  });

  it('comments out a Xen console getty when the inittab already runs one on ttyS0', () => {
    const text = 'T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100\nco:2345:respawn:/sbin/getty 38400 hvc0\n';
    const out = fixInittabText(text, []);
    expect(out).toBe('T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100\n# imgtool: ttyS0 has a getty already (this one ran on hvc0): co:2345:respawn:/sbin/getty 38400 hvc0\n');
  });

  it('adds the arguments the fix-ups need to kernel lines, kopt and GRUB_CMDLINE_LINUX (added when missing), once', () => {
    const add = ['net.ifnames=0', 'biosdevname=0'];
    expect(fixBootConfigText('/etc/default/grub', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n', 'UUID=u', add)).toBe(
      'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="net.ifnames=0 biosdevname=0"\n',
    );
    expect(fixBootConfigText('/etc/default/grub', 'GRUB_CMDLINE_LINUX="net.ifnames=0 quiet"\n', 'UUID=u', add)).toBe('GRUB_CMDLINE_LINUX="net.ifnames=0 quiet biosdevname=0"\n');
    expect(fixBootConfigText('/etc/default/grub', 'GRUB_TIMEOUT=5\n', 'UUID=u', add)).toBe('GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="net.ifnames=0 biosdevname=0"\n');
    expect(fixBootConfigText('/boot/grub/menu.lst', '# kopt=root=/dev/xvda1 ro\n\tkernel /vmlinuz root=/dev/xvda1 ro\n', 'UUID=u', add)).toBe(
      '# kopt=root=UUID=u ro net.ifnames=0 biosdevname=0\n\tkernel /vmlinuz root=UUID=u ro net.ifnames=0 biosdevname=0\n',
    );
    expect(fixBootConfigText('/boot/grub/grub.cfg', '\tlinux /vmlinuz root=UUID=u ro net.ifnames=0 biosdevname=0\n', 'UUID=u', add)).toBe('\tlinux /vmlinuz root=UUID=u ro net.ifnames=0 biosdevname=0\n');
  });

  it('points resume= on a Xen disk at the new swap, or drops it when there is none', () => {
    expect(fixKernelArgs('\tlinux /vmlinuz root=/dev/xvda1 resume=/dev/xvda2 quiet', 'UUID=r', false, [], 'UUID=s')).toBe('\tlinux /vmlinuz root=UUID=r resume=UUID=s quiet');
    expect(fixKernelArgs('GRUB_CMDLINE_LINUX="resume=/dev/xvda2 rhgb"', 'UUID=r', true)).toBe('GRUB_CMDLINE_LINUX=" rhgb"');
    expect(fixBootConfigText('/etc/default/grub', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet resume=/dev/sda2"\n', 'UUID=r', [], 'UUID=s')).toBe('GRUB_CMDLINE_LINUX_DEFAULT="quiet resume=UUID=s"\n');
  });

  it('leaves an inittab without Xen consoles byte-identical', () => {
    const text = 'id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\n';
    expect(fixInittabText(text, [])).toBe(text);
  });

  it('rewrites root= and drops Xen console arguments on kernel lines, adding serial consoles', () => {
    expect(fixKernelArgs('\tkernel /vmlinuz-2.6.32 ro root=/dev/xvda1 console=hvc0 xencons=tty quiet', 'UUID=x', false)).toBe(
      '\tkernel /vmlinuz-2.6.32 ro root=UUID=x quiet console=tty0 console=ttyS0,115200',
    );
    expect(fixKernelArgs('GRUB_CMDLINE_LINUX="console=hvc0 root=/dev/xvda1"', '/dev/vda1', true)).toBe(
      'GRUB_CMDLINE_LINUX=" root=/dev/vda1 console=tty0 console=ttyS0,115200"',
    );
    // Another console stays, and nothing is added.
    expect(fixKernelArgs('linux /vmlinuz root=/dev/sda1 console=tty0 console=xvc0', 'UUID=y', false)).toBe('linux /vmlinuz root=UUID=y console=tty0');
  });

  it('edits only kernel lines of menu.lst and only GRUB_CMDLINE_LINUX* in /etc/default/grub', () => {
    const menu = 'title X\n\troot (hd0,0)\n\tkernel /boot/vmlinuz root=/dev/xvda1 console=xvc0\n# kernel /old root=/dev/xvda1\n';
    expect(fixBootConfigText('/boot/grub/menu.lst', menu, '/dev/vda1')).toBe(
      'title X\n\troot (hd0,0)\n\tkernel /boot/vmlinuz root=/dev/vda1 console=tty0 console=ttyS0,115200\n# kernel /old root=/dev/xvda1\n',
    );
    const legacy = '# kopt=root=/dev/xvda1 ro console=hvc0\n# defoptions=quiet\n';
    expect(fixBootConfigText('/boot/grub/menu.lst', legacy, 'UUID=u')).toBe('# kopt=root=UUID=u ro console=tty0 console=ttyS0,115200\n# defoptions=quiet\n');
    const def = 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="quiet console=hvc0"\nGRUB_TERMINAL=console\n';
    expect(fixBootConfigText('/etc/default/grub', def, '/dev/vda1')).toBe(
      'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="quiet console=tty0 console=ttyS0,115200"\nGRUB_TERMINAL=console\n',
    );
  });
});

describe('unified diffs', () => {
  it('produces diffs that GNU patch applies to reproduce the new file', () => {
    const before = Array.from({ length: 40 }, (_, i) => `line ${i}`).join('\n') + '\n';
    const lines = before.split('\n');
    lines[3] = 'changed 3';
    lines.splice(20, 2);
    lines.splice(35, 0, 'inserted');
    const after = lines.join('\n');
    const d = unifiedDiff('/etc/x.conf', before, after);
    const file = t.path('x.conf');
    writeFileSync(file, before);
    const r = run('patch', [file], { input: d });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(readFileSync(file, 'utf8')).toBe(after);
    expect(unifiedDiff('/a', 'same\n', 'same\n')).toBe('');
  });

  it('diffs new and removed files against /dev/null', () => {
    expect(unifiedDiff('/etc/new', null, 'a\nb\n')).toBe('--- /dev/null\n+++ b/etc/new\n@@ -0,0 +1,2 @@\n+a\n+b\n');
    expect(unifiedDiff('/etc/old', 'a\n', null)).toBe('--- a/etc/old\n+++ /dev/null\n@@ -1 +0,0 @@\n-a\n');
  });
});

describe('initrd inspection', () => {
  const mods = cpio([...VIRTIO, 'init']);

  it('finds modules in gzip, zstd, xz and uncompressed cpio archives', async () => {
    const zstd = exec(peer('zstd'), ['-q', '-c'], { input: mods });
    const xz = exec(peer('xz'), ['-c', '--check=crc32'], { input: mods });
    for (const [name, data] of [['cpio', mods], ['gzip', gzipSync(mods)], ['zstd', zstd], ['xz', xz]] as const) {
      const c = await listInitrd(data);
      expect(c.problem, name).toBeUndefined();
      expect(c.segments[0]).toBe(name);
      expect(modulesIn(c.files)).toEqual(new Set(['virtio_blk', 'virtio_pci']));
    }
  });

  it('reads an early uncompressed microcode archive followed by a compressed main archive', async () => {
    const early = cpio(['kernel/x86/microcode/GenuineIntel.bin']);
    const padded = Buffer.concat([early, Buffer.alloc(512 - (early.length % 512)), gzipSync(mods)]);
    const c = await listInitrd(padded);
    expect(c.segments).toEqual(['cpio', 'gzip', 'cpio']);
    expect(c.files).toContain('kernel/x86/microcode/GenuineIntel.bin');
    expect(modulesIn(c.files).has('virtio_blk')).toBe(true);
  });

  it('reports a truncated or hostile archive as a problem instead of throwing', async () => {
    const truncated = await listInitrd(mods.subarray(0, mods.length - 200));
    expect(truncated.problem).toMatch(/cpio/);
    const bad = Buffer.from(mods);
    bad.write('ZZZZZZZZ', 94, 'latin1'); // c_namesize of the first entry
    expect((await listInitrd(bad)).problem).toMatch(/c_namesize \(at offset 94\) is 'ZZZZZZZZ'/);
    const huge = Buffer.from(mods);
    huge.write('7fffffff', 54, 'latin1'); // c_filesize
    expect((await listInitrd(huge)).problem).toMatch(/c_filesize .* runs past the archive/);
    expect((await listInitrd(Buffer.from('not an initrd at all'))).problem).toMatch(/unrecognised data at offset 0/);
  });
});

const XEN_GUEST = {
  'etc/fstab': '/dev/xvda1 / ext4 defaults,errors=remount-ro 0 1\n/dev/xvda2 none swap sw 0 0\nproc /proc proc defaults 0 0\n',
  'etc/inittab': 'id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\nco:2345:respawn:/sbin/getty 38400 hvc0\n',
  'etc/securetty': 'console\nhvc0\n',
  'etc/init/hvc0.conf': 'start on stopped rc RUNLEVEL=[2345]\nrespawn\nexec /sbin/getty -8 38400 hvc0\n',
  'etc/systemd/system/getty.target.wants/serial-getty@hvc0.service': { link: '/lib/systemd/system/serial-getty@.service' },
  'etc/initramfs-tools/modules': '# modules\n',
  'boot/grub/grub.conf': 'title Xen guest\n\tkernel /boot/vmlinuz-5.10.0-1-amd64 root=/dev/xvda1 ro console=hvc0 xencons=tty\n\tinitrd /boot/initrd.img-5.10.0-1-amd64\n',
  'boot/grub/menu.lst': { link: 'grub.conf' },
  'boot/vmlinuz-5.10.0-1-amd64': fakeBzImage(),
  'boot/config-5.10.0-1-amd64': 'CONFIG_VIRTIO_BLK=m\nCONFIG_VIRTIO_PCI=m\n',
} as const;

describe('fixGuest on a filesystem', () => {
  it('fixes fstab, consoles (inittab, upstart, systemd, securetty) and boot configs, with a clean e2fsck', async () => {
    const img = makeFs({ ...XEN_GUEST, 'boot/initrd.img-5.10.0-1-amd64': gzipSync(cpio([...VIRTIO, 'init'])) });
    const r = await fix(img, { rootUuid: ROOT_UUID, swapUuid: SWAP_UUID });
    expect(r.isGuest).toBe(true);
    expect(r.warnings).toEqual([]);
    expect(r.kernels).toMatchObject([
      { version: '5.10.0-1-amd64', initrd: '/boot/initrd.img-5.10.0-1-amd64', xenOnly: false, hasVirtio: true, args: 'root=/dev/xvda1 ro console=hvc0 xencons=tty' },
    ]);
    fsckClean(img);

    expect(debugfsCat(img, '/etc/fstab')).toBe(`UUID=${ROOT_UUID} / ext4 defaults,errors=remount-ro 0 1\nUUID=${SWAP_UUID} none swap sw 0 0\nproc /proc proc defaults 0 0\n`);
    expect(debugfsCat(img, '/etc/inittab')).toContain('co:2345:respawn:/sbin/getty 115200 ttyS0');
    expect(debugfsCat(img, '/etc/securetty')).toBe('console\nhvc0\nttyS0\n');
    expect(debugfsCat(img, '/etc/init/ttyS0.conf')).toBe('start on stopped rc RUNLEVEL=[2345]\nrespawn\nexec /sbin/getty -8 115200 ttyS0\n');
    expect(debugfsCat(img, '/etc/init/tty1.conf')).toBe('start on stopped rc RUNLEVEL=[2345]\nrespawn\nexec /sbin/getty -8 38400 tty1\n');
    expect(debugfsLs(img, '/etc/init')).not.toContain('hvc0.conf');
    // The menu.lst symlink still points at grub.conf, which was edited.
    expect(must('debugfs', ['-R', 'stat /boot/grub/menu.lst', img])).toContain('Fast link dest: "grub.conf"');
    expect(debugfsCat(img, '/boot/grub/grub.conf')).toContain(`kernel /boot/vmlinuz-5.10.0-1-amd64 root=UUID=${ROOT_UUID} ro console=tty0 console=ttyS0,115200\n`);
    const wants = debugfsLs(img, '/etc/systemd/system/getty.target.wants');
    expect(wants).toContain('serial-getty@ttyS0.service');
    expect(wants).toContain('getty@tty1.service');
    expect(wants).not.toContain('hvc0');
    expect(must('debugfs', ['-R', 'stat /etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service', img])).toContain(
      'Fast link dest: "/lib/systemd/system/serial-getty@.service"',
    );
    // New files are regular files with mode 0644.
    expect(must('debugfs', ['-R', 'stat /etc/init/tty1.conf', img])).toMatch(/Type: regular\s+Mode:\s+0644/);

    // Running it again changes nothing.
    const again = await fix(img, { rootUuid: ROOT_UUID, swapUuid: SWAP_UUID });
    expect(again.changes).toEqual([]);
  });

  it('writes nothing in a dry run, and its diffs describe exactly what a real run does', async () => {
    const img = makeFs({ ...XEN_GUEST, 'boot/initrd.img-5.10.0-1-amd64': gzipSync(cpio([...VIRTIO])) });
    const hash = sha256File(img);
    const dry = await fix(img, { rootUuid: ROOT_UUID, dryRun: true });
    expect(sha256File(img)).toBe(hash);
    expect(dry.changes.map((c) => c.path)).toEqual([
      '/etc/fstab',
      '/etc/inittab',
      '/etc/init/hvc0.conf',
      '/etc/init/ttyS0.conf',
      '/etc/init/tty1.conf',
      '/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service',
      '/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service',
      '/etc/systemd/system/getty.target.wants/getty@tty1.service',
      '/etc/securetty',
      '/boot/grub/grub.conf',
    ]);
    const fstab = dry.changes.find((c) => c.path === '/etc/fstab')!;
    expect(fstab.diff).toContain(`-/dev/xvda1 / ext4`);
    expect(fstab.diff).toContain(`+UUID=${ROOT_UUID} / ext4`);
    // Applying the fstab diff with GNU patch gives what the real run writes.
    const f = t.path('fstab-from-patch');
    writeFileSync(f, fstab.before!);
    expect(run('patch', [f], { input: fstab.diff }).status).toBe(0);
    const real = await fix(img, { rootUuid: ROOT_UUID });
    expect(real.changes.map((c) => c.diff)).toEqual(dry.changes.map((c) => c.diff));
    expect(readFileSync(f, 'utf8')).toBe(debugfsCat(img, '/etc/fstab'));
  });

  it('says a filesystem without /etc/fstab or kernel is not a guest, and changes nothing', async () => {
    const img = makeFs({ 'data/readme.txt': 'just data\n' });
    const hash = sha256File(img);
    const r = await fix(img, { rootUuid: ROOT_UUID });
    expect(r.isGuest).toBe(false);
    expect(r.changes).toEqual([]);
    expect(r.warnings.join()).toMatch(/not a bootable guest: there is no \/etc\/fstab and no kernel/);
    expect(sha256File(img)).toBe(hash);
  });

  it('warns about an initrd without virtio drivers and names the file to change', async () => {
    const img = makeFs({ ...XEN_GUEST, 'boot/initrd.img-5.10.0-1-amd64': gzipSync(cpio(['init', 'lib/modules/5.10.0-1-amd64/kernel/drivers/block/xen-blkfront.ko'])) });
    const r = await fix(img, { rootUuid: ROOT_UUID, dryRun: true });
    expect(r.kernels[0]!.hasVirtio).toBe(false);
    expect(r.warnings.join('\n')).toMatch(
      /\/boot\/vmlinuz-5\.10\.0-1-amd64 cannot reach a virtio disk at boot: \/boot\/initrd\.img-5\.10\.0-1-amd64 \(gzip\+cpio\) has no virtio_blk, virtio_pci; imgtool could not add the virtio modules: \/boot\/initrd\.img-5\.10\.0-1-amd64 was built by neither initramfs-tools nor dracut: .*; add virtio_pci and virtio_blk to \/etc\/initramfs-tools\/modules, then run 'update-initramfs -u -k 5\.10\.0-1-amd64'/,
    );
    // The advice about other buses is true for this initrd: it has only the Xen disk driver.
    expect(r.warnings.join('\n')).toMatch(/the initrd and kernel have xen_blkfront: no disk bus QEMU offers works until the initrd is rebuilt/);
    expect(r.warnings.join('\n')).not.toMatch(/SATA or IDE/);
  });

  it('says when the kernel has no virtio driver at all, and that a newer kernel is needed', async () => {
    const img = makeFs({ ...XEN_GUEST, 'boot/config-5.10.0-1-amd64': 'CONFIG_EXT3_FS=y\n# CONFIG_VIRTIO is not set\n' });
    const r = await fix(img, { rootUuid: ROOT_UUID, swapUuid: SWAP_UUID, dryRun: true });
    expect(r.kernels[0]).toMatchObject({ hasVirtio: false, noVirtioDriver: true });
    expect(r.warnings.join()).toMatch(/has no virtio_blk, virtio_pci \(not in \/boot\/config-5\.10\.0-1-amd64\); install a newer kernel .*; the initrd and kernel have no storage driver: no disk bus QEMU offers works/);
  });

  it('trusts a kernel with virtio built in, whatever its initrd holds', async () => {
    const img = makeFs({ ...XEN_GUEST, 'boot/config-5.10.0-1-amd64': 'CONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_PCI=y\n' });
    const r = await fix(img, { rootUuid: ROOT_UUID, swapUuid: SWAP_UUID, dryRun: true });
    expect(r.kernels[0]!.hasVirtio).toBe(true);
    expect(r.warnings).toEqual([]);
  });

  it('warns when only Xen-only kernels are installed, by flavour name or by image type', async () => {
    const elf = new Uint8Array(4096);
    elf.set([0x7f, 0x45, 0x4c, 0x46]);
    const img = makeFs({
      'etc/fstab': '/dev/xvda1 / ext3 defaults 0 1\n',
      'etc/sysconfig/kernel': 'INITRD_MODULES="xenblk"\n',
      'boot/vmlinuz-2.6.18-398.el5xen': fakeBzImage(),
      'boot/vmlinuz-2.6.32-5-xen-amd64': fakeBzImage(),
      'boot/vmlinux-3.0.0': elf,
    });
    const r = await fix(img, { rootUuid: ROOT_UUID, dryRun: true });
    expect(r.kernels.map((k) => [k.version, k.xenOnly])).toEqual([
      ['3.0.0', true],
      ['2.6.32-5-xen-amd64', true],
      ['2.6.18-398.el5xen', true],
    ]);
    expect(r.warnings.join('\n')).toMatch(/only Xen-only kernels in \/boot \(\/boot\/vmlinux-3\.0\.0, \/boot\/vmlinuz-2\.6\.32-5-xen-amd64, \/boot\/vmlinuz-2\.6\.18-398\.el5xen\): install a generic kernel/);
  });

  it('points at the dracut or sysconfig file on distributions that use them', async () => {
    const base = { ...XEN_GUEST } as Record<string, unknown>;
    delete base['etc/initramfs-tools/modules'];
    const noVirtio = gzipSync(cpio(['init']));
    const dracut = makeFs({ ...(base as typeof XEN_GUEST), 'etc/dracut.conf.d/keep': '', 'boot/initrd.img-5.10.0-1-amd64': noVirtio });
    expect((await fix(dracut, { dryRun: true })).warnings.join()).toMatch(/add_drivers\+=" virtio_pci virtio_blk "' to a file in \/etc\/dracut\.conf\.d\//);
    const suse = makeFs({ ...(base as typeof XEN_GUEST), 'etc/sysconfig/kernel': 'INITRD_MODULES=""\n', 'boot/initrd.img-5.10.0-1-amd64': noVirtio });
    expect((await fix(suse, { dryRun: true })).warnings.join()).toMatch(/INITRD_MODULES in \/etc\/sysconfig\/kernel/);
  });

  it('leaves odd files alone with a warning: an inittab that is a directory, a huge boot config, a kernel config that is a directory', async () => {
    const base: Record<string, unknown> = { ...XEN_GUEST };
    delete base['etc/inittab'];
    delete base['boot/config-5.10.0-1-amd64'];
    const img = makeFs(
      {
        ...(base as typeof XEN_GUEST),
        'etc/inittab/oops': 'x',
        'boot/grub/grub.conf': 'x'.repeat(5 << 20),
        'boot/config-5.10.0-1-amd64/oops': 'x',
        'boot/initrd.img-5.10.0-1-amd64': gzipSync(cpio([...VIRTIO])),
      },
      '32M',
    );
    const r = await fix(img, { rootUuid: ROOT_UUID, swapUuid: SWAP_UUID });
    expect(r.isGuest).toBe(true);
    expect(r.warnings.join('\n')).toMatch(/\/etc\/inittab left unchanged: \/etc\/inittab in the guest is not a regular file/);
    expect(r.warnings.join('\n')).toMatch(/\/boot\/grub\/grub\.conf left unchanged: .* is 5242880 bytes, more than the 4194304 imgtool reads/);
    expect(r.kernels[0]!.notes!.join()).toMatch(/\/boot\/config-5\.10\.0-1-amd64 ignored: .*not a regular file/);
    expect(r.kernels[0]!.hasVirtio).toBe(true);
    expect(debugfsCat(img, '/etc/fstab')).toContain(`UUID=${ROOT_UUID}`);
    fsckClean(img);
  });

  it('adds no systemd serial getty on ttyS0 when the guest enables getty@ttyS0 already', async () => {
    const img = makeFs({
      ...XEN_GUEST,
      'etc/systemd/system/getty.target.wants/serial-getty@xvc0.service': { link: '/lib/systemd/system/serial-getty@.service' },
      'etc/systemd/system/getty.target.wants/getty@ttyS0.service': { link: '/lib/systemd/system/getty@.service' },
    });
    await fix(img, { rootUuid: ROOT_UUID, swapUuid: SWAP_UUID });
    const wants = debugfsLs(img, '/etc/systemd/system/getty.target.wants');
    expect(wants).toContain('getty@ttyS0.service');
    expect(wants).not.toMatch(/serial-getty@(ttyS0|hvc0|xvc0)/);
    expect(wants).toContain('getty@tty1.service');
  });

  it('gives ttyS0 one upstart getty job when the guest has jobs for both hvc0 and xvc0', async () => {
    const job = (tty: string) => `start on stopped rc RUNLEVEL=[2345]\nrespawn\nexec /sbin/getty -8 38400 ${tty}\n`;
    const img = makeFs({ ...XEN_GUEST, 'etc/init/xvc0.conf': job('xvc0'), 'etc/event.d/hvc0': job('hvc0'), 'etc/event.d/xvc0': job('xvc0'), 'etc/event.d/serial': job('ttyS0') });
    const r = await fix(img, { rootUuid: ROOT_UUID, swapUuid: SWAP_UUID });
    expect(debugfsLs(img, '/etc/init')).not.toMatch(/hvc0|xvc0/);
    expect(debugfsCat(img, '/etc/init/ttyS0.conf')).toBe(job('ttyS0').replace('38400', '115200'));
    // event.d already had a ttyS0 getty (in 'serial'): both Xen jobs go.
    const eventd = debugfsLs(img, '/etc/event.d');
    expect(eventd).not.toMatch(/hvc0|xvc0|ttyS0/);
    expect(eventd).toContain('serial');
    expect(r.warnings.filter((w) => /ttyS0 already has a getty/.test(w))).toHaveLength(3);
    fsckClean(img);
  });

  it('adds the virtio modules to an initramfs-tools initrd without them, keeps the original, and is idempotent', async () => {
    const V = '5.10.0-1-amd64';
    const moddir = `lib/modules/${V}`;
    const initrd = gzipSync(
      cpio(['init', 'conf/initramfs.conf', 'conf/modules', 'conf/conf.d/resume', `${moddir}/kernel/drivers/block/xen-blkfront.ko`], {
        'conf/modules': 'xen-blkfront\n',
        'conf/conf.d/resume': 'RESUME=/dev/xvda2\n',
      }),
    );
    const img = makeFs({
      ...XEN_GUEST,
      'etc/network/interfaces': 'auto eth0\niface eth0 inet dhcp\n',
      'etc/initramfs-tools/conf.d/resume': 'RESUME=/dev/xvda2\n',
      'etc/default/grub': 'GRUB_CMDLINE_LINUX=""\n',
      [`boot/initrd.img-${V}`]: initrd,
      [`${moddir}/modules.dep`]: 'kernel/drivers/virtio/virtio.ko:\nkernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko\nkernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n',
      [`${moddir}/kernel/drivers/virtio/virtio.ko`]: 'virtio',
      [`${moddir}/kernel/drivers/virtio/virtio_pci.ko`]: 'virtio_pci',
      [`${moddir}/kernel/drivers/block/virtio_blk.ko`]: 'virtio_blk',
    });
    const r = await fix(img, { rootUuid: ROOT_UUID, swapUuid: SWAP_UUID });
    expect(r.warnings).toEqual([]);
    expect(r.kernels[0]).toMatchObject({ hasVirtio: true });
    expect(r.kernelArgs).toEqual(['net.ifnames=0', 'biosdevname=0']);
    const change = r.changes.find((c) => c.path === `/boot/initrd.img-${V}`)!;
    expect(change.diff).toContain(`Binary files a/boot/initrd.img-${V} and b/boot/initrd.img-${V} differ\n`);
    expect(change.diff).toContain('| modules added: virtio.ko, virtio_pci.ko, virtio_blk.ko\n');
    expect(change.diff).toContain('| conf/conf.d/resume in the initrd:\n|   @@ -1 +1 @@\n|   -RESUME=/dev/xvda2\n|   +RESUME=UUID=');
    // GNU patch skips the initrd (binary) and applies the rest.
    const dir = t.path(`patched-${++counter}`);
    mkdirSync(join(dir, 'etc'), { recursive: true });
    writeFileSync(join(dir, 'etc/fstab'), r.changes.find((c) => c.path === '/etc/fstab')!.before!);
    const p = run('patch', ['-p1', '-d', dir], { input: change.diff + r.changes.find((c) => c.path === '/etc/fstab')!.diff });
    expect(p.status, p.stdout + p.stderr).toBe(0);
    fsckClean(img);
    // The host's view: the backup is the original, the initrd is the original plus an archive cpio reads.
    const dump = (p: string) => {
      const out = t.path(`dump-${++counter}`);
      must('debugfs', ['-R', `dump ${p} ${out}`, img]);
      return readFileSync(out);
    };
    expect(dump(`/boot/initrd.img-${V}.imgtool-orig`).equals(initrd)).toBe(true);
    const now = dump(`/boot/initrd.img-${V}`);
    expect(now.subarray(0, initrd.length).equals(initrd)).toBe(true);
    const tail = t.path('tail.cpio');
    writeFileSync(tail, now.subarray((initrd.length + 3) & ~3));
    const names = must('sh', ['-c', `cpio -t --quiet <'${tail}'`]).split('\n');
    expect(names).toEqual(expect.arrayContaining([`${moddir}/kernel/drivers/block/virtio_blk.ko`, `${moddir}/modules.dep`, 'conf/modules', 'conf/conf.d/resume']));
    expect(must('sh', ['-c', `cpio -i --quiet --to-stdout conf/conf.d/resume <'${tail}'`])).toBe(`RESUME=UUID=${SWAP_UUID}\n`);
    expect(debugfsCat(img, '/etc/initramfs-tools/conf.d/resume')).toBe(`RESUME=UUID=${SWAP_UUID}\n`);
    // The guest's own update-initramfs keeps them.
    expect(debugfsCat(img, '/etc/initramfs-tools/modules')).toBe('# modules\nvirtio_pci\nvirtio_blk\nvirtio_scsi\nvirtio_net\n');
    expect(debugfsCat(img, '/etc/default/grub')).toBe('GRUB_CMDLINE_LINUX="net.ifnames=0 biosdevname=0"\n');
    expect(debugfsCat(img, '/boot/grub/grub.conf')).toContain(`root=UUID=${ROOT_UUID} ro console=tty0 console=ttyS0,115200 net.ifnames=0 biosdevname=0\n`);
    // A second run sees the modules (in the appended archive) and changes nothing.
    const again = await fix(img, { rootUuid: ROOT_UUID, swapUuid: SWAP_UUID });
    expect(again.changes).toEqual([]);
    expect(again.kernels[0]!.hasVirtio).toBe(true);
  });

  it('leaves the initrd alone, saying why, when the new initrd and the backup do not fit', async () => {
    const V = '5.10.0-1-amd64';
    const moddir = `lib/modules/${V}`;
    const big = cpio(['init', 'conf/initramfs.conf', 'blob'], { blob: randomBytes(3 << 20).toString('latin1') });
    const img = makeFs(
      {
        ...XEN_GUEST,
        filler: randomBytes(9 << 20),
        [`boot/initrd.img-${V}`]: big,
        [`${moddir}/modules.dep`]: 'kernel/virtio_pci.ko:\nkernel/virtio_blk.ko:\n',
        [`${moddir}/kernel/virtio_pci.ko`]: 'm',
        [`${moddir}/kernel/virtio_blk.ko`]: 'm',
      },
      '16M',
    );
    const r = await fix(img, { rootUuid: ROOT_UUID, swapUuid: SWAP_UUID });
    expect(r.changes.map((c) => c.path)).not.toContain(`/boot/initrd.img-${V}`);
    expect(r.kernels[0]!.hasVirtio).toBe(false);
    expect(r.warnings.join('\n')).toMatch(/imgtool could not add the virtio modules: the guest filesystem has \d+ MiB free; adding to \/boot\/initrd\.img-5\.10\.0-1-amd64 and keeping its original needs \d+ MiB/);
    fsckClean(img);
  });

  it('refuses mounts whose UUID or mount point is not plain', async () => {
    const img = makeFs(XEN_GUEST);
    await expect(fix(img, { dryRun: true, mounts: [{ mountpoint: '/var', uuid: 'x y', device: '/dev/vda5' }] })).rejects.toThrow(/not a filesystem UUID/);
    await expect(fix(img, { dryRun: true, mounts: [{ mountpoint: '/', uuid: 'abcd-1234', device: '/dev/vda5' }] })).rejects.toThrow(/not a mount point other than \//);
  });

  it('refuses a device that holds no ext filesystem, naming the magic field', async () => {
    const dev = new MemoryDevice(4 << 20);
    const e = await fixGuest(dev, { rootDevice: '/dev/vda1' }).catch((x) => x);
    expect(e).toBeInstanceOf(ImageError);
    expect((e as ImageError).kind).toBe('invalid-format');
    expect((e as ImageError).context.field).toBe('s_magic');
  });

  it('refuses to write into a read-only device unless it is a dry run', async () => {
    const img = makeFs(XEN_GUEST);
    const dev = await FileDevice.open(img);
    try {
      await expect(fixGuest(dev, { rootDevice: '/dev/vda1' })).rejects.toThrow(/read-only/);
      const dry = await fixGuest(dev, { rootDevice: '/dev/vda1', dryRun: true });
      expect(dry.changes.length).toBeGreaterThan(0);
    } finally {
      await dev.close();
    }
  });
});
