/**
 * Boot decisions and GRUB installation without booting: the boot-mode
 * matrix, the kernel command line, the fields patched into GRUB's boot.img
 * and core.img (read back from a disk sfdisk made, whose table sfdisk still
 * reads identically afterwards), and the libvirt <os> element
 * (virt-xml-validate). test/boot-qemu.test.ts boots for real.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileDevice } from '../src/core/file.js';
import { SliceDevice } from '../src/core/slice.js';
import { ImageError } from '../src/core/errors.js';
import {
  compareVersions,
  directBootInstructions,
  embeddedGrubConfig,
  extractKernel,
  findGrub,
  findKernels,
  installGrub,
  isXenFlavour,
  kernelCmdline,
  type KernelInfo,
  resolveBootMode,
} from '../src/guest/boot.js';
import { MAX_CORE_SECTORS, readBootFields } from '../src/guest/grub.js';
import { prepareGuest } from '../src/guest/prepare.js';
import { must, run, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-gboot-');
afterAll(() => t.cleanup());

const generic: KernelInfo = { version: '6.1.0-9-amd64', kernel: '/boot/vmlinuz-6.1.0-9-amd64', initrd: '/boot/initrd.img-6.1.0-9-amd64', xenOnly: false, hasVirtio: true };
const xen: KernelInfo = { version: '2.6.18-xen', kernel: '/boot/vmlinuz-2.6.18-xen', xenOnly: true };

function fakeBzImage(): Uint8Array {
  const b = new Uint8Array(8192);
  b[0x1fe] = 0x55;
  b[0x1ff] = 0xaa;
  b.set(Buffer.from('HdrS'), 0x202);
  b.fill(0x42, 1024);
  return b;
}

let n = 0;
/** An ext4 image (mke2fs -d) of the given files. */
function makeFs(files: Record<string, string | Uint8Array>, size = '8M', features?: string): string {
  const root = t.path(`root${++n}`);
  for (const [p, c] of Object.entries(files)) {
    mkdirSync(join(root, p, '..'), { recursive: true });
    writeFileSync(join(root, p), c);
  }
  const img = t.path(`fs${n}.img`);
  must('mke2fs', ['-q', '-F', '-t', 'ext4', ...(features ? ['-O', features] : []), '-d', root, img, size]);
  return img;
}

/** A raw disk: sfdisk's table (partition 1 at `startSector`), the filesystem image copied in. */
function makeDisk(fsImg: string, opts: { startSector?: number; label?: 'dos' | 'gpt' } = {}): { disk: string; start: number; fsSize: number } {
  const start = opts.startSector ?? 2048;
  const fs = readFileSync(fsImg);
  const disk = t.path(`disk${++n}.img`);
  writeFileSync(disk, '');
  must('truncate', ['-s', String(start * 512 + fs.length + (1 << 20)), disk]);
  must('sfdisk', ['-q', disk], { input: `label: ${opts.label ?? 'dos'}\nstart=${start}, size=${fs.length / 512}, type=${opts.label === 'gpt' ? 'L' : '83'}${opts.label === 'gpt' ? '' : ', bootable'}\n` });
  must('dd', [`if=${fsImg}`, `of=${disk}`, 'bs=512', `seek=${start}`, 'conv=notrunc', 'status=none']);
  return { disk, start: start * 512, fsSize: fs.length };
}

describe('kernels and boot mode', () => {
  it('recognises Xen kernel flavours by version', () => {
    for (const v of ['2.6.18-xen', '2.6.32-5-xen-amd64', '2.6.18-398.el5xen', '3.0.101-63-xen', '2.6.16.60-0.21-xenU']) expect(isXenFlavour(v), v).toBe(true);
    for (const v of ['6.1.0-9-amd64', '6.1.0-56-cloud-amd64', '5.15.0-1034-aws', '4.18.0-477.el8.x86_64']) expect(isXenFlavour(v), v).toBe(false);
  });

  it('orders kernel versions numerically', () => {
    const vs = ['6.1.0-9-amd64', '6.1.0-10-amd64', '5.10.0-23-amd64', '6.1.0-10-cloud-amd64'];
    expect([...vs].sort((a, b) => compareVersions(b, a))).toEqual(['6.1.0-10-cloud-amd64', '6.1.0-10-amd64', '6.1.0-9-amd64', '5.10.0-23-amd64']);
  });

  it('builds a command line with the new root, without Xen consoles, ttyS0 last', () => {
    expect(kernelCmdline({ root: 'UUID=abcd' })).toBe('root=UUID=abcd ro console=tty0 console=ttyS0,115200');
    expect(kernelCmdline({ root: '/dev/vda1', extra: 'root=/dev/xvda1 rw console=hvc0 xencons=tty quiet console=ttyS0,9600 console=xvc0,38400' })).toBe(
      'root=/dev/vda1 rw quiet console=tty0 console=ttyS0,115200',
    );
  });

  it('adds the arguments the fix-ups need once, and prepareGuest puts them on the command line of both boot modes', async () => {
    expect(kernelCmdline({ root: 'UUID=a', extra: 'quiet net.ifnames=0 net.ifnames=0 biosdevname=0' })).toBe('root=UUID=a ro quiet net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200');
    expect(kernelCmdline({ root: 'UUID=a', extra: 'resume=/dev/xvda2 quiet', resume: 'UUID=s' })).toBe('root=UUID=a ro resume=UUID=s quiet console=tty0 console=ttyS0,115200');
    expect(kernelCmdline({ root: 'UUID=a', extra: 'resume=/dev/xvda2 quiet' })).toBe('root=UUID=a ro quiet console=tty0 console=ttyS0,115200');
    const fsImg = makeFs({
      'etc/fstab': '/dev/xvda1 / ext4 defaults 0 1\n',
      'etc/network/interfaces': 'auto eth0\niface eth0 inet dhcp\n',
      'boot/vmlinuz-6.1.0-9-amd64': fakeBzImage(),
      'boot/config-6.1.0-9-amd64': 'CONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_PCI=y\n',
      'boot/grub/menu.lst': 'title D\n\tkernel /boot/vmlinuz-6.1.0-9-amd64 root=/dev/xvda1 ro quiet\n',
    });
    const { disk, start, fsSize } = makeDisk(fsImg);
    const dev = await FileDevice.open(disk);
    try {
      const fsDev = new SliceDevice(dev, start, fsSize);
      for (const boot of ['grub', 'direct'] as const) {
        const p = await prepareGuest(dev, { fsDev, rootStart: start, rootNumber: 1, rootUuid: 'abcd-1234', boot, dryRun: true });
        expect(p.mode).toBe(boot);
        expect(p.fixes.kernelArgs).toEqual(['net.ifnames=0', 'biosdevname=0']);
        expect(p.cmdline).toBe('root=UUID=abcd-1234 ro quiet net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200');
      }
    } finally {
      await dev.close();
    }
  });

  it('resolves auto to grub, direct or none from what the guest and the host have', () => {
    expect(resolveBootMode('auto', [generic], true)).toEqual({ mode: 'grub', warnings: [] });
    const d = resolveBootMode('auto', [generic], false);
    expect(d.mode).toBe('direct');
    expect(d.warnings.join()).toMatch(/grub-pc-bin/);
    const none = resolveBootMode('auto', [xen], true);
    expect(none.mode).toBe('none');
    expect(none.warnings.join()).toMatch(/no kernel that boots under KVM \(found: \/boot\/vmlinuz-2\.6\.18-xen \(Xen-only\)\)/);
    expect(resolveBootMode('none', [generic], true)).toEqual({ mode: 'none', warnings: [] });
    expect(resolveBootMode('direct', [generic], false)).toEqual({ mode: 'direct', warnings: [] });
  });

  it('refuses an explicit grub or direct that cannot be done, naming what was found', () => {
    const errOf = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return e as ImageError;
      }
      throw new Error('no error');
    };
    const a = errOf(() => resolveBootMode('grub', [xen], true));
    expect(a).toBeInstanceOf(ImageError);
    expect(a.message).toMatch(/--boot grub: the guest has no kernel that boots under KVM \(found: \/boot\/vmlinuz-2\.6\.18-xen \(Xen-only\)\)/);
    expect(errOf(() => resolveBootMode('grub', [generic], false)).message).toMatch(/grub-pc-bin/);
    expect(errOf(() => resolveBootMode('direct', [], true)).message).toMatch(/--boot direct: .*found: no kernel in \/boot/);
  });

  it('finds kernels and their initrds in /boot, and extracts them byte for byte', async () => {
    const k = fakeBzImage();
    const initrd = new Uint8Array(3000).fill(7);
    const img = makeFs({ 'boot/vmlinuz-6.1.0-9-amd64': k, 'boot/initrd.img-6.1.0-9-amd64': initrd, 'boot/vmlinuz-2.6.18-xen': k, 'boot/System.map-6.1.0-9-amd64': 'x' });
    const dev = await FileDevice.open(img);
    try {
      const ks = await findKernels(dev);
      expect(ks.map((x) => [x.kernel, x.initrd, x.xenOnly])).toEqual([
        ['/boot/vmlinuz-6.1.0-9-amd64', '/boot/initrd.img-6.1.0-9-amd64', false],
        ['/boot/vmlinuz-2.6.18-xen', undefined, true],
      ]);
      const out = await extractKernel(dev, ks[0]!);
      expect(Buffer.from(out.kernel).equals(Buffer.from(k))).toBe(true);
      expect(Buffer.from(out.initrd!).equals(Buffer.from(initrd))).toBe(true);
      await expect(extractKernel(dev, { ...ks[0]!, kernel: '/boot/System.map-6.1.0-9-amd64' })).rejects.toThrow(/not a regular file|not an x86 bzImage/);
    } finally {
      await dev.close();
    }
  });
});

describe('kernel arguments from the guest', () => {
  it("takes each kernel's arguments from its grub.cfg entry, else from /etc/default/grub", async () => {
    const k = fakeBzImage();
    const img = makeFs({
      'boot/vmlinuz-6.1.0-9-amd64': k,
      'boot/vmlinuz-5.10.0-8-amd64': k,
      'boot/grub/grub.cfg': "menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz-6.1.0-9-amd64 root=UUID=abc ro quiet elevator=noop\n}\n",
      'etc/default/grub': 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="console=hvc0 nomodeset"\n',
    });
    const dev = await FileDevice.open(img);
    try {
      const ks = await findKernels(dev);
      expect(ks.map((x) => [x.version, x.args])).toEqual([
        ['6.1.0-9-amd64', 'root=UUID=abc ro quiet elevator=noop'],
        ['5.10.0-8-amd64', 'console=hvc0 nomodeset quiet'],
      ]);
      expect(kernelCmdline({ root: 'UUID=new', extra: ks[1]!.args })).toBe('root=UUID=new ro nomodeset quiet console=tty0 console=ttyS0,115200');
    } finally {
      await dev.close();
    }
  });
});

describe('direct boot instructions', () => {
  it('gives qemu arguments and a libvirt <os> element that virt-xml-validate accepts', () => {
    const r = directBootInstructions({ disk: '/srv/vm,1/disk.qcow2', format: 'qcow2', kernelPath: '/srv/vm/disk.qcow2.vmlinuz', initrdPath: '/srv/vm/disk.qcow2.initrd', cmdline: 'root=UUID=x ro console=ttyS0,115200 a<b' });
    expect(r.qemuArgs).toEqual([
      '-drive', 'file=/srv/vm,,1/disk.qcow2,format=qcow2,if=virtio',
      '-kernel', '/srv/vm/disk.qcow2.vmlinuz',
      '-initrd', '/srv/vm/disk.qcow2.initrd',
      '-append', 'root=UUID=x ro console=ttyS0,115200 a<b',
    ]);
    const domain = `<domain type="kvm">\n<name>t</name>\n<memory unit="MiB">512</memory>\n${r.libvirtOs}\n<devices>\n<disk type="file" device="disk"><driver name="qemu" type="qcow2"/><source file="/srv/vm/disk.qcow2"/><target dev="vda" bus="virtio"/></disk>\n</devices>\n</domain>\n`;
    const f = t.path('domain.xml');
    writeFileSync(f, domain);
    const v = run('virt-xml-validate', [f, 'domain']);
    expect(v.status, v.stdout + v.stderr).toBe(0);
    expect(r.libvirtOs).toContain('<cmdline>root=UUID=x ro console=ttyS0,115200 a&lt;b</cmdline>');
  });
});

describe('installGrub', () => {
  const grub = findGrub();
  const kernel: KernelInfo = { version: '6.1.0-9-amd64', kernel: '/boot/vmlinuz-6.1.0-9-amd64', initrd: '/boot/initrd.img-6.1.0-9-amd64', xenOnly: false };
  const files = { 'boot/vmlinuz-6.1.0-9-amd64': fakeBzImage(), 'etc/fstab': '/dev/vda1 / ext4 defaults 0 1\n' };

  it("is given GRUB's i386-pc files by the host (grub-pc-bin)", () => {
    expect(grub, 'grub-pc-bin is not installed: run npm run setup').toBeDefined();
  });

  it("writes GRUB's boot code with the fields grub-bios-setup patches and keeps the partition table", async () => {
    const { disk, start, fsSize } = makeDisk(makeFs(files));
    const tableBefore = must('sfdisk', ['--json', disk]);
    const dev = await FileDevice.open(disk, { writable: true });
    let coreSize: number;
    try {
      const fsDev = new SliceDevice(dev, start, fsSize);
      const r = await installGrub(dev, { partitionStart: start, partitionNumber: 1, fsDev, rootUuid: '1234', kernel, cmdline: 'root=UUID=1234 ro' });
      coreSize = r.coreSize;
      expect(r.warnings).toEqual([]);
    } finally {
      await dev.close();
    }
    expect(must('sfdisk', ['--json', disk])).toBe(tableBefore);
    const bytes = readFileSync(disk);
    const bootImg = readFileSync(join(grub!.dir, 'boot.img'));
    const sectors = Math.ceil(coreSize / 512);
    expect(sectors).toBeLessThanOrEqual(MAX_CORE_SECTORS);
    const f = readBootFields(bytes.subarray(0, 512), bytes.subarray(512, 1024));
    expect(f).toEqual({ kernelSector: 1, bootDrive: 0xff, driveCheck: 0x9090, blockStart: 2, blockLen: sectors - 1, blockSegment: 0x820, nextLen: 0 });
    // Everything else in the first 440 bytes is GRUB's code (the BPB area came from the old, zeroed sector).
    for (let i = 0; i < 440; i++) {
      if ((i >= 0x03 && i < 0x5a) || (i >= 0x5c && i < 0x65) || i === 0x66 || i === 0x67) continue;
      if (bytes[i] !== bootImg[i]) throw new Error(`byte ${i} differs from boot.img`);
    }
    expect(bytes.readUInt16LE(510)).toBe(0xaa55);
    // core.img's first sector is GRUB's diskboot.img code (the blocklist aside).
    const diskboot = readFileSync(join(grub!.dir, 'diskboot.img'));
    expect(Buffer.compare(bytes.subarray(512, 512 + 0x1e8), diskboot.subarray(0, 0x1e8))).toBe(0);
    // The filesystem is untouched and sits where it was.
    const fsck = run('e2fsck', ['-fn', `${disk}?offset=${start}`]);
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
  });

  it('refuses a partition that starts too early for the core image', async () => {
    const { disk, start, fsSize } = makeDisk(makeFs(files), { startSector: 63 });
    const dev = await FileDevice.open(disk, { writable: true });
    try {
      const fsDev = new SliceDevice(dev, start, fsSize);
      const e = await installGrub(dev, { partitionStart: start, partitionNumber: 1, fsDev, rootUuid: 'aaaa-0001', kernel, cmdline: 'ro' }).catch((x) => x);
      expect(e).toBeInstanceOf(ImageError);
      expect((e as ImageError).message).toMatch(/core image needs \d+ sectors after the MBR but partition 1 starts at sector 63/);
    } finally {
      await dev.close();
    }
  });

  it('refuses a GPT disk, a partition start that does not match the table, and a filesystem GRUB cannot read', async () => {
    const gpt = makeDisk(makeFs(files), { label: 'gpt' });
    const dos = makeDisk(makeFs(files));
    const csumSeed = makeDisk(makeFs(files, '8M', 'metadata_csum_seed'));
    const attempt = async (d: ReturnType<typeof makeDisk>, start = d.start) => {
      const dev = await FileDevice.open(d.disk, { writable: true });
      try {
        return await installGrub(dev, { partitionStart: start, partitionNumber: 1, fsDev: new SliceDevice(dev, d.start, d.fsSize), rootUuid: 'aaaa-0001', kernel, cmdline: 'ro' }).catch((x) => x as ImageError);
      } finally {
        await dev.close();
      }
    };
    expect(String(await attempt(gpt))).toMatch(/GPT/);
    expect(String(await attempt(dos, dos.start + 512 * 8))).toMatch(/partition 1 starts at sector 2048 .*, not at 2056/);
    expect(String(await attempt(csumSeed))).toMatch(/GRUB cannot read a filesystem with metadata_csum_seed: use --boot direct/);
    // Names that would have to be quoted in GRUB's script are refused, as is a UUID that is not one.
    const dev = await FileDevice.open(dos.disk, { writable: true });
    try {
      const fsDev = new SliceDevice(dev, dos.start, dos.fsSize);
      const odd = { ...kernel, kernel: "/boot/vmlinuz-6.1'; reboot; '" };
      await expect(installGrub(dev, { partitionStart: dos.start, partitionNumber: 1, fsDev, rootUuid: 'aaaa-0001', kernel: odd, cmdline: 'ro' })).rejects.toThrow(/characters imgtool does not put into a GRUB config/);
      await expect(installGrub(dev, { partitionStart: dos.start, partitionNumber: 1, fsDev, rootUuid: 'x y', kernel, cmdline: 'ro' })).rejects.toThrow(/is not a filesystem UUID/);
    } finally {
      await dev.close();
    }
  });

  it("embeds a config that finds the root by UUID and boots the kernel, or hands over to the guest's grub.cfg", () => {
    const own = embeddedGrubConfig({ rootUuid: 'u-1', partitionNumber: 1, kernel, cmdline: 'root=UUID=u-1 ro console=ttyS0,115200' });
    expect(own).toContain('search --no-floppy --fs-uuid --set=root u-1\n');
    expect(own).toContain("linux ($root)/boot/vmlinuz-6.1.0-9-amd64 'root=UUID=u-1' 'ro' 'console=ttyS0,115200'\ninitrd ($root)/boot/initrd.img-6.1.0-9-amd64\nboot\n");
    const guest = embeddedGrubConfig({ rootUuid: 'u-1', partitionNumber: 1, kernel, cmdline: 'ro', guestConfig: '/boot/grub2/grub.cfg' });
    expect(guest).toContain('set prefix=($root)/boot/grub2\nconfigfile ($root)/boot/grub2/grub.cfg\n');
    // The guest's own modules (another GRUB version) are kept out of reach.
    const withMods = embeddedGrubConfig({ rootUuid: 'u-1', partitionNumber: 1, kernel, cmdline: 'ro', guestConfig: '/boot/grub/grub.cfg', guestHasModules: true });
    expect(withMods).toContain('set prefix=($root)/boot/grub/imgtool-no-modules\nconfigfile ($root)/boot/grub/grub.cfg\n');
  });

  it("hands over to a guest grub.cfg whose first entry boots a KVM kernel by UUID, and not to one that boots Xen", async () => {
    const debianCfg = "function load_video {\n  insmod all_video\n}\ninsmod gfxterm\nmenuentry 'Debian' --class debian {\n\tload_video\n\tinsmod gzio\n\tif [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi\n\tlinux /boot/vmlinuz-6.1.0-9-amd64 root=UUID=1234 ro quiet\n}\n";
    const xenCfg = "menuentry 'Xen' {\n\tmultiboot /boot/xen.gz\n\tmodule /boot/vmlinuz-6.1.0-9-amd64 root=UUID=1234\n}\nmenuentry 'Debian' {\n\tlinux /boot/vmlinuz-6.1.0-9-amd64 root=UUID=1234\n}\n";
    const run1 = async (extra: Record<string, string>) => {
      const { disk, start, fsSize } = makeDisk(makeFs({ ...files, ...extra }));
      const dev = await FileDevice.open(disk, { writable: true });
      try {
        return await installGrub(dev, { partitionStart: start, partitionNumber: 1, fsDev: new SliceDevice(dev, start, fsSize), rootUuid: '1234', kernel, cmdline: 'ro' });
      } finally {
        await dev.close();
      }
    };
    const deb = await run1({ 'boot/grub/grub.cfg': debianCfg, 'boot/grub/i386-pc/normal.mod': 'old GRUB' });
    expect(deb).toMatchObject({ guestConfig: '/boot/grub/grub.cfg', warnings: [] });
    const xenFirst = await run1({ 'boot/grub/grub.cfg': xenCfg });
    expect(xenFirst.guestConfig).toBeUndefined();
    expect(xenFirst.warnings.join()).toMatch(/not using the guest's grub\.cfg: the first menuentry of \/boot\/grub\/grub\.cfg has no linux command \(a Xen or multiboot entry\?\)/);
  });
});
