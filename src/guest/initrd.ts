/**
 * Look inside a Linux initramfs: which files does it hold? Used to tell
 * whether a guest's initrd can find its root disk under KVM (virtio_blk and
 * virtio_pci present, as modules or built into the kernel).
 *
 * An initramfs is one or more cpio archives laid end to end, each either
 * uncompressed (early microcode, firmware) or compressed (gzip, zstd, xz,
 * ...); padding zeros may sit between them. The kernel reads them in order.
 *
 * The cpio format is described in cpio.ts. To read an archive that follows a
 * compressed one, we need to know where the compressed data ends, as the
 * kernel does: gzip (the deflate stream's end, then the 8-byte trailer),
 * zstd (frames are self-delimiting: header, blocks up to the last-block flag,
 * optional checksum), xz (the stream footer, found by its CRC32 and 'YZ'
 * magic). For the other codecs the compressed data is taken to run to the end
 * of the initrd, and nothing may be appended after them.
 *
 * gzip and zstd are decoded in-process (node:zlib, fzstd); xz and lzma by
 * the host's xz when it is installed (ten times faster), else in-process
 * (xz.ts); bzip2, lzo and lz4 only through the host's decompressor. Every
 * decompressed stream is capped (MAX_OUTPUT) so a hostile initrd cannot
 * exhaust memory.
 */

import { spawnSync } from 'node:child_process';
import { Decompress as ZstdDecompress } from 'fzstd';
import { ImageError } from '../core/errors.js';
import { type CpioEntry, isCpioAt, parseCpio } from './cpio.js';
import { gunzipMember, xzEnd, zstdEnd } from './stream-end.js';
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
  /** The entries `keep` selected, by name (the last of a name wins). */
  kept: Map<string, CpioEntry>;
  /**
   * Another archive appended to the image would be read by the kernel: every
   * compressed member's end is known (not lz4, lzo, bzip2 or lzma).
   */
  appendable: boolean;
  /** The codec whose end could not be found (why appendable is false), e.g. 'lz4'. */
  openEnded?: string;
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

function decompress(codec: Codec, data: Uint8Array): Uint8Array {
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

/** Where a compressed member ends, for the codecs whose end we can find. */
/** A compressed member's data and where it ends (-1: not known, it runs to the end of `b`). */
function decodeMember(codec: Codec, b: Uint8Array, pos: number): { data: Uint8Array; end: number } {
  if (codec.name === 'gzip') return gunzipMember(b, pos, MAX_OUTPUT);
  const end = codec.name === 'zstd' ? zstdEnd(b, pos) : codec.name === 'xz' ? xzEnd(b, pos) : -1;
  return { data: decompress(codec, b.subarray(pos, end < 0 ? b.length : end)), end };
}

/**
 * List the files of an initramfs image; with `keep`, also return the entries
 * it selects (the last entry of a name wins, as when the kernel unpacks).
 * Never throws for bad contents: `problem` says what stopped the walk.
 */
export function listInitrd(image: Uint8Array, keep?: (name: string) => boolean): InitrdContents {
  const files: string[] = [];
  const segments: string[] = [];
  const kept = new Map<string, CpioEntry>();
  let openEnded: string | undefined;
  const onEntry = (e: CpioEntry) => {
    files.push(e.name);
    if (keep?.(e.name)) kept.set(e.name, e);
  };
  const walk = (b: Uint8Array, depth: number): void => {
    let pos = 0;
    while (pos < b.length) {
      if (segments.length >= MAX_SEGMENTS || depth > 4) throw new Error(`more than ${MAX_SEGMENTS} archives`);
      if (b[pos] === 0) {
        pos++;
        continue;
      }
      if (isCpioAt(b, pos)) {
        segments.push('cpio');
        pos = parseCpio(b, pos, onEntry);
        continue;
      }
      const codec = CODECS.find((c) => startsWith(b, pos, c.magic));
      if (!codec) {
        throw new Error(`unrecognised data at offset ${pos} (bytes ${Buffer.from(b.subarray(pos, pos + 6)).toString('hex')})`);
      }
      segments.push(codec.name);
      // Without a known end, a compressed member runs to the end of the initrd (the kernel decompresses the rest).
      const { data, end } = decodeMember(codec, b, pos);
      if (end < 0) openEnded ??= codec.name;
      walk(data, depth + 1);
      pos = end < 0 ? b.length : end;
    }
  };
  try {
    walk(image, 0);
  } catch (e) {
    const msg = e instanceof ImageError ? e.message : e instanceof Error ? e.message : String(e);
    return { files, segments, kept, appendable: false, openEnded, problem: msg };
  }
  return { files, segments, kept, appendable: openEnded === undefined, openEnded };
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
