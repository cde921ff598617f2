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
  /** The entry's data (a view into the archive). */
  data: Uint8Array;
}

export const align4 = (n: number) => (n + 3) & ~3;

function hex(b: Uint8Array, pos: number, field: string): number {
  const s = Buffer.from(b.subarray(pos, pos + 8)).toString('latin1');
  if (!/^[0-9a-fA-F]{8}$/.test(s)) {
    throw new ImageError('invalid-format', `cpio: ${field} (at offset ${pos}) is '${s}', not 8 hex digits`, {
      format: 'cpio',
      field,
      offset: pos,
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
 * Parse one archive at `pos`, calling `onEntry` for every entry but the
 * trailer; returns the offset just past the trailer (and its padding).
 */
export function parseCpio(b: Uint8Array, pos: number, onEntry: (e: CpioEntry) => void): number {
  for (;;) {
    if (pos + CPIO_HEADER > b.length) {
      throw new ImageError('invalid-format', `cpio: archive truncated at offset ${pos} (no TRAILER!!!)`, { format: 'cpio', offset: pos });
    }
    const magic = Buffer.from(b.subarray(pos, pos + 6)).toString('latin1');
    if (magic !== '070701' && magic !== '070702') {
      throw new ImageError('invalid-format', `cpio: c_magic (at offset ${pos}) is '${magic}', expected 070701`, {
        format: 'cpio',
        field: 'c_magic',
        offset: pos,
        value: magic,
      });
    }
    const mode = hex(b, pos + 14, 'c_mode');
    const filesize = hex(b, pos + 54, 'c_filesize');
    const namesize = hex(b, pos + 94, 'c_namesize');
    if (namesize < 1 || namesize > MAX_NAME || pos + CPIO_HEADER + namesize > b.length) {
      throw new ImageError('invalid-format', `cpio: c_namesize (at offset ${pos + 94}, value ${namesize}) does not fit the archive`, {
        format: 'cpio',
        field: 'c_namesize',
        offset: pos + 94,
        value: namesize,
      });
    }
    const name = Buffer.from(b.subarray(pos + CPIO_HEADER, pos + CPIO_HEADER + namesize - 1)).toString('utf8');
    const dataStart = align4(pos + CPIO_HEADER + namesize);
    if (dataStart + filesize > b.length) {
      throw new ImageError('invalid-format', `cpio: c_filesize (at offset ${pos + 54}, value ${filesize}) of '${name}' runs past the archive`, {
        format: 'cpio',
        field: 'c_filesize',
        offset: pos + 54,
        value: filesize,
      });
    }
    const end = dataStart + filesize;
    pos = Math.min(align4(end), b.length);
    if (name === TRAILER) return pos;
    onEntry({ name: name.replace(/^(\.\/|\/)+/, ''), mode, data: b.subarray(dataStart, end) });
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
