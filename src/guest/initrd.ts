/**
 * Look inside a Linux initramfs: which files does it hold? Used to tell
 * whether a guest's initrd can find its root disk under KVM (virtio_blk and
 * virtio_pci present, as modules or built into the kernel).
 *
 * An initramfs is one or more cpio archives laid end to end, each either
 * uncompressed (early microcode, firmware) or compressed (gzip, zstd, xz,
 * ...); padding zeros may sit between them. The kernel reads them in order.
 *
 * cpio "newc" (SVR4, magic 070701) and "crc" (070702) headers, all ASCII hex:
 *
 *   field       offset  size
 *   c_magic          0     6   "070701" or "070702"
 *   c_ino            6     8
 *   c_mode          14     8
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
 *   c_check        102     8
 *   (110 bytes), then the name, padded so header+name is a multiple of 4,
 *   then the data, padded to a multiple of 4. "TRAILER!!!" ends an archive.
 *
 * gzip and zstd are decoded in-process (node:zlib, fzstd); xz and lzma by
 * the host's xz when it is installed (ten times faster), else in-process
 * (xz.ts); bzip2, lzo and lz4 only through the host's decompressor. Every
 * decompressed stream is capped (MAX_OUTPUT) so a hostile initrd cannot
 * exhaust memory.
 */

import { spawnSync } from 'node:child_process';
import * as zlib from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import { ImageError } from '../core/errors.js';
import { decodeLzmaAlone, decodeXz } from './xz.js';

/** Largest decompressed size we accept for one compressed member. */
export const MAX_OUTPUT = 1 << 30;
/** Most archives (nested or concatenated) we follow. */
const MAX_SEGMENTS = 64;

export interface InitrdContents {
  /** Paths of all entries (without a leading './' or '/'). */
  files: string[];
  /** What each segment was: 'cpio', 'gzip', 'zstd', 'xz', ... in order. */
  segments: string[];
  /** Set when part of the initrd could not be read (the files list is then partial). */
  problem?: string;
}

interface Codec {
  name: string;
  magic: number[];
  /** In-process decoder (used when the host tool is missing or fails). */
  decode?: (data: Uint8Array) => Uint8Array;
  /** Host tool and arguments that decompress standard input to standard output. */
  tool?: [string, string[]];
}

const CODECS: Codec[] = [
  { name: 'gzip', magic: [0x1f, 0x8b] },
  { name: 'zstd', magic: [0x28, 0xb5, 0x2f, 0xfd] },
  { name: 'xz', magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], decode: (d) => decodeXz(d, MAX_OUTPUT), tool: ['xz', ['-dc']] },
  { name: 'lzma', magic: [0x5d, 0x00, 0x00], decode: (d) => decodeLzmaAlone(d, MAX_OUTPUT), tool: ['xz', ['-dc', '--format=lzma']] },
  { name: 'bzip2', magic: [0x42, 0x5a, 0x68], tool: ['bzip2', ['-dc']] },
  { name: 'lzo', magic: [0x89, 0x4c, 0x5a, 0x4f, 0x00], tool: ['lzop', ['-dc']] },
  { name: 'lz4', magic: [0x02, 0x21, 0x4c, 0x18], tool: ['lz4', ['-dc']] },
];

const startsWith = (b: Uint8Array, pos: number, magic: number[]) => magic.every((m, i) => b[pos + i] === m);

const CPIO_HEADER = 110;

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

const align4 = (n: number) => (n + 3) & ~3;

/** Parse one cpio archive at `pos`; returns the offset just past its trailer. */
function parseCpio(b: Uint8Array, pos: number, files: string[]): number {
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
    const filesize = hex(b, pos + 54, 'c_filesize');
    const namesize = hex(b, pos + 94, 'c_namesize');
    if (namesize < 1 || namesize > 4096 || pos + CPIO_HEADER + namesize > b.length) {
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
    pos = align4(dataStart + filesize);
    if (name === 'TRAILER!!!') return pos;
    files.push(name.replace(/^(\.\/|\/)+/, ''));
  }
}

function decompress(codec: Codec, data: Uint8Array): Uint8Array {
  if (codec.name === 'gzip') {
    return zlib.gunzipSync(data, { maxOutputLength: MAX_OUTPUT });
  }
  if (codec.name === 'zstd') {
    const chunks: Uint8Array[] = [];
    let total = 0;
    const d = new ZstdDecompress((chunk) => {
      total += chunk.length;
      if (total > MAX_OUTPUT) throw new ImageError('unsupported', `zstd stream decompresses to more than ${MAX_OUTPUT} bytes`);
      chunks.push(chunk);
    });
    d.push(data, true);
    return Buffer.concat(chunks);
  }
  if (codec.decode) {
    // The host's decompressor, when installed, is an order of magnitude faster than ours.
    const viaTool = codec.tool ? runTool(codec, data, false) : undefined;
    return viaTool ?? codec.decode(data);
  }
  return runTool(codec, data, true)!;
}

/** Decompress with the host tool; undefined (or an error when `required`) when it is missing or fails. */
function runTool(codec: Codec, data: Uint8Array, required: boolean): Uint8Array | undefined {
  const [tool, args] = codec.tool!;
  const r = spawnSync(tool, args, { input: data, maxBuffer: MAX_OUTPUT, timeout: 120_000 });
  if (r.error) {
    if (!required) return undefined;
    const code = (r.error as NodeJS.ErrnoException).code;
    throw new Error(code === 'ENOENT' ? `${codec.name}-compressed, and '${tool}' is not installed` : `${tool}: ${r.error.message}`);
  }
  // A non-zero exit with output is usually trailing padding after the stream: keep what was decoded.
  if (r.status !== 0 && !r.stdout?.length) {
    if (!required) return undefined;
    throw new Error(`${tool} -dc failed: ${r.stderr.toString().trim()}`);
  }
  return r.stdout;
}

/** List the files of an initramfs image. Never throws for bad contents: `problem` says what stopped the walk. */
export function listInitrd(image: Uint8Array): InitrdContents {
  const files: string[] = [];
  const segments: string[] = [];
  const work: Uint8Array[] = [image];
  try {
    while (work.length) {
      const b = work.shift()!;
      let pos = 0;
      while (pos < b.length) {
        if (segments.length >= MAX_SEGMENTS) throw new Error(`more than ${MAX_SEGMENTS} archives`);
        if (b[pos] === 0) {
          pos++;
          continue;
        }
        if (startsWith(b, pos, [0x30, 0x37, 0x30, 0x37, 0x30])) {
          segments.push('cpio');
          pos = parseCpio(b, pos, files);
          continue;
        }
        const codec = CODECS.find((c) => startsWith(b, pos, c.magic));
        if (!codec) {
          throw new Error(`unrecognised data at offset ${pos} (bytes ${Buffer.from(b.subarray(pos, pos + 6)).toString('hex')})`);
        }
        segments.push(codec.name);
        // A compressed member runs to the end of the initrd (the kernel decompresses the rest).
        work.unshift(decompress(codec, b.subarray(pos)));
        pos = b.length;
      }
    }
  } catch (e) {
    const msg = e instanceof ImageError ? e.message : e instanceof Error ? e.message : String(e);
    return { files, segments, problem: msg };
  }
  return { files, segments };
}

/** Module base names (without .ko / .ko.xz / ...) found among initrd paths. */
export function modulesIn(files: string[]): Set<string> {
  const out = new Set<string>();
  for (const f of files) {
    const m = /(?:^|\/)([^/]+)\.ko(?:\.(?:xz|gz|zst))?$/.exec(f);
    if (m) out.add(m[1]!.replace(/-/g, '_'));
  }
  return out;
}
