/**
 * `resize` (grow) for qcow version 1, which qemu-img 7.2 cannot do. qcow
 * has no refcounts: when the L1 table must grow, a new one (the old entries,
 * then zeros) is written at the end of the file, and one header write
 * switches size and table together; the old table's bytes are left unused.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { HEADER_SIZE, encodeHeader, parseHeader } from './header.js';

export async function resizeQcow(child: BlockDevice, newSize: number): Promise<void> {
  const head = new Uint8Array(HEADER_SIZE);
  await child.read(head, 0);
  const h = parseHeader(head);
  const oldSize = Number(h.size);
  if (newSize < oldSize) throw new ImageError('unsupported', 'qcow: shrinking a qcow image is not supported', { format: 'qcow', value: newSize });
  if (newSize % 512 !== 0) throw new ImageError('usage', `qcow: the new size ${newSize} is not a multiple of 512`, { format: 'qcow', value: newSize });
  const span = 2 ** (h.clusterBits + h.l2Bits);
  const oldEntries = Math.ceil(oldSize / span);
  const entries = Math.ceil(newSize / span);
  let l1Offset = Number(h.l1TableOffset);
  if (entries > oldEntries) {
    if (entries * 8 > 32 << 20) throw new ImageError('usage', `qcow: a ${newSize}-byte disk needs too large an L1 table`, { format: 'qcow', value: newSize });
    const cs = 2 ** h.clusterBits;
    const table = new Uint8Array(Math.ceil((entries * 8) / 512) * 512);
    const avail = Math.max(0, Math.min(oldEntries * 8, child.size - l1Offset));
    await child.read(table.subarray(0, avail), l1Offset);
    l1Offset = Math.ceil(child.size / cs) * cs;
    await child.write(table, l1Offset);
    await child.flush();
  }
  await child.write(encodeHeader({ ...h, size: BigInt(newSize), l1TableOffset: BigInt(l1Offset) }), 0);
  await child.flush();
}
