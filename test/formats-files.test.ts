/**
 * Files an image names (backing files, external data files), through the
 * CLI: what may be opened, how the refusals read, and that strings from the
 * image cannot forge terminal output.
 *
 * Every imgtool run here is a child process with a timeout: a FIFO that
 * blocked open() would show as a killed child (status -1), not a hung test.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, rmSync, symlinkSync, writeFileSync, mkdirSync } from 'node:fs';
import * as net from 'node:net';
import { must, qemuCompare, tempDir, type RunResult } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

const t = tempDir();
afterAll(() => t.cleanup());

/**
 * imgtool in a child process that is killed (SIGKILL: a process blocked in
 * open() may not act on SIGTERM) when it runs longer than 20 s.
 */
function bounded(args: string[]): RunResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 20_000, killSignal: 'SIGKILL' });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
const CLI = process.env.IMGTOOL_CLI ?? new URL('../dist/bin/main.js', import.meta.url).pathname;

/** An overlay (qcow2, 1 MiB) whose backing-file name is `name` (not checked when made). */
function overlay(file: string, name: string, fmt = 'raw'): string {
  must('qemu-img', ['create', '-f', 'qcow2', '-u', '-b', name, '-F', fmt, file, '1M']);
  return file;
}

function mkfifo(p: string): void {
  execFileSync('mkfifo', [p]);
}

describe('backing and data files that are not regular files or block devices', () => {
  let server: net.Server;
  beforeAll(async () => {
    mkfifo(t.path('base.fifo'));
    mkdirSync(t.path('base.dir'));
    server = net.createServer();
    await new Promise<void>((r) => server.listen(t.path('base.sock'), () => r()));
    symlinkSync('/dev/zero', t.path('base.chr'));
  });
  afterAll(() => server.close());

  for (const [name, kind, shown] of [
    ['base.fifo', 'a FIFO', t.path('base.fifo')],
    ['base.sock', 'a socket', t.path('base.sock')],
    ['base.dir', 'a directory', t.path('base.dir')],
    ['base.chr', 'a character device', '/dev/zero'],
  ] as const) {
    it(`refuses a backing file that is ${kind} (exit 4, naming it) without blocking`, () => {
      const img = overlay(t.path(`over-${name}.qcow2`), name);
      // The file is inside the image's directory (the default allowed one); --backing-dir / allows
      // /dev/zero (the symlink's target) so that the file type is what refuses it.
      const dir = name === 'base.chr' ? ['--backing-dir', '/'] : [];
      const r = bounded(['convert', '--backing', ...dir, '-O', 'raw', img, t.path('out.raw')]);
      expect(r.status).toBe(4);
      expect(r.stderr).toContain(`backing file ${shown} is ${kind}`);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    });
  }

  it('refuses an external data file that is a FIFO (exit 4) without blocking', () => {
    const img = t.path('df.qcow2');
    must('qemu-img', ['create', '-f', 'qcow2', '-o', `data_file=${t.path('df.data')}`, img, '1M']);
    rmSync(t.path('df.data'));
    mkfifo(t.path('df.data'));
    for (const cmd of [['info', '--data-file', img], ['convert', '--data-file', '-O', 'raw', img, t.path('df.raw')]]) {
      const r = bounded(cmd);
      expect(r.status).toBe(4);
      expect(r.stderr).toMatch(/data file .*df\.data is a FIFO/);
    }
  });
});

describe('wrong errors, put right', () => {
  it('--backing-dir / allows a backing file anywhere', () => {
    const base = t.path('root-base.raw');
    writeFileSync(base, pattern(1 << 20, 4));
    const img = overlay(t.path('root-over.qcow2'), base);
    const out = t.path('root.raw');
    const r = bounded(['convert', '--backing', '--backing-dir', '/', '-O', 'raw', img, out]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(qemuCompare(img, out, 'qcow2', 'raw').status).toBe(0);
  });

  it('info --data-file describes an image with an external data file (no --backing needed)', () => {
    const img = t.path('ext.qcow2');
    must('qemu-img', ['create', '-f', 'qcow2', '-o', `data_file=${t.path('ext.data')}`, img, '1M']);
    const r = bounded(['info', '--data-file', '--output', 'json', img]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)['format-specific'].data['data-file']).toBe(t.path('ext.data'));
  });

  it('a backing format imgtool does not know is invalid input (exit 3) naming the file, the field and its offset', () => {
    writeFileSync(t.path('fmt-base.raw'), Buffer.alloc(1 << 20));
    const good = readFileSync(overlay(t.path('fmt.qcow2'), 'fmt-base.raw', 'qcow2'));
    const at = good.indexOf(Buffer.from('qcow2', 'latin1'), 112);
    expect(at).toBeGreaterThan(0);
    for (const bytes of [Buffer.from('qcowX', 'latin1'), Buffer.from([0x71, 0xff, 0xfe, 0x1b, 0x0a])]) {
      const bad = Buffer.from(good);
      bytes.copy(bad, at);
      const img = t.path('fmt-bad.qcow2');
      writeFileSync(img, bad);
      const r = bounded(['convert', '--backing', '-O', 'raw', img, t.path('fmt.raw')]);
      expect(r.status, r.stderr).toBe(3);
      expect(r.stderr).toContain(img);
      expect(r.stderr).toContain(`backing format extension (0xe2792aca) at offset ${at}`);
      expect(r.stderr).not.toContain('\x1b');
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
  });
});

describe('strings from an image cannot forge terminal output', () => {
  const evil = 'b\nimgtool: all good\x1b[2K';
  let img: string;
  beforeAll(() => {
    img = overlay(t.path('evil.qcow2'), evil);
  });

  it('info (human) escapes the backing file name; JSON keeps it exact', () => {
    const r = bounded(['info', img]);
    expect(r.status).toBe(0);
    expect(r.stdout).not.toContain('\x1b');
    expect(r.stdout.split('\n').some((l) => l.startsWith('imgtool: all good'))).toBe(false);
    expect(r.stdout).toContain('backing file: b\\nimgtool: all good\\x1b[2K');
    const j = bounded(['info', '--output', 'json', img]);
    expect(JSON.parse(j.stdout)['backing-filename']).toBe(evil);
  });

  it('the errors for a backing file that is not followed, or not found, are one escaped line', () => {
    for (const args of [['convert', '-O', 'raw', img, t.path('evil.raw')], ['convert', '--backing', '-O', 'raw', img, t.path('evil.raw')]]) {
      const r = bounded(args);
      expect(r.status).not.toBe(0);
      expect(r.stderr).not.toContain('\x1b');
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain('b\\nimgtool: all good\\x1b[2K');
    }
  });
});
