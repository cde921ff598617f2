/**
 * The VHDX format driver ([MS-VHDX]; qemu block/vhdx*.c for what qemu-img
 * 7.2 reads, writes and checks). Structures: structs.ts; reading: layout.ts
 * (headers, region table, metadata), log.ts (replay), bat.ts (the BAT on the
 * shared engine), open.ts; writing: create.ts.
 *
 * Vocabulary: VHDX "payload block" = our cluster; "sector bitmap block":
 * per-sector presence for differencing disks (refused, like their parents).
 */

import type { BlockDevice } from '../../core/device.js';
import type { CreateOptions, FormatDriver, Image, OpenOptions } from '../types.js';
import { VHDX_CREATE_OPTIONS, createVhdx, vhdxParams } from './create.js';
import { checkVhdx } from './check.js';
import { openVhdx } from './open.js';

export const vhdx: FormatDriver = {
  name: 'vhdx',
  extensions: ['vhdx'],
  probe: (head: Uint8Array) => head.length >= 8 && Buffer.from(head.subarray(0, 8)).toString('latin1') === 'vhdxfile',
  open(child: BlockDevice, opts: OpenOptions): Promise<Image> {
    return openVhdx(child, opts);
  },
  create(child: BlockDevice, opts: CreateOptions): Promise<Image> {
    return createVhdx(child, opts);
  },
  check: checkVhdx,
  createsZeroed: (opts: CreateOptions) => !vhdxParams(opts).fixed,
  createOptions: VHDX_CREATE_OPTIONS,
};
