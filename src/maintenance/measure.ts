/**
 * `measure`: the bytes a new image needs, from the output driver's formula
 * (FormatDriver.measure) and the source's allocation, counted as qemu-img
 * measure counts it: every `unit`-aligned unit touched by data (data in any
 * layer of the chain; zero and unallocated ranges are free).
 */

import type { BlockDevice } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import type { CreateOptions, FormatDriver, MeasureSource, Measurement } from '../formats/types.js';

/** Bytes of the `unit`-aligned units of `dev` that hold data. */
export async function allocatedUnits(dev: BlockDevice, unit: number): Promise<number> {
  let total = 0;
  for (let pos = 0; pos < dev.size; ) {
    const e = await dev.status(pos, dev.size - pos);
    if (e.kind !== 'data') {
      pos += e.length;
      continue;
    }
    // The rest of the last unit touched is counted with it, and not looked at again.
    const end = Math.min(dev.size, Math.ceil((pos + e.length) / unit) * unit);
    total += Math.ceil(end / unit) * unit - Math.floor(pos / unit) * unit;
    pos = Math.ceil(end / unit) * unit;
  }
  return total;
}

export function measureSource(dev: BlockDevice, format: string): MeasureSource {
  return { format, allocated: (unit) => allocatedUnits(dev, unit) };
}

export async function measure(driver: FormatDriver, opts: CreateOptions, source?: MeasureSource): Promise<Measurement> {
  if (!driver.measure) throw new ImageError('unsupported', `Block driver '${driver.name}' does not support size measurement`, { format: driver.name });
  return driver.measure(opts, source);
}
