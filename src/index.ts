/**
 * imgtool as a library: the operations of the command line, typed and async,
 * with the same options. Errors are `ImageError` (`kind`, and in `context`
 * the file, format, field, offset and value), as the CLI reports them.
 *
 *   import { convert, openImage } from 'imgtool';
 *   const img = await openImage('disk.vdi');
 *   console.log(await img.info());
 *   await img.close();
 *   await convert('disk.vdi', 'disk.qcow2', { format: 'qcow2', onProgress: (done, total) => {} });
 *
 * Sources are local paths or http(s) URLs, compressed or not, as on the
 * command line; inputs are opened read-only and outputs appear under their
 * name only when complete.
 */

import { type BlockDevice, type Extent, extents as walkExtents } from './core/device.js';
import { ImageError } from './core/errors.js';
import { convertOpened, type ConvertResult } from './convert/image.js';
import { convertSource } from './convert/sequential.js';
import type { Progress } from './convert/progress.js';
import {
  type OpenedImage,
  createImage as createFormatImage,
  describe,
  formatFromExtension,
  openImage as openFormatImage,
} from './formats/index.js';
import type { Image, ImageInfo } from './formats/types.js';
import type { HttpOptions } from './sources/index.js';
import { inspectDisk, type DiskInfo } from './partition/inspect.js';
import { e2fsck, type FsckResult, rawHostFile } from './fs/e2fsprogs.js';
import { SliceDevice } from './core/slice.js';
import { wrapImage, type WrapOptions, type WrapReport } from './wrap/wrap.js';
import { convertDomain as convertDomainText, type DomainConvertOptions, type DomainConvertResult } from './guest/domain/index.js';
import { readFileSync } from 'node:fs';

export { ImageError } from './core/errors.js';
export type { ErrorKind, ErrorContext } from './core/errors.js';
export type { BlockDevice, Extent, ExtentKind } from './core/device.js';
export type { Image, ImageInfo } from './formats/types.js';
export type { CopyStats } from './convert/convert.js';
export type { ConvertResult } from './convert/image.js';
export type { DiskInfo } from './partition/inspect.js';
export type { FsckResult } from './fs/e2fsprogs.js';
export type { WrapReport } from './wrap/wrap.js';
export type { DomainConvertOptions, DomainConvertResult } from './guest/domain/index.js';
export type { HttpOptions } from './sources/index.js';

/** How to open a source image (the CLI's -f, --backing, --backing-dir, --data-file, --disk, --header, --ca-file, --no-ranges). */
export interface OpenOptions {
  format?: string;
  /** Follow backing files: true allows the image's own directory, a string names the directory. */
  backing?: boolean | string;
  dataFile?: boolean;
  /** Which disk of an OVA. */
  disk?: number;
  /** For http(s) URLs. */
  http?: HttpOptions;
  /** Open a local image for writing. */
  writable?: boolean;
  /** Warnings about the image (fields qemu ignores too), once each. */
  onWarning?: (message: string) => void;
}

/** An open image: the guest's view, plus what `imgtool info` says of it. */
export interface OpenImage {
  readonly format: string;
  readonly size: number;
  /** `qemu-img info --output=json` fields (and `warnings`). */
  info(): Promise<ImageInfo & { filename: string; 'actual-size'?: number }>;
  /** Runs of data, zero and unallocated bytes covering [0, size), merged. */
  extents(): AsyncGenerator<Extent>;
  /** Fill `buf` with the guest bytes at `offset`. */
  read(buf: Uint8Array, offset: number): Promise<void>;
  /** The image as a BlockDevice (for copying or inspecting with other functions). */
  readonly device: Image;
  close(): Promise<void>;
}

function handle(opened: OpenedImage): OpenImage {
  return {
    format: opened.image.format,
    size: opened.image.size,
    device: opened.image,
    info: () => describe(opened),
    extents: () => walkExtents(opened.image),
    read: (buf, offset) => opened.image.read(buf, offset),
    close: () => opened.image.close(),
  };
}

async function openOpened(src: string, opts: OpenOptions = {}): Promise<OpenedImage> {
  return openFormatImage(src, {
    format: opts.format,
    backing: opts.backing,
    dataFile: opts.dataFile,
    disk: opts.disk,
    http: opts.http,
    writable: opts.writable,
    warn: opts.onWarning,
  });
}

/** Open an image of any format imgtool reads, from a path or an http(s) URL. */
export async function openImage(src: string, opts: OpenOptions = {}): Promise<OpenImage> {
  return handle(await openOpened(src, opts));
}

export interface CreateOptions {
  /** Output format; from the file extension when omitted. */
  format?: string;
  /** Virtual size in bytes. */
  size: number;
  /** Format options (`-o`), e.g. { cluster_size: '2M' }. */
  options?: Record<string, string>;
  force?: boolean;
}

/** A new image, open for writing; it appears under its name at `commit()`. */
export interface NewImage {
  readonly image: Image;
  /** Flush, close and move into place. */
  commit(): Promise<void>;
  /** Close and remove the partial file. */
  abort(): Promise<void>;
}

function outputFormat(dst: string, format: string | undefined): string {
  const f = format ?? formatFromExtension(dst);
  if (!f) throw new ImageError('usage', `cannot tell the output format from '${dst}': give a format`);
  return f;
}

export async function createImage(dst: string, opts: CreateOptions): Promise<NewImage> {
  const created = await createFormatImage(dst, outputFormat(dst, opts.format), { size: opts.size, options: opts.options ?? {} }, { force: opts.force });
  return {
    image: created.image,
    commit: async () => {
      await created.image.flush();
      await created.image.close();
      await created.output.commit();
    },
    abort: async () => {
      await created.image.close().catch(() => {});
      await created.output.abort();
    },
  };
}

export interface ConvertOptions extends OpenOptions {
  /** Output format (`-O`); from the extension of `dst` when omitted. */
  outputFormat?: string;
  /** Output format options (`-o`). */
  options?: Record<string, string>;
  /** Compress (`-c`). */
  compress?: boolean;
  /** Minimum run of zeros left out (`-S`), bytes; default 4096. */
  sparseSize?: number;
  force?: boolean;
  /** Called as data is copied: bytes done of bytes to do. */
  onProgress?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

function progressFor(cb?: (done: number, total: number) => void): Progress | undefined {
  if (!cb) return undefined;
  let total = 0;
  return {
    start: (_phase, t) => {
      total = t;
      cb(0, total);
    },
    update: (done) => cb(done, total),
    finish: () => cb(total, total),
  };
}

/** `imgtool convert`: copy `src` into a new image `dst`, only allocated data. */
export async function convert(src: string, dst: string, opts: ConvertOptions = {}): Promise<ConvertResult> {
  const copy = {
    format: outputFormat(dst, opts.outputFormat),
    options: opts.options,
    compress: opts.compress,
    sparseSize: opts.sparseSize,
    force: opts.force,
    progress: progressFor(opts.onProgress),
    signal: opts.signal,
  };
  // As the CLI: a pipe, a server without ranges or a compressed input is read front to back (convert/sequential.ts).
  if (opts.backing || opts.dataFile) return convertOpened(await openOpened(src, opts), dst, copy);
  return convertSource(src, dst, { ...copy, inputFormat: opts.format, disk: opts.disk, http: opts.http, warn: opts.onWarning }, () => openOpened(src, opts));
}

export interface WrapLibraryOptions extends OpenOptions, Omit<WrapOptions, 'output' | 'format' | 'progress' | 'parts' | 'domain'> {
  outputFormat?: string;
  /** A Xen guest definition (xl/xm config or libvirt XML) to turn into `dst.xml`. */
  domainFile?: string;
  onProgress?: (done: number, total: number) => void;
}

/** `imgtool wrap`: a Xen guest's bare filesystem image becomes a partitioned, bootable KVM disk. */
export async function wrap(src: string, dst: string, opts: WrapLibraryOptions = {}): Promise<WrapReport> {
  const format = outputFormat(dst, opts.outputFormat ?? (dst.startsWith('/dev/') ? 'raw' : undefined));
  const opened = await openOpened(src, opts);
  try {
    return await wrapImage(opened, {
      ...opts,
      output: dst,
      format,
      guest: opts.guest ?? { boot: 'auto' },
      progress: progressFor(opts.onProgress),
      domain: opts.domainFile ? { path: opts.domainFile, text: readFileSync(opts.domainFile, 'utf8') } : undefined,
    });
  } finally {
    await opened.image.close();
  }
}

/** `imgtool part list`: the partition table and what each partition holds. */
export async function listPartitions(src: string, opts: OpenOptions = {}): Promise<DiskInfo> {
  const opened = await openOpened(src, opts);
  try {
    return await inspectDisk(opened.image);
  } finally {
    await opened.image.close();
  }
}

export interface FsckOptions extends OpenOptions {
  /** 'check' (-n, never writes), 'preen' (-p) or 'repair' (-y). Default 'check'. */
  mode?: 'check' | 'preen' | 'repair';
  /** Partition number (1-based); omitted or 0: the whole image. */
  partition?: number;
}

/** `imgtool fsck`: e2fsck (WebAssembly) on an ext filesystem inside any image. Exit codes are e2fsck's. */
export async function fsck(src: string, opts: FsckOptions = {}): Promise<FsckResult> {
  const mode = opts.mode ?? 'check';
  const opened = await openOpened(src, { ...opts, writable: mode !== 'check' });
  try {
    let dev: BlockDevice = opened.image;
    let offset = 0;
    if (opts.partition) {
      const disk = await inspectDisk(opened.image);
      const p = disk.partitions.find((x) => x.number === opts.partition);
      if (!p) throw new ImageError('usage', `${src} has no partition ${opts.partition}`);
      dev = new SliceDevice(opened.image, p.start, p.size);
      offset = p.start;
    }
    return await e2fsck(dev, { mode, hostFile: rawHostFile(opened.driver.name, opened.file, offset) });
  } finally {
    await opened.image.close();
  }
}

/** `imgtool domain convert`: a Xen guest definition (xl/xm config text or libvirt XML) as KVM libvirt XML. */
export function convertDomain(text: string, name: string, opts: DomainConvertOptions = {}): DomainConvertResult {
  return convertDomainText(text, name, opts);
}
