/**
 * Shared by the partition, swap and detect tests: run the CLI in-process,
 * and ask the peers (sfdisk, blkid) what they see.
 */
import { Writable } from 'node:stream';
import { closeSync, openSync, writeSync, ftruncateSync, readFileSync, readSync } from 'node:fs';
import { main } from '../src/cli/main.js';
import { EXIT_CODES, ImageError } from '../src/core/errors.js';
import { must, run } from './helpers/peers.js';

export interface CliResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Run `imgtool ARGS` in this process (same dispatch and exit codes as the binary). */
export async function runCli(argv: string[]): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  const sink = (add: (s: string) => void) =>
    new Writable({
      write(chunk, _enc, cb) {
        add(String(chunk));
        cb();
      },
    });
  const ctx = { stdout: sink((s) => (stdout += s)), stderr: sink((s) => (stderr += s)), isTTY: false, debug: false };
  try {
    const status = await main(argv, ctx);
    return { status, stdout, stderr };
  } catch (e) {
    if (e instanceof ImageError) return { status: EXIT_CODES[e.kind], stdout, stderr: stderr + `imgtool: ${e.describe()}\n` };
    throw e;
  }
}

export interface SfdiskPart {
  node: string;
  start: number;
  size: number;
  type: string;
  bootable?: boolean;
  uuid?: string;
  name?: string;
  attrs?: string;
}

export interface SfdiskTable {
  label: 'dos' | 'gpt';
  id: string;
  partitions?: SfdiskPart[];
  firstlba?: number;
  lastlba?: number;
}

/** `sfdisk --json FILE`, or undefined when sfdisk finds no table. */
export function sfdiskJson(file: string): SfdiskTable | undefined {
  const r = run('sfdisk', ['--json', file]);
  if (r.status !== 0) {
    if (/does not contain a recognized partition table/.test(r.stderr)) return undefined;
    throw new Error(`sfdisk --json ${file} exited ${r.status}: ${r.stderr}`);
  }
  return JSON.parse(r.stdout).partitiontable as SfdiskTable;
}

/** Write a table with sfdisk from a script (sfdisk's input format). */
export function sfdiskWrite(file: string, script: string): void {
  must('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', file], { input: script });
}

/** `blkid -p -o export` on a file or on a byte range of it; {} when blkid finds nothing. */
export function blkid(file: string, range?: { offset: number; size: number }): Record<string, string> {
  const args = ['-p', '-o', 'export'];
  if (range) args.push('-O', String(range.offset), '--size', String(range.size));
  const r = run('blkid', [...args, file]);
  if (r.status === 2) return {};
  if (r.status !== 0) throw new Error(`blkid ${args.join(' ')} ${file} exited ${r.status}: ${r.stderr}`);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const eq = line.indexOf('=');
    // `-o export` escapes shell metacharacters (a space is written `\ `).
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1).replace(/\\(.)/g, '$1');
  }
  return out;
}

/** A sparse file of `size` bytes. */
export function sparseFile(path: string, size: number): string {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
  return path;
}

/** Write `bytes` into `file` at `offset` without truncating it. */
export function pokeFile(file: string, offset: number, bytes: Uint8Array): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, bytes, 0, bytes.length, offset);
  closeSync(fd);
}

/** Copy `length` bytes of `src` (from 0) into `dst` at `offset`. */
export function copyInto(src: string, dst: string, offset: number): void {
  pokeFile(dst, offset, readFileSync(src));
}

export function readRange(file: string, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  const fd = openSync(file, 'r');
  readSync(fd, b, 0, length, offset);
  closeSync(fd);
  return b;
}
