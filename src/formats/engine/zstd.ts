/**
 * zstd for compressed clusters (qcow2) through the reference library (libzstd, compiled
 * to WebAssembly by @bokuweb/zstd-wasm).
 *
 * The package exports only libzstd's one-shot calls (ZSTD_compress,
 * ZSTD_decompress, ZSTD_isError, ZSTD_getFrameContentSize) plus malloc/free.
 * Its convenience wrappers size their output from the frame header (a frame
 * without a content size gets a fixed 1 MiB; a hostile one can ask for
 * gigabytes) and decode whole inputs only, so we call the library directly:
 * the output capacity is always the room left in the cluster, and the input
 * is cut at frame boundaries by the caller (codecs.ts), which is what
 * qemu's streaming loop (ZSTD_decompressStream) consumes.
 */

import { createRequire } from 'node:module';
import * as path from 'node:path';

interface ZstdModule {
  HEAPU8: Uint8Array;
  _malloc(n: number): number;
  _free(p: number): void;
  _ZSTD_decompress(dst: number, cap: number, src: number, n: number): number;
  _ZSTD_compress(dst: number, cap: number, src: number, n: number, level: number): number;
  _ZSTD_compressBound(n: number): number;
  _ZSTD_isError(code: number): number;
}

const require = createRequire(import.meta.url);
let ready: Promise<ZstdModule> | undefined;

/** libzstd, initialised once per process. */
function zstd(): Promise<ZstdModule> {
  ready ??= (async () => {
    const main = require.resolve('@bokuweb/zstd-wasm');
    const pkg = require(main) as { init(): Promise<void> };
    await pkg.init();
    // The module object the package's own wrappers use (the same CommonJS
    // instance, loaded by path: the package's "exports" lists only its entry).
    return (require(path.join(path.dirname(main), 'module.js')) as { Module: ZstdModule }).Module;
  })();
  return ready;
}

/** libzstd's error codes (zstd_errors.h) that a decoder can return, by number. */
const ERRORS: Record<number, string> = {
  1: 'generic error',
  10: 'unknown frame descriptor',
  12: 'version not supported',
  14: 'unsupported frame parameter',
  16: 'frame requires too much memory',
  20: 'data corruption detected',
  22: 'checksum mismatch',
  24: 'literals header is wrong',
  30: 'dictionary is corrupted',
  32: 'dictionary mismatch',
  44: 'tableLog requires too much memory',
  46: 'unsupported max symbol value (too large)',
  48: 'specified maxSymbolValue is too small',
  64: 'allocation error',
  70: 'destination buffer is too small',
  72: 'source size is wrong',
};

export class ZstdError extends Error {
  constructor(readonly code: number) {
    super(`libzstd: ${ERRORS[code] ?? `error ${code}`}`);
  }
}

/** Run `fn` with `bytes` copied into wasm memory and `cap` bytes of output room; free both after. */
function withBuffers<T>(m: ZstdModule, input: Uint8Array, cap: number, fn: (src: number, dst: number) => T): T {
  const src = m._malloc(Math.max(1, input.length));
  const dst = src ? m._malloc(Math.max(1, cap)) : 0;
  try {
    if (!src || !dst) throw new ZstdError(64);
    m.HEAPU8.set(input, src);
    return fn(src, dst);
  } finally {
    if (dst) m._free(dst);
    if (src) m._free(src);
  }
}

function check(m: ZstdModule, ret: number): number {
  if (m._ZSTD_isError(ret)) throw new ZstdError(-(ret | 0));
  return ret >>> 0;
}

/**
 * Decode exactly one whole zstd frame (`frame` holds it and nothing else)
 * into `out`, which is the room left in the cluster. Returns the bytes
 * produced; throws ZstdError when libzstd rejects the frame, including a
 * frame that would produce more than `out` holds.
 */
export async function zstdDecodeFrame(frame: Uint8Array, out: Uint8Array): Promise<number> {
  const m = await zstd();
  return withBuffers(m, frame, out.length, (src, dst) => {
    const n = check(m, m._ZSTD_decompress(dst, out.length, src, frame.length));
    out.set(m.HEAPU8.subarray(dst, dst + n));
    return n;
  });
}

/** One zstd frame of `input` (content size recorded in the header), or undefined when it is not smaller than `limit` bytes. */
export async function zstdEncode(input: Uint8Array, limit: number, level = 3): Promise<Uint8Array | undefined> {
  const m = await zstd();
  const cap = m._ZSTD_compressBound(input.length);
  return withBuffers(m, input, cap, (src, dst) => {
    const n = check(m, m._ZSTD_compress(dst, cap, src, input.length, level));
    return n < limit ? m.HEAPU8.slice(dst, dst + n) : undefined;
  });
}
