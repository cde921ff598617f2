/**
 * cpio "newc" (SVR4, magic 070701) and "crc" (070702) archives, the format of
 * Linux initramfs images: reading entries and writing a new archive.
 *
 * Each entry is a header of ASCII hex fields:
 *
 *   field       offset  size
 *   c_magic          0     6   "070701" or "070702"
 *   c_ino            6     8
 *   c_mode          14     8   file type and permissions (S_IFREG 0100000, S_IFDIR 040000, S_IFLNK 0120000)
 *   c_uid           22     8
 *   c_gid           30     8
 *   c_nlink         38     8
 *   c_mtime         46     8
 *   c_filesize      54     8
 *   c_devmajor      62     8
 *   c_devminor      70     8
 *   c_rdevmajor     78     8
 *   c_rdevminor     86     8
 *   c_namesize      94     8   including the trailing NUL
 *   c_check        102     8   0 for newc (a byte sum of the data for crc)
 *
 * (110 bytes), then the name, padded so header+name is a multiple of 4, then
 * the data, padded to a multiple of 4. The entry named "TRAILER!!!" ends an
 * archive. The kernel reads an archive relative to where it starts in the
 * initramfs, so an archive appended to an initramfs starts at a multiple of 4.
 */

import { ImageError } from '../core/errors.js';

export const CPIO_HEADER = 110;
export const CPIO_MAGIC = '070701';
const TRAILER = 'TRAILER!!!';
const MAX_NAME = 4096;

export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;

export interface CpioEntry {
  /** Path without a leading './' or '/'. */
  name: string;
  mode: number;
  /** The entry's data: empty unless the reader was asked to collect it. */
  data: Uint8Array;
}

export const align4 = (n: number) => (n + 3) & ~3;

function hex(b: Uint8Array, at: number, field: string, base: number): number {
  const s = Buffer.from(b.subarray(at, at + 8)).toString('latin1');
  if (!/^[0-9a-fA-F]{8}$/.test(s)) {
    throw new ImageError('invalid-format', `cpio: ${field} (at offset ${base + at}) is '${s}', not 8 hex digits`, {
      format: 'cpio',
      field,
      offset: base + at,
      value: s,
    });
  }
  return parseInt(s, 16);
}

/** Does a cpio archive start at `pos`? */
export function isCpioAt(b: Uint8Array, pos: number): boolean {
  return b[pos] === 0x30 && b[pos + 1] === 0x37 && b[pos + 2] === 0x30 && b[pos + 3] === 0x37 && b[pos + 4] === 0x30;
}

/**
 * One archive read from a stream of chunks: `push` the bytes as they come,
 * `end` when there are no more. Calls `onEntry` for every entry but the
 * trailer; the data of an entry is collected (copied) only when `wantData`
 * says so, else it is skipped and `data` is empty: a 100 MB archive is never
 * held whole. Offsets in errors and alignment count from `start`, the
 * archive's offset in the data it sits in (the kernel pads to 4 bytes of that).
 */
export class CpioReader {
  /** The trailer and its padding have been read. */
  done = false;
  private pos: number;
  private entryAt: number;
  private readonly head = new Uint8Array(CPIO_HEADER + MAX_NAME + 3);
  private have = 0;
  private want = CPIO_HEADER;
  private state: 'header' | 'name' | 'data' | 'skip' = 'header';
  private left = 0;
  private mode = 0;
  private filesize = 0;
  private namesize = 0;
  private name = '';
  private parts: Uint8Array[] | null = null;
  private trailer = false;

  constructor(
    private readonly onEntry: (e: CpioEntry) => void,
    private readonly wantData: (name: string) => boolean = () => false,
    start = 0,
  ) {
    this.pos = start;
    this.entryAt = start;
  }

  /** Consume bytes of `chunk`; returns how many were used (all of them unless the archive ended inside it). */
  push(chunk: Uint8Array): number {
    let i = 0;
    while (!this.done) {
      if (this.state === 'data' || this.state === 'skip') {
        const n = Math.min(this.left, chunk.length - i);
        if (n && this.parts) this.parts.push(chunk.slice(i, i + n));
        i += n;
        this.pos += n;
        this.left -= n;
        if (this.left) break;
        this.step();
        continue;
      }
      const n = Math.min(this.want - this.have, chunk.length - i);
      this.head.set(chunk.subarray(i, i + n), this.have);
      this.have += n;
      i += n;
      this.pos += n;
      if (this.have < this.want) break;
      this.step();
    }
    return i;
  }

  /** No more input: throws unless the trailer was read. */
  end(): void {
    if (this.done || (this.trailer && this.state === 'skip')) return;
    if (this.state === 'name' && this.have < CPIO_HEADER + this.namesize) throw this.namesizeError();
    if (this.state === 'name' || this.state === 'data') throw this.filesizeError();
    throw new ImageError('invalid-format', `cpio: archive truncated at offset ${this.entryAt} (no TRAILER!!!)`, { format: 'cpio', offset: this.entryAt });
  }

  private namesizeError(): ImageError {
    const offset = this.entryAt + 94;
    return new ImageError('invalid-format', `cpio: c_namesize (at offset ${offset}, value ${this.namesize}) does not fit the archive`, {
      format: 'cpio',
      field: 'c_namesize',
      offset,
      value: this.namesize,
    });
  }

  private filesizeError(): ImageError {
    const offset = this.entryAt + 54;
    return new ImageError('invalid-format', `cpio: c_filesize (at offset ${offset}, value ${this.filesize}) of '${this.name}' runs past the archive`, {
      format: 'cpio',
      field: 'c_filesize',
      offset,
      value: this.filesize,
    });
  }

  /** The current piece (header, name, data, padding) is complete: go on to the next. */
  private step(): void {
    const at = this.entryAt;
    switch (this.state) {
      case 'header': {
        const magic = Buffer.from(this.head.subarray(0, 6)).toString('latin1');
        if (magic !== '070701' && magic !== '070702') {
          throw new ImageError('invalid-format', `cpio: c_magic (at offset ${at}) is '${magic}', expected 070701`, {
            format: 'cpio',
            field: 'c_magic',
            offset: at,
            value: magic,
          });
        }
        this.mode = hex(this.head, 14, 'c_mode', at);
        this.filesize = hex(this.head, 54, 'c_filesize', at);
        this.namesize = hex(this.head, 94, 'c_namesize', at);
        if (this.namesize < 1 || this.namesize > MAX_NAME) throw this.namesizeError();
        // Header and name are padded together to a multiple of 4.
        this.state = 'name';
        this.want = align4(at + CPIO_HEADER + this.namesize) - at;
        return;
      }
      case 'name':
        this.name = Buffer.from(this.head.subarray(CPIO_HEADER, CPIO_HEADER + this.namesize - 1)).toString('utf8');
        this.trailer = this.name === TRAILER;
        this.state = 'data';
        this.left = this.filesize;
        this.parts = !this.trailer && this.filesize && this.wantData(this.name.replace(/^(\.\/|\/)+/, '')) ? [] : null;
        if (!this.left) this.step();
        return;
      case 'data': {
        if (!this.trailer) {
          const data = !this.parts ? new Uint8Array(0) : this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts);
          this.parts = null;
          this.onEntry({ name: this.name.replace(/^(\.\/|\/)+/, ''), mode: this.mode, data });
        }
        this.state = 'skip';
        this.left = align4(this.pos) - this.pos;
        if (!this.left) this.step();
        return;
      }
      case 'skip':
        if (this.trailer) {
          this.done = true;
          return;
        }
        this.state = 'header';
        this.entryAt = this.pos;
        this.have = 0;
        this.want = CPIO_HEADER;
        return;
    }
  }
}

export interface NewEntry {
  name: string;
  /** Full mode with the file type bits (S_IFREG | 0o644, S_IFDIR | 0o755, ...). */
  mode: number;
  /** File contents, or a symlink's target. */
  data?: Uint8Array;
  mtime?: number;
}

const field = (n: number) => n.toString(16).toUpperCase().padStart(8, '0');

/** A newc archive holding `entries` (in order) and the trailer; its length is a multiple of 4. */
export function encodeNewc(entries: NewEntry[]): Uint8Array {
  const parts: Uint8Array[] = [];
  let size = 0;
  const push = (p: Uint8Array) => {
    parts.push(p);
    size += p.length;
    const pad = align4(size) - size;
    if (pad) {
      parts.push(new Uint8Array(pad));
      size += pad;
    }
  };
  const all: NewEntry[] = [...entries, { name: TRAILER, mode: 0 }];
  all.forEach((e, i) => {
    const name = Buffer.from(`${e.name}\0`, 'utf8');
    if (name.length > MAX_NAME) throw new ImageError('usage', `cpio: name '${e.name}' is too long`, { value: e.name });
    const data = e.data ?? new Uint8Array(0);
    const isDir = (e.mode & S_IFMT) === S_IFDIR;
    const header = [
      CPIO_MAGIC,
      field(e.name === TRAILER ? 0 : i + 1), // c_ino: distinct, so nothing is taken for a hard link
      field(e.mode),
      field(0),
      field(0),
      field(isDir ? 2 : 1),
      field(e.mtime ?? 0),
      field(data.length),
      field(0),
      field(0),
      field(0),
      field(0),
      field(name.length),
      field(0),
    ].join('');
    // Header + name are padded together, then the data.
    const head = Buffer.concat([Buffer.from(header, 'latin1'), name]);
    push(head);
    if (data.length) push(data);
  });
  return Buffer.concat(parts, size);
}
