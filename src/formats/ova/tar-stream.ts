/**
 * A tar archive read front to back (an OVA from a pipe or a server without
 * ranges): the same header walk as tar.ts (node-tar's Header per 512-byte
 * block; GNU long names and pax headers name the entry after them; names
 * with '..' or absolute are refused), but each entry's data is handed out as
 * it passes and never read again.
 */

import { createRequire } from 'node:module';
import type { Pax } from 'tar';
import { ImageError } from '../../core/errors.js';
import type { StreamReader } from '../../sources/reader.js';
import { MAX_ENTRIES, checkEntryName } from './tar.js';

const BLOCK = 512;
const MAX_META = 1 << 20;

export interface StreamEntry {
  name: string;
  /** Offset of the entry's data in the archive. */
  offset: number;
  size: number;
  type: string;
}

function bad(what: string, offset: number, value: string | number): ImageError {
  return new ImageError('invalid-format', `ova: ${what}`, { format: 'ova', field: 'tar header', offset, value });
}

export class TarStream {
  private entries = 0;
  /** Bytes of the current entry's data (and padding) not yet consumed. */
  private left = 0;
  private pad = 0;
  private ended = false;

  constructor(private readonly r: StreamReader) {}

  /** The next file entry (its data is next on the reader), or undefined at the end of the archive. */
  async next(): Promise<StreamEntry | undefined> {
    await this.r.skip(this.left + this.pad, 'the tar entry');
    this.left = this.pad = 0;
    if (this.ended) return undefined;
    const { Header, Pax: PaxParser } = createRequire(import.meta.url)('tar') as typeof import('tar');
    let ex: Pax | undefined;
    let longName: string | undefined;
    for (;;) {
      const pos = this.r.pos;
      if (await this.r.atEnd()) throw bad(`the archive ends at ${pos} without its end blocks`, pos, pos);
      const block = Buffer.from(await this.r.read(BLOCK, 'a tar header'));
      const h = new Header(block, 0, ex);
      if (h.nullBlock) {
        this.ended = true;
        return undefined;
      }
      if (!h.cksumValid) throw bad(`the tar header at ${pos} has a bad checksum`, pos, pos);
      const size = h.size ?? 0;
      if (!Number.isSafeInteger(size) || size < 0) throw bad(`the tar entry at ${pos} has size ${size}`, pos, size);
      const pad = Math.ceil(size / BLOCK) * BLOCK - size;
      const type = h.type;
      if (type === 'NextFileHasLongPath' || type === 'ExtendedHeader' || type === 'GlobalExtendedHeader') {
        if (size > MAX_META) throw bad(`the tar metadata entry at ${pos} is ${size} bytes`, pos, size);
        const text = Buffer.from(await this.r.read(size, 'a tar metadata entry'));
        await this.r.skip(pad, 'tar padding');
        if (type === 'NextFileHasLongPath') longName = text.toString('utf8').replace(/\0.*$/s, '');
        else if (type === 'ExtendedHeader') ex = PaxParser.parse(text.toString('utf8'), ex, false);
        continue;
      }
      const name = (longName ?? h.path ?? '').replace(/^\.\//, '');
      checkEntryName(name, pos);
      if (++this.entries > MAX_ENTRIES) throw bad(`the archive has more than ${MAX_ENTRIES} entries`, pos, this.entries);
      this.left = size;
      this.pad = pad;
      return { name, offset: pos + BLOCK, size, type };
    }
  }

  /** The current entry's data, in pieces (not copied). */
  async *data(): AsyncGenerator<Uint8Array> {
    while (this.left > 0) {
      const n = this.left;
      const part = await this.r.some(n);
      if (!part) throw bad(`the archive ends inside an entry, ${n} bytes short`, this.r.pos, n);
      this.left -= part.length;
      yield part;
    }
  }

  /** After the end blocks: the rest must be zeros (tar pads archives to a record). */
  async rest(): Promise<void> {
    for (;;) {
      const at = this.r.pos;
      const part = await this.r.some(1 << 20);
      if (!part) return;
      if (part.some((b) => b !== 0)) throw bad(`the archive has data after its end blocks (at ${at})`, at, at);
    }
  }
}
