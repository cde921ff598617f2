/**
 * The entries of a tar archive, read in place: each entry's name, data
 * offset and size, found by walking the 512-byte headers (node-tar's Header
 * decodes each block: ustar, GNU and pax forms). Nothing is extracted; a
 * disk inside is then a window (SliceDevice) of the archive.
 *
 *   [header 512][data, padded to 512][header 512][data ...] ... [two zero blocks]
 *
 * GNU long names (type L) and pax extended headers (type x) name and size
 * the entry after them. Every size is checked against the archive; a name
 * with a `..` component or an absolute name is refused (an OVA is read in
 * place, but its names still choose which window is opened).
 */

import { createRequire } from 'node:module';
import type { Pax } from 'tar';
import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';

export interface TarEntry {
  name: string;
  /** Byte offset of the entry's data in the archive. */
  offset: number;
  size: number;
  type: string;
}

const BLOCK = 512;
export const MAX_ENTRIES = 10_000;
/** Long names and pax records are read whole; more than this is not a name. */
const MAX_META = 1 << 20;

function bad(what: string, offset: number, value: string | number): ImageError {
  return new ImageError('invalid-format', `ova: ${what}`, { format: 'ova', field: 'tar header', offset, value });
}

export function checkEntryName(name: string, offset: number): void {
  if (name.split('/').includes('..') || name.startsWith('/')) {
    throw new ImageError('invalid-format', `ova: tar entry name '${name.slice(0, 200)}' leaves the archive (absolute, or with '..')`, {
      format: 'ova',
      field: 'tar entry name',
      offset,
      value: name.slice(0, 200),
    });
  }
}

/** Every entry of the archive on `dev`, in order. */
export async function tarEntries(dev: BlockDevice): Promise<TarEntry[]> {
  const out: TarEntry[] = [];
  const block = Buffer.alloc(BLOCK);
  const { Header, Pax: PaxParser } = createRequire(import.meta.url)('tar') as typeof import('tar');
  let ex: Pax | undefined;
  let longName: string | undefined;
  for (let pos = 0; pos + BLOCK <= dev.size; ) {
    await dev.read(block, pos);
    const h = new Header(block, 0, ex);
    if (h.nullBlock) break;
    if (!h.cksumValid) throw bad(`the tar header at ${pos} has a bad checksum`, pos, pos);
    const size = h.size ?? 0;
    const dataAt = pos + BLOCK;
    if (!Number.isSafeInteger(size) || size < 0 || dataAt + size > dev.size) {
      throw bad(`the tar entry at ${pos} says it holds ${size} bytes, past the end of the ${dev.size}-byte archive`, pos, size);
    }
    const next = dataAt + Math.ceil(size / BLOCK) * BLOCK;
    const type = h.type;
    if (type === 'NextFileHasLongPath' || type === 'ExtendedHeader' || type === 'GlobalExtendedHeader') {
      if (size > MAX_META) throw bad(`the tar metadata entry at ${pos} is ${size} bytes`, pos, size);
      const text = Buffer.alloc(size);
      await dev.read(text, dataAt);
      if (type === 'NextFileHasLongPath') longName = text.toString('utf8').replace(/\0.*$/s, '');
      else if (type === 'ExtendedHeader') ex = PaxParser.parse(text.toString('utf8'), ex, false);
      pos = next;
      continue;
    }
    const name = (longName ?? h.path ?? '').replace(/^\.\//, '');
    checkEntryName(name, pos);
    if (out.length >= MAX_ENTRIES) throw bad(`the archive has more than ${MAX_ENTRIES} entries`, pos, out.length);
    out.push({ name, offset: dataAt, size, type });
    ex = undefined;
    longName = undefined;
    pos = next;
  }
  return out;
}
