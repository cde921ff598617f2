/**
 * Which bytes of an ext2/3/4 filesystem are in use.
 *
 * libext2fs (the `ext2fs` package, through withExtFs) mounts the filesystem
 * over a copy-on-write overlay (so even its bookkeeping writes never reach
 * the input) and `trim()` reports every free block range as a discard; the
 * used ranges are the complement. libext2fs reads the block bitmaps itself,
 * including groups whose bitmap is not initialised (BLOCK_UNINIT), which a
 * hand-written bitmap reader would have to reconstruct.
 */

import type { BlockDevice } from '../core/device.js';
import { withExtFs } from './ext.js';

export interface ByteRange {
  offset: number;
  length: number;
}

/** Used byte ranges of the ext filesystem on `fsDev` (sorted, merged). */
export async function extUsedRanges(fsDev: BlockDevice): Promise<ByteRange[]> {
  const free: ByteRange[] = [];
  await withExtFs(fsDev, (fs) => fs.trim(), { readOnly: true, onDiscard: (offset, length) => free.push({ offset, length }) });
  free.sort((a, b) => a.offset - b.offset);
  const used: ByteRange[] = [];
  let pos = 0;
  for (const f of free) {
    const start = Math.max(0, Math.min(f.offset, fsDev.size));
    const end = Math.max(start, Math.min(f.offset + f.length, fsDev.size));
    if (start > pos) used.push({ offset: pos, length: start - pos });
    pos = Math.max(pos, end);
  }
  if (pos < fsDev.size) used.push({ offset: pos, length: fsDev.size - pos });
  return used;
}
