/**
 * A VDI image written front to back, for outputs that cannot seek (a pipe).
 *
 * Spec and layout as in image.ts (VirtualBox VDI.cpp): header, block map at
 * 1 MiB, data at the next 1 MiB boundary. A seekable image file is written
 * in allocation order and its map fixed up at the end; a stream cannot go
 * back, so the layout is planned first:
 *
 *   pass 1  walk the source's extents and read its data, block by block, to
 *           learn which 1 MiB blocks hold anything but zeros (a dynamic image
 *           allocates only those, numbered in guest order);
 *   pass 2  emit the header, the map, then the allocated blocks in guest
 *           order, reading the source again.
 *
 * Data is read twice (holes never); memory is the map plus one block in
 * flight. Every chunk yielded is a fresh buffer or the shared zero buffer,
 * which is never written to, so a consumer may hold chunks until drained.
 */

import { type BlockDevice, isZero } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { BLOCK_FREE, encodeEntries, isAllocated } from './blockmap.js';
import { encodeHeader } from './header.js';
import { MAP_CHUNK_ENTRIES, createParams, planLayout } from './image.js';

const MiB = 1024 * 1024;
const ZERO = new Uint8Array(MiB);

function* zeros(length: number): Generator<Uint8Array> {
  for (let left = length; left > 0; left -= ZERO.length) yield ZERO.subarray(0, Math.min(ZERO.length, left));
}

export interface StreamVdiOptions {
  /** Virtual size; default the source's size. Rounded up to 512 bytes. */
  size?: number;
  /** `-o` options: `static=on|off`. */
  options?: Record<string, string>;
  compress?: boolean;
}

export async function* streamVdi(source: BlockDevice, opts: StreamVdiOptions = {}): AsyncGenerator<Uint8Array> {
  const p = createParams({ size: opts.size ?? source.size, options: opts.options ?? {}, compress: opts.compress });
  const { header, blocks, blockSize, virtualSize } = planLayout(p);
  if (source.size > virtualSize) {
    throw new ImageError('usage', `vdi: the source (${source.size} bytes) is larger than the image (${virtualSize} bytes)`, {
      format: 'vdi',
      value: source.size,
    });
  }

  /** Does guest block i hold data? (Reads only the extents the source reports as data.) */
  const buf = new Uint8Array(blockSize);
  const blockHasData = async (i: number, check: boolean): Promise<boolean> => {
    const start = i * blockSize;
    const end = Math.min(start + blockSize, source.size);
    for (let pos = start; pos < end; ) {
      const e = await source.status(pos, end - pos);
      if (e.kind === 'data') {
        if (!check) return true;
        const view = buf.subarray(0, e.length);
        await source.read(view, pos);
        if (!isZero(view)) return true;
      }
      pos += e.length;
    }
    return false;
  };

  // Pass 1: the block map.
  const map = new Uint32Array(blocks);
  if (p.fixed) {
    for (let i = 0; i < blocks; i++) map[i] = i;
  } else {
    map.fill(BLOCK_FREE);
    let next = 0;
    for (let i = 0; i < blocks; i++) if (await blockHasData(i, true)) map[i] = next++;
    header.blocksAllocated = next;
  }

  // Pass 2: header, map, data, front to back.
  const head = encodeHeader(header);
  yield head;
  yield* zeros(header.offsetBmap - head.length);
  for (let first = 0; first < blocks; first += MAP_CHUNK_ENTRIES) {
    yield encodeEntries(map, first, Math.min(MAP_CHUNK_ENTRIES, blocks - first));
  }
  yield* zeros(header.offsetData - header.offsetBmap - 4 * blocks);
  for (let i = 0; i < blocks; i++) {
    if (!isAllocated(map[i]!)) continue;
    const start = i * blockSize;
    const n = Math.max(0, Math.min(blockSize, source.size - start));
    if (n === 0 || (p.fixed && !(await blockHasData(i, false)))) {
      yield ZERO.subarray(0, blockSize);
      continue;
    }
    const out = new Uint8Array(blockSize);
    await source.read(out.subarray(0, n), start);
    yield out;
  }
}
