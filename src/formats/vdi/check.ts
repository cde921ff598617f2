/**
 * `check` for VDI, by qemu's rules (block/vdi.c vdi_co_check): every block
 * map entry names a data block below blocks_in_image, no data block is
 * named twice, and blocks_allocated counts them. Read-only: VDI has no
 * repair (qemu-img refuses -r on VDI too).
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import type { CheckResult, Repair } from '../types.js';
import { decodeEntries, isAllocated } from './blockmap.js';
import { MAP_CHUNK_ENTRIES, readHeader } from './image.js';

export async function checkVdi(child: BlockDevice, repair: Repair, say: (line: string) => void): Promise<CheckResult> {
  // As qemu-img: VDI has no repair, and `check -r` on it answers as a format without checks.
  if (repair) throw new ImageError('unsupported', 'This image format does not support checks (vdi has no repair)', { format: 'vdi' });
  const h = (await readHeader(child)).header;
  const n = h.blocksInImage;
  const owner = new Uint32Array(n).fill(0xffffffff);
  let corruptions = 0;
  let allocated = 0;
  const buf = new Uint8Array(Math.min(MAP_CHUNK_ENTRIES, n) * 4);
  const entries = new Uint32Array(Math.min(MAP_CHUNK_ENTRIES, n));
  for (let first = 0; first < n; first += MAP_CHUNK_ENTRIES) {
    const count = Math.min(MAP_CHUNK_ENTRIES, n - first);
    await child.read(buf.subarray(0, count * 4), h.offsetBmap + first * 4);
    decodeEntries(buf.subarray(0, count * 4), entries);
    for (let k = 0; k < count; k++) {
      const e = entries[k]!;
      if (!isAllocated(e)) continue;
      if (e >= n) {
        say(`ERROR: block index ${first + k} too large, is ${e}`);
        corruptions++;
        continue;
      }
      allocated++;
      if (owner[e] === 0xffffffff) owner[e] = e;
      else {
        say(`ERROR: block index ${owner[e]} also used by ${e}`);
        corruptions++;
      }
    }
  }
  if (allocated !== h.blocksAllocated) {
    say(`ERROR: allocated blocks mismatch, is ${allocated}, should be ${h.blocksAllocated}`);
    corruptions++;
  }
  const out: CheckResult = { 'check-errors': 0 };
  if (corruptions) out.corruptions = corruptions;
  return out;
}
