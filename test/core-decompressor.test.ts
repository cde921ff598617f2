/**
 * core/decompressor.ts on its own: a host tool as a filter over an async
 * iterable (the host's xz decodes what it wrote, fed in small pieces), a
 * missing tool, a failing tool, the timeout, an input that fails, bounded
 * buffering while the consumer waits, and clean-up when the consumer stops
 * early (the tool is killed and reaped, the input iterator closed, no hang);
 * the in-process xz decoder over an async iterable, stopped early and then
 * used again.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { ImageError } from '../src/core/errors.js';
import { ToolFailed, ToolUnavailable, runFilter, xzDecompress } from '../src/core/decompressor.js';
import { all, failure } from './helpers/async.js';
import { pattern } from './helpers/devices.js';
import { peer } from './helpers/peers.js';

const xz = (data: Uint8Array, args: string[] = []): Buffer => execFileSync(peer('xz'), ['-c', '-1', '--check=crc32', ...args], { input: data, maxBuffer: 64 << 20 });

/** `data` in pieces of `size` bytes, as an async source; `state` says how far it was read and whether it was closed. */
function pieces(data: Uint8Array, size: number, state = { pulled: 0, closed: false }) {
  const gen = async function* () {
    try {
      for (let p = 0; p < data.length; p += size) {
        state.pulled++;
        yield data.subarray(p, p + size);
      }
    } finally {
      state.closed = true;
    }
  };
  return { chunks: gen(), state };
}

/** An endless source of `size`-byte chunks. */
function endless(size: number) {
  const state = { pulled: 0, closed: false };
  const gen = async function* () {
    try {
      for (;;) {
        state.pulled++;
        yield new Uint8Array(size).fill(0x41);
      }
    } finally {
      state.closed = true;
    }
  };
  return { chunks: gen(), state };
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Reads `sh -c 'echo $$; exec <cmd>'` through runFilter until the pid line and `want` more bytes came, then stops. */
async function stopEarly(cmd: string, input: AsyncIterable<Uint8Array>, want: number): Promise<number> {
  let text = '';
  let pid = 0;
  let after = 0;
  for await (const chunk of runFilter('sh', ['-c', `echo $$; exec ${cmd}`], input)) {
    if (!pid) {
      text += Buffer.from(chunk).toString('latin1');
      const nl = text.indexOf('\n');
      if (nl < 0) continue;
      pid = Number(text.slice(0, nl));
      after = text.length - nl - 1;
    } else after += chunk.length;
    if (after >= want) break;
  }
  return pid;
}

describe('runFilter', () => {
  it('decodes what the host xz wrote, fed in small pieces, and closes the input at its end', async () => {
    const data = pattern(3 << 20, 5);
    const { chunks, state } = pieces(xz(data), 4093);
    expect(Buffer.compare(await all(runFilter(peer('xz'), ['-dc'], chunks)), data)).toBe(0);
    expect(state.closed).toBe(true);
  });

  it('takes a plain array of buffers as its input', async () => {
    const data = pattern(100_000, 9);
    expect(Buffer.compare(await all(runFilter('cat', [], [data.subarray(0, 10), data.subarray(10)])), data)).toBe(0);
  });

  it('a missing tool is ToolUnavailable (an ImageError) saying it is not installed', async () => {
    const e = await failure(all(runFilter('imgtool-no-such-decompressor', ['-dc'], [new Uint8Array(10)])));
    expect(e).toBeInstanceOf(ToolUnavailable);
    expect(e).toBeInstanceOf(ImageError);
    expect((e as ToolUnavailable).missing).toBe(true);
    expect((e as Error).message).toBe("'imgtool-no-such-decompressor' is not installed");
  });

  it('a failing tool is ToolFailed with its exit status, the tail of its standard error and what it produced', async () => {
    const e = await failure(all(runFilter('sh', ['-c', 'cat >/dev/null; printf partial; echo first >&2; echo "bad data" >&2; exit 3'], [new Uint8Array(100_000)])));
    expect(e).toBeInstanceOf(ToolFailed);
    const f = e as ToolFailed;
    expect(f.exit).toMatchObject({ code: 3, produced: 7, timedOut: false });
    expect(f.message).toBe(`sh -c cat >/dev/null; printf partial; echo first >&2; echo "bad data" >&2; exit 3 failed: first\nbad data`);
    expect(f.reason).toBe('bad data');
    const quiet = await failure(all(runFilter('sh', ['-c', 'exit 2'], [])));
    expect((quiet as ToolFailed).reason).toBe('sh exit 2');
  });

  it('kills a tool that runs past the timeout', async () => {
    const e = await failure(all(runFilter('sleep', ['30'], [], { timeout: 200 })));
    expect(e).toBeInstanceOf(ToolFailed);
    expect((e as ToolFailed).exit).toMatchObject({ code: null, signal: 'SIGKILL', timedOut: true });
    expect((e as Error).message).toBe('sleep 30 failed: no result after 0.2 s');
  });

  it('an input that fails is thrown as it is, and the tool is killed', async () => {
    const boom = new Error('the source broke');
    let pid = 0;
    const input = async function* () {
      yield new Uint8Array(1000);
      await new Promise((r) => setTimeout(r, 50));
      throw boom;
    };
    const e = await failure(
      (async () => {
        for await (const chunk of runFilter('sh', ['-c', 'echo $$; exec cat'], input())) pid ||= Number(Buffer.from(chunk).toString('latin1').split('\n')[0]);
      })(),
    );
    expect(e).toBe(boom);
    expect(pid).toBeGreaterThan(0);
    expect(alive(pid)).toBe(false);
  });

  it('stopping early kills and reaps the tool and closes the input (an endless input through cat)', async () => {
    const { chunks, state } = endless(64 << 10);
    const pid = await stopEarly('cat', chunks, 1 << 20);
    expect(pid).toBeGreaterThan(0);
    expect(alive(pid)).toBe(false);
    expect(state.closed).toBe(true);
  });

  it('stopping early kills a tool that writes without end and reads nothing', async () => {
    const { chunks, state } = endless(10);
    const pid = await stopEarly('yes', chunks, 1 << 20);
    expect(alive(pid)).toBe(false);
    expect(state.closed).toBe(true);
  });

  it('reads no further ahead than the pipes hold while the consumer waits', async () => {
    const { chunks, state } = endless(64 << 10);
    const it = runFilter('cat', [], chunks)[Symbol.asyncIterator]();
    await it.next();
    // Give the feeder every chance to run ahead.
    for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 10));
    const pulled = state.pulled;
    // Kernel pipes (64 KiB each way), cat's buffer and the streams' high-water marks: a few MiB at most.
    expect(pulled * (64 << 10)).toBeLessThan(8 << 20);
    await it.return?.(undefined);
    expect(state.closed).toBe(true);
  });
});

describe('xzDecompress', () => {
  it('decodes an async iterable of small pieces and closes it', async () => {
    const data = pattern(2 << 20, 3);
    const { chunks, state } = pieces(xz(data), 777);
    expect(Buffer.compare(await all(xzDecompress(chunks)), data)).toBe(0);
    expect(state.closed).toBe(true);
  });

  it('stopping early closes the input, and the decoder is usable afterwards', async () => {
    const data = pattern(4 << 20, 4);
    const enc = xz(data);
    for (let round = 0; round < 5; round++) {
      const { chunks, state } = pieces(enc, 1000 + round * 3000);
      let got = 0;
      for await (const c of xzDecompress(chunks)) {
        got += c.length;
        if (got > 100_000 * (round + 1)) break;
      }
      expect(state.closed, `round ${round}`).toBe(true);
      expect(state.pulled, `round ${round}`).toBeLessThan(Math.ceil(enc.length / (1000 + round * 3000)));
    }
    expect(Buffer.compare(await all(xzDecompress([enc])), data)).toBe(0);
  });

  it('an input that fails is thrown as it is; a cut or corrupt stream is an xz ImageError, and the input is closed', async () => {
    const enc = xz(pattern(500_000, 8));
    const boom = new Error('the source broke');
    const input = async function* () {
      yield enc.subarray(0, 1000);
      throw boom;
    };
    expect(await failure(all(xzDecompress(input())))).toBe(boom);
    const e = await failure(all(xzDecompress(pieces(enc.subarray(0, enc.length >> 1), 4096).chunks)));
    expect(e).toBeInstanceOf(ImageError);
    expect((e as ImageError).message).toMatch(/^xz: /);
    // Corrupt data stops the decoder before the input ends (the block's check fails): the input is closed all the same.
    const bad = xz(pattern(500_000, 8), ['--block-size=64KiB']);
    bad[bad.length >> 2] ^= 0x55;
    const { chunks, state } = pieces(bad, 4096);
    expect(await failure(all(xzDecompress(chunks)))).toBeInstanceOf(ImageError);
    expect(state.closed).toBe(true);
    expect(state.pulled).toBeLessThan(Math.ceil(bad.length / 4096));
    expect(Buffer.compare(await all(xzDecompress([enc])), pattern(500_000, 8))).toBe(0);
  });
});
