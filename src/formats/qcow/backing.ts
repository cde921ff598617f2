/**
 * `create -b` for qcow (version 1): the backing file's name goes right after
 * the 48-byte header, as qemu lays it out, and the (still empty) L1 table
 * moves behind it; 512-byte clusters, as qemu-img creates overlays. qcow
 * records no backing format.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { HEADER_SIZE, encodeHeader, parseHeader } from './header.js';
import { isZero } from '../../core/device.js';

const MAX_NAME = 1023;

export async function recordQcowBacking(child: BlockDevice, backing: { name: string }): Promise<void> {
  const head = new Uint8Array(HEADER_SIZE);
  await child.read(head, 0);
  const h = parseHeader(head);
  const name = Buffer.from(backing.name, 'utf8');
  if (name.length === 0 || name.length > MAX_NAME) {
    throw new ImageError('usage', `qcow: a backing file name must have 1..${MAX_NAME} bytes, not ${name.length}`, { format: 'qcow', value: name.length });
  }
  const oldL1 = Number(h.l1TableOffset);
  const l1Entries = Math.ceil(Number(h.size) / 2 ** (h.clusterBits + h.l2Bits));
  const l1Bytes = Math.ceil((8 * l1Entries) / 512) * 512;
  const old = new Uint8Array(Math.min(l1Bytes, child.size - oldL1));
  await child.read(old, oldL1);
  if (!isZero(old)) throw new ImageError('usage', 'qcow: a backing file can only be recorded in a new, empty image', { format: 'qcow' });
  const l1Offset = Math.ceil((HEADER_SIZE + name.length) / 8) * 8;
  await child.writeZeroes(l1Offset, l1Bytes);
  await child.write(name, HEADER_SIZE);
  // qemu gives overlays 512-byte clusters (less to copy up from the backing file) and 32 KiB L2 tables: the same 2 MiB per L1 entry.
  const layout = { clusterBits: 9, l2Bits: 12 };
  if (layout.clusterBits + layout.l2Bits !== h.clusterBits + h.l2Bits) throw new ImageError('usage', 'qcow: unexpected layout of the new image', { format: 'qcow' });
  await child.write(encodeHeader({ ...h, ...layout, backingFileOffset: BigInt(HEADER_SIZE), backingFileSize: name.length, l1TableOffset: BigInt(l1Offset) }), 0);
  await child.flush();
}
