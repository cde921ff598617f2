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
 * gzip is decoded in-process (node:zlib); the other codecs through decode.ts
 * (the host's tool when installed, else in process for zstd and xz). A
 * compressed member's output is read as it is decompressed (the cpio reader
 * keeps only the entries asked for), and is capped (MAX_OUTPUT) so a hostile
 * initrd cannot exhaust memory or time.
 */

import { ImageError } from '../core/errors.js';
import { type CpioEntry, CpioReader, isCpioAt } from './cpio.js';
import { ToolUnavailable, hostDecode, xzDecode, zstdDecode } from './decode.js';
import { gunzipMember, xzEnd, zstdEnd } from './stream-end.js';

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
  /** The entries `keep` selected, by name (the last of a name wins), with their data. */
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
  /** Where the member starting at `pos` ends (-1: unknown, it runs to the end). */
  end?: (b: Uint8Array, pos: number) => number;
  /** In-process decoder (used when the host tool is missing or fails). */
  decode?: (data: Uint8Array) => AsyncIterable<Uint8Array>;
  /** Host tool and arguments that decompress standard input to standard output. */
  tool?: [string, string[]];
}

const CODECS: Codec[] = [
  { name: 'gzip', magic: [0x1f, 0x8b] },
  { name: 'zstd', magic: [0x28, 0xb5, 0x2f, 0xfd], end: zstdEnd, decode: zstdDecode, tool: ['zstd', ['-dc', '-q']] },
  { name: 'xz', magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], end: xzEnd, decode: xzDecode, tool: ['xz', ['-dc']] },
  { name: 'lzma', magic: [0x5d, 0x00, 0x00], tool: ['xz', ['-dc', '--format=lzma']] },
  { name: 'bzip2', magic: [0x42, 0x5a, 0x68], tool: ['bzip2', ['-dc']] },
  { name: 'lzo', magic: [0x89, 0x4c, 0x5a, 0x4f, 0x00], tool: ['lzop', ['-dc']] },
  { name: 'lz4', magic: [0x02, 0x21, 0x4c, 0x18], tool: ['lz4', ['-dc']] },
];

const startsWith = (b: Uint8Array, pos: number, magic: number[]) => magic.every((m, i) => b[pos + i] === m);

/** A member's decompressed data as chunks: the host tool, else the in-process decoder; capped at MAX_OUTPUT. */
async function* decompress(codec: Codec, data: Uint8Array, max: number): AsyncGenerator<Uint8Array> {
  let total = 0;
  const counted = async function* (chunks: AsyncIterable<Uint8Array>) {
    for await (const chunk of chunks) {
      total += chunk.length;
      if (total > max) throw new ImageError('unsupported', `${codec.name} stream decompresses to more than ${max} bytes`, { format: codec.name });
      yield chunk;
    }
  };
  if (codec.tool) {
    try {
      yield* counted(hostDecode(codec.name, codec.tool[0], codec.tool[1], data, codec.end !== undefined));
      return;
    } catch (e) {
      // Without the tool (or when it fails at once), decode in process when we can.
      if (!(e instanceof ToolUnavailable)) throw e;
      if (total || !codec.decode) throw new Error(`${codec.name}-compressed, and ${e.message}`);
    }
  }
  yield* counted(codec.decode!(data));
}

/**
 * List the files of an initramfs image; with `keep`, also return the entries
 * it selects with their data (the last entry of a name wins, as when the
 * kernel unpacks). Never throws for bad contents: `problem` says what stopped
 * the walk. `maxOutput` caps each compressed member's decompressed size.
 * With `sink`, the selected entries go to it as they are read instead of
 * into `kept` (so they need not be held together).
 */
export async function listInitrd(
  image: Uint8Array,
  keep?: (name: string) => boolean,
  maxOutput = MAX_OUTPUT,
  sink?: (e: CpioEntry) => void,
): Promise<InitrdContents> {
  const files: string[] = [];
  const segments: string[] = [];
  const kept = new Map<string, CpioEntry>();
  let openEnded: string | undefined;
  let keptBytes = 0;
  const onEntry = (e: CpioEntry) => {
    files.push(e.name);
    if (!keep?.(e.name)) return;
    if (sink) return sink(e);
    keptBytes += e.data.length;
    if (keptBytes > maxOutput) throw new ImageError('unsupported', `the entries asked for hold more than ${maxOutput} bytes`);
    kept.set(e.name, e);
  };
  const segment = (name: string, depth: number) => {
    if (segments.length >= MAX_SEGMENTS || depth > 4) throw new Error(`more than ${MAX_SEGMENTS} archives`);
    segments.push(name);
  };
  /** Archives, zero padding and compressed members laid end to end in `b`. */
  const walk = async (b: Uint8Array, depth: number): Promise<void> => {
    let pos = 0;
    while (pos < b.length) {
      if (b[pos] === 0) {
        pos++;
        continue;
      }
      if (isCpioAt(b, pos)) {
        segment('cpio', depth);
        const reader = new CpioReader(onEntry, keep, pos);
        pos += reader.push(b.subarray(pos));
        reader.end();
        continue;
      }
      const codec = CODECS.find((c) => startsWith(b, pos, c.magic));
      if (!codec) {
        throw new Error(`unrecognised data at offset ${pos} (bytes ${Buffer.from(b.subarray(pos, pos + 6)).toString('hex')})`);
      }
      segment(codec.name, depth);
      if (codec.name === 'gzip') {
        const { data, end } = gunzipMember(b, pos, maxOutput);
        await walk(data, depth + 1);
        pos = end;
        continue;
      }
      // Without a known end, a compressed member runs to the end of the initrd (the kernel decompresses the rest).
      const end = codec.end?.(b, pos) ?? -1;
      if (end < 0) openEnded ??= codec.name;
      await walkStream(decompress(codec, b.subarray(pos, end < 0 ? b.length : end), maxOutput), depth + 1);
      pos = end < 0 ? b.length : end;
    }
  };
  /**
   * The same, in a decompressed member read as it comes: archives and zero
   * padding are read from the stream; anything else (a compressed member
   * inside, which no initramfs tool writes) is collected and walked whole.
   */
  const walkStream = async (chunks: AsyncIterable<Uint8Array>, depth: number): Promise<void> => {
    let reader: CpioReader | undefined;
    let rest: Uint8Array[] | undefined;
    let pos = 0;
    for await (let chunk of chunks) {
      while (chunk.length) {
        if (rest) {
          rest.push(chunk);
          break;
        }
        if (reader) {
          const n = reader.push(chunk);
          chunk = chunk.subarray(n);
          pos += n;
          if (reader.done) reader = undefined;
          continue;
        }
        let i = 0;
        while (i < chunk.length && chunk[i] === 0) i++;
        chunk = chunk.subarray(i);
        pos += i;
        if (!chunk.length) break;
        if (chunk[0] === 0x30) {
          // '0' starts "070701": the reader checks the rest of the magic.
          segment('cpio', depth);
          reader = new CpioReader(onEntry, keep, pos);
        } else rest = [];
      }
    }
    reader?.end();
    if (rest) await walk(Buffer.concat(rest), depth);
  };
  try {
    await walk(image, 0);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
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
