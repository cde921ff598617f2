/**
 * Imports point down the layers, never up:
 *
 *   cli, bench, fuzz  →  wrap  →  guest, convert, partition, maintenance
 *                     →  formats, fs  →  core, sources
 *
 * (Imports inside a layer are fine.) A file importing from a higher layer
 * fails this test with the file, the line and the import.
 */
import { describe, expect, it } from 'vitest';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tempDir } from './helpers/peers.js';
import { dirname, join, relative, resolve, sep } from 'node:path';

const SRC = new URL('../src', import.meta.url).pathname;

const LAYER: Record<string, number> = {
  core: 0,
  sources: 0, // devices for input bytes (files, HTTP, decompression, spools): formats/index opens through them
  formats: 1,
  fs: 1,
  guest: 2,
  convert: 2,
  partition: 2,
  maintenance: 2, // create, map, compare, measure, snapshots: library beside convert
  wrap: 3,
  cli: 4,
  bench: 4,
  fuzz: 4,
};

function tsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? tsFiles(p) : p.endsWith('.ts') ? [p] : [];
  });
}


interface Violation {
  file: string;
  line: number;
  target: string;
}

/** Imports under `root` (a tree laid out like src/) that point to a higher layer. */
function upwardImports(root = SRC): Violation[] {
  const area = (file: string): string => relative(root, file).split(sep)[0]!;
  const out: Violation[] = [];
  for (const file of tsFiles(root)) {
    const from = area(file);
    const lines = readFileSync(file, 'utf8').split('\n');
    lines.forEach((text, i) => {
      for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)'(\.[^']+)'/g)) {
        const target = resolve(dirname(file), m[1]!);
        if (!target.startsWith(root + sep)) continue;
        const to = area(target);
        if (LAYER[to]! > LAYER[from]!) out.push({ file: relative(root, file), line: i + 1, target: relative(root, target) });
      }
    });
  }
  return out;
}

describe('layering', () => {
  it('every directory under src has a layer', () => {
    const dirs = readdirSync(SRC).filter((n) => statSync(join(SRC, n)).isDirectory());
    expect(dirs.filter((d) => !(d in LAYER))).toEqual([]);
  });

  it('no import runs up the layers (cli → wrap → guest/convert/partition → formats/fs → core)', () => {
    const v = upwardImports().map((x) => `src/${x.file}:${x.line} imports src/${x.target}`);
    expect(v).toEqual([]);
  });

  it('catches an upward import and lets downward and same-layer ones pass (the check itself works)', () => {
    const t = tempDir('imgtool-layering-');
    try {
      const put = (f: string, text: string) => {
        mkdirSync(dirname(join(t.dir, f)), { recursive: true });
        writeFileSync(join(t.dir, f), text);
      };
      put('core/a.ts', "import { x } from '../cli/main.js';\n");
      put('fs/b.ts', "import { y } from '../formats/index.js';\nimport { z } from '../core/a.js';\n");
      put('formats/c.ts', "export { rawStream } from '../convert/stream.js';\nconst m = await import('../wrap/wrap.js');\n");
      put('cli/main.ts', "import { w } from '../wrap/wrap.js';\n");
      expect(upwardImports(t.dir).map((v) => `${v.file}:${v.line}`).sort()).toEqual(['core/a.ts:1', 'formats/c.ts:1', 'formats/c.ts:2']);
    } finally {
      t.cleanup();
    }
  });

});
