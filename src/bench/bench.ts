/**
 * `npm run bench`: imgtool and qemu-img side by side on the same inputs, in
 * one run, alternating (imgtool, qemu-img, imgtool, ...) so that the disk's
 * writeback noise hits both alike. Reports medians, the median of per-pair
 * ratios imgtool/peer, output sizes and peak memory (GNU time's max RSS).
 *
 * Inputs are generated on a tmpfs when we may mount one (root), else on disk
 * with more runs:
 *   sparse.img   2 GiB ext3 holding about 1 GB of real files (mke2fs -d)
 *   dirty.img    2 GiB ext3, fully allocated, its free blocks full of garbage
 *   sparse.qcow2 qemu-img convert of sparse.img
 *   hole.img     64 GiB sparse raw with 1 MiB of data: the cost of reading holes
 *
 * Extra rows come from other modules (fsck, wrap) through BENCH_ROWS.
 */

import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../bin/main.js', import.meta.url));

export interface Timed {
  seconds: number;
  maxRssMiB: number;
}

/** Run a command under GNU time; returns wall seconds and peak RSS. */
export function timed(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Timed {
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M', cmd, ...args], { encoding: 'utf8', env: opts.env ?? process.env, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  const last = r.stderr.trim().split('\n').pop()!.split(' ');
  return { seconds: Number(last[0]), maxRssMiB: Number(last[1]) / 1024 };
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export interface Row {
  name: string;
  imgtool: number;
  peer: number;
  ratio: number;
  peerName: string;
  imgtoolMiB: number;
  peerMiB: number;
  imgtoolOut?: number;
  peerOut?: number;
  target?: string;
}

/**
 * Alternate `runs` pairs of (ours, theirs); `prepare` runs before each
 * command (removing outputs) and is not timed.
 */
export function pairRuns(
  name: string,
  runs: number,
  ours: () => Timed,
  theirs: () => Timed,
  opts: { peerName?: string; prepare?: () => void; outputs?: () => [number, number]; target?: string; warmup?: boolean } = {},
): Row {
  const a: Timed[] = [];
  const b: Timed[] = [];
  // One unrecorded pair first (page cache, a tmpfs that has just been
  // filled: the first pair of a row measured up to twice the others), then
  // pairs in alternating order (ours first, then theirs first), so that
  // neither side always runs on the state the other leaves.
  const pair = (oursFirst: boolean): [Timed, Timed] => {
    const one = oursFirst ? ours : theirs;
    const two = oursFirst ? theirs : ours;
    opts.prepare?.();
    const x = one();
    opts.prepare?.();
    const y = two();
    return oursFirst ? [x, y] : [y, x];
  };
  if (opts.warmup ?? true) pair(true);
  for (let i = 0; i < runs; i++) {
    const [x, y] = pair(i % 2 === 0);
    a.push(x);
    b.push(y);
  }
  const [imgtoolOut, peerOut] = opts.outputs?.() ?? [undefined, undefined];
  return {
    name,
    imgtool: median(a.map((x) => x.seconds)),
    peer: median(b.map((x) => x.seconds)),
    ratio: median(a.map((x, i) => x.seconds / Math.max(b[i]!.seconds, 0.01))),
    peerName: opts.peerName ?? 'qemu-img',
    imgtoolMiB: Math.max(...a.map((x) => x.maxRssMiB)),
    peerMiB: Math.max(...b.map((x) => x.maxRssMiB)),
    imgtoolOut,
    peerOut,
    target: opts.target,
  };
}

const allocated = (p: string) => fs.statSync(p).blocks * 512;
const mib = (n: number | undefined) => (n === undefined ? '' : `${(n / 2 ** 20).toFixed(0)} MiB`);

/**
 * Whether a row meets its target: "≤ R" on the ratio, "≤ +T ms" / "≤ +T s"
 * on the time above the peer, "holes cost" as under 0.3 s (issue: a 64 GiB
 * sparse input), ", output ≤ pipeline" on the output size; "report" rows
 * have none.
 */
export function met(r: Row): string {
  const t = r.target ?? '';
  if (!t || t === 'report') return '—';
  const checks: boolean[] = [];
  const above = /≤ \+([\d.]+) (ms|s)/.exec(t);
  if (above) checks.push(r.imgtool - r.peer <= Number(above[1]) / (above[2] === 'ms' ? 1000 : 1));
  else if (t.startsWith('holes cost')) checks.push(r.imgtool < 0.3);
  else {
    const ratio = /≤ ([\d.]+)/.exec(t);
    if (ratio) checks.push(r.ratio <= Number(ratio[1]));
  }
  if (t.includes('output ≤')) checks.push(r.imgtoolOut !== undefined && r.peerOut !== undefined && r.imgtoolOut <= r.peerOut);
  return checks.length && checks.every(Boolean) ? 'yes' : 'no';
}

export function table(rows: Row[]): string {
  const head = '| operation | imgtool (s) | peer (s) | ratio | target | met | imgtool peak RSS | peer peak RSS | output size imgtool / peer |';
  const sep = '|---|---|---|---|---|---|---|---|---|';
  return [
    head,
    sep,
    ...rows.map(
      (r) =>
        `| ${r.name} | ${r.imgtool.toFixed(2)} | ${r.peer.toFixed(2)} (${r.peerName}) | ${r.ratio.toFixed(2)} | ${r.target ?? ''} | ${met(r)} | ${r.imgtoolMiB.toFixed(0)} MiB | ${r.peerMiB.toFixed(0)} MiB | ${r.imgtoolOut !== undefined ? `${mib(r.imgtoolOut)} / ${mib(r.peerOut)}` : ''} |`,
    ),
  ].join('\n');
}

/** A work directory on tmpfs when we can mount one (and have the memory), else on disk. */
export function workDir(): { dir: string; tmpfs: boolean; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imgtool-bench-'));
  if (process.getuid?.() === 0 && os.totalmem() > 12 * 2 ** 30) {
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=9g', 'tmpfs', dir]);
    if (r.status === 0) {
      return {
        dir,
        tmpfs: true,
        cleanup: () => {
          spawnSync('umount', [dir]);
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
    }
  }
  return { dir, tmpfs: false, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Deterministic pseudo-random bytes, fast (xorshift over 32-bit words). */
function noise(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  const w = new Uint32Array(b.buffer, b.byteOffset, n >>> 2);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < w.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    // Half-compressible data: every other word is small, as in real files.
    w[i] = i & 1 ? x & 0xff : x;
  }
  return b;
}

export interface Inputs {
  dir: string;
  sparse: string;
  dirty: string;
  sparseQcow2: string;
  hole: string;
}

export function makeInputs(dir: string): Inputs {
  const tree = path.join(dir, 'tree');
  fs.mkdirSync(path.join(tree, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'etc', 'fstab'), '/dev/xvda1 / ext3 defaults 0 1\n');
  // About 1 GB of files: a few large, many small.
  let total = 0;
  let i = 0;
  while (total < 1e9) {
    const size = i % 10 === 0 ? 64 << 20 : (i % 7) * 300_000 + 4096;
    const sub = path.join(tree, `d${i % 50}`);
    fs.mkdirSync(sub, { recursive: true });
    fs.writeFileSync(path.join(sub, `f${i}`), noise(size, i + 1));
    total += size;
    i++;
  }
  const sparse = path.join(dir, 'sparse.img');
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext3', '-d', tree, sparse, '2G']);
  const dirty = path.join(dir, 'dirty.img');
  const fd = fs.openSync(dirty, 'w');
  const junk = noise(8 << 20, 99);
  for (let off = 0; off < 2 ** 31; off += junk.length) fs.writeSync(fd, junk, 0, junk.length, off);
  fs.closeSync(fd);
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext3', '-E', 'nodiscard', '-d', tree, dirty, '2G']);
  fs.rmSync(tree, { recursive: true, force: true });
  const sparseQcow2 = path.join(dir, 'sparse.qcow2');
  execFileSync('qemu-img', ['convert', '-O', 'qcow2', sparse, sparseQcow2]);
  const hole = path.join(dir, 'hole.img');
  const hfd = fs.openSync(hole, 'w');
  fs.ftruncateSync(hfd, 64 * 2 ** 30);
  fs.writeSync(hfd, noise(1 << 20, 7), 0, 1 << 20, 32 * 2 ** 30);
  fs.closeSync(hfd);
  return { dir, sparse, dirty, sparseQcow2, hole };
}

function convertRow(name: string, inp: Inputs, runs: number, src: string, fmt: string, extra: string[], target: string): Row {
  const a = path.join(inp.dir, `out-imgtool.${fmt}`);
  const b = path.join(inp.dir, `out-qemu.${fmt}`);
  const rm = () => {
    fs.rmSync(a, { force: true });
    fs.rmSync(b, { force: true });
  };
  const row = pairRuns(
    name,
    runs,
    () => (fs.rmSync(a, { force: true }), timed(process.execPath, [CLI, 'convert', ...extra, '-O', fmt, src, a])),
    () => (fs.rmSync(b, { force: true }), timed('qemu-img', ['convert', ...extra, '-O', fmt, src, b])),
    // A compressed pair takes over a minute: no warm-up pair there.
    { outputs: () => [allocated(a), allocated(b)], target, warmup: !extra.includes('-c') },
  );
  rm();
  return row;
}

/** The same raw → raw copy by a bare Node loop (node-copy.ts): what any Node program pays on this machine. */
function nodeFloorRow(inp: Inputs, runs: number): Row {
  const a = path.join(inp.dir, 'out-node.raw');
  const b = path.join(inp.dir, 'out-qemu.raw');
  const copier = fileURLToPath(new URL('./node-copy.js', import.meta.url));
  const row = pairRuns(
    'floor: fastest bare Node copy raw → raw (2 threads, sync I/O, no imgtool code) vs qemu-img',
    runs,
    () => (fs.rmSync(a, { force: true }), timed(process.execPath, [copier, inp.sparse, a])),
    () => (fs.rmSync(b, { force: true }), timed('qemu-img', ['convert', '-O', 'raw', inp.sparse, b])),
    { outputs: () => [allocated(a), allocated(b)], target: 'report' },
  );
  fs.rmSync(a, { force: true });
  fs.rmSync(b, { force: true });
  return row;
}

export type ExtraBench = (inp: Inputs, runs: number) => Row[] | Promise<Row[]>;

/** Start-up: `imgtool info` on a small qcow2 against bare Node (`node -e 0`) and against `qemu-img info`. */
function startupRows(inp: Inputs, runs: number): Row[] {
  const small = path.join(inp.dir, 'small.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', small, '64M']);
  const info = () => timed(process.execPath, [CLI, 'info', small]);
  const rows = [
    pairRuns('start-up: imgtool info small.qcow2 vs node -e 0', runs, info, () => timed(process.execPath, ['-e', '0']), {
      peerName: 'node -e 0',
      target: '≤ +60 ms',
    }),
    pairRuns('start-up: imgtool info small.qcow2 vs qemu-img info', runs, info, () => timed('qemu-img', ['info', small]), { target: 'report' }),
  ];
  fs.rmSync(small, { force: true });
  return rows;
}

/** Other modules add rows here (fsck, wrap, vdi). */
export const BENCH_ROWS: ExtraBench[] = [];

async function main(): Promise<void> {
  const w = workDir();
  const runs = Number(process.env.BENCH_RUNS) || (w.tmpfs ? 3 : 5);
  process.stderr.write(`bench: inputs in ${w.dir} (${w.tmpfs ? 'tmpfs' : 'disk'}), ${runs} alternating pairs per row\n`);
  try {
    const inp = makeInputs(w.dir);
    const rows: Row[] = [];
    // One failing row is reported and skipped; the table still prints.
    // BENCH_ONLY=convert,wrap,fsck runs only those groups of rows.
    const only = process.env.BENCH_ONLY?.split(',').filter(Boolean);
    const safely = async (name: string, fn: () => Row | Row[] | Promise<Row[]>) => {
      if (only && !only.some((o) => name.toLowerCase().includes(o.toLowerCase()))) return;
      try {
        const r = await fn();
        for (const row of Array.isArray(r) ? r : [r]) add(row);
      } catch (e) {
        process.stderr.write(`bench: ${name} failed: ${(e as Error).message}\n`);
      }
    };
    const add = (r: Row) => {
      rows.push(r);
      process.stderr.write(
        `bench: ${r.name}: imgtool ${r.imgtool.toFixed(2)} s (${r.imgtoolMiB.toFixed(0)} MiB), ${r.peerName} ${r.peer.toFixed(2)} s (${r.peerMiB.toFixed(0)} MiB), ratio ${r.ratio.toFixed(2)}\n`,
      );
    };
    await safely('convert', () => convertRow('convert raw → qcow2 (2 GiB, 1 GB used)', inp, runs, inp.sparse, 'qcow2', [], '≤ 1.0'));
    await safely('convert', () => convertRow('convert qcow2 → raw', inp, runs, inp.sparseQcow2, 'raw', [], '≤ 1.0'));
    await safely('convert', () => convertRow('convert raw → qcow2 -c (compressed)', inp, Math.max(1, runs - 1), inp.sparse, 'qcow2', ['-c'], '≤ 0.6'));
    await safely('convert', () => convertRow('convert dirty raw → qcow2 (2 GiB fully allocated)', inp, runs, inp.dirty, 'qcow2', [], '≤ 1.0'));
    await safely('convert', () => convertRow('convert 64 GiB sparse raw (1 MiB data) → qcow2', inp, runs, inp.hole, 'qcow2', [], 'holes cost'));
    await safely('convert', () => convertRow('convert raw → vdi', inp, runs, inp.sparse, 'vdi', [], '≤ 1.0'));
    const sparseVdi = path.join(inp.dir, 'sparse.vdi');
    if (!only || only.includes('convert')) execFileSync('qemu-img', ['convert', '-O', 'vdi', inp.sparse, sparseVdi]);
    await safely('convert', () => convertRow('convert vdi → qcow2', inp, runs, sparseVdi, 'qcow2', [], '≤ 1.0'));
    await safely('convert', () => convertRow('convert qcow2 → vdi', inp, runs, inp.sparseQcow2, 'vdi', [], '≤ 1.0'));
    fs.rmSync(sparseVdi, { force: true });
    await safely('convert', () => convertRow('convert raw → raw', inp, runs, inp.sparse, 'raw', [], '≤ 1.0'));
    await safely('convert', () => nodeFloorRow(inp, runs));
    const sparseQcow = path.join(inp.dir, 'sparse.qcow');
    if (!only || only.includes('convert')) execFileSync('qemu-img', ['convert', '-O', 'qcow', inp.sparse, sparseQcow]);
    await safely('convert', () => convertRow('convert qcow → qcow2', inp, runs, sparseQcow, 'qcow2', [], '≤ 1.0'));
    fs.rmSync(sparseQcow, { force: true });
    await safely('startup', () => startupRows(inp, Math.max(runs, 10)));
    const { wrapRows } = await import('./wrap.js');
    const { fsckBenchRows } = await import('./fsck.js');
    for (const extra of [wrapRows, fsckBenchRows, ...BENCH_ROWS]) await safely(extra.name, () => extra(inp, runs));
    process.stdout.write(`\n${table(rows)}\n\nMachine: ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, inputs on ${w.tmpfs ? 'tmpfs' : 'disk'}, ${runs} pairs per row (medians; ratio = median of per-pair ratios).\n`);
  } finally {
    w.cleanup();
  }
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
    process.exit(1);
  });
}
