/**
 * The block-device interface everything in imgtool stands on.
 *
 * Everything is bytes and half-open ranges [offset, offset + length).
 * A device is the *guest's* view: for a qcow2 file, `size` is the virtual
 * size and `read` returns guest data. Format drivers turn a child device
 * (the container file) into such a device; they never touch `fs` themselves.
 *
 * `status(offset, length)` describes a *prefix* of the range (at least one
 * byte when length > 0): generic code loops. This is qemu's block_status
 * contract; it keeps drivers simple (answer for what you know) and callers
 * general.
 *
 *   data         bytes stored here (may still happen to be zero)
 *   zero         reads as zero, and the format records it as zero
 *   unallocated  nothing stored in this layer; reads as zero
 */

import { ImageError } from './errors.js';

export type ExtentKind = 'data' | 'zero' | 'unallocated';

export interface Extent {
  offset: number;
  length: number;
  kind: ExtentKind;
}

export interface BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  /**
   * qemu's has_zero_init: true when the device read as zero everywhere when it
   * was created (a new file, a new image whose tables map nothing), so a copy
   * into it may skip zero ranges. Absent or false: the device holds old bytes
   * (a host block device, an existing file) and zeros must be written.
   */
  readonly zeroInit?: boolean;
  /** Fill `buf` entirely with the bytes at [offset, offset + buf.length), or throw. */
  read(buf: Uint8Array, offset: number): Promise<void>;
  write(buf: Uint8Array, offset: number): Promise<void>;
  /** Make [offset, offset + length) read as zero, deallocating where the format can. */
  writeZeroes(offset: number, length: number): Promise<void>;
  /** Describe a non-empty prefix of [offset, offset + length). */
  status(offset: number, length: number): Promise<Extent>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /**
   * Set the container's length to `size` bytes (grow or shrink). Optional:
   * only devices that can change their size have it (a regular file); call it
   * through resizeDevice, which gives the 'unsupported' error otherwise.
   */
  resize?(size: number): Promise<void>;
}

/**
 * The device holding an image the user named (a local file, a spool of a
 * pipe or a decompressed stream, a URL): what `info` reports about it.
 */
export interface SourceDevice extends BlockDevice {
  /** Bytes read through it so far (tests prove sparse reads with it). */
  readonly bytesRead: number;
  /** Bytes it occupies on disk (qemu-img's actual-size); undefined where that means nothing (a URL). */
  allocatedOnDisk(): number | undefined;
}

/** Throw unless [offset, offset + length) lies inside [0, size). */
export function checkRange(dev: { size: number }, offset: number, length: number, what = 'request'): void {
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0 ||
    offset + length > dev.size
  ) {
    throw new ImageError(
      'out-of-bounds',
      `${what} [${offset}, ${offset + length}) is outside the device [0, ${dev.size})`,
      { offset, value: length },
    );
  }
}

/**
 * Resize `dev` to `size` bytes, or throw ImageError 'unsupported' naming `what`
 * (the format or operation) when the device cannot change its size.
 */
export async function resizeDevice(dev: BlockDevice, size: number, what: string): Promise<void> {
  if (typeof dev.resize !== 'function') {
    throw new ImageError('unsupported', `${what}: the device cannot change its size to ${size} bytes`, { value: size, operation: 'resize' });
  }
  await dev.resize(size);
}

/** Grow `dev` to at least `end` bytes; growable devices (new files) grow by being written. */
export async function growDevice(dev: BlockDevice & { growable?: boolean }, end: number, what: string): Promise<void> {
  if (end <= dev.size || dev.growable) return;
  await resizeDevice(dev, end, what);
}

export function checkWritable(dev: { readOnly: boolean }, path?: string): void {
  if (dev.readOnly) throw new ImageError('usage', 'device is read-only', { path, operation: 'write' });
}

/** Walk the extents of [offset, offset + length), merging neighbours of the same kind. */
export async function* extents(dev: BlockDevice, offset = 0, length = dev.size - offset): AsyncGenerator<Extent> {
  checkRange(dev, offset, length, 'extent walk');
  const end = offset + length;
  let pos = offset;
  let pending: Extent | undefined;
  while (pos < end) {
    const e = await dev.status(pos, end - pos);
    if (e.offset !== pos || e.length <= 0 || e.offset + e.length > end) {
      throw new ImageError('corrupt', `status returned [${e.offset}, ${e.offset + e.length}) for a query at ${pos}`, {
        offset: pos,
      });
    }
    if (pending && pending.kind === e.kind) pending.length += e.length;
    else {
      if (pending) yield pending;
      pending = { ...e };
    }
    pos += e.length;
  }
  if (pending) yield pending;
}

/** Sum of bytes the device reports as `data`. */
export async function allocatedBytes(dev: BlockDevice): Promise<number> {
  let total = 0;
  for await (const e of extents(dev)) if (e.kind === 'data') total += e.length;
  return total;
}

const ZERO_CHUNK = Buffer.alloc(1 << 20);

/** True when every byte of buf is zero. */
export function isZero(buf: Uint8Array): boolean {
  return isZeroRange(buf, 0, buf.length);
}

/**
 * True when every byte of buf[start, end) is zero. Allocation-free (a copy
 * loop calls this for every 4 KiB block): the first 16 bytes are looked at
 * directly, which settles almost every data block, and only a block that
 * starts with zeros is compared with a shared zero buffer (memcmp, by offsets:
 * no views are created).
 */
export function isZeroRange(buf: Uint8Array, start: number, end: number): boolean {
  const head = Math.min(end, start + 16);
  for (let i = start; i < head; i++) if (buf[i] !== 0) return false;
  for (let pos = head; pos < end; pos += ZERO_CHUNK.length) {
    const n = Math.min(ZERO_CHUNK.length, end - pos);
    if (ZERO_CHUNK.compare(buf, pos, pos + n, 0, n) !== 0) return false;
  }
  return true;
}

/** Read a whole range into a new buffer. */
export async function readBytes(dev: BlockDevice, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await dev.read(buf, offset);
  return buf;
}

/** Generic writeZeroes for devices that cannot deallocate: writes zero buffers. */
export async function writeZeroesByWriting(dev: BlockDevice, offset: number, length: number): Promise<void> {
  const chunk = new Uint8Array(Math.min(length, 1 << 20));
  let pos = offset;
  const end = offset + length;
  while (pos < end) {
    const n = Math.min(chunk.length, end - pos);
    await dev.write(n === chunk.length ? chunk : chunk.subarray(0, n), pos);
    pos += n;
  }
}
