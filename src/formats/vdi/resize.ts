/**
 * `resize` (grow) for VDI, which qemu-img 7.2 cannot do. The block map has
 * room up to the data area (imgtool and VirtualBox leave it up to a 1 MiB
 * boundary): new entries are written there first, then the header (disk
 * size, block count) in one write, so a crash leaves the old image intact.
 * A fixed image also gets its new blocks (zeros) in the file before that.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { put32le, put64le } from '../../core/bytes.js';
import { OFF, TYPE_FIXED } from './header.js';
import { BLOCK_FREE, encodeEntries } from './blockmap.js';
import { VDI_BLOCKS_IN_IMAGE_MAX, readBlockMap, readHeader } from './image.js';

const usage = (msg: string, value?: number) => new ImageError('usage', `vdi: ${msg}`, { format: 'vdi', value });

export async function resizeVdi(child: BlockDevice, newSize: number): Promise<void> {
  const g = await readHeader(child, { writable: true });
  await readBlockMap(child, g, { writable: true }); // validates the map before anything is written
  const h = g.header;
  if (newSize < g.virtualSize) throw new ImageError('unsupported', 'vdi: shrinking a VDI image is not supported', { format: 'vdi', value: newSize });
  if (newSize % 512 !== 0) throw usage(`the new size ${newSize} is not a multiple of 512`, newSize);
  const oldBlocks = h.blocksInImage;
  const blocks = Math.ceil(newSize / h.blockSize);
  const room = Math.floor((h.offsetData - h.offsetBmap) / 4);
  if (blocks > Math.min(room, VDI_BLOCKS_IN_IMAGE_MAX)) {
    throw new ImageError('unsupported', `vdi: the block map has room for ${room} blocks of ${h.blockSize} bytes; ${blocks} are needed`, { format: 'vdi', value: newSize });
  }
  const fixed = h.imageType === TYPE_FIXED;
  if (blocks > oldBlocks) {
    const map = new Uint32Array(blocks);
    for (let b = oldBlocks; b < blocks; b++) map[b] = fixed ? b : BLOCK_FREE;
    if (fixed) {
      const total = h.blockSize + h.blockExtra;
      const end = h.offsetData + blocks * total;
      if (child.size < end) await child.writeZeroes(child.size, end - child.size);
    }
    await child.write(encodeEntries(map, oldBlocks, blocks - oldBlocks), h.offsetBmap + oldBlocks * 4);
    await child.flush();
  }
  const head = g.headerBytes.slice();
  put64le(head, OFF.disk_size, newSize);
  put32le(head, OFF.blocks_in_image, blocks);
  if (fixed) put32le(head, OFF.blocks_allocated, h.blocksAllocated + (blocks - oldBlocks));
  await child.write(head, 0);
  await child.flush();
}
