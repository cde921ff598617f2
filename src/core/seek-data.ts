/**
 * Where a regular file's data and holes are, from the kernel:
 * lseek(SEEK_DATA / SEEK_HOLE), as qemu's file driver asks. Node has no
 * binding for these, so the call goes through koffi (a maintained FFI
 * package whose npm package carries prebuilt binaries; nothing is built or
 * downloaded at install time), loaded only when a raw file is first asked
 * for its extents.
 *
 * Why lseek and not FIEMAP: SEEK_DATA reports data that is still only in
 * the page cache (delayed allocation) as data; FIEMAP without a sync flag
 * reports it as a hole, which would lose freshly written bytes.
 *
 * When the call is not available (no koffi build for this platform, a libc
 * without it, a file system that answers EINVAL) callers get `undefined`
 * and fall back to reading and zero-checking; `--debug` says so. Setting
 * IMGTOOL_NO_SEEK_DATA in the environment forces the fallback.
 */

import { createRequire } from 'node:module';
import { debugOnce } from './debug.js';

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;

type Lseek = (fd: number, offset: number, whence: number) => number | bigint;
interface Ffi {
  lseek: Lseek;
  errno: () => number;
}

let ffi: Ffi | null | undefined;

function load(): Ffi | null {
  if (ffi !== undefined) return ffi;
  try {
    if (process.platform !== 'linux') throw new Error(`not on ${process.platform}`);
    // The fallback on demand: tests compare both paths, and a user can rule the fast path out.
    if (process.env.IMGTOOL_NO_SEEK_DATA) throw new Error('IMGTOOL_NO_SEEK_DATA is set');
    const koffi = createRequire(import.meta.url)('koffi') as {
      load(lib: string): { func(sig: string): Lseek };
      errno(): number;
    };
    const libc = koffi.load('libc.so.6');
    ffi = { lseek: libc.func('int64_t lseek(int fd, int64_t offset, int whence)'), errno: () => koffi.errno() };
  } catch (e) {
    debugOnce(`lseek(SEEK_DATA) is not available (${(e as Error).message}): holes in raw files are read and zero-checked`);
    ffi = null;
  }
  return ffi;
}

export interface DataRun {
  /** True: [offset, end) holds data; false: it is a hole (reads as zero). */
  data: boolean;
  end: number;
}

/**
 * The run of data or hole that starts at `offset` in the file open as `fd`,
 * clipped to `limit`; undefined when the kernel cannot say (fall back).
 */
export function dataRunAt(fd: number, offset: number, limit: number): DataRun | undefined {
  const f = load();
  if (!f) return undefined;
  const next = Number(f.lseek(fd, offset, SEEK_DATA));
  if (next < 0) {
    const errno = f.errno();
    if (errno === ENXIO) return { data: false, end: limit }; // no data from here to the end of the file
    debugOnce(`lseek(SEEK_DATA) failed with errno ${errno}: holes in raw files are read and zero-checked`);
    return undefined;
  }
  if (next > offset) return { data: false, end: Math.min(next, limit) };
  const hole = Number(f.lseek(fd, offset, SEEK_HOLE));
  if (hole < 0 || hole <= offset) return undefined;
  return { data: true, end: Math.min(hole, limit) };
}
