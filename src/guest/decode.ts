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
 * Running the host tool and the xz decoder are core/decompressor.ts's.
 */

import { Decompress as ZstdDecompress } from 'fzstd';
import { ToolFailed, ToolUnavailable, runFilter, xzDecompress } from '../core/decompressor.js';
import { ImageError } from '../core/errors.js';

export { ToolUnavailable };

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
  try {
    yield* runFilter(tool, args, [data], { timeout: TOOL_TIMEOUT });
  } catch (e) {
    if (!(e instanceof ToolFailed)) throw e;
    if (!e.exit.produced) throw new ToolUnavailable(e.message, tool, false, e);
    if (exact) throw new ImageError('invalid-format', `${codec}: ${e.message}`, { format: codec });
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

/** One .xz stream (or several, concatenated) in process, through xz-decompress. */
export function xzDecode(data: Uint8Array): AsyncGenerator<Uint8Array> {
  return xzDecompress([data]);
}
