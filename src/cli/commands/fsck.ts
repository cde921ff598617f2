/**
 * `imgtool fsck [-n | -p | -y] [-f FMT] [--partition N] IMG`: e2fsck -f
 * (WebAssembly, src/fs/e2fsprogs.ts) on the ext filesystem of an image of
 * any format, or on one partition of it. Exit code = e2fsck's.
 */

import * as path from 'node:path';
import { type CliContext, type CommandSpec, type OptionSpec, type ParsedArgs, OUTPUT_OPTION, flag, printJson, str, wantsJson } from '../command.js';
import { BACKING_OPTIONS, FORMAT_OPTION, openFromArgs } from '../common.js';
import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { SliceDevice } from '../../core/slice.js';
import { formatSize } from '../../core/size.js';
import { DRIVERS } from '../../formats/index.js';
import { detectContent } from '../../fs/detect.js';
import { type FsckMode, ToolCrashError, e2fsck, prepareTool, rawHostFile } from '../../fs/e2fsprogs.js';
import { inspectDisk } from '../../partition/inspect.js';

export const PARTITION_OPTION: OptionSpec = {
  name: 'partition',
  type: 'string',
  valueName: 'N',
  description: 'the filesystem in partition N of an MBR or GPT disk (as Linux numbers them: 1-4 primary, 5+ logical); 0 means the whole image',
};

export const WHOLE_OPTION: OptionSpec = {
  name: 'whole',
  type: 'boolean',
  description: 'the filesystem is the whole image, whatever partition table it seems to have (same as --partition 0)',
};

/** The filesystem to work on: the whole image, or partition N. */
export interface Target {
  dev: BlockDevice;
  /** Partition number, or undefined for the whole image. */
  partition?: number;
  /** Where the filesystem starts in the image, and its window's size. */
  offset: number;
  size: number;
  /** Shown by the tools as /dev/NAME. */
  name: string;
}

const EXT_TYPES: readonly string[] = ['ext2', 'ext3', 'ext4'];

/**
 * Pick the filesystem's device: partition N (a bounds-checked window), or
 * the whole image: with --whole or --partition 0 always, and without a
 * choice when the image has no partition table, or a table with no
 * partitions over an ext superblock (a bare filesystem whose block 0 ends in
 * 55 AA by chance: blkid reports both, e2fsck checks the filesystem). A disk
 * with partitions and no choice is an error that lists them.
 */
export async function selectTarget(image: BlockDevice, imagePath: string, partArg: string | undefined, whole = false): Promise<Target> {
  const base = path.basename(imagePath);
  const wholeImage: Target = { dev: image, offset: 0, size: image.size, name: base };
  if (partArg !== undefined && !/^\d+$/.test(partArg)) throw new ImageError('usage', `--partition must be a partition number, not '${partArg}'`, { value: partArg });
  const n = partArg === undefined ? undefined : Number(partArg);
  if (whole && n !== undefined && n !== 0) throw new ImageError('usage', `--whole and --partition ${n} contradict each other`, { value: n });
  if (whole || n === 0) return wholeImage;
  const disk = await inspectDisk(image, { partitioninfo: false });
  if (n === undefined) {
    if (disk.scheme === 'none') return wholeImage;
    if (disk.partitions.length === 0 && EXT_TYPES.includes((await detectContent(image)).type)) return wholeImage;
    const list = disk.partitions
      .filter((p) => p.kind !== 'extended')
      .map((p) => `${p.number} (${p.content.type === 'unknown' ? 'unknown content' : p.content.type}, ${formatSize(p.size)})`)
      .join(', ');
    throw new ImageError(
      'usage',
      `${imagePath} has ${disk.scheme === 'mbr' ? 'an MBR' : 'a GPT'} partition table: choose the filesystem with --partition N (partitions: ${list || 'none'}), or --whole for the whole image`,
      { path: imagePath },
    );
  }
  if (disk.scheme === 'none') {
    throw new ImageError('usage', `${imagePath} has no partition table: omit --partition to use the whole image`, { path: imagePath });
  }
  const p = disk.partitions.find((x) => x.number === n);
  if (!p) {
    throw new ImageError('usage', `${imagePath} has no partition ${n} (partitions: ${disk.partitions.map((x) => x.number).join(', ') || 'none'})`, {
      path: imagePath,
      value: n,
    });
  }
  if (p.kind === 'extended') throw new ImageError('usage', `partition ${n} is an extended partition (a container for logical partitions 5+)`, { value: n });
  if (p.end > image.size) {
    throw new ImageError('corrupt', `partition ${n} [${p.start}, ${p.end}) extends beyond the end of the disk (${image.size} bytes)`, {
      path: imagePath,
      offset: p.start,
      value: p.size,
    });
  }
  return { dev: new SliceDevice(image, p.start, p.size), partition: n, offset: p.start, size: p.size, name: `${base}-p${n}` };
}

const MODE_OPTIONS: Array<{ name: string; mode: FsckMode }> = [
  { name: 'no', mode: 'check' },
  { name: 'preen', mode: 'preen' },
  { name: 'yes', mode: 'repair' },
];

/**
 * e2fsck's habits: `-fn`, `-fy`, `-fp` (and `-nf`, ...) mean force + mode,
 * where imgtool's `-f` otherwise names the image format. A `-f` followed by
 * something that is not a format name (`-f disk.img`) is e2fsck's force too.
 * imgtool always checks fully, so force itself changes nothing.
 */
export function fsckPreprocess(argv: string[]): string[] {
  const formats = new Set(DRIVERS.map((d) => d.name));
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      out.push(...argv.slice(i));
      break;
    }
    if (/^-[fnpy]{2,}$/.test(a) && a.includes('f')) {
      for (const c of a.slice(1)) if (c !== 'f') out.push(`-${c}`);
      continue;
    }
    if (a === '-f' && (i + 1 >= argv.length || !formats.has(argv[i + 1]!))) continue;
    out.push(a);
  }
  return out;
}

function modeFromArgs(args: ParsedArgs): FsckMode {
  const chosen = MODE_OPTIONS.filter((m) => flag(args, m.name));
  if (chosen.length > 1) throw new ImageError('usage', 'only one of -n, -p and -y may be given');
  return chosen[0]?.mode ?? 'check';
}

export const fsckCommand: CommandSpec = {
  name: 'fsck',
  summary: 'check or repair the ext2/3/4 filesystem of an image (e2fsck -f, built in)',
  usage: 'fsck [-n | -p | -y] [-f FMT] [--partition N | --whole] [--output json] IMG',
  positionals: { min: 1, max: 1 },
  preprocess: fsckPreprocess,
  options: [
    { name: 'no', short: 'n', type: 'boolean', description: 'check only: open the image read-only and change nothing (the default)' },
    { name: 'preen', short: 'p', type: 'boolean', description: 'preen: fix what is safe to fix without asking, stop on anything else' },
    { name: 'yes', short: 'y', type: 'boolean', description: 'repair: answer yes to every question' },
    FORMAT_OPTION,
    PARTITION_OPTION,
    WHOLE_OPTION,
    OUTPUT_OPTION,
    ...BACKING_OPTIONS,
  ],
  details: `Runs e2fsck 1.47.0 (Debian 12's, compiled to WebAssembly) as 'e2fsck -f' with -n, -p or
-y on the filesystem, through imgtool's own format drivers: raw, qcow, qcow2 and VDI images
need no conversion, no loop device and no root. The image is opened for writing only with
-p and -y. e2fsck's habits work: -fn, -fy and -fp are force + mode (the check is always
full); -f FMT names the image format as in every imgtool command.

A disk with partitions needs --partition N; the tools see exactly that partition and can
touch nothing outside it. --whole (or --partition 0) takes the whole image as the filesystem;
so does a bare filesystem whose first sector merely looks like an empty MBR.

Examples:
  imgtool fsck disk.qcow2                      # check (read-only), whole-image filesystem
  imgtool fsck -fy --partition 1 vm.vdi        # repair partition 1
  imgtool fsck -n -f raw --output json xen.img

Exit codes are e2fsck's (added together): 0 no errors; 1 errors corrected; 2 corrected,
reboot if mounted; 4 errors left uncorrected; 8 operational error; 16 usage error;
32 cancelled. imgtool's own errors map onto them: a bad option or partition number is 16;
an image that is not an ext filesystem, an unsupported feature, a missing WebAssembly build
('npm run setup'), an I/O error, e2fsck crashing (a WebAssembly trap) or looping (restarting
with the same messages 100 times in a row; repeated rounds are shown once) is 8 (the message
says which). Ctrl-C exits 130.`,
  async run(args, ctx) {
    try {
      return await runFsck(args, ctx);
    } catch (e) {
      // Scripts read fsck's exit code as e2fsck's: imgtool's own errors become
      // e2fsck's 16 (usage) and 8 (operational error), never 2 or 4.
      if (e instanceof ToolCrashError) {
        ctx.stderr.write(`imgtool: ${e.message}\n`);
        if (ctx.debug) ctx.stderr.write(`${e.stack}\n`);
        return FSCK_ERROR;
      }
      if (!(e instanceof ImageError)) throw e;
      ctx.stderr.write(`imgtool: ${e.describe()}\n`);
      if (ctx.debug) ctx.stderr.write(`${e.stack}\n`);
      return e.kind === 'usage' ? FSCK_USAGE : e.kind === 'interrupted' ? FSCK_CANCELLED : FSCK_ERROR;
    }
  },
};

const FSCK_ERROR = 8;
const FSCK_USAGE = 16;
const FSCK_CANCELLED = 32;

async function runFsck(args: ParsedArgs, ctx: CliContext): Promise<number> {
  const file = args.positionals[0]!;
  const mode = modeFromArgs(args);
  const json = wantsJson(args);
  prepareTool('e2fsck');
  const opened = await openFromArgs(file, args, { writable: mode !== 'check' });
  let result;
  let target: Target;
  try {
    target = await selectTarget(opened.image, file, str(args, 'partition'), flag(args, 'whole'));
    result = await e2fsck(target.dev, {
      mode,
      name: target.name,
      hostFile: rawHostFile(opened.driver.name, opened.file, target.offset),
      onOutput: json ? undefined : (chunk) => ctx.stdout.write(chunk),
    });
  } finally {
    await opened.image.close();
  }
  if (json) {
    printJson(ctx, {
      image: file,
      format: opened.driver.name,
      partition: target.partition ?? null,
      offset: target.offset,
      size: target.size,
      mode,
      'exit-code': result.exitCode,
      status: result.status,
      output: result.output,
    });
  }
  return result.exitCode;
}
