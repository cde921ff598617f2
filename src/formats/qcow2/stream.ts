/**
 * A qcow2 image written front to back, for outputs that cannot seek (a pipe).
 *
 * Pass 1 walks the source's allocation and reads its data, marking the
 * clusters that hold anything but zeros (one bit per cluster). The whole
 * layout follows from that bitmap, so pass 2 emits it in file order:
 *
 *   cluster 0              header
 *   refcount table         covering everything below
 *   refcount blocks        every cluster of the file has refcount 1
 *   L1 table
 *   L2 tables              one per L1 entry that maps any data, in L1 order
 *   data clusters          in guest order
 *
 * Compression (-c) and preallocation need sizes or space decided after the
 * data, so they are refused here.
 */

import type { BlockDevice } from '../../core/device.js';
import { isZero } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import type { CreateOptions } from '../types.js';
import { freshHeader, parseCreateOptions } from './create.js';
import { FORMAT, MAX_L1_BYTES, MAX_REFTABLE_BYTES, encodeHeader, putU64 } from './header.js';
import { ALL_SUBCLUSTERS, encodeStd } from './l2.js';
import { setRefcount } from './refcount.js';

const CHUNK = 2 << 20;

export async function* qcow2Stream(source: BlockDevice, opts: CreateOptions): AsyncGenerator<Uint8Array> {
  const p = parseCreateOptions(opts.options);
  if (opts.compress) {
    throw new ImageError('unsupported', 'qcow2: compressed images cannot be written to a pipe (their layout depends on the compressed sizes); write to a file', { format: FORMAT });
  }
  if (p.preallocateMetadata) throw new ImageError('unsupported', 'qcow2: preallocation cannot be written to a pipe', { format: FORMAT });
  const size = source.size;
  const cs = 2 ** p.clusterBits;
  const entryBytes = p.extendedL2 ? 16 : 8;
  const l2Entries = cs / entryBytes;
  const l1Size = Math.ceil(size / (l2Entries * cs));
  if (l1Size * 8 > MAX_L1_BYTES) throw new ImageError('usage', `qcow2: virtual size ${size} needs a larger cluster_size`, { format: FORMAT });
  const clusters = Math.ceil(size / cs);

  // Pass 1: which clusters hold data.
  const used = new Uint8Array(Math.ceil(clusters / 8));
  const buf = new Uint8Array(CHUNK);
  for (let pos = 0; pos < size; ) {
    const e = await source.status(pos, size - pos);
    if (e.kind === 'data') {
      // Whole clusters around the extent (a cluster may hold data from two extents).
      const first = Math.floor(e.offset / cs) * cs;
      const end = Math.min(size, Math.ceil((e.offset + e.length) / cs) * cs);
      for (let p0 = first; p0 < end; p0 += CHUNK) {
        const n = Math.min(CHUNK, end - p0);
        const view = buf.subarray(0, n);
        await source.read(view, p0);
        for (let c = 0; c < n; c += cs) {
          const gc = (p0 + c) / cs;
          if (!(used[gc >> 3]! & (1 << (gc & 7))) && !isZero(view.subarray(c, Math.min(n, c + cs)))) used[gc >> 3]! |= 1 << (gc & 7);
        }
      }
    }
    pos = e.offset + e.length;
  }
  const isUsed = (gc: number) => (used[gc >> 3]! & (1 << (gc & 7))) !== 0;
  let dataClusters = 0;
  const l2Needed = new Uint8Array(l1Size);
  for (let gc = 0; gc < clusters; gc++) {
    if (isUsed(gc)) {
      dataClusters++;
      l2Needed[Math.floor(gc / l2Entries)] = 1;
    }
  }
  let l2Count = 0;
  for (const x of l2Needed) l2Count += x;

  // Layout.
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const perBlock = (cs * 8) >> p.refcountOrder;
  let rtClusters = 1;
  let rbClusters = 1;
  for (;;) {
    const total = 1 + rtClusters + rbClusters + l1Clusters + l2Count + dataClusters;
    const nb = Math.ceil(total / perBlock);
    const nrt = Math.max(1, Math.ceil((nb * 8) / cs));
    if (nb === rbClusters && nrt === rtClusters) break;
    rbClusters = nb;
    rtClusters = nrt;
  }
  if (rtClusters * cs > MAX_REFTABLE_BYTES) throw new ImageError('unsupported', 'qcow2: image too large for the refcount table limit', { format: FORMAT });
  const rtOff = cs;
  const rbOff = rtOff + rtClusters * cs;
  const l1Off = rbOff + rbClusters * cs;
  const l2Off = l1Off + l1Clusters * cs;
  const dataOff = l2Off + l2Count * cs;
  const total = dataOff / cs + dataClusters;

  const h = freshHeader(p, size, { l1Size, l1Offset: l1Off, refcountTableOffset: rtOff, refcountTableClusters: rtClusters });
  yield encodeHeader(h);

  const rt = new Uint8Array(rtClusters * cs);
  for (let b = 0; b < rbClusters; b++) putU64(rt, b * 8, rbOff + b * cs);
  yield rt;

  for (let b = 0; b < rbClusters; b++) {
    const blk = new Uint8Array(cs);
    const firstCluster = b * perBlock;
    const n = Math.min(perBlock, total - firstCluster);
    for (let i = 0; i < n; i++) setRefcount(blk, p.refcountOrder, i, 1);
    yield blk;
  }

  // L1, then the L2 tables; data host offsets follow guest order.
  const l1 = new Uint8Array(l1Clusters * cs);
  let nextL2 = l2Off;
  for (let i = 0; i < l1Size; i++) {
    if (!l2Needed[i]) continue;
    putU64(l1, i * 8, nextL2);
    l1[i * 8] |= 0x80; // copied: refcount 1
    nextL2 += cs;
  }
  if (l1.length) yield l1;

  let host = dataOff;
  for (let i = 0; i < l1Size; i++) {
    if (!l2Needed[i]) continue;
    const t = new Uint8Array(cs);
    const g0 = i * l2Entries;
    for (let k = 0; k < l2Entries && g0 + k < clusters; k++) {
      if (!isUsed(g0 + k)) continue;
      const [hi, lo] = encodeStd(host, true);
      const o = k * entryBytes;
      const put = (at: number, v: number) => {
        t[at] = v >>> 24;
        t[at + 1] = (v >>> 16) & 0xff;
        t[at + 2] = (v >>> 8) & 0xff;
        t[at + 3] = v & 0xff;
      };
      put(o, hi);
      put(o + 4, lo);
      if (p.extendedL2) put(o + 12, ALL_SUBCLUSTERS);
      host += cs;
    }
    yield t;
  }

  // Pass 2: the data clusters, in runs read in chunks.
  for (let gc = 0; gc < clusters; ) {
    if (!isUsed(gc)) {
      gc++;
      continue;
    }
    let run = 1;
    while (gc + run < clusters && isUsed(gc + run) && run * cs < CHUNK) run++;
    const out = new Uint8Array(run * cs); // fresh: the consumer may hold it until drained
    const avail = Math.min(run * cs, size - gc * cs);
    await source.read(out.subarray(0, avail), gc * cs);
    yield out;
    gc += run;
  }
}
