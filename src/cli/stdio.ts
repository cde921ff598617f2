/**
 * Standard output and error for the CLI, without creating Node's
 * process.stdout/process.stderr streams until something needs a stream.
 *
 * Touching process.stdout builds a net.Socket (a pipe), a tty.WriteStream or
 * a SyncWriteStream, and loads node:net and node:stream to do it: 5-8 ms of
 * every start on this machine, a tenth of imgtool's start-up over bare Node.
 * Most commands only write a few lines of text, so text is written with
 * fs.writeSync on the descriptor. The real stream is made on first use of
 * anything else (piping image bytes to `-`, listening for events) or when a
 * synchronous write cannot go on (EAGAIN on a non-blocking pipe); from then
 * on every write goes through it, after the synchronous ones, so the order
 * holds.
 */

import * as fs from 'node:fs';
import { createRequire } from 'node:module';

/** node:tty loads node:net: only when a command asks whether it writes to a terminal. */
const isatty = (fd: number): boolean => (createRequire(import.meta.url)('node:tty') as typeof import('node:tty')).isatty(fd);

export interface LazyStdio {
  /** A WritableStream stand-in for the descriptor. */
  stream: NodeJS.WritableStream & { isTTY?: boolean };
  /** The real stream, if it was made. */
  made(): NodeJS.WriteStream | undefined;
}

/**
 * fd 1 or 2. `onEpipe` runs when the reader went away (imgtool ... | head);
 * `onMade` when the real stream is created (to attach error handlers).
 */
export function lazyStdio(fd: 1 | 2, opts: { onEpipe: () => void; onMade?: (s: NodeJS.WriteStream) => void }): LazyStdio {
  let real: NodeJS.WriteStream | undefined;
  const make = (): NodeJS.WriteStream => {
    if (!real) {
      real = fd === 1 ? process.stdout : process.stderr;
      opts.onMade?.(real);
    }
    return real;
  };
  const write = (chunk: unknown, ...rest: unknown[]): boolean => {
    const callback = rest.find((r) => typeof r === 'function') as ((e?: Error | null) => void) | undefined;
    if (!real && (typeof chunk === 'string' || chunk instanceof Uint8Array)) {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk, typeof rest[0] === 'string' ? (rest[0] as BufferEncoding) : 'utf8') : chunk;
      let done = 0;
      try {
        while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done);
        if (callback) queueMicrotask(() => callback(null));
        return true;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EPIPE') {
          opts.onEpipe();
          return false;
        }
        // EAGAIN (a non-blocking pipe) and anything else: the stream takes the rest, and its handlers judge.
        const s = make();
        return callback ? s.write(bytes.subarray(done), callback) : s.write(bytes.subarray(done));
      }
    }
    return (make().write as (...a: unknown[]) => boolean)(chunk, ...rest);
  };
  const stream = new Proxy({} as NodeJS.WritableStream & { isTTY?: boolean }, {
    get(_target, prop) {
      if (prop === 'write') return write;
      if (prop === 'isTTY' && !real) return isatty(fd);
      const s = make();
      const v = Reflect.get(s, prop, s);
      return typeof v === 'function' ? v.bind(s) : v;
    },
    set(_target, prop, value) {
      return Reflect.set(make(), prop, value);
    },
  });
  return { stream, made: () => real };
}
