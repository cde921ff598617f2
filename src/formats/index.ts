/**
 * One entry point that detects, then constructs: open an image file of any
 * format, or create one. Backing files are followed only when the caller
 * allows it, and only inside the directory it names.
 */

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BlockDevice } from '../core/device.js';
import { FileDevice } from '../core/file.js';
import type { SourceDevice } from '../core/device.js';
import { openSource, type HttpOptions } from '../sources/index.js';
import { containerBound, declaredVirtualSize } from './declared-size.js';
import { ImageError } from '../core/errors.js';
import { OutputFile } from '../core/output.js';
import { escapeLine } from '../core/escape.js';
import type { BackingRequest, CreateOptions, FormatDriver, Image, ImageInfo } from './types.js';
import { raw } from './raw.js';
import { qcow2 } from './qcow2/index.js';
import { vdi } from './vdi/index.js';
import { qcow } from './qcow/index.js';
import { vmdk } from './vmdk/index.js';
import { ovaDriver } from './ova/index.js';
import { vpc } from './vhd/index.js';
import { vhdx } from './vhdx/index.js';

/** Probe order matters only if two magics could collide; raw is the fallback and stays last. */
export const DRIVERS: FormatDriver[] = [vdi, qcow, qcow2, vmdk, vpc, ovaDriver(() => DRIVERS), vhdx, raw];

export function driverByName(name: string): FormatDriver {
  const d = DRIVERS.find((x) => x.name === name);
  if (!d) {
    throw new ImageError('usage', `unknown format '${name}' (known: ${DRIVERS.map((x) => x.name).join(', ')})`, {
      format: name,
    });
  }
  return d;
}

/** The output format named by a file's extension, or undefined. */
export function formatFromExtension(file: string): string | undefined {
  const ext = path.extname(file).slice(1).toLowerCase();
  if (!ext) return undefined;
  return DRIVERS.find((d) => d.extensions.includes(ext))?.name;
}

/** Detect the format of a container device from its first bytes; raw when nothing matches. */
export async function detectFormat(child: BlockDevice): Promise<FormatDriver> {
  const head = new Uint8Array(Math.min(4096, child.size));
  await child.read(head, 0);
  const byHead = DRIVERS.find((d) => d.probe(head));
  if (byHead || child.size < 512) return byHead ?? raw;
  const tail = new Uint8Array(512);
  await child.read(tail, child.size - 512);
  return DRIVERS.find((d) => d.probeTail?.(tail, child.size)) ?? raw;
}

export interface OpenImageOptions {
  format?: string;
  writable?: boolean;
  /**
   * Follow backing files. `true` allows the image's own directory; a string
   * names the directory backing files must resolve into.
   */
  backing?: boolean | string;
  /** Allow a qcow2 external data file (same directory rule as backing). */
  dataFile?: boolean;
  /** Hears each warning about the image or its backing chain once (see Image.warnings). */
  warn?: (message: string) => void;
  /** Containers of several disks (OVA): which disk, from 0. */
  disk?: number;
  /** For an http(s) URL: headers (credentials), an extra CA file, no Range requests. */
  http?: HttpOptions;
}

export interface OpenedImage {
  image: Image;
  driver: FormatDriver;
  /** The container: a local file, a URL, or a spool of a pipe or a decompressed stream. */
  file: SourceDevice;
  path: string;
}

const MAX_CHAIN = 16;

/** Open an image file of any format. The file is opened read-only unless `writable`. */
export async function openImage(file: string, opts: OpenImageOptions = {}, depth = 0): Promise<OpenedImage> {
  return openChain(file, opts, depth);
}

/**
 * openImage for any image of a chain: a backing file (`role`) must be a
 * regular file or a block device, and opening it never blocks (a FIFO).
 */
async function openChain(file: string, opts: OpenImageOptions, depth: number, role?: string): Promise<OpenedImage> {
  // The image the user named may be a URL or compressed (read-only); backing files are local files.
  const child =
    role || opts.writable
      ? await FileDevice.open(file, { writable: opts.writable, fileOrBlockOnly: role })
      : await openNamedSource(file, opts.http);
  try {
    const driver = opts.format ? driverByName(opts.format) : await detectFormat(child);
    const allowDir =
      opts.backing === undefined || opts.backing === false
        ? undefined
        : path.resolve(opts.backing === true ? path.dirname(file) : opts.backing);
    const image = await driver.open(child, {
      writable: opts.writable,
      path: file,
      warn: opts.warn,
      openBacking: allowDir
        ? async (req: BackingRequest) => {
            if (depth + 1 >= MAX_CHAIN) {
              throw new ImageError('unsupported', `backing chain deeper than ${MAX_CHAIN} images`, { path: file });
            }
            const target = confine(file, req.name, allowDir, 'backing file');
            const format = backingFormat(file, req);
            const opened = await openChain(target, { format, backing: allowDir, warn: opts.warn }, depth + 1, 'backing file');
            return opened.image;
          }
        : undefined,
      openExtent: extentOpener(file, opts.writable),
      disk: opts.disk,
      openDataFile: opts.dataFile ? dataFileOpener(file, opts.writable) : undefined,
    });
    return { image, driver, file: child, path: file };
  } catch (e) {
    await child.close();
    throw e;
  }
}

/**
 * Open an image held by an already open child device (standard input spooled
 * to a scratch file). `openBacking` as in OpenOptions; `info` passes one that
 * describes without following.
 */
export async function openImageOn(
  child: SourceDevice,
  file: string,
  opts: { format?: string; writable?: boolean; disk?: number; dataFile?: boolean; warn?: (message: string) => void },
  openBacking?: (req: BackingRequest) => Promise<Image>,
): Promise<OpenedImage> {
  try {
    const driver = opts.format ? driverByName(opts.format) : await detectFormat(child);
    const openExtent = file === '-' ? undefined : extentOpener(file, opts.writable);
    const openDataFile = opts.dataFile && file !== '-' ? dataFileOpener(file, opts.writable) : undefined;
    const image = await driver.open(child, { writable: opts.writable, path: file, openBacking, openExtent, disk: opts.disk, openDataFile, warn: opts.warn });
    return { image, driver, file: child, path: file };
  } catch (e) {
    await child.close();
    throw e;
  }
}

/** Open with a caller-supplied backing opener (used by `info` to describe an image without following its backing file). */
export async function openImageWith(
  file: string,
  opts: { format?: string; writable?: boolean; disk?: number; dataFile?: boolean; warn?: (message: string) => void; http?: HttpOptions },
  openBacking: (req: BackingRequest) => Promise<Image>,
): Promise<OpenedImage> {
  const child = opts.writable
    ? await FileDevice.open(file, { writable: true })
    : await openNamedSource(file, opts.http);
  return openImageOn(child, file, opts, openBacking);
}

/** Open files a multi-file image (VMDK descriptor) names, only inside the image's own directory. */
function extentOpener(file: string, writable?: boolean): (name: string) => Promise<BlockDevice> {
  return async (name: string) =>
    FileDevice.open(confine(file, name, path.dirname(path.resolve(file)), 'extent file'), { writable, fileOrBlockOnly: 'extent file' });
}

/** Opens a qcow2 external data file: in the image's directory, a regular file or block device. */
function dataFileOpener(file: string, writable?: boolean): (name: string) => Promise<BlockDevice> {
  return async (name: string) => {
    const target = confine(file, name, path.dirname(path.resolve(file)), 'data file');
    return FileDevice.open(target, { writable, fileOrBlockOnly: 'data file' });
  };
}

/**
 * The driver name an image gives for its backing file, checked: a name
 * imgtool does not know is a fault of the image (invalid input), named
 * with the field and its offset.
 */
function backingFormat(file: string, req: BackingRequest): string | undefined {
  if (req.format === undefined || DRIVERS.some((d) => d.name === req.format)) return req.format;
  const f = req.formatField;
  throw new ImageError(
    'invalid-format',
    `${escapeLine(file)}: backing file format '${escapeLine(req.format)}'${f ? ` (${f.field} at offset ${f.offset})` : ''} is not a format imgtool knows (${DRIVERS.map((x) => x.name).join(', ')})`,
    { path: file, field: f?.field, offset: f?.offset, value: req.format },
  );
}

/** Resolve `name` relative to `file`'s directory and refuse anything outside `allowDir`. */
function confine(file: string, name: string, allowDir: string, what: string): string {
  const shown = escapeLine(name);
  if (/^[a-z][a-z0-9+.-]*:/i.test(name) && !name.startsWith('/')) {
    throw new ImageError('unsupported', `${what} '${shown}' is not a local file`, { path: file, value: name });
  }
  const resolved = path.resolve(path.dirname(path.resolve(file)), name);
  let real: string;
  try {
    real = fs.realpathSync(resolved);
  } catch {
    throw new ImageError('io', `${what} '${shown}' (resolved to ${escapeLine(resolved)}) does not exist`, { path: file, value: name });
  }
  const allowReal = fs.realpathSync(allowDir);
  // The root directory already ends with a separator: '/' allows '/x', not only '//x'.
  const prefix = allowReal.endsWith(path.sep) ? allowReal : allowReal + path.sep;
  if (real !== allowReal && !real.startsWith(prefix)) {
    throw new ImageError('usage', `${what} '${shown}' resolves to ${escapeLine(real)}, outside the allowed directory ${allowReal}`, {
      path: file,
      value: name,
    });
  }
  return real;
}

export interface CreatedImage {
  image: Image;
  driver: FormatDriver;
  output: OutputFile;
  /**
   * The new image reads as zero everywhere (qemu's has_zero_init): a copy may
   * skip zero ranges. False on a host block device or an existing file under
   * a format that maps the child's bytes directly (raw, fixed VDI).
   */
  zeroInit: boolean;
}

/** Create a new image file atomically: call `output.commit()` after `image.close()`, or `output.abort()`. */
export async function createImage(
  file: string,
  format: string,
  opts: CreateOptions,
  out: { force?: boolean; inputs?: string[] } = {},
): Promise<CreatedImage> {
  const driver = driverByName(format);
  if (!driver.create) throw new ImageError('unsupported', `imgtool cannot write ${format} images`, { format });
  const output = await OutputFile.create(file, out);
  try {
    const createOpts = { ...opts, path: file };
    const image = await driver.create(output.device, createOpts);
    const zeroInit = !!output.device.zeroInit || !!driver.createsZeroed?.(createOpts);
    return { image, driver, output, zeroInit };
  } catch (e) {
    await output.abort();
    throw e;
  }
}

/** `qemu-img info` JSON for an opened image: the driver's fields plus filename and actual-size. */
export async function describe(opened: OpenedImage): Promise<ImageInfo & { filename: string; 'actual-size'?: number }> {
  const info = await opened.image.info();
  const warnings = opened.image.warnings ?? [];
  const onDisk = opened.file.allocatedOnDisk();
  return {
    ...info,
    filename: opened.path,
    ...(onDisk === undefined ? {} : { 'actual-size': onDisk }),
    ...(warnings.length ? { warnings: [...warnings] } : {}),
  };
}

/**
 * The container the user named: a local path, `-` (standard input), or an
 * http(s) URL, compressed or not (see src/sources). A stream is capped by
 * what the image inside declares.
 */
export async function openNamedSource(name: string, http?: HttpOptions): Promise<SourceDevice> {
  return (await openSource(name, { http, limitFor: imageLimit })).device;
}

/** How long a streamed (decompressed, spooled) image may be: what its header declares, with room for metadata. */
export function imageLimit(head: Uint8Array): { bytes: number; why: string } | undefined {
  const d = declaredVirtualSize(head);
  return d && { bytes: containerBound(d.size), why: `the ${d.format} image inside declares ${d.size} bytes` };
}
