/** Counting and printing: one row per format, one column per class. */

import { DIFF_OUTCOMES, type DiffOutcome } from './differential.js';
import type { FuzzReport } from './engine.js';
import { FAILURE_CLASSES } from './types.js';

export interface FormatStats {
  cases: number;
  byClass: Record<string, number>;
  diff: Record<DiffOutcome, number>;
  /** imgtool refuses, qemu-img reads: by the error's field, and by the mutation that led there. */
  strict: Map<string, number>;
  strictMutations: Map<string, number>;
  /** ... of which qemu-img's data equals the unmutated seed's. */
  strictHarmless: number;
  /** The slowest case's time in the worker (ms): how far the watchdog is from a real case. */
  slowestMs: number;
  slowestCase: number;
}

export const CLASSES = ['ok', 'rejected', 'crash', 'hang', 'memory', 'modified', 'differs'] as const;

export function newStats(): FormatStats {
  return {
    cases: 0,
    byClass: Object.fromEntries(CLASSES.map((c) => [c, 0])),
    diff: Object.fromEntries(DIFF_OUTCOMES.map((d) => [d, 0])) as Record<DiffOutcome, number>,
    strict: new Map(),
    strictMutations: new Map(),
    strictHarmless: 0,
    slowestMs: 0,
    slowestCase: -1,
  };
}

function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const w = head.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), line(w.map((n) => '-'.repeat(n))), ...cells.slice(1).map(line)].join('\n');
}

function top(m: Map<string, number>, n: number): string[] {
  return [...m.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, n).map(([k, v]) => `    ${String(v).padStart(5)}  ${k}`);
}

/** Failures over the whole run (the exit status and the CI slice's assertion). */
export function failures(r: FuzzReport): number {
  let n = r.modifiedSeeds.length;
  for (const s of r.stats.values()) for (const c of FAILURE_CLASSES) n += s.byClass[c] ?? 0;
  return n;
}

export function formatSummary(r: FuzzReport): string {
  const sum = (f: (s: FormatStats) => number) => [...r.stats.values()].reduce((a, s) => a + f(s), 0);
  const rows = [...r.stats.entries()].map(([fmt, s]) => [fmt, s.cases, ...CLASSES.map((c) => s.byClass[c] ?? 0), s.slowestMs]);
  rows.push(['total', sum((s) => s.cases), ...CLASSES.map((c) => sum((s) => s.byClass[c] ?? 0)), Math.max(...[...r.stats.values()].map((s) => s.slowestMs))]);
  const out = [
    `imgtool fuzz: seed ${r.seed}, ${r.cases} cases in ${r.seconds.toFixed(1)} s (worker started ${r.workerStarts}x)`,
    '',
    table(['format', 'cases', ...CLASSES, 'slowest ms'], rows),
    '',
    'differential slice (qemu-img convert -O raw):',
    table(['format', ...DIFF_OUTCOMES], [...r.stats.entries()].map(([fmt, s]) => [fmt, ...DIFF_OUTCOMES.map((d) => s.diff[d])])),
  ];
  for (const [fmt, s] of r.stats) {
    if (s.diff['imgtool-rejects'] === 0) continue;
    out.push('', `${fmt}: imgtool refuses, qemu-img reads: ${s.diff['imgtool-rejects']} (qemu's data equals the unmutated seed's in ${s.strictHarmless})`);
    out.push('  by the field imgtool names:', ...top(s.strict, 20), '  by the mutation:', ...top(s.strictMutations, 20));
  }
  if (r.modifiedSeeds.length) out.push('', `MODIFIED seed or backing files: ${r.modifiedSeeds.join(', ')}`);
  out.push('', `${failures(r)} failures (crash, hang, memory, modified, differs)`);
  for (const f of r.findings.slice(0, 20)) out.push(`  ${f.class} ${f.seedImage} case ${f.caseIndex}: ${f.image}\n    reproduce: ${f.reproduce}`);
  return out.join('\n');
}
