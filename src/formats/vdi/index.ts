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
 * undo images. Writes images laid out as VirtualBox lays them out.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import type { CreateOptions, FormatDriver, Image, OpenOptions } from '../types.js';
import { VDI_SIGNATURE } from './header.js';
import { VdiImage, createVdi, readBlockMap, readHeader } from './image.js';

export { VdiImage } from './image.js';

const CREATE_OPTIONS = {
  static: "on|off: a fixed-size image with every block allocated up front (VirtualBox 'Fixed size'); default off (dynamically allocated)",
} as const;

/** qemu's boolean option spellings. */
function parseBool(key: string, value: string): boolean {
  const v = value.toLowerCase();
  if (['on', 'yes', 'true'].includes(v)) return true;
  if (['off', 'no', 'false'].includes(v)) return false;
  throw new ImageError('usage', `vdi: option ${key} takes on or off, not '${value}'`, { format: 'vdi', value });
}

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
      const g = await readHeader(child);
      const map = await readBlockMap(child, g);
      return new VdiImage(child, g, map, { writable: !!opts.writable });
    } catch (e) {
      if (e instanceof ImageError && opts.path && !e.context.path) (e.context as { path?: string }).path = opts.path;
      throw e;
    }
  },
  async create(child: BlockDevice, opts: CreateOptions): Promise<Image> {
    let fixed = false;
    for (const [key, value] of Object.entries(opts.options)) {
      if (key === 'static') fixed = parseBool(key, value);
      else {
        throw new ImageError('usage', `vdi: unknown option '${key}' (known: ${Object.keys(CREATE_OPTIONS).join(', ')})`, {
          format: 'vdi',
          value: key,
        });
      }
    }
    if (opts.compress) {
      throw new ImageError('usage', 'vdi images cannot be compressed (-c): VDI has no compressed blocks; use qcow2 or qcow', {
        format: 'vdi',
      });
    }
    if (!Number.isSafeInteger(opts.size) || opts.size < 0) {
      throw new ImageError('usage', `vdi: invalid size ${opts.size}`, { format: 'vdi', value: opts.size });
    }
    return createVdi(child, { size: opts.size, fixed });
  },
  createOptions: CREATE_OPTIONS,
};
