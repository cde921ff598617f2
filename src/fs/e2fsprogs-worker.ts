/**
 * The worker-thread half of src/fs/e2fsprogs.ts: runs one e2fsprogs tool
 * (e2fsck, resize2fs, mke2fs compiled to wasm32-wasi) under node:wasi and
 * serves its file system from JavaScript.
 *
 * Why a worker: WASI calls are synchronous (the tool calls pread() and
 * expects the bytes when it returns), but imgtool's BlockDevices are
 * asynchronous, and some only ever will be (the qcow2 and VDI drivers await
 * their metadata caches and the host file). So the tool runs here; each
 * device request is written into a SharedArrayBuffer, the main thread is
 * told by postMessage, and this thread sleeps in Atomics.wait until the main
 * thread has served the request with its async device and Atomics.notify'd.
 * Requests larger than the shared data buffer are split into chunks.
 * Over a local file (ToolWorkerData.direct) this thread instead reads and writes
 * the file's window itself, through a descriptor the main thread opened.
 *
 * The tool's view of the world (nothing of the host file system is exposed):
 *
 *   fd 0            stdin: always at end of file (the tools never prompt: imgtool passes -n/-p/-y)
 *   fd 1, 2         stdout/stderr: forwarded to the main thread as they are written
 *   fd 3            preopened directory "/", virtual:
 *     /<device>       the BlockDevice, a regular file of the device's size
 *                     (read-only unless the run is writable: opening it for
 *                     writing then fails with EROFS and pwrite with EBADF)
 *     /dev/null       discards writes, reads end of file
 *     /dev/urandom    random bytes (node:crypto), for UUIDs and hash seeds
 *     anything else   ENOENT (config files: the tools' built-in defaults apply)
 *
 * Everything else (clocks, random_get, args, environ, proc_exit, poll_oneoff
 * for sleeps) is delegated to node:wasi.
 *
 * This function is started with Function.prototype.toString in an eval
 * worker, so it must not refer to anything outside itself: modules arrive as
 * parameters.
 */

import type * as WorkerThreads from 'node:worker_threads';
import type * as NodeWasi from 'node:wasi';
import type * as NodeCrypto from 'node:crypto';
import type * as NodeFs from 'node:fs';

/**
 * A compiled WebAssembly.Module (the project's lib settings have no
 * WebAssembly types; these minimal shapes stand in for them).
 */
export type WasmModule = object;
interface WasmApi {
  compile(bytes: Uint8Array): Promise<WasmModule>;
  Instance: new (module: WasmModule, imports: object) => { exports: Record<string, unknown> };
}
interface WasmMemory {
  buffer: ArrayBuffer;
}

/** The WebAssembly namespace, typed by the shapes above. */
export function wasmApi(): WasmApi {
  return (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
}

/** What the main thread posts to the worker (its first message) once the module is compiled. */
export interface ToolWorkerData {
  module: WasmModule;
  args: string[];
  env: Record<string, string>;
  /** Absolute path the tool is given for the device, e.g. /dev/disk. */
  devicePath: string;
  deviceSize: number;
  writable: boolean;
  /** Int32 control words (see CTL_* in e2fsprogs.ts) and the offset as a Float64 at byte 16. */
  ctl: SharedArrayBuffer;
  data: SharedArrayBuffer;
  trace: boolean;
  /**
   * Direct I/O: the device is bytes [base, base + deviceSize) of a host file
   * the main thread opened as `fd` (read-only unless the run is writable).
   * This thread then reads and writes it with fs.readSync/writeSync itself,
   * never outside that window; without it every request goes to the main
   * thread.
   */
  direct?: { fd: number; base: number; overlay?: DirectOverlay };
}

/**
 * Direct I/O through a copy-on-write overlay (core/overlay.ts) whose base is
 * the used ranges of a host file (wrap's staged filesystem): the device reads
 * the overlay's store where a chunk was written, else the host file inside
 * `used` and below `end`, else zeros. Writes copy a chunk into the store on
 * first touch, as OverlayDevice.write does; the new map entries go back to
 * the main thread with the exit message (the overlay adopts them).
 */
export interface DirectOverlay {
  /** The store's descriptor (read-write), the overlay's chunk size and its map as flat (chunk index, store offset or -1) pairs. */
  storeFd: number;
  chunk: number;
  entries: number[];
  storeEnd: number;
  /** Used ranges of the base as flat (start, end) pairs, sorted, in device bytes; nothing at or past `end` is read from the file. */
  used: Float64Array;
  end: number;
}

/** Messages from the worker. */
export type ToolWorkerMessage =
  | { t: 'io' }
  | { t: 'out'; fd: 1 | 2; bytes: Uint8Array }
  | { t: 'trace'; text: string }
  /** Direct I/O: the first write (sent once), and a failed read, write or sync (the worker then waits to be terminated). */
  | { t: 'wrote' }
  | { t: 'ioerror'; op: 'read' | 'write' | 'flush'; offset: number; length: number; message: string; code?: string }
  | { t: 'exit'; code: number; overlay?: { entries: number[]; storeEnd: number } }
  | { t: 'fail'; message: string; name?: string; stack?: string };

export function toolWorkerMain(wt: typeof WorkerThreads, nodeWasi: typeof NodeWasi, crypto: typeof NodeCrypto, nodeFs: typeof NodeFs, wd: ToolWorkerData): void {
  const port = wt.parentPort!;

  // --- WASI constants (wasi_snapshot_preview1) ---
  const E = { SUCCESS: 0, ACCES: 2, BADF: 8, EXIST: 20, FAULT: 21, INVAL: 28, IO: 29, ISDIR: 31, NOENT: 44, NOSPC: 51, NOSYS: 52, NOTDIR: 54, NOTSUP: 58, ROFS: 69, SPIPE: 70 };
  const FT = { UNKNOWN: 0, BLOCK: 1, CHAR: 2, DIR: 3, REG: 4 };
  const OFLAGS = { CREAT: 1, DIRECTORY: 2, EXCL: 4, TRUNC: 8 };
  const RIGHT_FD_WRITE = 1n << 6n;
  const ALL_RIGHTS = (1n << 30n) - 1n;
  const ROOT_FD = 3;

  // --- the bridge to the main thread (layout shared with e2fsprogs.ts) ---
  const ctl = new Int32Array(wd.ctl);
  const ctlF64 = new Float64Array(wd.ctl);
  const shared = new Uint8Array(wd.data);
  const OP_READ = 1;
  const OP_WRITE = 2;
  const OP_FLUSH = 3;
  const OP_READAHEAD = 4;
  /** Ask the main thread to do one device operation; returns a WASI errno. */
  const request = (op: number, offset: number, length: number): number => {
    ctl[1] = op;
    ctl[2] = length;
    ctl[3] = 0;
    ctlF64[2] = offset;
    Atomics.store(ctl, 0, 1);
    port.postMessage({ t: 'io' } satisfies ToolWorkerMessage);
    while (Atomics.load(ctl, 0) === 1) Atomics.wait(ctl, 0, 1);
    const r = ctl[3]!;
    Atomics.store(ctl, 0, 0);
    return r;
  };

  let memory: WasmMemory;
  // Views of the tool's memory, made again only when it has grown (memory.grow replaces the buffer).
  let viewed: ArrayBuffer | undefined;
  let dataView: DataView;
  let byteView: Uint8Array;
  const refresh = () => {
    viewed = memory.buffer;
    dataView = new DataView(viewed);
    byteView = new Uint8Array(viewed);
  };
  const view = () => {
    if (memory.buffer !== viewed) refresh();
    return dataView;
  };
  const bytes = () => {
    if (memory.buffer !== viewed) refresh();
    return byteView;
  };
  const trace = wd.trace ? (s: string) => port.postMessage({ t: 'trace', text: s } satisfies ToolWorkerMessage) : undefined;

  // --- virtual files ---
  type Kind = 'disk' | 'null' | 'urandom';
  interface Open {
    kind: Kind;
    pos: number;
    write: boolean;
  }
  const files = new Map<number, Open>();
  let nextFd = 64; // far above node:wasi's own fds (0-2 here)
  const rel = wd.devicePath.replace(/^\/+/, '');
  const lookup = (path: string): Kind | 'dir' | undefined => {
    const p = path.replace(/^\/+/, '').replace(/\/+$/, '').replace(/^\.\//, '');
    if (p === rel) return 'disk';
    if (p === 'dev/null') return 'null';
    if (p === 'dev/urandom' || p === 'dev/random') return 'urandom';
    if (p === '' || p === '.' || p === 'dev') return 'dir';
    return undefined;
  };
  const sizeOf = (k: Kind | 'dir') => (k === 'disk' ? wd.deviceSize : 0);
  const typeOf = (k: Kind | 'dir') => (k === 'dir' ? FT.DIR : k === 'disk' ? FT.REG : FT.CHAR);
  const readPath = (ptr: number, len: number) => Buffer.from(bytes().subarray(ptr, ptr + len)).toString('utf8');

  const writeFilestat = (buf: number, k: Kind | 'dir') => {
    const v = view();
    for (let i = 0; i < 64; i += 8) v.setBigUint64(buf + i, 0n, true);
    v.setBigUint64(buf + 0, 1n, true); // dev
    v.setBigUint64(buf + 8, k === 'disk' ? 2n : k === 'dir' ? 1n : 3n, true); // ino
    v.setUint8(buf + 16, typeOf(k));
    v.setBigUint64(buf + 24, 1n, true); // nlink
    v.setBigUint64(buf + 32, BigInt(sizeOf(k)), true);
  };

  /** Gather the iovec list into [ptr, len] pairs. */
  const iovecs = (iovs: number, n: number): Array<[number, number]> => {
    const v = view();
    const out: Array<[number, number]> = [];
    for (let i = 0; i < n; i++) out.push([v.getUint32(iovs + 8 * i, true), v.getUint32(iovs + 8 * i + 4, true)]);
    return out;
  };

  /** Copy `src` into the iovec list, starting `skip` bytes into it. */
  const scatter = (list: Array<[number, number]>, skip: number, src: Uint8Array) => {
    const mem = bytes();
    let copied = 0;
    for (const [ptr, len] of list) {
      if (copied >= src.length) break;
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const k = Math.min(len - skip, src.length - copied);
      mem.set(src.subarray(copied, copied + k), ptr + skip);
      copied += k;
      skip = 0;
    }
  };

  /*
   * Direct I/O on a host file (wd.direct): one fs.readSync/writeSync per
   * iovec, straight between the file and the tool's memory, no round trip to
   * the main thread and no read-ahead cache (the kernel's page cache and
   * read-ahead serve). Every position is checked against the window
   * [0, deviceSize) before base is added. A failed read, write or sync stops
   * the tool as the message path does: the main thread is told and this
   * thread waits to be terminated, so e2fsck never "repairs" around it.
   */
  const direct = wd.direct;
  let announcedWrite = false;
  const directFailed = (op: 'read' | 'write' | 'flush', offset: number, length: number, e: unknown): never => {
    const err = e as NodeJS.ErrnoException;
    port.postMessage({ t: 'ioerror', op, offset, length, message: err?.message ?? String(e), code: err?.code } satisfies ToolWorkerMessage);
    const stop = new Int32Array(new SharedArrayBuffer(4));
    for (;;) Atomics.wait(stop, 0, 0);
  };
  // --- direct I/O through an overlay (DirectOverlay) ---
  const ov = direct?.overlay;
  const omap = new Map<number, number>();
  const adopted = new Map<number, number>();
  let storeEnd = 0;
  if (ov) {
    for (let i = 0; i + 1 < ov.entries.length; i += 2) omap.set(ov.entries[i]!, ov.entries[i + 1]!);
    storeEnd = ov.storeEnd;
  }
  /** Read exactly n bytes of fd at pos (a short read is a failure: the caller's window said the bytes are there). */
  const readFully = (fd: number, mem: Uint8Array, at: number, n: number, pos: number): void => {
    for (let done = 0; done < n; ) {
      const k = nodeFs.readSync(fd, mem, at + done, n - done, pos + done);
      if (k <= 0) throw new Error(`unexpected end of file at ${pos + done}`);
      done += k;
    }
  };
  const writeFully = (fd: number, mem: Uint8Array, at: number, n: number, pos: number): void => {
    for (let done = 0; done < n; ) done += nodeFs.writeSync(fd, mem, at + done, n - done, pos + done);
  };
  /** The base: the host file inside the used ranges below `end`, zeros elsewhere. */
  const baseRead = (mem: Uint8Array, at: number, n: number, pos: number): void => {
    const o = ov!;
    const u = o.used;
    // Last range starting at or before pos (binary search over the starts).
    let lo = 0;
    let hi = u.length / 2 - 1;
    let i = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (u[2 * mid]! <= pos) {
        i = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    let p = pos;
    const end = pos + n;
    while (p < end) {
      if (i >= 0 && p < u[2 * i + 1]!) {
        // Inside used range i: the file's bytes below `end`, zeros past it.
        const stop = Math.min(end, u[2 * i + 1]!);
        const fileStop = Math.max(p, Math.min(stop, o.end));
        if (fileStop > p) readFully(direct!.fd, mem, at + (p - pos), fileStop - p, direct!.base + p);
        if (stop > fileStop) mem.fill(0, at + (fileStop - pos), at + (stop - pos));
        p = stop;
      } else {
        // A gap: zeros up to the next range, which then becomes range i.
        const next = i + 1 < u.length / 2 ? u[2 * (i + 1)]! : Infinity;
        const stop = Math.min(end, next);
        mem.fill(0, at + (p - pos), at + (stop - pos));
        p = stop;
        if (stop === next) i++;
      }
    }
  };
  /** Walk [pos, pos + n) chunk by chunk: fn(done, device offset, chunk index, offset within it, length, map entry). */
  const eachChunk = (n: number, pos: number, fn: (done: number, p: number, idx: number, within: number, k: number, where: number | undefined) => void): number => {
    const chunk = ov!.chunk;
    for (let done = 0; done < n; ) {
      const p = pos + done;
      const idx = Math.floor(p / chunk);
      const within = p - idx * chunk;
      const k = Math.min(chunk - within, n - done);
      fn(done, p, idx, within, k, omap.get(idx));
      done += k;
    }
    return n;
  };
  const overlayRead = (mem: Uint8Array, at: number, n: number, pos: number): number =>
    eachChunk(n, pos, (done, p, _idx, within, k, where) => {
      if (where === undefined) baseRead(mem, at + done, k, p);
      else if (where < 0) mem.fill(0, at + done, at + done + k);
      else readFully(ov!.storeFd, mem, at + done, k, where + within);
    });
  const overlayWrite = (mem: Uint8Array, at: number, n: number, pos: number): number =>
    eachChunk(n, pos, (done, _p, idx, within, k, where) => {
      const o = ov!;
      if (where === undefined || where < 0) {
        // First write into this chunk: the whole chunk goes to the end of the store (as OverlayDevice.write does).
        const chunkLen = Math.min(o.chunk, wd.deviceSize - idx * o.chunk);
        const whole = new Uint8Array(chunkLen);
        if (where === undefined && k < chunkLen) overlayRead(whole, 0, chunkLen, idx * o.chunk);
        whole.set(mem.subarray(at + done, at + done + k), within);
        writeFully(o.storeFd, whole, 0, chunkLen, storeEnd);
        omap.set(idx, storeEnd);
        adopted.set(idx, storeEnd);
        storeEnd += o.chunk;
      } else writeFully(o.storeFd, mem, at + done, k, where + within);
    });

  const directIo = (write: boolean, list: Array<[number, number]>, offset: number): [number, number] => {
    const d = direct!;
    let total = 0;
    for (const [, len] of list) total += len;
    if (write && total > 0 && offset >= wd.deviceSize) return [E.NOSPC, 0];
    total = Math.max(0, Math.min(total, wd.deviceSize - offset));
    let done = 0;
    for (const [ptr, len] of list) {
      if (done >= total) break;
      const k = Math.min(len, total - done);
      const mem = bytes();
      if (ptr + k > mem.length) return [E.FAULT, done];
      let at = 0;
      while (at < k) {
        const pos = offset + done + at;
        const n = k - at;
        if (!Number.isSafeInteger(pos) || pos < 0 || pos + n > wd.deviceSize) return [E.INVAL, done + at];
        let moved: number;
        try {
          if (ov) moved = write ? overlayWrite(mem, ptr + at, n, pos) : overlayRead(mem, ptr + at, n, pos);
          else moved = write ? nodeFs.writeSync(d.fd, mem, ptr + at, n, d.base + pos) : nodeFs.readSync(d.fd, mem, ptr + at, n, d.base + pos);
        } catch (e) {
          return directFailed(write ? 'write' : 'read', pos, n, e);
        }
        if (moved <= 0) return directFailed(write ? 'write' : 'read', pos, n, new Error(`unexpected end of file at ${d.base + pos}`));
        if (write && !announcedWrite) {
          announcedWrite = true;
          port.postMessage({ t: 'wrote' } satisfies ToolWorkerMessage);
        }
        at += moved;
      }
      done += k;
    }
    return [E.SUCCESS, done];
  };
  const directSync = (): number => {
    if (ov) return E.SUCCESS; // the overlay's store is scratch: nothing to make durable
    try {
      nodeFs.fdatasyncSync(direct!.fd);
    } catch (e) {
      return directFailed('flush', 0, 0, e);
    }
    return E.SUCCESS;
  };

  /*
   * Sequential read-ahead. Each request costs a round trip to the main
   * thread and an async device read (~150 us with a raw file, more through a
   * qcow2 driver). e2fsck reads inode tables 32 KiB at a time in order, so a
   * small read that starts where the previous one ended fetches a whole
   * aligned 256 KiB window instead; scattered reads (directory blocks) are
   * read exactly and waste nothing. Writes go to the device at once and
   * update cached windows, so the cache never holds anything the device does
   * not, and reads that bypass it are still right. A failed read-ahead (say a
   * damaged qcow2 cluster the tool never asked for) falls back to the exact
   * read, whose failure is the one reported.
   */
  const WINDOW = Math.min(256 << 10, shared.length);
  const MAX_WINDOWS = 32;
  const cache = new Map<number, Uint8Array>();
  let lastEnd = -1;
  const cached = (idx: number): Uint8Array | undefined => {
    const w = cache.get(idx);
    if (w) {
      cache.delete(idx); // LRU: most recent last
      cache.set(idx, w);
    }
    return w;
  };
  const fetchWindow = (idx: number): Uint8Array | undefined => {
    const start = idx * WINDOW;
    const len = Math.min(WINDOW, wd.deviceSize - start);
    if (request(OP_READAHEAD, start, len) !== E.SUCCESS) return undefined;
    const w = shared.slice(0, len);
    cache.set(idx, w);
    if (cache.size > MAX_WINDOWS) cache.delete(cache.keys().next().value as number);
    return w;
  };

  /** Read from the device at `offset` into guest memory; returns [errno, bytes]. */
  const deviceRead = (list: Array<[number, number]>, offset: number): [number, number] => {
    if (direct) return directIo(false, list, offset);
    let total = 0;
    for (const [, len] of list) total += len;
    total = Math.max(0, Math.min(total, wd.deviceSize - offset));
    const sequential = offset === lastEnd;
    lastEnd = offset + total;
    if (total > 0 && total <= WINDOW / 2) {
      const first = Math.floor(offset / WINDOW);
      const last = Math.floor((offset + total - 1) / WINDOW);
      const wins: Uint8Array[] = [];
      for (let i = first; i <= last; i++) {
        const w = cached(i) ?? (sequential ? fetchWindow(i) : undefined);
        if (!w) break;
        wins.push(w);
      }
      if (wins.length === last - first + 1) {
        let done = 0;
        for (let i = first; i <= last; i++) {
          const w = wins[i - first]!;
          const from = Math.max(offset, i * WINDOW) - i * WINDOW;
          const to = Math.min(offset + total, (i + 1) * WINDOW) - i * WINDOW;
          scatter(list, done, w.subarray(from, to));
          done += to - from;
        }
        return [E.SUCCESS, total];
      }
    }
    let done = 0;
    while (done < total) {
      const n = Math.min(shared.length, total - done);
      const err = request(OP_READ, offset + done, n);
      if (err) return [err, done];
      scatter(list, done, shared.subarray(0, n));
      done += n;
    }
    return [E.SUCCESS, done];
  };

  /** Keep cached windows equal to the device after a write of `data` at `offset`. */
  const updateCache = (offset: number, data: Uint8Array) => {
    const end = offset + data.length;
    for (let i = Math.floor(offset / WINDOW); i * WINDOW < end; i++) {
      const w = cache.get(i);
      if (!w) continue;
      const from = Math.max(offset, i * WINDOW);
      const to = Math.min(end, i * WINDOW + w.length);
      if (to > from) w.set(data.subarray(from - offset, to - offset), from - i * WINDOW);
    }
  };

  const deviceWrite = (list: Array<[number, number]>, offset: number): [number, number] => {
    if (direct) return directIo(true, list, offset);
    let total = 0;
    for (const [, len] of list) total += len;
    if (total > 0 && offset >= wd.deviceSize) return [E.NOSPC, 0];
    total = Math.min(total, wd.deviceSize - offset);
    let done = 0;
    let idx = 0;
    let within = 0;
    while (done < total) {
      const n = Math.min(shared.length, total - done);
      let copied = 0;
      const mem = bytes();
      while (copied < n) {
        const [ptr, len] = list[idx]!;
        const k = Math.min(len - within, n - copied);
        shared.set(mem.subarray(ptr + within, ptr + within + k), copied);
        copied += k;
        within += k;
        if (within === len) {
          idx++;
          within = 0;
        }
      }
      const err = request(OP_WRITE, offset + done, n);
      if (err) return [err, done];
      updateCache(offset + done, shared.subarray(0, n));
      done += n;
    }
    return [E.SUCCESS, done];
  };

  const wasi = new nodeWasi.WASI({ version: 'preview1', args: wd.args, env: wd.env, returnOnExit: true });
  const base = wasi.getImportObject() as { wasi_snapshot_preview1: Record<string, (...a: any[]) => number> };
  const orig = base.wasi_snapshot_preview1;
  const imp: Record<string, (...a: any[]) => number> = { ...orig };

  imp.fd_prestat_get = (fd: number, buf: number) => {
    if (fd !== ROOT_FD) return E.BADF; // ends libc's preopen scan
    const v = view();
    v.setUint32(buf, 0, true); // tag: directory
    v.setUint32(buf + 4, 1, true); // name length: "/"
    return E.SUCCESS;
  };
  imp.fd_prestat_dir_name = (fd: number, ptr: number, len: number) => {
    if (fd !== ROOT_FD) return E.BADF;
    if (len < 1) return E.INVAL;
    bytes()[ptr] = 0x2f;
    return E.SUCCESS;
  };

  imp.path_open = (dirfd: number, _dirflags: number, pathPtr: number, pathLen: number, oflags: number, rightsBase: bigint, _rightsInh: bigint, _fdflags: number, fdOut: number) => {
    if (dirfd !== ROOT_FD) return files.has(dirfd) ? E.NOTDIR : E.BADF;
    const path = readPath(pathPtr, pathLen);
    const k = lookup(path);
    const wantWrite = (BigInt(rightsBase) & RIGHT_FD_WRITE) !== 0n || (oflags & OFLAGS.TRUNC) !== 0;
    trace?.(`path_open ${JSON.stringify(path)} oflags=${oflags} write=${wantWrite} -> ${k ?? 'ENOENT'}`);
    if (k === undefined) return oflags & OFLAGS.CREAT ? E.ACCES : E.NOENT;
    if (k === 'dir') return oflags & OFLAGS.DIRECTORY ? E.ACCES : E.ISDIR; // no directory may be listed
    if (oflags & OFLAGS.DIRECTORY) return E.NOTDIR;
    if (oflags & OFLAGS.CREAT && oflags & OFLAGS.EXCL) return E.EXIST;
    if (k === 'disk' && wantWrite && !wd.writable) return E.ROFS;
    if (k === 'disk' && oflags & OFLAGS.TRUNC) return E.ROFS; // a device cannot be truncated
    const fd = nextFd++;
    files.set(fd, { kind: k, pos: 0, write: wantWrite });
    view().setUint32(fdOut, fd, true);
    return E.SUCCESS;
  };

  imp.path_filestat_get = (dirfd: number, _flags: number, pathPtr: number, pathLen: number, buf: number) => {
    if (dirfd !== ROOT_FD) return E.BADF;
    const path = readPath(pathPtr, pathLen);
    const k = lookup(path);
    trace?.(`stat ${JSON.stringify(path)} -> ${k ?? 'ENOENT'}`);
    if (k === undefined) return E.NOENT;
    writeFilestat(buf, k);
    return E.SUCCESS;
  };

  imp.fd_filestat_get = (fd: number, buf: number) => {
    const f = files.get(fd);
    if (f) {
      writeFilestat(buf, f.kind);
      return E.SUCCESS;
    }
    if (fd === ROOT_FD) {
      writeFilestat(buf, 'dir');
      return E.SUCCESS;
    }
    if (fd <= 2) {
      const v = view();
      for (let i = 0; i < 64; i += 8) v.setBigUint64(buf + i, 0n, true);
      v.setUint8(buf + 16, FT.UNKNOWN); // a pipe, not a terminal
      return E.SUCCESS;
    }
    return orig.fd_filestat_get!(fd, buf);
  };

  imp.fd_fdstat_get = (fd: number, buf: number) => {
    const f = files.get(fd);
    const v = view();
    const put = (type: number, rights: bigint, inherit: bigint) => {
      v.setUint8(buf, type);
      v.setUint16(buf + 2, 0, true);
      v.setBigUint64(buf + 8, rights, true);
      v.setBigUint64(buf + 16, inherit, true);
      return E.SUCCESS;
    };
    if (f) return put(typeOf(f.kind), f.write ? ALL_RIGHTS : ALL_RIGHTS & ~RIGHT_FD_WRITE, 0n);
    if (fd === ROOT_FD) return put(FT.DIR, ALL_RIGHTS, ALL_RIGHTS);
    // stdio: not a terminal (isatty() false), so no prompts and no '\r'.
    if (fd <= 2) return put(FT.UNKNOWN, ALL_RIGHTS, 0n);
    return orig.fd_fdstat_get!(fd, buf);
  };

  imp.fd_pread = (fd: number, iovs: number, n: number, offset: bigint, nread: number) => {
    const f = files.get(fd);
    if (!f) return fd === ROOT_FD ? E.ISDIR : fd <= 2 ? E.SPIPE : orig.fd_pread!(fd, iovs, n, offset, nread);
    const list = iovecs(iovs, n);
    let err = E.SUCCESS;
    let got = 0;
    if (f.kind === 'disk') [err, got] = deviceRead(list, Number(offset));
    else if (f.kind === 'urandom') for (const [p, l] of list) (crypto.randomFillSync(bytes(), p, l), (got += l));
    view().setUint32(nread, got, true);
    return err;
  };

  imp.fd_pwrite = (fd: number, iovs: number, n: number, offset: bigint, nwritten: number) => {
    const f = files.get(fd);
    if (!f) return fd === ROOT_FD ? E.ISDIR : fd <= 2 ? E.SPIPE : orig.fd_pwrite!(fd, iovs, n, offset, nwritten);
    if (!f.write) return E.BADF;
    const list = iovecs(iovs, n);
    let err = E.SUCCESS;
    let put = 0;
    if (f.kind === 'disk') [err, put] = deviceWrite(list, Number(offset));
    else for (const [, l] of list) put += l;
    view().setUint32(nwritten, put, true);
    return err;
  };

  imp.fd_read = (fd: number, iovs: number, n: number, nread: number) => {
    if (fd === 0) {
      view().setUint32(nread, 0, true); // end of file: nobody is typing
      return E.SUCCESS;
    }
    const f = files.get(fd);
    if (!f) return fd === ROOT_FD ? E.ISDIR : orig.fd_read!(fd, iovs, n, nread);
    const list = iovecs(iovs, n);
    let err = E.SUCCESS;
    let got = 0;
    if (f.kind === 'disk') {
      [err, got] = deviceRead(list, f.pos);
      f.pos += got;
    } else if (f.kind === 'urandom') for (const [p, l] of list) (crypto.randomFillSync(bytes(), p, l), (got += l));
    view().setUint32(nread, got, true);
    return err;
  };

  imp.fd_write = (fd: number, iovs: number, n: number, nwritten: number) => {
    const list = iovecs(iovs, n);
    if (fd === 1 || fd === 2) {
      let total = 0;
      for (const [, l] of list) total += l;
      const out = new Uint8Array(total);
      let at = 0;
      const mem = bytes();
      for (const [p, l] of list) (out.set(mem.subarray(p, p + l), at), (at += l));
      if (total) port.postMessage({ t: 'out', fd, bytes: out } satisfies ToolWorkerMessage);
      view().setUint32(nwritten, total, true);
      return E.SUCCESS;
    }
    const f = files.get(fd);
    if (!f) return fd === ROOT_FD ? E.ISDIR : orig.fd_write!(fd, iovs, n, nwritten);
    if (!f.write) return E.BADF;
    let err = E.SUCCESS;
    let put = 0;
    if (f.kind === 'disk') {
      [err, put] = deviceWrite(list, f.pos);
      f.pos += put;
    } else for (const [, l] of list) put += l;
    view().setUint32(nwritten, put, true);
    return err;
  };

  imp.fd_seek = (fd: number, offset: bigint, whence: number, newOffset: number) => {
    const f = files.get(fd);
    if (!f) return fd <= 2 ? E.SPIPE : orig.fd_seek!(fd, offset, whence, newOffset);
    const off = Number(offset);
    const basePos = whence === 0 ? 0 : whence === 1 ? f.pos : whence === 2 ? sizeOf(f.kind) : NaN;
    const pos = basePos + off;
    if (!Number.isSafeInteger(pos) || pos < 0) return E.INVAL;
    f.pos = pos;
    view().setBigUint64(newOffset, BigInt(pos), true);
    return E.SUCCESS;
  };
  imp.fd_tell = (fd: number, out: number) => {
    const f = files.get(fd);
    if (!f) return fd <= 2 ? E.SPIPE : orig.fd_tell!(fd, out);
    view().setBigUint64(out, BigInt(f.pos), true);
    return E.SUCCESS;
  };

  const sync = (fd: number) => {
    const f = files.get(fd);
    if (!f) return fd <= 2 ? E.SUCCESS : orig.fd_sync!(fd);
    if (f.kind === 'disk' && f.write) return direct ? directSync() : request(OP_FLUSH, 0, 0);
    return E.SUCCESS;
  };
  imp.fd_sync = sync;
  imp.fd_datasync = sync;

  // The device has a fixed size: growing or truncating it is ignored (resize2fs
  // tries both on regular files; its size checks then use the device's size).
  imp.fd_filestat_set_size = (fd: number, size: bigint) => (files.has(fd) ? E.SUCCESS : orig.fd_filestat_set_size!(fd, size));
  imp.fd_filestat_set_times = (fd: number, ...rest: unknown[]) => (files.has(fd) ? E.SUCCESS : orig.fd_filestat_set_times!(fd, ...rest));
  imp.fd_allocate = (fd: number, ...rest: unknown[]) => (files.has(fd) ? E.NOTSUP : orig.fd_allocate!(fd, ...rest));
  imp.fd_advise = (fd: number, ...rest: unknown[]) => (files.has(fd) ? E.SUCCESS : orig.fd_advise!(fd, ...rest));
  imp.fd_fdstat_set_flags = (fd: number, flags: number) => (files.has(fd) || fd <= 2 ? E.SUCCESS : orig.fd_fdstat_set_flags!(fd, flags));
  imp.fd_close = (fd: number) => {
    if (files.delete(fd)) return E.SUCCESS;
    if (fd === ROOT_FD) return E.SUCCESS;
    return orig.fd_close!(fd);
  };
  imp.fd_readdir = (fd: number, ...rest: unknown[]) => (fd === ROOT_FD ? E.NOTSUP : files.has(fd) ? E.NOTDIR : orig.fd_readdir!(fd, ...rest));
  // Nothing may be created, renamed or removed under "/".
  for (const name of ['path_create_directory', 'path_unlink_file', 'path_remove_directory', 'path_rename', 'path_symlink', 'path_link', 'path_filestat_set_times']) {
    const o = orig[name]!;
    imp[name] = (fd: number, ...rest: unknown[]) => {
      if (fd === ROOT_FD) {
        trace?.(`${name} refused`);
        return E.ACCES;
      }
      return o(fd, ...rest);
    };
  }
  imp.path_readlink = (fd: number, ...rest: unknown[]) => (fd === ROOT_FD ? E.INVAL : orig.path_readlink!(fd, ...rest));

  try {
    const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
    const instance = new WA.Instance(wd.module, { wasi_snapshot_preview1: imp });
    memory = instance.exports.memory as WasmMemory;
    const code = wasi.start(instance);
    const overlay = ov ? { entries: [...adopted].flat(), storeEnd } : undefined;
    port.postMessage({ t: 'exit', code, overlay } satisfies ToolWorkerMessage);
  } catch (e) {
    const err = e as Error;
    // name: RuntimeError for a WebAssembly trap, RangeError for a stack overflow or a failed memory allocation.
    port.postMessage({ t: 'fail', message: err?.message ?? String(e), name: err?.name, stack: err?.stack } satisfies ToolWorkerMessage);
  }
}
