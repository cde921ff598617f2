import { type CommandSpec, type CliContext, type ParsedArgs, flag, str } from '../command.js';
import { BACKING_OPTIONS, FORMAT_OPTION, PROGRESS_OPTIONS, openFromArgs, progressFromArgs } from '../common.js';
import { compareImages } from '../../maintenance/compare.js';
import type { OpenedImage } from '../../formats/index.js';
import { ImageError } from '../../core/errors.js';
import { escapeLine } from '../../core/escape.js';

/** qemu-img compare's exit codes: 0 identical, 1 different, 2 error. */
const DIFFERENT = 1;
const FAILED = 2;

function say(ctx: CliContext, args: ParsedArgs, line: string): void {
  if (!flag(args, 'quiet')) ctx.stdout.write(line + '\n');
}

export const compareCommand: CommandSpec = {
  name: 'compare',
  summary: 'compare the contents of two images, as qemu-img compare does',
  usage: 'compare [-f FMT] [-F FMT] [-s] [-q] [-p] IMG1 IMG2',
  positionals: { min: 2, max: 2 },
  options: [
    FORMAT_OPTION,
    { name: 'second-format', short: 'F', type: 'string', valueName: 'FMT', description: 'format of IMG2 (detected when omitted)' },
    { name: 'strict', short: 's', type: 'boolean', description: 'strict: a size or allocation difference is a mismatch too' },
    { name: 'quiet', short: 'q', type: 'boolean', description: 'print nothing; the exit code tells' },
    ...PROGRESS_OPTIONS,
    ...BACKING_OPTIONS,
  ],
  details: `Ranges both images report as zero are compared without reading. A larger
image equals a smaller one when its excess reads as zero (not with -s).

Example:
  imgtool compare disk.img disk.qcow2 && echo same

Exit codes (as qemu-img): 0 identical; 1 different; 2 error (an image cannot be opened or read).`,
  async run(args, ctx) {
    const [p1, p2] = args.positionals as [string, string];
    const opened: OpenedImage[] = [];
    try {
      opened.push(await openFromArgs(p1, args));
      const second: ParsedArgs = { ...args, values: { ...args.values, format: str(args, 'second-format') } };
      opened.push(await openFromArgs(p2, second));
      const [a, b] = [opened[0]!.image, opened[1]!.image];
      const r = await compareImages(a, b, { strict: flag(args, 'strict'), progress: progressFromArgs(args, ctx) });
      if (r.sizeMismatch && !flag(args, 'strict')) say(ctx, args, 'Warning: Image size mismatch!');
      switch (r.outcome.kind) {
        case 'identical':
          say(ctx, args, 'Images are identical.');
          return 0;
        case 'content':
          say(ctx, args, `Content mismatch at offset ${r.outcome.offset}!`);
          return DIFFERENT;
        case 'size':
          say(ctx, args, 'Strict mode: Image size mismatch!');
          return DIFFERENT;
        case 'status':
          say(ctx, args, `Strict mode: Offset ${r.outcome.offset} block status mismatch!`);
          return DIFFERENT;
      }
    } catch (e) {
      if (!(e instanceof ImageError)) throw e;
      ctx.stderr.write(`imgtool: ${escapeLine(e.describe())}\n`);
      return FAILED;
    } finally {
      for (const o of opened) await o.image.close();
    }
  },
};
