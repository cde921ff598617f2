/**
 * Where image bytes come from besides local files: URLs (read in place with
 * Range requests, or streamed once and spooled when the server cannot seek).
 */

import * as fs from 'node:fs';
import * as os from 'node:os';
import { FileDevice } from '../core/file.js';
import { ImageError } from '../core/errors.js';
import { decompress, declaredContentSize, detectWrapper, type Wrapper } from './decompress.js';
import type { BlockDevice, SourceDevice } from '../core/device.js';
import { HttpDevice, type HttpOptions, isUrl } from './http.js';
import { spoolStream } from './spool.js';

export { HttpDevice, isUrl, displayUrl, type HttpOptions } from './http.js';
export { spoolStream, type SpoolOptions } from './spool.js';
export { StreamReader } from './reader.js';

export interface UrlOptions {
  http?: HttpOptions;
  scratchDir?: string;
}

/** A device over the image at `url`: in place when the server honours Range, else spooled. */
export async function openUrl(url: string, opts: UrlOptions = {}): Promise<SourceDevice> {
  const r = await HttpDevice.open(url, opts.http);
  if (r.ranges) return r.device;
  try {
    return await spoolStream(r.body as AsyncIterable<Uint8Array>, { scratchDir: opts.scratchDir });
  } finally {
    await r.close();
  }
}


// ------------------------------------------------------------ any source


export { detectWrapper, type Wrapper } from './decompress.js';

export interface SourceOptions extends UrlOptions {
  /**
   * Given the first bytes of a decompressed (or streamed) image, how many
   * bytes it may need at most, and why: the stream is stopped past that.
   */
  limitFor?: (innerHead: Uint8Array) => { bytes: number; why: string } | undefined;
}

export interface OpenedSource {
  device: SourceDevice;
  /** The compression wrapper that was taken off, if any. */
  wrapper?: Wrapper;
}

const PEEK = 64 * 1024;
const DISK_RESERVE = 256 << 20;

/** A source read front to back: what `openSourceStream` gives for a pipe, a URL without ranges, or a compressed input. */
export interface SourceStream {
  /** Every byte of the (decompressed) image, from the first; capped as `SourceOptions.limitFor` says. Iterate it once. */
  stream: AsyncIterable<Uint8Array>;
  /** Its first bytes (up to 64 KiB; all of it when shorter), for probing. */
  head: Uint8Array;
  /** The stream's length when known in advance (an HTTP Content-Length, a zstd frame's content size). */
  size?: number;
  /** The compression wrapper being taken off, if any. */
  wrapper?: Wrapper;
  /** Release the connection or file under the stream (safe to call twice). */
  close(): Promise<void>;
}

export type StreamedSource = ({ device: SourceDevice; stream?: undefined } | ({ device?: undefined } & SourceStream)) & { wrapper?: Wrapper };

/**
 * Open what the user named as an image: a local path, `-` (standard input),
 * or an http(s) URL. A seekable source (a file, a URL whose server honours
 * Range) comes back as a device; anything else (a pipe, a URL without
 * ranges, a gzip/xz/zstd/bzip2 wrapper, taken off on the fly) as a stream
 * with its first bytes, for a caller that can read the image front to back.
 */
export async function openSourceStream(name: string, opts: SourceOptions = {}): Promise<StreamedSource> {
  let device: SourceDevice | undefined;
  let stream: AsyncIterable<Uint8Array> | undefined;
  let size: number | undefined;
  let closeStream: () => Promise<void> = async () => {};
  if (isUrl(name)) {
    const r = await HttpDevice.open(name, opts.http);
    if (r.ranges) device = r.device;
    else {
      stream = r.body as AsyncIterable<Uint8Array>;
      size = r.size;
      closeStream = r.close;
    }
  } else if (name === '-') {
    const st = fs.fstatSync(0);
    if (st.isFile() || st.isBlockDevice()) device = await FileDevice.open('/dev/stdin');
    else stream = process.stdin as AsyncIterable<Uint8Array>;
  } else if (isStreamFile(name)) {
    // A named pipe (`<(zcat disk.vmdk.gz)`): read once, like standard input.
    const input = fs.createReadStream(name);
    stream = input as AsyncIterable<Uint8Array>;
    closeStream = async () => void input.destroy();
  } else {
    device = await FileDevice.open(name);
  }
  try {
    if (device) {
      const head = new Uint8Array(Math.min(PEEK, device.size));
      await device.read(head, 0);
      const wrapper = detectWrapper(head);
      if (!wrapper) return { device };
      const wrapped = device;
      const u = await unwrapStream(wrapper, head, readAll(wrapped), opts);
      return { ...u, close: closer(u.stream, () => wrapped.close()) };
    }
    const peeked = await peek(stream!, PEEK);
    const wrapper = detectWrapper(peeked.head);
    if (wrapper) {
      const u = await unwrapStream(wrapper, peeked.head, peeked.stream, opts);
      return { ...u, close: closer(u.stream, closeStream) };
    }
    const lim = limited(peeked.stream, opts, size, 'the Content-Length the server sent');
    return { stream: lim, head: peeked.head, size, close: closer(lim, closeStream) };
  } catch (e) {
    await device?.close().catch(() => {});
    await closeStream().catch(() => {});
    throw e;
  }
}

/**
 * Open what the user named as an image (see openSourceStream) as a device:
 * a stream that cannot be read in place ends up in a sparse spool file.
 */
export async function openSource(name: string, opts: SourceOptions = {}): Promise<OpenedSource> {
  const s = await openSourceStream(name, opts);
  if (s.device) return { device: s.device };
  return { device: await spoolSource(s, opts.scratchDir), wrapper: s.wrapper };
}

function isStreamFile(name: string): boolean {
  const st = fs.statSync(name, { throwIfNoEntry: false });
  return !!st && st.isFIFO();
}

/** Spool what is left of a source stream into a sparse scratch file (never more than the scratch file system holds), then close the source. */
export async function spoolSource(s: SourceStream, scratchDir?: string, stream: AsyncIterable<Uint8Array> = s.stream): Promise<SourceDevice> {
  try {
    return await spoolStream(stream, { scratchDir, diskBudget: diskCap(scratchDir) });
  } finally {
    await s.close().catch(() => {});
  }
}

/**
 * Close a source once: release what is under it, and end the generators of
 * the stream (a reader that stopped early leaves them suspended: a host
 * decompressor would live on).
 */
function closer(stream: AsyncIterable<Uint8Array>, release: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | undefined;
  return () =>
    (p ??= (async () => {
      try {
        await release();
      } finally {
        void (stream as AsyncGenerator<Uint8Array>).return?.(undefined).catch(() => {});
      }
    })());
}

/** The decompressed stream of a wrapped input, its first bytes peeked. */
async function unwrapStream(kind: Wrapper, head: Uint8Array, wrapped: AsyncIterable<Uint8Array>, opts: SourceOptions): Promise<Omit<SourceStream, 'close'>> {
  const declared = declaredContentSize(kind, head);
  const inner = await peek(decompress(kind, wrapped), PEEK);
  return { stream: limited(inner.stream, opts, declared), head: inner.head, size: declared, wrapper: kind };
}

/** Never spool more than the scratch file system can hold (less a reserve). */
export function diskCap(dir = os.tmpdir()): { bytes: number; why: string } | undefined {
  try {
    const s = fs.statfsSync(dir);
    return { bytes: Math.max(0, s.bavail * s.bsize - DISK_RESERVE), why: `the free space in ${dir}` };
  } catch {
    return undefined;
  }
}

/**
 * Pass `input` through, stopping with an error once it runs past what the
 * image inside declares (decided from its first bytes) or what the wrapper
 * declared for its content.
 */
async function* limited(input: AsyncIterable<Uint8Array>, opts: SourceOptions, declared?: number, declaredWhy = 'the size the compressed stream declares'): AsyncGenerator<Uint8Array> {
  let limit: { bytes: number; why: string } | undefined = declared !== undefined ? { bytes: declared, why: declaredWhy } : undefined;
  let decided = !opts.limitFor;
  let head: Uint8Array[] = [];
  let headLen = 0;
  let total = 0;
  const check = () => {
    if (limit && total > limit.bytes) {
      throw new ImageError('invalid-format', `the image is longer than ${limit.bytes} bytes (${limit.why}): a decompression bomb or a corrupt image; stopped`, {
        value: total,
      });
    }
  };
  const decide = () => {
    decided = true;
    const own = opts.limitFor!(Buffer.concat(head));
    if (own && (!limit || own.bytes < limit.bytes)) limit = own;
    head = [];
  };
  for await (const chunk of input) {
    total += chunk.length;
    if (!decided) {
      head.push(chunk);
      headLen += chunk.length;
      if (headLen >= PEEK) decide();
    }
    check();
    yield chunk;
  }
  if (!decided && headLen) decide();
  check();
}

/** Read a device front to back in 1 MiB pieces. */
async function* readAll(dev: BlockDevice): AsyncGenerator<Uint8Array> {
  const CHUNK = 1 << 20;
  for (let pos = 0; pos < dev.size; pos += CHUNK) {
    const buf = new Uint8Array(Math.min(CHUNK, dev.size - pos));
    await dev.read(buf, pos);
    yield buf;
  }
}

/** The first `n` bytes of a stream (fewer if it is shorter), and the whole stream again. */
export async function peek(input: AsyncIterable<Uint8Array>, n: number): Promise<{ head: Uint8Array; stream: AsyncIterable<Uint8Array> }> {
  const it = input[Symbol.asyncIterator]();
  const taken: Uint8Array[] = [];
  let len = 0;
  while (len < n) {
    const r = await it.next();
    if (r.done) break;
    taken.push(r.value);
    len += r.value.length;
  }
  const head = Buffer.concat(taken).subarray(0, n);
  async function* again(): AsyncGenerator<Uint8Array> {
    yield* taken;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      yield r.value;
    }
  }
  return { head, stream: again() };
}
