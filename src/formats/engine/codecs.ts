/**
 * Cluster compression for every mapped format, on one bounded pool: at most
 * SLOTS (de)compressions run at once; the rest wait.
 *
 *   deflate  raw deflate, no header (qcow, qcow2 "zlib"); written with a
 *            window of at most 4 KiB (qemu inflates these with
 *            inflateInit2(-12): a larger window would not read back in qemu)
 *   zlib     RFC 1950 zlib stream (VMDK streamOptimized grains)
 *   zstd     one or more zstd frames (qcow2 compression_type=zstd), decoded
 *            as qemu does (block/qcow2-threads.c): frames one after another
 *            until exactly one cluster has been produced, skippable frames
 *            skipped, bytes after the last frame needed ignored (the stored
 *            length is only known to the sector). libzstd (zstd.ts, in
 *            WebAssembly) decodes every frame; we only find where frames
 *            end, so the output room is always what is left of the cluster.
 *
 * deflate and zlib run on libuv's thread pool (small clusters inline: a
 * round trip costs more than the work); zstd runs in WebAssembly on the
 * calling thread. Decompressed output is bounded by the cluster size:
 * hostile data never chooses an allocation size.
 */

import type * as Zlib from 'node:zlib';
import { nodeZlib } from '../../core/lazy.js';
import { availableParallelism } from 'node:os';
import { ImageError } from '../../core/errors.js';
import type { Codec } from './mapping.js';
import { ZstdError, zstdDecodeFrame, zstdEncode } from './zstd.js';

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

/** Extra detail for decoding one cluster. */
export interface DecodeOptions {
  /** Guest offset of the cluster, named in messages ("guest offset G (host offset H)"). */
  guest?: number;
  /** The stream must produce exactly `clusterSize` bytes (qcow2: qemu fails a short cluster). zstd always must. */
  exact?: boolean;
}

function corrupt(format: string, codec: Codec, host: number, why: string, o: DecodeOptions, cause?: unknown): ImageError {
  const where = o.guest === undefined ? `at host offset ${host}` : `at guest offset ${o.guest} (host offset ${host})`;
  return new ImageError(
    'corrupt',
    `${format}: compressed cluster ${where}: ${codec} data ${why}`,
    { format, field: 'compressed cluster', offset: host, value: o.guest ?? host },
    { cause },
  );
}

/** Decode one cluster: at most `clusterSize` bytes come out (fewer when the stream ends early and `exact` is not set). */
export async function decompressCluster(
  format: string,
  codec: Codec,
  stored: Uint8Array,
  clusterSize: number,
  host: number,
  o: DecodeOptions = {},
): Promise<Uint8Array> {
  if (codec === 'zstd') return inSlot(() => zstdCluster(format, stored, clusterSize, host, o));
  const zlib = nodeZlib();
  const opts: Zlib.ZlibOptions = {
    maxOutputLength: clusterSize,
    // qcow/qcow2 (deflate): qemu accepts a stream that stops once the
    // cluster is full (inflate Z_FINISH giving Z_BUF_ERROR with the output
    // full), so a cut stream is read as far as it goes and `exact` judges
    // the length. VMDK (zlib): qemu's uncompress() needs the whole stream;
    // a cut one is an error, never zero-filled bytes.
    finishFlush: codec === 'zlib' ? zlib.constants.Z_FINISH : zlib.constants.Z_SYNC_FLUSH,
    // One output chunk of a whole cluster: one pass through the thread pool.
    chunkSize: Math.max(1024, clusterSize),
  };
  const out = await inSlot(
    () =>
      new Promise<Uint8Array>((resolve, reject) => {
        const done = (err: Error | null, out: Buffer): void => {
          if (err) reject(corrupt(format, codec, host, `is invalid (${err.message})`, o, err));
          else resolve(out);
        };
        if (codec === 'zlib') zlib.inflate(stored, opts, done);
        else zlib.inflateRaw(stored, opts, done);
      }),
  );
  if (o.exact && out.length !== clusterSize) {
    throw corrupt(format, codec, host, `decompresses to ${out.length} bytes, not ${clusterSize}`, o);
  }
  return out;
}

/**
 * Encode one cluster. deflate: level 6, window min(4 KiB, cluster), memLevel
 * 9 (qemu's parameters); zlib: level 6 (as VMware writes); zstd: one frame at
 * level 3 with its content size recorded (as qemu writes). The caller keeps
 * the result only when it is smaller than the cluster.
 */
export function compressCluster(codec: Codec, data: Uint8Array): Promise<Uint8Array> {
  if (codec === 'zstd') return inSlot(async () => (await zstdEncode(data, Infinity))!);
  const zlib = nodeZlib();
  if (codec === 'deflate') {
    const windowBits = Math.min(12, Math.max(9, Math.ceil(Math.log2(Math.max(2, data.length)))));
    const opts = { level: 6, windowBits, memLevel: 9, chunkSize: data.length + 1024 };
    if (data.length <= 8192) return Promise.resolve(zlib.deflateRawSync(data, opts));
    return inSlot(() => new Promise<Uint8Array>((resolve, reject) => zlib.deflateRaw(data, opts, (err, out) => (err ? reject(err) : resolve(out)))));
  }
  return inSlot(
    () =>
      new Promise<Uint8Array>((resolve, reject) => {
        zlib.deflate(data, { level: 6, chunkSize: data.length + 1024 }, (err, out) => (err ? reject(err) : resolve(out)));
      }),
  );
}

// ---------------------------------------------------------------- zstd frames

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
  /** Not a zstd or skippable frame: the magic number found. */
  badMagic?: number;
}

const le32 = (b: Uint8Array, o: number) => (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;

/**
 * The extent of the zstd (or skippable) frame at the start of `b`: frame
 * header, then block headers until the last block, then the optional
 * checksum (RFC 8878, section 3.1). The contents are libzstd's to judge.
 */
function frameShape(b: Uint8Array): FrameShape {
  const short: FrameShape = { length: -1, skippable: false, hasContentSize: false, window: 0 };
  if (b.length < 4) return short;
  const magic = le32(b, 0);
  if ((magic & 0xfffffff0) === 0x184d2a50) {
    if (b.length < 8) return short;
    return { length: 8 + le32(b, 4), skippable: true, hasContentSize: false, window: 0 };
  }
  if (magic !== 0xfd2fb528) return { ...short, badMagic: magic };
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
 * One zstd-compressed cluster, decoded as qemu does (qcow2_zstd_decompress:
 * ZSTD_decompressStream until the cluster is full): the last frame needed
 * must end exactly at the cluster's end (a frame that would produce more is
 * corrupt).
 */
async function zstdCluster(format: string, src: Uint8Array, clusterSize: number, host: number, o: DecodeOptions): Promise<Uint8Array> {
  const out = new Uint8Array(clusterSize);
  let filled = 0;
  let pos = 0;
  while (filled < clusterSize) {
    const f = frameShape(src.subarray(pos));
    if (f.badMagic !== undefined) throw corrupt(format, 'zstd', host, `has a frame with the wrong magic 0x${f.badMagic.toString(16)} at byte ${pos}`, o);
    if (f.length < 0 || pos + f.length > src.length) {
      throw corrupt(format, 'zstd', host, `ends after ${filled} of ${clusterSize} bytes (a frame runs past the ${src.length} stored bytes)`, o);
    }
    if (!f.skippable) {
      if (!f.hasContentSize && f.window > MAX_STREAM_WINDOW) {
        throw corrupt(format, 'zstd', host, `has a frame at byte ${pos} that needs a ${f.window}-byte window, more than libzstd's streaming limit`, o);
      }
      try {
        filled += await zstdDecodeFrame(src.subarray(pos, pos + f.length), out.subarray(filled));
      } catch (e) {
        if (!(e instanceof ZstdError)) throw e;
        const what = e.code === 70 ? 'decodes to more than the cluster' : `is invalid (${e.message})`;
        throw corrupt(format, 'zstd', host, `has a frame at byte ${pos} that ${what}`, o, e);
      }
    }
    pos += f.length;
  }
  return out;
}
