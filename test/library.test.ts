/**
 * imgtool as a library (README "Use from Node"): the README's example runs
 * as written against the built package, and `npm pack` gives a tarball that
 * installs into an empty directory with a working `npx imgtool` and
 * `import { convert } from 'imgtool'`, WebAssembly e2fsprogs included.
 * Judged by qemu-img compare and check.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { must, mustAsync, qemuCompare, run, runAsync, tempDir } from './helpers/peers.js';

const ROOT = new URL('..', import.meta.url).pathname;
const t = tempDir('imgtool-lib-');
afterAll(() => t.cleanup());

/** The code block that follows the `<!-- library-example -->` marker in README.md. */
function readmeExample(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const m = /<!-- library-example -->\s*```js\n([\s\S]*?)```/.exec(readme);
  if (!m) throw new Error('README.md has no library example after <!-- library-example -->');
  return m[1]!;
}

function checkExampleOutputs(dir: string, stdout: string): void {
  expect(stdout).toMatch(/^vdi 67108864$/m);
  expect(stdout).toMatch(/^data 1048576 1048576$/m); // VDI allocates 1 MiB blocks
  expect(stdout).toMatch(/^io$/m); // the ImageError's kind for a missing file
  expect(qemuCompare(join(dir, 'demo.qcow2'), join(dir, 'demo.vdi'), 'qcow2', 'vdi').status).toBe(0);
  expect(run('qemu-img', ['check', join(dir, 'demo.vdi')]).status).toBe(0);
}

describe('the library', () => {
  it("runs the README's example as written (the package imports itself by name)", async () => {
    // Inside the package's own tree, `import ... from 'imgtool'` resolves through package.json "exports".
    const dir = join(ROOT, 'test', '.cache', 'readme-example');
    mkdirSync(dir, { recursive: true });
    for (const f of readdirSync(dir)) if (f.startsWith('demo.')) run('rm', ['-f', join(dir, f)]);
    writeFileSync(join(dir, 'example.mjs'), readmeExample());
    const r = await runAsync('sh', ['-c', `cd ${dir} && ${process.execPath} example.mjs`]);
    expect(r.status, r.stderr).toBe(0);
    checkExampleOutputs(dir, r.stdout);
  });

  it('npm pack installs into an empty directory: npx imgtool, the library and the WebAssembly fsck work', async () => {
    const packDir = t.path('pack');
    mkdirSync(packDir);
    const packed = JSON.parse(await mustAsync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', packDir, ROOT], { timeout: 300_000 }));
    const files: string[] = packed[0].files.map((f: { path: string }) => f.path);
    expect(files).toContain('dist/index.js');
    expect(files).toContain('dist/index.d.ts');
    expect(files).toContain('dist/bin/main.js');
    expect(files.filter((f) => f.startsWith('wasm/build/') && f.endsWith('.wasm')).sort()).toEqual(['wasm/build/e2fsck.wasm', 'wasm/build/mke2fs.wasm', 'wasm/build/resize2fs.wasm']);
    const app = t.path('app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', type: 'module', private: true }));
    await mustAsync('sh', ['-c', `cd ${app} && npm install --no-audit --no-fund ${join(packDir, packed[0].filename)}`], { timeout: 600_000 });
    const version = await runAsync('sh', ['-c', `cd ${app} && npx imgtool --version`]);
    expect(version.status, version.stderr).toBe(0);
    expect(version.stdout).toMatch(/^imgtool \d+\.\d+\.\d+/);
    writeFileSync(join(app, 'example.mjs'), readmeExample());
    const ex = await runAsync('sh', ['-c', `cd ${app} && node example.mjs`]);
    expect(ex.status, ex.stderr).toBe(0);
    checkExampleOutputs(app, ex.stdout);
    // The WebAssembly e2fsck ships in the package: fsck a filesystem with the installed CLI.
    must('mke2fs', ['-q', '-F', '-t', 'ext4', join(app, 'fs.img'), '16M']);
    const f = await runAsync('sh', ['-c', `cd ${app} && npx imgtool fsck -n fs.img`]);
    expect(f.status, f.stdout + f.stderr).toBe(0);
  });
});
