/**
 * Decompressing one member of an initramfs as a stream of chunks, so that
 * the caller can read the archive inside as it comes and stop early, and
 * never has to hold the whole decompressed data.
 *
 * Each codec is decoded by the host's tool when it is installed (zstd -dc,
 * xz -dc, ...: native, an order of magnitude faster than anything in
 * process), else in process when we can:
 *
 *   zstd   fzstd (pure JavaScript)
 *   xz     xz-decompress (xz-embedded in WebAssembly: LZMA2 with CRC32,
 *          CRC64 or no check, as the kernel reads; no BCJ filters, no SHA-256)
 *
 * lzma (legacy LZMA-alone), bzip2, lzo and lz4 need the host's tool.
 */

import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { Decompress as ZstdDecompress } from 'fzstd';
import { ImageError } from '../core/errors.js';

/** A codec's host tool could not be used: missing, or it failed before any output. */
export class ToolUnavailable extends Error {}

/** How long a host decompressor may run on one member. */
const TOOL_TIMEOUT = 120_000;
/** Input slice handed to an in-process decoder at a time. */
const SLICE = 1 << 20;

/**
 * Run `tool args` with `data` on its standard input; yields its standard
 * output. Throws ToolUnavailable when it is missing or fails without output.
 * A non-zero exit after output is an error when `exact` (`data` is exactly
 * one member: the tool found it corrupt or truncated); otherwise it is taken
 * for padding after the stream, which runs to the end of the initrd, and
 * what was decoded is kept (the archive reader sees whether it is complete).
 */
export async function* hostDecode(codec: string, tool: string, args: string[], data: Uint8Array, exact: boolean): AsyncGenerator<Uint8Array> {
  const child = spawn(tool, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + String(d)).slice(-2000)));
  const exited = new Promise<{ code: number | null; error?: NodeJS.ErrnoException }>((resolve) => {
    child.on('error', (error: NodeJS.ErrnoException) => resolve({ code: null, error }));
    child.on('close', (code) => resolve({ code }));
  });
  // The tool may stop reading early (an error, or we stopped): its exit says why.
  child.stdin.on('error', () => {});
  child.stdin.end(data);
  const timer = setTimeout(() => child.kill('SIGKILL'), TOOL_TIMEOUT);
  let produced = 0;
  try {
    try {
      for await (const chunk of child.stdout as AsyncIterable<Buffer>) {
        produced += chunk.length;
        yield chunk;
      }
    } catch {
      /* the stream failed (spawn error): the exit status below says why */
    }
    const r = await exited;
    if (r.error) throw new ToolUnavailable(r.error.code === 'ENOENT' ? `'${tool}' is not installed` : `${tool}: ${r.error.message}`);
    const failed = `${tool} ${args.join(' ')} failed: ${stderr.trim() || `exit ${r.code ?? 'by a signal'}`}`;
    if (r.code !== 0 && !produced) throw new ToolUnavailable(failed);
    if (r.code !== 0 && exact) throw new ImageError('invalid-format', `${codec}: ${failed}`, { format: codec });
  } finally {
    clearTimeout(timer);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

/** zstd frames in process (fzstd), fed a slice at a time. */
export async function* zstdDecode(data: Uint8Array): AsyncGenerator<Uint8Array> {
  const out: Uint8Array[] = [];
  const d = new ZstdDecompress((chunk) => out.push(chunk));
  let p = 0;
  do {
    const end = Math.min(p + SLICE, data.length);
    try {
      d.push(data.subarray(p, end), end === data.length);
    } catch (e) {
      throw new ImageError('invalid-format', `zstd: ${(e as Error).message} (in the member's first ${end} bytes)`, { format: 'zstd' });
    }
    p = end;
    yield* out.splice(0);
  } while (p < data.length);
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

/** One .xz stream (or several, concatenated) in process, through xz-decompress. */
export async function* xzDecode(data: Uint8Array): AsyncGenerator<Uint8Array> {
  xzModule ??= createRequire(import.meta.url)('xz-decompress') as XzModule;
  let p = 0;
  const input = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (p >= data.length) return controller.close();
      controller.enqueue(data.subarray(p, Math.min(p + SLICE, data.length)));
      p += SLICE;
    },
  });
  try {
    for await (const chunk of new xzModule.XzReadableStream(input) as unknown as AsyncIterable<Uint8Array>) yield chunk;
  } catch (e) {
    const code = /error code (\d+)/.exec((e as Error).message)?.[1];
    // An empty input fails inside the package (it reads past the end of its input).
    const [what, kind] = code ? (XZ_ERRORS[Number(code)] ?? [`error ${code}`, 'invalid-format']) : XZ_ERRORS[8]!;
    throw new ImageError(kind, `xz: ${what}`, { format: 'xz', value: code === undefined ? undefined : Number(code) });
  }
}
