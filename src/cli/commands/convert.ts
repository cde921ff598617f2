import { type CommandSpec, OUTPUT_OPTION, flag, list, printJson, str, wantsJson } from '../command.js';
import { BACKING_OPTIONS, DISK_OPTION, FORCE_OPTION, FORMAT_OPTION, PROGRESS_OPTIONS, diskFromArgs, httpFromArgs, openFromArgs, printWarning, progressFromArgs } from '../common.js';
import { convertSource } from '../../convert/sequential.js';
import { convertOpened } from '../../convert/image.js';
import { parseKeyValues, parseSize } from '../../core/size.js';
import { driverByName, formatFromExtension } from '../../formats/index.js';
import { writeToStdout } from '../../convert/stream.js';
import { ImageError } from '../../core/errors.js';

export const convertCommand: CommandSpec = {
  name: 'convert',
  summary: 'convert an image from one format to another, copying only allocated data',
  usage: 'convert [-f FMT] [-O FMT] [-c] [-p] [-S SIZE] [-o KEY=VALUE,...] SRC DST   (SRC or DST may be - for a pipe)',
  positionals: { min: 2, max: 2 },
  options: [
    FORMAT_OPTION,
    DISK_OPTION,
    { name: 'output-format', short: 'O', type: 'string', valueName: 'FMT', description: 'output format; from the extension of DST when omitted (.qcow2, .qcow, .vdi, .img/.raw)' },
    { name: 'options', short: 'o', type: 'string', multiple: true, valueName: 'KEY=VALUE,...', description: "output format options (see 'Format options' below)" },
    { name: 'compress', short: 'c', type: 'boolean', description: 'compress data clusters (qcow, qcow2)' },
    { name: 'sparse-size', short: 'S', type: 'string', valueName: 'SIZE', description: 'minimum run of zeros skipped in the output (0: write everything)', default: '4k' },
    ...PROGRESS_OPTIONS,
    FORCE_OPTION,
    ...BACKING_OPTIONS,
    OUTPUT_OPTION,
  ],
  details: `Sizes take qemu-img's suffixes: 512, 64k, 2M, 1G.

Format options (-o):
  qcow2: compat=0.10|1.1  cluster_size=SIZE (512..2M, default 64k)  refcount_bits=1..64
         lazy_refcounts=on|off  extended_l2=on|off  compression_type=zlib
  vdi:   static=on|off
  qcow:  (none)

Examples:
  imgtool convert xen.img kvm.qcow2
  imgtool convert -p -c -o cluster_size=2M disk.vdi disk.qcow2
  imgtool convert -f qcow2 -O raw disk.qcow2 disk.img
  zcat disk.img.gz | imgtool convert - disk.qcow2          # from a pipe
  curl -s https://host/vm.ova | imgtool convert - vm.qcow2  # an OVA, read front to back
  imgtool convert -O vdi disk.qcow2 - | ssh host 'cat > disk.vdi'   # to a pipe

A source that can only be read once (a pipe, a server without Range requests or
--no-ranges, a gzip/xz/zstd/bzip2-compressed input) is converted front to back
without a scratch copy when its format allows: raw (to a raw output, or when its
length is known), streamOptimized VMDK, and OVA (its manifest is checked before
the output is kept). Other formats are spooled to a sparse file in $TMPDIR first.

Exit codes: 0 success; 2 usage (bad option, output exists); 3 invalid or corrupt input;
4 unsupported feature; 5 I/O error; 130 interrupted (the partial output is removed).`,
  async run(args, ctx) {
    const [src, dst] = args.positionals as [string, string];
    const json = wantsJson(args);
    const outFormat = str(args, 'output-format') ?? (dst === '-' ? 'raw' : formatFromExtension(dst));
    if (!outFormat) {
      throw new ImageError('usage', `cannot tell the output format from '${dst}': name it with -O (raw, qcow, qcow2, vdi)`);
    }
    const copy = {
      format: outFormat,
      options: parseKeyValues(list(args, 'options')),
      compress: flag(args, 'compress'),
      sparseSize: parseSize(str(args, 'sparse-size') ?? '4k', '-S'),
      force: flag(args, 'force'),
      progress: progressFromArgs(args, ctx),
    };
    if (dst !== '-') {
      // Seekable sources are converted in place; a pipe, a server without ranges or a compressed
      // input front to back (without a scratch copy when its format allows: see convert/sequential.ts).
      const streamable = !flag(args, 'backing') && !flag(args, 'data-file');
      const open = () => openFromArgs(src, args);
      const result = streamable
        ? await convertSource(src, dst, { ...copy, inputFormat: str(args, 'format'), disk: diskFromArgs(args), http: httpFromArgs(args), warn: printWarning }, open)
        : await convertOpened(await open(), dst, copy);
      if (json) printJson(ctx, result);
      return 0;
    }
    const opened = await openFromArgs(src, args);
    try {
      const bytes = await writeToStdout(opened.image, driverByName(outFormat), { size: opened.image.size, options: copy.options, compress: copy.compress });
      if (json) ctx.stderr.write(JSON.stringify({ source: src, target: '-', 'target-format': outFormat, 'bytes-written': bytes }) + '\n');
    } finally {
      await opened.image.close();
    }
    return 0;
  },
};
