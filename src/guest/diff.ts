/**
 * Unified diffs of text files (the `diff -u` format, 3 lines of context), for
 * reporting what the guest fix-ups change. Line-based, Myers' O((N+M)D)
 * shortest edit script.
 */

type Op = { kind: ' ' | '-' | '+'; line: string };

/** Split text into lines; a missing final newline is remembered on the last line. */
function lines(text: string): string[] {
  if (text === '') return [];
  const out = text.split('\n');
  if (out[out.length - 1] === '') out.pop();
  else out[out.length - 1] += '\n\\ No newline at end of file';
  return out;
}

/** Shortest edit script from a to b (Myers 1986, forward greedy with trace). */
function editScript(a: string[], b: string[]): Op[] {
  const n = a.length;
  const m = b.length;
  const max = n + m;
  const offset = max + 1;
  let v = new Int32Array(2 * max + 3);
  const trace: Int32Array[] = [];
  let done = false;
  for (let d = 0; d <= max && !done; d++) {
    trace.push(v.slice());
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[offset + k - 1]! < v[offset + k + 1]!) ? v[offset + k + 1]! : v[offset + k - 1]! + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      v[offset + k] = x;
      if (x >= n && y >= m) {
        done = true;
        break;
      }
    }
  }
  trace.push(v);
  // Backtrack.
  const ops: Op[] = [];
  let x = n;
  let y = m;
  for (let d = trace.length - 2; d >= 0 && (x > 0 || y > 0); d--) {
    const vd = trace[d]!;
    const k = x - y;
    const prevK = k === -d || (k !== d && vd[offset + k - 1]! < vd[offset + k + 1]!) ? k + 1 : k - 1;
    const prevX = d === 0 ? 0 : vd[offset + prevK]!;
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) {
      ops.push({ kind: ' ', line: a[x - 1]! });
      x--;
      y--;
    }
    if (d > 0) {
      if (x === prevX) ops.push({ kind: '+', line: b[y - 1]! });
      else ops.push({ kind: '-', line: a[x - 1]! });
    }
    x = prevX;
    y = prevY;
  }
  while (x > 0 && y > 0) {
    ops.push({ kind: ' ', line: a[x - 1]! });
    x--;
    y--;
  }
  return ops.reverse();
}

/**
 * `diff -u` of two texts. `null` means the file does not exist (before: a new
 * file; after: a removed one). Returns '' when nothing changed.
 */
export function unifiedDiff(path: string, before: string | null, after: string | null, context = 3): string {
  if (before === after) return '';
  const a = lines(before ?? '');
  const b = lines(after ?? '');
  const ops = editScript(a, b);
  const rel = path.replace(/^\/+/, '');
  const header = [`--- ${before === null ? '/dev/null' : `a/${rel}`}`, `+++ ${after === null ? '/dev/null' : `b/${rel}`}`];
  const out: string[] = [];
  // Group changes into hunks separated by more than 2*context unchanged lines.
  let i = 0;
  while (i < ops.length) {
    while (i < ops.length && ops[i]!.kind === ' ') i++;
    if (i >= ops.length) break;
    let start = Math.max(0, i - context);
    let end = i;
    // Extend while the next change is within 2*context.
    for (;;) {
      while (end < ops.length && ops[end]!.kind !== ' ') end++;
      let j = end;
      while (j < ops.length && ops[j]!.kind === ' ') j++;
      if (j < ops.length && j - end <= 2 * context) end = j;
      else {
        end = Math.min(ops.length, end + context);
        break;
      }
    }
    // Line numbers at the hunk start.
    let aLine = 1;
    let bLine = 1;
    for (let k = 0; k < start; k++) {
      if (ops[k]!.kind !== '+') aLine++;
      if (ops[k]!.kind !== '-') bLine++;
    }
    const hunk = ops.slice(start, end);
    const aLen = hunk.filter((o) => o.kind !== '+').length;
    const bLen = hunk.filter((o) => o.kind !== '-').length;
    const range = (line: number, len: number) => `${len === 0 ? line - 1 : line}${len === 1 ? '' : `,${len}`}`;
    out.push(`@@ -${range(aLine, aLen)} +${range(bLine, bLen)} @@`);
    for (const o of hunk) out.push(o.kind + o.line);
    i = end;
    start = end;
  }
  return [...header, ...out].join('\n') + '\n';
}
