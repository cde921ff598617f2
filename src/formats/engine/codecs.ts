/**
 * Cluster compression for every mapped format, on one bounded pool: at most
 * SLOTS (de)compressions run on libuv's thread pool at once; the rest wait.
 *
 *   deflate  raw deflate, no header, 4 KiB window (qcow, qcow2 "zlib")
 *   zlib     RFC 1950 zlib stream (VMDK streamOptimized grains)
 *
 * Decompressed output is bounded by the cluster size: hostile data never
 * chooses an allocation size.
 */

import * as zlib from 'node:zlib';
import { availableParallelism } from 'node:os';
import { ImageError } from '../../core/errors.js';
import type { Codec } from './mapping.js';

const SLOTS = Math.max(2, Math.min(8, availableParallelism()));
let busy = 0;
const queue: Array<() => void> = [];

async function inSlot<T>(fn: () => Promise<T>): Promise<T> {
  if (busy >= SLOTS) await new Promise<void>((r) => queue.push(r));
  busy++;
  try {
    return await fn();
  } finally {
    busy--;
    queue.shift()?.();
  }
}

function corrupt(format: string, codec: Codec, host: number, why: string, cause?: unknown): ImageError {
  return new ImageError(
    'corrupt',
    `${format}: compressed cluster at host offset ${host}: ${codec} data ${why}`,
    { format, field: 'compressed cluster', offset: host, value: host },
    { cause },
  );
}

/** Decode one cluster: at most `clusterSize` bytes come out (fewer when the stream ends early). */
export function decompressCluster(
  format: string,
  codec: Codec,
  stored: Uint8Array,
  clusterSize: number,
  host: number,
): Promise<Uint8Array> {
  if (codec === 'zstd') {
    return Promise.reject(new ImageError('unsupported', `${format}: zstd clusters are not handled by the shared engine yet`, { format }));
  }
  const opts: zlib.ZlibOptions = {
    maxOutputLength: clusterSize,
    finishFlush: zlib.constants.Z_SYNC_FLUSH,
    chunkSize: Math.max(1024, clusterSize),
  };
  return inSlot(
    () =>
      new Promise<Uint8Array>((resolve, reject) => {
        const done = (err: Error | null, out: Buffer): void => {
          if (err) reject(corrupt(format, codec, host, `is invalid (${err.message})`, err));
          else resolve(out);
        };
        if (codec === 'zlib') zlib.inflate(stored, opts, done);
        else zlib.inflateRaw(stored, opts, done);
      }),
  );
}

/** Encode one cluster (level 6, as qemu and VMware write). */
export function compressCluster(codec: Codec, data: Uint8Array): Promise<Uint8Array> {
  if (codec === 'zstd') return Promise.reject(new ImageError('unsupported', 'zstd compression is not handled by the shared engine yet'));
  return inSlot(
    () =>
      new Promise<Uint8Array>((resolve, reject) => {
        const done = (err: Error | null, out: Buffer): void => (err ? reject(err) : resolve(out));
        // Raw deflate for qcow and qcow2: qemu inflates it with a 4 KiB window
        // (inflateInit2 with -12), so it must never be written with a larger one.
        const opts: zlib.ZlibOptions = codec === 'deflate' ? { level: 6, windowBits: 12, memLevel: 8, chunkSize: data.length + 1024 } : { level: 6, chunkSize: data.length + 1024 };
        if (codec === 'zlib') zlib.deflate(data, opts, done);
        else zlib.deflateRaw(data, opts, done);
      }),
  );
}
