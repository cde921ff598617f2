/**
 * Convert: one loop over the source's extents, writing only data.
 *
 * - A first pass sums the source's allocated bytes (status walk only), so
 *   progress is measured in the work that will really be done.
 * - Zero and unallocated runs are skipped when the target already reads as
 *   zero (a freshly created image), otherwise written as writeZeroes.
 * - Data runs are read in chunks; each chunk is split into blocks of the
 *   sparse granularity (max of `-S` and the target's cluster size) and
 *   all-zero blocks are dropped, so holes stay holes and zero clusters are
 *   never allocated.
 * - A bounded number of chunks are in flight at once: reads overlap writes,
 *   and compressing drivers compress several clusters in parallel. Memory is
 *   bounded by concurrency x chunk size, whatever the image size.
 */

import { type BlockDevice, extents, isZeroRange } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import { type Progress, noProgress } from './progress.js';

export interface CopyOptions {
  /** Bytes: a block must be this long and all zero to be skipped (qemu-img -S). 0 writes everything. Default 4096. */
  sparseSize?: number;
  /** Allocation unit of the target (cluster size); zero detection works in multiples of it. */
  targetGranularity?: number;
  /** The target reads as zero everywhere before the copy (fresh image). Default true. */
  targetIsZero?: boolean;
  /** Chunks in flight. Default 4. */
  concurrency?: number;
  /** Bytes per chunk. Default 2 MiB. */
  chunkSize?: number;
  progress?: Progress;
  signal?: AbortSignal;
  /**
   * Writes go to the target one at a time, in ascending order (default).
   * false: as soon as each chunk is read (a compressing target compresses
   * the clusters of every write in flight in parallel, on all cores).
   */
  orderedWrites?: boolean;
}

export interface CopyStats {
  /** Bytes the source reported as data (what we read). */
  dataBytes: number;
  /** Bytes written to the target (data that was not all zero). */
  writtenBytes: number;
  /** Bytes of data that turned out to be zero and were skipped. */
  zeroDetectedBytes: number;
  seconds: number;
}

export async function copyDevice(src: BlockDevice, dst: BlockDevice, opts: CopyOptions = {}): Promise<CopyStats> {
  if (dst.size < src.size) {
    throw new ImageError('usage', `target (${dst.size} bytes) is smaller than the source (${src.size} bytes)`);
  }
  const t0 = performance.now();
  const sparse = opts.sparseSize ?? 4096;
  if (!Number.isSafeInteger(sparse) || sparse < 0) throw new ImageError('usage', `-S must be a non-negative size, not ${sparse}`);
  const gran = sparse === 0 ? 0 : lcmish(Math.max(sparse, 512), opts.targetGranularity ?? 512);
  let chunk = opts.chunkSize ?? 2 * 1024 * 1024;
  if (gran > 0 && chunk % gran !== 0) chunk = Math.ceil(chunk / gran) * gran;
  const targetIsZero = opts.targetIsZero ?? true;
  const concurrency = Math.max(1, opts.concurrency ?? 4);
  const progress = opts.progress ?? noProgress;

  // Pass 1: how much data is there?
  const runs: { offset: number; length: number; kind: string }[] = [];
  let total = 0;
  for await (const e of extents(src)) {
    runs.push(e);
    if (e.kind === 'data') total += e.length;
    // Bound memory on pathological maps: merge is already done by extents(); a
    // map with millions of runs is still fine here (a few dozen bytes each).
  }
  progress.start('copy', total);

  const stats: CopyStats = { dataBytes: 0, writtenBytes: 0, zeroDetectedBytes: 0, seconds: 0 };
  const inflight = new Set<Promise<void>>();
  let failure: unknown;
  const pool: Uint8Array[] = [];
  const take = () => pool.pop() ?? new Uint8Array(chunk);

  // Reads run `concurrency` deep; writes go out one at a time, in order (as
  // qemu-img's convert does without -W). Concurrent writes to one file only
  // queue on its inode lock in the kernel, where the waiters spin and burn
  // the CPU the reads need (on tmpfs, raw -> raw spent half its system time
  // there), and on a disk in-order writes keep the output's blocks in order.
  // A compressing target is the exception (orderedWrites: false): its
  // writes are mostly CPU, which concurrent writes spread over the cores.
  const ordered = opts.orderedWrites ?? true;
  let lastWrite: Promise<void> = Promise.resolve();
  const copyChunk = async (offset: number, length: number) => {
    const buf = take();
    const turn = ordered ? lastWrite : undefined;
    let done: (() => void) | undefined;
    if (ordered) lastWrite = new Promise<void>((res) => (done = res));
    try {
      const view = buf.subarray(0, length);
      await src.read(view, offset);
      // Split into maximal runs of data and zero blocks (blocks aligned to absolute offsets) before taking the turn to write.
      const runs = gran === 0 ? [0, length, 1] : blockRuns(view, offset, gran);
      await turn;
      for (let i = 0; i < runs.length; i += 3) {
        const from = runs[i]!;
        const to = runs[i + 1]!;
        if (runs[i + 2]) {
          await dst.write(view.subarray(from, to), offset + from);
          stats.writtenBytes += to - from;
        } else {
          stats.zeroDetectedBytes += to - from;
          if (!targetIsZero) await dst.writeZeroes(offset + from, to - from);
        }
      }
      stats.dataBytes += length;
      progress.update(stats.dataBytes);
    } finally {
      done?.();
      pool.push(buf);
    }
  };

  const schedule = async (p: Promise<void>) => {
    const tracked = p.catch((e) => {
      failure ??= e;
    });
    inflight.add(tracked);
    void tracked.finally(() => inflight.delete(tracked));
    if (inflight.size >= concurrency) await Promise.race(inflight);
  };

  // Interrupted: stop scheduling, and let the chunks in flight finish before
  // throwing (the caller closes the output next; no write may still be queued on its descriptor).
  const interrupted = () => {
    if (opts.signal?.aborted) failure ??= new ImageError('interrupted', 'conversion interrupted');
    return failure !== undefined;
  };
  for (const r of runs) {
    if (interrupted()) break;
    if (r.kind !== 'data') {
      if (!targetIsZero) await dst.writeZeroes(r.offset, r.length);
      continue;
    }
    let pos = r.offset;
    const end = r.offset + r.length;
    while (pos < end && !interrupted()) {
      // Chunks aligned to absolute multiples of the chunk size keep cluster-aligned writes.
      const next = Math.min(end, (Math.floor(pos / chunk) + 1) * chunk);
      await schedule(copyChunk(pos, next - pos));
      pos = next;
    }
  }
  await Promise.all(inflight);
  if (failure) throw failure;
  progress.finish();
  stats.seconds = (performance.now() - t0) / 1000;
  return stats;
}

/**
 * view (which holds the bytes at `offset`) as maximal runs of blocks of
 * `gran` bytes, aligned to absolute multiples of `gran`, that are all zero or
 * all hold data: a flat list of (start, end, isData) triples, relative to view.
 */
function blockRuns(view: Uint8Array, offset: number, gran: number): number[] {
  const runs: number[] = [];
  for (let pos = 0; pos < view.length; ) {
    const blockEnd = Math.min(view.length, Math.floor((offset + pos) / gran) * gran + gran - offset);
    const data = isZeroRange(view, pos, blockEnd) ? 0 : 1;
    const n = runs.length;
    if (n > 0 && runs[n - 1] === data) runs[n - 2] = blockEnd;
    else runs.push(pos, blockEnd, data);
    pos = blockEnd;
  }
  return runs;
}

/** Smallest multiple of both (they are powers of two in practice: the max). */
function lcmish(a: number, b: number): number {
  const gcd = (x: number, y: number): number => (y === 0 ? x : gcd(y, x % y));
  return (a / gcd(a, b)) * b;
}
