/**
 * `check`: the driver's check pass (FormatDriver.check), and with a repair
 * a second, read-only pass that reports what is left (as qemu-img
 * "double checks" a fixed image). Exit codes as qemu-img check's.
 */

import { FileDevice } from '../core/file.js';
import { ImageError } from '../core/errors.js';
import type { CheckResult, FormatDriver, Repair } from '../formats/types.js';

export const CHECK_EXIT = { clean: 0, notCompleted: 1, corrupt: 2, leaks: 3, unsupported: 63 } as const;

export interface CheckOutcome {
  result: CheckResult;
  /** Counts of the repairing pass, when there was one and it fixed something. */
  repaired?: { leaks: number; corruptions: number };
}

export async function checkImage(file: string, driver: FormatDriver, repair: Repair, say: (line: string) => void): Promise<CheckOutcome> {
  if (!driver.check) throw new ImageError('unsupported', 'This image format does not support checks', { format: driver.name });
  const pass = async (r: Repair) => {
    const child = await FileDevice.open(file, { writable: !!r });
    try {
      return await driver.check!(child, r, say);
    } finally {
      await child.close();
    }
  };
  const first = await pass(repair);
  const leaks = first['leaks-fixed'] ?? 0;
  const corruptions = first['corruptions-fixed'] ?? 0;
  if (!repair || (!leaks && !corruptions)) return { result: first };
  const second = await pass(undefined);
  if (leaks) second['leaks-fixed'] = leaks;
  if (corruptions) second['corruptions-fixed'] = corruptions;
  return { result: second, repaired: { leaks, corruptions } };
}

export function checkExitCode(r: CheckResult): number {
  if (r['check-errors']) return CHECK_EXIT.notCompleted;
  if (r.corruptions) return CHECK_EXIT.corrupt;
  if (r.leaks) return CHECK_EXIT.leaks;
  return CHECK_EXIT.clean;
}

/** qemu-img check's human summary. */
export function checkSummary(r: CheckResult, repaired?: { leaks: number; corruptions: number }): string {
  const out: string[] = [];
  if (repaired) {
    out.push('The following inconsistencies were found and repaired:', '', `    ${repaired.leaks} leaked clusters`, `    ${repaired.corruptions} corruptions`, '', 'Double checking the fixed image now...');
  }
  const problems = r['check-errors'] || r.corruptions || r.leaks;
  if (!problems) out.push('No errors were found on the image.');
  else {
    if (r.corruptions) out.push('', `${r.corruptions} errors were found on the image.`, 'Data may be corrupted, or further writes to the image may corrupt it.');
    if (r.leaks) out.push('', `${r.leaks} leaked clusters were found on the image.`, 'This means waste of disk space, but no harm to data.');
    if (r['check-errors']) out.push('', `${r['check-errors']} internal errors have occurred during the check.`);
  }
  const total = r['total-clusters'] ?? 0;
  const alloc = r['allocated-clusters'] ?? 0;
  if (total && alloc) {
    const pct = (n: number, d: number) => ((n / d) * 100).toFixed(2);
    out.push(`${alloc}/${total} = ${pct(alloc, total)}% allocated, ${pct(r['fragmented-clusters'] ?? 0, alloc)}% fragmented, ${pct(r['compressed-clusters'] ?? 0, alloc)}% compressed clusters`);
  }
  if (r['image-end-offset']) out.push(`Image end offset: ${r['image-end-offset']}`);
  return out.join('\n') + '\n';
}
