/**
 * The ext2/3/4 superblock fields imgtool needs before it touches a
 * filesystem: size, features, identity. Layout (little-endian, superblock at
 * byte 1024 of the filesystem):
 *
 *   offset  size  field
 *   0x00    4     s_inodes_count
 *   0x04    4     s_blocks_count_lo
 *   0x18    4     s_log_block_size      block size = 1024 << value (0..6)
 *   0x38    2     s_magic               0xEF53
 *   0x3A    2     s_state               1 = cleanly unmounted
 *   0x5C    4     s_feature_compat
 *   0x60    4     s_feature_incompat
 *   0x64    4     s_feature_ro_compat
 *   0x68    16    s_uuid
 *   0x78    16    s_volume_name
 *   0x150   4     s_blocks_count_hi     (only with INCOMPAT_64BIT)
 */

import type { BlockDevice } from '../core/device.js';
import { fieldError } from '../core/errors.js';

export const EXT_MAGIC = 0xef53;

const COMPAT: Record<number, string> = {
  0x4: 'has_journal',
  0x8: 'ext_attr',
  0x10: 'resize_inode',
  0x20: 'dir_index',
  0x200: 'sparse_super2',
  0x1000: 'orphan_file',
};
const INCOMPAT: Record<number, string> = {
  0x1: 'compression',
  0x2: 'filetype',
  0x4: 'needs_recovery',
  0x8: 'journal_dev',
  0x10: 'meta_bg',
  0x40: 'extent',
  0x80: '64bit',
  0x100: 'mmp',
  0x200: 'flex_bg',
  0x400: 'ea_inode',
  0x1000: 'dirdata',
  0x2000: 'metadata_csum_seed',
  0x4000: 'large_dir',
  0x8000: 'inline_data',
  0x10000: 'encrypt',
  0x20000: 'casefold',
};
const RO_COMPAT: Record<number, string> = {
  0x1: 'sparse_super',
  0x2: 'large_file',
  0x8: 'huge_file',
  0x10: 'uninit_bg',
  0x20: 'dir_nlink',
  0x40: 'extra_isize',
  0x100: 'quota',
  0x200: 'bigalloc',
  0x400: 'metadata_csum',
  0x1000: 'read-only',
  0x2000: 'project',
  0x8000: 'verity',
  0x10000: 'orphan_present',
};

/** Incompatible features GRUB 2.06 (Debian 12) cannot read. */
export const GRUB_UNREADABLE = ['inline_data', 'metadata_csum_seed', 'large_dir', 'encrypt', 'casefold', 'compression', 'dirdata'];

export interface ExtSuperblock {
  blockSize: number;
  blocksCount: number;
  /** blocksCount * blockSize: the filesystem's size in bytes. */
  size: number;
  features: string[];
  incompat: number;
  uuid: string;
  label: string;
  /** ext2, ext3 (journal) or ext4 (extents, 64bit, flex_bg, ...). */
  type: 'ext2' | 'ext3' | 'ext4';
  cleanlyUnmounted: boolean;
}

function names(table: Record<number, string>, bits: number): string[] {
  const out: string[] = [];
  for (let b = 0; b < 32; b++) {
    const bit = 2 ** b;
    if (bits & bit) out.push(table[bit] ?? `unknown_0x${bit.toString(16)}`);
  }
  return out;
}

/** Parse the superblock at byte 1024 of `dev`; undefined when the magic is absent. */
export async function readExtSuperblock(dev: BlockDevice): Promise<ExtSuperblock | undefined> {
  if (dev.size < 2048) return undefined;
  const sb = new Uint8Array(1024);
  await dev.read(sb, 1024);
  const v = new DataView(sb.buffer);
  if (v.getUint16(0x38, true) !== EXT_MAGIC) return undefined;
  const log = v.getUint32(0x18, true);
  if (log > 6) throw fieldError('invalid-format', 'ext', 's_log_block_size', 1024 + 0x18, log, 'is out of range (0..6)');
  const blockSize = 1024 << log;
  const compat = v.getUint32(0x5c, true);
  const incompat = v.getUint32(0x60, true);
  const ro = v.getUint32(0x64, true);
  const hi = incompat & 0x80 ? v.getUint32(0x150, true) : 0;
  const blocksCount = hi * 2 ** 32 + v.getUint32(0x04, true);
  const size = blocksCount * blockSize;
  if (!Number.isSafeInteger(size) || blocksCount === 0) {
    throw fieldError('invalid-format', 'ext', 's_blocks_count', 1024 + 0x04, blocksCount, 'is not a usable block count');
  }
  const hex = [...sb.subarray(0x68, 0x78)].map((b) => b.toString(16).padStart(2, '0')).join('');
  const uuid = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  const labelBytes = sb.subarray(0x78, 0x88);
  const end = labelBytes.indexOf(0);
  const label = Buffer.from(labelBytes.subarray(0, end < 0 ? 16 : end)).toString('utf8');
  const features = [...names(COMPAT, compat), ...names(INCOMPAT, incompat), ...names(RO_COMPAT, ro)];
  const ext4ish = incompat & (0x40 | 0x80 | 0x200 | 0x10 | 0x8000) || ro & (0x8 | 0x10 | 0x20 | 0x40 | 0x400);
  const type = ext4ish ? 'ext4' : compat & 0x4 ? 'ext3' : 'ext2';
  return { blockSize, blocksCount, size, features, incompat, uuid, label, type, cleanlyUnmounted: (v.getUint16(0x3a, true) & 1) === 1 };
}
