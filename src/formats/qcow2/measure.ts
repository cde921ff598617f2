/**
 * `measure` for qcow2, by qemu's arithmetic (block/qcow2.c qcow2_measure):
 * fully-allocated = header cluster + every L2 table + the L1 table + the
 * refcount table and blocks covering all of that + the data clusters;
 * required = the same metadata + only the clusters holding data (an upper
 * bound of what convert writes: it skips the L2 tables of empty regions and
 * zero blocks inside allocated clusters).
 */

import type { CreateOptions, MeasureSource, Measurement } from '../types.js';
import { parseCreateOptions } from './create.js';

const ceilDiv = (a: number, b: number) => Math.ceil(a / b);
const roundUp = (a: number, b: number) => ceilDiv(a, b) * b;

/** Refcount table + blocks (bytes) for `clusters` clusters, as qemu's qcow2_refcount_metadata_size. */
export function refcountMetadataSize(clusters: number, cs: number, refcountOrder: number): number {
  const perTableCluster = cs / 8;
  const perBlock = (cs * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = ceilDiv(clusters + table + blocks, perBlock);
    table = ceilDiv(blocks, perTableCluster);
    n = clusters + blocks + table;
  } while (n !== last);
  return (blocks + table) * cs;
}

/** Metadata and data of a fully allocated image, as qemu's qcow2_calc_prealloc_size. */
export function preallocSize(size: number, cs: number, refcountOrder: number, extL2: boolean): number {
  const entry = extL2 ? 16 : 8;
  const aligned = roundUp(size, cs);
  let meta = cs;
  const nl2e = roundUp(aligned / cs, cs / entry);
  meta += nl2e * entry;
  const nl1e = roundUp((nl2e * entry) / cs, cs / 8);
  meta += nl1e * 8;
  meta += refcountMetadataSize((meta + aligned) / cs, cs, refcountOrder);
  return meta + aligned;
}

export async function measureQcow2(opts: CreateOptions, source?: MeasureSource): Promise<Measurement> {
  const p = parseCreateOptions(opts.options);
  const cs = 2 ** p.clusterBits;
  const size = roundUp(opts.size, 512);
  const full = preallocSize(size, cs, p.refcountOrder, p.extendedL2);
  const data = source ? await source.allocated(cs) : 0;
  // preallocation=metadata leaves the data clusters as holes: required stays what the data needs, as qemu says.
  const out: Measurement = { required: full - roundUp(size, cs) + data, 'fully-allocated': full };
  // qemu reports the size of the persistent bitmaps a qcow2 source would bring to a version 3 image; imgtool copies none.
  return source?.format === 'qcow2' && p.version === 3 ? { bitmaps: 0, ...out } : out;
}
