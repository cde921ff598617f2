/**
 * `create`: a new empty image of any format the registry can write,
 * optionally an overlay recording a backing file (FormatDriver.recordBacking).
 * Written under a temporary name and renamed at the end (createImage).
 */

import { FileDevice } from '../core/file.js';
import { ImageError } from '../core/errors.js';
import { createImage, driverByName } from '../formats/index.js';
import type { CreateOptions } from '../formats/types.js';

export interface BackingSpec {
  /** The name to record, as given (relative names are relative to the new image's directory). */
  name: string;
  format?: string;
}

export async function createEmpty(file: string, format: string, opts: CreateOptions, backing?: BackingSpec, out: { force?: boolean } = {}): Promise<void> {
  const driver = driverByName(format);
  if (backing && !driver.recordBacking) {
    throw new ImageError('usage', `Backing file not supported for file format '${format}'`, { format });
  }
  const created = await createImage(file, format, opts, out);
  try {
    await created.image.close();
    if (backing) {
      const dev = await FileDevice.open(created.output.tempPath ?? file, { writable: true, growable: true });
      try {
        await driver.recordBacking!(dev, backing);
      } finally {
        await dev.close();
      }
    }
    await created.output.commit();
  } catch (e) {
    await created.output.abort();
    throw e;
  }
}
