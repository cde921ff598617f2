/**
 * Walking the chain of Extended Boot Records inside an MBR extended
 * partition. Each EBR is a table sector (layout in mbr.ts) in which:
 *
 *   - the first non-empty, non-extended entry is the logical partition,
 *     its start relative to this EBR;
 *   - the first extended entry is the link to the next EBR, its start
 *     relative to the start of the (primary) extended partition;
 *   - entries with a zero sector count are ignored.
 *
 * Those are libfdisk's rules (what sfdisk lists); logical partitions are
 * numbered from 5 in chain order. Like libfdisk we stop after 56 logical
 * partitions (60 partition slots in all). Unlike libfdisk, we also stop,
 * with a warning, at a link that loops back to an EBR already visited, that
 * leaves the extended partition, or that leaves the disk. So a hostile chain
 * costs at most 56 sector reads.
 */

import { ImageError } from '../core/errors.js';
import { SECTOR, encodeMbr, entryStatus, hasBootSignature, isExtendedType, parseMbr } from './mbr.js';

export const MAX_LOGICAL = 56;

export interface LogicalPartition {
  /** 5, 6, ... */
  number: number;
  /** Byte offset of the EBR that describes it. */
  ebr: number;
  /** Which entry of that EBR (0..3). */
  slot: number;
  start: number;
  size: number;
  type: number;
  bootable: boolean;
  /** The EBR sector, for CHS decoding. */
  sector: Uint8Array;
}

export interface EbrWalk {
  logicals: LogicalPartition[];
  /** Byte offsets of the EBRs visited, in order. */
  ebrs: number[];
  warnings: string[];
  /** True when the chain ended by itself (a last EBR without a link), false when we cut it. */
  complete: boolean;
}

export async function walkEbrChain(
  readSector: (offset: number) => Promise<Uint8Array>,
  ext: { number: number; start: number; size: number },
  diskSize: number,
): Promise<EbrWalk> {
  const walk: EbrWalk = { logicals: [], ebrs: [], warnings: [], complete: false };
  const extEnd = ext.start + ext.size;
  if (ext.start === 0) {
    walk.warnings.push(`extended partition ${ext.number} starts at sector 0: its logical partitions are ignored`);
    return walk;
  }
  const seen = new Set<number>();
  let ebr = ext.start;
  for (;;) {
    if (walk.logicals.length >= MAX_LOGICAL) {
      walk.warnings.push(`more than ${MAX_LOGICAL} logical partitions: the chain is cut after partition ${4 + MAX_LOGICAL}`);
      return walk;
    }
    if (seen.has(ebr)) {
      walk.warnings.push(`the EBR chain loops back to the EBR at byte ${ebr}: the chain is cut there`);
      return walk;
    }
    if (ebr + SECTOR > diskSize) {
      walk.warnings.push(`an EBR link points to byte ${ebr}, beyond the end of the disk (${diskSize}): the chain is cut there`);
      return walk;
    }
    if (ebr < ext.start || ebr >= extEnd) {
      walk.warnings.push(
        `an EBR link points to byte ${ebr}, outside extended partition ${ext.number} [${ext.start}, ${extEnd}): the chain is cut there`,
      );
      return walk;
    }
    seen.add(ebr);
    walk.ebrs.push(ebr);
    const sector = await readSector(ebr);
    const empty = sector.every((x) => x === 0);
    if (empty) {
      walk.complete = true; // an empty extended partition, or a zeroed last EBR
      return walk;
    }
    if (!hasBootSignature(sector)) {
      walk.warnings.push(`the EBR at byte ${ebr} has no 0x55AA signature (read anyway, as sfdisk does)`);
    }
    // parseMbr needs the signature; read the entries of a signature-less EBR through a patched copy.
    const patched = sector.slice();
    patched[510] = 0x55;
    patched[511] = 0xaa;
    const table = parseMbr(patched)!;
    let data: number | undefined;
    let link: number | undefined;
    table.entries.forEach((e, i) => {
      if (!e || e.size === 0) return;
      if (isExtendedType(e.type)) {
        if (link === undefined) link = i;
        else walk.warnings.push(`the EBR at byte ${ebr} has an extra link in entry ${i + 1} (ignored)`);
      } else if (e.type !== 0) {
        if (data === undefined) data = i;
        else walk.warnings.push(`the EBR at byte ${ebr} has extra data in entry ${i + 1} (ignored, as sfdisk does)`);
      }
    });
    if (data !== undefined) {
      const e = table.entries[data]!;
      const number = 5 + walk.logicals.length;
      const start = ebr + e.start;
      const status = entryStatus(sector, data);
      if (status !== 0 && status !== 0x80) {
        walk.warnings.push(`partition ${number}: status byte 0x${status.toString(16)} is neither 0x00 nor 0x80`);
      }
      if (e.start === 0) walk.warnings.push(`partition ${number} starts on its own EBR (byte ${ebr})`);
      if (start + e.size > extEnd || start < ext.start) {
        walk.warnings.push(`partition ${number} [${start}, ${start + e.size}) lies outside extended partition ${ext.number} [${ext.start}, ${extEnd})`);
      }
      walk.logicals.push({ number, ebr, slot: data, start, size: e.size, type: e.type, bootable: e.bootable, sector });
    }
    if (link === undefined) {
      walk.complete = true;
      return walk;
    }
    ebr = ext.start + table.entries[link]!.start;
  }
}

/** A logical partition to write: where its EBR goes and what it holds (bytes, absolute). */
export interface LogicalSpec {
  ebr: number;
  start: number;
  size: number;
  type: number;
  bootable?: boolean;
}

/**
 * The EBR chain for `logicals` (in chain order) inside the extended
 * partition `ext`, as libfdisk writes it: each EBR holds its logical
 * partition (start relative to the EBR) and, except the last, a link of
 * type 0x05 to the next EBR (start relative to the extended partition, size
 * from that EBR to the end of its logical partition). Boot code and disk
 * signature are zero; CHS fields are absolute.
 */
export function encodeEbrChain(logicals: readonly LogicalSpec[], ext: { start: number; size: number }, diskSize: number): Array<{ offset: number; sector: Uint8Array }> {
  const extEnd = ext.start + ext.size;
  if (logicals.length > MAX_LOGICAL) throw new ImageError('usage', `at most ${MAX_LOGICAL} logical partitions, not ${logicals.length}`, { value: logicals.length });
  return logicals.map((l, i) => {
    const next = logicals[i + 1];
    const inside = l.ebr >= ext.start && l.ebr < l.start && l.start + l.size <= extEnd && (!next || next.ebr >= l.start + l.size);
    if (!inside) {
      throw new ImageError('usage', `logical partition ${5 + i} [${l.start}, ${l.start + l.size}) with its EBR at ${l.ebr} does not fit extended partition [${ext.start}, ${extEnd}) in order`, {
        value: l.start,
      });
    }
    const entries = [
      { bootable: !!l.bootable, type: l.type, start: l.start - l.ebr, size: l.size },
      next ? { bootable: false, type: 0x05, start: next.ebr - ext.start, size: next.start + next.size - next.ebr } : undefined,
      undefined,
      undefined,
    ];
    return { offset: l.ebr, sector: encodeMbr({ signature: 0, entries, bootCode: new Uint8Array(0) }, diskSize, [l.ebr, ext.start]) };
  });
}
