/**
 * Seed images: a SeedContext for the targets' builders (qemu-img and qemu-io
 * run with a timeout, pattern data written deterministically), and the
 * tools' paths.
 */

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Rng } from './rng.js';
import type { Seed, SeedContext } from './types.js';

export interface ToolResult {
  status: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Run a program without blocking the event loop; SIGKILL after `timeoutMs`. */
export function runTool(cmd: string, args: string[], opts: { timeoutMs: number; cwd?: string }): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: opts.cwd });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d: Buffer) => (stdout = (stdout + d.toString()).slice(-65536)));
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-65536)));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status: status ?? -1, stdout, stderr, timedOut });
    });
  });
}

async function must(cmd: string, args: string[], cwd: string): Promise<void> {
  const r = await runTool(cmd, args, { timeoutMs: 120_000, cwd });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`);
}

/**
 * A raw file of `size` bytes in 64 KiB pieces: holes (never written), runs of
 * written zeros, pattern data, and pieces with a few non-zero bytes, chosen
 * by `variant`, so seeds have data, zero and unallocated clusters.
 */
export function writePattern(file: string, size: number, variant: number): void {
  const rng = new Rng(0x5eed, variant);
  const piece = 64 * 1024;
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, size);
    for (let pos = 0; pos < size; pos += piece) {
      const n = Math.min(piece, size - pos);
      const kind = rng.below(4);
      if (kind === 0) continue; // hole
      const buf = new Uint8Array(n);
      if (kind === 2) for (let i = 0; i < n; i++) buf[i] = (i * 7 + pos / 512 + variant) & 0xff;
      if (kind === 3) for (let k = 0; k < 4; k++) buf[rng.below(n)] = 1 + rng.below(255);
      fs.writeSync(fd, buf, 0, n, pos);
    }
  } finally {
    fs.closeSync(fd);
  }
}

export function seedContext(dir: string, tools: { qemuImg: string; qemuIo: string }): SeedContext {
  fs.mkdirSync(dir, { recursive: true });
  return {
    dir,
    qemuImg: (args) => must(tools.qemuImg, args, dir),
    qemuIo: (args) => must(tools.qemuIo, args, dir),
    patternRaw(name, size, variant) {
      const file = path.join(dir, name);
      writePattern(file, size, variant);
      return file;
    },
  };
}

/** Absolute path of a program on PATH (or in /usr/sbin, /sbin), or undefined. */
export function which(name: string): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin']) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/**
 * Seeds converted by qemu-img from one pattern file, one per variant:
 * `[name suffix, -o options]`, e.g. dynamic and fixed.
 */
export async function convertedSeeds(
  ctx: SeedContext,
  format: string,
  ext: string,
  size: number,
  pattern: number,
  variants: readonly (readonly [string, readonly string[]])[],
): Promise<Seed[]> {
  const src = ctx.patternRaw(`${format}-src.raw`, size, pattern);
  const out: Seed[] = [];
  for (const [suffix, opts] of variants) {
    const file = path.join(ctx.dir, `${format}-${suffix}.${ext}`);
    await ctx.qemuImg(['convert', '-f', 'raw', '-O', format, ...opts, src, file]);
    out.push({ name: `${format}-${suffix}`, format, path: file });
  }
  return out;
}
