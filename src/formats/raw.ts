/**
 * raw: the guest's bytes as they are. The driver is a pass-through over the
 * child; `create` sizes the child (a hole, on a regular file) so unwritten
 * ranges stay sparse.
 */

import { type BlockDevice, type Extent, checkRange, resizeDevice } from '../core/device.js';
import type { CreateOptions, FormatDriver, Image, ImageInfo, LayerRun, OpenOptions } from './types.js';
import { ImageError } from '../core/errors.js';

/** The size is fixed at open/create: a growable child must not grow through the image. */
class RawImage implements Image {
  readonly format = 'raw';
  readonly size: number;
  constructor(private readonly child: BlockDevice, size = child.size) {
    this.size = size;
  }
  get readOnly(): boolean {
    return this.child.readOnly;
  }
  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    return this.child.read(buf, offset);
  }
  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'write');
    return this.child.write(buf, offset);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length, 'writeZeroes');
    return this.child.writeZeroes(offset, length);
  }
  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    return this.child.status(offset, length);
  }
  /** Raw bytes lie at their own offset; holes read as zero there (as qemu maps them). */
  async layerStatus(offset: number, length: number): Promise<LayerRun> {
    const e = await this.status(offset, length);
    return { kind: e.kind === 'data' ? 'data' : 'zero', length: e.length, host: offset };
  }
  flush(): Promise<void> {
    return this.child.flush();
  }
  close(): Promise<void> {
    return this.child.close();
  }
  async info(): Promise<ImageInfo> {
    return { format: 'raw', 'virtual-size': this.size };
  }
}

export const raw: FormatDriver = {
  name: 'raw',
  extensions: ['img', 'raw', 'bin', 'iso'],
  probe: () => false, // raw is the fallback, never detected by magic
  async open(child: BlockDevice, _opts: OpenOptions): Promise<Image> {
    return new RawImage(child);
  },
  async create(child: BlockDevice, opts: CreateOptions): Promise<Image> {
    const unknown = Object.keys(opts.options);
    if (unknown.length) throw new ImageError('usage', `raw: unknown option '${unknown[0]}'`, { format: 'raw' });
    if (opts.compress) throw new ImageError('usage', 'raw images cannot be compressed (-c)', { format: 'raw' });
    if (typeof child.resize === 'function') await child.resize(opts.size);
    else if (child.size < opts.size) await child.writeZeroes(child.size, opts.size - child.size);
    return new RawImage(child, opts.size);
  },
  createOptions: {},
  // The file is the disk: every byte counts, the size in whole sectors as qemu-img measure says.
  resize: async (child, newSize) => {
    await resizeDevice(child, newSize, 'raw');
    await child.flush();
  },
  measure: async (opts) => ({ required: Math.ceil(opts.size / 512) * 512, 'fully-allocated': Math.ceil(opts.size / 512) * 512 }),
  stream: (source: BlockDevice) => rawStream(source),
};

/** A raw image as a stream: the device's bytes in order, holes as zeros. */
export async function* rawStream(source: BlockDevice, chunkSize = 1 << 20): AsyncGenerator<Uint8Array> {
  const zero = new Uint8Array(chunkSize);
  for (let pos = 0; pos < source.size; ) {
    const e = await source.status(pos, Math.min(source.size - pos, 64 * chunkSize));
    const end = pos + e.length;
    while (pos < end) {
      const n = Math.min(chunkSize, end - pos);
      if (e.kind === 'data') {
        const buf = new Uint8Array(n); // a fresh buffer: the consumer may hold it until drained
        await source.read(buf, pos);
        yield buf;
      } else yield zero.subarray(0, n);
      pos += n;
    }
  }
}
