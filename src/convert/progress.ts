/**
 * Progress on long work: a bar on a terminal, nothing when quiet, or one JSON
 * object per line on stderr for machines (`--progress=json`):
 *   {"event":"progress","phase":"copy","done":123,"total":456,"percent":26.97}
 */

export type ProgressMode = 'bar' | 'json' | 'none';

export interface Progress {
  /** Set the amount of work (bytes) for the current phase. */
  start(phase: string, total: number): void;
  update(done: number): void;
  finish(): void;
}

export function makeProgress(mode: ProgressMode, stream: NodeJS.WritableStream & { isTTY?: boolean } = process.stderr): Progress {
  let phase = '';
  let total = 0;
  let last = -1;
  let lastTime = 0;
  const emit = (done: number, force = false) => {
    const pct = total > 0 ? Math.min(100, (done / total) * 100) : 100;
    const now = Date.now();
    if (!force && (pct - last < 0.5 || now - lastTime < 100) && pct < 100) return;
    last = pct;
    lastTime = now;
    if (mode === 'json') {
      stream.write(JSON.stringify({ event: 'progress', phase, done, total, percent: Math.round(pct * 100) / 100 }) + '\n');
    } else if (mode === 'bar') {
      const width = 30;
      const filled = Math.round((pct / 100) * width);
      const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
      const text = `\r${phase.padEnd(8)} [${bar}] ${pct.toFixed(1).padStart(5)}%`;
      stream.write(stream.isTTY ? text : text.slice(1) + '\n');
    }
  };
  return {
    start(p, t) {
      if (mode === 'bar' && phase && phase !== p && stream.isTTY) stream.write('\n');
      phase = p;
      total = t;
      last = -1;
      lastTime = 0;
      emit(0, true);
    },
    update(done) {
      if (mode !== 'none') emit(done);
    },
    finish() {
      if (mode === 'none') return;
      if (last < 100) emit(total, true);
      if (mode === 'bar' && stream.isTTY) stream.write('\n');
      phase = '';
    },
  };
}

export const noProgress: Progress = { start() {}, update() {}, finish() {} };
