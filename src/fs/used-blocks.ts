/**
 * Which bytes of an ext2/3/4 filesystem are in use.
 *
 * libext2fs (the `ext2fs` package) mounts the filesystem over a
 * copy-on-write overlay (so even its bookkeeping writes never reach the
 * input) and `trim()` reports every free block range as a discard; the
 * used ranges are the complement. libext2fs reads the block bitmaps itself,
 * including groups whose bitmap is not initialised (BLOCK_UNINIT), which a
 * hand-written bitmap reader would have to reconstruct.
 */

import { createRequire } from 'node:module';
import type { BlockDevice } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import { OverlayDevice } from '../core/overlay.js';

const require = createRequire(import.meta.url);

export interface ByteRange {
  offset: number;
  length: number;
}

interface Ext2fsModule {
  withMountedDisk<T>(disk: unknown, offset: number, fn: (fs: { trim(): Promise<void> }) => Promise<T>): Promise<T>;
}

/** An `ext2fs` disk over a BlockDevice; discards are recorded, not applied. */
export function ext2fsDisk(dev: BlockDevice, onDiscard?: (offset: number, length: number) => void) {
  let lastError: unknown;
  const guard = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (e) {
      // ext2fs turns every error into EIO: keep the real one for the report.
      lastError = e;
      throw e;
    }
  };
  return {
    get lastError() {
      return lastError;
    },
    async read(buffer: Uint8Array, bufferOffset: number, length: number, fileOffset: number) {
      return guard('read', async () => {
        await dev.read(buffer.subarray(bufferOffset, bufferOffset + length), fileOffset);
        return { bytesRead: length, buffer };
      });
    },
    async write(buffer: Uint8Array, bufferOffset: number, length: number, fileOffset: number) {
      return guard('write', async () => {
        await dev.write(buffer.subarray(bufferOffset, bufferOffset + length), fileOffset);
        return { bytesWritten: length, buffer };
      });
    },
    async discard(offset: number, length: number) {
      onDiscard?.(offset, length);
    },
    async flush() {
      await dev.flush();
    },
  };
}

/** Used byte ranges of the ext filesystem on `fsDev` (sorted, merged). */
export async function extUsedRanges(fsDev: BlockDevice): Promise<ByteRange[]> {
  const ext2fs = require('ext2fs') as Ext2fsModule;
  const free: ByteRange[] = [];
  const overlay = new OverlayDevice(fsDev);
  const disk = ext2fsDisk(overlay, (offset, length) => free.push({ offset, length }));
  try {
    await ext2fs.withMountedDisk(disk, 0, async (fs) => {
      await fs.trim();
    });
  } catch (e) {
    const real = disk.lastError;
    throw new ImageError(
      'invalid-format',
      `cannot read the ext filesystem's block bitmaps: ${real instanceof Error ? real.message : (e as Error).message}`,
      { operation: 'read block bitmaps' },
      { cause: real ?? e },
    );
  } finally {
    await overlay.close();
  }
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
