/**
 * convert and info through the real CLI: outputs judged by qemu-img, inputs
 * untouched, outputs atomic (no partial file after an error or a signal).
 */
import { describe, expect, it, afterAll } from 'vitest';
import { readFileSync, writeFileSync, existsSync, readdirSync, openSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { imgtool, must, qemuCompare, qemuInfo, sha256File, tempDir } from './helpers/peers.js';
import { pattern } from './helpers/devices.js';

const t = tempDir();
afterAll(() => t.cleanup());

/** A sparse raw file with patterned data at both ends and in the middle. */
function sparseRaw(name: string, size: number): string {
  const p = t.path(name);
  const fd = openSync(p, 'w');
  ftruncateSync(fd, size);
  writeSync(fd, pattern(70_000, 1), 0, 70_000, 0);
  writeSync(fd, pattern(5000, 2), 0, 5000, Math.floor(size / 2) + 123);
  writeSync(fd, pattern(4096, 3), 0, 4096, size - 4096);
  closeSync(fd);
  return p;
}

describe('imgtool convert (raw)', () => {
  it('writes a sparse raw copy that qemu-img finds identical, leaving the input unchanged', () => {
    const src = sparseRaw('a.img', 64 << 20);
    const before = sha256File(src);
    const dst = t.path('a-copy.raw');
    const r = imgtool(['convert', '-O', 'raw', src, dst]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(qemuCompare(src, dst, 'raw', 'raw').status).toBe(0);
    expect(sha256File(src)).toBe(before);
    // Holes stay holes: far less than the virtual size is allocated.
    expect(qemuInfo(dst)['actual-size'] as number).toBeLessThan(1 << 20);
  });

  it('refuses to overwrite an existing output without --force, and overwrites with it', () => {
    const src = sparseRaw('b.img', 8 << 20);
    const dst = t.path('b-out.img');
    writeFileSync(dst, 'keep me');
    const r = imgtool(['convert', src, dst]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/exists: use --force/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    const f = imgtool(['convert', '--force', src, dst]);
    expect(f.status).toBe(0);
    expect(qemuCompare(src, dst).status).toBe(0);
  });

  it('refuses an output that is the input, even through a link', () => {
    const src = sparseRaw('c.img', 1 << 20);
    const before = sha256File(src);
    must('ln', ['-s', src, t.path('c-link.img')]);
    const r = imgtool(['convert', '--force', src, t.path('c-link.img')]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/is the input/);
    expect(sha256File(src)).toBe(before);
  });

  it('fails with one clear line and no output for a missing input or an unknown format', () => {
    const r = imgtool(['convert', t.path('nope.img'), t.path('x.raw')]);
    expect(r.status).toBe(5);
    expect(r.stderr).toMatch(/^imgtool: .*ENOENT/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    const u = imgtool(['convert', '-O', 'vmdk9', sparseRaw('d.img', 1 << 20), t.path('d.out')]);
    expect(u.status).toBe(2);
    expect(u.stderr).toMatch(/unknown format 'vmdk9'/);
    expect(existsSync(t.path('d.out'))).toBe(false);
  });

  it('leaves no partial output behind when interrupted with SIGINT', async () => {
    const src = t.path('big.img');
    // Fully allocated data so the copy takes a while.
    const fd = openSync(src, 'w');
    const chunk = pattern(1 << 20, 5);
    for (let i = 0; i < 256; i++) writeSync(fd, chunk, 0, chunk.length, i << 20);
    closeSync(fd);
    const dst = t.path('big-out.raw');
    const cli = new URL('../dist/bin/main.js', import.meta.url).pathname;
    const child = spawn(process.execPath, [cli, 'convert', '-O', 'raw', '-S', '0', src, dst]);
    // Wait until the temporary output exists, then interrupt.
    const started = Date.now();
    while (!readdirSync(t.dir).some((n) => n.includes('big-out.raw')) && Date.now() - started < 20_000) {
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGINT');
    const [code, signal] = await new Promise<[number | null, string | null]>((res) => child.on('exit', (c, s) => res([c, s])));
    if (code === 0) {
      // The copy won the race: then the output must be complete.
      expect(qemuCompare(src, dst).status).toBe(0);
    } else {
      // It dies by the signal itself after clean-up (a shell reports 130).
      expect(signal).toBe('SIGINT');
      expect(readdirSync(t.dir).filter((n) => n.includes('big-out.raw'))).toEqual([]);
    }
  });

  it('prints help for every command that lists each option', () => {
    const r = imgtool(['convert', '--help']);
    expect(r.status).toBe(0);
    for (const o of ['--format', '--output-format', '--options', '--compress', '--sparse-size', '--force', '--progress']) {
      expect(r.stdout).toContain(o);
    }
    const top = imgtool(['--help']);
    expect(top.stdout).toMatch(/convert/);
    expect(top.stdout).toMatch(/info/);
  });

  it('reports progress as JSON lines with --progress=json', () => {
    const src = sparseRaw('e.img', 16 << 20);
    const r = imgtool(['convert', '--progress=json', '-O', 'raw', src, t.path('e.out')]);
    expect(r.status).toBe(0);
    const events = r.stderr.trim().split('\n').map((l) => JSON.parse(l));
    expect(events.length).toBeGreaterThan(0);
    expect(events[events.length - 1]).toMatchObject({ event: 'progress', percent: 100 });
  });
});

describe('imgtool convert with pipes', () => {
  it('reads a raw image from a pipe on standard input, keeping holes as holes', () => {
    const src = sparseRaw('p.img', 12 << 20);
    const dst = t.path('p-out.img');
    const r = imgtool(['convert', '-', dst], { input: readFileSync(src) });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(qemuCompare(src, dst, 'raw', 'raw').status).toBe(0);
    expect(qemuInfo(dst)['actual-size'] as number).toBeLessThan(1 << 20);
  });

  it('writes raw to standard output', () => {
    const src = sparseRaw('q.img', 5 << 20);
    const r = spawnSync(process.execPath, [new URL('../dist/bin/main.js', import.meta.url).pathname, 'convert', src, '-'], { maxBuffer: 64 << 20 });
    expect(r.status).toBe(0);
    expect(Buffer.compare(r.stdout, readFileSync(src))).toBe(0);
  });
});

describe('imgtool info', () => {
  it('agrees with qemu-img info on a raw image', () => {
    const src = sparseRaw('f.img', 3 << 20);
    const ours = JSON.parse(imgtool(['info', '--output', 'json', src]).stdout);
    const theirs = qemuInfo(src);
    for (const k of ['format', 'virtual-size', 'actual-size']) expect(ours[k]).toEqual(theirs[k]);
  });
});

describe('help', () => {
  it('describes every option of every command', async () => {
    const { loadAllCommands } = await import('../src/cli/commands/index.js');
    const COMMANDS = await loadAllCommands();
    const top = imgtool(['--help']).stdout;
    for (const c of COMMANDS) {
      expect(top).toContain(c.name);
      const r = imgtool([...c.name.split(' '), '--help']);
      expect(r.status, c.name).toBe(0);
      expect(r.stdout).toContain(`usage: imgtool ${c.name}`);
      for (const o of c.options) {
        expect(r.stdout, `${c.name} --${o.name}`).toContain(`--${o.name}`);
        expect(o.description.length).toBeGreaterThan(5);
      }
    }
  });
});
