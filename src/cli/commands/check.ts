import { type CommandSpec, OUTPUT_OPTION, printJson, str, wantsJson } from '../command.js';
import { FORMAT_OPTION } from '../common.js';
import { FileDevice } from '../../core/file.js';
import { detectFormat, driverByName } from '../../formats/index.js';
import { CHECK_EXIT, checkExitCode, checkImage, checkSummary } from '../../maintenance/check.js';
import type { Repair } from '../../formats/types.js';
import { ImageError } from '../../core/errors.js';
import { escapeLine } from '../../core/escape.js';

export const checkCommand: CommandSpec = {
  name: 'check',
  summary: 'check an image for consistency (and repair it), as qemu-img check',
  usage: 'check [-f FMT] [-r leaks|all] [-q] [--output json] IMG',
  positionals: { min: 1, max: 1 },
  options: [
    FORMAT_OPTION,
    { name: 'repair', short: 'r', type: 'string', valueName: 'leaks|all', description: "repair: 'leaks' frees leaked clusters, 'all' also fixes refcounts and copied flags" },
    { name: 'quiet', short: 'q', type: 'boolean', description: 'print nothing; the exit code tells' },
    OUTPUT_OPTION,
  ],
  details: `qcow2: refcounts recounted from the header, L1/L2 and snapshot tables, the
snapshot table and the refcount structures, and compared with the stored
ones; copied flags against refcount 1. Without -r the image is opened
read-only and never written. Repairs write one refcount or flag at a time,
each to the value the tables justify: a crash mid-repair leaves an image a
new 'check -r' repairs.

Example:
  imgtool check --output json disk.qcow2

Exit codes (as qemu-img): 0 clean; 1 check not completed; 2 corruptions;
3 leaked clusters only; 63 the format has no check (raw).`,
  async run(args, ctx) {
    const json = wantsJson(args);
    const path = args.positionals[0]!;
    const r = str(args, 'repair');
    if (r !== undefined && r !== 'leaks' && r !== 'all') throw new ImageError('usage', `Unknown option value for -r (expecting 'leaks' or 'all'): ${r}`);
    const quiet = args.values.quiet === true;
    try {
      // The driver by name or magic only: a damaged image must be checkable even when it cannot be opened.
      const file = await FileDevice.open(path);
      let driver;
      try {
        const format = str(args, 'format');
        driver = format ? driverByName(format) : await detectFormat(file);
      } finally {
        await file.close();
      }
      if (!driver.check) {
        ctx.stderr.write('imgtool: This image format does not support checks\n');
        return CHECK_EXIT.unsupported;
      }
      const say = (line: string) => {
        if (!quiet) ctx.stderr.write(escapeLine(line) + '\n');
      };
      const { result, repaired } = await checkImage(path, driver, r as Repair, say);
      if (json) printJson(ctx, { ...result, filename: path, format: driver.name });
      else if (!quiet) ctx.stdout.write(checkSummary(result, repaired));
      return checkExitCode(result);
    } catch (e) {
      if (!(e instanceof ImageError) || e.kind === 'usage') throw e;
      if (e.kind === 'unsupported') {
        ctx.stderr.write(`imgtool: ${escapeLine(e.describe())}\n`);
        return CHECK_EXIT.unsupported;
      }
      ctx.stderr.write(`imgtool: Check failed: ${escapeLine(e.describe())}\n`);
      return CHECK_EXIT.notCompleted;
    }
  },
};
