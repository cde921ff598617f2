/**
 * streamOptimized VMDKs, written front to back (VMware "Virtual Disk Format
 * 5.0", stream-optimized compressed sparse extents): the form an OVA
 * carries and vSphere/ESXi import. Nothing is ever rewritten, so the same
 * bytes go to a file or to a pipe:
 *
 *   sector 0        header: version 3, compressed, markers, gdOffset = ~0
 *                   ("in the footer")
 *   sectors 1..20   descriptor
 *   overHead (128)  grains in guest order: marker (lba, size) + zlib data,
 *                   each padded to a sector; all-zero grains are left out
 *   then            for each grain table with entries: GT marker + table
 *                   GD marker + grain directory
 *                   footer marker + footer (the header, with the GD's sector)
 *                   end-of-stream marker
 *
 * `streamVmdk` walks a seekable source in guest order. `StreamCreateImage`
 * is the same writer behind the Image interface for `create`: writes land in
 * a bounded reorder buffer of whole grains, emitted lowest first (convert
 * writes nearly in order, a few chunks in flight), so a file gets the bytes a
 * pipe gets. A write below a grain already emitted is refused.
 */

import { type BlockDevice, type Extent, checkRange, checkWritable, extents, isZero } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { Mutex } from '../../core/mutex.js';
import { encodeU32le } from '../../core/bytes.js';
import { compressCluster } from '../engine/codecs.js';
import type { CreateOptions, Image, ImageInfo } from '../types.js';
import { type VmdkParams, describeNew, descriptorSectors, grainGeometry, vmdkParams } from './create.js';
import { checkGteRange } from './sparse.js';
import {
  COMPRESS_DEFLATE,
  FLAG_COMPRESS,
  FLAG_MARKER,
  FLAG_NL_DETECT,
  GD_AT_END,
  GrainMarker,
  MARKER_EOS,
  MARKER_FOOTER,
  MARKER_GD,
  MARKER_GT,
  SECTOR,
  SparseHeader,
  metaMarker,
  newHeader,
} from './header.js';

const pad = (n: number): number => Math.ceil(n / SECTOR) * SECTOR;

/** Produces the chunks of a stream-optimized extent in file order. */
export class StreamWriter {
  readonly grainBytes: number;
  private readonly g: ReturnType<typeof grainGeometry>;
  private readonly tables = new Map<number, Uint32Array>();
  private readonly overHead: number;
  /** Bytes emitted so far. */
  pos = 0;

  constructor(private readonly p: VmdkParams) {
    this.g = grainGeometry(p.capacitySectors);
    this.grainBytes = this.g.grainSectors * SECTOR;
    this.overHead = Math.ceil((1 + this.g.descSectors) / this.g.grainSectors) * this.g.grainSectors;
  }

  private header(gdSector: bigint): Uint8Array {
    return SparseHeader.encode(
      newHeader({
        version: 3,
        flags: FLAG_NL_DETECT | FLAG_COMPRESS | FLAG_MARKER,
        capacity: BigInt(this.p.capacitySectors),
        grainSize: BigInt(this.g.grainSectors),
        descriptorOffset: 1n,
        descriptorSize: BigInt(this.g.descSectors),
        numGTEsPerGT: this.g.gtes,
        rgdOffset: 0n,
        gdOffset: gdSector,
        overHead: BigInt(this.overHead),
        compressAlgorithm: COMPRESS_DEFLATE,
      }),
    );
  }

  private emit(chunks: Uint8Array[]): Uint8Array[] {
    for (const c of chunks) this.pos += c.length;
    return chunks;
  }

  start(): Uint8Array[] {
    const desc = descriptorSectors(this.p);
    return this.emit([this.header(GD_AT_END), desc, new Uint8Array(this.overHead * SECTOR - SECTOR - desc.length)]);
  }

  /** One grain's compressed bytes, with its marker, padded to a sector. */
  grain(index: number, compressed: Uint8Array): Uint8Array[] {
    const t = Math.floor(index / this.g.gtes);
    let table = this.tables.get(t);
    if (!table) this.tables.set(t, (table = new Uint32Array(this.g.gtes)));
    checkGteRange(this.pos);
    table[index % this.g.gtes] = this.pos / SECTOR;
    const rec = new Uint8Array(pad(GrainMarker.size + compressed.length));
    GrainMarker.encode({ lba: BigInt(index * this.g.grainSectors), size: compressed.length }, rec);
    rec.set(compressed, GrainMarker.size);
    return this.emit([rec]);
  }

  /** Grain tables, grain directory, footer, end of stream. */
  finish(): Uint8Array[] {
    const out: Uint8Array[] = [];
    const gd = new Uint32Array(this.g.gdEntries);
    for (const t of [...this.tables.keys()].sort((a, b) => a - b)) {
      out.push(...this.emit([metaMarker(MARKER_GT, this.g.gtSectors)]));
      gd[t] = this.pos / SECTOR;
      out.push(...this.emit([encodeU32le(this.tables.get(t)!)]));
    }
    const gdBytes = new Uint8Array(this.g.gdSectors * SECTOR);
    gdBytes.set(encodeU32le(gd));
    out.push(...this.emit([metaMarker(MARKER_GD, this.g.gdSectors)]));
    const gdSector = this.pos / SECTOR;
    out.push(...this.emit([gdBytes, metaMarker(MARKER_FOOTER, 1), this.header(BigInt(gdSector)), metaMarker(MARKER_EOS, 0)]));
    return out;
  }
}

function streamParams(opts: CreateOptions): VmdkParams {
  const p = vmdkParams({ ...opts, options: { subformat: 'streamOptimized', ...opts.options } });
  if (p.subformat !== 'streamOptimized') {
    throw new ImageError('unsupported', 'vmdk: only -o subformat=streamOptimized can be written front to back (to a pipe)', { format: 'vmdk' });
  }
  return p;
}

/** Compress grains a few at a time, yielding results in order. */
async function* inOrder(jobs: AsyncIterable<[number, Uint8Array]>, window = 4): AsyncGenerator<[number, Uint8Array]> {
  const queue: Array<Promise<[number, Uint8Array]>> = [];
  for await (const [i, data] of jobs) {
    queue.push(compressCluster('zlib', data).then((c) => [i, c]));
    if (queue.length >= window) yield await queue.shift()!;
  }
  while (queue.length) yield await queue.shift()!;
}

/** The grains of `source` holding anything but zeros, in guest order. */
async function* dataGrains(source: BlockDevice, grainBytes: number): AsyncGenerator<[number, Uint8Array]> {
  let next = 0;
  for await (const e of extents(source)) {
    if (e.kind !== 'data') continue;
    const last = Math.floor((e.offset + e.length - 1) / grainBytes);
    for (let g = Math.max(next, Math.floor(e.offset / grainBytes)); g <= last; g++) {
      const grain = new Uint8Array(grainBytes);
      const start = g * grainBytes;
      await source.read(grain.subarray(0, Math.min(grainBytes, source.size - start)), start);
      if (!isZero(grain)) yield [g, grain];
      next = g + 1;
    }
  }
}

export async function* streamVmdk(source: BlockDevice, opts: CreateOptions): AsyncGenerator<Uint8Array> {
  const p = streamParams(opts);
  if (source.size > p.capacitySectors * SECTOR) {
    throw new ImageError('usage', `vmdk: the source (${source.size} bytes) is larger than the image`, { format: 'vmdk', value: source.size });
  }
  const w = new StreamWriter(p);
  yield* w.start();
  for await (const [g, c] of inOrder(dataGrains(source, w.grainBytes))) yield* w.grain(g, c);
  yield* w.finish();
}

/** Whole grains held before the lowest is emitted: far more than convert has in flight (8 chunks of 2 MiB = 256 grains). */
const REORDER_GRAINS = 512;

/** `create` for streamOptimized: the stream writer behind the Image interface. */
export class StreamCreateImage implements Image {
  readonly format = 'vmdk';
  readonly readOnly = false;
  readonly zeroInit = true;
  readonly size: number;
  private readonly w: StreamWriter;
  private readonly pending = new Map<number, Uint8Array>();
  private readonly emitting = new Mutex();
  /** Grains below this index have been emitted (or skipped) for good. */
  private floor = 0;
  private closed = false;

  constructor(
    private readonly child: BlockDevice,
    private readonly p: VmdkParams,
  ) {
    this.size = p.capacitySectors * SECTOR;
    this.w = new StreamWriter(p);
  }

  static async create(child: BlockDevice, opts: CreateOptions): Promise<StreamCreateImage> {
    const img = new StreamCreateImage(child, streamParams(opts));
    await img.put(img.w.start());
    return img;
  }

  private async put(chunks: Uint8Array[]): Promise<void> {
    let at = this.w.pos - chunks.reduce((n, c) => n + c.length, 0);
    for (const c of chunks) {
      await this.child.write(c, at);
      at += c.length;
    }
  }

  private grainFor(g: number): Uint8Array {
    if (g < this.floor) {
      throw new ImageError('unsupported', `vmdk: a stream-optimized image is written front to back; grain ${g} was already written`, {
        format: 'vmdk',
        operation: 'write',
        offset: g * this.w.grainBytes,
      });
    }
    let grain = this.pending.get(g);
    if (!grain) this.pending.set(g, (grain = new Uint8Array(this.w.grainBytes)));
    return grain;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, buf.length, 'write');
    const gb = this.w.grainBytes;
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      const g = Math.floor(pos / gb);
      const n = Math.min(buf.length - done, (g + 1) * gb - pos);
      this.grainFor(g).set(buf.subarray(done, done + n), pos - g * gb);
      done += n;
    }
    while (this.pending.size > REORDER_GRAINS) await this.emitLowest();
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, length, 'writeZeroes');
    const gb = this.w.grainBytes;
    for (let g = Math.floor(offset / gb); g * gb < offset + length; g++) {
      const grain = this.pending.get(g);
      if (grain) grain.fill(0, Math.max(0, offset - g * gb), Math.min(gb, offset + length - g * gb));
      else if (g < this.floor) this.grainFor(g); // throws: already emitted
    }
  }

  /** Emit the lowest pending grain (compressed), unless it is all zeros. */
  private emitLowest(): Promise<void> {
    return this.emitting.run(async () => {
      if (this.pending.size === 0) return;
      let g = Infinity;
      for (const k of this.pending.keys()) if (k < g) g = k;
      const data = this.pending.get(g)!;
      this.pending.delete(g);
      this.floor = g + 1;
      if (isZero(data)) return;
      await this.put(this.w.grain(g, await compressCluster('zlib', data)));
    });
  }

  async read(): Promise<void> {
    throw new ImageError('unsupported', 'vmdk: a stream-optimized image being written cannot be read back', { format: 'vmdk', operation: 'read' });
  }

  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    return { offset, length, kind: 'unallocated' };
  }

  async flush(): Promise<void> {
    await this.child.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      while (this.pending.size) await this.emitLowest();
      await this.put(this.w.finish());
      await this.child.flush();
    } finally {
      await this.child.close();
    }
  }

  async info(): Promise<ImageInfo> {
    return describeNew(this.p, this.w.grainBytes);
  }
}
