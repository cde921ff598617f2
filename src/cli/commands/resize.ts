import { type CommandSpec, flag } from '../command.js';
import { openFromArgs } from '../common.js';
import { newSizeFrom, resizeImage } from '../../maintenance/resize.js';
import { ImageError } from '../../core/errors.js';
import { escapeLine } from '../../core/escape.js';

/** qemu-img resize's exit code for every failure. */
const FAILED = 1;

export const resizeCommand: CommandSpec = {
  name: 'resize',
  summary: "change an image's virtual size, as qemu-img resize",
  usage: 'resize [-f FMT] [--shrink] [-q] IMG [+|-]SIZE',
  positionals: { min: 2, max: 2 },
  options: [
    { name: 'format', short: 'f', type: 'string', valueName: 'FMT', description: 'image format; detected when omitted' },
    { name: 'shrink', type: 'boolean', description: 'allow a smaller size (the data past the new end is lost)' },
    { name: 'quiet', short: 'q', type: 'boolean', description: 'print nothing' },
  ],
  // `IMG -1G` is a size, not an option.
  preprocess: (argv) => {
    const i = argv.length - 1;
    return i >= 0 && /^-\d/.test(argv[i]!) && !argv.includes('--') ? [...argv.slice(0, i), '--', argv[i]!] : argv;
  },
  details: `Grows raw, qcow2, qcow and VDI (dynamic and fixed) images; shrinks raw and
qcow2 with --shrink only (qcow2: not with snapshots). Growing qcow and VDI
goes beyond qemu-img 7.2, which cannot resize them. Crash-safe: new tables
are written before the header points at them; at worst a crash leaks
clusters ('imgtool check -r leaks' frees them).

Examples:
  imgtool resize disk.qcow2 +10G
  imgtool resize --shrink disk.img 8G

Exit codes (as qemu-img): 0 resized; 1 anything else (a shrink without --shrink changes nothing).`,
  async run(args, ctx) {
    const [path, spec] = args.positionals as [string, string];
    try {
      const opened = await openFromArgs(path, args, { metadataOnly: true });
      const current = opened.image.size;
      const driver = opened.driver;
      await opened.image.close();
      const size = newSizeFrom(spec, current);
      if (size < current && !flag(args, 'shrink')) {
        ctx.stderr.write("imgtool: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.\n");
      }
      await resizeImage(path, driver, current, size, flag(args, 'shrink'));
      if (!flag(args, 'quiet')) ctx.stdout.write('Image resized.\n');
      return 0;
    } catch (e) {
      if (!(e instanceof ImageError)) throw e;
      ctx.stderr.write(`imgtool: ${escapeLine(e.describe())}\n`);
      return FAILED;
    }
  },
};
