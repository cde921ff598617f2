/**
 * e2fsck, resize2fs and mke2fs from e2fsprogs 1.47.0 (Debian 12's source,
 * compiled to WebAssembly by wasm/build.sh), run in-process on any imgtool
 * BlockDevice: a partition window (SliceDevice) inside a qcow2, VDI or raw
 * disk, or a copy-on-write OverlayDevice over a read-only input.
 *
 * The tool sees the device as one regular file (`/dev/disk` by default) in
 * an otherwise empty virtual file system: no `?offset=` trick, and resize2fs
 * sizes the filesystem to the window by itself without truncating anything
 * (see src/fs/e2fsprogs-worker.ts).
 *
 * Why a worker thread: WASI is synchronous, BlockDevices are asynchronous
 * (the qcow2/VDI drivers can only be). The tool runs in a worker that sleeps
 * in Atomics.wait on a SharedArrayBuffer while this thread serves each
 * request with the async device and Atomics.notify's it. Requests are split
 * into chunks of at most CHUNK bytes (the shared data buffer).
 *
 * Direct I/O: when the device is a window [base, base + size) of a local
 * file (a FileDevice, SliceDevices over one, or a raw image's file the
 * caller names with `hostFile`), that round trip (~170 us a request) is
 * skipped: this thread opens the file (read-only for -n) and the worker
 * reads and writes it with fs.readSync/writeSync, checking every position
 * against the window. Every other device (qcow2, VDI, http, an overlay) is
 * served through messages.
 *
 * Safety:
 *  - mode 'check' (-n) runs read-only: opening the device for writing fails
 *    with EROFS inside the tool, a write reaching this side is refused, and
 *    the device itself is never written or flushed.
 *  - A device error (a qcow2 that fails a read) stops the tool at once and
 *    rejects with that error: e2fsck -y would otherwise "repair" around the
 *    failed read by rewriting blocks.
 *  - A worker that dies or traps rejects the promise; nothing can hang
 *    waiting for it. e2fsck restarting forever with the same messages is
 *    stopped (src/fs/tool-output.ts).
 *  - Every run ends with its worker terminated and no device request in
 *    flight, whether it succeeded, failed or was aborted: no thread or
 *    message port outlives the returned promise, and the process can exit.
 *
 * Exit status of e2fsck (bits, as e2fsck(8)): 0 clean, 1 errors corrected,
 * 2 corrected and the system should be rebooted, 4 errors left uncorrected,
 * 8 operational error, 16 usage or syntax error, 32 cancelled by the user,
 * 128 shared-library error.
 */

import * as fs from 'node:fs';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { BlockDevice } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import { FileDevice } from '../core/file.js';
import { SliceDevice } from '../core/slice.js';
import { OverlayDevice } from '../core/overlay.js';
import { readExtSuperblock } from './ext-superblock.js';
import { type DirectOverlay, toolWorkerMain, wasmApi, type ToolWorkerData, type ToolWorkerMessage, type WasmModule } from './e2fsprogs-worker.js';
import { type LoopInfo, ToolOutput } from './tool-output.js';

export type Tool = 'e2fsck' | 'resize2fs' | 'mke2fs';
export type FsckMode = 'check' | 'preen' | 'repair'; // -n, -p, -y; always -f (full check)
export type FsckStatus = 'clean' | 'corrected' | 'reboot' | 'uncorrected' | 'operational-error' | 'usage' | 'cancelled' | 'library-error';

export interface FsckResult {
  exitCode: number;
  status: FsckStatus[];
  /** stdout and stderr, interleaved as written. */
  output: string;
  /** The two streams apart (e2fsck's banner and aborts go to stderr). */
  stdout: string;
  stderr: string;
}

export interface ResizeResult {
  exitCode: number;
  output: string;
  /** Filesystem size in bytes before and after. */
  oldSize: number;
  newSize: number;
}

export interface Mke2fsResult {
  exitCode: number;
  output: string;
  /** Filesystem size in bytes. */
  size: number;
  uuid: string;
}

/** Options every tool run accepts. */
export interface ToolRunOptions {
  /** Receives stdout and stderr text as the tool writes it. */
  onOutput?: (chunk: string) => void;
  /**
   * Name the tool shows for the device (`/dev/NAME`), e.g. the image file's
   * name; characters other than letters, digits and `._+-` become `_`.
   * Default `disk`.
   */
  name?: string;
  /** Stop the tool (the worker is terminated); rejects with ImageError 'interrupted'. */
  signal?: AbortSignal;
  /** Size of the shared buffer device requests are split through (default CHUNK; tests use small ones). */
  chunkSize?: number;
  /**
   * The device's bytes are bytes [offset, offset + size) of this local file
   * (a raw image, or a partition of one): the tool then reads and writes the
   * file itself (see directIo below). Found without this when the device is a
   * FileDevice or a SliceDevice over one; a caller holding a raw image's file
   * says so here.
   */
  hostFile?: HostFile;
  /** false: every request goes through the device (the message path), even over a host file. Default true. */
  direct?: boolean;
}

/** A local file holding a device's bytes from `offset` on. */
export interface HostFile {
  file: FileDevice;
  offset: number;
}

/**
 * The host file under `dev` when dev is a raw image's file, `driverName` its
 * format: the `hostFile` option for a target `offset` bytes into the image.
 */
export function rawHostFile(driverName: string, file: BlockDevice, offset: number): HostFile | undefined {
  return driverName === 'raw' && file instanceof FileDevice ? { file, offset } : undefined;
}

/** The size of the shared buffer requests are chunked through. */
export const CHUNK = 8 << 20;
/** Output kept in FsckResult.output (onOutput still sees everything). */
const MAX_OUTPUT = 16 << 20;

// Control words in the shared control buffer (layout shared with the worker).
const CTL_STATE = 0; // 0 idle, 1 request pending, 2 reply ready
const CTL_OP = 1; // 1 read, 2 write, 3 flush
const CTL_LEN = 2;
const CTL_RESULT = 3; // a WASI errno, 0 for success
const CTL_OFFSET_F64 = 2; // Float64 index: bytes 16..23
const OP_READ = 1;
const OP_WRITE = 2;
const OP_FLUSH = 3;
/** A read the tool did not ask for (read-ahead): a failure is answered with EIO, not fatal. */
const OP_READAHEAD = 4;
const WASI_EIO = 29;
const WASI_EROFS = 69;
const WASI_EINVAL = 28;

// ---------------------------------------------------------------------------
// Locating and compiling the WebAssembly modules

/** Directory of the built .wasm files: wasm/build/ at the package root (IMGTOOL_WASM_DIR overrides). */
export function wasmDir(): string {
  return process.env.IMGTOOL_WASM_DIR || fileURLToPath(new URL('../../wasm/build/', import.meta.url));
}

function wasmPath(tool: Tool): string {
  return `${wasmDir().replace(/\/+$/, '')}/${tool}.wasm`;
}

/** True when e2fsck.wasm and resize2fs.wasm (and mke2fs.wasm) are built. */
export function wasmAvailable(tool?: Tool): boolean {
  const tools: Tool[] = tool ? [tool] : ['e2fsck', 'resize2fs'];
  return tools.every((t) => {
    try {
      return fs.statSync(wasmPath(t)).size > 8;
    } catch {
      return false;
    }
  });
}

/*
 * Compiled once per process; no cache across runs. Measured (e2fsck.wasm,
 * 870 KiB, Node 20): WebAssembly.compile takes 15-20 ms of CPU, because V8
 * compiles functions lazily when first called (Liftoff) and re-compiles the
 * hot ones (TurboFan) while the tool runs. That JIT work, ~120 ms of CPU in
 * a check of an empty 64 MiB filesystem (a second run in the same process,
 * which reuses the module's code, takes half the CPU), is what a code cache
 * would save, and Node 20 has no way to keep it: there is no API to
 * serialize a compiled WebAssembly.Module (v8.serialize writes an empty
 * object; structured clone works only between threads of one process).
 * A cache of the compile step alone would save under 20 ms, so there is none.
 *
 * Nor did the build help: against wasm/build.sh's clang -O2, -O3 and
 * binaryen's wasm-opt (-O2, -O3, -Os, on either) changed the CPU time of
 * `imgtool fsck -n` on the bench's 200,000-file ext4 by -0 to +15% (medians
 * of 9 interleaved runs each), so -O2 stays. V8's tiering flags
 * (--liftoff-only, a 4x or 16x --wasm-tiering-budget, eager compilation)
 * were within the noise too.
 */
const compiled = new Map<string, Promise<WasmModule>>();

/** Compile a tool once per process (per path). */
function loadModule(tool: Tool): Promise<WasmModule> {
  const path = wasmPath(tool);
  let m = compiled.get(path);
  if (!m) {
    m = (async () => {
      let bytes: Buffer;
      try {
        bytes = await fs.promises.readFile(path);
      } catch {
        throw new ImageError('unsupported', "e2fsprogs WebAssembly build missing: run 'npm run setup'", { path });
      }
      try {
        return await wasmApi().compile(bytes);
      } catch (e) {
        throw new ImageError('unsupported', `${path} is not a usable WebAssembly module (${(e as Error).message}): run 'npm run setup'`, { path });
      }
    })();
    compiled.set(path, m);
    m.catch(() => compiled.delete(path));
  }
  return m;
}

/**
 * Get `tool` ready to run: start compiling it (errors surface when it runs)
 * and start a worker thread (a Node environment takes ~50 ms to boot). A
 * command calls this first, so both overlap opening the image and finding
 * the partition. The spare worker is unref'd: unused, it never keeps the
 * process alive.
 */
export function prepareTool(tool: Tool): void {
  loadModule(tool).catch(() => {});
  if (spare) return;
  const s = { worker: spawnWorker(), dead: false, onEnd: () => {} };
  s.onEnd = () => {
    s.dead = true;
    if (spare === s) spare = undefined;
  };
  s.worker.on('error', s.onEnd);
  s.worker.on('exit', s.onEnd);
  s.worker.unref();
  spare = s;
}

/** A worker prepareTool started, idle until a run takes it. */
let spare: { worker: Worker; dead: boolean; onEnd: () => void } | undefined;

/** The spare worker if there is a live one, else a new worker; either waits for its ToolWorkerData. */
function takeWorker(): Worker {
  const s = spare;
  spare = undefined;
  if (s) {
    s.worker.off('error', s.onEnd);
    s.worker.off('exit', s.onEnd);
    if (!s.dead) {
      s.worker.ref();
      return s.worker;
    }
    void s.worker.terminate().catch(() => {});
  }
  return spawnWorker();
}

function spawnWorker(): Worker {
  return new Worker(WORKER_SOURCE, { eval: true, stdout: false, stderr: false });
}

// ---------------------------------------------------------------------------
// Superblock checks before a tool runs

/** Feature bits e2fsprogs 1.47.0 supports (EXT2_LIB_FEATURE_*_SUPP in lib/ext2fs/ext2fs.h, MMP enabled). */
const SUPPORTED = {
  compat: 0x0001 | 0x0002 | 0x0004 | 0x0008 | 0x0010 | 0x0020 | 0x0200 | 0x0400 | 0x0800 | 0x1000,
  incompat: 0x0002 | 0x0004 | 0x0008 | 0x0010 | 0x0040 | 0x0080 | 0x0100 | 0x0200 | 0x0400 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000,
  roCompat: 0x0001 | 0x0002 | 0x0008 | 0x0010 | 0x0020 | 0x0040 | 0x0100 | 0x0200 | 0x0400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000,
};
/** Names of feature bits that exist but e2fsprogs 1.47 does not handle. */
const UNSUPPORTED_NAMES: Record<string, Record<number, string>> = {
  compat: { 0x40: 'lazy_bg', 0x100: 'exclude_bitmap' },
  incompat: { 0x1: 'compression', 0x1000: 'dirdata' },
  roCompat: { 0x80: 'snapshot', 0x800: 'replica' },
};

const SB_OFFSET = 1024;
const SB_MAGIC = 0x38; // s_magic, u16
const SB_LOG_BLOCK_SIZE = 0x18; // u32
const SB_FEATURES = { compat: 0x5c, incompat: 0x60, roCompat: 0x64 } as const; // u32 each
const EXT_MAGIC = 0xef53;

interface RawSuperblock {
  /** Byte offset of this superblock copy in the device. */
  at: number;
  view: DataView;
}

async function superblockAt(dev: BlockDevice, at: number): Promise<RawSuperblock | undefined> {
  if (at + 1024 > dev.size) return undefined;
  const buf = new Uint8Array(1024);
  await dev.read(buf, at);
  const view = new DataView(buf.buffer);
  return view.getUint16(SB_MAGIC, true) === EXT_MAGIC ? { at, view } : undefined;
}

/**
 * Why e2fsprogs can do nothing with `dev`, judged from its superblock: the
 * device is too small, no superblock has the ext magic (with `allowBackup`,
 * as for e2fsck, which finds backups itself, neither the primary nor group
 * 1's copy for any block size), or the filesystem has features e2fsprogs
 * 1.47 does not know. `outcome` ends the message (what happened to the tool).
 * Returns the superblock to judge the filesystem by when there is no such problem.
 */
async function extProblem(dev: BlockDevice, tool: Tool, allowBackup: boolean, outcome: string): Promise<{ error: ImageError } | { sb: RawSuperblock }> {
  let sb = await superblockAt(dev, SB_OFFSET);
  if (!sb && allowBackup) {
    // e2fsck's backup search: group 1's superblock for each block size.
    for (let bs = 1024; bs <= 65536 && !sb; bs *= 2) {
      const cand = await superblockAt(dev, (bs * 8 + (bs === 1024 ? 1 : 0)) * bs);
      if (cand && 1024 << cand.view.getUint32(SB_LOG_BLOCK_SIZE, true) === bs) sb = cand;
    }
  }
  if (!sb) {
    const at = SB_OFFSET + SB_MAGIC;
    if (dev.size < SB_OFFSET + 1024) {
      return {
        error: new ImageError('invalid-format', `not an ext2/3/4 filesystem: the device (${dev.size} bytes) is too small to hold a superblock; ${outcome}`, {
          value: dev.size,
        }),
      };
    }
    const b = new Uint8Array(2);
    await dev.read(b, at);
    const found = `0x${(b[0]! | (b[1]! << 8)).toString(16).padStart(4, '0')}`;
    return {
      error: new ImageError(
        'invalid-format',
        `not an ext2/3/4 filesystem: the superblock magic s_magic at offset ${at} has value ${found}, not 0xef53` +
          `${allowBackup ? ', and no backup superblock was found' : ''}; ${outcome}`,
        { field: 's_magic', offset: at, value: found },
      ),
    };
  }
  const bad: string[] = [];
  for (const kind of ['compat', 'incompat', 'roCompat'] as const) {
    const bits = sb.view.getUint32(SB_FEATURES[kind], true);
    const unknown = (bits & ~SUPPORTED[kind]) >>> 0;
    for (let b = 0; b < 32; b++) {
      const bit = 2 ** b;
      if (unknown & bit) bad.push(UNSUPPORTED_NAMES[kind]![bit] ?? `${kind.replace('roCompat', 'ro_compat')} bit 0x${bit.toString(16)}`);
    }
  }
  if (bad.length) {
    const field = 's_feature_*';
    return {
      error: new ImageError('unsupported', `the filesystem has features e2fsprogs 1.47 does not support (${bad.join(', ')}); ${outcome}`, {
        field,
        offset: sb.at + SB_FEATURES.compat,
        value: bad.join(','),
      }),
    };
  }
  return { sb };
}

/**
 * Before resize2fs (which, unlike e2fsck, never falls back to a backup
 * superblock and changes the filesystem): a primary superblock it can work
 * from, with a block size in range.
 */
async function requireExt(dev: BlockDevice, tool: Tool): Promise<void> {
  const p = await extProblem(dev, tool, false, `${tool} not run`);
  if ('error' in p) throw p.error;
  const log = p.sb.view.getUint32(SB_LOG_BLOCK_SIZE, true);
  if (log > 6) {
    throw new ImageError('invalid-format', `ext superblock: s_log_block_size (at offset ${p.sb.at + SB_LOG_BLOCK_SIZE}, value ${log}) is out of range (0..6); ${tool} not run`, {
      field: 's_log_block_size',
      offset: p.sb.at + SB_LOG_BLOCK_SIZE,
      value: log,
    });
  }
}

/** Filesystem size in bytes from the primary superblock, or undefined. */
async function fsSize(dev: BlockDevice): Promise<number | undefined> {
  return (await readExtSuperblock(dev))?.size;
}

// ---------------------------------------------------------------------------
// Running a tool

function devicePath(name: string | undefined): string {
  let n = (name ?? 'disk').replace(/[^A-Za-z0-9._+-]/g, '_').replace(/^[-.]+/, '_');
  if (!n || n === 'null' || n === 'urandom' || n === 'random') n = `disk-${n}`;
  return `/dev/${n.slice(0, 200)}`;
}

// ---------------------------------------------------------------------------
// Direct I/O on a host file

/** The host file whose bytes `dev` is: a FileDevice, a chain of SliceDevices over one, or the caller's word. */
function hostFileOf(dev: BlockDevice, said: HostFile | undefined): HostFile | undefined {
  let offset = 0;
  let d = dev;
  for (let depth = 0; depth < 64; depth++) {
    if (d instanceof FileDevice) return { file: d, offset };
    if (!(d instanceof SliceDevice)) break;
    offset += d.start;
    d = d.parent;
  }
  return said;
}

/** How the worker reaches the device's bytes itself (ToolWorkerData.direct), and what closes or adopts afterwards. */
interface Direct {
  fd: number;
  base: number;
  path: string;
  /** The descriptor was opened for this run (closed after it); else it is a device's own. */
  owned: boolean;
  overlay?: DirectOverlay;
  /** The overlay whose map the worker holds during the run. */
  lentTo?: OverlayDevice;
}

/**
 * Direct I/O through one of wrap's overlays: an OverlayDevice whose base is
 * bytes of a local file (its HostBase) and whose store is a local file. The
 * worker reads the base's file and reads and writes the store itself; the
 * overlay's map is lent for the run and what the tool added comes back with
 * its exit. The devices' own descriptors are used (the store is an unlinked
 * scratch file: there is no path to open again), so nothing else may use the
 * overlay's store while the run writes: wrap runs the writing tools alone,
 * and only the read-only final check beside the copy (which only reads).
 */
function overlayDirect(dev: BlockDevice): Direct | undefined {
  if (!(dev instanceof OverlayDevice) || !dev.hostBase || !(dev.store instanceof FileDevice) || dev.store.readOnly) return undefined;
  const h = dev.hostBase;
  const fileEnd = h.offset + h.end;
  if (!Number.isSafeInteger(h.offset) || h.offset < 0 || h.end > dev.size || !Number.isSafeInteger(fileEnd) || fileEnd > h.file.size) return undefined;
  try {
    const lent = dev.lend();
    const used = new Float64Array(h.used.length * 2);
    h.used.forEach((r, i) => {
      used[2 * i] = r.offset;
      used[2 * i + 1] = r.offset + r.length;
    });
    return {
      fd: h.file.descriptor,
      base: h.offset,
      path: h.file.path,
      owned: false,
      overlay: { storeFd: dev.store.descriptor, chunk: lent.chunk, entries: lent.entries, storeEnd: lent.storeEnd, used, end: h.end },
      lentTo: dev,
    };
  } catch {
    return undefined; // a closed device: the message path reports it
  }
}

/**
 * Open the host file for the worker's direct I/O: read-only unless the run
 * writes, and only a regular file (or block device) that holds the whole
 * window [offset, offset + dev.size). Undefined (the message path serves the
 * run) when anything does not fit: a growable file, a read-only file for a
 * writable run, a file that changed kind or shrank.
 */
function openDirect(dev: BlockDevice, h: HostFile | undefined, writable: boolean): Direct | undefined {
  if (!h || h.file.growable || (writable && h.file.readOnly)) return undefined;
  const end = h.offset + dev.size;
  if (!Number.isSafeInteger(h.offset) || h.offset < 0 || !Number.isSafeInteger(end) || end > h.file.size) return undefined;
  let fd: number | undefined;
  try {
    // The file this device has open (not whatever its path names now: a
    // file renamed or replaced since the image was opened is not ours).
    const st = h.file.stat();
    if (!(st.isFile() || (st.isBlockDevice() && h.file.isBlockDevice))) return undefined;
    fd = fs.openSync(h.file.path, writable ? 'r+' : 'r');
    const fst = fs.fstatSync(fd);
    const fits = fst.ino === st.ino && fst.dev === st.dev && (fst.isBlockDevice() || (fst.isFile() && fst.size >= end));
    if (fits) return { fd, base: h.offset, path: h.file.path, owned: true };
  } catch {
    // The message path will report whatever is wrong with the file.
  }
  if (fd !== undefined) fs.closeSync(fd);
  return undefined;
}

/** The eval'd worker: filters node:wasi's ExperimentalWarning, loads what it needs, then runs toolWorkerMain on the first message (its ToolWorkerData). */
const WORKER_SOURCE = `'use strict';
const emitWarning = process.emitWarning;
process.emitWarning = function (warning, ...rest) {
  const type = typeof rest[0] === 'string' ? rest[0] : rest[0] && rest[0].type;
  if (type === 'ExperimentalWarning' && /WASI/.test(String(warning && warning.message || warning))) return;
  return emitWarning.call(this, warning, ...rest);
};
const wt = require('node:worker_threads');
const modules = [require('node:wasi'), require('node:crypto'), require('node:fs')];
wt.parentPort.once('message', (data) => (${toolWorkerMain.toString()})(wt, ...modules, data));
`;

interface RunResult {
  exitCode: number;
  output: string;
  stdout: string;
  stderr: string;
}

/**
 * Run `tool` with `args` (argv[0] included; the device path is `dev` below)
 * on `dev`. Writable runs flush the device at the end.
 *
 * When the returned promise settles, however it settles (the tool's exit, a
 * crash, a device error, an abort, a loop), the worker thread has been
 * terminated and no write or flush of this run is still in progress: nothing
 * of the run keeps the process alive or changes the device afterwards (a
 * read still in progress may complete; its bytes are dropped).
 */
async function runTool(
  tool: Tool,
  dev: BlockDevice,
  args: (devPath: string) => string[],
  opts: ToolRunOptions & { writable: boolean; env?: Record<string, string> },
): Promise<RunResult> {
  if (opts.writable && dev.readOnly) {
    throw new ImageError('usage', `${tool}: the device is read-only (open the image writable, or run on an overlay)`, { operation: 'write' });
  }
  const chunk = opts.chunkSize ?? CHUNK;
  if (!Number.isSafeInteger(chunk) || chunk < 512 || chunk > 256 << 20) {
    throw new ImageError('usage', `${tool}: chunk size ${chunk} must be between 512 bytes and 256 MiB`, { value: chunk });
  }
  const cancelled = () => new ImageError('interrupted', `${tool} cancelled before it started`);
  if (opts.signal?.aborted) throw cancelled();
  const devPath = devicePath(opts.name);
  const ctlBuf = new SharedArrayBuffer(32);
  const ctl = new Int32Array(ctlBuf);
  const ctlF64 = new Float64Array(ctlBuf);
  const trace = process.env.IMGTOOL_WASI_TRACE === '1';
  // The message path's buffers are made only when there is no direct I/O (see start below).
  let shared = new Uint8Array(new SharedArrayBuffer(0));
  let scratch = Buffer.alloc(0);
  let direct: Direct | undefined;
  const closeDirect = () => {
    if (direct?.owned) fs.closeSync(direct.fd);
    direct = undefined;
  };

  return new Promise<RunResult>((resolve, reject) => {
    // The worker boots while the module compiles (or has booted: prepareTool); it waits for its ToolWorkerData.
    const worker = takeWorker();
    const start = (module: WasmModule) => {
      if (settled) return;
      // Checked again: the signal may have fired while the module was compiled.
      if (opts.signal?.aborted) return fail(cancelled());
      direct = opts.direct === false ? undefined : (openDirect(dev, hostFileOf(dev, opts.hostFile), opts.writable) ?? overlayDirect(dev));
      const dataBuf = new SharedArrayBuffer(direct ? 0 : chunk);
      shared = new Uint8Array(dataBuf);
      scratch = Buffer.allocUnsafe(direct ? 0 : chunk);
      const workerData: ToolWorkerData = {
        module,
        args: args(devPath),
        env: { PATH: '/', ...opts.env },
        devicePath: devPath,
        deviceSize: dev.size,
        writable: opts.writable,
        ctl: ctlBuf,
        data: dataBuf,
        trace,
      };
      if (direct) {
        workerData.direct = { fd: direct.fd, base: direct.base, overlay: direct.overlay };
        const through = direct.overlay ? ' through the overlay' : '';
        if (trace) process.stderr.write(`[${tool}] direct I/O on ${direct.path}${through} [${direct.base}, ${direct.base + dev.size})${opts.writable ? '' : ' read-only'}\n`);
      }
      worker.postMessage(workerData);
    };
    const decoders = { 1: new TextDecoder(), 2: new TextDecoder() };
    let output = '';
    const streams = { 1: '', 2: '' };
    let truncated = false;
    let settled = false;
    let exited = false; // the tool has returned its exit code
    let wrote = false;
    /** The write or flush being served, if any. */
    let inflight: Promise<void> = Promise.resolve();

    const printed = new ToolOutput((fd, text) => {
      opts.onOutput?.(text);
      if (output.length + text.length <= MAX_OUTPUT) {
        output += text;
        streams[fd] += text;
      } else if (!truncated) {
        truncated = true;
        output += '\n[imgtool: output truncated]\n';
      }
    });

    /** Settle once: stop the worker, let a write in progress finish, then resolve or reject. */
    const finish = (outcome: { value: RunResult } | { error: unknown }) => {
      if (settled) return;
      settled = true;
      opts.signal?.removeEventListener('abort', onAbort);
      if ('error' in outcome) printed.end();
      const stopped = worker.terminate().then(
        () => undefined,
        () => undefined,
      );
      // The worker's direct writes are over once it is terminated; then its descriptor goes.
      void Promise.all([stopped, inflight]).then(() => {
        closeDirect();
        if ('error' in outcome) reject(outcome.error);
        else resolve(outcome.value);
      });
    };
    const fail = (error: unknown) => finish({ error });
    const onAbort = () => fail(new ImageError('interrupted', `${tool} was cancelled${wrote ? ' after it had written to the device' : ''}`));
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    const reply = (errno: number) => {
      ctl[CTL_RESULT] = errno;
      Atomics.store(ctl, CTL_STATE, 2);
      Atomics.notify(ctl, CTL_STATE);
    };

    const serve = async () => {
      const op = ctl[CTL_OP]!;
      const len = ctl[CTL_LEN]!;
      const offset = ctlF64[CTL_OFFSET_F64]!;
      if (len < 0 || len > chunk || !Number.isSafeInteger(offset) || offset < 0 || offset + len > dev.size) {
        reply(WASI_EINVAL);
        return;
      }
      try {
        if (op === OP_READ || op === OP_READAHEAD) {
          const buf = scratch.subarray(0, len);
          try {
            await dev.read(buf, offset);
          } catch (e) {
            if (op === OP_READ) throw e;
            if (!settled) reply(WASI_EIO);
            return;
          }
          if (settled) return;
          shared.set(buf, 0);
          reply(0);
        } else if (op === OP_WRITE) {
          if (!opts.writable) {
            reply(WASI_EROFS);
            return;
          }
          const buf = scratch.subarray(0, len);
          buf.set(shared.subarray(0, len));
          wrote = true;
          await dev.write(buf, offset);
          reply(0);
        } else if (op === OP_FLUSH) {
          if (opts.writable) await dev.flush();
          reply(0);
        } else reply(WASI_EINVAL);
      } catch (e) {
        const what = op === OP_READ || op === OP_READAHEAD ? 'read' : op === OP_WRITE ? 'write' : 'flush';
        const msg = `${tool} stopped: the device failed a ${what} of ${len} bytes at offset ${offset}: ${(e as Error)?.message ?? String(e)}`;
        fail(
          e instanceof ImageError
            ? new ImageError(e.kind, msg, { ...e.context, operation: what }, { cause: e })
            : new ImageError('io', msg, { offset, operation: what }, { cause: e }),
        );
      }
    };

    worker.on('message', (m: ToolWorkerMessage) => {
      if (settled) return;
      switch (m.t) {
        case 'io': {
          const op = ctl[CTL_OP];
          const served = serve();
          // A write or flush must be over before the run settles (the caller may close the device);
          // a read may finish later (its bytes are dropped): a stuck read then cannot hold up an abort.
          if (op === OP_WRITE || op === OP_FLUSH) inflight = served;
          break;
        }
        case 'out':
          printed.write(m.fd, decoders[m.fd].decode(m.bytes, { stream: true }));
          if (printed.loop) fail(loopError(tool, printed.loop, opts.writable));
          break;
        case 'wrote':
          wrote = true;
          break;
        case 'ioerror': {
          const msg = `${tool} stopped: the device failed a ${m.op} of ${m.length} bytes at offset ${m.offset}: ${m.message}`;
          fail(new ImageError('io', msg, { offset: m.offset, operation: m.op, path: direct?.path }));
          break;
        }
        case 'trace':
          process.stderr.write(`[${tool}] ${m.text}\n`);
          break;
        case 'exit': {
          exited = true;
          // What the tool wrote through the lent overlay becomes the overlay's.
          if (direct?.lentTo && m.overlay) {
            direct.lentTo.adopt(m.overlay.entries, m.overlay.storeEnd);
            (direct.lentTo.store as FileDevice).grewTo(m.overlay.storeEnd);
          }
          printed.write(1, decoders[1].decode());
          printed.write(2, decoders[2].decode());
          printed.end();
          const code = m.code;
          const done = async () => {
            if (!(opts.writable && wrote)) return;
            const fd = direct?.overlay ? undefined : direct?.fd;
            if (fd !== undefined) await new Promise<void>((res, rej) => fs.fdatasync(fd, (e) => (e ? rej(e) : res())));
            await dev.flush();
          };
          inflight = done().then(
            () => finish({ value: { exitCode: code, output, stdout: streams[1], stderr: streams[2] } }),
            (e) => fail(e),
          );
          break;
        }
        case 'fail':
          fail(crashError(tool, m, output));
          break;
      }
    });
    worker.on('error', (e: Error & { code?: string }) => fail(crashError(tool, { message: e?.message ?? String(e), name: e?.name, code: e?.code }, output)));
    worker.on('exit', (code) => {
      if (!settled && !exited) fail(new ImageError('io', `${tool}: its worker thread exited (code ${code}) before the tool finished`));
    });
    loadModule(tool).then(start, fail);
  });
}

/**
 * A tool that crashed: a WebAssembly trap (an out-of-bounds memory access,
 * `unreachable` after abort(), a stack overflow) or a failure of the worker
 * running it. Not an ImageError: it is no verdict on the image but a defect
 * in the tool (the host's e2fsprogs often crashes the same way: e2fsck 1.47.0
 * segfaults on its own test image f_h_badroot). The CLI reports it as an
 * internal error (imgtool fsck: e2fsck's exit code 8, operational error).
 */
export class ToolCrashError extends Error {
  constructor(
    readonly tool: Tool,
    message: string,
  ) {
    super(message);
    this.name = 'ToolCrashError';
  }
}

/** What the worker reports when the tool did not return. */
interface WorkerFailure {
  message: string;
  /** The error's constructor name: RuntimeError for a WebAssembly trap. */
  name?: string;
  code?: string;
}

/** Memory exhaustion is an ImageError with advice; everything else a crash. */
function crashError(tool: Tool, f: WorkerFailure, output: string): Error {
  const message = f.message.trim();
  const outOfMemory =
    f.code === 'ERR_WORKER_OUT_OF_MEMORY' || (f.name === 'RangeError' && /out of memory|cannot allocate|maximum memory size|could not allocate/i.test(message));
  if (outOfMemory) return memoryError(tool, message, output);
  if (f.name === 'RuntimeError') return new ToolCrashError(tool, `${tool} crashed (WebAssembly trap: ${message})${tail(output)}`);
  if (f.name === 'RangeError' && /call stack/i.test(message)) return new ToolCrashError(tool, `${tool} crashed (stack overflow: ${message})${tail(output)}`);
  return new ToolCrashError(tool, `${tool} crashed (its worker failed: ${f.name ? `${f.name}: ` : ''}${message})${tail(output)}`);
}

/** e2fsck restarted with the same messages again and again. */
function loopError(tool: Tool, loop: LoopInfo, writable: boolean): ImageError {
  return new ImageError(
    'corrupt',
    `${tool} is looping: it restarted ${loop.rounds} times in a row printing the same messages each time (last: ${loop.sample}); stopped it. ` +
      (writable
        ? 'The repair it restarts for does not take: this filesystem needs more than e2fsck can repair'
        : 'A check (-n) cannot make the repair it restarts for: repair a copy (-y) to see whether that ends it'),
  );
}

function tail(output: string): string {
  const t = output.trim().split('\n').slice(-3).join(' / ');
  return t ? ` (last output: ${t})` : '';
}

function memoryError(tool: Tool, message: string, output: string): ImageError {
  return new ImageError(
    'unsupported',
    `${tool} ran out of memory: a WebAssembly tool can use at most 4 GiB, too little for this filesystem (${message.trim()}); ` +
      `run the native e2fsprogs on the extracted filesystem instead${tail(output)}`,
  );
}

/** e2fsprogs reports allocation failures through com_err. */
const OOM_OUTPUT = /Memory allocation failed|Cannot allocate memory|Can't allocate|Error allocating|while allocating|out of memory/i;

/** Classify an exit: a tool that failed because malloc failed is an ImageError, not an answer. */
export function isOutOfMemory(exitCode: number, output: string): boolean {
  return exitCode !== 0 && (exitCode & 8) !== 0 && OOM_OUTPUT.test(output);
}

// ---------------------------------------------------------------------------
// Public API

/** Decode e2fsck's exit status bits. */
export function fsckStatus(exitCode: number): FsckStatus[] {
  if (exitCode === 0) return ['clean'];
  const out: FsckStatus[] = [];
  const bits: Array<[number, FsckStatus]> = [
    [1, 'corrected'],
    [2, 'reboot'],
    [4, 'uncorrected'],
    [8, 'operational-error'],
    [16, 'usage'],
    [32, 'cancelled'],
    [128, 'library-error'],
  ];
  for (const [bit, name] of bits) if (exitCode & bit) out.push(name);
  return out;
}

const MODE_FLAG: Record<FsckMode, string> = { check: '-n', preen: '-p', repair: '-y' };

/**
 * `e2fsck -f` with -n (check), -p (preen) or -y (repair) on `dev`.
 * 'check' never writes. The result carries e2fsck's exit code and output.
 * e2fsck decides about the filesystem (a damaged primary superblock is its to
 * repair from a backup); ImageError is thrown for what happens around it: a
 * device failure, memory exhaustion, e2fsck looping (see tool-output.ts),
 * and, when e2fsck gives up (exit 8), the reason imgtool can name: no ext
 * superblock anywhere, or features e2fsprogs 1.47 does not know. A crash of
 * the tool (a WebAssembly trap) throws ToolCrashError.
 */
export async function e2fsck(dev: BlockDevice, opts: { mode: FsckMode; extraArgs?: string[] } & ToolRunOptions): Promise<FsckResult> {
  const flag = MODE_FLAG[opts.mode];
  if (!flag) throw new ImageError('usage', `e2fsck mode must be check, preen or repair, not '${String(opts.mode)}'`);
  // No pre-check: e2fsck judges the superblock itself (it repairs a damaged
  // primary from a backup). Its operational errors are explained afterwards.
  const r = await runTool('e2fsck', dev, (p) => ['e2fsck', '-f', flag, ...(opts.extraArgs ?? []), p], {
    ...opts,
    writable: opts.mode !== 'check',
  });
  if (isOutOfMemory(r.exitCode, r.output)) throw memoryError('e2fsck', 'malloc failed', r.output);
  if (r.exitCode & 8) {
    const p = await extProblem(dev, 'e2fsck', true, `e2fsck gave up (exit ${r.exitCode})`);
    if ('error' in p) throw p.error;
  }
  return { exitCode: r.exitCode, status: fsckStatus(r.exitCode), output: r.output, stdout: r.stdout, stderr: r.stderr };
}

/**
 * resize2fs `dev` to `size` bytes (default: the whole device). resize2fs
 * requires a filesystem checked since it was last mounted (run e2fsck first)
 * unless `force`. A size above the device's is refused here; resize2fs
 * rounds down to whole blocks and refuses sizes below its minimum. The
 * result's exitCode is resize2fs's (0 success, 1 failure; see output).
 */
export async function resize2fs(dev: BlockDevice, opts: { size?: number; force?: boolean } & ToolRunOptions = {}): Promise<ResizeResult> {
  await requireExt(dev, 'resize2fs');
  const oldSize = (await fsSize(dev))!;
  if (opts.size !== undefined) {
    if (!Number.isSafeInteger(opts.size) || opts.size <= 0) {
      throw new ImageError('usage', `resize2fs: size must be a positive number of bytes, not ${opts.size}`, { value: opts.size });
    }
    if (opts.size > dev.size) {
      throw new ImageError('usage', `resize2fs: requested size ${opts.size} is larger than the device (${dev.size} bytes)`, { value: opts.size });
    }
  }
  if (oldSize > dev.size && opts.size === undefined) {
    throw new ImageError(
      'corrupt',
      `the filesystem claims ${oldSize} bytes but its device holds only ${dev.size}: give resize2fs an explicit size no larger than the device (it must be able to read what it moves)`,
      { field: 's_blocks_count', offset: SB_OFFSET + 4, value: oldSize },
    );
  }
  const sizeArg = opts.size !== undefined ? [`${Math.floor(opts.size / 1024)}K`] : [];
  const r = await runTool('resize2fs', dev, (p) => ['resize2fs', ...(opts.force ? ['-f'] : []), p, ...sizeArg], { ...opts, writable: true });
  if (isOutOfMemory(r.exitCode, r.output)) throw memoryError('resize2fs', 'malloc failed', r.output);
  const newSize = (await fsSize(dev)) ?? oldSize;
  return { exitCode: r.exitCode, output: r.output, oldSize, newSize };
}

export interface Mke2fsOptions extends ToolRunOptions {
  /** Default ext4. */
  type?: 'ext2' | 'ext3' | 'ext4';
  label?: string;
  /** Default: a random UUID. */
  uuid?: string;
  /** Bytes: 1024, 2048, 4096 (default: mke2fs chooses). */
  blockSize?: number;
  /** mke2fs -O list, e.g. '^metadata_csum,64bit'. */
  features?: string;
  /** Filesystem size in bytes (default: the whole device). */
  size?: number;
  extraArgs?: string[];
}

/**
 * mke2fs on `dev` (everything on it is lost). Uses mke2fs's built-in
 * configuration (Debian's mke2fs.conf defaults). Throws on failure.
 */
export async function mke2fs(dev: BlockDevice, opts: Mke2fsOptions = {}): Promise<Mke2fsResult> {
  const type = opts.type ?? 'ext4';
  if (!['ext2', 'ext3', 'ext4'].includes(type)) throw new ImageError('usage', `mke2fs: type must be ext2, ext3 or ext4, not '${type}'`);
  if (opts.size !== undefined && (!Number.isSafeInteger(opts.size) || opts.size <= 0 || opts.size > dev.size)) {
    throw new ImageError('usage', `mke2fs: size ${opts.size} must be positive and at most the device's ${dev.size} bytes`, { value: opts.size });
  }
  const uuid = opts.uuid ?? randomUUID();
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(uuid)) {
    throw new ImageError('usage', `mke2fs: '${uuid}' is not a UUID`, { value: uuid });
  }
  const args = ['mke2fs', '-F', '-q', '-t', type, '-U', uuid];
  if (opts.label !== undefined) args.push('-L', opts.label);
  if (opts.blockSize !== undefined) args.push('-b', String(opts.blockSize));
  if (opts.features) args.push('-O', opts.features);
  args.push(...(opts.extraArgs ?? []));
  const sizeArg = opts.size !== undefined ? [`${Math.floor(opts.size / 1024)}k`] : [];
  const r = await runTool('mke2fs', dev, (p) => [...args, p, ...sizeArg], { ...opts, writable: true });
  if (isOutOfMemory(r.exitCode, r.output)) throw memoryError('mke2fs', 'malloc failed', r.output);
  if (r.exitCode !== 0) {
    // mke2fs exits 1 for everything; bad options and impossible geometries are the caller's.
    const usage = /Usage:|[Ii]nvalid|too small|too big|too large|not supported|must be/.test(r.output);
    throw new ImageError(usage ? 'usage' : 'io', `mke2fs failed (exit ${r.exitCode}): ${r.output.trim().split('\n').slice(-3).join(' / ')}`);
  }
  return { exitCode: r.exitCode, output: r.output, size: (await fsSize(dev)) ?? 0, uuid: uuid.toLowerCase() };
}
