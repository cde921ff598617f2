/**
 * What an e2fsprogs tool prints, on its way to the caller: split into lines,
 * and watched for e2fsck's one endless loop.
 *
 * e2fsck restarts from the beginning when a repair changed the filesystem's
 * layout ("Restarting e2fsck from the beginning..."). When it cannot make
 * that repair (always with -n; with -y on some damage), every restart prints
 * exactly the same messages as the one before, forever: e2fsprogs' own test
 * images f_illitable_flexbg and f_misstable do this with the host's e2fsck
 * too, at megabytes per second. A legitimate run restarts at most a few
 * times, each time with different messages (e2fsprogs' expected outputs
 * show at most two restarts), so two restarts in a row that print the same
 * lines are already a loop; imgtool
 *   - prints the first few identical rounds, then holds the identical ones
 *     back and prints one "... repeated N more times" line at the end, and
 *   - stops the tool once `maxIdenticalRounds` rounds in a row were the same.
 *
 * Identical messages are counted per round and not per line on purpose:
 * legitimate runs repeat single messages thousands of times (e2fsck prints
 * "Group 1 block(s) in use but group is marked BLOCK_UNINIT / Fix? no" 4,892
 * times for f_uninit_set_inode_not_set, and "Suppress messages? no" 685
 * times, spread out, for f_resize_inode_meta_bg).
 */

/** The line that ends a round. */
export const RESTART_LINE = 'Restarting e2fsck from the beginning...';
/** Identical rounds printed before they are held back. */
export const SHOWN_IDENTICAL_ROUNDS = 1;
/** Identical rounds in a row after which the tool is stopped. */
export const MAX_IDENTICAL_ROUNDS = 100;
/** A round longer than this is not compared (and never held back): bounds the memory used. */
const MAX_ROUND_BYTES = 1 << 20;

type Fd = 1 | 2;
interface Line {
  fd: Fd;
  text: string;
}

export interface LoopInfo {
  /** Identical rounds in a row when the tool was stopped. */
  rounds: number;
  /** The last few lines of the repeated round, for the error message. */
  sample: string;
}

export class ToolOutput {
  private readonly partial: Record<Fd, string> = { 1: '', 2: '' };
  /** The round being printed, and the one before (undefined: too long to compare). */
  private cur: Line[] | undefined = [];
  private curBytes = 0;
  private prev: Line[] | undefined;
  /** Lines of the current round not printed yet: so far the same as the previous round's. */
  private held: Line[] = [];
  private holding = false;
  private identical = 0;
  private hidden = 0;
  private ended = false;
  /** Set when the tool loops; the runner stops it. */
  loop: LoopInfo | undefined;

  constructor(
    private readonly emit: (fd: Fd, text: string) => void,
    private readonly maxIdenticalRounds = MAX_IDENTICAL_ROUNDS,
  ) {}

  /** Text the tool wrote on fd 1 or 2 (decoded, any chunking). */
  write(fd: Fd, text: string): void {
    let s = this.partial[fd] + text;
    let nl: number;
    while ((nl = s.indexOf('\n')) >= 0 && !this.loop) {
      this.line({ fd, text: s.slice(0, nl + 1) });
      s = s.slice(nl + 1);
    }
    this.partial[fd] = this.loop ? '' : s;
    // A line that never ends (no newline in 64 KiB) is printed as it is.
    if (this.partial[fd].length > 65536) {
      this.line({ fd, text: this.partial[fd] });
      this.partial[fd] = '';
    }
  }

  /** The tool has finished (or was stopped): print what is held back, unfinished lines, and the summary. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.release();
    for (const fd of [1, 2] as const) {
      if (this.partial[fd]) this.emit(fd, this.partial[fd]);
      this.partial[fd] = '';
    }
  }

  private line(l: Line): void {
    if (this.cur) {
      this.cur.push(l);
      this.curBytes += l.text.length;
      if (this.curBytes > MAX_ROUND_BYTES) this.cur = undefined;
    }
    const n = this.cur ? this.cur.length : 0;
    const matches = this.cur !== undefined && this.prev !== undefined && n <= this.prev.length && sameLine(this.prev[n - 1]!, l);
    if (this.holding && matches) this.held.push(l);
    else {
      this.release();
      this.emit(l.fd, l.text);
    }
    if (l.text.trimEnd() === RESTART_LINE) this.endRound();
  }

  private endRound(): void {
    const same = this.cur !== undefined && this.prev !== undefined && this.cur.length === this.prev.length && this.cur.every((l, i) => sameLine(l, this.prev![i]!));
    if (same && this.holding) {
      this.hidden++;
      this.held = [];
    } else this.release();
    this.identical = same ? this.identical + 1 : 0;
    if (this.identical >= this.maxIdenticalRounds) {
      this.loop = { rounds: this.identical, sample: this.cur!.slice(-4).map((l) => l.text.trim()).filter(Boolean).join(' / ') };
    }
    this.prev = this.cur;
    this.cur = [];
    this.curBytes = 0;
    this.holding = this.identical >= SHOWN_IDENTICAL_ROUNDS && this.prev !== undefined;
  }

  /** Print the held lines (the round turned out different, or the tool ended), after a line for the hidden rounds. */
  private release(): void {
    if (this.hidden > 0) {
      this.emit(1, `[imgtool: ... the round above repeated ${this.hidden} more time${this.hidden === 1 ? '' : 's'} (e2fsck restarted with the same messages each time)]\n`);
      this.hidden = 0;
    }
    for (const h of this.held) this.emit(h.fd, h.text);
    this.held = [];
    this.holding = false;
  }
}

function sameLine(a: Line, b: Line): boolean {
  return a.fd === b.fd && a.text === b.text;
}
