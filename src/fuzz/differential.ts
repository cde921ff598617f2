/**
 * The differential slice: qemu-img converts the same mutated image to raw
 * and its bytes are compared with imgtool's in-process read.
 *
 * qemu-img never opens a file by a name taken from the image: the backing
 * file is always given explicitly (`"backing": null`, or the seed's own
 * backing file), targets veto images that would make qemu open anything else
 * (qcow2 external data files), the output size is capped with `ulimit -f`,
 * and qemu-img is killed after a timeout.
 */

import * as fs from 'node:fs';
import type { BackingSpec } from './types.js';
import { runTool } from './seeds.js';

export type DiffOutcome =
  | 'same' //            both read it, same bytes
  | 'differs' //         both read it, different bytes: a finding
  | 'known-divergence' // different bytes after a mutation of a field the two tools read differently on purpose
  | 'size-differs' //    both read it, different virtual sizes (a note)
  | 'imgtool-rejects' // qemu-img reads what imgtool refuses (a note: a needless refusal?)
  | 'qemu-rejects' //    imgtool reads what qemu-img refuses (a note)
  | 'both-reject'
  | 'qemu-timeout'
  | 'skipped';

export const DIFF_OUTCOMES: readonly DiffOutcome[] = ['same', 'differs', 'known-divergence', 'size-differs', 'imgtool-rejects', 'qemu-rejects', 'both-reject', 'qemu-timeout', 'skipped'];

export interface QemuOptions {
  qemuImg: string;
  timeoutMs: number;
  /** Largest output file qemu-img may write (bytes). */
  maxOutput: number;
  cwd: string;
}

/** The json: filename that opens `file` with `format`, with the backing file pinned (or none). */
export function qemuSpec(file: string, format: string, backing: BackingSpec | null | undefined): string {
  const spec: Record<string, unknown> = { driver: format, file: { driver: 'file', filename: file, locking: 'off' } };
  if (backing === null) spec.backing = null;
  else if (backing) {
    const b: Record<string, unknown> = { driver: backing.format, file: { driver: 'file', filename: backing.path, locking: 'off' } };
    if (backing.format !== 'raw') b.backing = null;
    spec.backing = b;
  }
  return `json:${JSON.stringify(spec)}`;
}

export interface QemuResult {
  ok: boolean;
  timedOut: boolean;
  message: string;
}

/** `qemu-img convert -U -O raw` of one image into `out`, bounded in time and output size. */
export async function qemuToRaw(o: QemuOptions, spec: string, out: string): Promise<QemuResult> {
  fs.rmSync(out, { force: true });
  const blocks = Math.ceil(o.maxOutput / 512);
  // dash's ulimit -f counts 512-byte blocks; a bigger output gets SIGXFSZ.
  const r = await runTool('sh', ['-c', `ulimit -f ${blocks} && exec "$0" convert -U -O raw "$1" "$2"`, o.qemuImg, spec, out], {
    timeoutMs: o.timeoutMs,
    cwd: o.cwd,
  });
  return { ok: r.status === 0 && !r.timedOut, timedOut: r.timedOut, message: r.stderr.trim().split('\n')[0] ?? '' };
}

/** First differing byte of two files' common prefix, or -1; and whether the sizes match. */
export function compareFiles(a: string, b: string): { firstDiff: number; sizeA: number; sizeB: number } {
  const x = fs.readFileSync(a);
  const y = fs.readFileSync(b);
  const n = Math.min(x.length, y.length);
  let firstDiff = -1;
  if (Buffer.compare(x.subarray(0, n), y.subarray(0, n)) !== 0) {
    const step = 4096;
    for (let pos = 0; pos < n && firstDiff < 0; pos += step) {
      const e = Math.min(n, pos + step);
      if (Buffer.compare(x.subarray(pos, e), y.subarray(pos, e)) !== 0) {
        for (let i = pos; i < e; i++) if (x[i] !== y[i]) { firstDiff = i; break; }
      }
    }
  }
  return { firstDiff, sizeA: x.length, sizeB: y.length };
}

/** Are two files byte-identical (sizes included)? */
export function sameFiles(a: string, b: string): boolean {
  const c = compareFiles(a, b);
  return c.firstDiff < 0 && c.sizeA === c.sizeB;
}
