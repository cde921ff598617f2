/**
 * The parent side of the worker: one child process at a time, reused across
 * cases, started with a heap cap. Each case runs under a watchdog (no reply in
 * time: killed, `hang`) and a resident-memory cap polled from /proc (over it:
 * killed, `memory`). A worker that dies without replying is a `crash`, or
 * `memory` when V8 says it ran out of heap.
 */

import { type ChildProcess, fork } from 'node:child_process';
import * as fs from 'node:fs';
import type { CaseReply, CaseRequest, ErrorReport } from './protocol.js';

export interface RunnerOptions {
  workerPath: string;
  /** V8 old-space cap for the worker (MiB). */
  heapMiB: number;
  /** Resident-memory cap (MiB): polled while a case runs, and the case's peak after. */
  rssMiB: number;
  /** Watchdog per case (ms). */
  timeoutMs: number;
}

export type RunOutcome = CaseReply['outcome'] | 'hang' | 'memory';

export interface RunResult {
  outcome: RunOutcome;
  reply?: CaseReply;
  error?: ErrorReport;
}

function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

const OOM = /heap out of memory|Allocation failed|Reached heap limit|Array buffer allocation failed|Cannot allocate memory/i;

export class Runner {
  private child: ChildProcess | undefined;
  private stderr = '';
  private pending: ((r: RunResult) => void) | undefined;
  private ready: Promise<void> | undefined;
  /** Workers started (1 + restarts after hangs, memory kills and deaths). */
  starts = 0;
  /** Crashes reported after their case had already replied. */
  private late: CaseReply[] = [];
  private expected = -2;

  constructor(private readonly opts: RunnerOptions) {}

  private start(): Promise<void> {
    this.starts++;
    this.stderr = '';
    const child = fork(this.opts.workerPath, [], {
      execArgv: [`--max-old-space-size=${this.opts.heapMiB}`],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      serialization: 'json',
    });
    this.child = child;
    child.stderr!.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-8192);
    });
    return new Promise((resolve, reject) => {
      let started = false;
      child.on('message', (m: CaseReply) => {
        if (m.id === -1) {
          started = true;
          resolve();
          return;
        }
        if (m.late) {
          this.late.push(m);
          return;
        }
        if (m.id !== this.expected) return; // a second answer for a case already settled
        const p = this.pending;
        this.pending = undefined;
        p?.({ outcome: m.outcome, reply: m, error: m.error });
      });
      child.on('exit', (code, signal) => {
        if (this.child === child) {
          this.child = undefined;
          this.ready = undefined;
        }
        if (!started) reject(new Error(`fuzz worker did not start (exit ${code} ${signal}): ${this.stderr}`));
        const p = this.pending;
        this.pending = undefined;
        if (p) {
          const text = `worker died (exit ${code}, signal ${signal}): ${this.stderr.trim().split('\n').slice(-6).join(' | ')}`;
          p({ outcome: OOM.test(this.stderr) ? 'memory' : 'crash', error: { name: 'WorkerDeath', message: text } });
        }
      });
    });
  }

  private kill(): void {
    const c = this.child;
    this.child = undefined;
    this.ready = undefined;
    c?.kill('SIGKILL');
  }

  async run(req: CaseRequest): Promise<RunResult> {
    if (!this.child) this.ready = this.start();
    await this.ready;
    const child = this.child!;
    const capBytes = this.opts.rssMiB * 1024 * 1024;
    return new Promise<RunResult>((resolve) => {
      let poll: NodeJS.Timeout | undefined;
      const finish = (r: RunResult) => {
        clearTimeout(timer);
        clearInterval(poll);
        this.pending = undefined;
        if (r.outcome !== 'memory' && r.reply && r.reply.peakRss > capBytes) {
          r = { ...r, outcome: 'memory', error: { name: 'MemoryCap', message: `peak RSS ${r.reply.peakRss} bytes is over the cap of ${capBytes}` } };
        }
        resolve(r);
      };
      const timer = setTimeout(() => {
        this.kill();
        finish({ outcome: 'hang', error: { name: 'Watchdog', message: `no result after ${this.opts.timeoutMs} ms: worker killed` } });
      }, this.opts.timeoutMs);
      poll = setInterval(() => {
        const rss = child.pid ? rssOf(child.pid) : 0;
        if (rss > capBytes) {
          this.kill();
          finish({ outcome: 'memory', error: { name: 'MemoryCap', message: `RSS ${rss} bytes is over the cap of ${capBytes}: worker killed` } });
        }
      }, 50);
      this.pending = finish;
      this.expected = req.id;
      child.send(req);
    });
  }

  /** Late crashes since the last call (each names the case it followed). */
  takeLate(): CaseReply[] {
    const l = this.late;
    this.late = [];
    return l;
  }

  close(): void {
    const c = this.child;
    this.child = undefined;
    c?.disconnect();
    c?.kill('SIGTERM');
  }
}
