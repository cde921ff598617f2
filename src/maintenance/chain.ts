/**
 * `info --backing-chain`: describe every image of a backing chain, top
 * first. The chain is opened through openImage, which follows backing files
 * only inside the allowed directory (and refuses anything else); images
 * are described, never read.
 */

import * as fs from 'node:fs';
import { type OpenImageOptions, describe, openImage } from '../formats/index.js';
import type { Image, ImageInfo } from '../formats/types.js';
import { layerNames } from './map.js';

export type ChainInfo = ImageInfo & { filename: string; 'actual-size'?: number };

function allocatedOnDisk(file: string): number {
  try {
    return fs.statSync(file).blocks * 512;
  } catch {
    return 0;
  }
}

export async function describeChain(file: string, opts: OpenImageOptions): Promise<ChainInfo[]> {
  const opened = await openImage(file, opts);
  try {
    const out: ChainInfo[] = [await describe(opened)];
    const names = await layerNames(opened.image, file);
    for (let img: Image | undefined = opened.image.backingImage; img; img = img.backingImage) {
      const name = names.get(img) ?? '';
      out.push({ ...(await img.info()), filename: name, 'actual-size': allocatedOnDisk(name) });
    }
    return out;
  } finally {
    await opened.image.close();
  }
}
