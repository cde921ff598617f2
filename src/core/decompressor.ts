/**
 * Decompressors shared by the initramfs reader (guest/decode.ts) and the
 * compressed-input sources (sources/decompress.ts):
 *
 *   runFilter      a host tool that decompresses standard input to standard
 *                  output (`zstd -dc`, `xz -dc`, `bzip2 -dc`, ...), fed from
 *                  an async iterable of chunks and read as one
 *   xzDecompress   .xz in process, through xz-decompress (xz-embedded in
 *                  WebAssembly: LZMA2 with CRC32, CRC64 or no check; no BCJ
 *                  filters, no SHA-256)
 *
 * Both read their input only as fast as their output is consumed (neither
 * side is buffered without bound), and both clean up when the consumer stops
 * early (leaves its loop) or an error happens: the tool is killed and
 * reaped, the input iterator is closed.
 *
 * node:child_process and xz-decompress load on first use: every command
 * loads src/core, and most never decompress anything.
 */

import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { createRequire } from 'node:module';
import type { Writable } from 'node:stream';
import { ImageError } from './errors.js';

/** How much of a tool's standard error is kept for the error message (its tail). */
const STDERR_TAIL = 2000;

/** The host tool could not be run at all: `missing` when it is not installed. */
export class ToolUnavailable extends ImageError {
  constructor(
    message: string,
    readonly tool: string,
    readonly missing: boolean,
    cause?: unknown,
  ) {
    super('unsupported', message, {}, { cause });
  }
}

/** How a host tool ended, when it did not succeed. */
export interface ToolExit {
  /** Exit status, or null when it was killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The last STDERR_TAIL characters of its standard error, trimmed. */
  stderr: string;
  /** Bytes it wrote to standard output before it ended. */
  produced: number;
  /** It was killed because it ran past the timeout. */
  timedOut: boolean;
}

/** The host tool ran and failed (non-zero exit, a signal, or the timeout). */
export class ToolFailed extends ImageError {
  constructor(
    readonly tool: string,
    readonly args: readonly string[],
    readonly exit: ToolExit,
    timeout?: number,
  ) {
    super('invalid-format', `${tool} ${args.join(' ')} failed: ${exit.timedOut ? `no result after ${timeout! / 1000} s` : exit.stderr || status(exit)}`);
  }

  /** One line on why: the last line of the tool's standard error, else its exit status. */
  get reason(): string {
    return this.exit.stderr.split('\n').pop()!.trim() || `${this.tool} ${status(this.exit)}`;
  }
}

const status = (e: ToolExit) => (e.code !== null ? `exit ${e.code}` : `killed by ${e.signal ?? 'a signal'}`);

export interface FilterOptions {
  /** Kill the tool (SIGKILL) when it has not finished after this many milliseconds. */
  timeout?: number;
}

type Chunks = AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

let childProcess: typeof import('node:child_process') | undefined;

/**
 * Run `tool args` with `input` on its standard input; yields its standard
 * output as it comes. Throws ToolUnavailable when it cannot be started
 * (`missing` when not installed), ToolFailed when it exits non-zero or is
 * killed (after the output it produced was yielded), and the input's own
 * error when reading `input` fails (the tool is then killed).
 */
export async function* runFilter(tool: string, args: readonly string[], input: Chunks, options: FilterOptions = {}): AsyncGenerator<Uint8Array> {
  childProcess ??= createRequire(import.meta.url)('node:child_process') as typeof import('node:child_process');
  const child: ChildProcessWithoutNullStreams = childProcess.spawn(tool, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + String(d)).slice(-STDERR_TAIL)));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: NodeJS.ErrnoException }>((resolve) => {
    child.once('error', (error: NodeJS.ErrnoException) => resolve({ code: null, signal: null, error }));
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  let timedOut = false;
  const timer =
    options.timeout === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true;
          child.kill('SIGKILL');
        }, options.timeout).unref();

  // The tool may stop reading (it failed, finished, or was killed): a write
  // then fails with EPIPE, which its exit status explains.
  const stdin = child.stdin;
  stdin.on('error', () => {});
  let stop = false;
  let inputFailed: { error: unknown } | undefined;
  const feed = (async () => {
    try {
      for await (const chunk of input) {
        if (stop || stdin.destroyed) break;
        if (!stdin.write(chunk) && !stdin.destroyed) await drained(stdin);
      }
    } catch (error) {
      inputFailed = { error };
      child.kill('SIGKILL');
    } finally {
      stdin.end();
    }
  })();

  const stdout = (child.stdout as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  let produced = 0;
  try {
    for (;;) {
      let r: IteratorResult<Buffer>;
      try {
        r = await stdout.next();
      } catch {
        break; // the pipe failed (the spawn did): the exit below says why
      }
      if (r.done) break;
      produced += r.value.length;
      yield r.value;
    }
    const end = await exited;
    if (inputFailed) throw inputFailed.error;
    if (end.error) {
      const missing = end.error.code === 'ENOENT';
      throw new ToolUnavailable(missing ? `'${tool}' is not installed` : `${tool}: ${end.error.message}`, tool, missing, end.error);
    }
    if (end.code !== 0) throw new ToolFailed(tool, args, { code: end.code, signal: end.signal, stderr: stderr.trim(), produced, timedOut }, options.timeout);
  } finally {
    // Reached early when the consumer stopped or something threw: kill the
    // tool and close its pipes, then wait for it and for the feeder (which
    // closes the input iterator) so nothing outlives this generator.
    clearTimeout(timer);
    stop = true;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    child.stdout.destroy();
    child.stderr.destroy();
    stdin.destroy();
    await feed;
    await exited;
  }
}

/** Resolves once `s` can take more (or is closed: its writes then fail). */
function drained(s: Writable): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.on('drain', done);
    s.on('close', done);
  });
}

/** xz-embedded's error codes (enum xz_ret, xz.h) as xz-decompress reports them. */
const XZ_ERRORS: Record<number, [string, 'unsupported' | 'invalid-format']> = {
  2: ['an integrity check type the decoder does not know', 'unsupported'],
  3: ['out of memory', 'unsupported'],
  4: ['the dictionary is larger than the decoder allows', 'unsupported'],
  5: ['not an xz stream (bad magic bytes), or data after it', 'invalid-format'],
  6: ['unsupported options: a filter other than LZMA2 (such as BCJ) or a SHA-256 check, which the kernel cannot read either', 'unsupported'],
  7: ['corrupt data (a check or a size does not match)', 'invalid-format'],
  8: ['the stream is truncated', 'invalid-format'],
};

interface XzModule {
  XzReadableStream: new (s: ReadableStream<Uint8Array>) => ReadableStream<Uint8Array>;
}
let xzModule: XzModule | undefined;

/**
 * One .xz stream (or several, concatenated) in process. A corrupt, truncated
 * or unsupported stream is an ImageError whose message starts `xz: `; an
 * error reading `input` is thrown as it is.
 */
export async function* xzDecompress(input: Chunks): AsyncGenerator<Uint8Array> {
  xzModule ??= createRequire(import.meta.url)('xz-decompress') as XzModule;
  const chunks = (async function* () {
    yield* input;
  })();
  let inputFailed: { error: unknown } | undefined;
  let exhausted = false;
  const source = new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        let r: IteratorResult<Uint8Array>;
        try {
          r = await chunks.next();
        } catch (error) {
          inputFailed = { error };
          exhausted = true;
          throw error;
        }
        if (r.done) {
          exhausted = true;
          controller.close();
        } else controller.enqueue(r.value);
      },
      async cancel() {
        await chunks.return(undefined);
      },
    },
    { highWaterMark: 0 },
  );
  const reader = new xzModule.XzReadableStream(source).getReader();
  let finished = false;
  try {
    for (;;) {
      let r;
      try {
        r = await reader.read();
      } catch (e) {
        if (inputFailed) throw inputFailed.error;
        throw xzError(e);
      }
      if (r.done) break;
      if (r.value.length) yield r.value;
    }
    finished = true;
  } finally {
    // Cancelling releases the decoder's context (and cancels our source).
    if (!finished) await reader.cancel().catch(() => {});
    // The decoder may stop before its input ends (an error, or the end of
    // the stream): close the input iterator.
    if (!exhausted) await chunks.return(undefined);
  }
}

function xzError(e: unknown): ImageError {
  if (e instanceof ImageError) return e;
  const code = /error code (\d+)/.exec((e as Error).message)?.[1];
  // An empty or cut input fails inside the package (it reads past the end of its input).
  const [what, kind] = code ? (XZ_ERRORS[Number(code)] ?? [`error ${code}`, 'invalid-format']) : XZ_ERRORS[8]!;
  return new ImageError(kind, `xz: ${what}`, { format: 'xz', value: code === undefined ? undefined : Number(code) });
}
