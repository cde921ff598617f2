/**
 * Compressed clusters (qemu docs/interop/qcow2.rst, compression_type; qemu
 * block/qcow2-threads.c behaviour).
 *
 * - deflate ("zlib" in qemu): a raw deflate stream (no zlib header). The
 *   stored bytes run to the end of a 512-byte sector and may be followed by
 *   another cluster's data: decompression stops when it has produced one
 *   cluster. Output is bounded by the cluster size.
 * - zstd: one or more zstd frames, no length prefix; frames are decoded in
 *   order until exactly one cluster has been produced (the last one must end
 *   there), trailing bytes are ignored (see zstdCluster). Every frame is
 *   decoded by libzstd itself (zstd.ts); we only find where frames end, so
 *   the output buffer is always the room left in the cluster (a frame never
 *   chooses an allocation size).
 *
 * Decompression runs on libuv's thread pool for deflate (async zlib); zstd
 * runs synchronously in WebAssembly.
 */

import * as zlib from 'node:zlib';
import { availableParallelism } from 'node:os';
import { ImageError } from '../../core/errors.js';
import { ZstdError, zstdDecodeFrame, zstdEncode } from './zstd.js';

function corrupt(what: string, where: ClusterPlace, cause?: unknown): ImageError {
  return new ImageError(
    'corrupt',
    `qcow2: compressed cluster at guest offset ${where.guest} (host offset ${where.host}): ${what}`,
    { format: 'qcow2', field: 'compressed cluster data', offset: where.host, value: where.guest },
    { cause },
  );
}

export function inflateCluster(src: Uint8Array, clusterSize: number, where: ClusterPlace): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    zlib.inflateRaw(
      src,
      // One output chunk of a whole cluster: one pass through the thread pool.
      { maxOutputLength: clusterSize, finishFlush: zlib.constants.Z_SYNC_FLUSH, chunkSize: Math.max(1024, clusterSize) },
      (err, out) => {
        if (err) return reject(corrupt(`deflate data is invalid (${err.message})`, where, err));
        if (out.length !== clusterSize) {
          return reject(corrupt(`deflate data decompresses to ${out.length} bytes, not ${clusterSize}`, where));
        }
        resolve(out);
      },
    );
  });
}

/** Where a compressed cluster is, for messages. */
export interface ClusterPlace {
  /** Guest offset of the cluster. */
  guest: number;
  /** Host offset of its compressed data. */
  host: number;
}

/** libzstd's default limit for streaming decoders (ZSTD_WINDOWLOG_LIMIT_DEFAULT = 27): qemu decodes with ZSTD_decompressStream. */
const MAX_STREAM_WINDOW = 2 ** 27 + 1;

interface FrameShape {
  /** Bytes the frame occupies, or -1 when it does not fit in the input. */
  length: number;
  skippable: boolean;
  /** The frame header records its content size. */
  hasContentSize: boolean;
  /** Window size a streaming decoder needs (frames without content size). */
  window: number;
}

const le32 = (b: Uint8Array, o: number) => (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;

/**
 * The extent of the zstd (or skippable) frame at the start of `b`: frame
 * header, then block headers until the last block, then the optional
 * checksum (RFC 8878, section 3.1). The contents are libzstd's to judge.
 */
function frameShape(b: Uint8Array, where: ClusterPlace): FrameShape {
  const short: FrameShape = { length: -1, skippable: false, hasContentSize: false, window: 0 };
  if (b.length < 4) return short;
  const magic = le32(b, 0);
  if ((magic & 0xfffffff0) === 0x184d2a50) {
    if (b.length < 8) return short;
    return { length: 8 + le32(b, 4), skippable: true, hasContentSize: false, window: 0 };
  }
  if (magic !== 0xfd2fb528) throw corrupt(`zstd frame magic 0x${magic.toString(16)} is wrong`, where);
  if (b.length < 5) return short;
  const fhd = b[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  let window = 0;
  if (!single && b.length > 5) {
    const wd = b[5]!;
    const base = 2 ** ((wd >> 3) + 10);
    window = base + (base / 8) * (wd & 7);
  }
  let pos = 5 + (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3]! + [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  for (;;) {
    if (pos + 3 > b.length) return short;
    const bh = b[pos]! | (b[pos + 1]! << 8) | (b[pos + 2]! << 16);
    const type = (bh >> 1) & 3;
    pos += 3 + (type === 1 ? 1 : bh >>> 3);
    if (bh & 1) break;
  }
  pos += checksum ? 4 : 0;
  return { length: pos, skippable: false, hasContentSize: single === 1 || fcsFlag !== 0, window };
}

/**
 * One zstd-compressed cluster, decoded as qemu does (block/qcow2-threads.c,
 * qcow2_zstd_decompress: ZSTD_decompressStream until the cluster is full):
 * frames are decoded one after another from the start of the stored bytes
 * until exactly one cluster has been produced; the last frame must end
 * exactly there (a frame that would produce more is corrupt); skippable
 * frames are skipped; bytes after the last frame needed are ignored (the
 * stored length is only known to the sector). libzstd decodes every frame.
 */
export async function zstdCluster(src: Uint8Array, clusterSize: number, where: ClusterPlace): Promise<Uint8Array> {
  const out = new Uint8Array(clusterSize);
  let filled = 0;
  let pos = 0;
  while (filled < clusterSize) {
    const f = frameShape(src.subarray(pos), where);
    if (f.length < 0 || pos + f.length > src.length) {
      throw corrupt(`zstd data ends after ${filled} of ${clusterSize} bytes (a frame runs past the ${src.length} stored bytes)`, where);
    }
    if (!f.skippable) {
      if (!f.hasContentSize && f.window > MAX_STREAM_WINDOW) {
        throw corrupt(`zstd frame at byte ${pos} needs a ${f.window}-byte window, more than libzstd's streaming limit`, where);
      }
      try {
        filled += await zstdDecodeFrame(src.subarray(pos, pos + f.length), out.subarray(filled));
      } catch (e) {
        if (!(e instanceof ZstdError)) throw e;
        const what = e.code === 70 ? 'decodes to more than the cluster' : `is invalid (${e.message})`;
        throw corrupt(`zstd frame at byte ${pos} ${what}`, where, e);
      }
    }
    pos += f.length;
  }
  return out;
}

/** One cluster as a zstd frame (as qemu writes them), or undefined when it does not shrink below the cluster size. */
export async function zstdCompressCluster(src: Uint8Array): Promise<Uint8Array | undefined> {
  return zstdEncode(src, src.length);
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
