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

  /** Discarded blocks keep their contents: the filesystem no longer cares, and neither do we. */
  async discard(_offset: number, _length: number) {}
}

let queue: Promise<unknown> = Promise.resolve();

export interface WithExtFsOptions {
  /** Mount over a copy-on-write overlay: nothing reaches `dev`. */
  readOnly?: boolean;
  /** Where device errors are logged (default: standard error). */
  log?: (msg: string) => void;
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
    try {
      return await ext2fs().withMountedDisk(adapter, 0, ({ promises }) => fn(promises));
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
