/**
 * qcow2 internal snapshot table (qemu docs/interop/qcow2.rst, "Snapshots").
 * We list snapshots (info) and validate the table; reads show the active layer.
 *
 * Snapshot table entry (8-byte aligned, variable length)
 *   field               offset  size
 *   l1_table_offset        0      8   cluster aligned
 *   l1_size                4      4   (at 8)
 *   id_str_size           12      2
 *   name_size             14      2
 *   date_sec              16      4
 *   date_nsec             20      4
 *   vm_clock_nsec         24      8
 *   vm_state_size         32      4
 *   extra_data_size       36      4
 *   extra data            40      extra_data_size
 *       +0 vm_state_size_large u64, +8 disk_size u64, +16 icount u64 (-1: none)
 *   id string, name string, padding to 8
 */

import type { BlockDevice } from '../../core/device.js';
import { fieldError } from '../../core/errors.js';
import type { SnapshotInfo } from '../types.js';
import { FORMAT, MAX_L1_BYTES, MAX_SNAPSHOTS } from './header.js';

/** qemu rejects extra data larger than this. */
const MAX_EXTRA = 1024;

export interface Snapshot extends SnapshotInfo {
  l1TableOffset: number;
  l1Size: number;
  diskSize?: number;
}

const u32 = (b: Uint8Array, o: number) => ((b[o]! << 24) >>> 0) + (b[o + 1]! << 16) + (b[o + 2]! << 8) + b[o + 3]!;
const u64 = (b: Uint8Array, o: number) => (BigInt(u32(b, o)) << 32n) | BigInt(u32(b, o + 4));

export async function readSnapshots(
  child: BlockDevice,
  nb: number,
  tableOffset: number,
  clusterSize: number,
): Promise<Snapshot[]> {
  if (nb === 0) return [];
  if (nb > MAX_SNAPSHOTS) throw fieldError('invalid-format', FORMAT, 'nb_snapshots', 60, nb, `is more than ${MAX_SNAPSHOTS}`);
  if (tableOffset % clusterSize !== 0 || tableOffset === 0) {
    throw fieldError('invalid-format', FORMAT, 'snapshots_offset', 64, tableOffset, 'is not a non-zero multiple of the cluster size');
  }
  if (tableOffset + nb * 40 > child.size) {
    throw fieldError('invalid-format', FORMAT, 'snapshots_offset', 64, tableOffset, `a table of ${nb} snapshots cannot fit before the end of the file (${child.size})`);
  }
  const out: Snapshot[] = [];
  let pos = tableOffset;
  const head = new Uint8Array(40);
  for (let i = 0; i < nb; i++) {
    if (pos + 40 > child.size) throw fieldError('invalid-format', FORMAT, `snapshot ${i} header`, pos, pos, 'runs past the end of the file');
    await child.read(head, pos);
    const l1Offset = u64(head, 0);
    const l1Size = u32(head, 8);
    const idLen = (head[12]! << 8) | head[13]!;
    const nameLen = (head[14]! << 8) | head[15]!;
    const extra = u32(head, 36);
    if (extra > MAX_EXTRA) throw fieldError('invalid-format', FORMAT, `snapshot ${i} extra_data_size`, pos + 36, extra, `is more than ${MAX_EXTRA}`);
    const total = 40 + extra + idLen + nameLen;
    if (pos + total > child.size) {
      throw fieldError('invalid-format', FORMAT, `snapshot ${i} length`, pos, total, 'the entry runs past the end of the file');
    }
    if (l1Size > MAX_L1_BYTES / 8) {
      throw fieldError('invalid-format', FORMAT, `snapshot ${i} l1_size`, pos + 8, l1Size, `is more than ${MAX_L1_BYTES / 8}`);
    }
    if (l1Offset % BigInt(clusterSize) !== 0n || l1Offset + BigInt(l1Size * 8) > BigInt(child.size)) {
      throw fieldError('invalid-format', FORMAT, `snapshot ${i} l1_table_offset`, pos, l1Offset, 'is unaligned or its table runs past the end of the file');
    }
    const rest = new Uint8Array(extra + idLen + nameLen);
    await child.read(rest, pos + 40);
    const vmClock = u64(head, 24);
    const sn: Snapshot = {
      id: Buffer.from(rest.subarray(extra, extra + idLen)).toString('utf8'),
      name: Buffer.from(rest.subarray(extra + idLen)).toString('utf8'),
      'vm-state-size': u32(head, 32),
      'date-sec': u32(head, 16),
      'date-nsec': u32(head, 20),
      'vm-clock-sec': Number(vmClock / 1_000_000_000n),
      'vm-clock-nsec': Number(vmClock % 1_000_000_000n),
      l1TableOffset: Number(l1Offset),
      l1Size,
    };
    if (extra >= 8) {
      const big = u64(rest, 0);
      if (big <= BigInt(Number.MAX_SAFE_INTEGER)) sn['vm-state-size'] = Number(big);
    }
    if (extra >= 16) {
      const d = u64(rest, 8);
      if (d <= BigInt(Number.MAX_SAFE_INTEGER)) sn.diskSize = Number(d);
    }
    if (extra >= 24) {
      const ic = u64(rest, 16);
      if (ic !== 0xffffffffffffffffn && ic <= BigInt(Number.MAX_SAFE_INTEGER)) sn.icount = Number(ic);
    }
    out.push(sn);
    pos += Math.ceil(total / 8) * 8;
  }
  return out;
}
