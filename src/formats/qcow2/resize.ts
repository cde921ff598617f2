/**
 * `resize` for qcow2, in the container file, crash-safe: whatever point a
 * crash stops at leaves an image that reads correctly and at worst has
 * leaked clusters (`check -r leaks` frees them).
 *
 *   grow    within the L1 table: one header write (the virtual size).
 *           Beyond it: a new, larger L1 table (and refcount blocks for it)
 *           at the end of the file, counted; then the header switches to
 *           it in one write; then the old table's clusters are freed.
 *   shrink  the header's size first (the guest no longer sees the tail);
 *           then L2 entries and L1 entries past the end are cleared; then
 *           the clusters they held are freed. Refused on images with
 *           snapshots (they share those clusters), as qemu refuses.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { FORMAT, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY } from './header.js';
import { Qcow2File, entryClusters, entryWords } from './offline.js';

export async function resizeQcow2(child: BlockDevice, newSize: number): Promise<void> {
  const f = await Qcow2File.open(child);
  const h = f.h;
  if (h.incompatible & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)) {
    throw new ImageError('corrupt', `qcow2: the image is marked ${h.incompatible & INCOMPAT_CORRUPT ? 'corrupt' : 'dirty'}: run 'imgtool check -r all' first`, { format: FORMAT });
  }
  if (!Number.isSafeInteger(newSize) || newSize < 0) throw new ImageError('usage', `qcow2: invalid size ${newSize}`, { format: FORMAT, value: newSize });
  if (newSize % 512 !== 0) throw new ImageError('usage', `qcow2: the new size ${newSize} is not a multiple of 512`, { format: FORMAT, value: newSize });
  if (newSize >= h.size) return grow(f, newSize);
  if (h.nbSnapshots) throw new ImageError('unsupported', "qcow2: can't shrink an image which has snapshots", { format: FORMAT });
  if (h.incompatible & INCOMPAT_DATA_FILE) throw new ImageError('unsupported', 'qcow2: shrinking an image with an external data file is not supported', { format: FORMAT });
  return shrink(f, newSize);
}

async function grow(f: Qcow2File, newSize: number): Promise<void> {
  const { h, cs, child } = f;
  const need = Math.ceil(newSize / (f.l2Entries * cs));
  if (need <= h.l1Size) {
    await f.writeSizeAndL1(newSize, h.l1Size, h.l1TableOffset);
    await child.flush();
    return;
  }
  if (need * 8 > 32 << 20) throw new ImageError('usage', `qcow2: a ${newSize}-byte disk needs an L1 table larger than qemu's limit`, { format: FORMAT, value: newSize });
  const oldL1 = await f.readBytes(h.l1TableOffset, h.l1Size * 8);
  const l1Clusters = Math.ceil((need * 8) / cs);
  let end = Math.ceil(child.size / cs) * cs;
  const l1At = end;
  end += l1Clusters * cs;
  // Refcount blocks for every new cluster (a new block may need one itself).
  const counted: number[] = [];
  for (let c = 0; c < l1Clusters; c++) counted.push(l1At / cs + c);
  for (let i = 0; i < counted.length; i++) {
    const index = Math.floor(counted[i]! / f.refPerBlock);
    if (!f.rt[index]) {
      await f.addRefcountBlock(index, end);
      counted.push(end / cs);
      end += cs;
    }
  }
  const table = new Uint8Array(l1Clusters * cs);
  table.set(oldL1);
  await child.write(table, l1At);
  for (let c = 0; c < l1Clusters; c++) await f.addRef(l1At / cs + c, 1);
  await f.flushRefcounts();
  await child.flush();
  const oldAt = h.l1TableOffset;
  const oldClusters = Math.ceil((h.l1Size * 8) / cs);
  await f.writeSizeAndL1(newSize, need, l1At);
  await child.flush();
  for (let c = 0; c < oldClusters; c++) await f.addRef(oldAt / cs + c, -1);
  await f.flushRefcounts();
  await child.flush();
}

async function shrink(f: Qcow2File, newSize: number): Promise<void> {
  const { h, cs, child } = f;
  const span = f.l2Entries * cs;
  const l1 = await f.l1();
  await f.writeSizeAndL1(newSize, h.l1Size, h.l1TableOffset);
  await child.flush();
  const freed: number[] = [];
  for (let i = Math.floor(newSize / span); i < l1.length; i++) {
    const l2 = l1[i]!.offset;
    if (!l2) continue;
    const t = await f.readBytes(l2, cs);
    const from = Math.max(0, Math.ceil((newSize - i * span) / cs));
    let changed = false;
    for (let j = from; j < f.l2Entries; j++) {
      const o = j * f.entryBytes;
      if (t.subarray(o, o + f.entryBytes).every((b) => b === 0)) continue;
      const [hi, lo] = entryWords(t, o);
      freed.push(...entryClusters(hi, lo, h.clusterBits));
      t.fill(0, o, o + f.entryBytes);
      changed = true;
    }
    if (from === 0) {
      await child.write(new Uint8Array(8), h.l1TableOffset + i * 8);
      freed.push(l2 / cs);
    } else if (changed) await child.write(t, l2);
  }
  await child.flush();
  for (const c of freed) await f.addRef(c, -1);
  await f.flushRefcounts();
  await child.flush();
}
