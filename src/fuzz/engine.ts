/**
 * The fuzz run: build seeds, then for each case pick a seed, mutate it, read
 * it in the worker (runner.ts), hash the inputs before and after, compare a
 * slice with qemu-img (differential.ts), save findings, count everything.
 */

import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type DiffOutcome, compareFiles, qemuSpec, qemuToRaw, sameFiles } from './differential.js';
import { describeMutation, mutate, mutationKey } from './mutate.js';
import type { CaseRequest, ErrorReport, ReadLimits } from './protocol.js';
import { Rng } from './rng.js';
import { type RunResult, Runner } from './runner.js';
import { seedContext, which } from './seeds.js';
import { type FormatStats, newStats } from './summary.js';
import { selectTargets } from './targets/index.js';
import type { BackingSpec, FuzzTarget, Layout, Mutation, Seed } from './types.js';
import { FAILURE_CLASSES } from './types.js';

export interface FuzzOptions {
  seed: number;
  /** Number of cases (default: unbounded when `timeSec` is set, else 1000). */
  cases?: number;
  /** Stop after this many seconds. */
  timeSec?: number;
  /** Run only this case index (a reproducer). */
  only?: number;
  formats?: string[];
  /** Extra targets (tests: fake drivers); used instead of the registry's when given. */
  targets?: FuzzTarget[];
  /** Seeds, cases and qemu outputs go here. */
  scratch: string;
  findings: string;
  /** Fraction of cases also converted by qemu-img and compared (0..1). */
  diffRate: number;
  timeoutMs: number;
  heapMiB: number;
  rssMiB: number;
  limits: ReadLimits;
  /** Save up to this many examples of each note (imgtool refuses what qemu-img reads, and the reverse; sizes differ). */
  keepNotes: number;
  log?: (line: string) => void;
  qemuImg?: string;
  qemuIo?: string;
}

export const DEFAULTS = {
  diffRate: 0.1,
  timeoutMs: 10_000,
  heapMiB: 256,
  rssMiB: 768,
  limits: { maxBytes: 64 << 20, maxStatus: 100_000, maxExport: 64 << 20 } satisfies ReadLimits,
  keepNotes: 100,
};

export interface Finding {
  class: string;
  format: string;
  seedImage: string;
  runSeed: number;
  caseIndex: number;
  forcedFormat?: string;
  mutations: Mutation[];
  description: string[];
  error?: ErrorReport;
  detail?: string;
  image: string;
  reproduce: string;
}

export interface FuzzReport {
  seed: number;
  cases: number;
  seconds: number;
  workerStarts: number;
  stats: Map<string, FormatStats>;
  findings: Finding[];
  /** Input files changed over the whole run (seeds, backing files). */
  modifiedSeeds: string[];
}

interface PreparedSeed {
  seed: Seed;
  target: FuzzTarget;
  bytes: Uint8Array;
  layout: Layout;
  /** qemu-img's raw conversion of the unmutated seed (for "qemu reads the original data"). */
  reference?: string;
}

/** Differential outcomes worth keeping an example of (in findings/notes/). */
const NOTE_OUTCOMES: readonly DiffOutcome[] = ['imgtool-rejects', 'qemu-rejects', 'size-differs', 'known-divergence'];

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const shaFile = (f: string) => sha(fs.readFileSync(f));

function workerPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const sibling = path.join(here, 'worker.js');
  if (fs.existsSync(sibling)) return sibling;
  return path.resolve(here, '../../dist/fuzz/worker.js'); // running from src/ (tests): the build's worker
}

async function prepare(o: FuzzOptions, targets: FuzzTarget[], qemuImg: string, seedDir: string, diffDir: string): Promise<PreparedSeed[]> {
  const ctx = seedContext(seedDir, { qemuImg, qemuIo: o.qemuIo ?? which('qemu-io') ?? 'qemu-io' });
  const out: PreparedSeed[] = [];
  for (const target of targets) {
    for (const seed of await target.buildSeeds(ctx)) {
      const bytes = new Uint8Array(fs.readFileSync(seed.path));
      const p: PreparedSeed = { seed, target, bytes, layout: await target.layout(bytes) };
      if (target.qemuFormat && o.diffRate > 0) {
        const ref = path.join(diffDir, `ref-${seed.name}.raw`);
        const backing = target.qemuBacking ? seed.backing ?? null : undefined;
        const r = await qemuToRaw(qemuOpts(o, qemuImg, diffDir), qemuSpec(seed.path, target.qemuFormat, backing), ref);
        if (!r.ok) throw new Error(`qemu-img cannot read the seed ${seed.name}: ${r.message}`);
        p.reference = ref;
      }
      out.push(p);
    }
  }
  return out;
}

function qemuOpts(o: FuzzOptions, qemuImg: string, cwd: string) {
  return { qemuImg, timeoutMs: o.timeoutMs, maxOutput: o.limits.maxExport, cwd };
}

function hashDir(dir: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const f of fs.readdirSync(dir)) m.set(f, shaFile(path.join(dir, f)));
  return m;
}

function reproducer(o: FuzzOptions, i: number): string {
  const formats = o.formats?.length ? ` --formats ${o.formats.join(',')}` : '';
  return `node dist/fuzz/main.js --seed ${o.seed}${formats} --case ${i} --diff ${o.diffRate}`;
}

export async function runFuzz(o: FuzzOptions): Promise<FuzzReport> {
  const t0 = Date.now();
  const log = o.log ?? (() => {});
  const targets = o.targets ?? selectTargets(o.formats);
  const seedDir = path.join(o.scratch, 'seeds');
  const diffDir = path.join(o.scratch, 'diff');
  fs.rmSync(seedDir, { recursive: true, force: true });
  fs.mkdirSync(diffDir, { recursive: true });
  fs.mkdirSync(o.findings, { recursive: true });
  const qemuImg = o.qemuImg ?? which('qemu-img');
  const wantDiff = o.diffRate > 0 && targets.some((t) => t.qemuFormat);
  if (wantDiff && !qemuImg) throw new Error("qemu-img is not installed (the differential slice needs it): run 'npm run setup' or pass --diff 0");
  const seeds = await prepare(o, targets, qemuImg ?? 'qemu-img', seedDir, diffDir);
  log(`${seeds.length} seed images in ${seedDir}: ${seeds.map((s) => s.seed.name).join(', ')}`);
  const seedHashes = hashDir(seedDir);
  const stats = new Map<string, FormatStats>();
  for (const s of seeds) if (!stats.has(s.seed.format)) stats.set(s.seed.format, newStats());
  const report: FuzzReport = { seed: o.seed, cases: 0, seconds: 0, workerStarts: 0, stats, findings: [], modifiedSeeds: [] };
  const runner = new Runner({ workerPath: workerPath(), heapMiB: o.heapMiB, rssMiB: o.rssMiB, timeoutMs: o.timeoutMs });
  const casePath = path.join(seedDir, 'case');
  const total = o.only !== undefined ? 1 : o.cases ?? (o.timeSec ? Infinity : 1000);
  const notes = new Map<string, number>();
  /** The last few cases, for crashes that surface after their case replied. */
  const recent = new Map<number, { p: PreparedSeed; forced: string | undefined; mutations: Mutation[]; bytes: Uint8Array }>();
  const drainLate = () => {
    for (const late of runner.takeLate()) {
      const c = recent.get(late.id);
      if (!c) continue;
      const lst = stats.get(c.p.seed.format)!;
      lst.byClass.crash = (lst.byClass.crash ?? 0) + 1;
      const f = saveFinding(o, o.findings, 'crash', c.p, late.id, c.forced, c.mutations, c.bytes, late.error, 'surfaced after the case had replied');
      report.findings.push(f);
      log(`FINDING late crash ${c.p.seed.name} case ${late.id}: ${late.error?.name ?? ''} ${late.error?.message ?? ''}`);
    }
  };
  try {
    for (let n = 0; n < total; n++) {
      if (o.timeSec && Date.now() - t0 > o.timeSec * 1000) break;
      const i = o.only ?? n;
      const rng = new Rng(o.seed, i);
      const p = rng.pick(seeds);
      const forced = rng.chance(0.75) ? p.seed.format : undefined;
      const diff = wantDiff && !!p.target.qemuFormat && rng.chance(o.diffRate);
      const { bytes, mutations } = mutate(rng, p.bytes, p.layout);
      if (p.target.reseal && rng.chance(0.75)) {
        const what = p.target.reseal(bytes, p.layout);
        if (what) mutations.push({ kind: 'reseal', what });
      }
      fs.writeFileSync(casePath, bytes);
      const before = sha(bytes);
      const backingBefore = p.seed.backing ? shaFile(p.seed.backing.path) : undefined;
      const exportPath = diff ? path.join(diffDir, 'imgtool.raw') : undefined;
      if (exportPath) fs.rmSync(exportPath, { force: true });
      const req: CaseRequest = { type: 'case', id: i, path: casePath, format: forced, backingDir: seedDir, driverModule: p.target.driverModule, exportPath, limits: o.limits };
      const started = Date.now();
      const r = await runner.run(req);
      const ms = Date.now() - started;
      let cls: string = r.outcome;
      let detail: string | undefined;
      const after = fs.existsSync(casePath) ? shaFile(casePath) : 'missing';
      if (after !== before || (backingBefore && shaFile(p.seed.backing!.path) !== backingBefore)) {
        cls = 'modified';
        detail = `input hash ${before} -> ${after}`;
        fs.writeFileSync(casePath, bytes); // restore for the record
      }
      const st = stats.get(p.seed.format)!;
      st.cases++;
      if (r.outcome !== 'hang' && ms > st.slowestMs) {
        st.slowestMs = ms;
        st.slowestCase = i;
      }
      st.byClass[cls] = (st.byClass[cls] ?? 0) + 1;
      if (diff && !FAILURE_CLASSES.includes(cls)) {
        const d = await differential(o, qemuImg!, p, bytes, mutations, r, forced, casePath, diffDir);
        st.diff[d.outcome]++;
        if (d.outcome === 'differs') {
          cls = 'differs';
          detail = d.detail;
          st.byClass.differs = (st.byClass.differs ?? 0) + 1;
        }
        if (d.outcome === 'imgtool-rejects') {
          const key = refusalKey(r.error);
          st.strict.set(key, (st.strict.get(key) ?? 0) + 1);
          for (const k of new Set(mutations.map(mutationKey))) st.strictMutations.set(k, (st.strictMutations.get(k) ?? 0) + 1);
          if (d.harmless) st.strictHarmless++;
        }
        const kept = notes.get(d.outcome) ?? 0;
        if (NOTE_OUTCOMES.includes(d.outcome) && kept < o.keepNotes) {
          notes.set(d.outcome, kept + 1);
          saveFinding(o, path.join(o.findings, 'notes'), d.outcome, p, i, forced, mutations, bytes, r.error, d.detail);
        }
      }
      if (FAILURE_CLASSES.includes(cls)) {
        const f = saveFinding(o, o.findings, cls, p, i, forced, mutations, bytes, r.error, detail);
        report.findings.push(f);
        log(`FINDING ${cls} ${p.seed.name} case ${i}: ${f.description.join('; ')}: ${r.error?.name ?? ''} ${r.error?.message ?? detail ?? ''}`);
      }
      recent.set(i, { p, forced, mutations, bytes });
      if (recent.size > 4) recent.delete(recent.keys().next().value!);
      drainLate();
      report.cases++;
      if (report.cases % 1000 === 0) log(`${report.cases} cases, ${Math.round((Date.now() - t0) / 1000)} s, ${report.findings.length} findings`);
    }
    // A grace period for what the last case left behind (a timer that throws).
    await new Promise((resolve) => setTimeout(resolve, 250));
    drainLate();
  } finally {
    runner.close();
    fs.rmSync(casePath, { force: true });
    report.workerStarts = runner.starts;
  }
  for (const [f, h] of hashDir(seedDir)) if (seedHashes.get(f) !== h) report.modifiedSeeds.push(f);
  report.seconds = (Date.now() - t0) / 1000;
  return report;
}

async function differential(
  o: FuzzOptions,
  qemuImg: string,
  p: PreparedSeed,
  bytes: Uint8Array,
  mutations: Mutation[],
  r: RunResult,
  forced: string | undefined,
  casePath: string,
  diffDir: string,
): Promise<{ outcome: DiffOutcome; detail?: string; harmless?: boolean }> {
  const reply = r.reply;
  const imgtoolOk = r.outcome === 'ok';
  const driver = reply?.driver ?? forced ?? p.seed.format;
  const target = selectTargets().find((t) => t.format === driver) ?? p.target;
  if (!target.qemuFormat) return { outcome: 'skipped' };
  const unsafe = target.qemuUnsafe?.(bytes);
  if (unsafe) return { outcome: 'skipped', detail: unsafe };
  if (imgtoolOk && !reply?.exported) return { outcome: 'skipped', detail: 'too large to export' };
  let backing: BackingSpec | null | undefined;
  if (target.qemuBacking) {
    if (imgtoolOk) {
      if (reply?.backing === undefined) backing = null;
      else if (p.seed.backing && reply.backing === p.seed.backing.name) backing = p.seed.backing;
      else return { outcome: 'skipped', detail: `backing file renamed to ${reply.backing}` };
    } else if (/backing file '/.test(r.error?.message ?? '')) {
      // imgtool could not open the (renamed) backing file; qemu-img, pinned to the seed's, would not be comparable.
      return { outcome: 'skipped', detail: 'imgtool refused the backing file by name' };
    } else backing = p.seed.backing ?? null;
  }
  const qemuOut = path.join(diffDir, 'qemu.raw');
  const q = await qemuToRaw(qemuOpts(o, qemuImg, diffDir), qemuSpec(casePath, target.qemuFormat, backing), qemuOut);
  if (q.timedOut) return { outcome: 'qemu-timeout' };
  if (!q.ok) return { outcome: imgtoolOk ? 'qemu-rejects' : 'both-reject', detail: q.message };
  if (!imgtoolOk) {
    const harmless = !!p.reference && sameFiles(qemuOut, p.reference);
    return { outcome: 'imgtool-rejects', detail: `${r.error?.message ?? ''}${harmless ? ' (qemu reads the original data)' : ''}`, harmless };
  }
  const c = compareFiles(path.join(diffDir, 'imgtool.raw'), qemuOut);
  if (c.firstDiff >= 0) {
    const detail = `first different byte at ${c.firstDiff} (imgtool size ${c.sizeA}, qemu-img size ${c.sizeB})`;
    const known = target.divergences?.find((d) => mutations.some((m) => touches(m, d.offset, d.size)));
    return known ? { outcome: 'known-divergence', detail: `${detail}: ${known.why}` } : { outcome: 'differs', detail };
  }
  if (c.sizeA !== c.sizeB) return { outcome: 'size-differs', detail: `virtual size: imgtool ${c.sizeA}, qemu-img ${c.sizeB}` };
  return { outcome: 'same' };
}

/** What imgtool's refusal names, with indexes and quoted names folded: "field L2 entry N of the table at N". */
function refusalKey(e: ErrorReport | undefined): string {
  const text = e?.field ? `field ${e.field}` : `${e?.kind ?? e?.name}: ${(e?.message ?? '').replace(/'[^']*'/g, "'...'").replace(/ \(resolved.*$/, '').slice(0, 70)}`;
  return text.replace(/\[\d+\]/g, '[N]').replace(/\b\d+\b/g, 'N');
}

/** Did mutation `m` change any byte of [offset, offset + size)? */
function touches(m: Mutation, offset: number, size: number): boolean {
  const end = offset + size;
  switch (m.kind) {
    case 'field':
      return m.offset < end && m.offset + m.size > offset;
    case 'entry':
      return m.offset < end && m.offset + 8 > offset;
    case 'flip':
      return m.offset >= offset && m.offset < end;
    default:
      return false;
  }
}

function saveFinding(
  o: FuzzOptions,
  dir: string,
  cls: string,
  p: PreparedSeed,
  i: number,
  forced: string | undefined,
  mutations: Mutation[],
  bytes: Uint8Array,
  error: ErrorReport | undefined,
  detail: string | undefined,
): Finding {
  fs.mkdirSync(dir, { recursive: true });
  const base = path.join(dir, `${cls}-${p.seed.name}-s${o.seed}-c${i}`);
  const f: Finding = {
    class: cls,
    format: p.seed.format,
    seedImage: p.seed.name,
    runSeed: o.seed,
    caseIndex: i,
    forcedFormat: forced,
    mutations,
    description: mutations.map(describeMutation),
    error,
    detail,
    image: `${base}.img`,
    reproduce: reproducer(o, i),
  };
  fs.writeFileSync(f.image, bytes);
  fs.writeFileSync(`${base}.json`, JSON.stringify(f, null, 2) + '\n');
  return f;
}
