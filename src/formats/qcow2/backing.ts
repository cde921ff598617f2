/**
 * `create -b` for qcow2: record the backing file's name (in the first
 * cluster, after the header extensions) and its format (the backing format
 * extension; version 3 only, as imgtool's version 2 headers carry no
 * extensions) in a new image's header.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { FORMAT, MAX_BACKING_NAME, encodeHeader, readHeader } from './header.js';

export async function recordQcow2Backing(child: BlockDevice, backing: { name: string; format?: string }): Promise<void> {
  const h = await readHeader(child);
  const len = Buffer.byteLength(backing.name, 'utf8');
  if (len === 0 || len > MAX_BACKING_NAME) {
    throw new ImageError('usage', `qcow2: a backing file name must have 1..${MAX_BACKING_NAME} bytes, not ${len}`, { format: FORMAT, value: len });
  }
  let head: Uint8Array;
  try {
    head = encodeHeader({ ...h, backingFile: backing.name, backingFormat: backing.format });
  } catch {
    throw new ImageError('usage', `qcow2: the backing file name does not fit in the header cluster (${2 ** h.clusterBits} bytes)`, { format: FORMAT });
  }
  await child.write(head, 0);
  await child.flush();
}
