#!/usr/bin/env node
/**
 * imgtool's command-line entry. Errors print one line (`imgtool: ...`) and
 * exit with the code for their kind (see EXIT_CODES in core/errors.ts);
 * stack traces only with --debug. Ctrl-C and SIGTERM remove partial outputs.
 */

import { COMMANDS } from './commands/index.js';
import { commandHelp, parseCommandArgs, type CliContext, type CommandSpec } from './command.js';
import { EXIT_CODES, ImageError } from '../core/errors.js';
import { cleanupPendingOutputs } from '../core/output.js';

const VERSION = '0.1.0';

function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length)) + 2;
  return [
    'usage: imgtool COMMAND [options] ...',
    '',
    'Disk-image conversion and partitioning: raw, qcow, qcow2, VDI; Xen single-filesystem images to bootable KVM disks.',
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    '',
    "Run 'imgtool COMMAND --help' for a command's options.",
    '',
  ].join('\n');
}

/** Find the command named by the leading words of argv (longest match: `part list` before `part`). */
function findCommand(argv: string[]): { spec: CommandSpec; rest: string[] } | undefined {
  let best: { spec: CommandSpec; rest: string[] } | undefined;
  for (const spec of COMMANDS) {
    const words = spec.name.split(' ');
    if (words.every((w, i) => argv[i] === w) && (!best || words.length > best.spec.name.split(' ').length)) {
      best = { spec, rest: argv.slice(words.length) };
    }
  }
  return best;
}

export async function main(argv: string[], ctx: CliContext): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    const topic = argv[0] === 'help' ? findCommand(argv.slice(1)) : undefined;
    ctx.stdout.write(topic ? commandHelp(topic.spec) : mainHelp());
    return argv.length === 0 ? 2 : 0;
  }
  if (argv[0] === '--version' || argv[0] === '-V') {
    ctx.stdout.write(`imgtool ${VERSION}\n`);
    return 0;
  }
  const found = findCommand(argv);
  if (!found) {
    // A group name alone (`imgtool part`) lists its subcommands.
    const group = COMMANDS.filter((c) => c.name.startsWith(argv[0] + ' '));
    if (group.length) {
      ctx.stderr.write(`usage: imgtool ${argv[0]} SUBCOMMAND ...\n\n${group.map((c) => `  ${c.name.padEnd(16)}${c.summary}`).join('\n')}\n`);
      return EXIT_CODES.usage;
    }
    throw new ImageError('usage', `unknown command '${argv[0]}' (see 'imgtool --help')`);
  }
  const args = parseCommandArgs(found.spec, found.rest);
  if (args.values.help) {
    ctx.stdout.write(commandHelp(found.spec));
    return 0;
  }
  return found.spec.run(args, ctx);
}

async function cli(): Promise<void> {
  const argv = process.argv.slice(2);
  const debug = argv.includes('--debug');
  const ctx: CliContext = { stdout: process.stdout, stderr: process.stderr, isTTY: !!process.stderr.isTTY, debug };
  const onSignal = (sig: NodeJS.Signals) => {
    cleanupPendingOutputs();
    process.stderr.write(`\nimgtool: interrupted (${sig}); partial output removed\n`);
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  // A closed pipe on stdout (imgtool ... | head) is not an error worth a trace.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') {
      cleanupPendingOutputs();
      process.exit(141);
    }
  });
  let code: number;
  try {
    code = await main(argv, ctx);
  } catch (e) {
    cleanupPendingOutputs();
    if (e instanceof ImageError) {
      process.stderr.write(`imgtool: ${e.describe()}\n`);
      if (debug) process.stderr.write(`${e.stack}\n`);
      code = EXIT_CODES[e.kind];
    } else {
      const err = e as Error;
      process.stderr.write(`imgtool: internal error: ${err?.message ?? String(e)}\n`);
      if (debug) process.stderr.write(`${err?.stack}\n`);
      else process.stderr.write('imgtool: run again with --debug for details\n');
      code = EXIT_CODES.internal;
    }
  }
  process.exitCode = code;
}

// Run when executed directly (bin or `node dist/cli/main.js`), not when imported by tests.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
const self = fileURLToPath(import.meta.url);
let invoked = process.argv[1] ?? '';
try {
  invoked = realpathSync(invoked);
} catch {
  /* keep */
}
if (invoked === self) void cli();
