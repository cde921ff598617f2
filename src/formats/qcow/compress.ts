/**
 * qcow (v1) compressed clusters: raw deflate (no zlib header), window of
 * 2^12 bytes, memLevel 9 (qemu block/qcow.c uses deflateInit2(..., -12, 9)).
 * qemu inflates with a 4 KiB window, so we must never compress with a larger
 * one. Node's async zlib runs in the libuv thread pool: concurrent calls
 * compress in parallel.
 */

import * as zlib from 'node:zlib';
import { promisify } from 'node:util';

const deflateRaw = promisify(zlib.deflateRaw) as (buf: Uint8Array, opts: zlib.ZlibOptions) => Promise<Buffer>;
const inflateRaw = promisify(zlib.inflateRaw) as (buf: Uint8Array, opts: zlib.ZlibOptions) => Promise<Buffer>;

const DEFLATE_OPTIONS: zlib.ZlibOptions = {
  level: zlib.constants.Z_DEFAULT_COMPRESSION,
  windowBits: 12,
  memLevel: 9,
  strategy: zlib.constants.Z_DEFAULT_STRATEGY,
};

/** Compressed bytes, or undefined when compression does not make the cluster smaller. */
export async function compressCluster(cluster: Uint8Array): Promise<Uint8Array | undefined> {
  const out = await deflateRaw(cluster, DEFLATE_OPTIONS);
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
