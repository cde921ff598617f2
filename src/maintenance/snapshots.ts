/**
 * The internal snapshot table as `qemu-img snapshot -l` prints it (qemu's
 * bdrv_snapshot_dump layout: fixed columns, dates in local time, sizes as
 * qemu's size_to_str).
 */

import type { SnapshotInfo } from '../formats/types.js';
import { escapeLine } from '../core/escape.js';

/** qemu's size_to_str: three significant digits in the unit that keeps the value under 1000. */
export function qemuSizeString(n: number): string {
  const units = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];
  const e = n === 0 ? 0 : Math.floor(Math.log2(n / (1000 / 1024))) + 1;
  const i = Math.max(0, Math.trunc((e - 1) / 10));
  return `${Number((n / 2 ** (i * 10)).toPrecision(3))} ${units[i]}B`;
}

const pad2 = (n: number) => String(n).padStart(2, '0');

function localDate(sec: number): string {
  const d = new Date(sec * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

export function snapshotTable(snapshots: SnapshotInfo[]): string {
  const lines = ['Snapshot list:', `${'ID'.padEnd(10)}${'TAG'.padEnd(17)}${'VM SIZE'.padStart(8)}${'DATE'.padStart(20)}${'VM CLOCK'.padStart(13)}${'ICOUNT'.padStart(11)}`];
  for (const s of snapshots) {
    const secs = s['vm-clock-sec'];
    const clock = `${pad2(Math.floor(secs / 3600))}:${pad2(Math.floor(secs / 60) % 60)}:${pad2(secs % 60)}.${String(Math.floor(s['vm-clock-nsec'] / 1e6) % 1000).padStart(3, '0')}`;
    const icount = s.icount === undefined ? '' : String(s.icount);
    lines.push(
      `${escapeLine(s.id).padEnd(9)} ${escapeLine(s.name).padEnd(16)} ${qemuSizeString(s['vm-state-size']).padStart(8)}${localDate(s['date-sec']).padStart(20)}${clock.padStart(13)}${icount.padStart(11)}`,
    );
  }
  return lines.join('\n') + '\n';
}
