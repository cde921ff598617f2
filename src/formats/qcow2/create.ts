/**
 * Creating a qcow2 image: options (qemu-img's `-o` names and values) and the
 * initial layout, then the image is opened writable and data goes through
 * the same write path as any other write.
 *
 * Layout of a new image (all cluster aligned):
 *   cluster 0                         header + extensions (feature name table)
 *   1 .. rt                           refcount table, sized for the whole virtual disk
 *   then                              refcount block(s) covering the metadata
 *   then                              L1 table (zeros: every L2 unallocated)
 * Data clusters and L2 tables are appended after this as they are written;
 * L2 tables and refcount blocks are written back at close (or when the
 * bounded cache fills), after the data they point at.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import type { CreateOptions, Image } from '../types.js';
import {
  COMPAT_LAZY_REFCOUNTS,
  FORMAT,
  INCOMPAT_COMPRESSION,
  INCOMPAT_EXTL2,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MAX_REFTABLE_BYTES,
  MIN_CLUSTER_BITS,
  type Qcow2Header,
  encodeHeader,
  putU64,
} from './header.js';
import { openQcow2 } from './image.js';
import { setRefcount } from './refcount.js';

export const CREATE_OPTIONS: Readonly<Record<string, string>> = {
  compat: "qcow2 version: '1.1' or 'v3' (default), '0.10' or 'v2'",
  cluster_size: 'cluster size, a power of two from 512 to 2M (default 64k); suffixes k, M as in qemu-img',
  refcount_bits: 'width of a refcount: 1, 2, 4, 8, 16 (default), 32 or 64; version 2 images need 16',
  lazy_refcounts: "'on' sets the lazy refcounts flag (version 3 only; imgtool itself always keeps refcounts exact). Default off",
  extended_l2: "'on' uses extended L2 entries with 32 subclusters per cluster (version 3, cluster_size >= 16k). Default off",
  compression_type: "'zlib' (default) or 'zstd' (version 3 only): how -c compresses clusters",
  preallocation: "'off' (default) or 'metadata' (L2 tables and clusters for the whole disk, as holes)",
};

export interface Qcow2CreateParams {
  version: 2 | 3;
  clusterBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  preallocateMetadata: boolean;
  /** compression_type=zstd (header field and incompatible bit 3). */
  zstd: boolean;
}

const usage = (msg: string, value?: string) => new ImageError('usage', `qcow2: ${msg}`, { format: FORMAT, value });

/** qemu-img style sizes: 512, 64k, 2M, 1.5G (binary multiples). */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpPeE]?)(?:i?[bB])?\s*$/.exec(text);
  if (!m) throw usage(`'${text}' is not a size`, text);
  const mult = 1024 ** ' kmgtpe'.indexOf((m[2] || ' ').toLowerCase());
  const v = Number(m[1]) * mult;
  if (!Number.isSafeInteger(v)) throw usage(`size '${text}' is not a whole number of bytes`, text);
  return v;
}

function onOff(key: string, v: string): boolean {
  if (v === 'on' || v === 'true' || v === 'yes') return true;
  if (v === 'off' || v === 'false' || v === 'no') return false;
  throw usage(`${key} must be 'on' or 'off', not '${v}'`, v);
}

export function parseCreateOptions(options: Record<string, string>): Qcow2CreateParams {
  for (const k of Object.keys(options)) {
    if (!(k in CREATE_OPTIONS)) throw usage(`unknown option '${k}' (known: ${Object.keys(CREATE_OPTIONS).join(', ')})`, k);
  }
  const p: Qcow2CreateParams = { version: 3, clusterBits: 16, refcountOrder: 4, lazyRefcounts: false, extendedL2: false, preallocateMetadata: false, zstd: false };
  const compat = options.compat;
  if (compat !== undefined) {
    if (compat === '1.1' || compat === 'v3') p.version = 3;
    else if (compat === '0.10' || compat === 'v2') p.version = 2;
    else throw usage(`compat must be 0.10 or 1.1 (or v2, v3), not '${compat}'`, compat);
  }
  if (options.cluster_size !== undefined) {
    const cs = parseSize(options.cluster_size);
    const bits = Math.log2(cs);
    if (!Number.isInteger(bits) || bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
      throw usage(`cluster_size must be a power of two between 512 and 2M, not ${options.cluster_size}`, options.cluster_size);
    }
    p.clusterBits = bits;
  }
  if (options.refcount_bits !== undefined) {
    const n = Number(options.refcount_bits);
    const order = Math.log2(n);
    if (!Number.isInteger(order) || order < 0 || order > 6) {
      throw usage(`refcount_bits must be a power of two from 1 to 64, not '${options.refcount_bits}'`, options.refcount_bits);
    }
    p.refcountOrder = order;
  }
  if (p.version === 2 && p.refcountOrder !== 4) throw usage('refcount_bits other than 16 need compat=1.1');
  if (options.lazy_refcounts !== undefined) p.lazyRefcounts = onOff('lazy_refcounts', options.lazy_refcounts);
  if (p.lazyRefcounts && p.version === 2) throw usage('lazy_refcounts=on needs compat=1.1');
  if (options.extended_l2 !== undefined) p.extendedL2 = onOff('extended_l2', options.extended_l2);
  if (p.extendedL2 && p.version === 2) throw usage('extended_l2=on needs compat=1.1');
  if (p.extendedL2 && p.clusterBits < 14) throw usage('extended_l2=on needs cluster_size of at least 16k');
  const ct = options.compression_type;
  if (ct !== undefined && ct !== 'zlib' && ct !== 'zstd') throw usage(`compression_type must be zlib or zstd, not '${ct}'`, ct);
  p.zstd = ct === 'zstd';
  if (p.zstd && p.version === 2) throw usage('compression_type=zstd needs compat=1.1');
  const pre = options.preallocation;
  if (pre === 'metadata') p.preallocateMetadata = true;
  else if (pre !== undefined && pre !== 'off') {
    if (['falloc', 'full'].includes(pre)) {
      throw new ImageError('unsupported', `qcow2: preallocation=${pre} is not supported (off or metadata)`, { format: FORMAT, value: pre });
    }
    throw usage(`preallocation must be off or metadata, not '${pre}'`, pre);
  }
  return p;
}

/** Lay out an empty image on `child` and open it for writing. */
export async function createQcow2(child: BlockDevice, opts: CreateOptions): Promise<Image> {
  const p = parseCreateOptions(opts.options);
  const size = opts.size;
  if (!Number.isSafeInteger(size) || size < 0) throw usage(`virtual size ${size} is not a valid size`);
  const cs = 2 ** p.clusterBits;
  const l2Entries = cs / (p.extendedL2 ? 16 : 8);
  const l1Size = Math.ceil(size / (l2Entries * cs));
  if (l1Size * 8 > MAX_L1_BYTES) {
    throw usage(`virtual size ${size} needs an L1 table of ${l1Size} entries, more than qemu's limit of ${MAX_L1_BYTES / 8}: use a larger cluster_size`);
  }
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const perBlock = (cs * 8) >> p.refcountOrder;

  // Refcount table sized for the finished image (data + L2 tables + itself), within qemu's limit.
  const estimate = Math.ceil(size / cs) + l1Size + l1Clusters + 16;
  let rtClusters = 1;
  let rbClusters = 1;
  for (;;) {
    const meta = 1 + rtClusters + rbClusters + l1Clusters;
    const blocksNow = Math.ceil(meta / perBlock);
    const entriesWanted = Math.ceil((estimate + meta) / perBlock) + 1;
    const wantRt = Math.min(Math.ceil((entriesWanted * 8) / cs), MAX_REFTABLE_BYTES / cs);
    const needRt = Math.ceil((blocksNow * 8) / cs);
    const nextRt = Math.max(needRt, wantRt, 1);
    if (nextRt === rtClusters && blocksNow === rbClusters) break;
    rtClusters = nextRt;
    rbClusters = blocksNow;
  }
  const rtOffset = cs;
  const rbOffset = rtOffset + rtClusters * cs;
  const l1Offset = rbOffset + rbClusters * cs;
  const metaClusters = 1 + rtClusters + rbClusters + l1Clusters;

  const h = freshHeader(p, size, { l1Size, l1Offset, refcountTableOffset: rtOffset, refcountTableClusters: rtClusters });
  if (p.preallocateMetadata && child.size > 0) {
    throw new ImageError('unsupported', 'qcow2: preallocation=metadata needs a new, empty file (its clusters must read as zero)', { format: FORMAT, path: opts.path });
  }
  const head = new Uint8Array((1 + rtClusters + rbClusters) * cs);
  head.set(encodeHeader(h), 0);
  for (let b = 0; b < rbClusters; b++) putU64(head, rtOffset + b * 8, rbOffset + b * cs);
  for (let c = 0; c < metaClusters; c++) {
    const blk = Math.floor(c / perBlock);
    setRefcount(head.subarray(rbOffset + blk * cs, rbOffset + (blk + 1) * cs), p.refcountOrder, c % perBlock, 1);
  }
  await child.write(head, 0);
  if (l1Clusters) await child.writeZeroes(l1Offset, l1Clusters * cs);
  const img = await openQcow2(child, { writable: true, path: opts.path }, { compress: opts.compress, allocEnd: metaClusters * cs });
  if (p.preallocateMetadata) {
    try {
      await img.preallocateMetadata();
    } catch (e) {
      await img.close().catch(() => {});
      throw e;
    }
  }
  return img;
}

/** The header of a new image (create and stream lay out the same one). */
export function freshHeader(
  p: ReturnType<typeof parseCreateOptions>,
  size: number,
  at: { l1Size: number; l1Offset: number; refcountTableOffset: number; refcountTableClusters: number },
): Qcow2Header {
  return {
    version: p.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: p.clusterBits,
    size,
    cryptMethod: 0,
    l1Size: at.l1Size,
    l1TableOffset: at.l1Offset,
    refcountTableOffset: at.refcountTableOffset,
    refcountTableClusters: at.refcountTableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatible: (p.extendedL2 ? INCOMPAT_EXTL2 : 0) | (p.zstd ? INCOMPAT_COMPRESSION : 0),
    incompatibleHigh: 0,
    compatible: p.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0,
    compatibleHigh: 0,
    autoclear: 0,
    autoclearHigh: 0,
    refcountOrder: p.refcountOrder,
    headerLength: p.version === 3 ? 112 : 72,
    compressionType: p.zstd ? 1 : 0,
    featureNames: [],
    hasBitmaps: false,
  };
}
