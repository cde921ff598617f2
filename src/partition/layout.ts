/**
 * The partitioner: lay out primary MBR partitions on a disk and write the
 * table.
 *
 * Layout rules (those of sfdisk and parted with default options):
 *   - partitions are placed in order, each starting at the next multiple of
 *     the alignment (1 MiB by default), the first at 1 MiB, leaving room for
 *     the MBR and a boot loader's core image;
 *   - sizes are rounded up to whole 512-byte sectors;
 *   - 'rest' (allowed for the last partition only) takes everything from its
 *     aligned start to the end of the disk, limited to what an MBR entry can
 *     address (2^32 sectors from the start of the disk);
 *   - layoutMbr: at most 4 primary partitions;
 *   - layoutDos: more than 4 become partitions 1-3 (primary), 4 (extended,
 *     type 0x05) and logical partitions 5, 6, ... inside it. Each logical
 *     partition is preceded by its EBR at an aligned offset and starts one
 *     alignment unit after it, which is where sfdisk puts them; the extended
 *     partition ends where the last logical partition ends.
 */

import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import { detectContent } from '../fs/detect.js';
import { GPT_SIGNATURE } from './gpt.js';
import { MAX_LOGICAL } from './ebr.js';
import { MAX_LBA, type Mbr, type MbrEntry, SECTOR, encodeMbr, entryStatus, hasBootSignature, parseMbr } from './mbr.js';
import { parseMbrType } from './types.js';

export interface PartSpec {
  /** Bytes, or 'rest' (last partition only). */
  size: number | 'rest';
  /** A number, an alias (`linux`, `swap`, `efi`, `fat32`, `fat16`, `ntfs`, `lvm`, `raid`) or hex (`83`, `0x82`). */
  type: number | string;
  bootable?: boolean;
}

export interface PlacedPart {
  /** 1..4 primary (or extended), 5.. logical */
  number: number;
  /** Logical partitions: byte offset of the EBR that describes it. */
  ebr?: number;
  /** Bytes. */
  start: number;
  /** Bytes. */
  size: number;
  type: number;
  bootable: boolean;
}

export const DEFAULT_ALIGN = 1 << 20;

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;

export function layoutMbr(diskSize: number, specs: PartSpec[], opts: { align?: number } = {}): PlacedPart[] {
  const align = opts.align ?? DEFAULT_ALIGN;
  if (!Number.isSafeInteger(align) || align <= 0 || align % SECTOR !== 0) {
    throw new ImageError('usage', `alignment ${align} is not a positive multiple of 512 bytes`, { value: align });
  }
  if (!Number.isSafeInteger(diskSize) || diskSize < 0) throw new ImageError('usage', `disk size ${diskSize} is not a size`, { value: diskSize });
  if (specs.length === 0) throw new ImageError('usage', 'no partitions asked for');
  if (specs.length > 4) {
    throw new ImageError('usage', `an MBR holds 4 primary partitions; ${specs.length} were asked for`, { value: specs.length });
  }
  // Usable end: whole sectors of the disk, and no further than an MBR entry reaches.
  const diskEnd = Math.floor(diskSize / SECTOR) * SECTOR;
  const mbrReach = (MAX_LBA + 1) * SECTOR;
  const placed: PlacedPart[] = [];
  let pos = align;
  specs.forEach((spec, i) => {
    const number = i + 1;
    const type = parseMbrType(spec.type);
    const start = alignUp(pos, align);
    let size: number;
    if (spec.size === 'rest') {
      if (i !== specs.length - 1) throw new ImageError('usage', `partition ${number}: 'rest' is only allowed for the last partition`);
      const end = Math.min(diskEnd, mbrReach);
      size = end - start;
      if (size <= 0) {
        throw new ImageError('usage', `partition ${number}: no space is left for 'rest' (it would start at byte ${start}; the disk ends at ${diskEnd})`, {
          value: start,
        });
      }
    } else {
      if (!Number.isSafeInteger(spec.size) || spec.size <= 0) {
        throw new ImageError('usage', `partition ${number}: size ${spec.size} is not a positive number of bytes`, { value: spec.size });
      }
      size = alignUp(spec.size, SECTOR);
    }
    if (start + size > diskEnd) {
      throw new ImageError(
        'usage',
        `partition ${number} [${start}, ${start + size}) does not fit on a ${diskSize}-byte disk` +
          (diskEnd - start > 0 ? ` (${diskEnd - start} bytes are left from its aligned start)` : ''),
        { value: spec.size === 'rest' ? 'rest' : spec.size },
      );
    }
    if (start / SECTOR > MAX_LBA || size / SECTOR > MAX_LBA) {
      throw new ImageError('usage', `partition ${number} is beyond what an MBR can address (2 TiB): use a smaller disk or fewer bytes`, {
        value: start,
      });
    }
    placed.push({ number, start, size, type, bootable: !!spec.bootable });
    pos = start + size;
  });
  return placed;
}

export interface DosLayout {
  /** Every partition holding data (primary 1..3/4, logical 5..), in disk order. */
  parts: PlacedPart[];
  /** Partition 4, the extended partition, when there are logical partitions. */
  extended?: PlacedPart;
}

/** Lay out any number of partitions on an MBR disk: primary ones up to 4, else 3 primary and the rest logical. */
export function layoutDos(diskSize: number, specs: PartSpec[], opts: { align?: number } = {}): DosLayout {
  if (specs.length <= 4) return { parts: layoutMbr(diskSize, specs, opts) };
  const align = opts.align ?? DEFAULT_ALIGN;
  if (specs.length - 3 > MAX_LOGICAL) {
    throw new ImageError('usage', `an MBR disk holds at most ${3 + MAX_LOGICAL} partitions; ${specs.length} were asked for`, { value: specs.length });
  }
  specs.slice(0, -1).forEach((sp, i) => {
    if (sp.size === 'rest') throw new ImageError('usage', `partition ${i + 1}: 'rest' is only allowed for the last partition`);
  });
  const primary = layoutMbr(diskSize, specs.slice(0, 3), opts);
  const diskEnd = Math.min(Math.floor(diskSize / SECTOR) * SECTOR, (MAX_LBA + 1) * SECTOR);
  const last = primary[2]!;
  const extStart = alignUp(last.start + last.size, align);
  let pos = extStart;
  const logicals: PlacedPart[] = [];
  specs.slice(3).forEach((spec, i) => {
    const number = 5 + i;
    const ebr = alignUp(pos, align);
    const start = alignUp(ebr + SECTOR, align);
    const size = spec.size === 'rest' ? diskEnd - start : alignUp(spec.size, SECTOR);
    if (!Number.isSafeInteger(size) || size <= 0 || start + size > diskEnd) {
      throw new ImageError('usage', `partition ${number} (${spec.size === 'rest' ? 'rest' : `${spec.size} bytes`} at byte ${start}) does not fit on a ${diskSize}-byte disk`, {
        value: spec.size,
      });
    }
    logicals.push({ number, ebr, start, size, type: parseMbrType(spec.type), bootable: !!spec.bootable });
    pos = start + size;
  });
  const extended: PlacedPart = { number: 4, start: extStart, size: pos - extStart, type: 0x05, bootable: false };
  return { parts: [...primary, ...logicals], extended };
}

/** Throw unless the placed partitions fit the device, do not overlap and do not touch the MBR. */
function checkPlaced(dev: BlockDevice, parts: PlacedPart[]): void {
  if (parts.length > 4) throw new ImageError('usage', `an MBR holds 4 primary partitions, not ${parts.length}`);
  const seen = new Set<number>();
  for (const p of parts) {
    if (!Number.isInteger(p.number) || p.number < 1 || p.number > 4 || seen.has(p.number)) {
      throw new ImageError('usage', `partition number ${p.number} is not a free slot 1..4`, { value: p.number });
    }
    seen.add(p.number);
    if (p.start < SECTOR) throw new ImageError('usage', `partition ${p.number} starts at byte ${p.start}, over the MBR`, { value: p.start });
    if (p.start % SECTOR || p.size % SECTOR || p.size <= 0) {
      throw new ImageError('usage', `partition ${p.number} is not a positive whole number of sectors at a sector boundary`, { value: p.start });
    }
    if (p.start + p.size > dev.size) {
      throw new ImageError('usage', `partition ${p.number} ends at byte ${p.start + p.size}, beyond the end of the ${dev.size}-byte disk`, {
        value: p.start + p.size,
      });
    }
  }
  const sorted = [...parts].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i]!.start < sorted[i - 1]!.start + sorted[i - 1]!.size) {
      throw new ImageError('usage', `partitions ${sorted[i - 1]!.number} and ${sorted[i]!.number} overlap`);
    }
  }
}

function randomSignature(): number {
  for (;;) {
    const v = randomBytes(4).readUInt32LE(0);
    if (v !== 0) return v;
  }
}

/**
 * Write an MBR holding `parts` to sector 0 of `dev`.
 *
 * - Boot code (bytes 0..439) is kept when sector 0 already holds a DOS
 *   table (a 0x55AA signature, valid status bytes, and not a FAT or NTFS
 *   boot sector): a boot loader
 *   installed there keeps working. Anything else there (a filesystem's boot
 *   sector, garbage) is replaced by zeros.
 * - A GPT on the disk is erased (primary header at LBA 1 and the backup
 *   header at the last LBA), as fdisk does when it writes a DOS label, so no
 *   tool finds two tables.
 * - The disk signature is `opts.signature`, or random (never 0).
 *
 * Refusing to replace an existing table is the caller's decision (the CLI
 * asks for --force); this function writes.
 */
export async function writeMbrTable(dev: BlockDevice, parts: PlacedPart[], opts: { signature?: number } = {}): Promise<Mbr> {
  if (dev.size < SECTOR) throw new ImageError('usage', `the disk (${dev.size} bytes) is too small for a partition table`);
  checkPlaced(dev, parts);
  const old = new Uint8Array(SECTOR);
  await dev.read(old, 0);
  const oldTable = parseMbr(old);
  const bootSectorFs = oldTable ? (await detectContent(dev)).type : 'unknown';
  const keepBoot =
    oldTable && bootSectorFs !== 'vfat' && bootSectorFs !== 'ntfs' && [0, 1, 2, 3].every((i) => [0, 0x80].includes(entryStatus(old, i)));
  const entries: (MbrEntry | undefined)[] = [undefined, undefined, undefined, undefined];
  for (const p of parts) entries[p.number - 1] = { bootable: p.bootable, type: p.type, start: p.start, size: p.size };
  const mbr: Mbr = {
    signature: opts.signature ?? randomSignature(),
    entries,
    bootCode: keepBoot ? old.slice(0, 440) : new Uint8Array(440),
  };
  const sector = encodeMbr(mbr, dev.size);
  await eraseGpt(dev);
  await dev.write(sector, 0);
  await dev.flush();
  return mbr;
}

/** Zero GPT headers at LBA 1 and at the last LBA, where present. */
async function eraseGpt(dev: BlockDevice): Promise<void> {
  const blocks = Math.floor(dev.size / SECTOR);
  for (const lba of [1, blocks - 1]) {
    if (lba < 1 || lba >= blocks) continue;
    const b = new Uint8Array(SECTOR);
    await dev.read(b, lba * SECTOR);
    if (String.fromCharCode(...b.subarray(0, 8)) === GPT_SIGNATURE) await dev.write(new Uint8Array(SECTOR), lba * SECTOR);
  }
}

/** True when sector 0 holds a table (DOS or protective MBR) someone could lose. */
export async function hasPartitionTable(dev: BlockDevice): Promise<boolean> {
  if (dev.size < SECTOR) return false;
  const s = new Uint8Array(SECTOR);
  await dev.read(s, 0);
  if (!hasBootSignature(s)) return false;
  return parseMbr(s)!.entries.some((e) => e !== undefined);
}
