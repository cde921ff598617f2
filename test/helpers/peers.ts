/**
 * Real peers (qemu-img, sfdisk, e2fsck, ...) judge our output. A test that
 * needs one fails when it is missing (never skips): `npm run setup` installs
 * them all.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const found = new Map<string, string>();

/** Absolute path of a peer tool, or throw naming the Debian package that has it. */
export function peer(name: string): string {
  const cached = found.get(name);
  if (cached) return cached;
  const r = spawnSync('sh', ['-c', `command -v ${name} || ls /usr/sbin/${name} /sbin/${name} 2>/dev/null`], { encoding: 'utf8' });
  const path = r.stdout.trim().split('\n')[0];
  if (!path) throw new Error(`peer tool '${name}' is not installed: run 'npm run setup'`);
  found.set(name, path);
  return path;
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Run a peer tool; never throws on a non-zero exit (the caller asserts). */
export function run(name: string, args: string[], opts: { input?: string | Buffer; timeout?: number } = {}): RunResult {
  const r = spawnSync(peer(name), args, {
    encoding: 'utf8',
    input: opts.input,
    timeout: opts.timeout ?? 120_000,
    maxBuffer: 64 << 20,
  });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Run a command without blocking the test worker's event loop (vitest's
 * worker must keep answering its parent: a long spawnSync in a hook makes
 * it time out). For long set-up steps: building guests, making filesystems.
 */
export function runAsync(cmd: string, args: string[], opts: { timeout?: number; input?: string | Buffer; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += String(d)));
    child.stderr.on('data', (d) => (stderr += String(d)));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeout ?? 300_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status: status ?? -1, stdout, stderr });
    });
    child.stdin.on('error', () => {}); // a child that exits before reading all of it
    child.stdin.end(opts.input ?? '');
  });
}

/** runAsync that throws with the command's stderr on failure. */
export async function mustAsync(cmd: string, args: string[], opts: { timeout?: number; input?: string } = {}): Promise<string> {
  const r = await runAsync(cmd, args, opts);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/** Run a peer tool and return stdout; throw with its stderr on failure. */
export function must(name: string, args: string[], opts: { input?: string | Buffer; timeout?: number } = {}): string {
  const r = run(name, args, opts);
  if (r.status !== 0) throw new Error(`${name} ${args.join(' ')} exited ${r.status}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/** `qemu-img compare` exit status: 0 identical, 1 different, 2+ error. */
export function qemuCompare(a: string, b: string, fa?: string, fb?: string): RunResult {
  const args = ['compare'];
  if (fa) args.push('-f', fa);
  if (fb) args.push('-F', fb);
  return run('qemu-img', [...args, a, b]);
}

/** `qemu-img check --output=json`, parsed. */
export function qemuCheck(path: string, fmt?: string): { status: number; json: Record<string, unknown> | undefined; text: string } {
  const r = run('qemu-img', ['check', '--output=json', ...(fmt ? ['-f', fmt] : []), path]);
  let json: Record<string, unknown> | undefined;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    json = undefined;
  }
  return { status: r.status, json, text: r.stdout + r.stderr };
}

export function qemuInfo(path: string, fmt?: string): Record<string, unknown> {
  return JSON.parse(must('qemu-img', ['info', '--output=json', ...(fmt ? ['-f', fmt] : []), path]));
}

/** A fresh temporary directory, removed by the returned cleanup. */
export function tempDir(prefix = 'imgtool-test-'): { dir: string; cleanup: () => void; path: (name: string) => string } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }), path: (n) => join(dir, n) };
}

export function sha256File(path: string): string {
  return execFileSync('sha256sum', [path], { encoding: 'utf8' }).split(' ')[0]!;
}

// IMGTOOL_CLI runs the tests against another build (e.g. an older commit's, to see a new test fail there).
export const CLI = process.env.IMGTOOL_CLI ?? new URL('../../dist/bin/main.js', import.meta.url).pathname;

/** Run the built imgtool CLI (npm test builds first). */
export function imgtool(args: string[], opts: { input?: string | Buffer; timeout?: number; env?: NodeJS.ProcessEnv } = {}): RunResult {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    input: opts.input,
    timeout: opts.timeout ?? 300_000,
    maxBuffer: 256 << 20,
    env: opts.env ?? process.env,
  });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Run the built imgtool CLI without blocking this process's event loop: for
 * tests whose peer lives in the test process itself (a local HTTP server).
 */
export function imgtoolAsync(args: string[], opts: { input?: Buffer; timeout?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return runAsync(process.execPath, [CLI, ...args], opts);
}

/** `imgtool info --output json …` parsed, failing with its stderr when it did not succeed. */
export function infoJson(args: string[]): Record<string, any> {
  const r = imgtool(['info', ...args]);
  if (r.status !== 0) throw new Error(`imgtool info ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}
