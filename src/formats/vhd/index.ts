/**
 * The VHD format driver (qemu calls it `vpc`): Microsoft's "Virtual Hard
 * Disk Image Format Specification"; qemu block/vpc.c for what qemu-img 7.2
 * reads and writes. Layouts: footer.ts; reading: open.ts, dynamic.ts;
 * writing: create.ts (fixed, dynamic on the shared engine), stream.ts.
 *
 * Probing: dynamic and differencing disks start with a footer copy
 * ("conectix" at offset 0); a fixed disk has its footer only at the end of
 * the file, found by `probeTail` when no format matched the head. A file
 * whose last 512 bytes are a whole, checksummed fixed-disk footer whose size
 * fits the file is taken as a fixed VHD (qemu-img probes the head only and
 * calls it raw): `-f raw` reads such a file as raw.
 */

import type { BlockDevice } from '../../core/device.js';
import type { CreateOptions, FormatDriver, Image, OpenOptions } from '../types.js';
import { VHD_CREATE_OPTIONS, createVhd, vhdParams } from './create.js';
import { FOOTER_SIZE, Footer, TYPE_FIXED, ascii, footerValid, virtualSize } from './footer.js';
import { openVhd } from './open.js';
import { streamVhd } from './stream.js';

/** A fixed-disk footer at the end of a file of `fileSize` bytes: cookie, checksum, type, and a size that fits. */
export function probeVhdTail(tail: Uint8Array, fileSize: number): boolean {
  if (tail.length < FOOTER_SIZE || !footerValid(tail)) return false;
  const f = Footer.parse(tail);
  return f.diskType === TYPE_FIXED && virtualSize(f).bytes <= fileSize - FOOTER_SIZE;
}

export const vpc: FormatDriver = {
  name: 'vpc',
  extensions: ['vhd', 'vpc'],
  probe: (head: Uint8Array) => head.length >= 8 && ascii(head.subarray(0, 8)) === 'conectix',
  probeTail: probeVhdTail,
  open(child: BlockDevice, opts: OpenOptions): Promise<Image> {
    return openVhd(child, opts);
  },
  create(child: BlockDevice, opts: CreateOptions): Promise<Image> {
    return createVhd(child, opts);
  },
  stream(source: BlockDevice, opts: CreateOptions): AsyncIterable<Uint8Array> {
    return streamVhd(source, opts);
  },
  createsZeroed: (opts: CreateOptions) => !vhdParams(opts).fixed,
  createOptions: VHD_CREATE_OPTIONS,
};
