/**
 * Reading a VHDX's layout: the current header, the region table, the
 * metadata items and the BAT, every field checked before use (see
 * structs.ts for the structures).
 */

import type { BlockDevice } from '../../core/device.js';
import { u16le, u32le, u64le } from '../../core/bytes.js';
import { ImageError, fieldError } from '../../core/errors.js';
import {
  BAT_GUID,
  FILE_PARAMETERS,
  HEADER_OFFSETS,
  HEADER_SIZE,
  Header,
  type HeaderValue,
  LOGICAL_SECTOR_SIZE,
  METADATA_GUID,
  METADATA_TABLE_SIZE,
  MIB,
  MetadataEntry,
  MetadataTableHeader,
  PAGE83,
  PARENT_LOCATOR,
  PHYSICAL_SECTOR_SIZE,
  REGION_OFFSETS,
  REGION_SIZE,
  RegionEntry,
  RegionTableHeader,
  SIG_HEAD,
  SIG_REGI,
  VIRTUAL_DISK_SIZE,
  batEntries,
  checksumWithout,
  chunkRatioOf,
  guidEqual,
} from './structs.js';

const MAX_ENTRIES = 2047;
/** BAT entries held in memory at most (5 bytes each). */
export const MAX_BAT_ENTRIES = 1 << 24;
const MAX_DISK = 64 * 2 ** 40;

export interface VhdxLayout {
  header: HeaderValue;
  headerAt: number;
  headerSlot: 0 | 1;
  batOffset: number;
  batLength: number;
  metadataOffset: number;
  metadataLength: number;
  blockSize: number;
  leaveBlocksAllocated: boolean;
  logicalSector: number;
  physicalSector: number;
  size: number;
  page83: Uint8Array;
  chunkRatio: number;
  blocks: number;
  entries: number;
}

async function readAt(child: BlockDevice, at: number, n: number): Promise<Uint8Array> {
  const b = new Uint8Array(n);
  await child.read(b, at);
  return b;
}

/** The valid header with the higher sequence number. */
export async function readHeaders(child: BlockDevice): Promise<{ header: HeaderValue; at: number; slot: 0 | 1 }> {
  let best: { header: HeaderValue; at: number; slot: 0 | 1 } | undefined;
  const problems: string[] = [];
  for (const slot of [0, 1] as const) {
    const at = HEADER_OFFSETS[slot];
    const raw = await readAt(child, at, HEADER_SIZE);
    const h = Header.parse(raw);
    if (h.signature !== SIG_HEAD) {
      problems.push(`header ${slot + 1} signature (offset ${at}) is ${h.signature}`);
      continue;
    }
    const sum = checksumWithout(raw, 4);
    if (sum !== h.checksum) {
      problems.push(`header ${slot + 1} checksum (offset ${at + 4}) is ${h.checksum}, computed ${sum}`);
      continue;
    }
    if (!best || h.sequenceNumber > best.header.sequenceNumber) best = { header: h, at, slot };
  }
  if (!best) throw new ImageError('corrupt', `vhdx: no valid header: ${problems.join('; ')}`, { format: 'vhdx', field: 'header', offset: HEADER_OFFSETS[0] });
  const h = best.header;
  if (h.version !== 1) throw fieldError('unsupported', 'vhdx', 'header version', best.at + 66, h.version, 'is not 1');
  if (h.logVersion !== 0) throw fieldError('unsupported', 'vhdx', 'header log version', best.at + 64, h.logVersion, 'is not 0');
  return best;
}

/** The first region table whose signature and checksum verify. */
async function readRegions(child: BlockDevice): Promise<{ at: number; entries: Array<{ e: ReturnType<typeof RegionEntry.parse>; at: number }> }> {
  const problems: string[] = [];
  for (const at of REGION_OFFSETS) {
    const raw = await readAt(child, at, REGION_SIZE);
    const t = RegionTableHeader.parse(raw);
    const sum = checksumWithout(raw, 4);
    if (t.signature !== SIG_REGI || sum !== t.checksum) {
      problems.push(`region table at ${at}: signature ${t.signature}, checksum ${t.checksum} (computed ${sum})`);
      continue;
    }
    if (t.entryCount > MAX_ENTRIES) throw fieldError('corrupt', 'vhdx', 'region table entry count', at + 8, t.entryCount, `is more than ${MAX_ENTRIES}`);
    const entries = [];
    for (let i = 0; i < t.entryCount; i++) {
      const off = RegionTableHeader.size + i * RegionEntry.size;
      entries.push({ e: RegionEntry.parse(raw.subarray(off)), at: at + off });
    }
    return { at, entries };
  }
  throw new ImageError('corrupt', `vhdx: no valid region table: ${problems.join('; ')}`, { format: 'vhdx', field: 'region table', offset: REGION_OFFSETS[0] });
}

/** Ranges that must not overlap: [start, end) with a name for the message. */
function checkOverlaps(ranges: Array<{ start: number; end: number; name: string; at: number }>): void {
  const sorted = [...ranges].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1]!;
    const b = sorted[i]!;
    if (b.start < a.end) throw fieldError('corrupt', 'vhdx', b.name, b.at, b.start, `overlaps ${a.name} [${a.start}, ${a.end})`);
  }
}

interface Item {
  offset: number;
  length: number;
  at: number;
}

async function readMetadata(child: BlockDevice, base: number, length: number): Promise<Map<string, Item>> {
  const raw = await readAt(child, base, METADATA_TABLE_SIZE);
  const t = MetadataTableHeader.parse(raw);
  if (Buffer.from(t.signature).toString('latin1') !== 'metadata') throw fieldError('corrupt', 'vhdx', 'metadata table signature', base, Buffer.from(t.signature).toString('latin1'), 'is not "metadata"');
  if (t.entryCount > MAX_ENTRIES) throw fieldError('corrupt', 'vhdx', 'metadata entry count', base + 10, t.entryCount, `is more than ${MAX_ENTRIES}`);
  const known = [FILE_PARAMETERS, VIRTUAL_DISK_SIZE, PAGE83, LOGICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE, PARENT_LOCATOR];
  const items = new Map<string, Item>();
  const ranges = [];
  for (let i = 0; i < t.entryCount; i++) {
    const off = MetadataTableHeader.size + i * MetadataEntry.size;
    const e = MetadataEntry.parse(raw.subarray(off));
    const at = base + off;
    const isKnown = known.some((g) => guidEqual(g, e.itemId));
    if (!isKnown && e.flags & 4) throw fieldError('unsupported', 'vhdx', `metadata entry ${i} item`, at, Buffer.from(e.itemId).toString('hex'), 'is required and unknown to imgtool');
    if (e.length === 0) continue;
    if (e.offset < METADATA_TABLE_SIZE || e.offset + e.length > length) {
      throw fieldError('corrupt', 'vhdx', `metadata entry ${i} offset`, at + 16, e.offset, `puts ${e.length} bytes outside the metadata region's [${METADATA_TABLE_SIZE}, ${length})`);
    }
    ranges.push({ start: e.offset, end: e.offset + e.length, name: `metadata entry ${i}`, at: at + 16 });
    if (isKnown) items.set(Buffer.from(e.itemId).toString('hex'), { offset: base + e.offset, length: e.length, at });
  }
  checkOverlaps(ranges);
  return items;
}

async function item(child: BlockDevice, items: Map<string, Item>, id: Uint8Array, name: string, size: number): Promise<{ bytes: Uint8Array; at: number }> {
  const it = items.get(Buffer.from(id).toString('hex'));
  if (!it) throw new ImageError('corrupt', `vhdx: the metadata has no ${name} item`, { format: 'vhdx', field: name });
  if (it.length < size) throw fieldError('corrupt', 'vhdx', `${name} length`, it.at + 20, it.length, `is shorter than ${size} bytes`);
  return { bytes: await readAt(child, it.offset, size), at: it.offset };
}

/** The parent's path from a parent locator item, for the refusal message. */
async function parentPath(child: BlockDevice, items: Map<string, Item>): Promise<string> {
  const it = items.get(Buffer.from(PARENT_LOCATOR).toString('hex'));
  if (!it || it.length < 20) return '(no parent locator)';
  const raw = await readAt(child, it.offset, Math.min(it.length, 64 * 1024));
  const count = Math.min(u16le(raw, 18), Math.floor((raw.length - 20) / 12));
  const pairs = new Map<string, string>();
  const str = (o: number, n: number) => (o + n <= raw.length ? Buffer.from(raw.subarray(o, o + n)).toString('utf16le') : '');
  for (let i = 0; i < count; i++) {
    const e = 20 + 12 * i;
    pairs.set(str(u32le(raw, e), u16le(raw, e + 8)), str(u32le(raw, e + 4), u16le(raw, e + 10)));
  }
  return pairs.get('relative_path') ?? pairs.get('absolute_win32_path') ?? pairs.get('volume_path') ?? '(unnamed parent)';
}

export async function readLayout(child: BlockDevice, h: { header: HeaderValue; at: number; slot: 0 | 1 }, path?: string): Promise<VhdxLayout> {
  const { header, at } = h;
  const fileSize = child.size;
  const regions = await readRegions(child);
  const ranges = [{ start: 0, end: MIB, name: 'headers and region tables', at: 0 }];
  const logOffset = Number(header.logOffset);
  if (header.logLength > 0) {
    if (header.logOffset % BigInt(MIB) !== 0n || header.logOffset < BigInt(MIB) || header.logLength % MIB !== 0 || header.logOffset + BigInt(header.logLength) > BigInt(fileSize)) {
      throw fieldError('corrupt', 'vhdx', 'log offset', at + 72, header.logOffset, `with log length ${header.logLength} is not a 1 MiB aligned range inside the ${fileSize}-byte file`);
    }
    ranges.push({ start: logOffset, end: logOffset + header.logLength, name: 'log', at: at + 72 });
  }
  let bat: { offset: number; length: number } | undefined;
  let meta: { offset: number; length: number } | undefined;
  for (const { e, at: eAt } of regions.entries) {
    const isBat = guidEqual(e.guid, BAT_GUID);
    const isMeta = guidEqual(e.guid, METADATA_GUID);
    if (!isBat && !isMeta) {
      if (e.required & 1) throw fieldError('unsupported', 'vhdx', 'region table entry', eAt, Buffer.from(e.guid).toString('hex'), 'is a required region unknown to imgtool');
      continue;
    }
    if (e.fileOffset % BigInt(MIB) !== 0n || e.fileOffset < BigInt(MIB) || e.length === 0 || e.length % MIB !== 0 || e.fileOffset + BigInt(e.length) > BigInt(fileSize)) {
      throw fieldError('corrupt', 'vhdx', `${isBat ? 'BAT' : 'metadata'} region offset`, eAt + 16, e.fileOffset, `with length ${e.length} is not a 1 MiB aligned range inside the ${fileSize}-byte file`);
    }
    const r = { offset: Number(e.fileOffset), length: e.length };
    if ((isBat ? bat : meta) !== undefined) throw fieldError('corrupt', 'vhdx', 'region table entry', eAt, Buffer.from(e.guid).toString('hex'), 'repeats a region');
    if (isBat) bat = r;
    else meta = r;
    ranges.push({ start: r.offset, end: r.offset + r.length, name: `${isBat ? 'BAT' : 'metadata'} region`, at: eAt + 16 });
  }
  if (!bat || !meta) throw new ImageError('corrupt', `vhdx: the region table has no ${bat ? 'metadata' : 'BAT'} region`, { format: 'vhdx', field: 'region table', offset: regions.at });
  checkOverlaps(ranges);

  const items = await readMetadata(child, meta.offset, meta.length);
  const fp = await item(child, items, FILE_PARAMETERS, 'file parameters', 8);
  const blockSize = u32le(fp.bytes, 0);
  const fpFlags = u32le(fp.bytes, 4);
  if (blockSize < MIB || blockSize > 256 * MIB || (blockSize & (blockSize - 1)) !== 0) {
    throw fieldError('invalid-format', 'vhdx', 'block size', fp.at, blockSize, 'is not a power of two from 1 MiB to 256 MiB');
  }
  const lssItem = await item(child, items, LOGICAL_SECTOR_SIZE, 'logical sector size', 4);
  const logicalSector = u32le(lssItem.bytes, 0);
  if (logicalSector !== 512 && logicalSector !== 4096) throw fieldError('invalid-format', 'vhdx', 'logical sector size', lssItem.at, logicalSector, 'is not 512 or 4096');
  const pssItem = await item(child, items, PHYSICAL_SECTOR_SIZE, 'physical sector size', 4);
  const physicalSector = u32le(pssItem.bytes, 0);
  if (physicalSector !== 512 && physicalSector !== 4096) throw fieldError('invalid-format', 'vhdx', 'physical sector size', pssItem.at, physicalSector, 'is not 512 or 4096');
  const vdsItem = await item(child, items, VIRTUAL_DISK_SIZE, 'virtual disk size', 8);
  const vds = u64le(vdsItem.bytes, 0);
  if (vds > BigInt(MAX_DISK) || vds % BigInt(logicalSector) !== 0n) {
    throw fieldError('invalid-format', 'vhdx', 'virtual disk size', vdsItem.at, vds, `is not a multiple of the ${logicalSector}-byte sector up to 64 TiB`);
  }
  const page83 = items.has(Buffer.from(PAGE83).toString('hex')) ? (await item(child, items, PAGE83, 'page 83 data', 16)).bytes : new Uint8Array(16);
  if (fpFlags & 2) {
    const parent = await parentPath(child, items);
    throw new ImageError('unsupported', `vhdx: ${path ?? 'the image'} is a differencing disk of parent '${parent}'; imgtool does not follow VHDX parents`, {
      format: 'vhdx',
      field: 'parent locator',
      value: parent,
    });
  }
  const size = Number(vds);
  const chunkRatio = chunkRatioOf(logicalSector, blockSize);
  const blocks = Math.ceil(size / blockSize);
  const entries = batEntries(blocks, chunkRatio);
  if (entries > MAX_BAT_ENTRIES) throw fieldError('unsupported', 'vhdx', 'virtual disk size', vdsItem.at, vds, `needs ${entries} BAT entries, more than ${MAX_BAT_ENTRIES}`);
  if (entries * 8 > bat.length) throw fieldError('corrupt', 'vhdx', 'BAT region length', regions.at, bat.length, `is shorter than the ${entries * 8} bytes of ${entries} entries`);
  return {
    header,
    headerAt: at,
    headerSlot: h.slot,
    batOffset: bat.offset,
    batLength: bat.length,
    metadataOffset: meta.offset,
    metadataLength: meta.length,
    blockSize,
    leaveBlocksAllocated: (fpFlags & 1) !== 0,
    logicalSector,
    physicalSector,
    size,
    page83,
    chunkRatio,
    blocks,
    entries,
  };
}
