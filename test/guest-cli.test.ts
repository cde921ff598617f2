/**
 * `imgtool guest fix` on small partitioned disks (no booting): qcow2 images
 * stay valid for qemu-img check, errors and exit codes are the documented
 * ones, --dry-run and --output json report without writing.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { must, qemuCheck, run, sha256File, tempDir } from './helpers/peers.js';
import { runCli } from './partition-helpers.js';

const t = tempDir('imgtool-gcli-');
afterAll(() => t.cleanup());

function fakeBzImage(): Uint8Array {
  const b = new Uint8Array(4096);
  b[0x1fe] = 0x55;
  b[0x1ff] = 0xaa;
  b.set(Buffer.from('HdrS'), 0x202);
  return b;
}

const GUEST: Record<string, string | Uint8Array> = {
  'etc/fstab': '/dev/xvda1 / ext4 defaults 0 1\n/dev/xvda2 none swap sw 0 0\n',
  'etc/inittab': 'co:2345:respawn:/sbin/getty 38400 hvc0\n',
  'boot/vmlinuz-6.1.0-9-amd64': fakeBzImage(),
  'boot/initrd.img-6.1.0-9-amd64': 'not really an initrd',
  'boot/config-6.1.0-9-amd64': 'CONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_PCI=y\n',
};

let n = 0;
/** A raw disk: partition 1 = ext4 of `files` (8 MiB at 1 MiB), partition 2 = 4 MiB swap. */
function makeDisk(files: Record<string, string | Uint8Array>): { disk: string; fsUuid: string; swapUuid: string } {
  const id = ++n;
  const root = t.path(`root${id}`);
  for (const [p, c] of Object.entries(files)) {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), c);
  }
  mkdirSync(root, { recursive: true });
  const fs = t.path(`fs${id}.img`);
  must('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', root, fs, '8M']);
  const swap = t.path(`swap${id}.img`);
  writeFileSync(swap, Buffer.alloc(4 << 20));
  must('mkswap', ['-q', swap]);
  const disk = t.path(`disk${id}.img`);
  writeFileSync(disk, '');
  must('truncate', ['-s', String(13 << 20), disk]);
  must('sfdisk', ['-q', disk], { input: 'label: dos\nstart=2048, size=16384, type=83, bootable\nstart=18432, size=8192, type=82\n' });
  must('dd', [`if=${fs}`, `of=${disk}`, 'bs=1M', 'seek=1', 'conv=notrunc', 'status=none']);
  must('dd', [`if=${swap}`, `of=${disk}`, 'bs=1M', 'seek=9', 'conv=notrunc', 'status=none']);
  return {
    disk,
    fsUuid: must('blkid', ['-o', 'value', '-s', 'UUID', fs]).trim(),
    swapUuid: must('blkid', ['-o', 'value', '-s', 'UUID', swap]).trim(),
  };
}

describe('imgtool guest fix', () => {
  it('fixes a qcow2 image in place, which qemu-img check still finds clean', async () => {
    const { disk, fsUuid, swapUuid } = makeDisk(GUEST);
    const q = t.path('disk.qcow2');
    must('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', disk, q]);
    const r = await runCli(['guest', 'fix', '--boot', 'none', q]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/changed 2 file\(s\) in partition 1/);
    expect(qemuCheck(q, 'qcow2').status).toBe(0);
    const back = t.path('back.raw');
    must('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', q, back]);
    const fsck = run('e2fsck', ['-fn', `${back}?offset=${1 << 20}`]);
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    const fs = t.path('back-fs.img');
    must('dd', [`if=${back}`, `of=${fs}`, 'bs=1M', 'skip=1', 'count=8', 'status=none']);
    expect(must('debugfs', ['-R', 'cat /etc/fstab', fs])).toBe(`UUID=${fsUuid} / ext4 defaults 0 1\nUUID=${swapUuid} none swap sw 0 0\n`);
    // Partition 2 and the table are as they were.
    expect(qemuCompareRegion(disk, back, 9 << 20, 4 << 20)).toBe(true);
  });

  it('reports in JSON without writing anything on --dry-run', async () => {
    const { disk, fsUuid, swapUuid } = makeDisk(GUEST);
    const hash = sha256File(disk);
    const r = await runCli(['guest', 'fix', '--dry-run', '--boot', 'direct', '--output', 'json', disk]);
    expect(r.status, r.stderr).toBe(0);
    expect(sha256File(disk)).toBe(hash);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ partition: 1, 'root-uuid': fsUuid, 'swap-partition': 2, 'swap-uuid': swapUuid, 'dry-run': true, 'is-guest': true });
    expect(j.changes.map((c: { path: string }) => c.path)).toEqual(['/etc/fstab', '/etc/inittab']);
    expect(j.boot).toMatchObject({ mode: 'direct', kernel: '/boot/vmlinuz-6.1.0-9-amd64', cmdline: `root=UUID=${fsUuid} ro console=tty0 console=ttyS0,115200` });
    expect(j.boot['qemu-args']).toContain(`${disk}.vmlinuz`);
    expect(existsSync(`${disk}.vmlinuz`)).toBe(false);
  });

  it('writes the kernel for direct boot, and will not overwrite it without --force', async () => {
    const { disk } = makeDisk(GUEST);
    const first = await runCli(['guest', 'fix', '--boot', 'direct', disk]);
    expect(first.status, first.stderr).toBe(0);
    expect(Buffer.compare(readFileSync(`${disk}.vmlinuz`), fakeBzImage())).toBe(0);
    expect(readFileSync(`${disk}.initrd`, 'utf8')).toBe('not really an initrd');
    expect(first.stdout).toContain(`-kernel ${disk}.vmlinuz -initrd ${disk}.initrd -append 'root=UUID=`);
    expect(first.stdout).toContain('<kernel>');
    const again = await runCli(['guest', 'fix', '--boot', 'direct', disk]);
    expect(again.status).toBe(2);
    expect(again.stderr).toMatch(/\.vmlinuz exists \(use --force/);
    expect((await runCli(['guest', 'fix', '--boot', 'direct', '--force', disk])).status).toBe(0);
  });

  it('says a partition without /etc/fstab is not a guest (exit 1) and changes nothing', async () => {
    const { disk } = makeDisk({ 'data/file': 'x' });
    const hash = sha256File(disk);
    const r = await runCli(['guest', 'fix', disk]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/warning: not a bootable guest/);
    expect(sha256File(disk)).toBe(hash);
  });

  it('refuses bad requests: a bare filesystem, a missing partition, swap as root, an unknown boot mode (exit 2), an impossible --boot grub (exit 4)', async () => {
    const { disk } = makeDisk(GUEST);
    const fs = t.path(`fs${n}.img`);
    const bare = await runCli(['guest', 'fix', fs]);
    expect(bare.status).toBe(2);
    expect(bare.stderr).toMatch(/no partition table \(it is a bare ext4 filesystem\): use 'imgtool wrap'/);
    const missing = await runCli(['guest', 'fix', '--partition', '3', disk]);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/has no partition 3 \(it has 1, 2\)/);
    const swapRoot = await runCli(['guest', 'fix', '--partition', '2', disk]);
    expect(swapRoot.status).toBe(2);
    expect(swapRoot.stderr).toMatch(/partition 2 holds swap, not an ext2\/3\/4 root filesystem/);
    const mode = await runCli(['guest', 'fix', '--boot', 'pxe', disk]);
    expect(mode.status).toBe(2);
    expect(mode.stderr).toMatch(/--boot must be auto, grub, direct or none/);
    const grubXen = makeDisk({ 'etc/fstab': '/dev/xvda1 / ext4 defaults 0 1\n', 'boot/vmlinuz-2.6.18-xen': fakeBzImage() });
    const x = await runCli(['guest', 'fix', '--boot', 'grub', grubXen.disk]);
    expect(x.status).toBe(4);
    expect(x.stderr).toMatch(/--boot grub: the guest has no kernel that boots under KVM \(found: \/boot\/vmlinuz-2\.6\.18-xen \(Xen-only\)\)/);
  });
});

/** Byte-compare a region of two raw files. */
function qemuCompareRegion(a: string, b: string, offset: number, length: number): boolean {
  return Buffer.compare(readFileSync(a).subarray(offset, offset + length), readFileSync(b).subarray(offset, offset + length)) === 0;
}
