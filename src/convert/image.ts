/** Convert an opened image into a new image file: create, copy, close, commit (or remove on failure). */

import type { OpenedImage } from '../formats/index.js';
import { createImage } from '../formats/index.js';
import { copyDevice, type CopyStats } from './convert.js';
import type { Progress } from './progress.js';

export interface ConvertImageOptions {
  format: string;
  options?: Record<string, string>;
  compress?: boolean;
  sparseSize?: number;
  force?: boolean;
  progress?: Progress;
  signal?: AbortSignal;
}

export interface ConvertResult extends CopyStats {
  source: string;
  'source-format': string;
  target: string;
  'target-format': string;
  'virtual-size': number;
}

export async function convertImage(src: OpenedImage, dst: string, opts: ConvertImageOptions): Promise<ConvertResult> {
  const created = await createImage(
    dst,
    opts.format,
    { size: src.image.size, options: opts.options ?? {}, compress: opts.compress },
    { force: opts.force, inputs: [src.path] },
  );
  try {
    const info = await created.image.info();
    const stats = await copyDevice(src.image, created.image, {
      sparseSize: opts.sparseSize,
      targetGranularity: info['cluster-size'],
      targetIsZero: created.zeroInit,
      concurrency: opts.compress ? 8 : 4,
      orderedWrites: !opts.compress,
      progress: opts.progress,
      signal: opts.signal,
    });
    // Data durable before the rename makes the output visible.
    await created.image.flush();
    await created.image.close();
    await created.output.commit();
    return {
      source: src.path,
      'source-format': src.driver.name,
      target: dst,
      'target-format': created.driver.name,
      'virtual-size': src.image.size,
      ...stats,
    };
  } catch (e) {
    await created.image.close().catch(() => {});
    await created.output.abort();
    throw e;
  }
}

/** convertImage, then close the source. */
export async function convertOpened(src: OpenedImage, dst: string, opts: ConvertImageOptions): Promise<ConvertResult> {
  try {
    return await convertImage(src, dst, opts);
  } finally {
    await src.image.close();
  }
}
