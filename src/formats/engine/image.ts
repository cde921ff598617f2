/** An Image from any BlockDevice plus a description: drivers built on the engine compose devices, then describe them. */

import type { BlockDevice, Extent } from '../../core/device.js';
import type { Image, ImageInfo, LayerRun } from '../types.js';
import { layerStatusOf } from './layer.js';

export class DescribedImage implements Image {
  constructor(
    readonly format: string,
    private readonly dev: BlockDevice,
    private readonly describe: () => Promise<ImageInfo>,
    private readonly onClose: () => Promise<void> = async () => {},
  ) {}
  get size(): number {
    return this.dev.size;
  }
  get readOnly(): boolean {
    return this.dev.readOnly;
  }
  get zeroInit(): boolean {
    return !!this.dev.zeroInit;
  }
  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.dev.read(buf, offset);
  }
  write(buf: Uint8Array, offset: number): Promise<void> {
    return this.dev.write(buf, offset);
  }
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.dev.writeZeroes(offset, length);
  }
  status(offset: number, length: number): Promise<Extent> {
    return this.dev.status(offset, length);
  }
  flush(): Promise<void> {
    return this.dev.flush();
  }
  async close(): Promise<void> {
    try {
      await this.dev.close();
    } finally {
      await this.onClose();
    }
  }
  info(): Promise<ImageInfo> {
    return this.describe();
  }
  /** This layer's run with its host offset (map, check): see LayerRun. */
  layerStatus(offset: number, length: number): Promise<LayerRun> {
    return layerStatusOf(this.dev, offset, length);
  }
}
