// Bundle the CLI (dist/bin/main.js, with a chunk per command loaded on demand):
// one file to load instead of a hundred small ES modules, which is most of
// imgtool's start-up time. npm packages stay external (node_modules). Source
// maps are written beside it; `--debug` turns them on for stack traces.
import { build } from 'esbuild';
import { chmodSync, rmSync } from 'node:fs';

rmSync('dist/bin', { recursive: true, force: true });
await build({
  entryPoints: { main: 'src/cli/bin.ts' },
  outdir: 'dist/bin',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'external',
  sourcemap: true,
  logLevel: 'warning',
});
chmodSync('dist/bin/main.js', 0o755);
