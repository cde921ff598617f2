/**
 * Booting for real: the Xen-style test guest (test/fixtures/build-guest.sh:
 * a bare ext4 with a Debian cloud kernel, a busybox initramfs and an init that
 * prints its fstab and console files to ttyS0, then powers off) is put on a
 * partitioned raw disk made by sfdisk + dd + mkswap, fixed up by our library
 * (or CLI), and booted in qemu-system-x86_64 with TCG (nested KVM hangs) on
 * a virtio disk: through GRUB in the MBR, and by direct kernel boot.
 *
 * The timeouts are hang guards (qemu is killed), not timing assertions.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { FileDevice } from '../src/core/file.js';
import { SliceDevice } from '../src/core/slice.js';
import { fixGuest } from '../src/guest/fixups.js';
import { installGrub, kernelCmdline, pickBootKernel } from '../src/guest/boot.js';
import { withExtFs } from '../src/fs/ext.js';
import { must, peer, run, sha256File, tempDir, runAsync } from './helpers/peers.js';
import { runCli } from './partition-helpers.js';
import { boot, section, expectFixedGuest } from './helpers/qemu.js';

const t = tempDir('imgtool-bootq-');
afterAll(() => t.cleanup());

const BUILD = fileURLToPath(new URL('./fixtures/build-guest.sh', import.meta.url));
const MIB = 1 << 20;
const SWAP = 32 * MIB;
let guestImg = '';
let fsSize = 0;

beforeAll(async () => {
  for (const tool of ['qemu-system-x86_64', 'busybox', 'mke2fs', 'sfdisk', 'mkswap', 'dpkg-deb']) peer(tool);
  const r = await runAsync('bash', [BUILD, t.dir], { timeout: 280_000 });
  if (r.status !== 0) throw new Error(`build-guest.sh failed (${r.status}): ${r.stderr}`);
  guestImg = t.path('guest.img');
  fsSize = readFileSync(guestImg).length;
}, 300_000);

let diskNo = 0;
/** partition 1 (bootable, at 1 MiB) = the guest filesystem; partition 2 = a fresh swap area. */
function makeDisk(): { disk: string; fsUuid: string; swapUuid: string } {
  const disk = t.path(`disk${++diskNo}.img`);
  writeFileSync(disk, '');
  must('truncate', ['-s', String(MIB + fsSize + SWAP), disk]);
  must('sfdisk', ['-q', disk], { input: `label: dos\nstart=2048, size=${fsSize / 512}, type=83, bootable\nstart=${2048 + fsSize / 512}, type=82\n` });
  must('dd', [`if=${guestImg}`, `of=${disk}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
  const swap = t.path(`swap${diskNo}.img`);
  writeFileSync(swap, '');
  must('truncate', ['-s', String(SWAP), swap]);
  must('mkswap', ['-q', swap]);
  must('dd', [`if=${swap}`, `of=${disk}`, 'bs=1M', `seek=${1 + fsSize / MIB}`, 'conv=notrunc,sparse', 'status=none']);
  const fsUuid = must('blkid', ['-p', '-o', 'value', '-s', 'UUID', '-O', String(MIB), disk]).trim();
  const swapUuid = must('blkid', ['-o', 'value', '-s', 'UUID', swap]).trim();
  return { disk, fsUuid, swapUuid };
}

describe('booting a wrapped Xen guest under KVM (qemu, TCG)', () => {
  it('boots through GRUB installed by installGrub after fixGuest, with a clean e2fsck', async () => {
    const { disk, fsUuid, swapUuid } = makeDisk();
    const dev = await FileDevice.open(disk, { writable: true });
    try {
      const fsDev = new SliceDevice(dev, MIB, fsSize);
      const report = await fixGuest(fsDev, { rootDevice: '/dev/vda1', rootUuid: fsUuid, swapUuid });
      expect(report.isGuest).toBe(true);
      expect(report.warnings).toEqual([]);
      const kernel = pickBootKernel(report.kernels)!;
      expect(kernel).toMatchObject({ xenOnly: false, hasVirtio: true });
      expect(kernel.initrd).toBeDefined();
      expect(kernel.args).toBe('root=/dev/xvda1 ro console=hvc0 xencons=tty'); // from the guest's menu.lst
      const g = await installGrub(dev, { partitionStart: MIB, partitionNumber: 1, fsDev, rootUuid: fsUuid, kernel, cmdline: kernelCmdline({ root: `UUID=${fsUuid}`, extra: kernel.args }) });
      expect(g.warnings).toEqual([]);
    } finally {
      await dev.close();
    }
    const fsck = run('e2fsck', ['-fn', `${disk}?offset=${MIB}`]);
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    const table = JSON.parse(must('sfdisk', ['--json', disk])).partitiontable;
    expect(table.partitions.map((p: { start: number; type: string }) => [p.start, p.type])).toEqual([[2048, '83'], [2048 + fsSize / 512, '82']]);

    const out = await boot(['-drive', `file=${disk},format=raw,if=virtio`]);
    expect(out).toContain('GRUB loading');
    expect(section(out, 'cmdline')).toMatch(/^BOOT_IMAGE=\(hd0,msdos1\)\/boot\/vmlinuz-/);
    expectFixedGuest(out, fsUuid, swapUuid);
  }, 240_000);

  it("boots through the guest's own grub.cfg, fixed up, when GRUB can use it", async () => {
    const { disk, fsUuid, swapUuid } = makeDisk();
    const dev = await FileDevice.open(disk, { writable: true });
    try {
      const fsDev = new SliceDevice(dev, MIB, fsSize);
      // A grub-mkconfig style config as a Xen guest booted by pygrub has it: Xen root and console.
      await withExtFs(fsDev, async (fs) => {
        const v = (await fs.readdir('/boot')).find((f) => f.startsWith('vmlinuz-'))!.slice('vmlinuz-'.length);
        await fs.writeFile(
          '/boot/grub/grub.cfg',
          [
            'if [ -s $prefix/grubenv ]; then',
            '  load_env',
            'fi',
            'set default="0"',
            'function load_video {',
            '  if [ x$feature_all_video_module = xy ]; then',
            '    insmod all_video',
            '  else',
            '    insmod efi_gop',
            '    insmod vbe',
            '  fi',
            '}',
            'set timeout=1',
            "menuentry 'Debian GNU/Linux' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-simple' {",
            '\tload_video',
            '\tinsmod gzio',
            '\tif [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi',
            '\tinsmod part_msdos',
            '\tinsmod ext2',
            `\tsearch --no-floppy --fs-uuid --set=root ${fsUuid}`,
            "\techo 'Loading Linux from the guest grub.cfg ...'",
            `\tlinux\t/boot/vmlinuz-${v} root=/dev/xvda1 ro console=hvc0 guestcfg=1`,
            `\tinitrd\t/boot/initrd.img-${v}`,
            '}',
            '',
          ].join('\n'),
        );
      });
      const report = await fixGuest(fsDev, { rootDevice: '/dev/vda1', rootUuid: fsUuid, swapUuid });
      expect(report.changes.map((c) => c.path)).toContain('/boot/grub/grub.cfg');
      const kernel = pickBootKernel(report.kernels)!;
      const g = await installGrub(dev, { partitionStart: MIB, partitionNumber: 1, fsDev, rootUuid: fsUuid, kernel, cmdline: kernelCmdline({ root: `UUID=${fsUuid}`, extra: kernel.args }) });
      expect(g).toMatchObject({ warnings: [], guestConfig: '/boot/grub/grub.cfg' });
    } finally {
      await dev.close();
    }
    const fsck = run('e2fsck', ['-fn', `${disk}?offset=${MIB}`]);
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    const out = await boot(['-drive', `file=${disk},format=raw,if=virtio`]);
    expect(out).toContain('Loading Linux from the guest grub.cfg');
    expect(out).not.toMatch(/error: (file|symbol) .* not found/);
    expect(section(out, 'cmdline')).toMatch(/^BOOT_IMAGE=\/boot\/vmlinuz-\S+ root=UUID=\S+ ro guestcfg=1 console=tty0 console=ttyS0,115200/);
    expectFixedGuest(out, fsUuid, swapUuid);
  }, 240_000);

  it('boots directly with the kernel, initrd and qemu arguments that `guest fix --boot direct` gives', async () => {
    const { disk, fsUuid, swapUuid } = makeDisk();
    const r = await runCli(['guest', 'fix', '--boot', 'direct', '--output', 'json', disk]);
    expect(r.status, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout);
    expect(rep.boot.mode).toBe('direct');
    expect(rep['root-uuid']).toBe(fsUuid);
    expect(rep['swap-uuid']).toBe(swapUuid);
    expect(existsSync(`${disk}.vmlinuz`) && existsSync(`${disk}.initrd`)).toBe(true);
    // No boot loader was written: the MBR's code area is still empty.
    expect(readFileSync(disk).subarray(0, 440).every((b) => b === 0)).toBe(true);
    const fsck = run('e2fsck', ['-fn', `${disk}?offset=${MIB}`]);
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);

    const out = await boot(rep.boot['qemu-args']);
    expect(out).not.toContain('GRUB');
    expectFixedGuest(out, fsUuid, swapUuid);
  }, 240_000);

  it('changes nothing with `guest fix --dry-run` and prints the diff', async () => {
    const { disk, fsUuid } = makeDisk();
    const before = sha256File(disk);
    const r = await runCli(['guest', 'fix', '--dry-run', disk]);
    expect(r.status, r.stderr).toBe(0);
    expect(sha256File(disk)).toBe(before);
    expect(r.stdout).toContain('--- a/etc/fstab\n+++ b/etc/fstab\n');
    expect(r.stdout).toContain(`-/dev/xvda1\t/\text4`);
    expect(r.stdout).toContain(`+UUID=${fsUuid}\t/\text4`);
    expect(r.stdout).toContain('-co:2345:respawn:/sbin/getty 38400 xvc0\n+co:2345:respawn:/sbin/getty 115200 ttyS0\n');
    expect(r.stdout).toMatch(/would change \d+ file\(s\) in partition 1/);
    expect(r.stdout).toMatch(/would install GRUB booting \/boot\/vmlinuz-\S+ \(root=UUID=/);
    expect(existsSync(`${disk}.vmlinuz`)).toBe(false);
  }, 120_000);
});
