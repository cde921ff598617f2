/**
 * `check` for qcow (version 1), which qemu-img 7.2 cannot check: qcow has
 * no refcounts, so what can be checked is structure: every L2 table, data
 * cluster and compressed cluster lies inside the file, and no two of them,
 * nor the header, backing file name or L1 table, overlap. Read-only.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import type { CheckResult, Repair } from '../types.js';
import { readHeader } from './image.js';

const TWO32 = 2 ** 32;
const MAX_L1_BYTES = 32 << 20;

interface Range {
  start: number;
  end: number;
  what: string;
}

export async function checkQcow(child: BlockDevice, repair: Repair, say: (line: string) => void): Promise<CheckResult> {
  if (repair) throw new ImageError('unsupported', 'This image format does not support checks (qcow has no repair)', { format: 'qcow' });
  const g = await readHeader(child);
  const cb = g.header.clusterBits;
  const cs = 2 ** cb;
  const l2n = 2 ** g.header.l2Bits;
  const fileSize = child.size;
  let corruptions = 0;
  let allocated = 0;
  let compressed = 0;
  let fragmented = 0;
  let next = 0;
  const ranges: Range[] = g.reserved.map(([start, end], i) => ({ start, end, what: i === 0 ? 'the header' : 'the L1 table' }));
  if (g.l1Size * 8 > MAX_L1_BYTES) throw new ImageError('corrupt', `qcow: L1 table of ${g.l1Size} entries is too large`, { format: 'qcow' });
  const l1 = new Uint8Array(g.l1Size * 8);
  await child.read(l1.subarray(0, Math.max(0, Math.min(l1.length, fileSize - g.l1Offset))), g.l1Offset);
  const v1 = new DataView(l1.buffer);
  const table = new Uint8Array(l2n * 8);
  const vt = new DataView(table.buffer);
  const sizeShift = BigInt(63 - cb);
  for (let i = 0; i < g.l1Size; i++) {
    const l2 = v1.getUint32(8 * i) * TWO32 + v1.getUint32(8 * i + 4);
    if (!l2) continue;
    if (l2 + table.length > fileSize) {
      say(`ERROR L1 entry ${i}: L2 table at offset ${l2} lies past the end of the file (${fileSize} bytes)`);
      corruptions++;
      continue;
    }
    ranges.push({ start: l2, end: l2 + table.length, what: `L2 table ${i}` });
    await child.read(table, l2);
    for (let j = 0; j < l2n; j++) {
      const hi = vt.getUint32(8 * j);
      const lo = vt.getUint32(8 * j + 4);
      if (!hi && !lo) continue;
      const guest = (i * l2n + j) * cs;
      allocated++;
      let start: number;
      let end: number;
      if (hi & 0x80000000) {
        compressed++;
        fragmented++;
        const e = (BigInt(hi) << 32n) | BigInt(lo);
        start = Number(e & ((1n << sizeShift) - 1n));
        end = start + Number((e >> sizeShift) & BigInt(cs - 1));
      } else {
        start = hi * TWO32 + lo;
        end = start + cs;
        if (next && start !== next) fragmented++;
        next = end;
      }
      if (end > fileSize) {
        say(`ERROR guest cluster at ${guest}: ${hi & 0x80000000 ? 'compressed data' : 'data'} at offset ${start} lies past the end of the file (${fileSize} bytes)`);
        corruptions++;
        continue;
      }
      ranges.push({ start, end, what: `the data of guest offset ${guest}` });
    }
  }
  ranges.sort((a, b) => a.start - b.start || a.end - b.end);
  let last: Range | undefined;
  for (const r of ranges) {
    if (r.end <= r.start) continue;
    if (last && r.start < last.end) {
      say(`ERROR ${r.what} (offset ${r.start}) overlaps ${last.what} (offset ${last.start})`);
      corruptions++;
    }
    if (!last || r.end > last.end) last = r;
  }
  const out: CheckResult = {
    'total-clusters': Math.ceil(g.virtualSize / cs),
    'allocated-clusters': allocated,
    'fragmented-clusters': fragmented,
    'compressed-clusters': compressed,
    'check-errors': 0,
  };
  if (corruptions) out.corruptions = corruptions;
  return out;
}
