/**
 * Pipes: `-` as SRC reads a raw image from standard input; `-` as DST writes
 * an image to standard output.
 *
 * Standard input redirected from a file is seekable and opened directly. A
 * real pipe is spooled into an unlinked sparse scratch file (only non-zero
 * 4 KiB blocks are written, so holes cost nothing), then converted: formats
 * like qcow2 and VDI need the virtual size and the allocation before the
 * first byte of their output, and a pipe tells neither until it ends.
 *
 * Output to a pipe needs a driver with `stream()` (raw, and formats that can
 * plan their layout in advance): the chunks are written in file order with
 * back-pressure.
 */

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../core/device.js';
import { isZero } from '../core/device.js';
import { FileDevice } from '../core/file.js';
import { ImageError, ioError } from '../core/errors.js';
import type { CreateOptions, FormatDriver } from '../formats/types.js';
import type { Progress } from './progress.js';
import { noProgress } from './progress.js';

/** Open standard input as a raw device (spooling a pipe to a sparse scratch file). */
export async function openStdin(opts: { scratchDir?: string; progress?: Progress } = {}): Promise<FileDevice> {
  const st = fs.fstatSync(0);
  if (st.isFile() || st.isBlockDevice()) return FileDevice.open('/dev/stdin');
  const dir = opts.scratchDir ?? os.tmpdir();
  const file = path.join(dir, `.imgtool-stdin-${randomBytes(6).toString('hex')}.tmp`);
  const spool = await FileDevice.open(file, { create: true });
  fs.unlinkSync(file);
  const progress = opts.progress ?? noProgress;
  progress.start('read', 0);
  let pos = 0;
  const BLOCK = 4096;
  let carry = Buffer.alloc(0);
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    let buf = carry.length ? Buffer.concat([carry, chunk]) : chunk;
    const whole = buf.length - (buf.length % BLOCK);
    for (let off = 0; off < whole; off += BLOCK) {
      const b = buf.subarray(off, off + BLOCK);
      if (!isZero(b)) await spool.write(b, pos + off);
    }
    pos += whole;
    carry = Buffer.from(buf.subarray(whole));
    buf = carry;
    progress.update(pos);
  }
  if (carry.length) {
    if (!isZero(carry)) await spool.write(carry, pos);
    pos += carry.length;
  }
  await spool.truncate(pos);
  progress.finish();
  return spool;
}

/** Write `source` as `driver`'s format to standard output. */
export async function writeToStdout(
  source: BlockDevice,
  driver: FormatDriver,
  opts: CreateOptions,
  out: NodeJS.WritableStream = process.stdout,
): Promise<number> {
  if (!driver.stream) {
    throw new ImageError(
      'unsupported',
      `${driver.name} cannot be written to a pipe: its metadata must be rewritten after the data; write to a file instead`,
      { format: driver.name },
    );
  }
  let written = 0;
  for await (const chunk of driver.stream(source, opts)) {
    written += chunk.length;
    if (!out.write(chunk)) {
      await new Promise<void>((resolve, reject) => {
        const onErr = (e: unknown) => reject(ioError(e, 'write to standard output'));
        out.once('error', onErr);
        out.once('drain', () => {
          out.off('error', onErr);
          resolve();
        });
      });
    }
  }
  return written;
}

/** The raw stream writer lives with the raw driver (src/formats must not import src/convert). */
export { rawStream } from '../formats/raw.js';
