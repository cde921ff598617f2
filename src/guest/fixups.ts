/**
 * Guest fix-ups: what a Xen PV guest's root filesystem needs to boot under
 * KVM on a virtio disk, done on the filesystem itself (a BlockDevice), never
 * on host paths.
 *
 *   /etc/fstab            xvdX / sdX / hdX device names -> UUID= of the new
 *                         root and swap (or /dev/vdX names); a swap line is
 *                         added when there is none and a swap UUID is given
 *   consoles              xvc0/hvc0 gettys -> ttyS0 (+ tty1) in /etc/inittab,
 *                         upstart's /etc/event.d and /etc/init, systemd's
 *                         getty.target.wants; /etc/securetty gains ttyS0
 *   boot configs          menu.lst, grub.conf, grub.cfg, /etc/default/grub:
 *                         root=/dev/xvda1 -> the new root; xencons=,
 *                         console=hvc0, console=xvc0 removed
 *   warnings              Xen-only kernels, initrds without virtio drivers
 *                         (and which file to change), /boot elsewhere
 *
 * Every change is planned first on a read-only mount, reported as a unified
 * diff, and applied in a second mount unless `dryRun` (then nothing at all is
 * written to the device). A filesystem that is not a bootable guest gives
 * isGuest false and a warning, not an error.
 */

import type { BlockDevice } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import { type ExtFs, isFsError, withExtFs } from '../fs/ext.js';
import { readExtSuperblock } from '../fs/ext-superblock.js';
import { type KernelInfo, MAX_INITRD, exists, isXenConsoleArg, kernelsIn, pickBootKernel, readGuestFile } from './boot.js';
import { unifiedDiff } from './diff.js';
import { ReadAheadDevice, WriteBackDevice } from './read-ahead.js';
import { type InitrdPatch, type InitrdPlan, VIRTIO_MODULES, builtinModules, fixResumeText, planInitrd, storageAdvice, storageIn } from './initrd-virtio.js';
import { KEEP_ETH_NAMES, filesNamingEth } from './network.js';

export interface GuestFixOptions {
  /** The root device name for KVM, e.g. '/dev/vda1' (used when no rootUuid). */
  rootDevice: string;
  rootUuid?: string;
  swapUuid?: string;
  /** e.g. '/dev/vda2' (used for swap when no swapUuid). */
  swapDevice?: string;
  /**
   * Filesystems besides root that the new disk holds (`wrap --part /var=var.img`):
   * their /etc/fstab entries (matched by mount point) are rewritten to UUID=uuid.
   */
  mounts?: GuestMount[];
  dryRun?: boolean;
}

/** A filesystem other than root on the new disk. */
export interface GuestMount {
  /** Mount point as /etc/fstab names it, e.g. '/var'. */
  mountpoint: string;
  /** The filesystem's UUID (fstab names it UUID=...). */
  uuid: string;
  /** Its KVM device name, e.g. '/dev/vda5' (for messages and when no UUID is usable). */
  device: string;
}

export interface FileChange {
  path: string;
  /** Contents before (a symlink as 'symlink -> TARGET'); null: did not exist. */
  before: string | null;
  after: string | null;
  /** Unified diff (diff -u). */
  diff: string;
}

export interface GuestFixReport {
  isGuest: boolean;
  changes: FileChange[];
  warnings: string[];
  kernels: KernelInfo[];
  /**
   * Arguments the kernel command line needs besides root= and the consoles
   * (net.ifnames=0 biosdevname=0 when the network configuration names ethN;
   * rd.driver.pre= for a dracut initrd given virtio modules). The guest's boot
   * configs have them already; the caller adds them to the command line it builds.
   */
  kernelArgs: string[];
}

/** Largest config file we edit. */
const MAX_CONFIG = 4 << 20;
const XEN_DISK = /^\/dev\/(?:xvd|sd|hd)([a-z]+)(\d*)$/;
const XEN_CONSOLE = /\b(?:xvc0|hvc0)\b/;
const SERIAL_ARGS = 'console=tty0 console=ttyS0,115200';

type Change =
  | { kind: 'file'; path: string; before: string | null; after: string | null; mode?: number }
  | { kind: 'symlink'; path: string; before: string | null; after: string | null }
  | { kind: 'mkdir'; path: string }
  /** An archive appended to an initrd (before/after: descriptions, so the file counts as present). */
  | { kind: 'initrd'; path: string; before: string; after: string; patch: InitrdPatch };

/** Reads through the planned changes, so later steps see earlier ones. */
class Plan {
  changes: Change[] = [];
  constructor(
    readonly fsys: ExtFs,
    readonly warnings: string[],
  ) {}

  private pending(path: string): Change | undefined {
    for (let i = this.changes.length - 1; i >= 0; i--) if (this.changes[i]!.path === path) return this.changes[i];
    return undefined;
  }

  async exists(path: string): Promise<boolean> {
    const p = this.pending(path);
    if (p) return p.kind === 'mkdir' || p.after !== null;
    try {
      await this.fsys.lstat(path);
      return true;
    } catch (e) {
      if (isFsError(e, 'ENOENT') || isFsError(e, 'ENOTDIR')) return false;
      throw e;
    }
  }

  async isDir(path: string): Promise<boolean> {
    const p = this.pending(path);
    if (p) return p.kind === 'mkdir';
    try {
      return (await this.fsys.stat(path)).isDirectory();
    } catch (e) {
      if (isFsError(e, 'ENOENT') || isFsError(e, 'ENOTDIR')) return false;
      throw e;
    }
  }

  async readdir(path: string): Promise<string[]> {
    let names: string[] = [];
    try {
      names = await this.fsys.readdir(path);
    } catch (e) {
      if (!isFsError(e, 'ENOENT') && !isFsError(e, 'ENOTDIR')) throw e;
    }
    const set = new Set(names.filter((n) => n !== '.' && n !== '..'));
    for (const c of this.changes) {
      if (c.kind === 'mkdir' || c.path.slice(0, c.path.lastIndexOf('/')) !== path) continue;
      const name = c.path.slice(c.path.lastIndexOf('/') + 1);
      if (c.after === null) set.delete(name);
      else set.add(name);
    }
    return [...set].sort();
  }

  /** Follow symlinks (up to 8) to the file they name; paths stay inside the guest. */
  async resolve(path: string): Promise<string> {
    let p = path;
    for (let i = 0; i < 8; i++) {
      let st;
      try {
        st = await this.fsys.lstat(p);
      } catch (e) {
        if (isFsError(e, 'ENOENT') || isFsError(e, 'ENOTDIR')) return p;
        throw e;
      }
      if (!st.isSymbolicLink()) return p;
      const target = await this.fsys.readlink(p);
      p = normalise(target.startsWith('/') ? target : `${p.slice(0, p.lastIndexOf('/'))}/${target}`);
    }
    return p;
  }

  /** Text of a regular file (latin1, so every byte round-trips), or null when absent. */
  async read(path: string): Promise<string | null> {
    const p = this.pending(path);
    if (p && p.kind === 'file') return p.after;
    try {
      return (await readGuestFile(this.fsys, path, MAX_CONFIG)).toString('latin1');
    } catch (e) {
      if (isFsError(e, 'ENOENT') || isFsError(e, 'ENOTDIR')) return null;
      // Not a regular file, or far too large for a config file: leave it alone, say so.
      if (e instanceof ImageError && e.kind === 'unsupported') {
        this.warnings.push(`${path} left unchanged: ${e.message}`);
        return null;
      }
      throw e;
    }
  }

  async readlink(path: string): Promise<string | null> {
    const p = this.pending(path);
    if (p && p.kind === 'symlink') return p.after;
    try {
      return await this.fsys.readlink(path);
    } catch (e) {
      if (isFsError(e, 'ENOENT') || isFsError(e, 'EINVAL') || isFsError(e, 'ENOTDIR')) return null;
      throw e;
    }
  }

  async write(path: string, before: string | null, after: string | null, mode?: number): Promise<void> {
    if (before === after) return;
    const prev = this.pending(path);
    if (prev && prev.kind === 'file') {
      prev.after = after;
      return;
    }
    this.changes.push({ kind: 'file', path, before, after, mode });
  }

  async symlink(path: string, target: string | null): Promise<void> {
    const before = await this.readlink(path);
    if (before === target) return;
    this.changes.push({ kind: 'symlink', path, before, after: target });
  }

  async mkdir(path: string): Promise<void> {
    if (await this.isDir(path)) return;
    this.changes.push({ kind: 'mkdir', path });
  }
}

function normalise(p: string): string {
  const out: string[] = [];
  for (const part of p.split('/')) {
    if (!part || part === '.') continue;
    if (part === '..') out.pop();
    else out.push(part);
  }
  return '/' + out.join('/');
}

/** Show latin1-decoded text as UTF-8 again for the report. */
const display = (s: string | null) => (s === null ? null : Buffer.from(s, 'latin1').toString('utf8'));

/**
 * The report for an initrd: a binary change (GNU patch skips it), then what
 * was appended and the diffs of the text files inside it, each line behind
 * '| ' so that no tool takes them for a patch of a real file.
 */
function initrdDiff(c: { path: string; patch: InitrdPatch }): string {
  const p = c.patch;
  const list = (xs: string[]) => xs.map((x) => x.replace(/^.*\//, '')).join(', ');
  const out = [
    `Binary files a${c.path} and b${c.path} differ`,
    `| ${p.original.length} -> ${p.original.length + p.tail.length} bytes: a cpio archive appended (the original is kept as ${p.backup})`,
  ];
  if (p.modules.length) out.push(`| modules added: ${list(p.modules)}`);
  if (p.indexes.length) out.push(`| regenerated by depmod: ${list(p.indexes)}`);
  for (const t of p.texts) {
    out.push(`| ${t.name} in the initrd:`);
    for (const line of unifiedDiff(`/${t.name}`, t.before, t.after).split('\n').slice(2)) if (line) out.push(`|   ${line}`);
  }
  return out.join('\n') + '\n';
}

function report(c: Change): FileChange {
  if (c.kind === 'initrd') return { path: c.path, before: c.before, after: c.after, diff: initrdDiff(c) };
  if (c.kind === 'mkdir') {
    return { path: c.path, before: null, after: 'directory', diff: `new directory ${c.path}\n` };
  }
  if (c.kind === 'symlink') {
    const before = c.before === null ? null : `symlink -> ${c.before}`;
    const after = c.after === null ? null : `symlink -> ${c.after}`;
    return { path: c.path, before, after, diff: unifiedDiff(c.path, before === null ? null : before + '\n', after === null ? null : after + '\n') };
  }
  const before = display(c.before);
  const after = display(c.after);
  return { path: c.path, before, after, diff: unifiedDiff(c.path, before, after) };
}

/** Pieces handed to libext2fs per write (its heap is small: see fs/ext.ts). */
const WRITE_PIECE = 1 << 20;

/**
 * Make `path` hold `original` + `tail`: when it still holds exactly
 * `original` (as planned), only the tail is written after it; otherwise the
 * whole file is rewritten.
 */
async function appendTo(fsys: ExtFs, path: string, original: Uint8Array, tail: Uint8Array): Promise<void> {
  const st = await fsys.stat(path);
  if (!st.isFile() || st.size !== original.length) {
    await fsys.writeFile(path, Buffer.concat([original, tail]));
    return;
  }
  const fh = await fsys.open(path, 'r+');
  try {
    const bytes = Buffer.from(tail.buffer, tail.byteOffset, tail.byteLength);
    for (let pos = 0; pos < bytes.length; ) {
      // A view from 0: ext2fs's FileHandle.write ignores its buffer-offset argument.
      const piece = bytes.subarray(pos, pos + Math.min(WRITE_PIECE, bytes.length - pos));
      const { bytesWritten } = await fh.write(piece, 0, piece.length, original.length + pos);
      if (bytesWritten <= 0) throw new ImageError('io', `${path}: short write at ${original.length + pos}`, { path });
      pos += bytesWritten;
    }
  } finally {
    await fh.close();
  }
}

async function apply(fsys: ExtFs, changes: Change[]): Promise<void> {
  for (const c of changes) {
    if (c.kind === 'mkdir') {
      await fsys.mkdir(c.path, 0o755);
      await fsys.chmod(c.path, 0o40755);
    } else if (c.kind === 'symlink') {
      if (c.before !== null) await fsys.unlink(c.path);
      if (c.after !== null) await fsys.symlink(c.after, c.path);
    } else if (c.kind === 'initrd') {
      const { backup, original, tail } = c.patch;
      // A backup from an earlier run is the older original: keep it.
      if (!(await exists(fsys, backup))) {
        await fsys.writeFile(backup, original);
        await fsys.chmod(backup, 0o100600);
      }
      await appendTo(fsys, c.path, original, tail);
    } else if (c.after === null) {
      await fsys.unlink(c.path);
    } else {
      await fsys.writeFile(c.path, Buffer.from(c.after, 'latin1'));
      if (c.before === null) await fsys.chmod(c.path, 0o100000 | (c.mode ?? 0o644));
    }
  }
}

// ---------------------------------------------------------------- fstab

interface Specs {
  root: string;
  swap?: string;
  /** Other filesystems on the new disk, by mount point. */
  mounts?: GuestMount[];
}

/** A mount point as fstab writes it, without a trailing slash. */
const mountKey = (m: string) => (m.length > 1 ? m.replace(/\/+$/, '') : m);

/** Replace the first field of an fstab line, keeping its whitespace. */
function replaceSpec(line: string, spec: string): string {
  const m = /^(\s*)(\S+)/.exec(line)!;
  return m[1] + spec + line.slice(m[0].length);
}

export function fixFstabText(text: string, specs: Specs, warnings: string[]): string {
  const lines = text.split('\n');
  let sawRoot = false;
  let sawSwap = false;
  const mounted = new Set<string>();
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^\s*(#|$)/.test(line)) continue;
    const f = line.trim().split(/\s+/);
    if (f.length < 3) {
      warnings.push(`/etc/fstab line ${i + 1} has fewer than 3 fields: '${line.trim()}'`);
      continue;
    }
    const [spec, mnt, type] = f as [string, string, string];
    const xen = XEN_DISK.exec(spec);
    if (mnt === '/') {
      sawRoot = true;
      if (xen || spec === '/dev/root') lines[i] = replaceSpec(line, specs.root);
      continue;
    }
    const mount = specs.mounts?.find((m) => mountKey(m.mountpoint) === mountKey(mnt));
    if (mount && type !== 'swap') {
      // On the new disk: by UUID, whatever named it before (type and options stay).
      if (mounted.has(mount.mountpoint)) {
        warnings.push(`/etc/fstab line ${i + 1} mounts ${mnt} again: left as it is`);
        continue;
      }
      mounted.add(mount.mountpoint);
      lines[i] = replaceSpec(line, `UUID=${mount.uuid}`);
      continue;
    }
    if (type === 'swap') {
      sawSwap = true;
      // The swap area is new: an old UUID= or LABEL= names nothing any more.
      if (specs.swap && (xen || spec.startsWith('UUID=') || spec.startsWith('LABEL='))) lines[i] = replaceSpec(line, specs.swap);
      else if (xen) {
        lines[i] = `# imgtool: no swap device on the KVM disk: ${line}`;
        warnings.push(`/etc/fstab: swap on ${spec} has no counterpart on the new disk: commented out (use --swap to add a swap partition)`);
      }
      continue;
    }
    if (xen) {
      const vd = `/dev/vd${xen[1]}${xen[2]}`;
      lines[i] = replaceSpec(line, vd);
      warnings.push(
        `/etc/fstab: ${spec} (${mnt}) is not part of the wrapped disk; renamed to ${vd}, which assumes it is attached as virtio disk ${xen[1]}: check it (UUID= or 'nofail' is safer)`,
      );
    }
  }
  if (!sawRoot) warnings.push('/etc/fstab has no entry for /');
  for (const m of specs.mounts ?? []) {
    if (!mounted.has(m.mountpoint)) {
      warnings.push(`/etc/fstab has no entry for ${m.mountpoint}: the filesystem on ${m.device} (UUID=${m.uuid}) is not mounted by the guest until one is added`);
    }
  }
  if (!sawSwap && specs.swap) {
    let end = lines.length;
    while (end > 0 && lines[end - 1] === '') end--;
    lines.splice(end, 0, `${specs.swap}\tnone\tswap\tsw\t0\t0`);
    if (end === lines.length - 1) lines.push('');
  }
  let out = lines.join('\n');
  if (!out.endsWith('\n')) out += '\n';
  return out;
}

// ---------------------------------------------------------------- consoles

/** A getty invocation on a Xen console rewritten for ttyS0 (or another tty at another speed). */
function convertGetty(cmd: string, tty: string, speed: string): string {
  if (/\bmingetty\b/.test(cmd)) {
    // mingetty cannot drive a serial line: agetty sits next to it (util-linux).
    return tty === 'tty1' ? cmd.replace(XEN_CONSOLE, tty) : cmd.replace(/\S*mingetty\b.*$/, (m) => `${m.split(/\s/)[0]!.replace(/mingetty$/, 'agetty')} -L ${tty} ${speed} vt100`);
  }
  return cmd
    .replace(new RegExp(XEN_CONSOLE.source, 'g'), tty)
    .replace(/(^|\s)(\d{3,6})(?=\s|$)/g, (m, sp: string, n: string) => (/^(1200|2400|4800|9600|19200|38400|57600|115200)$/.test(n) ? `${sp}${speed}` : m));
}

/** The terminal a getty command line runs on (tty1, ttyS0, hvc0, ...), or undefined. */
export function gettyTty(cmd: string): string | undefined {
  for (const w of cmd.trim().split(/\s+/).slice(1)) {
    const m = /^(?:\/dev\/)?(tty[A-Za-z]*\d+|hvc\d+|xvc\d+|console)$/.exec(w);
    if (m) return m[1];
  }
  return undefined;
}

/**
 * inittab: each getty on a Xen console (hvc0, xvc0) runs on ttyS0 instead,
 * but only one getty per terminal: a Xen console line mapping to a ttyS0 that
 * already has a getty is commented out (two gettys on one serial line fight
 * over every typed line). A tty1 getty is added when there is none.
 */
export function fixInittabText(text: string, warnings: string[]): string {
  const lines = text.split('\n');
  const ids = new Set(lines.filter((l) => !/^\s*#/.test(l)).map((l) => l.split(':')[0]));
  const gettyAt = (line: string) => {
    if (/^\s*#/.test(line)) return undefined;
    const parts = line.split(':');
    if (parts.length < 4) return undefined;
    const process = parts.slice(3).join(':');
    return /getty/.test(process) ? { parts, process } : undefined;
  };
  // Terminals that keep the getty the guest gives them.
  const taken = new Set<string>();
  for (const line of lines) {
    const g = gettyAt(line);
    const tty = g && !XEN_CONSOLE.test(g.process) ? gettyTty(g.process) : undefined;
    if (tty) taken.add(tty);
  }
  const hasTty1 = taken.has('tty1');
  let consoleLine = -1;
  for (let i = 0; i < lines.length; i++) {
    const g = gettyAt(lines[i]!);
    if (!g || !XEN_CONSOLE.test(g.process)) continue;
    if (taken.has('ttyS0')) {
      const was = XEN_CONSOLE.exec(g.process)![0];
      lines[i] = `# imgtool: ttyS0 has a getty already (this one ran on ${was}): ${lines[i]}`;
      warnings.push(`/etc/inittab: the getty on ${was} (id ${g.parts[0]}) is commented out: another line already runs a getty on ttyS0, and two gettys on one serial line fight over every typed line`);
      continue;
    }
    lines[i] = [...g.parts.slice(0, 3), convertGetty(g.process, 'ttyS0', '115200')].join(':');
    taken.add('ttyS0');
    if (consoleLine < 0) consoleLine = i;
  }
  if (consoleLine >= 0 && !hasTty1) {
    const parts = lines[consoleLine]!.split(':');
    const prog = parts.slice(3).join(':').trim().split(/\s+/)[0]!;
    const id = ['1', 't1', 'c1'].find((x) => !ids.has(x)) ?? 'T1';
    const cmd = /mingetty$/.test(prog) ? `${prog} tty1` : /agetty$/.test(prog) ? `${prog} tty1 38400 linux` : `${prog} 38400 tty1`;
    lines.splice(consoleLine, 0, `${id}:${parts[1]}:respawn:${cmd}`);
  }
  return lines.join('\n');
}

/** Upstart job text with its gettys moved to `tty` (other Xen console names too). */
function upstartFor(text: string, tty: string, speed: string): string {
  return text
    .split('\n')
    .map((l) => (!/^\s*#/.test(l) && /getty/.test(l) ? convertGetty(l, tty, speed) : l.replace(new RegExp(XEN_CONSOLE.source, 'g'), tty)))
    .join('\n');
}

/**
 * Upstart (/etc/event.d, /etc/init): jobs named after a Xen console become
 * ttyS0's job, jobs running a getty on one have it moved to ttyS0; once ttyS0
 * has a getty, further Xen console jobs are removed (or their getty commented
 * out). A tty1 job is added when there is none.
 */
async function fixUpstart(plan: Plan, dir: string, warnings: string[]): Promise<void> {
  if (!(await plan.isDir(dir))) return;
  const ext = dir === '/etc/init' ? '.conf' : '';
  const gettyLine = (l: string) => /^\s*(exec|respawn)?.*getty/.test(l) && !/^\s*#/.test(l);
  const names = await plan.readdir(dir);
  const jobs: Array<{ name: string; path: string; text: string; named: boolean; xen: boolean }> = [];
  let serialTaken = false;
  for (const name of names) {
    const p = `${dir}/${name}`;
    const text = await plan.read(p);
    if (text === null) continue;
    const named = new RegExp(`^(xvc0|hvc0)${ext.replace('.', '\\.')}$`).test(name);
    const gettys = text.split('\n').filter(gettyLine);
    const xen = gettys.some((l) => XEN_CONSOLE.test(l));
    if (!named && !xen && (name === `ttyS0${ext}` || gettys.some((l) => gettyTty(l.replace(/^\s*(exec|respawn)\s+/, '')) === 'ttyS0'))) serialTaken = true;
    jobs.push({ name, path: p, text, named, xen });
  }
  let template: string | undefined;
  for (const j of jobs) {
    if (!j.named && !j.xen) continue;
    template ??= j.text;
    const was = j.named ? j.name.replace(ext, '') : XEN_CONSOLE.exec(j.text)![0];
    if (serialTaken) {
      if (j.named) await plan.write(j.path, j.text, null);
      else await plan.write(j.path, j.text, j.text.split('\n').map((l) => (gettyLine(l) && XEN_CONSOLE.test(l) ? `# imgtool: ttyS0 has a getty already: ${l}` : l)).join('\n'));
      warnings.push(`${j.path}: the getty on ${was} ${j.named ? 'is removed' : 'is commented out'}: ttyS0 already has a getty, and two gettys on one serial line fight over every typed line`);
      continue;
    }
    const converted = upstartFor(j.text, 'ttyS0', '115200');
    if (j.named) {
      await plan.write(j.path, j.text, null);
      await plan.write(`${dir}/ttyS0${ext}`, null, converted, 0o644);
    } else await plan.write(j.path, j.text, converted);
    serialTaken = true;
  }
  if (template !== undefined && !(await plan.exists(`${dir}/tty1${ext}`))) {
    await plan.write(`${dir}/tty1${ext}`, null, upstartFor(template, 'tty1', '38400'), 0o644);
  }
}

async function fixSystemd(plan: Plan): Promise<void> {
  const wants = '/etc/systemd/system/getty.target.wants';
  const haveWants = await plan.isDir(wants);
  const systemd = haveWants || (await plan.exists('/lib/systemd/systemd')) || (await plan.exists('/usr/lib/systemd/systemd'));
  if (!systemd) return;
  const names = await plan.readdir(wants);
  const xen = names.filter((n) => /^(serial-)?getty@(hvc0|xvc0)\.service$/.test(n));
  // Where the unit templates live: next to what the old links named, or where the guest has them.
  let unitDir: string | undefined;
  for (const n of xen) {
    const t = await plan.readlink(`${wants}/${n}`);
    if (t?.startsWith('/')) unitDir = t.slice(0, t.lastIndexOf('/'));
  }
  if (!unitDir) {
    for (const d of ['/lib/systemd/system', '/usr/lib/systemd/system']) {
      if (await plan.exists(`${d}/getty@.service`)) {
        unitDir = d;
        break;
      }
    }
  }
  unitDir ??= '/lib/systemd/system';
  if (!haveWants) {
    if (!(await plan.isDir('/etc/systemd/system'))) await plan.mkdir('/etc/systemd/system');
    await plan.mkdir(wants);
  }
  for (const n of xen) await plan.symlink(`${wants}/${n}`, null);
  // One getty per terminal: a getty@ttyS0 the guest enables already is ttyS0's getty.
  if (!names.includes('serial-getty@ttyS0.service') && !names.includes('getty@ttyS0.service')) {
    await plan.symlink(`${wants}/serial-getty@ttyS0.service`, `${unitDir}/serial-getty@.service`);
  }
  if (!names.includes('getty@tty1.service')) await plan.symlink(`${wants}/getty@tty1.service`, `${unitDir}/getty@.service`);
}

async function fixConsoles(plan: Plan, warnings: string[]): Promise<void> {
  const inittab = await plan.resolve('/etc/inittab');
  const it = await plan.read(inittab);
  if (it !== null) await plan.write(inittab, it, fixInittabText(it, warnings));
  await fixUpstart(plan, '/etc/event.d', warnings);
  await fixUpstart(plan, '/etc/init', warnings);
  await fixSystemd(plan);
  const securetty = await plan.resolve('/etc/securetty');
  const st = await plan.read(securetty);
  if (st !== null && !st.split('\n').some((l) => l.trim() === 'ttyS0')) {
    await plan.write(securetty, st, st + (st === '' || st.endsWith('\n') ? '' : '\n') + 'ttyS0\n');
  }
}

// ---------------------------------------------------------------- boot configs

/** Append the arguments of `add` that `line` lacks; `quoted`: before the closing quote. */
function addKernelArgs(line: string, add: string[], quoted: boolean): string {
  const missing = add.filter((a) => !new RegExp(`(^|[\\s"'])${a.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?=[\\s"']|$)`).test(line));
  if (!missing.length) return line;
  if (quoted) return line.replace(/(["'])(\s*)$/, (_m, q: string, tail: string) => ` ${missing.join(' ')}${q}${tail}`).replace(/(["'])\s+/, '$1');
  return line.replace(/\s*$/, (tail) => ` ${missing.join(' ')}${tail.replace(/[ \t]/g, '')}`);
}

/**
 * Fix kernel arguments inside one line; `quoted` = they sit inside "..."
 * (default/grub); `add`: arguments appended when missing (net.ifnames=0, ...).
 */
export function fixKernelArgs(line: string, rootArg: string, quoted: boolean, add: string[] = [], resumeArg?: string): string {
  let out = line.replace(/(^|[\s"'])root=\/dev\/(?:xvd|sd|hd)[a-z]+\d*(?=[\s"']|$)/g, (_m, pre: string) => `${pre}root=${rootArg}`);
  // resume= naming a Xen disk: the new swap, or nothing (the initrd would wait for it at every boot).
  out = out.replace(/(\s*)(?<=^|[\s"'])resume=\/dev\/(?:xvd|sd|hd)[a-z]+\d*(?=[\s"']|$)/g, (_m, sp: string) => (resumeArg ? `${sp}resume=${resumeArg}` : ''));
  let removed = false;
  out = out.replace(/(\s*)(?<=^|[\s"'])(xencons=[^\s"']*|console=[^\s"']*)(?=[\s"']|$)/g, (m, _sp: string, arg: string) => {
    if (!isXenConsoleArg(arg)) return m;
    removed = true;
    return '';
  });
  if (removed && !/(^|[\s"'])console=/.test(out)) {
    if (quoted) out = out.replace(/(["'])(\s*)$/, (_m, q: string, tail: string) => ` ${SERIAL_ARGS}${q}${tail}`).replace(/(["'])\s+console=tty0/, '$1console=tty0');
    else out = out.replace(/\s*$/, (tail) => ` ${SERIAL_ARGS}${tail.replace(/[ \t]/g, '')}`);
  }
  return addKernelArgs(out, add, quoted);
}

/**
 * A boot config with Xen names and consoles fixed and `add` appended to every
 * kernel line (in /etc/default/grub: to GRUB_CMDLINE_LINUX, which is added
 * when missing, so the guest's own update-grub keeps them).
 */
export function fixBootConfigText(path: string, text: string, rootArg: string, add: string[] = [], resumeArg?: string): string {
  const isDefault = path === '/etc/default/grub';
  let sawCmdline = false;
  const out = text
    .split('\n')
    .map((line) => {
      // Debian's grub-legacy update-grub regenerates menu.lst entries from the '# kopt=' comment.
      const kopt = isDefault ? null : /^(#\s*kopt=)(.*)$/.exec(line);
      if (kopt) return kopt[1] + fixKernelArgs(` ${kopt[2]}`, rootArg, false, add, resumeArg).replace(/^ /, '');
      if (/^\s*#/.test(line)) return line;
      if (isDefault) {
        if (/^\s*GRUB_CMDLINE_LINUX=/.test(line)) {
          sawCmdline = true;
          return fixKernelArgs(line, rootArg, true, add, resumeArg);
        }
        return /^\s*GRUB_CMDLINE_LINUX\w*=/.test(line) ? fixKernelArgs(line, rootArg, true, [], resumeArg) : line;
      }
      if (/^\s*(kernel|linux|linux16|linuxefi)\s/.test(line)) return fixKernelArgs(line, rootArg, false, add, resumeArg);
      return line;
    })
    .join('\n');
  if (!isDefault || sawCmdline || !add.length) return out;
  return `${out}${out === '' || out.endsWith('\n') ? '' : '\n'}GRUB_CMDLINE_LINUX="${add.join(' ')}"\n`;
}

const BOOT_CONFIGS = ['/boot/grub/menu.lst', '/boot/grub/grub.conf', '/boot/grub/grub.cfg', '/boot/grub2/grub.cfg', '/etc/default/grub'];

async function fixBootConfigs(plan: Plan, rootArg: string, add: string[], resumeArg?: string): Promise<void> {
  const seen = new Set<string>();
  for (const p of BOOT_CONFIGS) {
    const real = await plan.resolve(p);
    if (seen.has(real)) continue;
    seen.add(real);
    const text = await plan.read(real);
    if (text === null) continue;
    await plan.write(real, text, fixBootConfigText(p, text, rootArg, add, resumeArg));
  }
}

// ---------------------------------------------------------------- warnings

async function initrdAdvice(plan: Plan, k: KernelInfo): Promise<string> {
  const v = k.version;
  if (await plan.exists('/etc/initramfs-tools/modules')) {
    return `add virtio_pci and virtio_blk to /etc/initramfs-tools/modules, then run 'update-initramfs -u -k ${v}' in the guest`;
  }
  if ((await plan.isDir('/etc/dracut.conf.d')) || (await plan.exists('/etc/dracut.conf'))) {
    return `add 'add_drivers+=" virtio_pci virtio_blk "' to a file in /etc/dracut.conf.d/ (e.g. virtio.conf), then run 'dracut -f ${k.initrd ?? `/boot/initramfs-${v}.img`} ${v}' in the guest`;
  }
  if (await plan.exists('/etc/sysconfig/kernel')) {
    return `add virtio_pci and virtio_blk to INITRD_MODULES in /etc/sysconfig/kernel, then run 'mkinitrd' in the guest`;
  }
  if (await plan.exists('/etc/modprobe.conf')) {
    return `add 'alias scsi_hostadapter virtio_blk' to /etc/modprobe.conf, then run 'mkinitrd -f --with=virtio_pci --with=virtio_blk ${k.initrd ?? `/boot/initrd-${v}.img`} ${v}' in the guest`;
  }
  return `rebuild the guest's initrd for ${v} with the virtio_pci and virtio_blk modules`;
}

/** Read a guest file as bytes; null when it does not exist or is not a regular file. */
function guestReader(plan: Plan) {
  return async (p: string, max: number): Promise<Uint8Array | null> => {
    try {
      return await readGuestFile(plan.fsys, p, max);
    } catch (e) {
      if (isFsError(e, 'ENOENT') || isFsError(e, 'ENOTDIR') || (e instanceof ImageError && e.kind === 'unsupported')) return null;
      throw e;
    }
  };
}

/**
 * Each usable kernel's initrd: the virtio modules added when it lacks them,
 * RESUME pointed at the new swap (an archive appended, see initrd-virtio.ts).
 * Returns what the initrds could not get, by kernel, and kernel arguments.
 */
async function fixInitrds(
  plan: Plan,
  kernels: KernelInfo[],
  resume: string,
  freeBytes: number,
  cache: Map<string, Uint8Array>,
): Promise<{ plans: Map<KernelInfo, InitrdPlan>; args: string[] }> {
  const read = guestReader(plan);
  let budget = freeBytes;
  const plans = new Map<KernelInfo, InitrdPlan>();
  const args: string[] = [];
  for (const k of kernels.filter((x) => !x.xenOnly).slice(0, 4)) {
    const text = async (p: string) => {
      const b = await read(p, 16 << 20);
      return b && Buffer.from(b).toString('latin1');
    };
    const builtin = builtinModules(await text(`/lib/modules/${k.version}/modules.builtin`), await text(`/boot/config-${k.version}`));
    const image = k.initrd ? (cache.get(k.initrd) ?? (await read(k.initrd, MAX_INITRD))) : null;
    if (!image) {
      plans.set(k, { storage: storageIn(new Set(), builtin) });
      continue;
    }
    const addVirtio = k.hasVirtio === false && !k.noVirtioDriver;
    let p = await planInitrd(read, image, { version: k.version, initrd: k.initrd!, addVirtio, resume, builtin });
    // The new initrd and the backup of the original must fit (an initrd cut short does not boot).
    const need = p.patch ? p.patch.tail.length + ((await plan.exists(p.patch.backup)) ? 0 : image.length) + (1 << 20) : 0;
    if (need > budget) {
      const why = `the guest filesystem has ${Math.floor(budget / (1 << 20))} MiB free; adding to ${k.initrd} and keeping its original needs ${Math.ceil(need / (1 << 20))} MiB (grow the filesystem first)`;
      p = { storage: p.storage, problem: why };
      if (!addVirtio) plan.warnings.push(`${k.initrd} left unchanged: ${why}`);
    }
    budget -= need;
    plans.set(k, p);
    if (!p.patch) continue;
    const desc = `${k.initrd} with a cpio archive appended`;
    plan.changes.push({ kind: 'initrd', path: k.initrd!, before: `initrd ${k.initrd}`, after: desc, patch: p.patch });
    if (addVirtio) {
      k.hasVirtio = true;
      k.notes = [...(k.notes ?? []), `virtio modules added to ${k.initrd} (the original is kept as ${p.patch.backup})`];
      for (const a of p.patch.kernelArgs) if (!args.includes(a)) args.push(a);
      await keepVirtioOnRebuild(plan, p.patch.flavour);
    }
  }
  return { plans, args };
}

/** The guest's own initramfs tool keeps the virtio modules when it rebuilds the initrd (kernel updates). */
async function keepVirtioOnRebuild(plan: Plan, flavour: string): Promise<void> {
  if (flavour === 'initramfs-tools') {
    const p = await plan.resolve('/etc/initramfs-tools/modules');
    const text = await plan.read(p);
    if (text === null) return;
    const listed = new Set(text.split('\n').map((l) => l.trim().split(/\s+/)[0]));
    const missing = VIRTIO_MODULES.filter((m) => !listed.has(m));
    if (missing.length) await plan.write(p, text, `${text}${text === '' || text.endsWith('\n') ? '' : '\n'}${missing.join('\n')}\n`);
  } else if (flavour === 'dracut' && (await plan.isDir('/etc/dracut.conf.d'))) {
    const p = '/etc/dracut.conf.d/imgtool-virtio.conf';
    if (!(await plan.exists(p))) await plan.write(p, null, `# added by imgtool: the disk is virtio under KVM\nadd_drivers+=" ${VIRTIO_MODULES.join(' ')} "\n`, 0o644);
  }
}

/** initramfs-tools' RESUME= in the guest's /etc/initramfs-tools/conf.d: the new swap, or none. */
async function fixResume(plan: Plan, resume: string): Promise<void> {
  const dir = '/etc/initramfs-tools/conf.d';
  if (!(await plan.isDir(dir))) return;
  for (const name of await plan.readdir(dir)) {
    const p = await plan.resolve(`${dir}/${name}`);
    const text = await plan.read(p);
    if (text !== null) await plan.write(p, text, fixResumeText(text, resume));
  }
}

async function kernelWarnings(plan: Plan, kernels: KernelInfo[], initrds: Map<KernelInfo, InitrdPlan>, fstab: string | null, warnings: string[]): Promise<void> {
  if (!kernels.length) {
    const bootLine = fstab?.split('\n').find((l) => !/^\s*#/.test(l) && l.trim().split(/\s+/)[1] === '/boot');
    warnings.push(
      bootLine
        ? `no kernel in /boot: /boot is a separate filesystem in the guest (fstab: '${bootLine.trim()}'), which is not in this image; boot with an external kernel`
        : 'no kernel in /boot: the disk cannot boot by itself (Xen booted it with a kernel from the host?); install a kernel in the guest or boot it with an external kernel',
    );
    return;
  }
  const generic = kernels.filter((k) => !k.xenOnly);
  if (!generic.length) {
    warnings.push(
      `only Xen-only kernels in /boot (${kernels.map((k) => k.kernel).join(', ')}): install a generic kernel in the guest before moving it (Debian/Ubuntu: linux-image-amd64 / linux-image-generic; RHEL/CentOS: kernel; SUSE: kernel-default)`,
    );
    return;
  }
  const k = pickBootKernel(kernels)!;
  const initrd = initrds.get(k);
  // What the initrd can reach instead, named from what it holds.
  const otherBus = storageAdvice((initrd?.storage ?? []).filter((m) => !m.startsWith('virtio')));
  if (k.hasVirtio === false && k.noVirtioDriver) {
    warnings.push(`${k.kernel} cannot reach a virtio disk at boot: ${(k.notes ?? []).join('; ')}; install a newer kernel in the guest (virtio needs Linux 2.6.25 or later); ${otherBus}`);
  } else if (k.hasVirtio === false) {
    const why = initrd?.problem ? `; imgtool could not add the virtio modules: ${initrd.problem}` : '';
    warnings.push(`${k.kernel} cannot reach a virtio disk at boot: ${(k.notes ?? []).join('; ')}${why}; ${await initrdAdvice(plan, k)}; ${otherBus}`);
  } else if (k.hasVirtio === undefined) {
    warnings.push(`cannot tell whether ${k.kernel} reaches a virtio disk at boot: ${(k.notes ?? []).join('; ')}`);
  }
}

/** Free space per the superblock (s_free_blocks_count, lo at 0x0C, hi at 0x158 with 64bit). */
async function freeBytes(fsDev: BlockDevice, blockSize: number): Promise<number> {
  const sb = new Uint8Array(1024);
  await fsDev.read(sb, 1024);
  const v = new DataView(sb.buffer);
  const hi = v.getUint32(0x60, true) & 0x80 ? v.getUint32(0x158, true) : 0;
  return (hi * 2 ** 32 + v.getUint32(0x0c, true)) * blockSize;
}

// ---------------------------------------------------------------- entry point

/** Apply (or, with dryRun, only report) the fix-ups on the guest filesystem in `fsDev`. */
export async function fixGuest(fsDev: BlockDevice, opts: GuestFixOptions): Promise<GuestFixReport> {
  if (!opts.rootUuid && !/^\/dev\/\S+$/.test(opts.rootDevice)) {
    throw new ImageError('usage', `root device '${opts.rootDevice}' is not a /dev path`, { value: opts.rootDevice });
  }
  const sb = await readExtSuperblock(fsDev);
  if (!sb) {
    throw new ImageError('invalid-format', 'not an ext2/3/4 filesystem (no 0xEF53 magic at byte 1080): cannot fix up the guest', {
      format: 'ext',
      field: 's_magic',
      offset: 1024 + 0x38,
    });
  }
  if (!opts.dryRun && fsDev.readOnly) throw new ImageError('usage', 'the guest filesystem is read-only: open it writable or use a dry run');
  if (!opts.dryRun && sb.features.includes('needs_recovery')) {
    throw new ImageError('unsupported', 'the filesystem journal needs recovery (the guest was not shut down cleanly): run e2fsck on it first', {
      field: 's_feature_incompat',
      offset: 1024 + 0x60,
      value: 'needs_recovery',
    });
  }
  for (const m of opts.mounts ?? []) {
    if (!/^[0-9a-fA-F-]{4,64}$/.test(m.uuid)) throw new ImageError('usage', `the UUID '${m.uuid}' for ${m.mountpoint} is not a filesystem UUID`, { value: m.uuid });
    if (!/^\/\S*[^/\s]$/.test(m.mountpoint)) throw new ImageError('usage', `'${m.mountpoint}' is not a mount point other than /`, { value: m.mountpoint });
  }
  const specs: Specs = {
    root: opts.rootUuid ? `UUID=${opts.rootUuid}` : opts.rootDevice,
    swap: opts.swapUuid ? `UUID=${opts.swapUuid}` : opts.swapDevice,
    mounts: opts.mounts,
  };
  const warnings: string[] = [];

  // Read-only: a read-ahead view makes reading initrds block by block cheap.
  const planned = await withExtFs(
    new ReadAheadDevice(fsDev),
    async (fsys) => {
      const plan = new Plan(fsys, warnings);
      // The initrds kernelsIn reads, kept for fixInitrds (reading one through libext2fs is slow).
      const initrdBytes = new Map<string, Uint8Array>();
      const kernels = await kernelsIn(fsys, { cache: initrdBytes });
      const fstabPath = await plan.resolve('/etc/fstab');
      const fstab = await plan.read(fstabPath);
      if (fstab === null) {
        warnings.push(
          kernels.length
            ? 'not a bootable guest root filesystem: there is no /etc/fstab (a separate /boot filesystem?); nothing changed'
            : 'not a bootable guest: there is no /etc/fstab and no kernel in /boot; nothing changed',
        );
        return { isGuest: false, plan, kernels, kernelArgs: [] };
      }
      await plan.write(fstabPath, fstab, fixFstabText(fstab, specs, warnings));
      await fixConsoles(plan, warnings);
      const eth = await filesNamingEth(plan, warnings);
      const kernelArgs = eth.length ? [...KEEP_ETH_NAMES] : [];
      // Resume from the new swap, or from nothing: a Xen name costs a long wait at every boot.
      const resume = specs.swap ?? 'none';
      await fixResume(plan, resume);
      const initrds = await fixInitrds(plan, kernels, resume, await freeBytes(fsDev, sb.blockSize), initrdBytes);
      kernelArgs.push(...initrds.args);
      await fixBootConfigs(plan, specs.root, kernelArgs, specs.swap);
      await kernelWarnings(plan, kernels, initrds.plans, fstab, warnings);
      if (await plan.exists('/etc/udev/rules.d/70-persistent-net.rules')) {
        warnings.push('/etc/udev/rules.d/70-persistent-net.rules pins network interface names to Xen MAC addresses: the KVM NIC may come up as eth1; delete the file if so');
      }
      return { isGuest: true, plan, kernels, kernelArgs };
    },
    { readOnly: true },
  );

  const changes = planned.plan.changes;
  if (changes.length && !opts.dryRun) {
    // Written pages wait in memory and reach fsDev once, in runs, after libext2fs is done.
    const cached = new WriteBackDevice(fsDev);
    await withExtFs(cached, (fsys) => apply(fsys, changes));
    await cached.flush();
  }
  return { isGuest: planned.isGuest, changes: changes.map(report), warnings, kernels: planned.kernels, kernelArgs: planned.kernelArgs };
}
