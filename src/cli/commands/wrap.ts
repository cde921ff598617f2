import { type CommandSpec, OUTPUT_OPTION, flag, list, printJson, str, wantsJson, warn } from '../command.js';
import { BACKING_OPTIONS, FORCE_OPTION, FORMAT_OPTION, PROGRESS_OPTIONS, openFromArgs, progressFromArgs } from '../common.js';
import { parseKeyValues, parseSize, formatSize } from '../../core/size.js';
import { formatFromExtension, openImage } from '../../formats/index.js';
import * as fs from 'node:fs';
import { ImageError, ioError } from '../../core/errors.js';
import type { BootMode } from '../../guest/boot.js';
import { wrapImage, type WrapOptions } from '../../wrap/wrap.js';
import { parseDiskArg, parseMapArgs } from '../../guest/domain/convert.js';
import type { ParsedArgs } from '../command.js';
import * as path from 'node:path';

function bootMode(v: string): BootMode {
  if (!['auto', 'grub', 'direct', 'none'].includes(v)) throw new ImageError('usage', `--boot must be auto, grub, direct or none, not '${v}'`);
  return v as BootMode;
}

function domainFile(args: ParsedArgs): WrapOptions['domain'] {
  const p = str(args, 'domain');
  const maps = ['disk', 'bridge', 'network'].filter((o) => list(args, o).length);
  if (p === undefined) {
    if (maps.length) throw new ImageError('usage', `--${maps[0]} needs --domain`);
    return undefined;
  }
  let text: string;
  try {
    text = fs.readFileSync(p, 'utf8');
  } catch (e) {
    throw ioError(e, 'read the domain definition', p);
  }
  return {
    path: p,
    text,
    disks: list(args, 'disk').map(parseDiskArg).map((d) => ({ ...d, path: path.resolve(d.path) })),
    bridges: parseMapArgs(list(args, 'bridge'), '--bridge'),
    networks: parseMapArgs(list(args, 'network'), '--network'),
  };
}

/** `--part MOUNTPOINT=IMAGE[:SIZE]` → its parts (SIZE only when the suffix parses as a size). */
export function parsePartArg(arg: string): { mountpoint: string; path: string; size?: number } {
  const eq = arg.indexOf('=');
  if (eq <= 0 || eq === arg.length - 1) throw new ImageError('usage', `--part wants MOUNTPOINT=IMAGE[:SIZE] (e.g. /var=var.img:2G), not '${arg}'`);
  const mountpoint = arg.slice(0, eq);
  const rest = arg.slice(eq + 1);
  const m = /^(.+):(\d+(?:\.\d+)?[kKmMgGtTpPeE]?)$/.exec(rest);
  return m ? { mountpoint, path: m[1]!, size: parseSize(m[2]!, `--part ${mountpoint}`) } : { mountpoint, path: rest };
}

const shellQuote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

export const wrapCommand: CommandSpec = {
  name: 'wrap',
  summary: 'turn a bare ext2/3/4 filesystem (a Xen guest disk) into a partitioned, bootable KVM disk',
  usage:
    'wrap SRC -o DST [-f FMT] [-O FMT] [--swap SIZE] [--part MOUNTPOINT=IMG[:SIZE]]... [--size TOTAL | --root-size SIZE] [--no-grow] [--boot MODE] [--no-guest] [--domain XEN.cfg [--disk PATH[:FMT]]... [--bridge XEN=KVM]... [--network XEN=NET]...] [-c] [-p] [--force]',
  positionals: { min: 1, max: 1 },
  options: [
    { name: 'target', short: 'o', type: 'string', valueName: 'DST', description: 'the output disk (a file, or a host block device with --force)' },
    FORMAT_OPTION,
    { name: 'output-format', short: 'O', type: 'string', valueName: 'FMT', description: 'output format; from the extension of DST when omitted' },
    { name: 'options', type: 'string', multiple: true, valueName: 'KEY=VALUE,...', description: "output format options, as convert's -o" },
    { name: 'swap', type: 'string', valueName: 'SIZE', description: 'add a swap partition of this size (partition 2)' },
    { name: 'part', type: 'string', multiple: true, valueName: 'MOUNTPOINT=IMG[:SIZE]', description: 'another filesystem of the guest (e.g. /var=var.img:4G) into its own partition, grown to SIZE' },
    { name: 'size', type: 'string', valueName: 'TOTAL', description: 'total disk size; partition 1 takes what the swap leaves' },
    { name: 'root-size', type: 'string', valueName: 'SIZE', description: 'size of partition 1 (at least the filesystem)' },
    { name: 'no-grow', type: 'boolean', description: 'do not grow the filesystem to fill partition 1' },
    { name: 'compress', short: 'c', type: 'boolean', description: 'compress the output (qcow, qcow2)' },
    { name: 'boot', type: 'string', valueName: 'MODE', description: 'auto, grub, direct or none (see below)', default: 'auto' },
    { name: 'no-guest', type: 'boolean', description: 'copy the filesystem as plain data: no fix-ups, no boot loader' },
    { name: 'domain', type: 'string', valueName: 'XEN.cfg|XEN.xml', description: "convert the Xen guest's definition too: writes DST.xml, a KVM libvirt domain for the disk" },
    { name: 'disk', type: 'string', multiple: true, valueName: 'PATH[:FORMAT]', description: 'with --domain: converted image for the next Xen hard disk the wrap did not consume' },
    { name: 'bridge', type: 'string', multiple: true, valueName: 'XEN=KVM', description: "with --domain: attach interfaces on Xen bridge XEN to KVM bridge KVM ('*' = all others)" },
    { name: 'network', type: 'string', multiple: true, valueName: 'XEN=NET', description: "with --domain: attach interfaces on Xen bridge XEN to libvirt network NET ('*' = all others)" },
    ...PROGRESS_OPTIONS,
    FORCE_OPTION,
    ...BACKING_OPTIONS,
    OUTPUT_OPTION,
  ],
  details: `The disk: an MBR with partition 1 (Linux, bootable) at 1 MiB holding the filesystem and,
with --swap, partition 2 (Linux swap) with a fresh swap signature; all aligned to 1 MiB.
Each --part MOUNTPOINT=IMG[:SIZE] adds a filesystem (any image format) in the next
partition (3, 4; with more than four partitions in all, partition 3 and logical
partitions 5, 6, ... in an extended partition 4), sized to the filesystem or SIZE.
Only the blocks each filesystem uses are copied. Each is checked and repaired (as
e2fsck -p) and grown (resize2fs) in the output; the inputs are never written.

Guest conversion (unless --no-guest): /etc/fstab names the new filesystems and swap by UUID,
xvc0/hvc0 consoles become tty1 and ttyS0, boot configs lose Xen-only arguments; warnings
for a Xen-only kernel or an initrd without virtio drivers. A filesystem that is not a
bootable guest is wrapped as plain data with a warning.

Boot (--boot):
  auto    grub when the guest has a kernel and GRUB (grub-pc-bin) is installed here;
          direct when there is a kernel but no GRUB; none (with a warning) otherwise
  grub    GRUB 2 in the MBR and the gap before partition 1, loading the guest's kernel
  direct  writes DST.vmlinuz and DST.initrd beside the disk and prints the
          qemu-system-x86_64 arguments and the libvirt <os> element that boot them
  none    no boot loader

Examples:
  imgtool wrap xen.img --swap 1G -o kvm.qcow2
  imgtool wrap xen.img --swap 1G -o kvm.qcow2 --domain /etc/xen/guest.cfg   # also kvm.qcow2.xml
  imgtool wrap root.img --part /var=var.img --part /home=home.img:20G --swap 1G -o kvm.qcow2

With --domain, the Xen disks the wrap consumed (the root filesystem's, the swap disk the
guest's fstab names when --swap makes a new swap partition, each --part's) become the one
new disk; other disks are kept at their Xen path with a warning (map their converted
images with --disk, in order). --bridge and --network map interfaces as in
'imgtool domain convert'. The domain keeps the Xen uuid (or gets a fresh one).
  imgtool wrap /dev/vg0/guest --size 20G --swap 2G -o guest.vdi -p
  imgtool wrap xen.img -o /dev/vg1/kvm-guest -O raw --force

Exit codes: 0 success; 2 usage (sizes do not fit, output exists); 3 the input is not a bare
ext filesystem, or e2fsck cannot repair it; 4 unsupported feature; 5 I/O error (disk full:
the partial output is removed); 130 interrupted.`,
  async run(args, ctx) {
    const src = args.positionals[0]!;
    const dst = str(args, 'target');
    if (!dst) throw new ImageError('usage', 'wrap needs an output: -o DST');
    const json = wantsJson(args);
    const format = str(args, 'output-format') ?? formatFromExtension(dst) ?? (dst.startsWith('/dev/') ? 'raw' : undefined);
    if (!format) throw new ImageError('usage', `cannot tell the output format from '${dst}': name it with -O (raw, qcow, qcow2, vdi)`);
    const opened = await openFromArgs(src, args);
    const parts: NonNullable<WrapOptions['parts']> = [];
    try {
      for (const p of list(args, 'part').map(parsePartArg)) parts.push({ mountpoint: p.mountpoint, size: p.size, image: await openImage(p.path) });
      const sizeOpt = (name: string) => {
        const v = str(args, name);
        return v === undefined ? undefined : parseSize(v, `--${name}`);
      };
      const report = await wrapImage(opened, {
        output: dst,
        format,
        options: parseKeyValues(list(args, 'options')),
        compress: flag(args, 'compress'),
        swap: sizeOpt('swap'),
        size: sizeOpt('size'),
        rootSize: sizeOpt('root-size'),
        grow: !flag(args, 'no-grow'),
        force: flag(args, 'force'),
        progress: progressFromArgs(args, ctx),
        guest: flag(args, 'no-guest') ? false : { boot: bootMode(str(args, 'boot') ?? 'auto') },
        parts,
        domain: domainFile(args),
      });
      if (json) {
        printJson(ctx, report);
      } else {
        const lines = [`${report.output}: ${report['output-format']}, ${formatSize(report['disk-size'])}`];
        for (const p of report.partitions) {
          lines.push(`  partition ${p.number}: ${formatSize(p.size).padStart(10)} at ${formatSize(p.start)}  ${p.content}${p.bootable ? ' (boot)' : ''}`);
        }
        for (const p of report.parts ?? []) {
          lines.push(`  ${p.mountpoint}: ${p.type} ${p.uuid} on ${p.device}${p.resized ? `, grown ${formatSize(p['size-before'])} -> ${formatSize(p['size-after'])}` : ''}`);
        }
        const f = report.filesystem;
        lines.push(
          `  filesystem: ${f.type} ${f.uuid}, ${formatSize(f['used-bytes'])} in use` +
            (f.resized ? `, grown ${formatSize(f['size-before'])} -> ${formatSize(f['size-after'])}` : ''),
          `  e2fsck: ${f.fsck.preen.status.join(', ')}; final check clean`,
          `  copied ${formatSize(report['bytes-copied'])} in ${report.seconds.toFixed(1)} s`,
        );
        const g = report.guest;
        if (g) {
          lines.push(`  guest: ${g['is-guest'] ? `${g.changes.length} file(s) fixed${g.changes.length ? ` (${g.changes.map((c) => c.path).join(', ')})` : ''}` : 'not a bootable guest (copied as data)'}; boot: ${g.boot.mode}`);
          if (g.direct) {
            lines.push(`  kernel: ${g.direct.kernel}${g.direct.initrd ? `\n  initrd: ${g.direct.initrd}` : ''}`, '  boot it with:', `    qemu-system-x86_64 -m 1024 ${g.direct['qemu-args'].map(shellQuote).join(' ')}`, '  libvirt:', ...g.direct['libvirt-os'].split('\n').map((l) => `    ${l}`));
          }
        }
        if (report.domain) {
          const c = report.domain.consumed;
          lines.push(`  domain: ${report.domain.path}${c.length ? ` (Xen disk${c.length > 1 ? 's' : ''} ${c.join(', ')} → this disk)` : ''}`);
        }
        ctx.stdout.write(lines.join('\n') + '\n');
        for (const w of report.domain?.warnings ?? []) warn(ctx, w);
        for (const w of report.warnings) ctx.stderr.write(`imgtool: warning: ${w}\n`);
      }
    } finally {
      await opened.image.close();
      for (const p of parts) await p.image.image.close();
    }
    return 0;
  },
};
