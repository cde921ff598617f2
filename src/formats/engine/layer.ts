/**
 * A device's own run at an offset with its host offset (Image.layerStatus,
 * for map and check): the driver's `lookup` when the device is the shared
 * engine's, the device's status (no host offsets) otherwise.
 */

import type { BlockDevice } from '../../core/device.js';
import type { LayerRun } from '../types.js';
import { MappedDevice } from './engine.js';

export async function layerStatusOf(dev: BlockDevice, offset: number, length: number): Promise<LayerRun> {
  if (!(dev instanceof MappedDevice)) {
    const e = await dev.status(offset, length);
    return { kind: e.kind, length: e.length };
  }
  const m = await dev.fmt.lookup(offset, length);
  const len = Math.max(1, Math.min(m.length, length));
  return m.kind === 'data' ? { kind: 'data', length: len, host: m.host } : { kind: m.kind, length: len };
}
