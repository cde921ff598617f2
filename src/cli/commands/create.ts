import * as nodePath from 'node:path';
import { type CommandSpec, type ParsedArgs, flag, list, str } from '../command.js';
import { FORCE_OPTION, openFromArgs } from '../common.js';
import { createEmpty } from '../../maintenance/create.js';
import { parseKeyValues, parseSize } from '../../core/size.js';
import { ImageError } from '../../core/errors.js';
import { escapeLine } from '../../core/escape.js';

/** qemu-img create's exit code for every failure. */
const FAILED = 1;

/** The backing file's virtual size: opened read-only, its own backing file never followed. */
async function backingSize(image: string, name: string, format: string | undefined, args: ParsedArgs): Promise<number> {
  const target = nodePath.isAbsolute(name) ? name : nodePath.join(nodePath.dirname(image), name);
  const opened = await openFromArgs(target, { ...args, values: { format } }, { metadataOnly: true });
  try {
    return opened.image.size;
  } finally {
    await opened.image.close();
  }
}

export const createCommand: CommandSpec = {
  name: 'create',
  summary: 'create a new empty image (or an overlay on a backing file), as qemu-img create',
  usage: 'create [-f FMT] [-o KEY=VALUE,...] [-b BACKING -F BACKING_FMT [-u]] [-q] IMG [SIZE]',
  positionals: { min: 1, max: 2 },
  options: [
    { name: 'format', short: 'f', type: 'string', valueName: 'FMT', description: 'image format (default raw)' },
    { name: 'options', short: 'o', type: 'string', multiple: true, valueName: 'KEY=VALUE,...', description: "create options, as 'convert -o'" },
    { name: 'backing-file', short: 'b', type: 'string', valueName: 'BACKING', description: 'record this backing file (qcow2, qcow); relative to IMG\'s directory' },
    { name: 'backing-format', short: 'F', type: 'string', valueName: 'FMT', description: 'the backing file\'s format (required with -b, as in qemu-img 7.2)' },
    { name: 'unsafe', short: 'u', type: 'boolean', description: 'do not open the backing file (SIZE is then required)' },
    { name: 'quiet', short: 'q', type: 'boolean', description: 'print nothing' },
    FORCE_OPTION,
  ],
  details: `SIZE takes qemu-img's suffixes (512, 64k, 2M, 1G); with -b it defaults to the
backing file's size. The backing file is opened only to check it exists and
to read its size; its own backing file is never opened.

Examples:
  imgtool create -f qcow2 disk.qcow2 20G
  imgtool create -f qcow2 -o cluster_size=2M,compat=1.1 disk.qcow2 100G
  imgtool create -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2

Exit codes (as qemu-img): 0 created; 1 anything else.`,
  async run(args, ctx) {
    const [image, sizeText] = args.positionals as [string, string | undefined];
    const format = str(args, 'format') ?? 'raw';
    const options = parseKeyValues(list(args, 'options'));
    const backingName = str(args, 'backing-file');
    const backingFormat = str(args, 'backing-format');
    try {
      if (backingName !== undefined && backingFormat === undefined) {
        throw new ImageError('usage', `${image}: Backing file specified without backing format (name it with -F)`);
      }
      let size = sizeText !== undefined ? parseSize(sizeText, 'size') : undefined;
      if (backingName !== undefined && !flag(args, 'unsafe')) {
        const bsize = await backingSize(image, backingName, backingFormat, args);
        size ??= bsize;
      }
      if (size === undefined) throw new ImageError('usage', `${image}: Image creation needs a size parameter`);
      const backing = backingName !== undefined ? { name: backingName, format: backingFormat } : undefined;
      await createEmpty(image, format, { size, options }, backing, { force: flag(args, 'force') });
      if (!flag(args, 'quiet')) {
        const extra = [...Object.entries(options).map(([k, v]) => `${k}=${v}`)];
        if (backing) extra.push(`backing_file=${backing.name}`, `backing_fmt=${backing.format}`);
        ctx.stdout.write(escapeLine(`Formatting '${image}', fmt=${format} size=${size}${extra.length ? ' ' + extra.join(' ') : ''}`) + '\n');
      }
      return 0;
    } catch (e) {
      if (!(e instanceof ImageError)) throw e;
      ctx.stderr.write(`imgtool: ${escapeLine(e.describe())}\n`);
      return FAILED;
    }
  },
};
