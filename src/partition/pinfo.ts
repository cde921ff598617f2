/**
 * The `partitioninfo` npm package (balena, 6.x), run over any imgtool
 * device.
 *
 * What it gives: the list of partitions (byte offset, byte size, type; for
 * GPT also the unique GUID and name), primary, extended and logical.
 *
 * What it does not do, and why it is only called on tables we have already
 * validated ourselves (see inspect.ts):
 *   - no boot flag, disk signature or CHS fields; no GPT disk GUID or
 *     attributes;
 *   - no GPT CRC checks and no backup header; it reads only the first 41
 *     sectors, so an entry array elsewhere or larger than 128 entries is out
 *     of its reach;
 *   - it follows an EBR chain with no limit and no loop detection, and it
 *     treats more type codes as extended than Linux does (0x15, 0x1f, 0x91,
 *     ...), so a chain we consider finite could still send it round in
 *     circles; a GPT header with a zero entry size makes it loop up to 2^32
 *     times;
 *   - its partition `index` counts non-empty entries, not slots.
 *
 * So: the device wrapper below enforces a read budget (a looping walk fails
 * after `maxReads` reads instead of hanging), reads past the end of the
 * device return zeros, and callers only invoke it where our own reader has
 * established a finite chain or a valid, standard-layout GPT.
 */

import { getPartitions, type GetPartitionsResult } from 'partitioninfo';
import type { BlockDevice } from '../core/device.js';

class ReadBudgetExceeded extends Error {}

/** A `{ read(buffer, bufferOffset, length, fileOffset) }` disk over a BlockDevice, as partitioninfo expects. */
export function partitioninfoDisk(dev: BlockDevice, maxReads: number) {
  let reads = 0;
  return {
    async read(buffer: Buffer, bufferOffset: number, length: number, fileOffset: number): Promise<{ bytesRead: number; buffer: Buffer }> {
      if (++reads > maxReads) throw new ReadBudgetExceeded(`partitioninfo asked for more than ${maxReads} reads`);
      if (
        !Number.isSafeInteger(bufferOffset) || !Number.isSafeInteger(length) || !Number.isSafeInteger(fileOffset) ||
        bufferOffset < 0 || length < 0 || fileOffset < 0 || bufferOffset + length > buffer.length
      ) {
        throw new RangeError(`partitioninfo read out of range (offset ${fileOffset}, length ${length})`);
      }
      const n = Math.max(0, Math.min(length, dev.size - fileOffset));
      if (n > 0) await dev.read(buffer.subarray(bufferOffset, bufferOffset + n), fileOffset);
      buffer.fill(0, bufferOffset + n, bufferOffset + length);
      return { bytesRead: n, buffer };
    },
  };
}

/**
 * Run partitioninfo's `getPartitions` (with logical partitions) over `dev`.
 * Returns its result, or the reason it failed (including an exhausted read
 * budget); never throws.
 */
export async function readWithPartitioninfo(
  dev: BlockDevice,
  maxReads: number,
): Promise<{ ok: true; result: GetPartitionsResult } | { ok: false; reason: string }> {
  try {
    const disk = partitioninfoDisk(dev, maxReads);
    // partitioninfo's types name file-disk's Disk class; it only ever calls read().
    const result = await getPartitions(disk as unknown as Parameters<typeof getPartitions>[0], {
      getLogical: true,
      includeExtended: true,
    });
    return { ok: true, result };
  } catch (e) {
    return { ok: false, reason: (e as Error)?.message ?? String(e) };
  }
}
