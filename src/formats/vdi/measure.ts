/**
 * `measure` for VDI (qemu-img 7.2 cannot): the layout imgtool writes (see
 * planLayout): header area, block map, then whole blocks. required = data
 * offset + one block per block holding data (every block when static);
 * fully-allocated = data offset + every block.
 */

import type { CreateOptions, MeasureSource, Measurement } from '../types.js';
import { createParams, planLayout } from './image.js';

export async function measureVdi(opts: CreateOptions, source?: MeasureSource): Promise<Measurement> {
  const p = createParams(opts);
  const { header, blocks, blockSize } = planLayout(p);
  const full = header.offsetData + blocks * blockSize;
  if (p.fixed) return { required: full, 'fully-allocated': full };
  const data = source ? await source.allocated(blockSize) : 0;
  return { required: header.offsetData + data, 'fully-allocated': full };
}
