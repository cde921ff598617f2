/**
 * qcow2 metadata edited directly in the container file, for the
 * maintenance commands (resize, check): the header fields they change, the
 * L1 table, L2 entries and refcounts. Every value read is checked before use;
 * writes go in the order the caller chooses (see resize.ts, check.ts).
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { FORMAT, INCOMPAT_EXTL2, type Qcow2Header, readHeader } from './header.js';
import { put32be as putU32, put64be as putU64 } from '../../core/bytes.js';
import { getRefcount, maxRefcount, setRefcount } from './refcount.js';
import { COMPRESSED_HI, TWO32, compressedDesc, stdOffset } from './l2.js';

export const u64At = (b: Uint8Array, o: number): number =>
  (((b[o]! << 24) >>> 0) + (b[o + 1]! << 16) + (b[o + 2]! << 8) + b[o + 3]!) * 2 ** 32 + (((b[o + 4]! << 24) >>> 0) + (b[o + 5]! << 16) + (b[o + 6]! << 8) + b[o + 7]!);

/** Offset bits of L1 entries, refcount table entries and standard L2 entries (bits 9..55). */
export const offsetBits = (v: number): number => Math.floor(v / 512) % 2 ** 47 * 512;

/** An L2 entry's words (hi, lo) at byte `o` of a table. */
export function entryWords(t: Uint8Array, o: number): [number, number] {
  const w = (i: number) => ((t[i]! << 24) >>> 0) + (t[i + 1]! << 16) + (t[i + 2]! << 8) + t[i + 3]!;
  return [w(o), w(o + 4)];
}

/**
 * The host clusters an L2 entry holds a reference to, as qemu counts them:
 * one for a standard entry with a host offset, every cluster a compressed
 * entry's sectors touch.
 */
export function entryClusters(hi: number, lo: number, clusterBits: number): number[] {
  const cs = 2 ** clusterBits;
  if (hi & COMPRESSED_HI) {
    const d = compressedDesc(hi, lo, clusterBits);
    if (d.offset < 0) return [];
    const out: number[] = [];
    for (let c = Math.floor(d.offset / cs); c <= Math.floor((d.offset + d.length - 1) / cs); c++) out.push(c);
    return out;
  }
  const host = stdOffset(hi, lo);
  return host ? [Math.floor(host / cs)] : [];
}

export { TWO32 };

export class Qcow2File {
  readonly cs: number;
  readonly entryBytes: number;
  readonly l2Entries: number;
  readonly refPerBlock: number;
  rt: number[] = [];
  private readonly blocks = new Map<number, Uint8Array>();
  private readonly dirty = new Set<number>();

  private constructor(
    readonly child: BlockDevice,
    readonly h: Qcow2Header,
  ) {
    this.cs = 2 ** h.clusterBits;
    this.entryBytes = h.incompatible & INCOMPAT_EXTL2 ? 16 : 8;
    this.l2Entries = this.cs / this.entryBytes;
    this.refPerBlock = (this.cs * 8) / 2 ** h.refcountOrder;
  }

  static async open(child: BlockDevice): Promise<Qcow2File> {
    const f = new Qcow2File(child, await readHeader(child));
    await f.loadRefcountTable();
    return f;
  }

  async readBytes(offset: number, length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    const avail = Math.max(0, Math.min(length, this.child.size - offset));
    if (avail > 0) await this.child.read(buf.subarray(0, avail), offset);
    return buf;
  }

  private async loadRefcountTable(): Promise<void> {
    const h = this.h;
    const bytes = h.refcountTableClusters * this.cs;
    if (h.refcountTableOffset % this.cs !== 0 || h.refcountTableOffset === 0 || bytes > 8 << 20) {
      throw new ImageError('corrupt', `qcow2: refcount table at ${h.refcountTableOffset} (${h.refcountTableClusters} clusters) is invalid`, {
        format: FORMAT,
        field: 'refcount_table_offset',
        offset: 48,
        value: h.refcountTableOffset,
      });
    }
    const t = await this.readBytes(h.refcountTableOffset, bytes);
    this.rt = [];
    for (let i = 0; i < bytes / 8; i++) this.rt.push(offsetBits(u64At(t, i * 8)));
  }

  /** An L1 table's entries: the L2 table offset (bits 9..55) and the copied flag (bit 63). */
  async l1(at = this.h.l1TableOffset, size = this.h.l1Size): Promise<Array<{ offset: number; copied: boolean; hi: number; lo: number }>> {
    if (size * 8 > 32 << 20) throw new ImageError('corrupt', `qcow2: l1_size ${size} is too large`, { format: FORMAT, field: 'l1_size', value: size });
    const b = await this.readBytes(at, size * 8);
    const out: Array<{ offset: number; copied: boolean; hi: number; lo: number }> = [];
    for (let i = 0; i < size; i++) {
      const [hi, lo] = entryWords(b, i * 8);
      out.push({ offset: stdOffset(hi, lo), copied: hi >= 0x80000000, hi, lo });
    }
    return out;
  }

  private async block(index: number): Promise<Uint8Array | undefined> {
    const off = this.rt[index];
    if (!off) return undefined;
    let b = this.blocks.get(off);
    if (!b) {
      b = await this.readBytes(off, this.cs);
      this.blocks.set(off, b);
    }
    return b;
  }

  async refcount(cluster: number): Promise<number> {
    const b = await this.block(Math.floor(cluster / this.refPerBlock));
    return b ? getRefcount(b, this.h.refcountOrder, cluster % this.refPerBlock) : 0;
  }

  /** Set a refcount in the cached block (written by flushRefcounts). The block must exist. */
  async setRefcountOf(cluster: number, value: number): Promise<void> {
    const index = Math.floor(cluster / this.refPerBlock);
    const b = await this.block(index);
    if (!b) throw new ImageError('unsupported', `qcow2: no refcount block covers cluster ${cluster}`, { format: FORMAT });
    if (value < 0 || value > maxRefcount(this.h.refcountOrder)) throw new ImageError('corrupt', `qcow2: refcount of cluster ${cluster} would be ${value}`, { format: FORMAT });
    setRefcount(b, this.h.refcountOrder, cluster % this.refPerBlock, value);
    this.dirty.add(this.rt[index]!);
  }

  async addRef(cluster: number, delta: number): Promise<void> {
    await this.setRefcountOf(cluster, (await this.refcount(cluster)) + delta);
  }

  async flushRefcounts(): Promise<void> {
    for (const off of this.dirty) await this.child.write(this.blocks.get(off)!, off);
    this.dirty.clear();
  }

  /**
   * A refcount block for the refcount range `index`, placed at `at` (a free
   * cluster): written, then hooked into the refcount table (the table must
   * have room). Counts itself when it covers its own cluster.
   */
  async addRefcountBlock(index: number, at: number): Promise<void> {
    if (index >= this.rt.length) throw new ImageError('unsupported', 'qcow2: the refcount table is full (grow it with qemu-img first)', { format: FORMAT });
    const b = new Uint8Array(this.cs);
    this.blocks.set(at, b);
    this.rt[index] = at;
    if (Math.floor(at / this.cs / this.refPerBlock) === index) setRefcount(b, this.h.refcountOrder, (at / this.cs) % this.refPerBlock, 1);
    await this.child.write(b, at);
    const e = new Uint8Array(8);
    putU64(e, 0, at);
    await this.child.write(e, this.h.refcountTableOffset + index * 8);
  }

  /** Header bytes 24..47: virtual size, L1 size and offset, in one write. */
  async writeSizeAndL1(size: number, l1Size: number, l1Offset: number): Promise<void> {
    const b = new Uint8Array(24);
    putU64(b, 0, size);
    putU32(b, 8, this.h.cryptMethod);
    putU32(b, 12, l1Size);
    putU64(b, 16, l1Offset);
    await this.child.write(b, 24);
    this.h.size = size;
    this.h.l1Size = l1Size;
    this.h.l1TableOffset = l1Offset;
  }
}
