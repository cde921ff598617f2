/**
 * Convert from a source that can only be read once, front to back (a pipe,
 * a server without Range support or --no-ranges, a gzip/xz/zstd/bzip2
 * wrapper taken off on the fly), without a scratch copy when the format
 * allows it:
 *
 *   raw               copied in order (all-zero blocks skipped: the output
 *                     stays sparse). Needs the length in advance (an HTTP
 *                     Content-Length, a zstd frame size) unless the output
 *                     is raw too, sized at the end.
 *   streamOptimized   grains inflated into place marker by marker, every
 *   VMDK              marker and table checked (sequential-vmdk.ts).
 *   OVA               the tar read entry by entry (the OVF first, as the
 *                     OVF spec orders it): the chosen disk (--disk N) goes
 *                     through the above, every entry is hashed, and the
 *                     manifest is checked at the end before the output is
 *                     moved into place.
 *   anything else     spooled into a sparse scratch file and opened as
 *                     usual (qcow2, VDI, VHD, ...: their tables may come
 *                     after their data). Inside an OVA: that disk entry
 *                     alone is spooled.
 *
 * A seekable source (a local file, a URL whose server honours Range) is
 * converted in place by `convertImage`, as before.
 */

import { createHash, type Hash } from 'node:crypto';
import type { SourceDevice } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import { DRIVERS, driverByName, imageLimit, openImageOn, type OpenedImage } from '../formats/index.js';
import { parseManifest, type ManifestLine } from '../formats/ova/manifest.js';
import { parseOvf } from '../formats/ova/ovf.js';
import { checkEntryName } from '../formats/ova/tar.js';
import { TarStream } from '../formats/ova/tar-stream.js';
import { type HttpOptions, type SourceStream, StreamReader, openSourceStream, peek, spoolSource, spoolStream, diskCap } from '../sources/index.js';
import { type ConvertImageOptions, type ConvertResult, convertOpened } from './image.js';
import { NotStreamable, readStreamVmdk, streamableVmdk } from './sequential-vmdk.js';
import { Sink } from './sink.js';

export interface SourceConvertOptions extends ConvertImageOptions {
  /** The input format (-f); probed when absent. */
  inputFormat?: string;
  /** Which disk of an OVA. */
  disk?: number;
  http?: HttpOptions;
  /** Where a stream that must be spooled goes (default: the system's temporary directory). */
  scratchDir?: string;
  warn?: (message: string) => void;
}

const MAX_OVF = 16 << 20;
const MAX_MANIFEST = 1 << 20;
const ALGORITHMS: Record<string, string> = { SHA1: 'sha1', SHA256: 'sha256', SHA512: 'sha512' };


/**
 * Convert the image `src` names (a path, `-`, a URL) into `dst`: in place
 * when the source is seekable (`openSeekable` opens it as the caller always
 * does), front to back otherwise.
 */
export async function convertSource(src: string, dst: string, opts: SourceConvertOptions, openSeekable: () => Promise<OpenedImage>): Promise<ConvertResult> {
  const s = await openSourceStream(src, { http: opts.http, scratchDir: opts.scratchDir, limitFor: imageLimit });
  if (s.device) {
    // A file or a ranged URL: opened again the usual way (backing files, extents, data files).
    await s.device.close();
    return convertOpened(await openSeekable(), dst, opts);
  }
  try {
    return await convertStream(s, src, dst, opts);
  } finally {
    await s.close().catch(() => {});
  }
}

type Plan = 'raw' | 'vmdk' | 'ova' | 'spool';

function planFor(head: Uint8Array, size: number | undefined, opts: SourceConvertOptions): Plan {
  const driver = opts.inputFormat ? driverByName(opts.inputFormat) : DRIVERS.find((d) => d.probe(head));
  if (driver?.name === 'ova') return 'ova';
  if (driver?.name === 'vmdk' && streamableVmdk(head)) return 'vmdk';
  if ((!driver || driver.name === 'raw') && (size !== undefined || opts.format === 'raw')) return 'raw';
  return 'spool';
}

/** Convert a source stream (see the file comment). */
export async function convertStream(s: SourceStream, name: string, dst: string, opts: SourceConvertOptions): Promise<ConvertResult> {
  const plan = planFor(s.head, s.size, opts);
  if (plan === 'spool') return convertSpooled(await spoolSource(s, opts.scratchDir), name, dst, opts);
  let sink: Sink | undefined;
  try {
    let sourceFormat: string = plan;
    let size: number;
    if (plan === 'raw') {
      ({ sink, size } = await copyRaw(s.stream, s.size, name, dst, opts, !opts.inputFormat));
    } else if (plan === 'vmdk') {
      const r = new StreamReader(s.stream, name);
      try {
        size = await readStreamVmdk(
          r,
          async (capacity) => void (sink = await Sink.create(dst, capacity, opts, name)),
          (o, d) => sink!.put(o, d),
        );
      } catch (e) {
        if (!(e instanceof NotStreamable)) throw e;
        return await convertSpooled(await spoolSource(s, opts.scratchDir, prepend(e.prefix, r.rest())), name, dst, opts);
      }
    } else {
      const r = await convertOva(new StreamReader(s.stream, name), name, dst, opts);
      if ('spooled' in r) return r.spooled;
      ({ sink, size, sourceFormat } = r);
    }
    const stats = await sink!.finish(size);
    return { source: name, 'source-format': sourceFormat, target: dst, 'target-format': sink!.formatName, 'virtual-size': size, ...stats };
  } catch (e) {
    await sink?.abort().catch(() => {});
    throw e;
  }
}

/** Open a spooled image and convert it in place. */
async function convertSpooled(device: SourceDevice, name: string, dst: string, opts: SourceConvertOptions): Promise<ConvertResult> {
  return convertOpened(await openImageOn(device, name, { format: opts.inputFormat, disk: opts.disk, warn: opts.warn }), dst, opts);
}

/**
 * Raw bytes in order into a new image. `size`: the length the source
 * declares (it must deliver exactly that); undefined for a raw output sized
 * at the end. `probeTail`: refuse a stream ending in another format's
 * footer (a fixed VHD looks raw from its head).
 */
async function copyRaw(
  stream: AsyncIterable<Uint8Array>,
  size: number | undefined,
  name: string,
  dst: string,
  opts: SourceConvertOptions,
  probeTail: boolean,
): Promise<{ sink: Sink; size: number }> {
  const sink = await Sink.create(dst, size, opts, name);
  try {
    let pos = 0;
    let tail = new Uint8Array(0);
    for await (const chunk of stream) {
      if (size !== undefined && pos + chunk.length > size) {
        throw new ImageError('invalid-format', `${name}: the stream runs past the ${size} bytes it declared`, { value: pos + chunk.length });
      }
      await sink.put(pos, chunk);
      pos += chunk.length;
      tail = chunk.length >= 512 ? chunk.slice(chunk.length - 512) : Buffer.concat([tail, chunk]).subarray(-512);
    }
    if (size !== undefined && pos !== size) throw new ImageError('invalid-format', `${name}: the stream ended after ${pos} of the ${size} bytes it declared`, { value: pos });
    const footer = probeTail && tail.length === 512 ? DRIVERS.find((d) => d.probeTail?.(tail, pos)) : undefined;
    if (footer) {
      throw new ImageError('unsupported', `${name}: the stream ends in a ${footer.name} footer (its head looks raw): pass -f ${footer.name} to read it as ${footer.name} (spooled first), or -f raw to copy every byte`, { format: footer.name });
    }
    return { sink, size: pos };
  } catch (e) {
    await sink.abort().catch(() => {});
    throw e;
  }
}

/** Every entry's digests, for the manifest: the algorithms it names, or (before it is read) all three. */
class Digests {
  private readonly seen = new Map<string, Record<string, string>>();
  manifest: ManifestLine[] | undefined;

  start(name: string): { update(b: Uint8Array): void; end(): void } {
    const algos = this.manifest ? this.manifest.filter((l) => l.file === name).map((l) => l.algorithm) : Object.keys(ALGORITHMS);
    const hashes: Array<[string, Hash]> = algos.map((a) => [a, createHash(ALGORITHMS[a]!)]);
    return {
      update: (b) => {
        for (const [, h] of hashes) h.update(b);
      },
      end: () => {
        if (!this.seen.has(name)) this.seen.set(name, Object.fromEntries(hashes.map(([a, h]) => [a, h.digest('hex')])));
      },
    };
  }

  /** Check every manifest line against what passed. */
  verify(): void {
    for (const l of this.manifest ?? []) {
      const got = this.seen.get(l.file);
      if (!got) throw new ImageError('invalid-format', `ova: the manifest names '${l.file}', which the archive does not hold`, { format: 'ova', field: 'manifest', value: l.file });
      if (got[l.algorithm] !== l.digest) {
        throw new ImageError('corrupt', `ova: ${l.algorithm} of '${l.file}' is ${got[l.algorithm]}, but the manifest says ${l.digest}`, { format: 'ova', field: 'manifest', value: l.file });
      }
    }
  }
}

async function* prepend(first: Uint8Array, rest: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  yield first;
  yield* rest;
}

async function* hashed(data: AsyncIterable<Uint8Array>, h: { update(b: Uint8Array): void }): AsyncGenerator<Uint8Array> {
  for await (const b of data) {
    h.update(b);
    yield b;
  }
}

async function readAllOf(data: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const b of data) parts.push(Uint8Array.from(b));
  return Buffer.concat(parts);
}

/**
 * An OVA front to back. The chosen disk is converted as it passes (or
 * spooled, when its format needs seeking); the output is left for the
 * caller to commit only after the manifest matched.
 */
async function convertOva(
  r: StreamReader,
  name: string,
  dst: string,
  opts: SourceConvertOptions,
): Promise<{ sink: Sink; size: number; sourceFormat: string } | { spooled: ConvertResult }> {
  const tar = new TarStream(r);
  const first = await tar.next();
  if (!first || !/\.ovf$/i.test(first.name)) throw new ImageError('invalid-format', 'ova: the archive does not start with its .ovf descriptor', { format: 'ova', field: 'ovf' });
  if (first.size > MAX_OVF) throw new ImageError('invalid-format', `ova: the OVF descriptor is ${first.size} bytes`, { format: 'ova', field: 'ovf', value: first.size });
  const digests = new Digests();
  const ovfHash = digests.start(first.name);
  const ovfText = await readAllOf(hashed(tar.data(), ovfHash));
  ovfHash.end();
  const disks = parseOvf(ovfText.toString('utf8'));
  if (disks.length === 0) throw new ImageError('invalid-format', 'ova: the OVF descriptor lists no disks', { format: 'ova', field: 'DiskSection' });
  const index = opts.disk ?? 0;
  const disk = disks[index];
  if (!disk) {
    throw new ImageError('usage', `ova: there is no disk ${index}: the OVA has ${disks.length} (--disk 0${disks.length > 1 ? `..${disks.length - 1}` : ''})`, { format: 'ova', value: index });
  }
  checkEntryName(disk.file, first.offset);

  let sink: Sink | undefined;
  let spooled: SourceDevice | undefined;
  let result: { size: number; sourceFormat: string } | undefined;
  try {
    for (let e = await tar.next(); e; e = await tar.next()) {
      if (/\.mf$/i.test(e.name) && !digests.manifest) {
        if (e.size > MAX_MANIFEST) throw new ImageError('invalid-format', `ova: the manifest is ${e.size} bytes`, { format: 'ova', field: 'manifest', value: e.size });
        digests.manifest = parseManifest((await readAllOf(tar.data())).toString('utf8'));
        continue;
      }
      const h = digests.start(e.name);
      if (e.name === disk.file && !result && !spooled) {
        const body = await peek(hashed(tar.data(), h), 64 * 1024);
        const driver = DRIVERS.filter((d) => d.name !== 'ova').find((d) => d.probe(body.head));
        if (!driver || driver.name === 'raw') {
          ({ sink } = await copyRaw(body.stream, e.size, `${name}/${e.name}`, dst, { ...opts, inputFormat: undefined }, false));
          result = { size: e.size, sourceFormat: 'ova' };
        } else if (driver.name === 'vmdk' && streamableVmdk(body.head)) {
          const inner = new StreamReader(body.stream, `${name}/${e.name}`);
          try {
            const size = await readStreamVmdk(
              inner,
              async (capacity) => void (sink = await Sink.create(dst, capacity, opts, name)),
              (o, d) => sink!.put(o, d),
            );
            result = { size, sourceFormat: 'ova' };
          } catch (err) {
            if (!(err instanceof NotStreamable)) throw err;
            spooled = await spoolStream(prepend(err.prefix, inner.rest()), { scratchDir: opts.scratchDir, diskBudget: diskCap(opts.scratchDir) });
          }
        } else {
          spooled = await spoolStream(body.stream, { scratchDir: opts.scratchDir, diskBudget: diskCap(opts.scratchDir) });
        }
      } else {
        for await (const b of tar.data()) h.update(b);
      }
      h.end();
    }
    await tar.rest();
    if (!result && !spooled) {
      throw new ImageError('invalid-format', `ova: disk ${index} (${disk.id}) is the file '${disk.file}', which the archive does not hold`, { format: 'ova', field: 'References', value: disk.file });
    }
    digests.verify();
    if (spooled) {
      const device = spooled;
      spooled = undefined;
      const r2 = await convertSpooled(device, `${name}/${disk.file}`, dst, { ...opts, inputFormat: undefined, disk: undefined });
      return { spooled: { ...r2, source: name, 'source-format': 'ova' } };
    }
    return { sink: sink!, ...result! };
  } catch (e) {
    await sink?.abort().catch(() => {});
    await spooled?.close().catch(() => {});
    throw e;
  }
}
