/**
 * What a device (a partition, or a disk without a table) holds: the
 * filesystem or volume signature, with its label and UUID. Type names,
 * labels and UUIDs are the ones `blkid -p -o export` reports (TYPE, LABEL,
 * UUID, VERSION, BLOCK_SIZE), so scripts can compare the two.
 *
 * Each probe reads a few small, fixed ranges (never more than 64 KiB at a
 * time, never past the device's end) and checks the signature with the same
 * sanity checks libblkid applies, so a stray magic number does not make a
 * filesystem. Where a probe follows an on-disk pointer (the FAT32 root
 * directory chain, the NTFS $Volume record) the walk is bounded.
 *
 * Signatures (offsets from the start of the device):
 *
 *   type          where                       magic / check
 *   crypto_LUKS   0                           "LUKS\xba\xbe", version 1 or 2 (big-endian u16 at 6)
 *   LVM2_member   sector 0..3                 "LABELONE" label, "LVM2 001" at +24, label CRC
 *   xfs           0                           "XFSB" (big-endian superblock), geometry sanity
 *   ext2/3/4      1024 (superblock)           0xEF53 at +56; feature bits pick ext2/ext3/ext4
 *   btrfs         65536 (superblock)          "_BHRfS_M" at +64
 *   ntfs          0 (boot sector)             "NTFS    " at 3, BPB sanity, MFT record "FILE"
 *   vfat          0 (boot sector)             FAT BPB sanity (libblkid's rules), 0x55AA
 *   swap          page size - 10              "SWAPSPACE2" (v1) / "SWAP-SPACE" (v0), pages 4K..64K
 */

import type { BlockDevice } from '../core/device.js';
import { crc32Update } from '../core/crc32.js';

export type ContentType =
  | 'ext2'
  | 'ext3'
  | 'ext4'
  | 'swap'
  | 'xfs'
  | 'btrfs'
  | 'vfat'
  | 'ntfs'
  | 'LVM2_member'
  | 'crypto_LUKS'
  | 'unknown';

export interface ContentInfo {
  type: ContentType;
  label?: string;
  uuid?: string;
  /** blkid's VERSION: `1.0` (ext rev.minor), `1` (swap v1), `FAT32`, `LVM2 001`, `2` (LUKS2). */
  version?: string;
  /** Filesystem block size in bytes (blkid's BLOCK_SIZE where it reports one). */
  blockSize?: number;
  /** ext feature names as dumpe2fs prints them. */
  features?: string[];
  /** Bytes the filesystem or volume says it spans, when it says. */
  size?: number;
}

type Reader = (offset: number, length: number) => Promise<Uint8Array | undefined>;

function reader(dev: BlockDevice): Reader {
  return async (offset, length) => {
    if (offset < 0 || length <= 0 || offset + length > dev.size) return undefined;
    const b = new Uint8Array(length);
    await dev.read(b, offset);
    return b;
  };
}

const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);
const ascii = (b: Uint8Array, off: number, len: number) => String.fromCharCode(...b.subarray(off, off + len));

function isZero(b: Uint8Array): boolean {
  for (const x of b) if (x !== 0) return false;
  return true;
}

/** A standard 8-4-4-4-12 UUID from 16 bytes; undefined when all zero (blkid omits those). */
function uuid16(b: Uint8Array, off: number): string | undefined {
  const u = b.subarray(off, off + 16);
  if (isZero(u)) return undefined;
  const h = Buffer.from(u).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A label as blkid sets it: up to the first NUL, trailing whitespace removed; undefined when empty. */
function label(b: Uint8Array, off: number, len: number): string | undefined {
  let end = off;
  while (end < off + len && b[end] !== 0) end++;
  const s = Buffer.from(b.subarray(off, end)).toString('utf8').replace(/\s+$/, '');
  return s.length ? s : undefined;
}

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

// ---------------------------------------------------------------- LUKS

/*
 * LUKS header (big-endian):  magic 0 (6) | version 6 (2) | v1: uuid 168 (40)
 * v2: label 24 (48) | uuid 168 (40) | hdr_offset 256 (8, must be 0 for the primary)
 */
async function probeLuks(read: Reader): Promise<ContentInfo | undefined> {
  const h = await read(0, 512);
  if (!h || ascii(h, 0, 6) !== 'LUKS\xba\xbe') return undefined;
  const version = dv(h).getUint16(6, false);
  if (version === 2 && dv(h).getBigUint64(256, false) !== 0n) return undefined;
  const info: ContentInfo = { type: 'crypto_LUKS', version: String(version) };
  const u = label(h, 168, 40);
  if (u) info.uuid = u;
  if (version === 2) {
    const l = label(h, 24, 48);
    if (l) info.label = l;
  }
  return info;
}

// ---------------------------------------------------------------- LVM2

/*
 * LVM2 physical-volume label, in one of sectors 0..3:
 *   "LABELONE" 0 (8) | sector_xl 8 (8) | crc_xl 16 (4) | offset_xl 20 (4) | "LVM2 001" 24 (8)
 *   pv_header at offset_xl: pv_uuid 0 (32 chars) | device_size_xl 32 (8)
 * crc_xl: CRC-32 register seeded 0xf597a6cf, no inversions, over bytes 20..511.
 */
async function probeLvm2(read: Reader): Promise<ContentInfo | undefined> {
  const b = await read(0, 2048);
  if (!b) return undefined;
  for (let sector = 0; sector < 4; sector++) {
    const l = b.subarray(sector * 512, sector * 512 + 512);
    if (ascii(l, 0, 8) !== 'LABELONE' || ascii(l, 24, 8) !== 'LVM2 001') continue;
    const v = dv(l);
    if (v.getBigUint64(8, true) !== BigInt(sector)) continue;
    if (crc32Update(0xf597a6cf, l.subarray(20, 512)) !== v.getUint32(16, true)) continue;
    const info: ContentInfo = { type: 'LVM2_member', version: 'LVM2 001' };
    const off = v.getUint32(20, true);
    if (off >= 32 && off + 40 <= 512) {
      const raw = ascii(l, off, 32);
      if (/^[\x21-\x7e]{32}$/.test(raw)) {
        info.uuid = [raw.slice(0, 6), raw.slice(6, 10), raw.slice(10, 14), raw.slice(14, 18), raw.slice(18, 22), raw.slice(22, 26), raw.slice(26)].join('-');
      }
      const size = v.getBigUint64(off + 32, true);
      if (size > 0n && size <= BigInt(Number.MAX_SAFE_INTEGER)) info.size = Number(size);
    }
    return info;
  }
  return undefined;
}

// ---------------------------------------------------------------- XFS

/*
 * XFS superblock (big-endian) at 0:
 *   magicnum 0 (4) "XFSB" | blocksize 4 (4) | dblocks 8 (8) | uuid 32 (16) | rextsize 80 (4)
 *   agblocks 84 (4) | agcount 88 (4) | sectsize 102 (2) | inodesize 104 (2) | inopblock 106 (2)
 *   fname 108 (12) | blocklog 120 | sectlog 121 | inodelog 122 | inopblog 123 | imax_pct 127
 */
async function probeXfs(read: Reader): Promise<ContentInfo | undefined> {
  const b = await read(0, 512);
  if (!b || ascii(b, 0, 4) !== 'XFSB') return undefined;
  const v = dv(b);
  const blocksize = v.getUint32(4, false);
  const dblocks = v.getBigUint64(8, false);
  const rextsize = v.getUint32(80, false);
  const agblocks = v.getUint32(84, false);
  const agcount = v.getUint32(88, false);
  const sectsize = v.getUint16(102, false);
  const inodesize = v.getUint16(104, false);
  const [blocklog, sectlog, inodelog, inopblog] = [b[120]!, b[121]!, b[122]!, b[123]!];
  const sane =
    agcount > 0 &&
    sectsize >= 512 && sectsize <= 32768 && sectlog >= 9 && sectlog <= 15 && sectsize === 1 << sectlog &&
    blocksize >= 512 && blocksize <= 65536 && blocklog >= 9 && blocklog <= 16 && blocksize === 2 ** blocklog &&
    inodesize >= 256 && inodesize <= 2048 && inodelog >= 8 && inodelog <= 11 && inodesize === 1 << inodelog &&
    blocklog - inodelog === inopblog &&
    rextsize * blocksize <= 1 << 30 && rextsize * blocksize >= 4096 &&
    b[127]! <= 100 &&
    dblocks > 0n &&
    dblocks <= BigInt(agcount) * BigInt(agblocks) &&
    dblocks >= BigInt(agcount - 1) * BigInt(agblocks) + 64n;
  if (!sane) return undefined;
  const info: ContentInfo = { type: 'xfs', blockSize: blocksize };
  const l = label(b, 108, 12);
  if (l) info.label = l;
  const u = uuid16(b, 32);
  if (u) info.uuid = u;
  const bytes = dblocks * BigInt(blocksize);
  if (bytes <= BigInt(Number.MAX_SAFE_INTEGER)) info.size = Number(bytes);
  return info;
}

// ---------------------------------------------------------------- ext2/3/4

/*
 * ext superblock at 1024 (little-endian):
 *   blocks_count_lo 4 (4) | log_block_size 24 (4) | magic 56 (2) 0xEF53 | minor_rev_level 62 (2)
 *   rev_level 76 (4) | feature_compat 92 (4) | feature_incompat 96 (4) | feature_ro_compat 100 (4)
 *   uuid 104 (16) | volume_name 120 (16) | blocks_count_hi 336 (4) | flags 352 (4) | checksum 1020 (4)
 */
const EXT_COMPAT: [number, string][] = [
  [0x1, 'dir_prealloc'], [0x2, 'imagic_inodes'], [0x4, 'has_journal'], [0x8, 'ext_attr'],
  [0x10, 'resize_inode'], [0x20, 'dir_index'], [0x40, 'lazy_bg'], [0x100, 'snapshot_bitmap'],
  [0x200, 'sparse_super2'], [0x400, 'fast_commit'], [0x800, 'stable_inodes'], [0x1000, 'orphan_file'],
];
const EXT_INCOMPAT: [number, string][] = [
  [0x1, 'compression'], [0x2, 'filetype'], [0x4, 'needs_recovery'], [0x8, 'journal_dev'],
  [0x10, 'meta_bg'], [0x40, 'extent'], [0x80, '64bit'], [0x100, 'mmp'], [0x200, 'flex_bg'],
  [0x400, 'ea_inode'], [0x1000, 'dirdata'], [0x2000, 'metadata_csum_seed'], [0x4000, 'large_dir'],
  [0x8000, 'inline_data'], [0x10000, 'encrypt'], [0x20000, 'casefold'],
];
const EXT_RO_COMPAT: [number, string][] = [
  [0x1, 'sparse_super'], [0x2, 'large_file'], [0x4, 'btree_dir'], [0x8, 'huge_file'],
  [0x10, 'uninit_bg'], [0x20, 'dir_nlink'], [0x40, 'extra_isize'], [0x80, 'snapshot'],
  [0x100, 'quota'], [0x200, 'bigalloc'], [0x400, 'metadata_csum'], [0x800, 'replica'],
  [0x1000, 'read-only'], [0x2000, 'project'], [0x4000, 'shared_blocks'], [0x8000, 'verity'],
];
const HAS_JOURNAL = 0x4;
const JOURNAL_DEV = 0x8;
const INCOMPAT_64BIT = 0x80;
/** Feature masks libblkid uses to tell ext2, ext3 and ext4 apart. */
const EXT2_RO_SUPP = 0x1 | 0x2 | 0x4;
const EXT2_INCOMPAT_SUPP = 0x2 | 0x10;
const EXT3_RO_SUPP = EXT2_RO_SUPP;
const EXT3_INCOMPAT_SUPP = 0x2 | 0x4 | 0x10;

async function probeExt(read: Reader): Promise<ContentInfo | undefined> {
  const sb = await read(1024, 1024);
  if (!sb || sb[56] !== 0x53 || sb[57] !== 0xef) return undefined;
  const v = dv(sb);
  const compat = v.getUint32(92, true);
  const incompat = v.getUint32(96, true);
  const ro = v.getUint32(100, true);
  // The superblock checksum (metadata_csum) is not checked: blkid 2.38 (Debian 12) does not
  // either, and a filesystem with a damaged checksum is still worth naming (e2fsck repairs it).
  if (incompat & JOURNAL_DEV) return undefined; // an external journal ("jbd"), not a filesystem
  let type: ContentType;
  if (!(compat & HAS_JOURNAL) && !(ro & ~EXT2_RO_SUPP) && !(incompat & ~EXT2_INCOMPAT_SUPP)) type = 'ext2';
  else if (compat & HAS_JOURNAL && !(ro & ~EXT3_RO_SUPP) && !(incompat & ~EXT3_INCOMPAT_SUPP)) type = 'ext3';
  else if (ro & ~EXT3_RO_SUPP || incompat & ~EXT3_INCOMPAT_SUPP) type = 'ext4';
  else return undefined; // no journal yet ext3-only features: libblkid claims no type either
  const logBlock = v.getUint32(24, true);
  const info: ContentInfo = { type, version: `${v.getUint32(76, true)}.${v.getUint16(62, true)}` };
  const l = label(sb, 120, 16);
  if (l) info.label = l;
  const u = uuid16(sb, 104);
  if (u) info.uuid = u;
  if (logBlock <= 6) {
    info.blockSize = 1024 << logBlock;
    const blocks = BigInt(v.getUint32(4, true)) + (incompat & INCOMPAT_64BIT ? BigInt(v.getUint32(336, true)) << 32n : 0n);
    const bytes = blocks * BigInt(info.blockSize);
    if (bytes <= BigInt(Number.MAX_SAFE_INTEGER)) info.size = Number(bytes);
  }
  const features: string[] = [];
  for (const [bit, name] of EXT_COMPAT) if (compat & bit) features.push(name);
  for (const [bit, name] of EXT_INCOMPAT) if (incompat & bit) features.push(name);
  for (const [bit, name] of EXT_RO_COMPAT) if (ro & bit) features.push(name);
  info.features = features;
  return info;
}

// ---------------------------------------------------------------- btrfs

/*
 * btrfs superblock at 64 KiB (little-endian):
 *   csum 0 (32) | fsid 32 (16) | bytenr 48 (8) | magic 64 (8) "_BHRfS_M" | total_bytes 112 (8)
 *   sectorsize 144 (4) | dev_item 201 (98; uuid at +66) | label 299 (256)
 */
async function probeBtrfs(read: Reader): Promise<ContentInfo | undefined> {
  const sb = await read(65536, 4096);
  if (!sb || ascii(sb, 64, 8) !== '_BHRfS_M') return undefined;
  const v = dv(sb);
  const info: ContentInfo = { type: 'btrfs' };
  const l = label(sb, 299, 256);
  if (l) info.label = l;
  const u = uuid16(sb, 32);
  if (u) info.uuid = u;
  const sectorsize = v.getUint32(144, true);
  if (isPow2(sectorsize) && sectorsize >= 512 && sectorsize <= 65536) info.blockSize = sectorsize;
  const total = v.getBigUint64(112, true);
  if (total > 0n && total <= BigInt(Number.MAX_SAFE_INTEGER)) info.size = Number(total);
  return info;
}

// ---------------------------------------------------------------- NTFS

/*
 * NTFS boot sector: oem "NTFS    " 3 (8) | bytes/sector 11 (2) | sectors/cluster 13 | reserved 14 (2)
 *   fats 16 | root_entries 17 (2) | sectors 19 (2) | sectors/fat 22 (2) | large_sectors 32 (4)
 *   number_of_sectors 40 (8) | mft_lcn 48 (8) | mftmirr_lcn 56 (8) | clusters/mft_record 64 (i8)
 *   volume_serial 72 (8)
 * The label is the $VOLUME_NAME (0x60) attribute of MFT record 3 ($Volume).
 */
async function probeNtfs(read: Reader): Promise<ContentInfo | undefined> {
  const b = await read(0, 512);
  if (!b || ascii(b, 3, 8) !== 'NTFS    ') return undefined;
  const v = dv(b);
  const sectorSize = v.getUint16(11, true);
  const spc = b[13]!;
  if (sectorSize < 256 || sectorSize > 4096 || !isPow2(spc) || spc > 128 || sectorSize * spc > 65536) return undefined;
  if (v.getUint16(14, true) || v.getUint16(17, true) || v.getUint16(19, true) || v.getUint16(22, true) || v.getUint32(32, true) || b[16]) {
    return undefined;
  }
  const cpm = v.getInt8(64);
  const cpmU = b[64]!;
  if ((cpmU < 0xe1 || cpmU > 0xf7) && ![1, 2, 4, 8, 16, 32, 64].includes(cpmU)) return undefined;
  const recordSize = cpm > 0 ? cpm * spc * sectorSize : 2 ** -cpm;
  const sectors = v.getBigUint64(40, true);
  const clusters = sectors / BigInt(spc);
  const mft = v.getBigUint64(48, true);
  if (mft > clusters || v.getBigUint64(56, true) > clusters) return undefined;
  const mftOff = mft * BigInt(spc * sectorSize);
  if (mftOff > BigInt(Number.MAX_SAFE_INTEGER) || recordSize > 65536) return undefined;
  const rec0 = await read(Number(mftOff), recordSize);
  if (!rec0 || ascii(rec0, 0, 4) !== 'FILE') return undefined;
  const info: ContentInfo = { type: 'ntfs', blockSize: sectorSize };
  const serial = v.getBigUint64(72, true);
  info.uuid = serial.toString(16).toUpperCase().padStart(16, '0');
  const bytes = sectors * BigInt(sectorSize);
  if (bytes <= BigInt(Number.MAX_SAFE_INTEGER)) info.size = Number(bytes);
  const rec3 = await read(Number(mftOff) + 3 * recordSize, recordSize);
  if (rec3 && ascii(rec3, 0, 4) === 'FILE') {
    const r = dv(rec3);
    let attr = r.getUint16(20, true);
    const allocated = r.getUint32(28, true);
    // Walk the attribute list: bounded by the record size and by a step count.
    for (let step = 0; step < 64 && attr + 24 <= recordSize && attr <= allocated; step++) {
      const type = r.getUint32(attr, true);
      const len = r.getUint32(attr + 4, true);
      if (len === 0 || type === 0xffffffff) break;
      if (type === 0x60) {
        const valLen = r.getUint32(attr + 16, true);
        const valOff = r.getUint16(attr + 20, true);
        const start = attr + valOff;
        if (start + valLen <= recordSize) {
          const name = Buffer.from(rec3.subarray(start, start + valLen)).toString('utf16le').replace(/\0.*$/s, '');
          if (name) info.label = name;
        }
        break;
      }
      attr += len;
    }
  }
  return info;
}

// ---------------------------------------------------------------- FAT

/*
 * FAT boot sector: jump 0 (3) | oem 3 (8) | bytes/sector 11 (2) | sectors/cluster 13 | reserved 14 (2)
 *   fats 16 | root_entries 17 (2) | sectors16 19 (2) | media 21 | fat_length16 22 (2) | total_sect 32 (4)
 *   FAT12/16: serial 39 (4) | label 43 (11) | fs type 54 (8)
 *   FAT32:    fat_length32 36 (4) | root_cluster 44 (4) | fsinfo 48 (2) | serial 67 (4) | label 71 (11) | fs type 82 (8)
 * The label blkid reports is the root directory's volume-label entry (not the boot sector's copy).
 */
const FAT12_MAX = 0xff4;
const FAT16_MAX = 0xfff4;
const FAT32_MAX = 0x0ffffff6;
const NO_NAME = 'NO NAME    ';

async function probeFat(read: Reader, devSize: number): Promise<ContentInfo | undefined> {
  const b = await read(0, 512);
  if (!b) return undefined;
  const magic82 = ascii(b, 82, 8);
  const magic54 = ascii(b, 54, 8);
  const strong =
    magic82.startsWith('MSWIN') || magic82 === 'FAT32   ' ||
    magic54.startsWith('MSDOS') || magic54 === 'FAT16   ' || magic54 === 'FAT12   ' || magic54 === 'FAT     ';
  const weak = b[0] === 0xeb || b[0] === 0xe9 || (b[510] === 0x55 && b[511] === 0xaa);
  if (!strong && !weak) return undefined;
  const v = dv(b);
  if (!strong) {
    if (b[510] !== 0x55 || b[511] !== 0xaa) return undefined;
    if (magic54 === 'JFS     ' || magic54 === 'HPFS    ') return undefined;
  }
  const fats = b[16]!;
  const reserved = v.getUint16(14, true);
  const media = b[21]!;
  const spc = b[13]!;
  const sectorSize = v.getUint16(11, true);
  if (!fats || !reserved || !(media >= 0xf8 || media === 0xf0) || !isPow2(spc)) return undefined;
  if (!isPow2(sectorSize) || sectorSize < 512 || sectorSize > 4096) return undefined;
  const dirEntries = v.getUint16(17, true);
  let sectors = v.getUint16(19, true);
  if (sectors === 0) sectors = v.getUint32(32, true);
  const fat16Length = v.getUint16(22, true);
  const fat32Length = v.getUint32(36, true);
  const fatLength = fat16Length || fat32Length;
  const fatSize = fatLength * fats;
  const dirSize = Math.ceil((dirEntries * 32) / sectorSize);
  const dataSectors = sectors - (reserved + fatSize + dirSize);
  if (dataSectors < 0) return undefined; // libblkid's unsigned arithmetic wraps to a huge count: rejected
  const clusters = Math.floor(dataSectors / spc);
  const isFat32 = !fat16Length && fat32Length !== 0;
  const max = isFat32 ? FAT32_MAX : clusters > FAT12_MAX ? FAT16_MAX : FAT12_MAX;
  if (clusters > max) return undefined;

  const info: ContentInfo = { type: 'vfat', blockSize: sectorSize, size: sectors * sectorSize };
  let volLabel: string | undefined;
  let serialOff: number;
  if (fat16Length) {
    const rootStart = (reserved + fatSize) * sectorSize;
    volLabel = await findFatLabel(read, rootStart, Math.min(dirEntries, 4096));
    serialOff = 39;
    if (clusters < FAT12_MAX) info.version = 'FAT12';
    else if (clusters < FAT16_MAX) info.version = 'FAT16';
  } else if (fat32Length) {
    const clusterBytes = spc * sectorSize;
    const dataStart = (reserved + fatSize) * sectorSize;
    const fatEntries = Math.floor((fat32Length * sectorSize) / 4);
    let next = v.getUint32(44, true);
    // libblkid follows at most 100 clusters of the root directory; so do we.
    for (let loop = 0; next >= 2 && next < fatEntries && loop < 100; loop++) {
      const off = dataStart + (next - 2) * clusterBytes;
      if (off + clusterBytes > devSize) break;
      volLabel = await findFatLabel(read, off, Math.min(clusterBytes / 32, 4096));
      if (volLabel !== undefined) break;
      const fatEntry = await read(reserved * sectorSize + next * 4, 4);
      if (!fatEntry) break;
      next = dv(fatEntry).getUint32(0, true) & 0x0fffffff;
    }
    serialOff = 67;
    info.version = 'FAT32';
    const fsinfo = v.getUint16(48, true);
    if (fsinfo) {
      const fi = await read(fsinfo * sectorSize, 512);
      if (!fi) return undefined;
      const s1 = ascii(fi, 0, 4);
      const s2 = ascii(fi, 484, 4);
      if (!['RRaA', 'RRdA', '\0\0\0\0'].includes(s1) || !['rrAa', '\0\0\0\0'].includes(s2)) return undefined;
    }
  } else {
    return undefined;
  }
  // blkid (util-linux 2.38) reports the root directory's volume label as LABEL; the boot
  // sector's copy is only LABEL_FATBOOT. The kernel and Windows also show the directory label.
  if (volLabel !== undefined && volLabel !== NO_NAME) {
    const l = label(Buffer.from(volLabel, 'latin1'), 0, 11);
    if (l) info.label = l;
  }
  const s = b.subarray(serialOff, serialOff + 4);
  const hex = (x: number) => x.toString(16).toUpperCase().padStart(2, '0');
  info.uuid = `${hex(s[3]!)}${hex(s[2]!)}-${hex(s[1]!)}${hex(s[0]!)}`;
  return info;
}

/** The 11-byte volume-label entry of a FAT directory, if any (libblkid's rules). */
async function findFatLabel(read: Reader, offset: number, entries: number): Promise<string | undefined> {
  if (entries <= 0) return undefined;
  const dir = await read(offset, entries * 32);
  if (!dir) return undefined;
  for (let i = 0; i < entries; i++) {
    const e = dir.subarray(i * 32, i * 32 + 32);
    if (e[0] === 0) break;
    const attr = e[11]!;
    const clusterHigh = e[20]! | (e[21]! << 8);
    const clusterLow = e[26]! | (e[27]! << 8);
    if (e[0] === 0xe5 || clusterHigh || clusterLow || (attr & 0x3f) === 0x0f) continue;
    if ((attr & (0x08 | 0x10)) === 0x08) return ascii(e, 0, 11);
  }
  return undefined;
}

// ---------------------------------------------------------------- swap

/*
 * Linux swap (what mkswap writes), page size P in 4096..65536:
 *   bootbits 0 (1024) | version 1024 (4) = 1 | last_page 1028 (4) | nr_badpages 1032 (4)
 *   uuid 1036 (16) | volume_name 1052 (16) | padding 1068 (468) | ... | "SWAPSPACE2" at P - 10
 */
async function probeSwap(read: Reader, devSize: number): Promise<ContentInfo | undefined> {
  if (devSize < 10 * 4096) return undefined;
  for (let page = 4096; page <= 65536; page *= 2) {
    const m = await read(page - 10, 10);
    if (!m) break;
    const magic = ascii(m, 0, 10);
    if (magic !== 'SWAPSPACE2' && magic !== 'SWAP-SPACE') continue;
    const head = await read(0, 8);
    if (head && ascii(head, 0, 8) === '\xed\xc3\x02\xe9\x98\x56\xe5\x0c') return undefined; // TuxOnIce image
    if (magic === 'SWAP-SPACE') return { type: 'swap', version: '0' };
    const h = await read(1024, 512);
    if (!h) return undefined;
    const v = dv(h);
    const version = v.getUint32(0, true);
    const lastPageLe = v.getUint32(4, true);
    if (version !== 1 && v.getUint32(0, false) !== 1) return undefined;
    if (lastPageLe === 0) return undefined;
    const info: ContentInfo = { type: 'swap', version: '1', blockSize: page };
    const lastPage = version === 1 ? lastPageLe : v.getUint32(4, false);
    info.size = (lastPage + 1) * page;
    // libblkid reads label and UUID only when padding words 32 and 33 are zero.
    if (v.getUint32(44 + 32 * 4, true) === 0 && v.getUint32(44 + 33 * 4, true) === 0) {
      const l = label(h, 28, 16);
      if (l) info.label = l;
      const u = uuid16(h, 12);
      if (u) info.uuid = u;
    }
    return info;
  }
  return undefined;
}

/**
 * Identify what `dev` holds. Returns `{ type: 'unknown' }` when nothing is
 * recognised. Reads only; never throws for unrecognised or damaged content
 * (read errors from the device do propagate).
 */
export async function detectContent(dev: BlockDevice): Promise<ContentInfo> {
  const read = reader(dev);
  const probes: (() => Promise<ContentInfo | undefined>)[] = [
    () => probeLuks(read),
    () => probeLvm2(read),
    () => probeXfs(read),
    () => probeExt(read),
    () => probeBtrfs(read),
    () => probeNtfs(read),
    () => probeFat(read, dev.size),
    () => probeSwap(read, dev.size),
  ];
  for (const p of probes) {
    const found = await p();
    if (found) return found;
  }
  return { type: 'unknown' };
}

/** Types that are Linux root-filesystem candidates (a Xen single-filesystem image holds one). */
export function isLinuxFilesystem(t: ContentType): boolean {
  return t === 'ext2' || t === 'ext3' || t === 'ext4' || t === 'xfs' || t === 'btrfs';
}
