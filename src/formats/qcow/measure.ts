/**
 * `measure` for qcow (version 1; qemu-img 7.2 cannot): the layout imgtool
 * writes (createQcow): 48-byte header, the L1 table in whole sectors, then
 * 4 KiB clusters: an L2 table (512 entries, 2 MiB of guest) per region
 * holding data, and the data clusters. required counts the regions and
 * clusters holding data; fully-allocated counts all of them.
 */

import type { CreateOptions, MeasureSource, Measurement } from '../types.js';
import { ImageError } from '../../core/errors.js';
import { HEADER_SIZE } from './header.js';

const CLUSTER = 4096;
const L2_SPAN = 512 * CLUSTER;
const roundUp = (a: number, b: number) => Math.ceil(a / b) * b;

export async function measureQcow(opts: CreateOptions, source?: MeasureSource): Promise<Measurement> {
  const keys = Object.keys(opts.options);
  if (keys.length) throw new ImageError('usage', `qcow: unknown option '${keys[0]}' (qcow takes no -o options)`, { format: 'qcow', value: keys[0] });
  const size = roundUp(opts.size, 512);
  const tables = roundUp(HEADER_SIZE + roundUp(8 * Math.ceil(size / L2_SPAN), 512), CLUSTER);
  const full = tables + Math.ceil(size / L2_SPAN) * CLUSTER + roundUp(size, CLUSTER);
  if (!source) return { required: tables, 'fully-allocated': full };
  const l2 = (await source.allocated(L2_SPAN)) / L2_SPAN;
  return { required: tables + l2 * CLUSTER + (await source.allocated(CLUSTER)), 'fully-allocated': full };
}
