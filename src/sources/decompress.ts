/**
 * Compressed inputs: an image inside a gzip, xz, zstd or bzip2 wrapper
 * (`disk.img.xz`, `disk.qcow2.gz`, `disk.vmdk.zst`) is recognised by its magic
 * and decompressed on the fly; the inner image is then probed as usual.
 *
 * Decoders, each of which checks the integrity its format carries (a
 * corrupt or truncated stream is an error, never wrong bytes):
 *   gzip   node:zlib (CRC-32 and length of every member)
 *   xz     xz-decompress (xz-embedded in WebAssembly; block checks)
 *   zstd   the host's `zstd -dc` (the reference decoder; it verifies the
 *          frames' content checksums, which the pure-JS fzstd does not: a
 *          corrupted stream decodes silently wrong with it)
 *   bzip2  the host's `bzip2 -dc` (block CRCs)
 * The host decoders come with Debian's zstd and bzip2 packages (npm run
 * setup installs them); a missing one is a clear error naming the package.
 *
 * A decompression bomb cannot fill the disk: see `spoolStream`'s cap, which
 * the caller derives from the inner image's declared size.
 */

import { createRequire } from 'node:module';
import { ToolFailed, ToolUnavailable, runFilter, xzDecompress } from '../core/decompressor.js';
import { ImageError } from '../core/errors.js';

export type Wrapper = 'gzip' | 'xz' | 'zstd' | 'bzip2';

/** The compression wrapper whose magic starts `head`, if any. */
export function detectWrapper(head: Uint8Array): Wrapper | undefined {
  const b = head;
  if (b.length >= 3 && b[0] === 0x1f && b[1] === 0x8b && b[2] === 0x08) return 'gzip';
  if (b.length >= 6 && b[0] === 0xfd && b[1] === 0x37 && b[2] === 0x7a && b[3] === 0x58 && b[4] === 0x5a && b[5] === 0x00) return 'xz';
  if (b.length >= 4 && b[0] === 0x28 && b[1] === 0xb5 && b[2] === 0x2f && b[3] === 0xfd) return 'zstd';
  // "BZh" + block size digit + the first block's magic (pi) or the end-of-stream magic (sqrt pi).
  if (b.length >= 10 && b[0] === 0x42 && b[1] === 0x5a && b[2] === 0x68 && b[3]! >= 0x31 && b[3]! <= 0x39) {
    const m = Buffer.from(b.subarray(4, 10)).toString('hex');
    if (m === '314159265359' || m === '177245385090') return 'bzip2';
  }
  return undefined;
}

/**
 * The size the wrapper itself declares for its content, when its header says
 * (a zstd frame's content size). gzip's ISIZE is only the size modulo 4 GiB
 * and sits at the end; xz's index is at the end too: neither helps a stream.
 */
export function declaredContentSize(kind: Wrapper, head: Uint8Array): number | undefined {
  if (kind !== 'zstd' || head.length < 6) return undefined;
  const fhd = head[4]!;
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const dictIdFlag = fhd & 3;
  const fcsBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  if (fcsBytes === 0) return undefined;
  const at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][dictIdFlag]!;
  if (head.length < at + fcsBytes) return undefined;
  let v = 0n;
  for (let i = fcsBytes - 1; i >= 0; i--) v = (v << 8n) | BigInt(head[at + i]!);
  if (fcsBytes === 2) v += 256n;
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : Number.MAX_SAFE_INTEGER;
}

function corrupt(kind: Wrapper, why: string): ImageError {
  return new ImageError('invalid-format', `${kind} stream is corrupt or truncated: ${why}`, { format: kind });
}

/** Decompress `input` (the whole wrapped stream) as a stream of inner bytes. */
export async function* decompress(kind: Wrapper, input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  switch (kind) {
    case 'gzip':
      yield* gunzip(input);
      return;
    case 'xz':
      yield* xz(input);
      return;
    case 'zstd':
      yield* hostDecoder(kind, 'zstd', ['-dc', '-q'], 'zstd', input);
      return;
    case 'bzip2':
      yield* hostDecoder(kind, 'bzip2', ['-dc'], 'bzip2', input);
      return;
  }
}

/** node:zlib's gunzip (loaded on first use: most commands never need it). */
async function* gunzip(input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const require = createRequire(import.meta.url);
  const { Readable } = require('node:stream') as typeof import('node:stream');
  const { createGunzip } = require('node:zlib') as typeof import('node:zlib');
  const transform = createGunzip();
  const source = Readable.from(input);
  source.on('error', (e) => transform.destroy(e));
  source.pipe(transform);
  try {
    for await (const chunk of transform as AsyncIterable<Uint8Array>) yield chunk;
  } catch (e) {
    if (e instanceof ImageError) throw e;
    throw corrupt('gzip', (e as Error).message);
  } finally {
    source.destroy();
  }
}

/** xz-decompress; a bad stream is reported as the other wrappers' are. */
async function* xz(input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  try {
    yield* xzDecompress(input);
  } catch (e) {
    if (e instanceof ImageError && e.kind === 'invalid-format' && e.context.format === 'xz') throw corrupt('xz', e.message.replace(/^xz: /, ''));
    throw e;
  }
}

/** The host's `cmd` (from Debian package `pkg`) as the decoder. */
async function* hostDecoder(kind: Wrapper, cmd: string, args: string[], pkg: string, input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  try {
    yield* runFilter(cmd, args, input);
  } catch (e) {
    if (e instanceof ToolUnavailable && e.missing) {
      throw new ImageError('unsupported', `${kind} input needs the host's '${cmd}' (Debian package ${pkg}); install it or decompress first`);
    }
    if (e instanceof ToolUnavailable) throw new ImageError('unsupported', `${kind} input: ${e.message}`, {}, { cause: e });
    if (e instanceof ToolFailed) throw corrupt(kind, e.reason);
    throw e;
  }
}
