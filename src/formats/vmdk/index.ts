/**
 * The VMDK format driver (VMware virtual disks).
 *
 * Spec: VMware "Virtual Disk Format 5.0" (descriptor, hosted sparse extents,
 * stream-optimized extents); qemu block/vmdk.c for what qemu-img reads,
 * writes and checks.
 *
 * Vocabulary: VMware "grain" = our cluster (64 KiB when we write); grain
 * directory (GD) / grain table (GT) = L1 / L2 tables; "extent" = one file
 * (or zero run) of a disk; "descriptor" = the text naming the extents.
 *
 * Reads: monolithicSparse, monolithicFlat, twoGbMaxExtentSparse,
 * twoGbMaxExtentFlat, streamOptimized (GD at the start as qemu writes it, or
 * in the footer), vmfs; extents SPARSE, FLAT, ZERO, VMFS. Refuses VMFSSPARSE,
 * seSparse and delta links without --backing.
 * Writes: monolithicSparse on the shared engine (open.ts, create.ts,
 * sparse.ts); streamOptimized front to back (stream.ts).
 */

import type { BlockDevice } from '../../core/device.js';
import type { CreateOptions, FormatDriver, Image, OpenOptions } from '../types.js';
import { VMDK_CREATE_OPTIONS, createMonolithicSparse, vmdkParams } from './create.js';
import { openVmdk, probeVmdk } from './open.js';
import { StreamCreateImage, streamVmdk } from './stream.js';

export const vmdk: FormatDriver = {
  name: 'vmdk',
  extensions: ['vmdk'],
  probe: probeVmdk,
  open(child: BlockDevice, opts: OpenOptions): Promise<Image> {
    return openVmdk(child, opts);
  },
  async create(child: BlockDevice, opts: CreateOptions): Promise<Image> {
    const p = vmdkParams(opts);
    return p.subformat === 'streamOptimized' ? StreamCreateImage.create(child, opts) : createMonolithicSparse(child, p);
  },
  stream(source: BlockDevice, opts: CreateOptions): AsyncIterable<Uint8Array> {
    return streamVmdk(source, opts);
  },
  createsZeroed: () => true,
  createOptions: VMDK_CREATE_OPTIONS,
};
