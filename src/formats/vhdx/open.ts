/**
 * Opening a VHDX: the current header; a log that needs replay is replayed
 * in memory for a read (the file never changes) and into the file, then
 * retired, for a write; then region table, metadata and BAT (layout.ts,
 * bat.ts) on the shared engine.
 *
 * Opening for write also writes both headers anew (sequence + 1 and + 2,
 * new file and data write GUIDs, no log GUID), as the specification asks
 * before the first write.
 */

import { nodeCrypto } from '../../core/lazy.js';
import type { BlockDevice } from '../../core/device.js';
import { DescribedImage } from '../engine/image.js';
import { MappedDevice } from '../engine/engine.js';
import type { Image, ImageInfo, OpenOptions } from '../types.js';
import { VhdxBat } from './bat.js';
import { type VhdxLayout, readHeaders, readLayout } from './layout.js';
import { ReplayedDevice, applyReplay, readLog } from './log.js';
import { HEADER_OFFSETS, Header, type HeaderValue, isZeroGuid, sealChecksum } from './structs.js';

/** Write `h` (sequence `seq`, new write GUIDs, no log) to header slot `slot`. */
export async function writeHeader(child: BlockDevice, h: HeaderValue, seq: bigint, slot: 0 | 1, guids: { file: Uint8Array; data: Uint8Array }): Promise<void> {
  const raw = Header.encode({ ...h, sequenceNumber: seq, fileWriteGuid: guids.file, dataWriteGuid: guids.data, logGuid: new Uint8Array(16), checksum: 0 });
  await child.write(sealChecksum(raw, 4), HEADER_OFFSETS[slot]);
}

export function describeVhdx(l: VhdxLayout): ImageInfo {
  return { format: 'vhdx', 'virtual-size': l.size, 'cluster-size': l.blockSize, 'dirty-flag': false };
}

export async function openVhdx(child: BlockDevice, opts: OpenOptions): Promise<Image> {
  const writable = !!opts.writable;
  const h = await readHeaders(child);
  let container = child;
  if (!isZeroGuid(h.header.logGuid)) {
    // Layout fields are checked again after the replay; the log itself must lie in the file.
    const replay = await readLog(child, h.header, h.at, Math.max(child.size, 2 ** 46));
    if (writable) {
      await applyReplay(child, replay);
      await child.flush();
    } else if (replay.ops.length > 0 || replay.fileSize > child.size) {
      container = new ReplayedDevice(child, replay);
    }
  }
  if (writable) {
    const guids = { file: nodeCrypto().randomBytes(16), data: nodeCrypto().randomBytes(16) };
    const other: 0 | 1 = h.slot === 0 ? 1 : 0;
    await writeHeader(child, h.header, h.header.sequenceNumber + 1n, other, guids);
    await child.flush();
    await writeHeader(child, h.header, h.header.sequenceNumber + 2n, h.slot, guids);
    await child.flush();
  }
  const current = writable ? await readHeaders(child) : h;
  const layout = await readLayout(container, current, opts.path);
  const fmt = await VhdxBat.open(container, layout);
  const dev = new MappedDevice(fmt, { container, writable, ownsContainer: true });
  // Closing the engine closes the container; a replayed view closes the file under it.
  return new DescribedImage('vhdx', dev, async () => describeVhdx(layout));
}
