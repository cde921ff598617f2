/**
 * A device over a host file or a host block device (an LVM volume, /dev/sdX).
 *
 * - Regular files: size from fstat. Opened read-only unless asked.
 * - Block devices: fstat says 0, so the size comes from seeking to the end
 *   (lseek(fd, 0, SEEK_END)), which Node does not expose directly; we read
 *   /sys/dev/block/MAJ:MIN/size (in 512-byte units) and fall back to a binary
 *   search with 1-byte reads when sysfs is not there.
 * - `growable` (files we create): writes past the end extend the file.
 *
 * `status` asks the kernel where a regular file's data and holes are
 * (SEEK_DATA/SEEK_HOLE through seek-data.ts), so a sparse raw input's holes
 * are skipped without reading them; where it cannot, everything is data and
 * callers detect zeros in what they read.
 *
 * Both async and synchronous methods are offered: the synchronous ones are
 * used by code that cannot await (the WASM tools' I/O callbacks).
 */

import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { escapeLine } from './escape.js';
import { nodeChildProcess } from './lazy.js';
import { type Extent, type SourceDevice, checkRange, checkWritable } from './device.js';
import { ImageError, ioError } from './errors.js';
import { dataRunAt } from './seek-data.js';

export interface FileOpenOptions {
  writable?: boolean;
  /** Create a new file (fails if it exists). Implies writable and growable. */
  create?: boolean;
  growable?: boolean;
  /**
   * Accept only a regular file or a block device, and say what the file is
   * for in the refusal (`'backing file'`). The open itself does not block
   * (O_NONBLOCK: a FIFO would otherwise wait for a writer forever); the
   * flag is harmless for the files we keep (Linux ignores it for regular
   * files and block devices).
   */
  fileOrBlockOnly?: string;
}

export class FileDevice implements SourceDevice {
  size: number;
  readonly readOnly: boolean;
  readonly growable: boolean;
  readonly isBlockDevice: boolean;
  /** A file this device created reads as zero; an existing file or a block device does not. */
  readonly zeroInit: boolean;
  readonly path: string;
  private fd: number;
  private closed = false;
  /** Bytes read through this device: tests use it to prove sparse reads. */
  bytesRead = 0;

  private constructor(path: string, fd: number, size: number, readOnly: boolean, growable: boolean, isBlock: boolean, created: boolean) {
    this.path = path;
    this.fd = fd;
    this.size = size;
    this.readOnly = readOnly;
    this.growable = growable;
    this.isBlockDevice = isBlock;
    this.zeroInit = created;
  }

  /**
   * The open descriptor, for a helper thread that does its own positional
   * I/O on this file while nothing else uses the device (e2fsprogs' direct
   * I/O through a wrap overlay; src/fs/e2fsprogs.ts).
   */
  get descriptor(): number {
    if (this.closed) throw new ImageError('usage', `${this.path} is closed`, { path: this.path });
    return this.fd;
  }

  /** Such a helper wrote up to `end`: a growable file grows to it. */
  grewTo(end: number): void {
    if (this.growable && end > this.size) this.size = end;
  }

  static async open(path: string, opts: FileOpenOptions = {}): Promise<FileDevice> {
    const writable = !!(opts.writable || opts.create);
    const flags = opts.fileOrBlockOnly
      ? (writable ? fs.constants.O_RDWR : fs.constants.O_RDONLY) | fs.constants.O_NONBLOCK
      : opts.create ? 'wx+' : writable ? 'r+' : 'r';
    let fd: number;
    try {
      fd = await new Promise<number>((res, rej) => fs.open(path, flags, 0o644, (e, f) => (e ? rej(e) : res(f))));
    } catch (e) {
      // A socket cannot be opened at all (ENXIO): say what it is.
      const st = opts.fileOrBlockOnly ? fs.statSync(path, { throwIfNoEntry: false }) : undefined;
      if (st?.isSocket()) throw notFileOrBlock(opts.fileOrBlockOnly!, path, st);
      throw ioError(e, 'open', path);
    }
    try {
      const st = fs.fstatSync(fd);
      if (opts.fileOrBlockOnly && !st.isFile() && !st.isBlockDevice()) {
        throw notFileOrBlock(opts.fileOrBlockOnly, path, st);
      }
      if (st.isDirectory()) throw new ImageError('usage', `${path} is a directory`, { path });
      const isBlock = st.isBlockDevice();
      const size = isBlock ? blockDeviceSize(fd, st, path) : st.size;
      return new FileDevice(path, fd, size, !writable, !!(opts.create || opts.growable), isBlock, !!opts.create);
    } catch (e) {
      fs.closeSync(fd);
      throw e instanceof ImageError ? e : ioError(e, 'stat', path);
    }
  }

  readSync(buf: Uint8Array, offset: number): void {
    checkRange(this, offset, buf.length, 'read');
    let done = 0;
    while (done < buf.length) {
      let n: number;
      try {
        n = fs.readSync(this.fd, buf, done, buf.length - done, offset + done);
      } catch (e) {
        throw ioError(e, `read at ${offset + done}`, this.path);
      }
      if (n === 0) {
        // The file shrank under us, or a growable file's tail was never written: zeros.
        if (this.growable) {
          buf.fill(0, done);
          break;
        }
        throw new ImageError('io', `unexpected end of file at ${offset + done}`, { path: this.path, offset: offset + done });
      }
      done += n;
    }
    this.bytesRead += buf.length;
  }

  writeSync(buf: Uint8Array, offset: number): void {
    checkWritable(this, this.path);
    if (this.growable && offset + buf.length > this.size) this.size = offset + buf.length;
    checkRange(this, offset, buf.length, 'write');
    let done = 0;
    while (done < buf.length) {
      try {
        done += fs.writeSync(this.fd, buf, done, buf.length - done, offset + done);
      } catch (e) {
        throw ioError(e, `write at ${offset + done}`, this.path);
      }
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    let done = 0;
    while (done < buf.length) {
      const n = await new Promise<number>((res, rej) =>
        fs.read(this.fd, buf, done, buf.length - done, offset + done, (e, n) =>
          e ? rej(ioError(e, `read at ${offset + done}`, this.path)) : res(n),
        ),
      );
      if (n === 0) {
        if (this.growable) {
          buf.fill(0, done);
          break;
        }
        throw new ImageError('io', `unexpected end of file at ${offset + done}`, { path: this.path, offset: offset + done });
      }
      done += n;
    }
    this.bytesRead += buf.length;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkWritable(this, this.path);
    if (this.growable && offset + buf.length > this.size) this.size = offset + buf.length;
    checkRange(this, offset, buf.length, 'write');
    let done = 0;
    while (done < buf.length) {
      done += await new Promise<number>((res, rej) =>
        fs.write(this.fd, buf, done, buf.length - done, offset + done, (e, n) =>
          e ? rej(ioError(e, `write at ${offset + done}`, this.path)) : res(n),
        ),
      );
    }
  }

  /**
   * Zeroes: past the current end of a growable file, extending it leaves a
   * hole. On a host block device, the page-aligned middle of a large range is
   * zeroed by the kernel (BLKZEROOUT, through util-linux's `blkdiscard -z`:
   * Node has no ioctl), which thin volumes and SSDs do without writing; the
   * rest, and everything when that is not available, is written as zeros
   * (Node cannot punch holes in files). Never skipped: the caller asked for
   * zeros because the bytes there are not.
   */
  async writeZeroes(offset: number, length: number): Promise<void> {
    checkWritable(this, this.path);
    if (this.growable && offset + length > this.size) {
      const oldSize = this.size;
      await this.resize(offset + length);
      if (offset >= oldSize) return;
      length = oldSize - offset;
    }
    checkRange(this, offset, length, 'writeZeroes');
    const end = offset + length;
    if (this.isBlockDevice && length >= KERNEL_ZEROOUT_MIN) {
      const from = Math.ceil(offset / PAGE) * PAGE;
      const to = Math.floor(end / PAGE) * PAGE;
      if (to > from && (await kernelZeroOut(this.path, from, to - from))) {
        await this.writeZeroBuffers(offset, from);
        await this.writeZeroBuffers(to, end);
        return;
      }
    }
    await this.writeZeroBuffers(offset, end);
  }

  private async writeZeroBuffers(from: number, to: number): Promise<void> {
    const chunk = ZERO_BUFFER.subarray(0, Math.min(to - from, ZERO_BUFFER.length));
    for (let pos = from; pos < to; pos += chunk.length) {
      await this.write(chunk.subarray(0, Math.min(chunk.length, to - pos)), pos);
    }
  }

  /**
   * Regular files: data and holes as the kernel knows them (SEEK_DATA/SEEK_HOLE,
   * see seek-data.ts); a hole reads as zero. Block devices, and files where the
   * kernel cannot say: all data (callers detect zeros in what they read).
   */
  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    if (!this.isBlockDevice && !this.closed && length > 0) {
      const run = dataRunAt(this.fd, offset, offset + length);
      if (run && run.end > offset) return { offset, length: run.end - offset, kind: run.data ? 'data' : 'zero' };
    }
    return { offset, length, kind: 'data' };
  }

  /** Set the file's length (regular files only). Extending leaves a hole. */
  async resize(size: number): Promise<void> {
    checkWritable(this, this.path);
    if (this.isBlockDevice) {
      if (size > this.size) throw new ImageError('usage', `${this.path}: block device is smaller than ${size} bytes`, { path: this.path });
      return;
    }
    try {
      fs.ftruncateSync(this.fd, size);
    } catch (e) {
      throw ioError(e, 'truncate', this.path);
    }
    this.size = size;
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.closed) return;
    try {
      await new Promise<void>((res, rej) => fs.fdatasync(this.fd, (e) => (e ? rej(e) : res())));
    } catch (e) {
      throw ioError(e, 'fsync', this.path);
    }
  }

  flushSync(): void {
    if (this.readOnly || this.closed) return;
    try {
      fs.fdatasyncSync(this.fd);
    } catch (e) {
      throw ioError(e, 'fsync', this.path);
    }
  }

  /** fstat of the open descriptor: who this device really is, whatever its path names now. */
  stat(): fs.Stats {
    return fs.fstatSync(this.fd);
  }

  /** Bytes the file occupies on disk (st_blocks * 512): qemu-img's actual-size. */
  allocatedOnDisk(): number {
    return fs.fstatSync(this.fd).blocks * 512;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      fs.closeSync(this.fd);
    } catch (e) {
      throw ioError(e, 'close', this.path);
    }
  }
}

const PAGE = 4096;
const KERNEL_ZEROOUT_MIN = 16 << 20;
const ZERO_BUFFER = new Uint8Array(4 << 20);
let zeroOutUnavailable = false;

/**
 * Ask the kernel to zero [offset, offset + length) of a block device
 * (BLKZEROOUT via `blkdiscard --zeroout`; the kernel also drops its cached
 * pages for the range). False when that is not possible here (no blkdiscard,
 * a device without support): the caller writes zeros instead.
 */
async function kernelZeroOut(dev: string, offset: number, length: number): Promise<boolean> {
  if (zeroOutUnavailable) return false;
  return new Promise((resolve) => {
    nodeChildProcess().execFile('blkdiscard', ['--zeroout', '--offset', String(offset), '--length', String(length), dev], (e) => {
      if (e && (e as NodeJS.ErrnoException).code === 'ENOENT') zeroOutUnavailable = true;
      resolve(!e);
    });
  });
}

function blockDeviceSize(fd: number, st: fs.Stats, path: string): number {
  const major = Math.floor(st.rdev / 256) & 0xfff; // glibc dev_t encoding, small numbers
  const minor = (st.rdev & 0xff) | (Math.floor(st.rdev / 4096) & 0xfff00);
  try {
    const sectors = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim());
    if (Number.isSafeInteger(sectors) && sectors > 0) return sectors * 512;
  } catch {
    /* fall through */
  }
  // Binary search for the last readable byte.
  const one = Buffer.alloc(1);
  const readable = (pos: number) => {
    try {
      return fs.readSync(fd, one, 0, 1, pos) === 1;
    } catch {
      return false;
    }
  };
  if (!readable(0)) return 0;
  let lo = 0; // readable
  let hi = 1;
  while (readable(hi)) {
    lo = hi;
    hi *= 2;
    if (hi > 2 ** 52) throw new ImageError('io', `cannot determine the size of block device ${path}`, { path });
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (readable(mid)) lo = mid;
    else hi = mid;
  }
  return lo + 1;
}

function notFileOrBlock(role: string, path: string, st: fs.Stats): ImageError {
  const kind = st.isFIFO()
    ? 'a FIFO'
    : st.isSocket()
      ? 'a socket'
      : st.isCharacterDevice()
        ? 'a character device'
        : st.isDirectory()
          ? 'a directory'
          : 'not a regular file';
  return new ImageError('unsupported', `${role} ${escapeLine(path)} is ${kind}, not a regular file or block device`, { path });
}

/** Stat a path without opening it; undefined when it does not exist. */
export async function statOrUndefined(path: string): Promise<fs.Stats | undefined> {
  try {
    return await fsp.stat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(e, 'stat', path);
  }
}
