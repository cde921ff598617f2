/**
 * qcow (v1) compressed clusters: raw deflate (no zlib header), window of
 * 2^12 bytes (qemu block/qcow.c uses deflateInit2(..., -12, 9)). qemu
 * inflates with a 4 KiB window, so we must never compress with a larger one.
 * memLevel only sizes the compressor's own tables, not the stream format: 8
 * (zlib's default) sets up a third faster than qemu's 9 for 4 KiB clusters.
 *
 * Node's async zlib runs in the libuv thread pool, so concurrent calls
 * compress in parallel. A small gate keeps at most one compression per core
 * in flight: hundreds of simultaneous zlib states only churn memory, and the
 * pool's other threads stay free for file I/O.
 */

import * as os from 'node:os';
import * as zlib from 'node:zlib';
import { promisify } from 'node:util';

const deflateRaw = promisify(zlib.deflateRaw) as (buf: Uint8Array, opts: zlib.ZlibOptions) => Promise<Buffer>;
const inflateRaw = promisify(zlib.inflateRaw) as (buf: Uint8Array, opts: zlib.ZlibOptions) => Promise<Buffer>;

const DEFLATE_OPTIONS: zlib.ZlibOptions = {
  level: zlib.constants.Z_DEFAULT_COMPRESSION,
  windowBits: 12,
  memLevel: 8,
  strategy: zlib.constants.Z_DEFAULT_STRATEGY,
};

const MAX_IN_FLIGHT = Math.max(1, Math.min(4, os.availableParallelism()));
let inFlight = 0;
const waiting: Array<() => void> = [];

async function gated<T>(fn: () => Promise<T>): Promise<T> {
  if (inFlight >= MAX_IN_FLIGHT) await new Promise<void>((r) => waiting.push(r));
  else inFlight++;
  try {
    return await fn();
  } finally {
    const next = waiting.shift();
    if (next) next(); // hand the slot over
    else inFlight--;
  }
}

/** Compressed bytes, or undefined when compression does not make the cluster smaller. */
export async function compressCluster(cluster: Uint8Array): Promise<Uint8Array | undefined> {
  const out = await gated(() => deflateRaw(cluster, DEFLATE_OPTIONS));
  return out.length < cluster.length ? out : undefined;
}

/**
 * Inflate one cluster. Returns undefined when the data is not a deflate
 * stream that yields exactly `clusterSize` bytes (qemu accepts a stream that
 * fills the cluster even without its end marker, and so do we).
 */
export async function decompressCluster(data: Uint8Array, clusterSize: number): Promise<Uint8Array | undefined> {
  try {
    const out = await inflateRaw(data, {
      windowBits: 15,
      finishFlush: zlib.constants.Z_SYNC_FLUSH,
      maxOutputLength: clusterSize,
    });
    return out.length === clusterSize ? out : undefined;
  } catch {
    return undefined;
  }
}
