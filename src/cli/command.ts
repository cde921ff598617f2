/**
 * How a CLI command is declared. Commands are thin: parse, call the library,
 * print (human text, or JSON with `--output json`). Parsing uses Node's
 * util.parseArgs; help text is generated from the same declarations, so
 * `imgtool COMMAND --help` always lists every option.
 */

import { parseArgs } from 'node:util';
import { ImageError } from '../core/errors.js';
import { escapeLine } from '../core/escape.js';

export interface OptionSpec {
  /** Long name without dashes: `format` for --format. */
  name: string;
  /** Single-letter short form without dash: `f` for -f. */
  short?: string;
  type: 'boolean' | 'string';
  multiple?: boolean;
  /** Shown in help: `-f, --format FMT`. */
  valueName?: string;
  description: string;
  default?: string | boolean;
}

export interface CliContext {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** True when standard error is a terminal (progress bars). */
  isTTY: boolean;
  debug: boolean;
}

export interface ParsedArgs {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

export interface CommandSpec {
  /** `convert`, or `part list` for a subcommand. */
  name: string;
  summary: string;
  /** One usage line after `imgtool `, e.g. `convert [options] SRC DST`. */
  usage: string;
  /** Paragraphs printed after the option list (examples, exit codes). */
  details?: string;
  options: OptionSpec[];
  positionals?: { min: number; max: number };
  /**
   * Rewrite raw arguments before parsing (e.g. fsck's `-fn` = force + -n,
   * where `-f` otherwise names the image format).
   */
  preprocess?: (argv: string[]) => string[];
  run(args: ParsedArgs, ctx: CliContext): Promise<number>;
}

/** Options every command accepts. */
export const COMMON_OPTIONS: OptionSpec[] = [
  { name: 'help', short: 'h', type: 'boolean', description: 'show this help' },
  { name: 'debug', type: 'boolean', description: 'print stack traces on errors' },
];

export function parseCommandArgs(spec: CommandSpec, argv: string[]): ParsedArgs {
  const options: Record<string, { type: 'boolean' | 'string'; short?: string; multiple?: boolean }> = {};
  for (const o of [...spec.options, ...COMMON_OPTIONS]) {
    options[o.name] = { type: o.type, ...(o.short ? { short: o.short } : {}), ...(o.multiple ? { multiple: true } : {}) };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: spec.preprocess ? spec.preprocess(argv) : argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new ImageError('usage', `${spec.name}: ${(e as Error).message.replace(/\. To specify a positional.*$/s, '')}`);
  }
  const values = parsed.values as ParsedArgs['values'];
  for (const o of spec.options) if (values[o.name] === undefined && o.default !== undefined) values[o.name] = o.default;
  if (!values.help && spec.positionals) {
    const n = parsed.positionals.length;
    if (n < spec.positionals.min || n > spec.positionals.max) {
      throw new ImageError('usage', `usage: imgtool ${spec.usage}`);
    }
  }
  return { values, positionals: parsed.positionals };
}

export function commandHelp(spec: CommandSpec): string {
  const lines = [`usage: imgtool ${spec.usage}`, '', spec.summary, '', 'options:'];
  const all = [...spec.options, ...COMMON_OPTIONS];
  const left = all.map((o) => {
    const long = `--${o.name}${o.type === 'string' ? ` ${o.valueName ?? 'VALUE'}` : ''}`;
    return o.short ? `-${o.short}, ${long}` : `    ${long}`;
  });
  const width = Math.min(34, Math.max(...left.map((l) => l.length)) + 2);
  all.forEach((o, i) => {
    const l = left[i]!;
    const desc = o.description + (o.multiple ? ' (repeatable)' : '') + (o.default !== undefined && o.default !== false ? ` (default: ${o.default})` : '');
    lines.push(l.length + 2 > width ? `  ${l}\n  ${' '.repeat(width)}${desc}` : `  ${l.padEnd(width)}${desc}`);
  });
  if (spec.details) lines.push('', spec.details.trimEnd());
  return lines.join('\n') + '\n';
}

/** A string option's value (undefined when absent). */
export function str(args: ParsedArgs, name: string): string | undefined {
  const v = args.values[name];
  if (Array.isArray(v)) return v[v.length - 1];
  return typeof v === 'string' ? v : undefined;
}

export function list(args: ParsedArgs, name: string): string[] {
  const v = args.values[name];
  if (Array.isArray(v)) return v;
  return typeof v === 'string' ? [v] : [];
}

export function flag(args: ParsedArgs, name: string): boolean {
  return args.values[name] === true;
}

/** `--output json|human` shared by every reporting command. */
export const OUTPUT_OPTION: OptionSpec = {
  name: 'output',
  type: 'string',
  valueName: 'FMT',
  description: "report format: 'human' or 'json'",
  default: 'human',
};

export function wantsJson(args: ParsedArgs): boolean {
  const o = str(args, 'output') ?? 'human';
  if (o !== 'json' && o !== 'human') throw new ImageError('usage', `--output must be 'human' or 'json', not '${o}'`);
  return o === 'json';
}

export function printJson(ctx: CliContext, value: unknown): void {
  ctx.stdout.write(JSON.stringify(value, null, 4) + '\n');
}

/**
 * Print a warning (or another note) on standard error as one line. The text
 * may carry strings from an image, a guest or a config: it is escaped as one
 * line, so a name holding a newline cannot forge a second message.
 */
export function warn(ctx: CliContext, message: string, label: 'warning' | 'hint' | 'note' = 'warning'): void {
  ctx.stderr.write(`imgtool: ${label}: ${escapeLine(message)}\n`);
}
