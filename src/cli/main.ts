#!/usr/bin/env node
/**
 * imgtool's command-line entry. Errors print one line (`imgtool: ...`) and
 * exit with the code for their kind (see EXIT_CODES in core/errors.ts);
 * stack traces only with --debug. Ctrl-C and SIGTERM remove partial outputs.
 *
 * Text that reaches the terminal is escaped (core/escape.ts): the error line
 * as one line, everything else written as strings through `terminalSafe`.
 *
 * Ending: the process exits as soon as the command is done and its output
 * has drained, whatever handles (a worker, a timer) might still be open; a
 * signal always ends it, by re-raising the signal with its default action
 * after clean-up, which works even when a thread of libuv's pool is stuck in
 * a system call (process.exit would wait for that thread forever).
 */

import { COMMAND_INDEX, type CommandEntry } from './commands/index.js';
import { commandHelp, parseCommandArgs, type CliContext } from './command.js';
import { EXIT_CODES, ImageError } from '../core/errors.js';
import { cleanupPendingOutputs } from '../core/output.js';
import { escapeLine, terminalSafe } from '../core/escape.js';
import { setDebugSink } from '../core/debug.js';
import { lazyStdio } from './stdio.js';

const VERSION = '0.1.0';

function mainHelp(): string {
  const width = Math.max(...COMMAND_INDEX.map((c) => c.name.length)) + 2;
  return [
    'usage: imgtool COMMAND [options] ...',
    '',
    'Disk-image conversion and partitioning: raw, qcow, qcow2, VDI; Xen single-filesystem images to bootable KVM disks.',
    '',
    'commands:',
    ...COMMAND_INDEX.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    '',
    "Run 'imgtool COMMAND --help' for a command's options.",
    '',
  ].join('\n');
}

/** Find the command named by the leading words of argv (longest match: `part list` before `part`). */
function findCommand(argv: string[]): { entry: CommandEntry; rest: string[] } | undefined {
  let best: { entry: CommandEntry; rest: string[] } | undefined;
  for (const entry of COMMAND_INDEX) {
    const words = entry.name.split(' ');
    if (words.every((w, i) => argv[i] === w) && (!best || words.length > best.entry.name.split(' ').length)) {
      best = { entry, rest: argv.slice(words.length) };
    }
  }
  return best;
}

export async function main(argv: string[], ctx: CliContext): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    const topic = argv[0] === 'help' ? findCommand(argv.slice(1)) : undefined;
    ctx.stdout.write(topic ? commandHelp(await topic.entry.load()) : mainHelp());
    return argv.length === 0 ? 2 : 0;
  }
  if (argv[0] === '--version' || argv[0] === '-V') {
    ctx.stdout.write(`imgtool ${VERSION}\n`);
    return 0;
  }
  const found = findCommand(argv);
  if (!found) {
    // A group name alone (`imgtool part`) lists its subcommands.
    const group = COMMAND_INDEX.filter((c) => c.name.startsWith(argv[0] + ' '));
    if (group.length) {
      ctx.stderr.write(`usage: imgtool ${argv[0]} SUBCOMMAND ...\n\n${group.map((c) => `  ${c.name.padEnd(16)}${c.summary}`).join('\n')}\n`);
      return EXIT_CODES.usage;
    }
    throw new ImageError('usage', `unknown command '${argv[0]}' (see 'imgtool --help')`);
  }
  const spec = await found.entry.load();
  const args = parseCommandArgs(spec, found.rest);
  if (args.values.help) {
    ctx.stdout.write(commandHelp(spec));
    return 0;
  }
  return spec.run(args, ctx);
}

/**
 * Resolve once everything written to `stream` has been handed to the OS
 * (pipes are asynchronous in Node). An empty write's callback runs after all
 * earlier writes; waiting for 'drain' would hang when no write ever filled
 * the buffer, leaving the (top-level awaited) command unsettled: exit 13.
 */
function drained(stream: NodeJS.WriteStream): Promise<void> {
  if (stream.destroyed || !stream.writable) return Promise.resolve();
  return new Promise((resolve) => {
    stream.once('error', () => resolve());
    stream.write('', () => resolve());
  });
}

/** Clean up, say why, and die by the signal itself (the shell shows 128 + its number: 130, 143). */
function endBySignal(sig: NodeJS.Signals): void {
  cleanupPendingOutputs();
  try {
    process.stderr.write(`\nimgtool: interrupted (${sig}); partial output removed\n`);
  } catch {
    /* a closed terminal: nothing to say it on */
  }
  process.removeAllListeners(sig); // back to the default action
  process.kill(process.pid, sig);
}

/** Run the command line in this process (the bin entry and `node dist/cli/main.js`). */
export async function cli(): Promise<void> {
  const argv = process.argv.slice(2);
  const debug = argv.includes('--debug');
  // A closed pipe on stdout (imgtool ... | head) is not an error worth a trace.
  const epipe = () => {
    cleanupPendingOutputs();
    process.exit(141);
  };
  const out = lazyStdio(1, {
    onEpipe: epipe,
    onMade: (s) =>
      s.on('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'EPIPE') epipe();
      }),
  });
  const errOut = lazyStdio(2, { onEpipe: () => {} });
  const ctx: CliContext = {
    stdout: terminalSafe(out.stream),
    stderr: terminalSafe(errOut.stream),
    // Asked only by commands that may draw a progress bar.
    get isTTY() {
      return !!errOut.stream.isTTY;
    },
    debug,
  };
  if (debug) {
    setDebugSink((line) => ctx.stderr.write(line));
    // Stack traces name the TypeScript lines (source maps); off otherwise: it costs start-up.
    // (The bundle's entry, bin.ts, turns them on before anything else is loaded.)
    process.setSourceMapsEnabled(true);
  }
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, endBySignal);
  let code: number;
  try {
    code = await main(argv, ctx);
  } catch (e) {
    cleanupPendingOutputs();
    if (e instanceof ImageError) {
      ctx.stderr.write(`imgtool: ${escapeLine(e.describe())}\n`);
      if (debug) ctx.stderr.write(`${e.stack}\n`);
      code = EXIT_CODES[e.kind];
    } else {
      const err = e as Error;
      ctx.stderr.write(`imgtool: internal error: ${escapeLine(err?.message ?? String(e))}\n`);
      if (debug) ctx.stderr.write(`${err?.stack}\n`);
      else ctx.stderr.write('imgtool: run again with --debug for details\n');
      code = EXIT_CODES.internal;
    }
  }
  // Exit now: a handle left open somewhere (a worker, a timer) must not keep
  // a finished command alive. Wait only for our own output to drain.
  await Promise.all([out.made(), errOut.made()].map((s) => (s ? drained(s) : undefined)));
  process.exit(code);
}

// Run when executed directly (the bundle dist/bin/main.js, or `node dist/cli/main.js`), not when imported by tests.
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
