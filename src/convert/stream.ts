/**
 * Pipes: `-` as DST writes an image to standard output. (`-` as SRC is
 * src/sources: a file redirect is read in place, a pipe is spooled into a
 * sparse scratch file, a compressed stream is decompressed on the way.)
 *
 * Output to a pipe needs a driver with `stream()` (raw, and formats that can
 * plan their layout in advance): the chunks are written in file order with
 * back-pressure.
 */

import type { BlockDevice } from '../core/device.js';
import { ImageError, ioError } from '../core/errors.js';
import type { CreateOptions, FormatDriver } from '../formats/types.js';
import type { Progress } from './progress.js';
import { noProgress } from './progress.js';

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
