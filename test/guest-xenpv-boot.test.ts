/**
 * Issue 17, booted for real: a guest shaped like a Debian Xen PV guest
 * (test/fixtures/build-guest.sh OUT xenpv: gettys on hvc0 AND xvc0 in
 * /etc/inittab, /dev/xvda1 root and /dev/xvda2 swap in fstab,
 * RESUME=/dev/xvda2, eth0 in /etc/network/interfaces, and a zstd initramfs
 * in initramfs-tools' layout WITHOUT virtio modules, whose /init modprobes
 * what conf/modules lists) is wrapped by the CLI and booted once in
 * qemu-system-x86_64 (TCG) on a virtio disk with a virtio NIC. The image is
 * read back with host tools (debugfs, cpio, zstd, e2fsck) before the boot;
 * the booted guest shows what it sees. The timeouts are hang guards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { imgtool, must, peer, run, runAsync, sha256File, tempDir } from './helpers/peers.js';
import { bootWith, section } from './helpers/qemu.js';

const t = tempDir('imgtool-xenpv-');
afterAll(() => t.cleanup());

const BUILD = fileURLToPath(new URL('./fixtures/build-guest.sh', import.meta.url));
const MIB = 1 << 20;
let guest = '';
let version = '';

beforeAll(async () => {
  for (const tool of ['qemu-system-x86_64', 'busybox', 'zstd', 'cpio', 'debugfs', 'depmod', 'grub-mkimage']) peer(tool);
  const r = await runAsync('bash', [BUILD, t.dir, 'xenpv'], { timeout: 280_000 });
  if (r.status !== 0) throw new Error(`build-guest.sh failed (${r.status}): ${r.stderr}`);
  guest = t.path('guest.img');
  version = /KERNEL_VERSION=(\S+)/.exec(readFileSync(t.path('guest.env'), 'utf8'))![1]!;
}, 300_000);

let dumps = 0;
/** A file out of an ext filesystem (at byte `offset` of `image`), read by the host's debugfs; returns where it was written. */
function dumpFile(image: string, offset: number, p: string): string {
  const out = t.path(`dump${++dumps}`);
  must('debugfs', ['-R', `dump ${p} ${out}`, `${image}?offset=${offset}`]);
  return out;
}
const dump = (image: string, offset: number, p: string) => readFileSync(dumpFile(image, offset, p));

/** The names in a newc archive (a file; `zstd`: compressed), listed by the host's cpio. */
function cpioList(file: string, zstd = false): string[] {
  peer('zstd');
  return must('sh', ['-c', `${zstd ? `zstd -dc '${file}'` : `cat '${file}'`} | cpio -t --quiet`]).trim().split('\n');
}

/** Non-comment inittab lines running a getty on ttyS0. */
const serialGettys = (inittab: string) => inittab.split('\n').filter((l) => !/^\s*#/.test(l) && /getty/.test(l) && /\bttyS0\b/.test(l));

describe('a Debian Xen PV guest without virtio in its initrd, wrapped and booted (qemu, TCG)', () => {
  it('has one getty on ttyS0, gets virtio modules in its initrd, keeps eth0, resumes from the new swap', async () => {
    // The input: a zstd initramfs with the Xen disk driver and no virtio driver at all.
    const initrdPath = `/boot/initrd.img-${version}`;
    const inputInitrdFile = dumpFile(guest, 0, initrdPath);
    const inputInitrd = readFileSync(inputInitrdFile);
    const inputFiles = cpioList(inputInitrdFile, true);
    expect(inputFiles.some((f) => /xen-blkfront\.ko$/.test(f))).toBe(true);
    expect(inputFiles.filter((f) => /virtio/.test(f))).toEqual([]);
    const hash = sha256File(guest);

    const out = t.path('xenpv.raw');
    const w = imgtool(['wrap', guest, '--swap', '32M', '--boot', 'grub', '-o', out, '--output', 'json'], { timeout: 240_000 });
    expect(w.status, w.stderr).toBe(0);
    expect(sha256File(guest)).toBe(hash);
    const report = JSON.parse(w.stdout);
    const rootUuid: string = report.filesystem.uuid;
    const swapUuid: string = report.swap.uuid;
    expect(report.guest.boot.cmdline).toMatch(/ net\.ifnames=0 biosdevname=0 /);
    expect(report.warnings.join('\n')).not.toMatch(/cannot reach a virtio disk/);
    const fsck = run('e2fsck', ['-fn', `${out}?offset=${MIB}`]);
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);

    // Read back from the output image by host tools.
    const inittab = dump(out, MIB, '/etc/inittab').toString();
    expect(serialGettys(inittab)).toEqual(['h0:2345:respawn:/sbin/getty 115200 ttyS0']);
    expect(inittab).toContain('# imgtool: ttyS0 has a getty already (this one ran on xvc0): x0:2345:respawn:/sbin/getty 38400 xvc0');
    expect(inittab).toMatch(/^1:2345:respawn:\/sbin\/getty 38400 tty1$/m);
    const backup = dump(out, MIB, `${initrdPath}.imgtool-orig`);
    expect(backup.equals(inputInitrd)).toBe(true);
    const initrd = dump(out, MIB, initrdPath);
    expect(initrd.subarray(0, backup.length).equals(backup)).toBe(true);
    // The appended archive starts at the next multiple of 4 (zeros before it), as the kernel reads it.
    const start = (backup.length + 3) & ~3;
    expect(initrd.subarray(backup.length, start).every((b) => b === 0)).toBe(true);
    const appended = t.path('appended.cpio');
    writeFileSync(appended, initrd.subarray(start));
    const added = cpioList(appended);
    for (const m of ['virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_scsi', 'virtio', 'virtio_ring', 'virtio_pci_modern_dev']) {
      expect(added.some((f) => f.endsWith(`/${m}.ko`)), m).toBe(true);
    }
    expect(added).toContain(`lib/modules/${version}/modules.dep`);
    expect(added).toContain(`lib/modules/${version}/modules.dep.bin`);
    const inAppended = (name: string) => must('sh', ['-c', `cpio -i --quiet --to-stdout '${name}' <'${appended}'`]);
    expect(inAppended('conf/modules')).toBe('### This file is the template for conf/modules\nxen-blkfront\nvirtio_pci\nvirtio_blk\nvirtio_scsi\nvirtio_net\n');
    expect(inAppended('conf/conf.d/resume')).toBe(`RESUME=UUID=${swapUuid}\n`);
    expect(inAppended(`lib/modules/${version}/modules.dep`)).toMatch(/virtio_blk\.ko: \S*virtio\.ko \S*virtio_ring\.ko/);
    expect(dump(out, MIB, '/etc/initramfs-tools/conf.d/resume').toString()).toBe(`RESUME=UUID=${swapUuid}\n`);

    // One boot: virtio disk, virtio NIC.
    const serial = await bootWith(['-m', '512', '-nographic', '-serial', 'stdio', '-monitor', 'none', '-drive', `file=${out},format=raw,if=virtio`, '-nic', 'user,model=virtio-net-pci'], 200_000);
    expect(serial, serial.slice(-3000)).toContain('IMGTOOL-END');
    // The initrd loaded the appended modules and read the appended RESUME.
    expect(serial).toContain(`IMGTOOL-INITRD: RESUME=UUID=${swapUuid}`);
    expect(serial).toContain('IMGTOOL-INITRD: resume device: /dev/vda2');
    expect(serial).not.toContain('IMGTOOL-INITRD: FAIL');
    // Root came from the virtio disk, through the virtio_blk driver.
    expect(section(serial, 'cmdline')).toMatch(new RegExp(`root=UUID=${rootUuid} ro net\\.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200`));
    expect(section(serial, 'root')).toMatch(/^\/dev\/vda1 \/ ext4/);
    expect(section(serial, 'vda driver').trim()).toBe('virtio_blk');
    expect(section(serial, 'modules').split('\n')).toEqual(expect.arrayContaining(['virtio_blk', 'virtio_pci', 'virtio_net']));
    // The NIC keeps the name the guest's /etc/network/interfaces uses.
    expect(section(serial, 'net').split(/\s+/)).toContain('eth0');
    // What the booted guest shows: one getty on ttyS0, tty1 kept, fstab and RESUME by UUID, swap active.
    const shown = section(serial, '/etc/inittab');
    expect(serialGettys(shown)).toHaveLength(1);
    expect(shown).toMatch(/^1:2345:respawn:\/sbin\/getty 38400 tty1$/m);
    const fstab = section(serial, '/etc/fstab');
    expect(fstab).toContain(`UUID=${rootUuid}\t/\text4`);
    expect(fstab).toContain(`UUID=${swapUuid}\tnone\tswap`);
    expect(section(serial, '/etc/initramfs-tools/conf.d/resume').trim()).toBe(`RESUME=UUID=${swapUuid}`);
    expect(section(serial, '/etc/default/grub')).toContain('GRUB_CMDLINE_LINUX="net.ifnames=0 biosdevname=0"');
    expect(section(serial, 'swap')).toMatch(/^\/dev\/vda2\s+partition/m);
  }, 480_000);
});
