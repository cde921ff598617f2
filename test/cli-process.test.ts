/**
 * The CLI as a process: what reaches the terminal, and how it ends.
 *
 * - Strings from an image never reach the terminal raw: a backing-file name
 *   holding a newline and ANSI escapes cannot forge a second line or move
 *   the cursor (README "Safety"; issue: forged output).
 * - A signal always ends the process, even while a thread is stuck in a
 *   blocking open() (a FIFO with no writer), and partial outputs are removed.
 * - A finished command exits at once: 30 wraps in a row each end promptly
 *   after their output is complete (a worker left alive once kept one for
 *   12 minutes).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { CLI, imgtool, must, run, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-cliproc-');
afterAll(() => t.cleanup());

const FORGED = 'evil\nimgtool: all good\x1b[2K\x1b]0;owned\x07\u202e';

/** A qcow2 whose backing-file name is `name` (qemu-img writes it as given, without opening it). */
function qcowWithBacking(file: string, name: string): void {
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', name, '-F', 'raw', file, '1M']);
}

function assertTerminalSafe(text: string): void {
  expect(text).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]/);
  // Every line imgtool prints starts with its own prefix: none is forged.
  for (const line of text.split('\n').filter((l) => l.length)) expect(line).toMatch(/^imgtool: /);
  expect(text.split('\n').filter((l) => /^imgtool: all good/.test(l))).toEqual([]);
}

describe('strings from images are escaped before they reach a terminal', () => {
  it('an error naming a hostile backing file is one line, escaped', () => {
    const img = t.path('forged.qcow2');
    qcowWithBacking(img, FORGED);
    const r = imgtool(['convert', '-O', 'raw', img, t.path('forged.raw')]);
    expect(r.status).toBe(4); // a backing file is not followed without --backing
    assertTerminalSafe(r.stderr);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('evil\\nimgtool: all good\\x1b[2K');
  });

  it('JSON output keeps the exact value (JSON-escaped), and stays parseable', () => {
    const img = t.path('forged-info.qcow2');
    qcowWithBacking(img, FORGED);
    const r = imgtool(['info', '--output', 'json', img]);
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)['backing-filename']).toBe(FORGED);
    expect(r.stdout).not.toMatch(/[\x00-\x1f\x7f-\x9f\u202e](?<!\n)/);
  });

  it('human info output shows the name escaped on its own line', () => {
    const img = t.path('forged-human.qcow2');
    qcowWithBacking(img, FORGED);
    const r = imgtool(['info', img]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]/);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('imgtool: all good'))).toEqual([]);
  });
});

/** Spawn imgtool; resolve with how it ended. */
function start(args: string[]) {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += String(d)));
  const ended = new Promise<{ code: number | null; signal: string | null; at: number }>((res) =>
    child.on('exit', (code, signal) => res({ code, signal, at: Date.now() })),
  );
  return { child, ended, stderr: () => stderr };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('a signal always ends imgtool', () => {
  it('SIGTERM ends it while a thread is blocked opening a FIFO that has no writer', async () => {
    const fifo = t.path('no-writer.fifo');
    must('mkfifo', [fifo]);
    const p = start(['info', fifo]);
    await sleep(1500);
    const sent = Date.now();
    p.child.kill('SIGTERM');
    const guard = sleep(15_000).then(() => 'still running' as const);
    const end = await Promise.race([p.ended, guard]);
    if (end === 'still running') p.child.kill('SIGKILL');
    expect(end, p.stderr()).not.toBe('still running');
    if (end !== 'still running' && end.at < sent) {
      // It refused the FIFO on its own before the signal: a typed error, not a hang.
      expect(end.code, p.stderr()).not.toBe(0);
      expect(p.stderr()).toMatch(/^imgtool: /);
    } else if (end !== 'still running') {
      expect(end.signal).toBe('SIGTERM');
      expect(p.stderr()).toMatch(/interrupted \(SIGTERM\)/);
    }
  });
});

describe('writing to a pipe', () => {
  it('exits 0 with every byte delivered, run after run (waiting for a drain that never came exited 13)', () => {
    const src = t.path('pipe-src.raw');
    must('qemu-img', ['create', '-q', '-f', 'raw', src, '8M']);
    must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 3M', src]);
    const out = t.path('pipe-out.vhd');
    for (let i = 0; i < 25; i++) {
      const r = run('bash', ['-c', `set -o pipefail; '${process.execPath}' '${CLI}' convert -O vpc -o subformat=dynamic '${src}' - | cat > '${out}'`]);
      expect(r.status, `run ${i}: ${r.stderr}`).toBe(0);
      expect(run('qemu-img', ['compare', '-q', src, out]).status, `run ${i}`).toBe(0);
    }
  });
});

describe('a finished command exits at once', () => {
  const root = t.path('root');
  const fsImg = t.path('small.img');
  beforeAll(() => {
    mkdirSync(`${root}/etc`, { recursive: true });
    writeFileSync(`${root}/etc/fstab`, '/dev/xvda1 / ext4 defaults 0 1\n');
    must('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', root, fsImg, '8M']);
  });

  it('30 wraps in a row: each ends within 10 s of its output appearing', async () => {
    const lags: number[] = [];
    for (let i = 0; i < 30; i++) {
      const out = t.path(`loop-${i}.qcow2`);
      const p = start(['wrap', fsImg, '--swap', '1M', '-o', out]);
      let complete = 0;
      let ended: { code: number | null; signal: string | null; at: number } | undefined;
      void p.ended.then((e) => (ended = e));
      const deadline = Date.now() + 120_000;
      while (!ended && Date.now() < deadline) {
        if (!complete && existsSync(out)) complete = Date.now();
        if (complete && Date.now() - complete > 10_000) break;
        await sleep(20);
      }
      if (!ended) p.child.kill('SIGKILL');
      expect(ended, `run ${i} did not exit: ${p.stderr()}`).toBeDefined();
      expect(ended!.code, p.stderr()).toBe(0);
      lags.push(ended!.at - (complete || ended!.at));
    }
    expect(lags.filter((l) => l > 10_000)).toEqual([]);
    expect(readdirSync(t.dir).filter((n) => n.includes('imgtool-tmp'))).toEqual([]);
  });
});
