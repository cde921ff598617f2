/**
 * A VHD front to back, for outputs that cannot seek (a pipe):
 *
 *   fixed     the source's bytes (holes as zeros, zeros past its end up to
 *             the VHD's size), then the footer
 *   dynamic   a first pass over the source's allocation plans the BAT (a
 *             block is stored when any of it holds data); then footer copy,
 *             dynamic header and BAT, the stored blocks in order (bitmap all
 *             ones, data), and the footer
 */

import type { BlockDevice } from '../../core/device.js';
import { rawStream } from '../raw.js';
import type { CreateOptions } from '../types.js';
import { blockSizeForStream, dynamicFront, vhdParams } from './create.js';
import { BAT_UNUSED, SECTOR } from './footer.js';

const CHUNK = 1 << 20;

async function* zeros(length: number): AsyncGenerator<Uint8Array> {
  const z = new Uint8Array(Math.min(CHUNK, length));
  for (let done = 0; done < length; done += z.length) yield z.subarray(0, Math.min(z.length, length - done));
}

/** Does [offset, offset + length) of `dev` hold any data? */
async function hasData(dev: BlockDevice, offset: number, length: number): Promise<boolean> {
  for (let pos = offset; pos < offset + length; ) {
    const e = await dev.status(pos, offset + length - pos);
    if (e.kind === 'data') return true;
    pos += e.length;
  }
  return false;
}

export async function* streamVhd(source: BlockDevice, opts: CreateOptions): AsyncGenerator<Uint8Array> {
  const p = vhdParams({ ...opts, size: Math.max(opts.size, source.size) });
  const bs = blockSizeForStream;
  if (p.fixed) {
    yield* rawStream(source);
    yield* zeros(p.size - source.size);
    yield p.footer;
    return;
  }
  const entries = Math.ceil(p.size / bs);
  const bat = new Uint32Array(entries).fill(BAT_UNUSED);
  const frontBytes = dynamicFront(p).length;
  const bitmap = new Uint8Array(SECTOR).fill(0xff); // 2 MiB blocks: a 512-byte bitmap
  let sector = frontBytes / SECTOR;
  for (let i = 0; i < entries; i++) {
    const start = i * bs;
    if (start < source.size && (await hasData(source, start, Math.min(bs, source.size - start)))) {
      bat[i] = sector;
      sector += (SECTOR + bs) / SECTOR;
    }
  }
  yield dynamicFront(p, bat);
  for (let i = 0; i < entries; i++) {
    if (bat[i] === BAT_UNUSED) continue;
    yield bitmap;
    const start = i * bs;
    const n = Math.min(bs, source.size - start);
    const buf = new Uint8Array(bs);
    await source.read(buf.subarray(0, n), start);
    yield buf;
  }
  yield p.footer;
}
