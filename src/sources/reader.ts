/**
 * Reading a stream front to back in exact amounts: the parsers of
 * src/convert/sequential.ts (VMDK markers, tar headers) take n bytes at a
 * time, skip n bytes, or pass n bytes on in pieces, with the position always
 * known (for error messages naming the offset). Nothing is read ahead beyond
 * the chunk the stream last gave.
 */

import { ImageError } from '../core/errors.js';

export class StreamReader {
  private readonly it: AsyncIterator<Uint8Array>;
  private buf: Uint8Array = new Uint8Array(0);
  private ended = false;
  /** Bytes consumed so far (the offset of the next byte). */
  pos = 0;

  constructor(
    input: AsyncIterable<Uint8Array>,
    private readonly what = 'the stream',
  ) {
    this.it = input[Symbol.asyncIterator]();
  }

  /** Make at least one byte available; false at the end of the stream. */
  private async fill(): Promise<boolean> {
    while (this.buf.length === 0) {
      if (this.ended) return false;
      const r = await this.it.next();
      if (r.done) {
        this.ended = true;
        return false;
      }
      this.buf = r.value;
    }
    return true;
  }

  /** Up to `max` bytes (at least 1), or undefined at the end. The bytes are not copied: do not keep them past the next call unless copied. */
  async some(max: number): Promise<Uint8Array | undefined> {
    if (!(await this.fill())) return undefined;
    const n = Math.min(max, this.buf.length);
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    this.pos += n;
    return out;
  }

  /** Exactly `n` bytes (a fresh copy); an error naming `why` when the stream ends first. */
  async read(n: number, why: string): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const part = await this.some(n - got);
      if (!part) throw this.truncated(why, n - got);
      out.set(part, got);
      got += part.length;
    }
    return out;
  }

  /** `n` bytes in pieces (not copied), erroring when the stream ends first. */
  async *pieces(n: number, why: string): AsyncGenerator<Uint8Array> {
    let left = n;
    while (left > 0) {
      const part = await this.some(Math.min(left, 4 << 20));
      if (!part) throw this.truncated(why, left);
      left -= part.length;
      yield part;
    }
  }

  /** Skip `n` bytes. */
  async skip(n: number, why: string): Promise<void> {
    for await (const _ of this.pieces(n, why));
  }

  /** True at the end of the stream (nothing left). */
  async atEnd(): Promise<boolean> {
    return !(await this.fill());
  }

  /** The rest of the stream, unread (for a caller that spools it). */
  async *rest(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const part = await this.some(Number.MAX_SAFE_INTEGER);
      if (!part) return;
      yield part;
    }
  }

  private truncated(why: string, missing: number): ImageError {
    return new ImageError('invalid-format', `${this.what} ends at byte ${this.pos}, ${missing} bytes short of ${why}`, { offset: this.pos, value: missing });
  }
}
