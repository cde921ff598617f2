import { type CommandSpec, OUTPUT_OPTION, list, printJson, str, wantsJson } from '../command.js';
import { BACKING_OPTIONS, FORMAT_OPTION, openFromArgs } from '../common.js';
import { measure, measureSource } from '../../maintenance/measure.js';
import { driverByName } from '../../formats/index.js';
import { parseKeyValues, parseSize } from '../../core/size.js';
import { ImageError } from '../../core/errors.js';

export const measureCommand: CommandSpec = {
  name: 'measure',
  summary: 'the file size a new image needs, as qemu-img measure reports it',
  usage: 'measure [-O FMT] [-o KEY=VALUE,...] [--output json] (--size SIZE | [-f FMT] IMG)',
  positionals: { min: 0, max: 1 },
  options: [
    { name: 'output-format', short: 'O', type: 'string', valueName: 'FMT', description: 'the new image format (default raw)' },
    { name: 'options', short: 'o', type: 'string', multiple: true, valueName: 'KEY=VALUE,...', description: "its create options, as 'convert -o'" },
    { name: 'size', type: 'string', valueName: 'SIZE', description: 'measure an empty image of this size instead of a copy of IMG' },
    FORMAT_OPTION,
    OUTPUT_OPTION,
    ...BACKING_OPTIONS,
  ],
  details: `required: bytes for a copy of IMG's data (convert writes at most this); fully
allocated: bytes when every cluster is written. qcow2 by qemu's formula;
raw: the size; vdi and qcow (which qemu-img cannot measure) by the layout
imgtool writes: vdi = data offset + 1 MiB per block holding data; qcow =
header and L1 in whole 4 KiB clusters + a 4 KiB L2 table per 2 MiB region
holding data + the 4 KiB clusters holding data.

Examples:
  imgtool measure -O qcow2 --size 100G
  imgtool measure -O qcow2 -o cluster_size=2M --output json disk.img`,
  async run(args, ctx) {
    const json = wantsJson(args);
    const driver = driverByName(str(args, 'output-format') ?? 'raw');
    const options = parseKeyValues(list(args, 'options'));
    const sizeArg = str(args, 'size');
    let result;
    if (sizeArg !== undefined) {
      if (args.positionals.length) throw new ImageError('usage', '--size N cannot be used together with a filename.');
      result = await measure(driver, { size: parseSize(sizeArg, '--size'), options });
    } else {
      const path = args.positionals[0];
      if (path === undefined) throw new ImageError('usage', 'Either --size N or one filename must be specified.');
      const opened = await openFromArgs(path, args);
      try {
        result = await measure(driver, { size: opened.image.size, options }, measureSource(opened.image, opened.image.format));
      } finally {
        await opened.image.close();
      }
    }
    if (json) printJson(ctx, result);
    else {
      const lines = [`required size: ${result.required}`, `fully allocated size: ${result['fully-allocated']}`];
      if (result.bitmaps !== undefined) lines.push(`bitmaps size: ${result.bitmaps}`);
      ctx.stdout.write(lines.join('\n') + '\n');
    }
    return 0;
  },
};
