/**
 * The VDI format driver (VirtualBox Virtual Disk Image).
 *
 * Spec: VirtualBox src/VBox/Storage/VDICore.h and VDI.cpp; qemu block/vdi.c
 * for what qemu-img reads, writes and checks. Layout of the header and block
 * map: header.ts and blockmap.ts; reading, writing, validation: image.ts.
 *
 * Vocabulary: VirtualBox "block" = qemu "cluster" = our block (1 MiB when we
 * write); "fixed" (VirtualBox) = "static" (qemu -o static=on); "normal" =
 * "dynamic".
 *
 * Reads normal (dynamic) and fixed images, header version 1.1 with the
 * 384-byte (VDIHEADER1) or 400-byte (VDIHEADER1PLUS) header, block sizes
 * VirtualBox opens (128 KiB .. 128 MiB, power of two). Refuses differencing and
 * undo images. Writes images laid out as VirtualBox lays them out, to a
 * file (create) or front to back to a pipe (stream).
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import type { CreateOptions, FormatDriver, Image, OpenOptions } from '../types.js';
import { VDI_SIGNATURE } from './header.js';
import { WarningLog } from '../warnings.js';
import { VDI_CREATE_OPTIONS, VdiImage, createParams, createVdi, readBlockMap, readHeader } from './image.js';
import { streamVdi } from './stream.js';
import { measureVdi } from './measure.js';
import { resizeVdi } from './resize.js';
import { checkVdi } from './check.js';

export { VdiImage } from './image.js';
export { streamVdi } from './stream.js';

export const vdi: FormatDriver = {
  name: 'vdi',
  extensions: ['vdi'],
  probe(head: Uint8Array): boolean {
    if (head.length < 68) return false;
    const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
    return v.getUint32(64, true) === VDI_SIGNATURE;
  },
  async open(child: BlockDevice, opts: OpenOptions): Promise<Image> {
    try {
      const log = new WarningLog('vdi', opts.warn);
      const g = await readHeader(child, { log, writable: !!opts.writable });
      const map = await readBlockMap(child, g, { log, writable: !!opts.writable });
      return new VdiImage(child, g, map, { writable: !!opts.writable, log });
    } catch (e) {
      if (e instanceof ImageError && opts.path && !e.context.path) (e.context as { path?: string }).path = opts.path;
      throw e;
    }
  },
  async create(child: BlockDevice, opts: CreateOptions): Promise<Image> {
    return createVdi(child, createParams(opts));
  },
  stream(source: BlockDevice, opts: CreateOptions): AsyncIterable<Uint8Array> {
    return streamVdi(source, opts);
  },
  createOptions: VDI_CREATE_OPTIONS,
  measure: measureVdi,
  resize: resizeVdi,
  check: checkVdi,
  // A fixed (static) VDI maps every block to the child's bytes.
  createsZeroed: (opts) => !['on', 'yes', 'true'].includes((opts.options.static ?? 'off').toLowerCase()),
};
