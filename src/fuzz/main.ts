#!/usr/bin/env node
/**
 * `npm run fuzz`: structure-aware fuzzing of every format imgtool reads.
 *
 *   npm run fuzz -- [--seed N] [--cases N] [--time SECONDS] [--formats qcow2,vdi]
 *                   [--diff RATE] [--scratch DIR] [--findings DIR] [--case I]
 *                   [--timeout MS] [--heap MIB] [--rss MIB] [--json FILE]
 *
 * Exit status: 0 no failures, 1 failures (crash, hang, memory, modified
 * input, data different from qemu-img's), 2 usage or set-up error.
 */

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DEFAULTS, type FuzzOptions, runFuzz } from './engine.js';
import { failures, formatSummary } from './summary.js';

const USAGE = `usage: npm run fuzz -- [--seed N] [--cases N] [--time SECONDS] [--formats raw,qcow,qcow2,vdi]
       [--diff RATE (0..1, default ${DEFAULTS.diffRate})] [--scratch DIR] [--findings DIR] [--case INDEX]
       [--timeout MS (default ${DEFAULTS.timeoutMs})] [--heap MIB (default ${DEFAULTS.heapMiB})] [--rss MIB (default ${DEFAULTS.rssMiB})] [--json FILE]`;

function num(flag: string, v: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(v);
  if (v === undefined || !Number.isFinite(n) || n < min || n > max) throw new Error(`${flag} needs a number in ${min}..${max}, got '${v ?? ''}'`);
  return n;
}

export function parseArgs(argv: string[]): FuzzOptions & { json?: string } {
  const scratchDefault = path.join(os.tmpdir(), 'imgtool-fuzz');
  const o: FuzzOptions & { json?: string } = {
    seed: 1,
    scratch: scratchDefault,
    findings: '',
    diffRate: DEFAULTS.diffRate,
    timeoutMs: DEFAULTS.timeoutMs,
    heapMiB: DEFAULTS.heapMiB,
    rssMiB: DEFAULTS.rssMiB,
    limits: { ...DEFAULTS.limits },
    keepNotes: DEFAULTS.keepNotes,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const v = argv[i + 1];
    i++;
    switch (flag) {
      case '--seed': o.seed = num(flag, v, 0, 2 ** 32 - 1); break;
      case '--cases': o.cases = num(flag, v, 1); break;
      case '--time': o.timeSec = num(flag, v, 1); break;
      case '--case': o.only = num(flag, v, 0); break;
      case '--formats': o.formats = (v ?? '').split(',').filter(Boolean); break;
      case '--diff': o.diffRate = num(flag, v, 0, 1); break;
      case '--scratch': o.scratch = path.resolve(v ?? ''); break;
      case '--findings': o.findings = path.resolve(v ?? ''); break;
      case '--timeout': o.timeoutMs = num(flag, v, 100); break;
      case '--heap': o.heapMiB = num(flag, v, 32); break;
      case '--rss': o.rssMiB = num(flag, v, 64); break;
      case '--json': o.json = path.resolve(v ?? ''); break;
      default:
        throw new Error(`unknown option '${flag}'`);
    }
  }
  if (!o.findings) o.findings = path.join(o.scratch, 'findings');
  return o;
}

async function main(): Promise<number> {
  let o: ReturnType<typeof parseArgs>;
  try {
    if (process.argv.includes('--help') || process.argv.includes('-h')) {
      console.log(USAGE);
      return 0;
    }
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`imgtool fuzz: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  o.log = (line) => console.error(line);
  let report;
  try {
    report = await runFuzz(o);
  } catch (e) {
    console.error(`imgtool fuzz: set-up failed: ${(e as Error).message}`);
    return 2;
  }
  console.log(formatSummary(report));
  if (o.json) {
    const stats = Object.fromEntries([...report.stats].map(([k, s]) => [k, { ...s, strict: Object.fromEntries(s.strict), strictMutations: Object.fromEntries(s.strictMutations) }]));
    fs.writeFileSync(o.json, JSON.stringify({ ...report, stats }, null, 2) + '\n');
  }
  return failures(report) > 0 ? 1 : 0;
}

void main().then((code) => {
  process.exitCode = code;
});
