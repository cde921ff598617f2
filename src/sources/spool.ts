/**
 * A stream that cannot be read in place (a pipe, an HTTP body from a server
 * without Range support, a decompressor's output) is spooled into an unlinked
 * sparse scratch file: only non-zero 4 KiB blocks are written, so holes cost
 * no disk space. The result is an ordinary seekable device every format
 * driver can open.
 */

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { nodeCrypto } from '../core/lazy.js';
import { isZero } from '../core/device.js';
import { FileDevice } from '../core/file.js';
import { ImageError } from '../core/errors.js';

export interface SpoolOptions {
  scratchDir?: string;
  /** Refuse a stream longer than this many bytes (a decompression bomb). */
  cap?: { bytes: number; why: string };
  /** Stop before the spool's data (its non-zero blocks) passes this many bytes: keep the disk from filling. */
  diskBudget?: { bytes: number; why: string };
  /** Told the bytes spooled so far. */
  progress?: (bytes: number) => void;
}

const BLOCK = 4096;

export async function spoolStream(stream: AsyncIterable<Uint8Array>, opts: SpoolOptions = {}): Promise<FileDevice> {
  const dir = opts.scratchDir ?? os.tmpdir();
  const file = path.join(dir, `.imgtool-spool-${nodeCrypto().randomBytes(6).toString('hex')}.tmp`);
  const spool = await FileDevice.open(file, { create: true });
  fs.unlinkSync(file);
  try {
    let pos = 0;
    let written = 0;
    let carry: Uint8Array = new Uint8Array(0);
    const put = async (b: Uint8Array, at: number) => {
      if (isZero(b)) return;
      written += b.length;
      if (opts.diskBudget && written > opts.diskBudget.bytes) {
        throw new ImageError('io', `spooling the stream would need more than ${opts.diskBudget.bytes} bytes of scratch space (${opts.diskBudget.why}): stopped`);
      }
      await spool.write(b, at);
    };
    for await (const chunk of stream) {
      if (opts.cap && pos + carry.length + chunk.length > opts.cap.bytes) {
        throw new ImageError('invalid-format', `the stream is longer than ${opts.cap.bytes} bytes (${opts.cap.why}): stopped`, {
          value: pos + carry.length + chunk.length,
        });
      }
      const buf = carry.length ? Buffer.concat([carry, chunk]) : chunk;
      const whole = buf.length - (buf.length % BLOCK);
      for (let off = 0; off < whole; off += BLOCK) await put(buf.subarray(off, off + BLOCK), pos + off);
      pos += whole;
      carry = Uint8Array.from(buf.subarray(whole));
      opts.progress?.(pos);
    }
    if (carry.length) {
      await put(carry, pos);
      pos += carry.length;
    }
    await spool.resize(pos);
    return spool;
  } catch (e) {
    await spool.close().catch(() => {});
    throw e;
  }
}
