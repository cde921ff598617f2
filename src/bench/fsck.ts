/**
 * Benchmark: `imgtool fsck -n` (e2fsck compiled to WebAssembly, run through
 * imgtool's device layer) against the host's native `e2fsck -fn`, on a
 * 4 GiB ext4 holding 200,000 small files made by the host's mke2fs -d.
 * Runs alternate (imgtool, host, imgtool, ...) after one untimed warm-up of
 * each, so the page cache and the machine's noise hit both alike. Times
 * include imgtool's start-up (Node, compiling the module), as a user sees it.
 *
 *   import { benchFsck } from './fsck.js';
 *   const r = await benchFsck();      // { imgtoolSeconds, hostSeconds, ratio, peakRssMiB, ... }
 *
 * `fsckBenchRows` has the shape of bench.ts's BENCH_ROWS entries.
 */

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Inputs, type Row, median, pairRuns, timed, workDir } from './bench.js';

const CLI = fileURLToPath(new URL('../bin/main.js', import.meta.url));

export interface FsckBenchResult {
  /** Medians over the runs, wall-clock seconds. */
  imgtoolSeconds: number;
  hostSeconds: number;
  /** Median of the per-pair ratios imgtool / host. */
  ratio: number;
  /** Peak resident memory of the imgtool process (GNU time's max RSS), largest over the runs. */
  peakRssMiB: number;
  hostPeakRssMiB: number;
  runs: number;
  files: number;
  imageBytes: number;
}

export interface FsckBenchOptions {
  /** Alternating pairs (default 5). */
  runs?: number;
  /** Work directory (default: a fresh one from bench.ts's workDir, removed afterwards). */
  dir?: string;
  /** Number of files (default 200,000) and filesystem size (default 4 GiB). */
  files?: number;
  sizeBytes?: number;
  log?: (line: string) => void;
}

/** Build the test filesystem: `files` small files in directories of 500, by the host's mke2fs -d. */
export function makeFsckImage(dir: string, files = 200_000, sizeBytes = 4 * 2 ** 30): string {
  const tree = path.join(dir, 'fsck-tree');
  fs.rmSync(tree, { recursive: true, force: true });
  const content = Buffer.alloc(3000, 0x61);
  for (let i = 0; i < files; i++) {
    const sub = path.join(tree, `d${Math.floor(i / 500)}`);
    if (i % 500 === 0) fs.mkdirSync(sub, { recursive: true });
    fs.writeFileSync(path.join(sub, `f${i}`), content.subarray(0, (i * 37) % 3000));
  }
  const img = path.join(dir, 'fsck-bench.img');
  fs.rmSync(img, { force: true });
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, img, `${Math.floor(sizeBytes / 1024)}k`], { stdio: 'ignore' });
  fs.rmSync(tree, { recursive: true, force: true });
  return img;
}

export async function benchFsck(opts: FsckBenchOptions = {}): Promise<FsckBenchResult> {
  const runs = opts.runs ?? 5;
  const files = opts.files ?? 200_000;
  const own = opts.dir ? undefined : workDir();
  const dir = opts.dir ?? own!.dir;
  const log = opts.log ?? (() => {});
  try {
    log(`fsck bench: making a ${((opts.sizeBytes ?? 4 * 2 ** 30) / 2 ** 30).toFixed(0)} GiB ext4 with ${files} files in ${dir}`);
    const img = makeFsckImage(dir, files, opts.sizeBytes);
    const ours = () => timed(process.execPath, [CLI, 'fsck', '-n', img]);
    const theirs = () => timed('e2fsck', ['-fn', img]);
    ours();
    theirs();
    const a: ReturnType<typeof timed>[] = [];
    const b: ReturnType<typeof timed>[] = [];
    for (let i = 0; i < runs; i++) {
      a.push(ours());
      b.push(theirs());
      log(`fsck bench: run ${i + 1}/${runs}: imgtool ${a[i]!.seconds.toFixed(2)} s, e2fsck ${b[i]!.seconds.toFixed(2)} s`);
    }
    return {
      imgtoolSeconds: median(a.map((x) => x.seconds)),
      hostSeconds: median(b.map((x) => x.seconds)),
      ratio: median(a.map((x, i) => x.seconds / Math.max(b[i]!.seconds, 0.01))),
      peakRssMiB: Math.max(...a.map((x) => x.maxRssMiB)),
      hostPeakRssMiB: Math.max(...b.map((x) => x.maxRssMiB)),
      runs,
      files,
      imageBytes: fs.statSync(img).size,
    };
  } finally {
    own?.cleanup();
  }
}

/** A BENCH_ROWS entry (bench.ts): the fsck row, in the shared work directory. */
export async function fsckBenchRows(inp: Inputs, runs: number): Promise<Row[]> {
  const r = await benchFsck({ runs, dir: inp.dir, log: (l) => process.stderr.write(`bench: ${l}\n`) });
  fs.rmSync(path.join(inp.dir, 'fsck-bench.img'), { force: true });
  return [
    {
      name: `fsck -n, ext4 ${(r.imageBytes / 2 ** 30).toFixed(0)} GiB, ${r.files} files`,
      imgtool: r.imgtoolSeconds,
      peer: r.hostSeconds,
      ratio: r.ratio,
      peerName: 'e2fsck',
      imgtoolMiB: r.peakRssMiB,
      peerMiB: r.hostPeakRssMiB,
      target: '≤ 3 (WebAssembly)',
    },
    smallFsckRow(inp, Math.max(runs, 5)),
  ];
}

/** fsck -n of a 64 MiB ext4: start-up and the WebAssembly compile dominate (target: within 0.3 s of node -e 0). */
function smallFsckRow(inp: Inputs, runs: number): Row {
  const img = path.join(inp.dir, 'fsck-small.img');
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', img, '64M'], { stdio: 'ignore' });
  const row = pairRuns('fsck -n, ext4 64 MiB (vs node -e 0: start-up)', runs, () => timed(process.execPath, [CLI, 'fsck', '-n', img]), () => timed(process.execPath, ['-e', '0']), {
    peerName: 'node -e 0',
    target: '≤ +0.3 s',
  });
  fs.rmSync(img, { force: true });
  return row;
}
