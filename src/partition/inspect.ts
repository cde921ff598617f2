/**
 * Read the partition table of any disk image: MBR (with its EBR chain of
 * logical partitions), GPT (with CRC checks and the backup header), or none;
 * and say what each partition, or the bare disk, holds.
 *
 * Where things come from:
 *   - The MBR sector, the EBR chain, and the GPT headers and entry arrays are
 *     read and validated by our own codecs (mbr.ts, ebr.ts, gpt.ts). They
 *     supply everything partitioninfo cannot: the boot flag, the disk
 *     signature, CHS fields, slot numbers, GPT disk GUID and attributes, CRC
 *     checks, the backup GPT, and the bounds and loop checks that make a
 *     hostile table cost a bounded number of reads.
 *   - The `partitioninfo` package (pinfo.ts) reads the partition list again
 *     wherever our reader has shown that it can do so safely and completely:
 *     an MBR whose EBR chain ended by itself, or a GPT whose primary header
 *     and array are valid and in the standard place (128-byte entries at
 *     LBA 2, at most 128 of them: what partitioninfo's 41-sector read
 *     covers). Its offsets, sizes and types must match ours; if they do not,
 *     the difference is reported as a warning and our reading is shown.
 *   - Content (filesystem, swap, LVM, LUKS) comes from fs/detect.ts.
 *
 * Conventions: offsets and sizes are bytes; `end` is exclusive (start +
 * size) like every range in imgtool; `endSector` is inclusive, as fdisk
 * prints "End". Type codes are spelled as `sfdisk --json` spells them: MBR
 * types in lower-case hex without padding (`83`, `5`), GPT types as upper-case
 * GUIDs.
 */

import type { BlockDevice } from '../core/device.js';
import { SliceDevice } from '../core/slice.js';
import { type ContentInfo, detectContent, isLinuxFilesystem } from '../fs/detect.js';
import { walkEbrChain } from './ebr.js';
import {
  type GptHeader,
  LEGACY_BIOS_BOOTABLE,
  checkEntryArray,
  entryArrayBytes,
  formatGptAttributes,
  parseGptEntries,
  parseGptHeader,
} from './gpt.js';
import { type Chs, GPT_PROTECTIVE, SECTOR, entryChs, entryStatus, formatSignature, hasBootSignature, isExtendedType, parseMbr, type Mbr } from './mbr.js';
import { readWithPartitioninfo } from './pinfo.js';
import { gptTypeName, mbrTypeCode, mbrTypeName } from './types.js';

export type { ContentInfo } from '../fs/detect.js';

export interface PartitionInfo {
  /** Linux's partition number: MBR slot 1-4, logical 5+, GPT entry slot. */
  number: number;
  start: number;
  /** Exclusive: start + size. */
  end: number;
  size: number;
  startSector: number;
  /** Inclusive, as fdisk prints it. */
  endSector: number;
  sectors: number;
  /** MBR: hex code as sfdisk prints it (`83`); GPT: type GUID. */
  type: string;
  typeName: string;
  /** MBR: status byte 0x80. GPT: attribute bit 2 (LegacyBIOSBootable). */
  bootable: boolean;
  kind: 'primary' | 'extended' | 'logical';
  /** GPT partition name. */
  name?: string;
  /** GPT unique partition GUID. */
  uuid?: string;
  /** GPT attributes as sfdisk prints them (`RequiredPartition LegacyBIOSBootable GUID:60`). */
  attrs?: string;
  /** MBR: the CHS addresses stored in the entry. */
  chs?: { first: Chs; last: Chs };
  content: ContentInfo;
}

export interface DiskInfo {
  scheme: 'mbr' | 'gpt' | 'none';
  /** MBR disk signature `0x1234abcd`, or the GPT disk GUID. */
  diskId?: string;
  sectorSize: 512;
  size: number;
  partitions: PartitionInfo[];
  /** What the whole disk holds, for scheme `none`. */
  content?: ContentInfo;
  /** GPT only: the usable area (bytes, half-open) and which header was used. */
  gpt?: { firstUsable: number; lastUsable: number; header: 'primary' | 'backup' };
  warnings: string[];
  hint?: string;
}

/** Content detection is skipped for partitions beyond this many (a hostile GPT can list 32768). */
export const MAX_DETECTED = 128;
const MAX_WARNINGS = 64;

export interface InspectOptions {
  /** Detect partition contents (default true). */
  content?: boolean;
  /** Cross-check with the partitioninfo package where it can read the table (default true). */
  partitioninfo?: boolean;
}

export async function inspectDisk(dev: BlockDevice, opts: InspectOptions = {}): Promise<DiskInfo> {
  const info: DiskInfo = { scheme: 'none', sectorSize: SECTOR, size: dev.size, partitions: [], warnings: [] };
  const warn = (w: string) => {
    if (info.warnings.length < MAX_WARNINGS) info.warnings.push(w);
    else if (info.warnings.length === MAX_WARNINGS) info.warnings.push('(further warnings omitted)');
  };
  const readSector = async (offset: number) => {
    const b = new Uint8Array(SECTOR);
    await dev.read(b, offset);
    return b;
  };

  if (dev.size % SECTOR !== 0) warn(`the disk size ${dev.size} is not a multiple of 512 bytes; the last ${dev.size % SECTOR} bytes are not addressable`);
  const s0 = dev.size >= SECTOR ? await readSector(0) : undefined;
  const mbr = s0 ? parseMbr(s0) : undefined;
  let bootSectorFs: ContentInfo | undefined;
  if (mbr) {
    // A FAT or NTFS boot sector also ends with 0x55AA; libblkid checks for one before calling it a
    // table. Any other signature wins too when the "entries" have impossible status bytes (the
    // 0x55AA was then a coincidence inside, say, a LUKS header).
    const c = await detectContent(dev);
    const badStatus = [0, 1, 2, 3].some((i) => mbr.entries[i] && ![0, 0x80].includes(entryStatus(s0!, i)));
    if (c.type === 'vfat' || c.type === 'ntfs' || (badStatus && c.type !== 'unknown')) bootSectorFs = c;
  }

  if (mbr && !bootSectorFs && mbr.entries.some((e) => e?.type === GPT_PROTECTIVE)) {
    info.scheme = 'gpt';
    await inspectGpt(dev, mbr, info, warn, opts);
  } else if (mbr && !bootSectorFs) {
    info.scheme = 'mbr';
    await inspectMbr(dev, s0!, mbr, info, warn, readSector, opts);
  } else {
    if (!s0 || !hasBootSignature(s0)) {
      if (dev.size >= 2 * SECTOR) {
        const s1 = await readSector(SECTOR);
        if (String.fromCharCode(...s1.subarray(0, 8)) === 'EFI PART') {
          warn('there is a GPT header at LBA 1 but no protective MBR: ignored, as the kernel and sfdisk ignore it');
        }
      }
    }
    info.content = bootSectorFs ?? (await detectContent(dev));
    if (isLinuxFilesystem(info.content.type)) {
      info.hint =
        `no partition table: the whole image is one ${info.content.type} filesystem. This looks like a Xen ` +
        `single-filesystem image; 'imgtool wrap' turns it into a partitioned, bootable disk for KVM.`;
    }
    return info;
  }

  if (opts.content !== false) {
    let n = 0;
    for (const p of info.partitions) {
      if (p.kind === 'extended' || p.size === 0) continue;
      if (n++ >= MAX_DETECTED) {
        warn(`content detection skipped for partitions after the first ${MAX_DETECTED}`);
        break;
      }
      if (p.end > dev.size) continue; // already warned: not readable as a whole
      p.content = await detectContent(new SliceDevice(dev, p.start, p.size, { readOnly: true }));
    }
  }
  return info;
}

function unknown(): ContentInfo {
  return { type: 'unknown' };
}

function placed(number: number, start: number, size: number): Pick<PartitionInfo, 'number' | 'start' | 'end' | 'size' | 'startSector' | 'endSector' | 'sectors'> {
  const sectors = Math.floor(size / SECTOR);
  const startSector = Math.floor(start / SECTOR);
  return { number, start, end: start + size, size, startSector, endSector: sectors > 0 ? startSector + sectors - 1 : startSector, sectors };
}

/** Warn about partitions that overlap (O(n log n); bounded output). */
function checkOverlaps(parts: { number: number; start: number; end: number }[], warn: (w: string) => void, what = 'partition'): void {
  const sorted = [...parts].filter((p) => p.end > p.start).sort((a, b) => a.start - b.start || a.number - b.number);
  let reach: { number: number; end: number } | undefined;
  let reported = 0;
  for (const p of sorted) {
    if (reach && p.start < reach.end) {
      if (reported++ < 16) warn(`${what} ${p.number} overlaps ${what} ${reach.number}`);
    }
    if (!reach || p.end > reach.end) reach = { number: p.number, end: p.end };
  }
}

function checkInDisk(p: { number: number; start: number; end: number }, diskSize: number, warn: (w: string) => void): void {
  if (p.start >= diskSize) warn(`partition ${p.number} starts at byte ${p.start}, beyond the end of the disk (${diskSize} bytes)`);
  else if (p.end > diskSize) warn(`partition ${p.number} ends at byte ${p.end}, beyond the end of the disk (${diskSize} bytes)`);
}

async function inspectMbr(
  dev: BlockDevice,
  s0: Uint8Array,
  mbr: Mbr,
  info: DiskInfo,
  warn: (w: string) => void,
  readSector: (o: number) => Promise<Uint8Array>,
  opts: InspectOptions,
): Promise<void> {
  info.diskId = formatSignature(mbr.signature);
  if (dev.size >= 2 * SECTOR && String.fromCharCode(...(await readSector(SECTOR)).subarray(0, 8)) === 'EFI PART') {
    warn('a GPT header at LBA 1 is ignored: the MBR has no protective (0xEE) partition (a stale GPT?)');
  }
  let extended: PartitionInfo | undefined;
  mbr.entries.forEach((e, i) => {
    if (!e) return;
    const status = entryStatus(s0, i);
    if (status !== 0 && status !== 0x80) warn(`partition ${i + 1}: status byte 0x${status.toString(16)} is neither 0x00 nor 0x80`);
    const kind = isExtendedType(e.type) ? 'extended' : 'primary';
    const p: PartitionInfo = {
      ...placed(i + 1, e.start, e.size),
      type: mbrTypeCode(e.type),
      typeName: mbrTypeName(e.type),
      bootable: e.bootable,
      kind,
      chs: entryChs(s0, i),
      content: unknown(),
    };
    if (e.size > 0 && e.start === 0) warn(`partition ${p.number} starts at sector 0, over the MBR itself`);
    checkInDisk(p, dev.size, warn);
    if (kind === 'extended') {
      if (extended) warn(`ignoring extra extended partition ${p.number} (only the first is followed, as sfdisk does)`);
      else extended = p;
    }
    info.partitions.push(p);
  });
  checkOverlaps(info.partitions, warn);

  let chainComplete = true;
  let ebrCount = 0;
  if (extended) {
    const walk = await walkEbrChain(readSector, { number: extended.number, start: extended.start, size: extended.size }, dev.size);
    walk.warnings.forEach(warn);
    chainComplete = walk.complete;
    ebrCount = walk.ebrs.length;
    const logicals: PartitionInfo[] = walk.logicals.map((l) => ({
      ...placed(l.number, l.start, l.size),
      type: mbrTypeCode(l.type),
      typeName: mbrTypeName(l.type),
      bootable: l.bootable,
      kind: 'logical' as const,
      chs: entryChs(l.sector, l.slot),
      content: unknown(),
    }));
    logicals.forEach((p) => checkInDisk(p, dev.size, warn));
    checkOverlaps(logicals, warn, 'logical partition');
    info.partitions.push(...logicals);
  }

  if (opts.partitioninfo !== false && chainComplete) {
    // Budget: the MBR, every EBR we visited, and a little slack. A chain that
    // partitioninfo follows differently than we do runs out of budget instead of looping.
    const r = await readWithPartitioninfo(dev, 1 + ebrCount + 2);
    const ours = info.partitions.filter((p) => p.type !== '0');
    if (!r.ok) {
      warn(`cross-check: the partitioninfo library could not read this table (${r.reason}); showing imgtool's own reading`);
    } else if (r.result.type !== 'mbr') {
      warn(`cross-check: the partitioninfo library reads this disk as ${r.result.type}; showing imgtool's own MBR reading`);
    } else {
      const theirs = r.result.partitions;
      const same =
        theirs.length === ours.length &&
        theirs.every((t, i) => t.offset === ours[i]!.start && t.size === ours[i]!.size && mbrTypeCode(t.type) === ours[i]!.type);
      if (!same) {
        const list = theirs.map((t) => `${t.offset}+${t.size}:${mbrTypeCode(t.type)}`).join(', ');
        warn(`cross-check: the partitioninfo library reads different partitions here (${list}); showing imgtool's own reading`);
      }
    }
  }
}

interface GptRead {
  ok: boolean;
  reason?: string;
  header?: GptHeader;
  array?: Uint8Array;
}

async function readGpt(dev: BlockDevice, lba: number, blocks: number): Promise<GptRead> {
  if (lba < 1 || lba >= blocks) return { ok: false, reason: `LBA ${lba} is outside the disk (${blocks} blocks)` };
  const block = new Uint8Array(SECTOR);
  await dev.read(block, lba * SECTOR);
  const h = parseGptHeader(block, lba, blocks);
  if (!h.ok) return { ok: false, reason: h.reason };
  // parseGptHeader has bounded the array (<= 4 MiB) and placed it inside the disk.
  const array = new Uint8Array(entryArrayBytes(h.header));
  if (array.length) await dev.read(array, h.header.entriesLba * SECTOR);
  const bad = checkEntryArray(h.header, array);
  if (bad) return { ok: false, reason: bad, header: h.header };
  return { ok: true, header: h.header, array };
}

async function inspectGpt(dev: BlockDevice, mbr: Mbr, info: DiskInfo, warn: (w: string) => void, opts: InspectOptions): Promise<void> {
  const blocks = Math.floor(dev.size / SECTOR);
  // The protective MBR: one 0xEE entry from LBA 1 over the whole disk (or 2^32 - 1 sectors).
  const pmbr = mbr.entries.find((e) => e?.type === GPT_PROTECTIVE)!;
  const want = Math.min(blocks - 1, 0xffffffff);
  if (pmbr.start !== SECTOR) warn(`the protective MBR partition starts at byte ${pmbr.start}, not at LBA 1`);
  else if (pmbr.size / SECTOR !== want) {
    warn(`the protective MBR covers ${pmbr.size / SECTOR} sectors but the disk has ${want} after the MBR (GPT PMBR size mismatch: was the disk resized?)`);
  }
  if (mbr.entries.some((e) => e && e.type !== GPT_PROTECTIVE)) warn('hybrid MBR: the protective MBR also lists other partitions; the GPT is used');
  if (blocks < 3) {
    warn('the disk is too small to hold a GPT');
    return;
  }

  const primary = await readGpt(dev, 1, blocks);
  let backupLba = blocks - 1;
  if (primary.header) {
    if (primary.header.alternateLba !== blocks - 1) {
      warn(
        `the backup GPT header is recorded at LBA ${primary.header.alternateLba}, not at the last LBA ${blocks - 1}: ` +
          `was the disk resized? ('sfdisk --relocate gpt-bak-std' moves it)`,
      );
      if (primary.header.alternateLba < blocks && primary.header.alternateLba > 1) backupLba = primary.header.alternateLba;
    }
  }
  const backup = await readGpt(dev, backupLba, blocks);
  let used: GptRead;
  let which: 'primary' | 'backup';
  if (primary.ok) {
    used = primary;
    which = 'primary';
    if (!backup.ok) warn(`the backup GPT is damaged: ${backup.reason}`);
    else if (backup.header!.diskGuid !== primary.header!.diskGuid || backup.header!.entriesCrc !== primary.header!.entriesCrc) {
      warn('the primary and backup GPTs differ; the primary is used');
    }
  } else if (backup.ok) {
    used = backup;
    which = 'backup';
    warn(`the primary GPT is damaged (${primary.reason}); using the backup GPT at LBA ${backupLba}`);
  } else {
    warn(`no valid GPT: primary: ${primary.reason}; backup: ${backup.reason}`);
    return;
  }

  const h = used.header!;
  info.diskId = h.diskGuid;
  info.gpt = { firstUsable: h.firstUsableLba * SECTOR, lastUsable: (h.lastUsableLba + 1) * SECTOR, header: which };
  if (h.lastUsableLba >= blocks) warn(`LastUsableLBA ${h.lastUsableLba} is beyond the end of the disk (${blocks} blocks)`);
  const { entries, problems } = parseGptEntries(h, used.array!);
  problems.forEach(warn);
  for (const e of entries) {
    if (e.lastLba < e.firstLba) {
      warn(`GPT entry ${e.slot}: EndingLBA ${e.lastLba} is before StartingLBA ${e.firstLba}; entry ignored`);
      continue;
    }
    const size = (e.lastLba - e.firstLba + 1) * SECTOR;
    const p: PartitionInfo = {
      ...placed(e.slot, e.firstLba * SECTOR, size),
      type: e.typeGuid,
      typeName: gptTypeName(e.typeGuid),
      bootable: (e.attributes & LEGACY_BIOS_BOOTABLE) !== 0n,
      kind: 'primary',
      uuid: e.uniqueGuid,
      content: unknown(),
    };
    if (e.name) p.name = e.name;
    const attrs = formatGptAttributes(e.attributes);
    if (attrs) p.attrs = attrs;
    if (e.firstLba < h.firstUsableLba || e.lastLba > h.lastUsableLba) {
      warn(`partition ${e.slot} [LBA ${e.firstLba}, ${e.lastLba}] lies outside the usable area [${h.firstUsableLba}, ${h.lastUsableLba}]`);
    }
    checkInDisk(p, dev.size, warn);
    info.partitions.push(p);
  }
  checkOverlaps(info.partitions, warn);

  const standard = which === 'primary' && h.entriesLba === 2 && h.entrySize === 128 && h.entryCount <= 128;
  const firstUsed = mbr.entries.find((e) => e && e.type !== 0);
  if (opts.partitioninfo !== false && standard && firstUsed?.type === GPT_PROTECTIVE) {
    const r = await readWithPartitioninfo(dev, 4);
    if (!r.ok) {
      warn(`cross-check: the partitioninfo library could not read this GPT (${r.reason}); showing imgtool's own reading`);
    } else if (r.result.type !== 'gpt') {
      warn(`cross-check: the partitioninfo library reads this disk as ${r.result.type}; showing imgtool's own GPT reading`);
    } else {
      const theirs = r.result.partitions;
      const ours = info.partitions;
      const same =
        theirs.length === ours.length &&
        theirs.every(
          (t, i) => t.offset === ours[i]!.start && t.size === ours[i]!.size && t.type.toUpperCase() === ours[i]!.type && t.guid.toUpperCase() === ours[i]!.uuid,
        );
      if (!same) warn(`cross-check: the partitioninfo library reads ${theirs.length} different GPT partitions; showing imgtool's own reading`);
    }
  }
}
