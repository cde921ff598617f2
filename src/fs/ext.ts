/**
 * Mount an ext2/3/4 filesystem held in a BlockDevice with the `ext2fs`
 * package (balena's WebAssembly build of libext2fs) and work on it through a
 * `fs.promises`-like object.
 *
 * - The device is reached through an adapter with the shape ext2fs expects:
 *   `read(buffer, bufferOffset, length, fileOffset)` filling the given buffer
 *   in place (it is a view into the WASM heap), `write`, `flush`, `discard`.
 * - libext2fs reports every failure of the device as EIO. The adapter logs
 *   the real error (and keeps it), and a failed call is re-thrown as an
 *   ImageError that names it.
 * - The WASM module is one global instance whose calls must not interleave:
 *   every `withExtFs` call runs after the previous one has finished. Do not
 *   call `withExtFs` from inside `fn` (it would wait for itself).
 * - A read-only device (or `readOnly: true`) is mounted over a copy-on-write
 *   overlay, so libext2fs's own bookkeeping writes never reach the device.
 *
 * The superblock is checked first (src/fs/ext-superblock.ts): not an ext
 * filesystem, or one that claims more bytes than the device holds, is an
 * ImageError before libext2fs sees it.
 */

import { createRequire } from 'node:module';
import type { BlockDevice } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import { OverlayDevice } from '../core/overlay.js';
import { readExtSuperblock } from './ext-superblock.js';

/** What `ext2fs` gives for stat/lstat. */
export interface ExtStats {
  mode: number;
  size: number;
  uid: number;
  gid: number;
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
}

export interface ExtFileHandle {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  write(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  close(): Promise<void>;
}

/**
 * Bytes per read or write call into libext2fs. Its WebAssembly heap is fixed
 * at 16 MiB (the module exports its own memory; it cannot grow), and each
 * call copies its buffer into that heap: a whole 16 MiB initrd in one call
 * aborts with "OOM".
 */
const IO_CHUNK = 1 << 20;

/** The part of ext2fs's `fs.promises` imgtool uses. Paths are absolute inside the filesystem. */
export interface ExtFs {
  readFile(path: string): Promise<Buffer>;
  readFile(path: string, encoding: BufferEncoding | { encoding: BufferEncoding }): Promise<string>;
  writeFile(path: string, data: string | Uint8Array, opts?: { mode?: number }): Promise<void>;
  readdir(path: string): Promise<string[]>;
  stat(path: string): Promise<ExtStats>;
  lstat(path: string): Promise<ExtStats>;
  readlink(path: string): Promise<string>;
  symlink(target: string, path: string): Promise<void>;
  unlink(path: string): Promise<void>;
  mkdir(path: string, mode?: number): Promise<void>;
  chmod(path: string, mode: number): Promise<void>;
  chown(path: string, uid: number, gid: number): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  /** Discard every free block range (see WithExtFsOptions.onDiscard). */
  trim(): Promise<void>;
  open(path: string, flags: string, mode?: number): Promise<ExtFileHandle>;
}

interface Ext2fsModule {
  withMountedDisk<T>(disk: unknown, offset: number, fn: (fs: { promises: ExtFs }) => Promise<T>): Promise<T>;
}

let ext2fsModule: Ext2fsModule | undefined;
function ext2fs(): Ext2fsModule {
  if (!ext2fsModule) ext2fsModule = createRequire(import.meta.url)('ext2fs') as Ext2fsModule;
  return ext2fsModule;
}

/** The adapter ext2fs reads and writes through. */
class DiskAdapter {
  /** The first device error since the last reset: ext2fs only says EIO. */
  lastError: unknown;

  constructor(
    private readonly dev: BlockDevice,
    private readonly log: (msg: string) => void,
  ) {}

  private fail(op: string, offset: number, length: number, e: unknown): never {
    this.lastError ??= e;
    const msg = e instanceof ImageError ? e.describe() : e instanceof Error ? e.message : String(e);
    this.log(`ext2fs: ${op} of ${length} bytes at ${offset} failed: ${msg}`);
    throw e;
  }

  async read(buffer: Uint8Array, bufferOffset: number, length: number, fileOffset: number) {
    try {
      await this.dev.read(buffer.subarray(bufferOffset, bufferOffset + length), fileOffset);
    } catch (e) {
      this.fail('read', fileOffset, length, e);
    }
    return { bytesRead: length, buffer };
  }

  async write(buffer: Uint8Array, bufferOffset: number, length: number, fileOffset: number) {
    try {
      await this.dev.write(buffer.subarray(bufferOffset, bufferOffset + length), fileOffset);
    } catch (e) {
      this.fail('write', fileOffset, length, e);
    }
    return { bytesWritten: length, buffer };
  }

  async flush() {
    try {
      await this.dev.flush();
    } catch (e) {
      this.fail('flush', 0, 0, e);
    }
  }

  /**
   * Discarded blocks keep their contents: the filesystem no longer cares,
   * and neither do we. `trim()` discards every free range: the callback sees
   * them (used-block maps are built from that).
   */
  onDiscard?: (offset: number, length: number) => void;
  async discard(offset: number, length: number) {
    this.onDiscard?.(offset, length);
  }
}

/** Largest file readFile returns (a Buffer of the inode's size is allocated). */
const MAX_READ = 2 ** 31 - 1;

/**
 * ext2fs 4.2.5's readFile always decodes as UTF-8 (its option handling lets
 * the defaults win), which corrupts binary files, and its writeFile ignores
 * `mode`. readFile is re-done here over open/read, writeFile over open/write,
 * both in IO_CHUNK pieces; writeFile takes a mode by chmod after writing.
 */
function fixedFs(raw: ExtFs): ExtFs {
  const readWhole = async (p: string): Promise<Buffer> => {
    const fh = (await raw.open(p, 'r')) as ExtFileHandle & { stat(): Promise<ExtStats> };
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw Object.assign(new Error(`${p} is not a regular file`), { code: st.isDirectory() ? 'EISDIR' : 'EINVAL' });
      if (st.size > MAX_READ) throw new ImageError('unsupported', `${p} is ${st.size} bytes, too large to read whole`, { path: p, value: st.size });
      const buf = Buffer.alloc(st.size);
      let pos = 0;
      while (pos < st.size) {
        const { bytesRead } = await fh.read(buf, pos, Math.min(st.size - pos, IO_CHUNK), pos);
        if (bytesRead <= 0) break;
        pos += bytesRead;
      }
      return pos === st.size ? buf : buf.subarray(0, pos);
    } finally {
      await fh.close();
    }
  };
  const fs = Object.create(raw) as ExtFs;
  fs.readFile = (async (p: string, enc?: BufferEncoding | { encoding: BufferEncoding }) => {
    const b = await readWhole(p);
    const e = typeof enc === 'string' ? enc : enc?.encoding;
    return e ? b.toString(e) : b;
  }) as ExtFs['readFile'];
  fs.writeFile = async (p: string, data: string | Uint8Array, opts?: { mode?: number }) => {
    const bytes = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const fh = (await raw.open(p, 'w', opts?.mode ?? 0o644)) as ExtFileHandle;
    try {
      for (let pos = 0; pos < bytes.length; ) {
        // A view from 0: ext2fs 4.2.5's FileHandle.write ignores its buffer-offset argument.
        const piece = bytes.subarray(pos, pos + Math.min(IO_CHUNK, bytes.length - pos));
        const { bytesWritten } = await fh.write(piece, 0, piece.length, pos);
        if (bytesWritten <= 0) throw Object.assign(new Error(`${p}: short write at ${pos}`), { code: 'EIO' });
        pos += bytesWritten;
      }
    } finally {
      await fh.close();
    }
    if (opts?.mode !== undefined) await raw.chmod(p, opts.mode);
  };
  return fs;
}

let queue: Promise<unknown> = Promise.resolve();

export interface WithExtFsOptions {
  /** Mount over a copy-on-write overlay: nothing reaches `dev`. */
  readOnly?: boolean;
  /** Where device errors are logged (default: standard error). */
  log?: (msg: string) => void;
  /** Receives each range libext2fs discards (with `fs.trim()`: every free range). */
  onDiscard?: (offset: number, length: number) => void;
}

/**
 * Mount the ext filesystem on `dev`, run `fn` with its `fs.promises`-like
 * object, unmount (writing back libext2fs's metadata). Calls are serialised.
 */
export function withExtFs<T>(dev: BlockDevice, fn: (fs: ExtFs) => Promise<T>, opts: WithExtFsOptions = {}): Promise<T> {
  const run = async (): Promise<T> => {
    const sb = await readExtSuperblock(dev);
    if (!sb) {
      throw new ImageError('invalid-format', 'not an ext2/3/4 filesystem (no 0xEF53 magic at byte 1080)', {
        format: 'ext',
        field: 's_magic',
        offset: 1024 + 0x38,
      });
    }
    if (sb.size > dev.size) {
      throw new ImageError(
        'corrupt',
        `ext: the filesystem says it spans ${sb.size} bytes (${sb.blocksCount} blocks of ${sb.blockSize}) but the device holds ${dev.size}`,
        { format: 'ext', field: 's_blocks_count', offset: 1024 + 4, value: sb.blocksCount },
      );
    }
    const target = opts.readOnly || dev.readOnly ? new OverlayDevice(dev) : dev;
    const log = opts.log ?? ((m: string) => process.stderr.write(`imgtool: ${m}\n`));
    const adapter = new DiskAdapter(target, log);
    adapter.onDiscard = opts.onDiscard;
    try {
      return await ext2fs().withMountedDisk(adapter, 0, ({ promises }) => fn(fixedFs(promises)));
    } catch (e) {
      if (adapter.lastError !== undefined && !(e instanceof ImageError)) {
        const inner = adapter.lastError;
        if (inner instanceof ImageError) throw inner;
        throw new ImageError('io', `ext filesystem I/O failed: ${inner instanceof Error ? inner.message : String(inner)}`, {
          format: 'ext',
        }, { cause: inner });
      }
      throw e;
    } finally {
      if (target !== dev) await target.close();
    }
  };
  const result = queue.then(run, run);
  queue = result.catch(() => undefined);
  return result;
}

/** True for an ext2fs error with the given code (ENOENT, EEXIST, ...). */
export function isFsError(e: unknown, code: string): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: string }).code === code;
}
