import { type CommandSpec, OUTPUT_OPTION, flag, list, printJson, str, wantsJson } from '../command.js';
import { BACKING_OPTIONS, FORCE_OPTION, FORMAT_OPTION, PROGRESS_OPTIONS, openFromArgs, progressFromArgs } from '../common.js';
import { parseKeyValues, parseSize, formatSize } from '../../core/size.js';
import { formatFromExtension } from '../../formats/index.js';
import { ImageError } from '../../core/errors.js';
import { wrapImage } from '../../wrap/wrap.js';

export const wrapCommand: CommandSpec = {
  name: 'wrap',
  summary: 'turn a bare ext2/3/4 filesystem (a Xen guest disk) into a partitioned, bootable KVM disk',
  usage: 'wrap SRC -o DST [-f FMT] [-O FMT] [--swap SIZE] [--size TOTAL | --root-size SIZE] [--no-grow] [-c] [-p] [--force]',
  positionals: { min: 1, max: 1 },
  options: [
    { name: 'target', short: 'o', type: 'string', valueName: 'DST', description: 'the output disk (a file, or a host block device with --force)' },
    FORMAT_OPTION,
    { name: 'output-format', short: 'O', type: 'string', valueName: 'FMT', description: 'output format; from the extension of DST when omitted' },
    { name: 'options', type: 'string', multiple: true, valueName: 'KEY=VALUE,...', description: "output format options, as convert's -o" },
    { name: 'swap', type: 'string', valueName: 'SIZE', description: 'add a swap partition of this size (partition 2)' },
    { name: 'size', type: 'string', valueName: 'TOTAL', description: 'total disk size; partition 1 takes what the swap leaves' },
    { name: 'root-size', type: 'string', valueName: 'SIZE', description: 'size of partition 1 (at least the filesystem)' },
    { name: 'no-grow', type: 'boolean', description: 'do not grow the filesystem to fill partition 1' },
    { name: 'compress', short: 'c', type: 'boolean', description: 'compress the output (qcow, qcow2)' },
    ...PROGRESS_OPTIONS,
    FORCE_OPTION,
    ...BACKING_OPTIONS,
    OUTPUT_OPTION,
  ],
  details: `The disk: an MBR with partition 1 (Linux, bootable) at 1 MiB holding the filesystem and,
with --swap, partition 2 (Linux swap) with a fresh swap signature; both aligned to 1 MiB.
Only the blocks the filesystem uses are copied. The filesystem is checked and repaired
(as e2fsck -p) and grown (resize2fs) in the output; the input is never written.

Examples:
  imgtool wrap xen.img --swap 1G -o kvm.qcow2
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
    try {
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
      });
      if (json) {
        printJson(ctx, report);
      } else {
        const lines = [`${report.output}: ${report['output-format']}, ${formatSize(report['disk-size'])}`];
        for (const p of report.partitions) {
          lines.push(`  partition ${p.number}: ${formatSize(p.size).padStart(10)} at ${formatSize(p.start)}  ${p.content}${p.bootable ? ' (boot)' : ''}`);
        }
        const f = report.filesystem;
        lines.push(
          `  filesystem: ${f.type} ${f.uuid}, ${formatSize(f['used-bytes'])} in use` +
            (f.resized ? `, grown ${formatSize(f['size-before'])} -> ${formatSize(f['size-after'])}` : ''),
          `  e2fsck: ${f.fsck.preen.status.join(', ')}; final check clean`,
          `  copied ${formatSize(report['bytes-copied'])} in ${report.seconds.toFixed(1)} s`,
        );
        ctx.stdout.write(lines.join('\n') + '\n');
        for (const w of report.warnings) ctx.stderr.write(`imgtool: warning: ${w}\n`);
      }
    } finally {
      await opened.image.close();
    }
    return 0;
  },
};
