/**
 * The output of a front-to-back conversion: bytes arrive at increasing guest
 * offsets (a raw stream, VMDK grains in LBA order) and go to a new image.
 *
 * - Bytes are staged in windows of 2 MiB aligned to absolute offsets; each
 *   window is cut into blocks of the sparse granularity (max of -S and the
 *   target's cluster size) and all-zero blocks are dropped, so holes stay
 *   holes (as copyDevice does).
 * - A few windows are written at once (disjoint ranges); memory is bounded
 *   by that number of windows.
 * - The output is created under a temporary name and renamed at `finish`,
 *   removed by `abort` (OutputFile). A raw output of unknown length is
 *   written as bytes and sized at the end; it may use at most the free space
 *   of its file system, less a reserve (a decompression bomb stops there).
 */

import * as path from 'node:path';
import { isZeroRange } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import type { FileDevice } from '../core/file.js';
import type { OutputFile } from '../core/output.js';
import { OutputFile as Output } from '../core/output.js';
import { createImage } from '../formats/index.js';
import type { Image } from '../formats/types.js';
import { diskCap } from '../sources/index.js';
import type { CopyStats } from './convert.js';
import type { ConvertImageOptions } from './image.js';
import { noProgress } from './progress.js';

const WINDOW = 2 << 20;
const IN_FLIGHT = 4;

export class Sink {
  readonly stats: CopyStats = { dataBytes: 0, writtenBytes: 0, zeroDetectedBytes: 0, seconds: 0 };
  private readonly t0 = performance.now();
  private base = -1;
  private buf: Uint8Array | undefined;
  private filled = 0;
  /** Everything below this offset has been handed to the target. */
  private doneTo = 0;
  private readonly inflight = new Set<Promise<void>>();
  private failure: unknown;
  private readonly chunk: number;
  private written = 0;

  private constructor(
    private readonly target: Image | FileDevice,
    private readonly output: OutputFile,
    /** The guest size; undefined: a raw output sized at the end. */
    readonly size: number | undefined,
    private readonly gran: number,
    private readonly zeroInit: boolean,
    private readonly opts: ConvertImageOptions,
    private readonly budget: { bytes: number; why: string } | undefined,
    readonly formatName: string,
  ) {
    this.chunk = gran > 0 ? Math.ceil(WINDOW / gran) * gran : WINDOW;
  }

  /** A new output `dst` of `size` bytes (undefined: raw only, sized at the end). */
  static async create(dst: string, size: number | undefined, opts: ConvertImageOptions, input: string): Promise<Sink> {
    const sparse = opts.sparseSize ?? 4096;
    if (!Number.isSafeInteger(sparse) || sparse < 0) throw new ImageError('usage', `-S must be a non-negative size, not ${sparse}`);
    if (size === undefined) {
      if (opts.format !== 'raw') throw new ImageError('unsupported', `a ${opts.format} output needs the input's size in advance`);
      const unknown = Object.keys(opts.options ?? {});
      if (unknown.length) throw new ImageError('usage', `raw: unknown option '${unknown[0]}'`, { format: 'raw' });
      if (opts.compress) throw new ImageError('usage', 'raw images cannot be compressed (-c)', { format: 'raw' });
      const output = await Output.create(dst, { force: opts.force, inputs: [input] });
      const gran = sparse === 0 ? 0 : Math.max(sparse, 512);
      return new Sink(output.device, output, undefined, gran, !!output.device.zeroInit, opts, diskCap(path.dirname(path.resolve(dst))), 'raw');
    }
    const created = await createImage(dst, opts.format, { size, options: opts.options ?? {}, compress: opts.compress }, { force: opts.force, inputs: [input] });
    try {
      const info = await created.image.info();
      const cluster = info['cluster-size'] ?? 512;
      const gran = sparse === 0 ? 0 : lcm(Math.max(sparse, 512), cluster);
      const sink = new Sink(created.image, created.output, size, gran, created.zeroInit, opts, undefined, created.driver.name);
      (opts.progress ?? noProgress).start('copy', size);
      return sink;
    } catch (e) {
      await created.image.close().catch(() => {});
      await created.output.abort();
      throw e;
    }
  }

  /** `data` at guest offset `offset` (not below what was put before). The bytes are copied. */
  async put(offset: number, data: Uint8Array): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.size !== undefined && offset + data.length > this.size) {
      throw new ImageError('invalid-format', `the stream has data at ${offset}..${offset + data.length}, past the ${this.size}-byte image`, { offset, value: offset + data.length });
    }
    let off = offset;
    let d = data;
    while (d.length > 0) {
      if (!this.buf || off >= this.base + this.chunk) {
        await this.flushWindow();
        this.base = Math.floor(off / this.chunk) * this.chunk;
        this.buf = new Uint8Array(this.chunk);
        this.filled = 0;
      }
      const at = off - this.base;
      if (at < this.filled || off < this.doneTo) throw new ImageError('out-of-bounds', `sequential write at ${off} below ${this.base + this.filled}`, { offset: off });
      const n = Math.min(d.length, this.chunk - at);
      this.buf.set(d.subarray(0, n), at);
      this.filled = at + n;
      this.stats.dataBytes += n;
      d = d.subarray(n);
      off += n;
    }
    (this.opts.progress ?? noProgress).update(off);
  }

  private async flushWindow(): Promise<void> {
    const buf = this.buf;
    if (!buf) return;
    this.buf = undefined;
    const base = this.base;
    let end = this.gran > 0 ? Math.ceil(this.filled / this.gran) * this.gran : this.filled;
    if (this.size !== undefined) end = Math.min(end, this.size - base);
    else end = Math.min(end, this.filled);
    const gapFrom = this.doneTo;
    this.doneTo = base + end;
    if (this.opts.signal?.aborted) throw new ImageError('interrupted', 'conversion interrupted');
    const job = this.writeWindow(buf.subarray(0, end), base, gapFrom);
    const tracked = job.catch((e) => {
      this.failure ??= e;
    });
    this.inflight.add(tracked);
    void tracked.finally(() => this.inflight.delete(tracked));
    if (this.inflight.size >= IN_FLIGHT) await Promise.race(this.inflight);
    if (this.failure) throw this.failure;
  }

  private async write(data: Uint8Array, at: number): Promise<void> {
    this.written += data.length;
    if (this.budget && this.written > this.budget.bytes) {
      throw new ImageError('io', `the output would need more than ${this.budget.bytes} bytes (${this.budget.why}): stopped`, { value: this.written });
    }
    await this.target.write(data, at);
    this.stats.writtenBytes += data.length;
  }

  private async writeWindow(view: Uint8Array, base: number, gapFrom: number): Promise<void> {
    if (!this.zeroInit && gapFrom < base) await this.target.writeZeroes(gapFrom, base - gapFrom);
    if (this.gran === 0) return this.write(view, base);
    let runStart = -1;
    for (let pos = 0; pos < view.length; ) {
      const blockEnd = Math.min(view.length, pos + this.gran);
      const zero = isZeroRange(view, pos, blockEnd);
      if (!zero && runStart < 0) runStart = pos;
      if (zero) {
        if (runStart >= 0) await this.write(view.subarray(runStart, pos), base + runStart);
        runStart = -1;
        this.stats.zeroDetectedBytes += blockEnd - pos;
        if (!this.zeroInit) await this.target.writeZeroes(base + pos, blockEnd - pos);
      }
      pos = blockEnd;
    }
    if (runStart >= 0) await this.write(view.subarray(runStart), base + runStart);
  }

  /** Write what is staged, size a raw output of unknown length to `end`, close and move the output into place. */
  async finish(end?: number): Promise<CopyStats> {
    await this.flushWindow();
    await Promise.all(this.inflight);
    if (this.failure) throw this.failure;
    const size = this.size ?? end ?? this.doneTo;
    if (!this.zeroInit && this.doneTo < size) await this.target.writeZeroes(this.doneTo, size - this.doneTo);
    if (this.size === undefined) await (this.target as FileDevice).resize(size);
    await this.target.flush();
    if (this.target !== this.output.device) await this.target.close();
    await this.output.commit();
    (this.opts.progress ?? noProgress).finish();
    this.stats.seconds = (performance.now() - this.t0) / 1000;
    return this.stats;
  }

  /** Remove the partial output. */
  async abort(): Promise<void> {
    await Promise.all(this.inflight);
    if (this.target !== this.output.device) await this.target.close().catch(() => {});
    await this.output.abort();
  }
}

/** Smallest multiple of both (powers of two in practice: the larger). */
function lcm(a: number, b: number): number {
  const gcd = (x: number, y: number): number => (y === 0 ? x : gcd(y, x % y));
  return (a / gcd(a, b)) * b;
}
