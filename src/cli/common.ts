/** Options and helpers shared by commands that open images. */

import type { OptionSpec, ParsedArgs } from './command.js';
import { flag, list, str } from './command.js';
import type { HttpOptions } from '../sources/index.js';
import { openImage, openImageOn, openImageWith, openNamedSource, type OpenedImage } from '../formats/index.js';
import { ImageError } from '../core/errors.js';
import { escapeLine } from '../core/escape.js';
import { makeProgress, type Progress, type ProgressMode } from '../convert/progress.js';
import type { CliContext } from './command.js';
import type { Image, ImageInfo } from '../formats/types.js';

export const FORMAT_OPTION: OptionSpec = {
  name: 'format',
  short: 'f',
  type: 'string',
  valueName: 'FMT',
  description: 'input image format (raw, qcow, qcow2, vdi); detected from the magic when omitted',
};

/** `--disk N`: which disk of a container holding several (an OVA). */
export const DISK_OPTION: OptionSpec = { name: 'disk', type: 'string', valueName: 'N', description: 'which disk of an OVA (from 0; default 0)' };

/** `--disk N` when the command has it as a number (wrap's repeated --disk PATH is another option). */
export function diskFromArgs(args: ParsedArgs): number | undefined {
  const v = args.values.disk;
  if (typeof v !== 'string') return undefined;
  if (!/^\d+$/.test(v)) throw new ImageError('usage', `--disk must be a disk number (0, 1, ...), not '${v}'`);
  return Number(v);
}

/** Where an image's bytes come from when SRC is an http(s) URL. */
export const HTTP_OPTIONS: OptionSpec[] = [
  { name: 'header', type: 'string', multiple: true, valueName: "'NAME: VALUE'", description: "with a URL: send this request header (e.g. 'Authorization: Bearer ...'; never printed)" },
  { name: 'ca-file', type: 'string', valueName: 'PEM', description: 'with an https URL: also trust these certificate authorities (verification cannot be turned off)' },
  { name: 'no-ranges', type: 'boolean', description: 'with a URL: download the image once instead of reading it in place with Range requests' },
];

/** Options of every command that reads an image: backing files, data files, and URL sources. */
export const BACKING_OPTIONS: OptionSpec[] = [
  { name: 'backing', type: 'boolean', description: "read through the image's backing file (only inside the image's directory)" },
  { name: 'backing-dir', type: 'string', valueName: 'DIR', description: 'with --backing: directory backing files may resolve into' },
  { name: 'data-file', type: 'boolean', description: "allow a qcow2 image's external data file" },
  ...HTTP_OPTIONS,
];

/** The http options given on the command line (headers are checked for shape, their values never echoed). */
export function httpFromArgs(args: ParsedArgs): HttpOptions {
  const headers: Record<string, string> = {};
  for (const h of list(args, 'header')) {
    const m = /^([A-Za-z0-9!#$%&'*+.^_`|~-]+):\s*(.*)$/.exec(h);
    if (!m) throw new ImageError('usage', "--header takes 'NAME: VALUE' (the value is not shown here)");
    headers[m[1]!] = m[2]!;
  }
  return { headers, caFile: str(args, 'ca-file'), noRanges: flag(args, 'no-ranges') };
}

export const PROGRESS_OPTIONS: OptionSpec[] = [
  { name: 'show-progress', short: 'p', type: 'boolean', description: 'show progress (a bar on a terminal)' },
  { name: 'progress', type: 'string', valueName: 'MODE', description: "progress output: 'bar', 'json' (one JSON object per line on stderr) or 'none'" },
];

export const FORCE_OPTION: OptionSpec = { name: 'force', type: 'boolean', description: 'overwrite an existing output' };

export function progressFromArgs(args: ParsedArgs, ctx: CliContext): Progress {
  const mode = (str(args, 'progress') as ProgressMode | undefined) ?? (flag(args, 'show-progress') ? 'bar' : 'none');
  if (!['bar', 'json', 'none'].includes(mode)) throw new ImageError('usage', `--progress must be bar, json or none, not '${mode}'`);
  return makeProgress(mode, ctx.stderr as NodeJS.WritableStream & { isTTY?: boolean });
}

/** A stand-in backing image for metadata-only opens: its reads fail with a clear message. */
function missingBacking(name: string, path: string): Image {
  const fail = async (): Promise<never> => {
    throw new ImageError('unsupported', `${path} has a backing file '${escapeLine(name)}'; pass --backing to read through it`, {
      path,
      field: 'backing_file',
      value: name,
    });
  };
  return {
    format: 'missing',
    size: Number.MAX_SAFE_INTEGER,
    readOnly: true,
    read: fail,
    write: fail,
    writeZeroes: fail,
    status: fail,
    flush: async () => {},
    close: async () => {},
    info: async (): Promise<ImageInfo> => ({ format: 'missing', 'virtual-size': 0 }),
  };
}

/** How commands report an image's warnings: once each, on stderr, escaped (the text holds values from the image). */
export function printWarning(message: string): void {
  process.stderr.write(`imgtool: warning: ${escapeLine(message)}\n`);
}

/**
 * Open an image from CLI arguments. With `metadataOnly` (info), an image with
 * a backing file opens without following it; its data reads fail clearly.
 * Warnings about the image (and its backing chain) go to `warn`, by default
 * printed on stderr as they are found.
 */
export async function openFromArgs(
  path: string,
  args: ParsedArgs,
  opts: { writable?: boolean; metadataOnly?: boolean; warn?: (message: string) => void } = {},
): Promise<OpenedImage> {
  const warn = opts.warn ?? printWarning;
  if (path === '-') {
    // Standard input: a file redirect is read in place, a pipe is spooled first.
    if (opts.writable) throw new ImageError('usage', 'standard input cannot be opened for writing');
    return openImageOn(await openNamedSource('-'), '-', { format: str(args, 'format'), disk: diskFromArgs(args), warn }, async (req) => missingBacking(req.name, '-'));
  }
  const backing = flag(args, 'backing') ? (str(args, 'backing-dir') ?? true) : false;
  if (!backing && str(args, 'backing-dir')) throw new ImageError('usage', '--backing-dir needs --backing');
  if (opts.metadataOnly && !backing) {
    // Route through openImage with an opener that never touches the file system.
    return openImageWith(path, { format: str(args, 'format'), disk: diskFromArgs(args), writable: opts.writable, dataFile: flag(args, 'data-file'), warn, http: httpFromArgs(args) }, async (req) =>
      missingBacking(req.name, path),
    );
  }
  return openImage(path, {
    warn,
    http: httpFromArgs(args),
    format: str(args, 'format'),
    disk: diskFromArgs(args),
    writable: opts.writable,
    backing,
    dataFile: flag(args, 'data-file'),
  });
}
