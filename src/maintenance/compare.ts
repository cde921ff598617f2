/**
 * Compare two images' contents as `qemu-img compare` does: walk both
 * allocation maps, skip ranges both sides report as zero, read the rest.
 * A larger image compares equal only if its excess reads as zero, unless
 * strict, where a size or allocation difference is a mismatch too.
 * Mismatch offsets are reported at the start of the first differing
 * 512-byte sector, as qemu-img reports them.
 */

import type { Image } from '../formats/types.js';
import type { Progress } from '../convert/progress.js';
import { noProgress } from '../convert/progress.js';
import { type ResolvedRun, resolveAt } from './map.js';

export type CompareOutcome =
  | { kind: 'identical' }
  | { kind: 'content'; offset: number }
  /** Strict mode: the sizes differ. */
  | { kind: 'size' }
  /** Strict mode: the allocation status differs at `offset`. */
  | { kind: 'status'; offset: number };

export interface CompareResult {
  outcome: CompareOutcome;
  /** The sizes differ and the common part matched (qemu-img then warns, before checking the excess). */
  sizeMismatch: boolean;
}

const CHUNK = 1 << 20;
const SECTOR = 512;

/** Index of the first differing byte, or -1. */
function firstDifference(a: Uint8Array, b: Uint8Array | undefined): number {
  if (b) {
    if (Buffer.compare(a, b) === 0) return -1;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
    return -1;
  }
  for (let i = 0; i < a.length; i++) if (a[i] !== 0) return i;
  return -1;
}

const sameStatus = (x: ResolvedRun, y: ResolvedRun) =>
  x.present === y.present && x.zero === y.zero && x.data === y.data && (x.offset === undefined) === (y.offset === undefined);

async function readRun(img: Image, run: ResolvedRun, pos: number, n: number): Promise<Uint8Array | undefined> {
  if (run.zero) return undefined;
  const buf = new Uint8Array(n);
  await img.read(buf, pos);
  return buf;
}

export async function compareImages(a: Image, b: Image, opts: { strict?: boolean; progress?: Progress } = {}): Promise<CompareResult> {
  const progress = opts.progress ?? noProgress;
  const sizeMismatch = a.size !== b.size;
  if (opts.strict && sizeMismatch) return { outcome: { kind: 'size' }, sizeMismatch };
  const common = Math.min(a.size, b.size);
  const total = Math.max(a.size, b.size);
  progress.start('compare', total);
  try {
    for (let pos = 0; pos < common; ) {
      const ra = await resolveAt(a, pos, Math.min(common - pos, CHUNK));
      const rb = await resolveAt(b, pos, ra.length);
      if (opts.strict && !sameStatus(ra, rb)) return { outcome: { kind: 'status', offset: pos }, sizeMismatch: false };
      const n = Math.min(ra.length, rb.length);
      if (!(ra.zero && rb.zero)) {
        const da = await readRun(a, ra, pos, n);
        const db = await readRun(b, rb, pos, n);
        const i = da ? firstDifference(da, db) : db ? firstDifference(db, undefined) : -1;
        if (i >= 0) return { outcome: { kind: 'content', offset: Math.floor((pos + i) / SECTOR) * SECTOR }, sizeMismatch: false };
      }
      pos += n;
      progress.update(pos);
    }
    const longer = a.size > b.size ? a : b;
    for (let pos = common; pos < longer.size; ) {
      const r = await resolveAt(longer, pos, Math.min(longer.size - pos, CHUNK));
      const d = await readRun(longer, r, pos, r.length);
      const i = d ? firstDifference(d, undefined) : -1;
      if (i >= 0) return { outcome: { kind: 'content', offset: Math.floor((pos + i) / SECTOR) * SECTOR }, sizeMismatch };
      pos += r.length;
      progress.update(pos);
    }
  } finally {
    progress.finish();
  }
  return { outcome: { kind: 'identical' }, sizeMismatch };
}
