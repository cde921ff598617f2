/**
 * One filesystem of a wrapped disk (root, or an extra one from --part):
 * checked for what it is, staged in a copy-on-write overlay over its
 * read-only input (only the blocks it uses show through), repaired as
 * `e2fsck -p` would, grown to its partition, and checked again read-only.
 */

import type { BlockDevice } from '../core/device.js';
import { ConcatDevice } from '../core/concat.js';
import { ImageError } from '../core/errors.js';
import { AllocationFilterDevice } from '../core/filter.js';
import { OverlayDevice } from '../core/overlay.js';
import { SliceDevice } from '../core/slice.js';
import { ZeroDevice } from '../core/zero.js';
import { formatSize } from '../core/size.js';
import type { Progress } from '../convert/progress.js';
import { type ExtSuperblock, GRUB_UNREADABLE, readExtSuperblock } from '../fs/ext-superblock.js';
import { extUsedRanges } from '../fs/used-blocks.js';
import { type FsckResult, type HostFile, e2fsck, resize2fs } from '../fs/e2fsprogs.js';

const MIB = 1024 * 1024;

export interface FsckSummary {
  'exit-code': number;
  status: string[];
  output: string;
}

export const fsckSummary = (r: FsckResult): FsckSummary => ({ 'exit-code': r.exitCode, status: r.status, output: r.output });

/** The input's ext superblock, after the checks wrap needs; warnings for what the filesystem carries. */
export async function inspectFs(input: BlockDevice, file: string, warnings: string[]): Promise<{ sb: ExtSuperblock; grubUnreadable: string[] }> {
  const sb = await readExtSuperblock(input);
  if (!sb) throw await notExtError(input, file);
  if (sb.size > input.size) {
    throw new ImageError('invalid-format', `${file}: the ext filesystem claims ${sb.size} bytes but the image holds only ${input.size}: truncated input?`, {
      path: file,
      field: 's_blocks_count',
      value: sb.blocksCount,
    });
  }
  const grubUnreadable = sb.features.filter((f) => GRUB_UNREADABLE.includes(f));
  if (sb.features.includes('needs_recovery')) {
    warnings.push(`${file}: the filesystem journal needs recovery (the guest was not shut down cleanly): e2fsck replays it in the output`);
  }
  return { sb, grubUnreadable };
}

export interface StagedFs {
  /** The partition's contents: overlay over (used blocks of the input ++ zeros). */
  dev: OverlayDevice;
  usedBytes: number;
}

/**
 * Stage a filesystem of `sb.size` bytes from `input` into a partition of
 * `partSize` bytes. `host`: input's bytes are those of a local file from
 * host.offset on (a raw input): the overlay then says so, and e2fsck and
 * resize2fs read that file and write the overlay's store themselves instead
 * of asking this thread for every block.
 */
export async function stageFs(input: BlockDevice, sb: ExtSuperblock, partSize: number, store: BlockDevice, progress: Progress, host?: HostFile): Promise<StagedFs> {
  const fsView = new SliceDevice(input, 0, sb.size);
  progress.start('scan', 1);
  const used = await extUsedRanges(fsView);
  progress.finish();
  const usedBytes = used.reduce((s, r) => s + r.length, 0);
  const filtered = new AllocationFilterDevice(fsView, used);
  const base = partSize > sb.size ? new ConcatDevice([filtered, new ZeroDevice(partSize - sb.size)]) : filtered;
  const hostBase = host ? { file: host.file, offset: host.offset, used, end: sb.size } : undefined;
  return { dev: new OverlayDevice(base, store, hostBase), usedBytes };
}

export interface RepairResult {
  preen: FsckResult;
  resized: boolean;
  sizeAfter: number;
}

/** e2fsck -fp in the overlay, then resize2fs to the partition when asked and there is room. */
export async function repairAndGrow(
  dev: BlockDevice,
  sb: ExtSuperblock,
  opts: { file: string; grow: boolean; progress: Progress; log: (l: string) => void; warnings: string[] },
): Promise<RepairResult> {
  const { file, progress, log } = opts;
  progress.start('fsck', 1);
  const preen = await e2fsck(dev, { mode: 'preen' });
  progress.finish();
  log(`${file}: e2fsck -fp: exit ${preen.exitCode} (${preen.status.join(', ')})`);
  if (preen.exitCode & ~3) {
    throw new ImageError('corrupt', `${file}: e2fsck could not repair the filesystem automatically (exit ${preen.exitCode}); run 'e2fsck -f' on a copy of the input:\n${preen.output.trim()}`, {
      path: file,
    });
  }
  if (preen.exitCode & 1) opts.warnings.push(`${file}: e2fsck repaired the filesystem in the output (the input is unchanged):\n${preen.output.trim()}`);
  let resized = false;
  let sizeAfter = sb.size;
  if (opts.grow && dev.size - sb.size >= MIB) {
    progress.start('resize', 1);
    const r = await resize2fs(dev);
    progress.finish();
    if (r.exitCode !== 0) throw new ImageError('corrupt', `${file}: resize2fs failed (exit ${r.exitCode}):\n${r.output.trim()}`, { path: file });
    resized = r.newSize !== r.oldSize;
    sizeAfter = r.newSize;
    log(`${file}: resize2fs: ${formatSize(r.oldSize)} -> ${formatSize(r.newSize)}`);
  }
  return { preen, resized, sizeAfter };
}

/** The last read-only check (after the guest fix-ups): anything but clean is an error. */
export async function finalCheck(dev: BlockDevice, file: string, log: (l: string) => void): Promise<FsckResult> {
  const final = await e2fsck(dev, { mode: 'check' });
  log(`${file}: e2fsck -fn: exit ${final.exitCode}`);
  if (final.exitCode !== 0) {
    throw new ImageError('corrupt', `${file}: the filesystem is still not clean after repair (e2fsck -fn exit ${final.exitCode}):\n${final.output.trim()}`, {
      path: file,
    });
  }
  return final;
}

async function notExtError(input: BlockDevice, file: string): Promise<ImageError> {
  const head = new Uint8Array(Math.min(input.size, 4096));
  await input.read(head, 0);
  const hasMbr = head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa;
  const gpt = head.length >= 520 && Buffer.from(head.subarray(512, 520)).toString('latin1') === 'EFI PART';
  if (gpt || hasMbr) {
    return new ImageError(
      'usage',
      `${file} already has a partition table (${gpt ? 'GPT' : 'MBR'}): wrap takes a bare ext2/3/4 filesystem; see 'imgtool part list ${file}'`,
      { path: file },
    );
  }
  return new ImageError('invalid-format', `${file} is not an ext2/3/4 filesystem (no ext superblock magic at byte 1080); see 'imgtool part list ${file}'`, {
    path: file,
    field: 's_magic',
    offset: 1080,
  });
}
