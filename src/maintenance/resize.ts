/**
 * `resize`: a new virtual size for an image, through its driver's
 * FormatDriver.resize (per-format, crash-safe, in the container file).
 * A shrink happens only when asked for (qemu-img's --shrink rule).
 */

import { FileDevice } from '../core/file.js';
import { ImageError } from '../core/errors.js';
import { parseSize } from '../core/size.js';
import type { FormatDriver } from '../formats/types.js';

/** `SIZE`, `+SIZE` or `-SIZE` (relative to `current`), as qemu-img resize takes it. */
export function newSizeFrom(spec: string, current: number): number {
  const sign = spec[0] === '+' ? 1 : spec[0] === '-' ? -1 : 0;
  const n = parseSize(sign ? spec.slice(1) : spec, 'size');
  const size = sign ? current + sign * n : n;
  if (size < 0) throw new ImageError('usage', 'New image size must be positive', { value: size });
  return size;
}

export async function resizeImage(file: string, driver: FormatDriver, current: number, newSize: number, shrink: boolean): Promise<void> {
  if (newSize < current && !shrink) throw new ImageError('usage', 'Use the --shrink option to perform a shrink operation.', { path: file, value: newSize });
  if (!driver.resize) throw new ImageError('unsupported', `Image format driver does not support resize (${driver.name})`, { format: driver.name });
  const child = await FileDevice.open(file, { writable: true, growable: true });
  try {
    await driver.resize(child, newSize);
  } finally {
    await child.close();
  }
}
