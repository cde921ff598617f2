/**
 * Compressed clusters (qemu docs/interop/qcow2.rst, compression_type; qemu
 * block/qcow2-threads.c behaviour).
 *
 * - deflate ("zlib" in qemu): a raw deflate stream (no zlib header). The
 *   stored bytes run to the end of a 512-byte sector and may be followed by
 *   another cluster's data: decompression stops when it has produced one
 *   cluster. Output is bounded by the cluster size.
 * - zstd: one or more zstd frames, no length prefix; decoding stops when a
 *   full cluster has been produced, trailing bytes are ignored. fzstd decodes
 *   whole inputs, so we walk the frame structure (header, block headers,
 *   checksum) to cut exactly the frames we need, and decode into a
 *   cluster-sized buffer (never letting the frame choose an allocation size).
 *
 * Decompression runs on libuv's thread pool for deflate (async zlib); zstd
 * is synchronous JavaScript.
 */

import * as zlib from 'node:zlib';
import { availableParallelism } from 'node:os';
import { decompress as zstdDecompress } from 'fzstd';
import { ImageError } from '../../core/errors.js';

function corrupt(what: string, offset: number, cause?: unknown): ImageError {
  return new ImageError(
    'corrupt',
    `qcow2: compressed cluster at host offset ${offset}: ${what}`,
    { format: 'qcow2', field: 'compressed cluster descriptor', offset, value: offset },
    { cause },
  );
}

export function inflateCluster(src: Uint8Array, clusterSize: number, hostOffset: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    zlib.inflateRaw(
      src,
      // One output chunk of a whole cluster: one pass through the thread pool.
      { maxOutputLength: clusterSize, finishFlush: zlib.constants.Z_SYNC_FLUSH, chunkSize: Math.max(1024, clusterSize) },
      (err, out) => {
        if (err) return reject(corrupt(`deflate data is invalid (${err.message})`, hostOffset, err));
        if (out.length !== clusterSize) {
          return reject(corrupt(`deflate data decompresses to ${out.length} bytes, not ${clusterSize}`, hostOffset));
        }
        resolve(out);
      },
    );
  });
}

/** Length of the zstd (or skippable) frame at the start of `b`, or -1 if it does not fit in `b`. */
function zstdFrameLength(b: Uint8Array, hostOffset: number): { length: number; skippable: boolean } {
  if (b.length < 8) return { length: -1, skippable: false };
  const magic = (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
  if ((magic & 0xfffffff0) === 0x184d2a50) {
    const n = (b[4]! | (b[5]! << 8) | (b[6]! << 16) | (b[7]! << 24)) >>> 0;
    return { length: 8 + n, skippable: true };
  }
  if (magic !== 0xfd2fb528) throw corrupt(`zstd frame magic 0x${magic.toString(16)} is wrong`, hostOffset);
  const fhd = b[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictFlag = fhd & 3;
  let pos = 5 + (single ? 0 : 1) + [0, 1, 2, 4][dictFlag]! + [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  for (;;) {
    if (pos + 3 > b.length) return { length: -1, skippable: false };
    const bh = b[pos]! | (b[pos + 1]! << 8) | (b[pos + 2]! << 16);
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) throw corrupt('zstd block type 3 is reserved', hostOffset);
    pos += 3 + (type === 1 ? 1 : size);
    if (last) break;
  }
  pos += checksum ? 4 : 0;
  return { length: pos, skippable: false };
}

export function zstdCluster(src: Uint8Array, clusterSize: number, hostOffset: number): Uint8Array {
  const out = new Uint8Array(clusterSize);
  let filled = 0;
  let pos = 0;
  try {
    while (filled < clusterSize) {
      const f = zstdFrameLength(src.subarray(pos), hostOffset);
      if (f.length < 0 || pos + f.length > src.length) throw corrupt('zstd data ends before a full cluster was produced', hostOffset);
      if (!f.skippable) {
        const frame = src.subarray(pos, pos + f.length);
        // Frame content size, when the header has it, tells how much this frame produces.
        const fhd = frame[4]!;
        const fcsFlag = fhd >> 6;
        const single = (fhd >> 5) & 1;
        const fcsBytes = [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
        let produced = clusterSize - filled;
        if (fcsBytes > 0) {
          const at = 5 + (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3]!;
          let v = 0;
          for (let k = fcsBytes - 1; k >= 0; k--) v = v * 256 + frame[at + k]!;
          if (fcsBytes === 2) v += 256;
          if (v > clusterSize - filled) throw corrupt(`zstd frame declares ${v} bytes, more than the cluster`, hostOffset);
          produced = v;
        }
        const dst = out.subarray(filled, filled + produced);
        zstdDecompress(frame, dst);
        filled += produced;
      }
      pos += f.length;
    }
  } catch (e) {
    if (e instanceof ImageError) throw e;
    throw corrupt(`zstd data is invalid (${(e as Error).message})`, hostOffset, e);
  }
  return out;
}

/**
 * Raw deflate of one cluster on libuv's thread pool. Parameters as qemu's
 * (level 6, 4 KiB window, memLevel 9); smaller clusters use a window no
 * larger than themselves; clusters of 8 KiB and less are compressed inline. At most DEFLATE_SLOTS run at once: thousands of
 * concurrent zlib handles (small clusters, several requests in flight) cost
 * far more in set-up and memory than they gain.
 */
const DEFLATE_SLOTS = Math.max(2, Math.min(8, availableParallelism()));
let running = 0;
const waiting: Array<() => void> = [];

export async function deflateCluster(src: Uint8Array): Promise<Uint8Array> {
  const windowBits = Math.min(12, Math.max(9, Math.ceil(Math.log2(src.length))));
  // Small clusters: a thread-pool round trip and a fresh handle cost more than
  // the compression itself; doing it inline is several times faster.
  if (src.length <= 8192) return zlib.deflateRawSync(src, { level: 6, windowBits, memLevel: 9 });
  if (running >= DEFLATE_SLOTS) await new Promise<void>((r) => waiting.push(r));
  running++;
  try {
    return await new Promise((resolve, reject) => {
      // One output chunk for the whole cluster: Node's default 16 KiB would
      // bounce incompressible clusters through the thread pool several times.
      const chunkSize = src.length + 1024;
      zlib.deflateRaw(src, { level: 6, windowBits, memLevel: 9, chunkSize }, (err, out) => (err ? reject(err) : resolve(out)));
    });
  } finally {
    running--;
    waiting.shift()?.();
  }
}
