/**
 * `check` for qcow2, by qemu's rules (block/qcow2-refcount.c): every
 * cluster's references are recounted from the header, the active and
 * snapshot L1/L2 tables, the snapshot table and the refcount table and
 * blocks, then compared with the stored refcounts; the copied flags are
 * compared with refcount == 1. Messages, counts and repairs as qemu-img's.
 *
 * Repairs (`leaks`: refcounts too high; `all`: also too low, and copied
 * flags) only ever write a refcount to the value the tables justify, or a
 * flag bit, one at a time: a crash mid-repair leaves an image a new check
 * can still repair. A cluster whose refcount block is missing cannot be
 * repaired here (qemu rebuilds the whole refcount structure): reported, and
 * counted as not fixed.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { COMPRESSED_HI, COPIED_HI, compressedDesc, l1Reserved, stdOffset, stdReserved } from './l2.js';
import { INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY } from './header.js';
import { Qcow2File, entryWords, u64At } from './offline.js';

const u32At = (b: Uint8Array, o: number) => ((b[o]! << 24) >>> 0) + (b[o + 1]! << 16) + (b[o + 2]! << 8) + b[o + 3]!;
const entryHex = (hi: number, lo: number) => (hi ? hi.toString(16) + lo.toString(16).padStart(8, '0') : lo.toString(16));

import type { CheckResult, Repair } from '../types.js';

const hex = (n: number) => n.toString(16);

interface Counts {
  leaks: number;
  corruptions: number;
  checkErrors: number;
  leaksFixed: number;
  corruptionsFixed: number;
  allocated: number;
  fragmented: number;
  compressed: number;
}

class Checker {
  readonly refs: Map<number, number> = new Map();
  readonly c: Counts = { leaks: 0, corruptions: 0, checkErrors: 0, leaksFixed: 0, corruptionsFixed: 0, allocated: 0, fragmented: 0, compressed: 0 };
  nbClusters: number;
  /** The refcount structure itself is damaged (qemu would rebuild it; imgtool does not). */
  rebuild = false;
  private nextContiguous = 0;

  constructor(
    readonly f: Qcow2File,
    readonly say: (line: string) => void,
  ) {
    this.nbClusters = Math.ceil(f.child.size / f.cs);
  }

  /** Count a reference to every cluster of [offset, offset + size), unless it lies a cluster or more past the end of the file. */
  inc(offset: number, size: number, weight = 1): boolean {
    if (size <= 0) return false;
    const fileLen = this.f.child.size;
    if (offset + size - fileLen >= this.f.cs) {
      this.say(`ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${hex(offset)} size 0x${hex(size)}`);
      this.c.corruptions++;
      return false;
    }
    const cs = this.f.cs;
    for (let k = Math.floor(offset / cs); k <= Math.floor((offset + size - 1) / cs); k++) {
      this.refs.set(k, (this.refs.get(k) ?? 0) + weight);
      if (k >= this.nbClusters) this.nbClusters = k + 1;
    }
    return true;
  }

  async l1(l1Offset: number, l1Size: number, active: boolean): Promise<void> {
    const f = this.f;
    this.inc(l1Offset, l1Size * 8);
    const table = await f.l1(l1Offset, l1Size);
    // An L2 table named again by the same L1 table (only a hostile image does that) is read once and its
    // references counted again with a weight: the work stays bounded by the file's size.
    const seen = new Map<number, { refs: Array<[number, number]>; again: number }>();
    for (let i = 0; i < l1Size; i++) {
      const l2 = table[i]!.offset;
      if (!l2) continue;
      if (l1Reserved(table[i]!.hi, table[i]!.lo)) {
        this.say(`ERROR found L1 entry with reserved bits set: ${entryHex(table[i]!.hi, table[i]!.lo)}`);
        this.c.corruptions++;
      }
      this.inc(l2, f.cs);
      if (l2 % f.cs) {
        this.say(`ERROR l2_offset=${hex(l2)}: Table is not cluster aligned; L1 entry corrupted`);
        this.c.corruptions++;
      }
      const known = seen.get(l2);
      if (known) {
        known.again++;
        continue;
      }
      const refs: Array<[number, number]> = [];
      await this.l2(l2, active, refs);
      seen.set(l2, { refs, again: 0 });
    }
    for (const { refs, again } of seen.values()) if (again) for (const [o, n] of refs) this.inc(o, n, again);
  }

  private async l2(l2Offset: number, active: boolean, refs: Array<[number, number]>): Promise<void> {
    const count = (offset: number, size: number) => {
      if (this.inc(offset, size)) refs.push([offset, size]);
    };
    const f = this.f;
    const t = await f.readBytes(l2Offset, f.cs);
    const dataFile = (f.h.incompatible & INCOMPAT_DATA_FILE) !== 0;
    for (let j = 0; j < f.l2Entries; j++) {
      const o = j * f.entryBytes;
      const [hi, lo] = entryWords(t, o);
      const bitmap = f.entryBytes === 16 ? u64At(t, o + 8) : 0;
      if (hi & COMPRESSED_HI) {
        if (hi & COPIED_HI) {
          const d0 = compressedDesc(hi & ~COPIED_HI, lo, f.h.clusterBits);
          this.say(`ERROR: coffset=0x${hex(d0.offset)}: copied flag must never be set for compressed clusters`);
          this.c.corruptions++;
        }
        if (dataFile) {
          this.say(`ERROR compressed cluster ${j} with data file, entry=0x${entryHex(hi, lo)}`);
          this.c.corruptions++;
          continue;
        }
        if (bitmap) {
          this.say(`ERROR compressed cluster ${j} with non-zero subcluster allocation bitmap, entry=0x${entryHex(hi, lo)}`);
          this.c.corruptions++;
          continue;
        }
        const d = compressedDesc(hi & ~COPIED_HI, lo, f.h.clusterBits);
        if (d.offset >= 0) count(d.offset, d.length);
        if (active) {
          this.c.allocated++;
          this.c.compressed++;
          this.c.fragmented++;
        }
        continue;
      }
      if (stdReserved(hi, lo)) {
        this.say(`ERROR found l2 entry with reserved bits set: ${entryHex(hi, lo)}`);
        this.c.corruptions++;
      }
      const host = stdOffset(hi, lo);
      if (!host) continue; // unallocated, or zero without a host cluster
      if (host % f.cs) {
        this.say(`ERROR offset=${hex(host)}: ${lo & 1 ? 'Preallocated' : 'Data'} cluster is not properly aligned; L2 entry corrupted.`);
        this.c.corruptions++;
        continue;
      }
      if (active) {
        this.c.allocated++;
        if (this.nextContiguous && host !== this.nextContiguous) this.c.fragmented++;
        this.nextContiguous = host + f.cs;
      }
      if (!dataFile) count(host, f.cs);
    }
  }

  /** The snapshot table's bytes (entries are 8-byte aligned), or throws on a table the file cannot hold. */
  async snapshotTableSize(): Promise<number> {
    const h = this.f.h;
    let pos = h.snapshotsOffset;
    for (let i = 0; i < h.nbSnapshots; i++) {
      const head = await this.f.readBytes(pos, 40);
      const extra = u32At(head, 36);
      const idSize = (head[12]! << 8) | head[13]!;
      const nameSize = (head[14]! << 8) | head[15]!;
      pos += Math.ceil((40 + extra + idSize + nameSize) / 8) * 8;
      if (pos > this.f.child.size + this.f.cs) throw new ImageError('corrupt', `qcow2: snapshot ${i} runs past the end of the file`, { offset: pos });
    }
    return pos - h.snapshotsOffset;
  }

  async snapshotL1s(): Promise<Array<{ offset: number; size: number; name: string }>> {
    const h = this.f.h;
    const out: Array<{ offset: number; size: number; name: string }> = [];
    let pos = h.snapshotsOffset;
    for (let i = 0; i < h.nbSnapshots; i++) {
      const head = await this.f.readBytes(pos, 40);
      const extra = u32At(head, 36);
      if (extra > 1 << 20) throw new ImageError('corrupt', `qcow2: snapshot ${i} extra_data_size ${extra} is too large`, { offset: pos + 36, value: extra });
      const idSize = (head[12]! << 8) | head[13]!;
      const nameSize = (head[14]! << 8) | head[15]!;
      const strings = await this.f.readBytes(pos + 40 + extra, idSize + nameSize);
      const id = Buffer.from(strings.subarray(0, idSize)).toString('utf8');
      out.push({ offset: u64At(head, 0), size: u32At(head, 8), name: `${id} (${Buffer.from(strings.subarray(idSize)).toString('utf8')})` });
      pos += Math.ceil((40 + extra + idSize + nameSize) / 8) * 8;
    }
    return out;
  }

  async refblocks(): Promise<void> {
    const f = this.f;
    for (let i = 0; i < f.rt.length; i++) {
      const off = f.rt[i]!;
      if (!off) continue;
      if (off % f.cs) {
        this.say(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
        this.c.corruptions++;
        this.rebuild = true;
        continue;
      }
      const cluster = off / f.cs;
      if (cluster >= this.nbClusters) {
        this.say(`ERROR refcount block ${i} is outside image`);
        this.c.corruptions++;
        this.rebuild = true;
        continue;
      }
      this.inc(off, f.cs);
      const n = this.refs.get(cluster) ?? 0;
      if (n !== 1) {
        this.say(`ERROR refcount block ${i} refcount=${n}`);
        this.c.corruptions++;
        this.rebuild = true;
      }
    }
  }

  /**
   * Compare stored and counted refcounts; fix what `repair` allows. Returns
   * the highest cluster in use. A stored 0 where references exist, or a
   * cluster no refcount block covers, needs more than a refcount write:
   * `rebuildFor` records it (-r leaks then refuses, as qemu).
   */
  rebuildFor = false;

  async compare(repair: Repair): Promise<number> {
    const f = this.f;
    let highest = 0;
    for (let i = 0; i < this.nbClusters; i++) {
      const stored = await f.refcount(i);
      const counted = this.refs.get(i) ?? 0;
      if (stored > 0 || counted > 0) highest = i;
      if (stored === counted) continue;
      const covered = !!f.rt[Math.floor(i / f.refPerBlock)];
      if (stored === 0 || !covered) this.rebuildFor = true;
      const fix = covered && ((stored > counted && !!repair) || (stored < counted && repair === 'all'));
      this.say(`${fix ? 'Repairing' : stored < counted ? 'ERROR' : 'Leaked'} cluster ${i} refcount=${stored} reference=${counted}`);
      if (fix) {
        await f.setRefcountOf(i, counted);
        await f.flushRefcounts();
        if (stored > counted) this.c.leaksFixed++;
        else this.c.corruptionsFixed++;
        continue;
      }
      if (stored < counted) this.c.corruptions++;
      else this.c.leaks++;
    }
    return highest;
  }

  /** Copied flags of the active tables against refcount == 1. */
  async copiedFlags(repair: boolean): Promise<void> {
    const f = this.f;
    const dataFile = (f.h.incompatible & INCOMPAT_DATA_FILE) !== 0;
    const l1 = await f.l1();
    const scanned = new Set<number>();
    for (let i = 0; i < l1.length; i++) {
      const { offset: l2, copied, hi: ehi, lo: elo } = l1[i]!;
      if (!l2) continue;
      const rc = await f.refcount(Math.floor(l2 / f.cs));
      if ((rc === 1) !== copied) {
        this.c.corruptions++;
        this.say(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${entryHex(ehi, elo)} refcount=${rc}`);
        if (repair) {
          const nhi = rc === 1 ? (ehi | COPIED_HI) >>> 0 : (ehi & ~COPIED_HI) >>> 0;
          await f.child.write(new Uint8Array([nhi >>> 24, (nhi >>> 16) & 255, (nhi >>> 8) & 255, nhi & 255]), f.h.l1TableOffset + i * 8);
          this.c.corruptions--;
          this.c.corruptionsFixed++;
        }
      }
      // A table named again (a hostile image) was scanned already.
      if (scanned.has(l2)) continue;
      scanned.add(l2);
      const t = await f.readBytes(l2, f.cs);
      let dirty = 0;
      for (let j = 0; j < f.l2Entries; j++) {
        const o = j * f.entryBytes;
        const [hi, lo] = entryWords(t, o);
        if (hi & COMPRESSED_HI) continue;
        const host = stdOffset(hi, lo);
        if (!host) continue;
        const rcd = dataFile ? 1 : await f.refcount(Math.floor(host / f.cs));
        if ((rcd === 1) !== ((hi & COPIED_HI) !== 0)) {
          this.c.corruptions++;
          this.say(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${entryHex(hi, lo)} refcount=${rcd}`);
          if (repair) {
            const nhi = rcd === 1 ? (hi | COPIED_HI) >>> 0 : (hi & ~COPIED_HI) >>> 0;
            t[o] = nhi >>> 24;
            dirty++;
          }
        }
      }
      if (dirty) {
        await f.child.write(t, l2);
        this.c.corruptions -= dirty;
        this.c.corruptionsFixed += dirty;
      }
    }
  }
}

/** One check pass (with `repair`, fixing as it goes). Messages for each finding go to `say`. */
export async function checkQcow2Pass(child: BlockDevice, repair: Repair, say: (line: string) => void): Promise<CheckResult> {
  const f = await Qcow2File.open(child);
  const ck = new Checker(f, say);
  const h = f.h;
  ck.inc(0, f.cs);
  await ck.l1(h.l1TableOffset, h.l1Size, true);
  for (const sn of await ck.snapshotL1s()) {
    if (sn.offset % f.cs) {
      say(`ERROR snapshot ${sn.name} l1_offset=0x${hex(sn.offset)}: L1 table is not cluster aligned; snapshot table entry corrupted`);
      ck.c.corruptions++;
      continue;
    }
    if (sn.size > (32 << 20) / 8) {
      say(`ERROR snapshot ${sn.name} l1_size=0x${hex(sn.size)}: L1 table is too large; snapshot table entry corrupted`);
      ck.c.corruptions++;
      continue;
    }
    await ck.l1(sn.offset, sn.size, false);
  }
  if (h.nbSnapshots) ck.inc(h.snapshotsOffset, await ck.snapshotTableSize());
  ck.inc(h.refcountTableOffset, h.refcountTableClusters * f.cs);
  await ck.refblocks();
  // As qemu: compare once without fixing (every finding reported), then, when repairing and the
  // refcount structure itself is sound, again with fixing.
  const before = { ...ck.c };
  let highest = await ck.compare(undefined);
  const c = ck.c;
  if (repair && (ck.rebuild || (ck.rebuildFor && repair === 'leaks'))) {
    say('ERROR need to rebuild refcount structures');
    throw new ImageError('corrupt', 'the refcount structure needs rebuilding, which imgtool does not do (nothing was written)', { format: 'qcow2' });
  }
  if (repair && (c.leaks || c.corruptions)) {
    Object.assign(c, before);
    highest = await ck.compare(repair);
  }
  const copiedRepair = repair === 'all' || (repair === 'leaks' && !c.checkErrors && !c.corruptions && !c.leaks);
  await ck.copiedFlags(copiedRepair);
  if (repair) await child.flush();
  const out: CheckResult = {
    'image-end-offset': (highest + 1) * f.cs,
    'total-clusters': Math.ceil(h.size / f.cs),
    'allocated-clusters': c.allocated,
    'fragmented-clusters': c.fragmented,
    'compressed-clusters': c.compressed,
    'check-errors': c.checkErrors,
  };
  if (c.leaks) out.leaks = c.leaks;
  if (c.corruptions) out.corruptions = c.corruptions;
  if (c.leaksFixed) out['leaks-fixed'] = c.leaksFixed;
  if (c.corruptionsFixed) out['corruptions-fixed'] = c.corruptionsFixed;
  if (repair && !c.checkErrors && !c.corruptions && h.incompatible & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)) {
    // A clean image is consistent again: the dirty and corrupt bits go (the incompatible features word's low half).
    const b = new Uint8Array(4);
    const low = h.incompatible & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
    b[0] = low >>> 24;
    b[1] = (low >>> 16) & 255;
    b[2] = (low >>> 8) & 255;
    b[3] = low & 255;
    await child.write(b, 76);
    await child.flush();
  }
  return out;
}
