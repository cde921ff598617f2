import * as fs from 'node:fs';
import { type CommandSpec, OUTPUT_OPTION, flag, printJson, str, wantsJson } from '../command.js';
import { FORCE_OPTION, FORMAT_OPTION, openFromArgs } from '../common.js';
import { ImageError, ioError } from '../../core/errors.js';
import { SliceDevice } from '../../core/slice.js';
import { inspectDisk, type PartitionInfo } from '../../partition/inspect.js';
import { GRUB_UNREADABLE } from '../../fs/ext-superblock.js';
import { prepareGuest } from '../../guest/prepare.js';
import { type BootMode, directBootInstructions } from '../../guest/boot.js';

const BOOT_MODES = ['auto', 'grub', 'direct', 'none'];

function partitionNumber(args: Parameters<CommandSpec['run']>[0], name: string): number | undefined {
  const v = str(args, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > 128) throw new ImageError('usage', `--${name} must be a partition number (1, 2, ... 5 for the first logical), not '${v}'`);
  return n;
}

export const guestFixCommand: CommandSpec = {
  name: 'guest fix',
  summary: "make a partitioned Xen guest disk boot under KVM: fstab, consoles, boot configs, GRUB or direct boot",
  usage: 'guest fix [-f FMT] [--partition N] [--swap-partition N] [--boot MODE] [--dry-run] [--force] [--output json] IMG',
  positionals: { min: 1, max: 1 },
  options: [
    FORMAT_OPTION,
    { name: 'partition', type: 'string', valueName: 'N', description: "partition holding the guest's root filesystem", default: '1' },
    { name: 'swap-partition', type: 'string', valueName: 'N', description: 'swap partition for /etc/fstab (default: the only swap partition, if there is one)' },
    { name: 'boot', type: 'string', valueName: 'MODE', description: "auto, grub, direct or none (auto: GRUB when the MBR holds no boot code yet, else nothing)", default: 'auto' },
    { name: 'dry-run', short: 'n', type: 'boolean', description: 'print the changes as a unified diff; change nothing' },
    { ...FORCE_OPTION, description: 'with --boot direct: overwrite an existing IMG.vmlinuz / IMG.initrd' },
    OUTPUT_OPTION,
  ],
  details: `The root filesystem is changed in place (the image is opened writable unless --dry-run):
  /etc/fstab       xvdX/sdX/hdX -> UUID= of the root filesystem and swap; a swap line is added
  consoles         xvc0/hvc0 gettys -> ttyS0 and tty1 (inittab, upstart, systemd); securetty gains ttyS0
  boot configs     menu.lst, grub.cfg, /etc/default/grub: root=/dev/xvda1 -> root=UUID=...,
                   xencons= and console=hvc0/xvc0 removed
Warnings (not errors): Xen-only kernels, an initrd without virtio drivers (and what to change).

Boot (--boot):
  grub    GRUB 2 (the host's grub-pc-bin) in the MBR and the gap before partition 1
  direct  writes IMG.vmlinuz and IMG.initrd and prints the qemu and libvirt settings
  none    no boot loader
  auto    grub when the guest has a kernel, GRUB is installed on this machine and the
          MBR holds no boot code yet; direct when GRUB is missing; else none

Examples:
  imgtool guest fix --dry-run disk.qcow2
  imgtool guest fix --boot grub --swap-partition 2 disk.img

Exit codes: 0 done; 1 not a guest (no /etc/fstab or kernel: nothing changed); 2 usage;
3 invalid or corrupt input; 4 unsupported; 5 I/O error.`,
  async run(args, ctx) {
    const path = args.positionals[0]!;
    const json = wantsJson(args);
    const dryRun = flag(args, 'dry-run');
    const boot = (str(args, 'boot') ?? 'auto') as BootMode;
    if (!BOOT_MODES.includes(boot)) throw new ImageError('usage', `--boot must be auto, grub, direct or none, not '${boot}'`);
    const partNo = partitionNumber(args, 'partition') ?? 1;
    const swapNo = partitionNumber(args, 'swap-partition');

    const opened = await openFromArgs(path, args, { writable: !dryRun });
    const image = opened.image;
    try {
      const disk = await inspectDisk(image, { partitioninfo: true });
      if (disk.scheme === 'none') {
        throw new ImageError(
          'usage',
          `${path} has no partition table${disk.content?.type && disk.content.type !== 'unknown' ? ` (it is a bare ${disk.content.type} filesystem)` : ''}: use 'imgtool wrap' to make a bootable disk of it`,
          { path },
        );
      }
      const byNumber = (n: number): PartitionInfo => {
        const p = disk.partitions.find((x) => x.number === n);
        if (!p) throw new ImageError('usage', `${path} has no partition ${n} (it has ${disk.partitions.map((x) => x.number).join(', ') || 'none'})`, { path, value: n });
        return p;
      };
      const root = byNumber(partNo);
      if (!['ext2', 'ext3', 'ext4'].includes(root.content.type)) {
        throw new ImageError('usage', `partition ${partNo} holds ${root.content.type === 'unknown' ? 'no recognised filesystem' : root.content.type}, not an ext2/3/4 root filesystem`, {
          path,
          value: root.content.type,
        });
      }
      let swap: PartitionInfo | undefined;
      if (swapNo !== undefined) {
        swap = byNumber(swapNo);
        if (swap.content.type !== 'swap') throw new ImageError('usage', `partition ${swapNo} is not a swap area (found ${swap.content.type})`, { path, value: swapNo });
      } else {
        const swaps = disk.partitions.filter((p) => p.content.type === 'swap');
        if (swaps.length === 1) swap = swaps[0];
      }
      const fsDev = new SliceDevice(image, root.start, root.size);
      const rootUuid = root.content.uuid;
      const warnings = [...disk.warnings];
      // An MBR that already boots something is left alone unless GRUB is asked for.
      const mbr = new Uint8Array(440);
      await image.read(mbr, 0);
      let requested = boot;
      if (boot === 'auto' && mbr.some((b) => b !== 0)) {
        warnings.push('the MBR already holds boot code: left alone (pass --boot grub to replace it with GRUB)');
        requested = 'none';
      }
      const unreadable = (root.content.features ?? []).filter((f) => GRUB_UNREADABLE.includes(f));
      const grubBlocked =
        disk.scheme !== 'mbr' || root.kind !== 'primary'
          ? `GRUB is installed for a primary partition of an MBR disk; partition ${partNo} is ${disk.scheme === 'mbr' ? root.kind : 'on a GPT disk'}`
          : unreadable.length
            ? `GRUB 2.06 cannot read a filesystem with ${unreadable.join(', ')}`
            : undefined;
      const prep = await prepareGuest(image, {
        fsDev,
        rootStart: root.start,
        rootNumber: partNo,
        rootUuid,
        swapUuid: swap?.content.uuid,
        swapNumber: swap?.number,
        boot: requested,
        dryRun,
        grubBlocked,
      });
      const report = prep.fixes;
      warnings.push(...prep.warnings);
      let bootResult: Record<string, unknown> = { mode: prep.mode };
      if (prep.kernel) bootResult = { ...bootResult, kernel: prep.kernel.kernel, initrd: prep.kernel.initrd, cmdline: prep.cmdline };
      if (prep.coreSize !== undefined) bootResult['core-size'] = prep.coreSize;
      if (prep.mode === 'direct' && prep.kernel && prep.cmdline) {
        const kernelPath = `${path}.vmlinuz`;
        const initrdPath = prep.kernel.initrd ? `${path}.initrd` : undefined;
        const { qemuArgs, libvirtOs } = directBootInstructions({ disk: path, format: opened.driver.name, kernelPath, initrdPath, cmdline: prep.cmdline });
        if (prep.files) {
          const flags = flag(args, 'force') ? 'w' : 'wx';
          const write = (p: string, data: Uint8Array) => {
            try {
              fs.writeFileSync(p, data, { flag: flags });
            } catch (e) {
              if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new ImageError('usage', `${p} exists (use --force to overwrite it)`, { path: p });
              throw ioError(e, 'write', p);
            }
          };
          write(kernelPath, prep.files.kernel);
          if (initrdPath && prep.files.initrd) write(initrdPath, prep.files.initrd);
        }
        bootResult = { ...bootResult, 'kernel-file': kernelPath, 'initrd-file': initrdPath, 'qemu-args': qemuArgs, 'libvirt-os': libvirtOs };
      }
      await image.flush();

      if (json) {
        printJson(ctx, {
          image: path,
          partition: partNo,
          'root-uuid': rootUuid,
          'swap-partition': swap?.number,
          'swap-uuid': swap?.content.uuid,
          'dry-run': dryRun,
          'is-guest': report.isGuest,
          changes: report.changes.map((c) => ({ path: c.path, diff: c.diff })),
          kernels: report.kernels,
          boot: bootResult,
          warnings,
        });
      } else {
        for (const c of report.changes) ctx.stdout.write(c.diff);
        const verb = dryRun ? 'would change' : 'changed';
        ctx.stdout.write(`${report.changes.length ? `${verb} ${report.changes.length} file(s)` : 'no file changes needed'} in partition ${partNo}\n`);
        if (bootResult.mode === 'grub') ctx.stdout.write(`${dryRun ? 'would install' : 'installed'} GRUB booting ${bootResult.kernel} (${bootResult.cmdline})\n`);
        if (bootResult.mode === 'direct') {
          ctx.stdout.write(`${dryRun ? 'would write' : 'wrote'} ${bootResult['kernel-file']}${bootResult['initrd-file'] ? ` and ${bootResult['initrd-file']}` : ''}\n`);
          ctx.stdout.write(`qemu-system-x86_64 ${(bootResult['qemu-args'] as string[]).map((a) => (/[\s'"]/.test(a) ? `'${a.replace(/'/g, `'\\''`)}'` : a)).join(' ')}\n`);
          ctx.stdout.write(`libvirt:\n${bootResult['libvirt-os']}\n`);
        }
        for (const w of warnings) ctx.stderr.write(`imgtool: warning: ${w}\n`);
      }
      return report.isGuest ? 0 : 1;
    } finally {
      await image.close();
    }
  },
};
