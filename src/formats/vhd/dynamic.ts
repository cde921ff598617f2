/**
 * A dynamic VHD as a MappedFormat for the shared engine: the BAT maps each
 * block to a sector; a stored block is its sector bitmap, then its data.
 *
 *   guest offset ──block index──► BAT[block] = sector s (all ones: not stored)
 *   host = s × 512 + bitmap size + offset within the block
 *
 * As qemu does, a stored block reads as data whole (the sector bitmap is
 * written all ones when a block is allocated and not consulted on reads: it
 * only matters for differencing disks, which imgtool refuses).
 *
 * Allocation appends a block where the footer stands; after the engine has
 * written its data, `commit` writes its bitmap and points the BAT at it, and
 * `flush` writes the footer at the new end.
 */

import type { BlockDevice } from '../../core/device.js';
import { put32be } from '../../core/bytes.js';
import { fieldError } from '../../core/errors.js';
import type { Mapping, MappedFormat } from '../engine/mapping.js';
import { BAT_UNUSED, DYN_COOKIE, DynHeader, type DynHeaderValue, FOOTER_SIZE, SECTOR, ascii, vhdChecksum } from './footer.js';

/** BAT entries held in memory at most (16 MiB of table: 8 TiB of 2 MiB blocks). */
export const MAX_BAT_ENTRIES = 1 << 22;
/** Blocks larger than this are refused (everyone writes 2 MiB; qemu takes any power of two). */
export const MAX_BLOCK_SIZE = 256 << 20;

export interface DynamicLayout {
  header: DynHeaderValue;
  headerAt: number;
  blockSize: number;
  bitmapSize: number;
  batOffset: number;
  entries: number;
}

const hdrField = (name: string, at: number): number => at + DynHeader.offsetOf(name as never);

/** Read and check the dynamic disk header at `at`. */
export async function readDynamicHeader(child: BlockDevice, at: number, size: number): Promise<DynamicLayout> {
  const raw = new Uint8Array(1024);
  await child.read(raw, at);
  const h = DynHeader.parse(raw);
  if (ascii(h.cookie) !== DYN_COOKIE) throw fieldError('invalid-format', 'vpc', 'dynamic header cookie', at, ascii(h.cookie), 'is not "cxsparse"');
  const sum = vhdChecksum(raw, DynHeader.offsetOf('checksum'));
  if (h.checksum !== sum) throw fieldError('corrupt', 'vpc', 'dynamic header checksum', hdrField('checksum', at), h.checksum, `does not match the header (computed ${sum})`);
  const bs = h.blockSize;
  if (bs < SECTOR || (bs & (bs - 1)) !== 0) throw fieldError('invalid-format', 'vpc', 'block_size', hdrField('blockSize', at), bs, 'is not a power of two of at least 512');
  if (bs > MAX_BLOCK_SIZE) throw fieldError('unsupported', 'vpc', 'block_size', hdrField('blockSize', at), bs, `is larger than ${MAX_BLOCK_SIZE}`);
  const entries = h.maxTableEntries;
  if (entries > MAX_BAT_ENTRIES) throw fieldError('unsupported', 'vpc', 'max_table_entries', hdrField('maxTableEntries', at), entries, `is more than ${MAX_BAT_ENTRIES}`);
  if (entries * bs < size) {
    throw fieldError('corrupt', 'vpc', 'max_table_entries', hdrField('maxTableEntries', at), entries, `× block size ${bs} covers less than the ${size}-byte disk`);
  }
  const batEnd = h.tableOffset + BigInt(entries * 4);
  if (h.tableOffset < 512n || batEnd > BigInt(child.size)) {
    throw fieldError('corrupt', 'vpc', 'table_offset', hdrField('tableOffset', at), h.tableOffset, `puts the ${entries * 4}-byte BAT outside the ${child.size}-byte file`);
  }
  return { header: h, headerAt: at, blockSize: bs, bitmapSize: Math.ceil(bs / (8 * SECTOR) / SECTOR) * SECTOR, batOffset: Number(h.tableOffset), entries };
}

export class DynamicVhd implements MappedFormat {
  readonly name = 'vpc';
  readonly clusterSize: number;
  /** Where the next block goes (and the footer stands). */
  private next: number;

  private constructor(
    private readonly child: BlockDevice,
    readonly size: number,
    readonly layout: DynamicLayout,
    readonly bat: Uint32Array,
    next: number,
    private readonly footer?: Uint8Array,
  ) {
    this.clusterSize = layout.blockSize;
    this.next = next;
  }

  /** Load the BAT and check every stored block lies inside the file. `footer`: written at the end on flush (writable). */
  static async open(child: BlockDevice, size: number, layout: DynamicLayout, footer?: Uint8Array): Promise<DynamicVhd> {
    const raw = new Uint8Array(layout.entries * 4);
    await child.read(raw, layout.batOffset);
    const view = new DataView(raw.buffer);
    const bat = new Uint32Array(layout.entries);
    const blockBytes = layout.bitmapSize + layout.blockSize;
    let next = Math.ceil((layout.batOffset + raw.length) / SECTOR) * SECTOR;
    for (let i = 0; i < layout.entries; i++) {
      const e = view.getUint32(4 * i, false);
      bat[i] = e;
      if (e === BAT_UNUSED) continue;
      const end = e * SECTOR + blockBytes;
      const start = e * SECTOR;
      if (start < layout.headerAt + 1024 || (start < layout.batOffset + raw.length && layout.batOffset < end)) {
        throw fieldError('corrupt', 'vpc', `BAT entry ${i}`, layout.batOffset + 4 * i, e, 'puts a block over the dynamic header or the BAT');
      }
      if (end > child.size) {
        throw fieldError('corrupt', 'vpc', `BAT entry ${i}`, layout.batOffset + 4 * i, e, `puts a ${blockBytes}-byte block outside the ${child.size}-byte file`);
      }
      next = Math.max(next, end);
    }
    return new DynamicVhd(child, size, layout, bat, next, footer);
  }

  async lookup(offset: number, length: number): Promise<Mapping> {
    const bs = this.layout.blockSize;
    const block = Math.floor(offset / bs);
    const within = offset - block * bs;
    const e = this.bat[block]!;
    if (e === BAT_UNUSED) {
      let k = 1;
      while (block + k < this.bat.length && (block + k) * bs < offset + length && this.bat[block + k] === BAT_UNUSED) k++;
      return { kind: 'unallocated', length: Math.min(length, k * bs - within) };
    }
    return { kind: 'data', length: Math.min(length, bs - within), host: e * SECTOR + this.layout.bitmapSize + within };
  }

  async allocate(_offset: number): Promise<number> {
    const at = this.next;
    this.next += this.layout.bitmapSize + this.layout.blockSize;
    return at + this.layout.bitmapSize;
  }

  /** The engine has written (and made room for) the block's data: its bitmap (all ones), then its BAT entry. */
  async commit(offset: number, host: number): Promise<void> {
    const block = Math.floor(offset / this.layout.blockSize);
    await this.child.write(new Uint8Array(this.layout.bitmapSize).fill(0xff), host - this.layout.bitmapSize);
    const sector = (host - this.layout.bitmapSize) / SECTOR;
    this.bat[block] = sector;
    const entry = new Uint8Array(4);
    put32be(entry, 0, sector);
    await this.child.write(entry, this.layout.batOffset + 4 * block);
  }

  /** The footer at the end of the last block (an existing file opened for writing is extended first). */
  async flush(): Promise<void> {
    if (!this.footer) return;
    const c = this.child as BlockDevice & { growable?: boolean };
    const end = this.next + FOOTER_SIZE;
    if (end > c.size && !c.growable && typeof c.resize === 'function') await c.resize(end);
    await c.write(this.footer, this.next);
  }

  /** Blocks stored (for info and tests). */
  storedBlocks(): number {
    let n = 0;
    for (const e of this.bat) if (e !== BAT_UNUSED) n++;
    return n;
  }
}
