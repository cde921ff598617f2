/**
 * `check` for VHDX, by qemu's rules (block/vhdx.c vhdx_co_check): the image
 * must open (headers, region table, metadata, every BAT entry inside the
 * file and off the metadata: the same checks as open, each an error naming
 * its field); a log that needs replay is a corruption that `-r` fixes by
 * replaying it (counted as one fixed corruption, as qemu counts it). Without
 * `-r` such an image is refused, as qemu-img check refuses to open it
 * read-only.
 */

import { nodeCrypto } from '../../core/lazy.js';
import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import type { CheckResult, Repair } from '../types.js';
import { VhdxBat } from './bat.js';
import { readHeaders, readLayout } from './layout.js';
import { applyReplay, readLog } from './log.js';
import { writeHeader } from './open.js';
import { isZeroGuid } from './structs.js';

export async function checkVhdx(child: BlockDevice, repair: Repair, _say: (line: string) => void): Promise<CheckResult> {
  let h = await readHeaders(child);
  const out: CheckResult = { 'check-errors': 0 };
  if (!isZeroGuid(h.header.logGuid)) {
    if (!repair) {
      throw new ImageError('corrupt', 'vhdx: the image has a log that needs to be replayed; check -r all replays it', { format: 'vhdx', field: 'log guid', offset: h.at + 48 });
    }
    await applyReplay(child, await readLog(child, h.header, h.at, Math.max(child.size, 2 ** 46)));
    await child.flush();
    const guids = { file: nodeCrypto().randomBytes(16), data: nodeCrypto().randomBytes(16) };
    await writeHeader(child, h.header, h.header.sequenceNumber + 1n, h.slot === 0 ? 1 : 0, guids);
    await writeHeader(child, h.header, h.header.sequenceNumber + 2n, h.slot, guids);
    await child.flush();
    out['corruptions-fixed'] = 1;
    h = await readHeaders(child);
  }
  await VhdxBat.open(child, await readLayout(child, h));
  return out;
}
