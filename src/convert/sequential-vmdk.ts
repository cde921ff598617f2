/**
 * A streamOptimized VMDK read front to back (VMware "Virtual Disk Format
 * 5.0", stream-optimized compressed sparse extents; layouts in
 * src/formats/vmdk/header.ts): header, descriptor, then records each
 * starting on a sector, until the end-of-stream marker:
 *
 *   grain marker   lba (u64), size (u32), `size` bytes of zlib data
 *   GT / GD        metadata marker (sectors, 0, type) + the table
 *   footer         metadata marker + a copy of the header with gdOffset set
 *   end of stream  metadata marker of type 0 (a sector of zeros; qemu-img
 *                  writes none: its streams end after the last grain)
 *
 * Grains are inflated into place as they come. Every marker is checked:
 * a grain's size at most zlib's bound for a grain, its LBA grain-aligned,
 * inside the capacity, and strictly above the previous one. The grain
 * tables must agree with the markers, as the seekable driver reads through
 * them: either the tables are in the overhead before the first grain (as
 * qemu-img writes them: checked grain by grain) or they follow the grains
 * (VMware: GT and GD markers, the footer names the GD; checked at the end).
 * Either way every grain a table names was in the stream at that sector,
 * and every grain in the stream is named once. Anything else is an error;
 * the caller removes the output. (Tables anywhere else: NotStreamable,
 * before anything is written; the caller spools.)
 */

import { isZero } from '../core/device.js';
import { ImageError, fieldError } from '../core/errors.js';
import type { StreamReader } from '../sources/reader.js';
import { u32le, u32leArray } from '../core/bytes.js';
import * as zlib from 'node:zlib';
import { MAX_DESCRIPTOR_BYTES, parseDescriptor } from '../formats/vmdk/descriptor.js';
import {
  COMPRESS_DEFLATE,
  FLAG_COMPRESS,
  FLAG_MARKER,
  FLAG_ZERO_GRAIN,
  GD_AT_END,
  GTE_ZEROED,
  MARKER_EOS,
  MARKER_FOOTER,
  MARKER_GD,
  MARKER_GT,
  SECTOR,
  SparseHeader,
  VMDK4_MAGIC,
  type Header,
} from '../formats/vmdk/header.js';
import { MAX_GD_ENTRIES, MAX_GRAIN_SECTORS } from '../formats/vmdk/sparse.js';

/** The overhead (header, descriptor, tables) is held in memory: at most this much. */
const MAX_OVERHEAD = 64 << 20;
/** Grains being inflated at once: up to 8, and at most 32 MiB of them. */
const inflateAhead = (grainBytes: number) => Math.max(1, Math.min(8, Math.floor((32 << 20) / grainBytes)));

const bad = (field: string, offset: number, value: number | bigint | string, why: string, kind: 'invalid-format' | 'corrupt' | 'unsupported' = 'corrupt') =>
  fieldError(kind, 'vmdk', field, offset, value, why);

/** zlib's compressBound: the most a zlib stream of `n` bytes can take. */
export function zlibBound(n: number): number {
  return n + (n >>> 12) + (n >>> 14) + (n >>> 25) + 13;
}

export interface VmdkStreamHeader {
  header: Header;
  capacity: number;
  grainBytes: number;
}

/**
 * Can the image whose first bytes are `head` be read front to back? A
 * VMDK sparse extent with compressed grains and markers whose overhead is
 * small enough to hold. Decided from the header alone.
 */
export function streamableVmdk(head: Uint8Array): VmdkStreamHeader | undefined {
  if (head.length < SECTOR || u32le(head, 0) !== VMDK4_MAGIC) return undefined;
  const h = SparseHeader.parse(head.subarray(0, SECTOR));
  if ((h.flags & FLAG_COMPRESS) === 0 || (h.flags & FLAG_MARKER) === 0 || h.compressAlgorithm !== COMPRESS_DEFLATE) return undefined;
  if (h.overHead < 1n || h.overHead * 512n > BigInt(MAX_OVERHEAD)) return undefined;
  return checkHeader(h);
}

function checkHeader(h: Header, at = 0): VmdkStreamHeader {
  const field = (f: keyof Header) => at + SparseHeader.offsetOf(f as never);
  if (h.version < 1 || h.version > 3) throw bad('version', field('version'), h.version, 'is not 1, 2 or 3', 'unsupported');
  if (h.grainSize < 1n || h.grainSize > BigInt(MAX_GRAIN_SECTORS)) throw bad('grainSize', field('grainSize'), h.grainSize, `is not 1 .. ${MAX_GRAIN_SECTORS} sectors`, 'invalid-format');
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > 512) throw bad('numGTEsPerGT', field('numGTEsPerGT'), h.numGTEsPerGT, 'is not 1 .. 512', 'invalid-format');
  if (h.capacity > BigInt(Number.MAX_SAFE_INTEGER) / 512n) throw bad('capacity', field('capacity'), h.capacity, 'is past 2^53 bytes', 'unsupported');
  const capacity = Number(h.capacity) * SECTOR;
  const grainBytes = Number(h.grainSize) * SECTOR;
  if (Math.ceil(capacity / (grainBytes * h.numGTEsPerGT)) > MAX_GD_ENTRIES) {
    throw bad('capacity', field('capacity'), h.capacity, `needs more than ${MAX_GD_ENTRIES} grain directory entries`, 'unsupported');
  }
  return { header: h, capacity, grainBytes };
}

/**
 * One grain's zlib stream, inflated: it must end (a size that cuts it short
 * is an error, not a grain filled up with zeros) and give at least `need`
 * bytes, at most `grainBytes`.
 */
function inflateGrain(data: Uint8Array, grainBytes: number, need: number, at: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    zlib.inflate(data, { maxOutputLength: grainBytes, chunkSize: Math.max(1024, grainBytes) }, (err, out) => {
      if (err) reject(new ImageError('corrupt', `vmdk: the grain at ${at}: its ${data.length} bytes of zlib data are invalid or cut short (${err.message})`, { format: 'vmdk', field: 'grain data', offset: at + 12, value: data.length }, { cause: err }));
      else if (out.length < need) reject(bad('grain data', at + 12, out.length, `inflates to ${out.length} bytes, not the grain's ${need}`));
      else resolve(out);
    });
  });
}

/**
 * The image cannot be read front to back after all (its tables lie past
 * the first grain): `prefix` holds what was read of it, for the caller to
 * spool with the rest. Nothing was written yet.
 */
export class NotStreamable extends Error {
  constructor(
    readonly prefix: Uint8Array,
    why: string,
  ) {
    super(`vmdk: ${why}`);
  }
}

/** Growable list of 32-bit numbers (grain indexes, sectors), in increasing order. */
class Column {
  a = new Uint32Array(1024);
  n = 0;
  push(v: number): void {
    if (this.n === this.a.length) {
      const b = new Uint32Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
  /** Index of `v` (the list is sorted), or -1. */
  find(v: number): number {
    let lo = 0;
    let hi = this.n - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const x = this.a[mid]!;
      if (x === v) return mid;
      if (x < v) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }
}

/**
 * Read the VMDK on `r` front to back, putting each grain's bytes at its
 * guest offset through `put` (called in increasing order). `start` is told
 * the capacity before the first grain. Returns the capacity.
 */
export async function readStreamVmdk(
  r: StreamReader,
  start: (capacity: number) => Promise<void>,
  put: (offset: number, data: Uint8Array) => Promise<void>,
): Promise<number> {
  const head = await r.read(SECTOR, 'the VMDK header');
  const sh = streamableVmdk(head);
  if (!sh) throw new ImageError('invalid-format', 'vmdk: not a stream-optimized sparse extent (compressed grains with markers)', { format: 'vmdk' });
  const { header: h, capacity, grainBytes } = sh;
  const gtes = h.numGTEsPerGT;
  const gdEntries = Math.ceil(capacity / (grainBytes * gtes));
  const gtSectors = Math.ceil((gtes * 4) / SECTOR);
  const gdSectors = Math.ceil((gdEntries * 4) / SECTOR);
  const overhead = Number(h.overHead) * SECTOR;
  const zeroGrain = (h.flags & FLAG_ZERO_GRAIN) !== 0;
  const region = new Uint8Array(overhead);
  region.set(head);
  region.set(await r.read(overhead - SECTOR, 'the VMDK overhead (descriptor and tables)'), SECTOR);

  // The embedded descriptor: a delta link cannot be converted without its parent.
  if (h.descriptorOffset !== 0n) {
    const at = h.descriptorOffset * 512n;
    const len = h.descriptorSize * 512n;
    if (len > BigInt(MAX_DESCRIPTOR_BYTES) || at + len > BigInt(overhead)) {
      throw bad('descriptorOffset', SparseHeader.offsetOf('descriptorOffset'), h.descriptorOffset, `with descriptorSize ${h.descriptorSize} puts the descriptor outside the ${overhead}-byte overhead`);
    }
    const raw = region.subarray(Number(at), Number(at + len));
    const nul = raw.indexOf(0);
    const d = parseDescriptor(Buffer.from(raw.subarray(0, nul < 0 ? raw.length : nul)).toString('latin1'));
    if (d.parentFileNameHint !== undefined) {
      throw new ImageError('unsupported', `vmdk: the stream is a delta link to parent '${d.parentFileNameHint}'; convert it from a file with --backing`, {
        format: 'vmdk',
        field: 'parentFileNameHint',
        value: d.parentFileNameHint,
      });
    }
  }

  // Tables in the overhead (qemu's layout): the GTE each grain must have.
  let headGt: ((grain: number) => number) | undefined;
  let headGrains = 0;
  if (h.gdOffset !== GD_AT_END) {
    const gdAt = h.gdOffset * 512n;
    if (gdAt < 512n || gdAt + BigInt(gdEntries * 4) > BigInt(overhead)) {
      throw new NotStreamable(region, 'its grain directory is not in the overhead before the first grain');
    }
    const gd = u32leArray(region.subarray(Number(gdAt)), gdEntries);
    const tables: (Uint32Array | undefined)[] = [];
    for (let i = 0; i < gdEntries; i++) {
      if (gd[i] === 0) continue;
      const at = gd[i]! * SECTOR;
      if (at < SECTOR || at + gtes * 4 > overhead) {
        throw new NotStreamable(region, `grain table ${i} is not in the overhead before the first grain`);
      }
      const t = u32leArray(region.subarray(at), gtes);
      tables[i] = t;
      for (const e of t) if (e !== 0 && !(zeroGrain && e === GTE_ZEROED)) headGrains++;
    }
    headGt = (grain) => tables[Math.floor(grain / gtes)]?.[grain % gtes] ?? 0;
  }

  await start(capacity);

  // Grains (and tables, in the VMware layout) until the end-of-stream marker.
  const grains = new Column();
  const sectors = new Column();
  let referenced = new Uint8Array(1024);
  const tableOf = new Map<number, number>(); // GT sector → its GD index (-1: no grain entries)
  let gd: { at: number; entries: Uint32Array } | undefined;
  let footer: Header | undefined;
  let lastLba = -1n;
  let seen = 0;
  let gtMarkers = 0;
  const limit = zlibBound(grainBytes);
  const pending: Array<Promise<[number, Uint8Array]>> = [];
  const drain = async (keep: number) => {
    while (pending.length > keep) {
      const [offset, data] = await pending.shift()!;
      await put(offset, data.length > capacity - offset ? data.subarray(0, capacity - offset) : data);
    }
  };
  try {
    for (;;) {
      const at = r.pos;
      // qemu-img writes no end-of-stream marker: the stream may end after any record (a cut is caught below, by the tables).
      if (await r.atEnd()) break;
      const sector = await r.read(SECTOR, 'a marker');
      const val = new DataView(sector.buffer).getBigUint64(0, true);
      const size = u32le(sector, 8);
      if (size !== 0) {
        // A grain.
        if (size > limit) throw bad('grain marker size', at + 8, size, `is more than ${limit} bytes (zlib's bound for a ${grainBytes}-byte grain)`);
        if (val % h.grainSize !== 0n) throw bad('grain marker lba', at, val, `is not a multiple of the grain size (${h.grainSize} sectors)`);
        if (val * 512n >= BigInt(capacity)) throw bad('grain marker lba', at, val, `is beyond the capacity (${h.capacity} sectors)`);
        if (val <= lastLba) throw bad('grain marker lba', at, val, `is not above the previous grain's (${lastLba}): grains must come in increasing order`);
        lastLba = val;
        const grain = Number(val / h.grainSize);
        seen++;
        const hostSector = at / SECTOR;
        if (headGt) {
          const gte = headGt(grain);
          if (gte !== hostSector) throw bad('grain marker', at, val, `is at sector ${hostSector}, but the grain table entry for grain ${grain} says ${gte}`);
        } else {
          if (hostSector > 0xffffffff) throw bad('grain marker', at, val, 'is past the 2 TiB of stream a grain table entry can address');
          grains.push(grain);
          sectors.push(hostSector);
          if (grains.n > referenced.length) {
            const b = new Uint8Array(referenced.length * 2);
            b.set(referenced);
            referenced = b;
          }
        }
        const data = new Uint8Array(size);
        const first = Math.min(size, SECTOR - 12);
        data.set(sector.subarray(12, 12 + first));
        if (size > first) {
          data.set(await r.read(size - first, `grain data (marker at ${at})`), first);
          await r.skip((SECTOR - ((12 + size) % SECTOR)) % SECTOR, 'the padding after a grain');
        }
        const offset = Number(val) * SECTOR;
        const job = inflateGrain(data, grainBytes, Math.min(grainBytes, capacity - offset), at).then((out) => [offset, out] as [number, Uint8Array]);
        job.catch(() => {}); // awaited in order by drain; a failure before then is not unhandled
        pending.push(job);
        await drain(inflateAhead(grainBytes));
        continue;
      }
      const type = u32le(sector, 12);
      const meta = (want: number, what: string) => {
        if (val !== BigInt(want)) throw bad(`${what} marker`, at, val, `says ${val} sectors follow; a ${what} has ${want}`);
        return r.read(want * SECTOR, `the ${what} after its marker at ${at}`);
      };
      if (type === MARKER_EOS) {
        if (val !== 0n) throw bad('end-of-stream marker', at, val, 'has a non-zero sector count');
        break;
      } else if (type === MARKER_GT) {
        const tableAt = r.pos;
        const t = u32leArray(await meta(gtSectors, 'grain table'), gtes);
        if (++gtMarkers > gdEntries) throw bad('grain table marker', at, gtMarkers, `is one more grain table than the ${gdEntries} the grain directory can name`);
        if (headGt) continue; // the tables in the overhead rule (qemu reads those)
        let index = -1;
        for (let i = 0; i < gtes; i++) {
          const e = t[i]!;
          if (e === 0 || (zeroGrain && e === GTE_ZEROED)) continue;
          const k = sectors.find(e);
          const where = tableAt + 4 * i;
          if (k < 0) throw bad(`grain table entry ${i}`, where, e, 'points at a sector where the stream had no grain');
          const g = grains.a[k]!;
          if (g % gtes !== i || (index >= 0 && Math.floor(g / gtes) !== index)) throw bad(`grain table entry ${i}`, where, e, `points at the grain for LBA ${g * Number(h.grainSize)}, which this entry does not map`);
          if (referenced[k]) throw bad(`grain table entry ${i}`, where, e, 'points at a grain another entry already maps');
          referenced[k] = 1;
          index = Math.floor(g / gtes);
        }
        tableOf.set(tableAt / SECTOR, index);
      } else if (type === MARKER_GD) {
        const gdAt = r.pos;
        const entries = u32leArray(await meta(gdSectors, 'grain directory'), gdEntries);
        if (gd) throw bad('grain directory marker', at, val, 'is a second grain directory');
        gd = { at: gdAt, entries };
      } else if (type === MARKER_FOOTER) {
        const fAt = r.pos;
        const f = SparseHeader.parse(await meta(1, 'footer'));
        if (footer) throw bad('footer marker', at, val, 'is a second footer');
        if (f.magic !== VMDK4_MAGIC) throw bad('footer magic', fAt, f.magic, 'is not KDMV', 'invalid-format');
        for (const k of ['capacity', 'grainSize', 'numGTEsPerGT', 'compressAlgorithm', 'flags', 'version'] as const) {
          if (f[k] !== h[k]) throw bad(`footer ${k}`, fAt + SparseHeader.offsetOf(k as never), f[k], `differs from the header's (${h[k]})`);
        }
        footer = f;
      } else {
        throw bad('marker type', at + 12, type, 'is not 0 (end of stream), 1 (grain table), 2 (grain directory) or 3 (footer)', 'invalid-format');
      }
    }
    await drain(0);
  } finally {
    await Promise.allSettled(pending);
  }

  // After the end-of-stream marker: nothing but zero padding.
  for (;;) {
    const at = r.pos;
    const rest = await r.some(1 << 20);
    if (!rest) break;
    if (!isZero(rest)) throw bad('data after the end-of-stream marker', at, rest.length, 'is not zero padding', 'invalid-format');
  }

  if (headGt) {
    // Each grain matched its GTE as it came; equal counts mean no GTE points at a sector without a grain.
    if (seen !== headGrains) {
      throw new ImageError('corrupt', `vmdk: the grain tables map ${headGrains} grains, but the stream holds ${seen}`, { format: 'vmdk', field: 'grain table', value: headGrains });
    }
    return capacity;
  }
  // The VMware layout: the footer names the GD; the GD names the GTs seen; every grain is mapped.
  if (!footer) throw new ImageError('corrupt', 'vmdk: the stream ends without a footer (the header says the grain directory is in it)', { format: 'vmdk', field: 'footer' });
  if (!gd) throw new ImageError('corrupt', 'vmdk: the stream has no grain directory marker', { format: 'vmdk', field: 'grain directory' });
  if (footer.gdOffset !== BigInt(gd.at / SECTOR)) {
    throw bad('footer gdOffset', 0, footer.gdOffset, `is not the sector of the grain directory in the stream (${gd.at / SECTOR})`);
  }
  for (let i = 0; i < gdEntries; i++) {
    const e = gd.entries[i]!;
    if (e === 0) continue;
    const t = tableOf.get(e);
    if (t === undefined) throw bad(`grain directory entry ${i}`, gd.at + 4 * i, e, 'points at a sector where the stream had no grain table');
    if (t !== -1 && t !== i) throw bad(`grain directory entry ${i}`, gd.at + 4 * i, e, `points at the grain table of grain directory entry ${t}`);
    tableOf.set(e, -2); // used
  }
  for (const [s, t] of tableOf) if (t >= 0) throw bad('grain table', s * SECTOR, s, 'maps grains but no grain directory entry points at it');
  const lost = referenced.subarray(0, grains.n).indexOf(0);
  if (lost >= 0) throw bad('grain marker', sectors.a[lost]! * SECTOR, grains.a[lost]! * Number(h.grainSize), 'is a grain no grain table entry maps');
  return capacity;
}
