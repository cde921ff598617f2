/**
 * GuestDefinition (from a Xen guest) → libvirt KVM domain XML.
 *
 * Follows libvirt's formatdomain.html and the openSUSE Virtualization Guide,
 * "Xen to KVM migration guide" (its thirteen edits of a Xen domain's XML):
 *
 *   <domain type='xen'>            → type='kvm'
 *   <bootloader>, <bootloader_args>→ removed; the disk boots itself (<boot dev='hd'/>),
 *                                    or, with --boot direct, <kernel>/<initrd>/<cmdline>
 *   <os><type>linux</type>         → <type arch='x86_64'>hvm</type>, no machine (libvirt picks)
 *   <emulator>                     → removed (libvirt picks the host's), unless --emulator
 *   xvdX/hdX/sdX, bus xen/ide      → vdX on bus virtio (CD-ROMs: sdX on bus sata)
 *   <driver name='file'|'phy'|..>  → <driver name='qemu' type=FORMAT>
 *   <script path='vif-bridge'/>    → removed; model → virtio; vif.../vnet... target devs removed
 *   <console><target type='xen'>   → a pty serial port with a serial console
 *   <input bus='xen'>              → bus ps2 (tablets: usb)
 *   <memballoon model='xen'>       → <memballoon model='virtio'/>
 *   HVM: <features><acpi/><apic/></features>
 *
 * Everything dropped is reported as a warning line.
 */

import * as path from 'node:path';
import { ImageError } from '../../core/errors.js';
import {
  ABS_FILE_PATH,
  BRIDGE_NAME,
  CHAR_PROTOCOLS,
  CPUSET,
  DEVICE_NAME,
  DIRECT_MODES,
  INPUT_TYPES,
  NETWORK_DISK_PROTOCOLS,
  OBJECT_NAME,
  SPICE_MOUSE_MODES,
  TICK_POLICIES,
  UNICAST_MAC,
  isHostName,
  isIpAddress,
} from './schema.js';
import { parseXenConfig, looksLikeXml } from './xenconfig.js';
import { parseXenXml } from './xenxml.js';
import { type XNode, el, serialize, tel } from './xmlutil.js';
import type { GuestChar, GuestDefinition, GuestDisk, GuestGraphics, GuestNic, LifecycleAction } from './types.js';

export interface DiskMapping {
  /** Path of the converted image (file or block device) on the KVM host. */
  path: string;
  /** Its format (raw, qcow2, ...); defaults to the source's format, else raw. */
  format?: string;
  /**
   * When the Xen guest exported a single filesystem as a partition device
   * (disk target `xvda1`) and the converted image holds it as partition N,
   * pass N: kernel arguments naming `/dev/xvda1` then become `/dev/vda<N>`.
   */
  partition?: number;
  /**
   * The Xen disk (its target, e.g. `xvda1`) this image replaces; without
   * it, mappings take the source's hard disks in order.
   */
  target?: string;
}

/**
 * A Xen disk whose contents now live in another disk's image (wrap puts
 * root, swap and other filesystems into one disk): it is not written, and
 * guest device names for it (`/dev/xvda2`) become partition `partition` of
 * the disk that replaced `into`.
 */
export interface MergedDisk {
  target: string;
  into: string;
  partition: number;
}

export interface DomainConvertOptions {
  /** Converted images for the source's hard disks (CD-ROMs excluded), in the source's order. */
  disks?: DiskMapping[];
  /** Xen disks folded into another disk's image (not written). */
  merged?: MergedDisk[];
  /** Machine type for <os><type machine=...> (default: none, libvirt picks). */
  machine?: string;
  /** Xen bridge → KVM bridge. The key `*` matches every interface not matched by name. */
  bridges?: Record<string, string>;
  /** Xen bridge → libvirt network. The key `*` matches every interface not matched by name. */
  networks?: Record<string, string>;
  /** New domain name. */
  name?: string;
  /** grub (default): boot from the disk; direct: boot a kernel named by path. */
  boot?: 'grub' | 'direct';
  /** Kernel and initrd on the KVM host (direct boot). */
  kernel?: string;
  initrd?: string;
  /** Extra kernel arguments appended to the converted command line (direct boot). */
  append?: string;
  /**
   * The whole kernel command line (direct boot), replacing the converted one:
   * `wrap` passes the one it computed from the new disk (root=UUID=..., the
   * guest's own arguments, serial console), so the XML boots like the disk.
   */
  cmdline?: string;
  /**
   * With --boot grub: the disk's GRUB was installed by `wrap`, booting this
   * command line. The source's kernel and arguments then need no warning:
   * the guest's boot configuration was changed already.
   */
  grubCmdline?: string;
  /** Emit <emulator>PATH</emulator> (omitted by default: libvirt picks the host's). */
  emulator?: string;
}

export interface DomainConvertResult {
  xml: string;
  warnings: string[];
}

/** Image formats qemu/libvirt accept for a disk driver type. */
export const KVM_DISK_FORMATS = ['raw', 'qcow2', 'qcow', 'qed', 'vdi', 'vmdk', 'vpc', 'vhdx'];

const KVM_CONSOLE_ARGS = ['console=tty0', 'console=ttyS0,115200'];

/** Guest definitions are a few KiB; anything above this is not one (and is not parsed). */
export const MAX_SOURCE_CHARS = 4 << 20;

/** Parse a Xen guest definition, XML or xl/xm configuration, chosen by its first character. */
export function parseXenGuest(source: string, sourceName: string): GuestDefinition {
  if (source.length > MAX_SOURCE_CHARS) {
    throw new ImageError('invalid-format', `${sourceName}: ${source.length} characters is too large for a Xen guest definition (at most ${MAX_SOURCE_CHARS})`, {
      path: sourceName,
    });
  }
  if (source.includes('\0')) {
    throw new ImageError('invalid-format', `${sourceName}: binary data (a NUL byte at offset ${source.indexOf('\0')}): not a Xen guest definition`, {
      path: sourceName,
      offset: source.indexOf('\0'),
    });
  }
  return looksLikeXml(source) ? parseXenXml(source, sourceName) : parseXenConfig(source, sourceName);
}

/**
 * Convert a Xen guest definition (Xen libvirt XML or an xl/xm file, given as
 * text) to KVM libvirt XML. `sourceName` names the source in messages.
 */
export function convertDomain(source: string, sourceName: string, opts: DomainConvertOptions = {}): DomainConvertResult {
  const guest = parseXenGuest(source, sourceName);
  const { xml, warnings } = buildKvmDomain(guest, opts);
  return { xml, warnings: [...guest.warnings, ...warnings] };
}

// ------------------------------------------------------------------ disks

/** `xvdc2` → index 2, partition 2; `hdb` → 1; `xvdaa` → 26; `d3p1` → 3, 1. */
export function diskIndex(target: string): { prefix: string; index: number; partition?: number } | undefined {
  const m = /^(xvd|hd|sd|vd|fd)([a-z]+)(\d*)$/.exec(target);
  if (m) {
    let idx = 0;
    for (const ch of m[2]!) idx = idx * 26 + (ch.charCodeAt(0) - 96);
    return { prefix: m[1]!, index: idx - 1, partition: m[3] ? Number(m[3]) : undefined };
  }
  const d = /^d(\d+)(?:p(\d+))?$/.exec(target);
  if (d) return { prefix: 'd', index: Number(d[1]), partition: d[2] ? Number(d[2]) : undefined };
  return undefined;
}

/** 0 → a, 25 → z, 26 → aa (Linux's sd/vd naming). */
export function diskLetters(index: number): string {
  let s = '';
  let n = index + 1;
  while (n > 0) {
    const r = (n - 1) % 26;
    s = String.fromCharCode(97 + r) + s;
    n = Math.floor((n - 1) / 26);
  }
  return s;
}

interface PlannedDisk {
  src: GuestDisk;
  order: number;
  mapping?: DiskMapping;
  target: string;
  bus: string;
}

/** Parse `PATH[:FORMAT]` (the format only when it is a known format name). */
export function parseDiskArg(arg: string): DiskMapping {
  const m = /^(.*):([a-z0-9]+)$/.exec(arg);
  if (m && KVM_DISK_FORMATS.includes(m[2]!) && m[1]) return { path: m[1], format: m[2] };
  if (!arg) throw new ImageError('usage', '--disk needs a path');
  return { path: arg };
}

/** Parse `KEY=VALUE` mapping options into a record. */
export function parseMapArgs(items: string[], option: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    if (eq <= 0 || eq === item.length - 1) throw new ImageError('usage', `${option} wants XEN=KVM, not '${item}'`);
    out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}

// ---------------------------------------------------------------- writer

class Builder {
  readonly warnings: string[] = [];
  constructor(
    readonly g: GuestDefinition,
    readonly opts: DomainConvertOptions,
  ) {}

  warn(message: string): void {
    this.warnings.push(`${this.g.source.fileName}: ${message}`);
  }

  /** The source holds a value the KVM domain cannot carry and the guest cannot do without. */
  fail(message: string, field?: string): never {
    throw new ImageError('invalid-format', `${this.g.source.fileName}: ${message}`, { path: this.g.source.fileName, field });
  }

  /**
   * A path from the Xen source for a place where libvirt wants an absolute
   * path: a relative one is taken relative to the source file's directory.
   */
  hostPath(p: string, what: string): string {
    if (ABS_FILE_PATH.test(p)) return p;
    const abs = path.resolve(path.dirname(path.resolve(this.g.source.fileName)), p);
    this.warn(`${what} '${p}' is relative: written as ${abs} (relative to ${this.g.source.fileName})`);
    return abs;
  }
}

/** An absolute path given by the caller (libvirt refuses relative ones). */
function callerPath(p: string, option: string): string {
  if (!ABS_FILE_PATH.test(p)) throw new ImageError('usage', `${option} '${p}' must be an absolute path`);
  return p;
}

function planDisks(b: Builder): PlannedDisk[] {
  const { g, opts } = b;
  const merged = opts.merged ?? [];
  const isMerged = (d: GuestDisk) => merged.some((m) => m.target === d.target);
  const hard = g.disks.filter((d) => d.device === 'disk' && !isMerged(d));
  const byTarget = (opts.disks ?? []).filter((m) => m.target !== undefined);
  const mappings = (opts.disks ?? []).filter((m) => m.target === undefined);
  const free = hard.filter((d) => !byTarget.some((m) => m.target === d.target));
  for (const m of byTarget) {
    if (!hard.some((d) => d.target === m.target)) throw new ImageError('usage', `${g.source.fileName} has no hard disk ${m.target} to replace`, { value: m.target });
  }
  for (const m of merged) {
    if (!g.disks.some((d) => d.target === m.target)) throw new ImageError('usage', `${g.source.fileName} has no disk ${m.target} to merge`, { value: m.target });
    if (!byTarget.some((d) => d.target === m.into)) throw new ImageError('usage', `disk ${m.target} is merged into ${m.into}, which no image replaces`, { value: m.into });
  }
  if (mappings.length > free.length) {
    throw new ImageError(
      'usage',
      `${mappings.length} --disk given, but ${g.source.fileName} has ${free.length} ${byTarget.length ? 'other ' : ''}hard disk${free.length === 1 ? '' : 's'} (CD-ROMs excluded)`,
    );
  }
  for (const m of [...byTarget, ...mappings]) {
    if (m.format !== undefined && !KVM_DISK_FORMATS.includes(m.format)) {
      throw new ImageError('usage', `disk format '${m.format}' unknown (${KVM_DISK_FORMATS.join(', ')})`);
    }
    if (m.partition !== undefined && (!Number.isInteger(m.partition) || m.partition < 1 || m.partition > 128)) {
      throw new ImageError('usage', `disk partition ${m.partition} is not 1..128`);
    }
  }
  const planned: PlannedDisk[] = g.disks.filter((d) => !isMerged(d)).map((src, order) => ({ src, order, target: '', bus: '' }));
  for (const p of planned) p.mapping = byTarget.find((m) => m.target === p.src.target);
  free.forEach((d, i) => {
    const p = planned.find((x) => x.src === d)!;
    p.mapping = mappings[i];
  });
  // Name disks in the order of their Xen names (the guest saw xvda before xvdb), and emit them in that order:
  // libvirt gives virtio disks PCI slots in document order, and the guest names them by probe order.
  const key = (p: PlannedDisk) => {
    const i = diskIndex(p.src.target);
    return [i ? i.index : Number.MAX_SAFE_INTEGER, i?.partition ?? 0, p.order];
  };
  const sorted = [...planned].sort((a, c) => {
    const ka = key(a);
    const kc = key(c);
    for (let i = 0; i < 3; i++) if (ka[i] !== kc[i]) return ka[i]! - kc[i]!;
    return 0;
  });
  let nd = 0;
  let nc = 0;
  let nf = 0;
  for (const p of sorted) {
    if (p.src.device === 'cdrom') {
      p.target = `sd${diskLetters(nc++)}`;
      p.bus = 'sata';
    } else if (p.src.device === 'floppy') {
      p.target = `fd${diskLetters(nf++)}`;
      p.bus = 'fdc';
    } else {
      p.target = `vd${diskLetters(nd++)}`;
      p.bus = 'virtio';
    }
  }
  const rank = { disk: 0, cdrom: 1, floppy: 2 };
  return sorted.sort((a, c) => rank[a.src.device] - rank[c.src.device]);
}

function diskXml(b: Builder, p: PlannedDisk): XNode {
  const { src, mapping } = p;
  let format = mapping?.format ?? src.format ?? 'raw';
  if (!KVM_DISK_FORMATS.includes(format)) {
    b.warn(`disk ${src.target}: format '${format}' unknown to KVM; written as raw`);
    format = 'raw';
  }
  const what = src.device === 'disk' ? 'disk' : src.device === 'cdrom' ? 'CD-ROM' : 'floppy';
  let source: XNode | undefined;
  let type: string;
  if (mapping) {
    const mp = callerPath(mapping.path, '--disk');
    type = mp.startsWith('/dev/') ? 'block' : 'file';
    source = el('source', type === 'block' ? { dev: mp } : { file: mp });
  } else if (src.sourceType === 'network' && src.network) {
    type = 'network';
    const n = src.network;
    const bad = !NETWORK_DISK_PROTOCOLS.includes(n.protocol)
      ? `protocol '${n.protocol}'`
      : !n.name
        ? 'no name'
        : n.hosts.find((h) => !isHostName(h.name) || (h.port !== undefined && !/^\d{1,5}$/.test(h.port)))
          ? 'a malformed host'
          : undefined;
    if (bad) b.fail(`${what} ${src.target}: its network source (${bad}) cannot be written for KVM; convert it and pass --disk`, 'disk');
    source = el('source', { protocol: n.protocol, name: n.name }, n.hosts.map((h) => el('host', { name: h.name, port: h.port })));
    b.warn(`${what} ${src.target} keeps its network source ${n.protocol}:${n.name}: check that the KVM host reaches it`);
  } else if (src.sourceType === 'none' || !src.path) {
    type = 'file';
  } else {
    const sp = b.hostPath(src.path, `${what} ${src.target} path`);
    type = sp.startsWith('/dev/') ? 'block' : 'file';
    source = el('source', type === 'block' ? { dev: sp } : { file: sp });
    b.warn(
      src.device === 'disk'
        ? `disk ${src.target} keeps its Xen path ${sp}: convert the image and name it with --disk, or make that path exist on the KVM host`
        : `${what} ${src.target} keeps its Xen path ${sp}: make that path exist on the KVM host`,
    );
  }
  return el(
    'disk',
    { type, device: src.device },
    el('driver', { name: 'qemu', type: format }),
    source,
    el('target', { dev: p.target, bus: p.bus }),
    src.readonly && el('readonly'),
    src.shareable && el('shareable'),
  );
}

/**
 * Map a Xen guest device name seen by the guest (xvda1, hda, sdb2) to its
 * KVM name, following the disk plan: first the exact target, then the disk
 * with the same letter index, else the plain xvd/hd → vd rule.
 */
function renameDevice(plan: PlannedDisk[], dev: string, merged: MergedDisk[] = []): string {
  const disks = plan.filter((p) => p.src.device === 'disk');
  const m = merged.find((x) => x.target === dev);
  const into = m && disks.find((p) => p.src.target === m.into);
  if (m && into) return `${into.target}${m.partition}`;
  const exact = disks.find((p) => p.src.target === dev);
  if (exact) {
    const part = exact.mapping?.partition;
    return part !== undefined ? `${exact.target}${part}` : exact.target;
  }
  const i = diskIndex(dev);
  if (!i) return dev;
  const whole = disks.find((p) => {
    const j = diskIndex(p.src.target);
    return j && j.partition === undefined && j.index === i.index && (j.prefix === i.prefix || i.prefix !== 'sd');
  });
  if (whole) return `${whole.target}${i.partition ?? ''}`;
  const cd = plan.find((p) => p.src.device === 'cdrom' && p.src.target === dev);
  if (cd) return cd.target;
  if (i.prefix === 'xvd' || i.prefix === 'hd') return `vd${diskLetters(i.index)}${i.partition ?? ''}`;
  return dev;
}

/** Split a kernel command line on blanks, keeping double-quoted parts together. */
export function splitCmdline(cmdline: string): string[] {
  return cmdline.match(/(?:[^\s"]+|"[^"]*")+/g) ?? [];
}

/**
 * The Xen kernel command line → KVM: Xen disk names renamed (root=/dev/xvda1 →
 * root=/dev/vda1), Xen consoles (xencons=, console=hvc0, console=xvc0)
 * replaced by `console=tty0 console=ttyS0,115200`. A PV guest without any
 * console= gets those too (its console used to be hvc0 by default).
 */
export function convertCmdline(cmdline: string, rename: (dev: string) => string, pv: boolean): string {
  const out: string[] = [];
  let replaced = false;
  let otherConsole = false;
  for (const arg of splitCmdline(cmdline)) {
    if (/^xencons=/.test(arg) || /^console=(hvc|xvc)\d*(,.*)?$/.test(arg)) {
      if (!replaced) out.push(...KVM_CONSOLE_ARGS);
      replaced = true;
      continue;
    }
    if (/^console=/.test(arg)) otherConsole = true;
    out.push(arg.replace(/\/dev\/((?:xvd|hd|sd)[a-z]+\d*)/g, (_m, dev: string) => `/dev/${rename(dev)}`));
  }
  if (!replaced && !otherConsole && pv) out.push(...KVM_CONSOLE_ARGS);
  // A console named twice would print everything twice.
  return out.filter((a, i) => !a.startsWith('console=') || out.indexOf(a) === i).join(' ');
}

function osXml(b: Builder, plan: PlannedDisk[]): XNode {
  const { g, opts } = b;
  const mode = opts.boot ?? 'grub';
  const boot = g.boot;
  const pv = g.virt !== 'hvm';
  const children: XNode[] = [tel('type', 'hvm', { arch: 'x86_64', machine: opts.machine })];
  let firmware: string | undefined;
  if (boot.firmware === 'efi') {
    firmware = 'efi';
    if (boot.loader) b.warn(`firmware ${boot.loader} is Xen's build: libvirt picks the KVM host's OVMF (os firmware='efi')`);
  }
  if (boot.bootloader && !/pygrub|pvgrub/.test(boot.bootloader)) {
    b.warn(`bootloader ${boot.bootloader} is not pygrub: the disk must hold its own bootloader (or use --boot direct)`);
  }
  if (boot.bootloaderArgs) b.warn(`bootloader arguments '${boot.bootloaderArgs}' dropped (they were for ${boot.bootloader ?? 'the Xen bootloader'})`);

  if (mode === 'direct') {
    let kernel = opts.kernel !== undefined ? callerPath(opts.kernel, '--kernel') : undefined;
    let initrd = opts.initrd !== undefined ? callerPath(opts.initrd, '--initrd') : undefined;
    if (kernel === undefined) {
      if (!boot.kernel || (boot.kind === 'pygrub' && boot.kernel === undefined)) {
        throw new ImageError(
          'usage',
          `--boot direct needs --kernel: ${g.source.fileName} ${boot.kind === 'pygrub' ? `boots with ${boot.bootloader}` : 'names no kernel'}`,
        );
      }
      if (boot.kind === 'pygrub') {
        throw new ImageError('usage', `--boot direct needs --kernel: the kernel '${boot.kernel}' of ${g.source.fileName} is a path inside the guest, read by ${boot.bootloader}`);
      }
      kernel = b.hostPath(boot.kernel, 'kernel');
      initrd = boot.ramdisk !== undefined ? b.hostPath(boot.ramdisk, 'ramdisk') : undefined;
      b.warn(`kernel ${kernel}${initrd ? ` and initrd ${initrd}` : ''} are paths on the Xen host: copy them to the KVM host or pass --kernel/--initrd`);
    }
    let cmdline = opts.cmdline !== undefined ? opts.cmdline : boot.cmdline ? convertCmdline(boot.cmdline, (d) => renameDevice(plan, d, opts.merged), pv) : pv ? KVM_CONSOLE_ARGS.join(' ') : '';
    if (opts.append) cmdline = cmdline ? `${cmdline} ${opts.append}` : opts.append;
    if (!/(^|\s)root=/.test(cmdline)) b.warn('the kernel command line has no root=: the initrd must find the root filesystem by itself');
    children.push(tel('kernel', kernel));
    if (initrd) children.push(tel('initrd', initrd));
    if (cmdline) children.push(tel('cmdline', cmdline));
  } else {
    if (opts.kernel !== undefined || opts.initrd !== undefined || opts.append !== undefined || opts.cmdline !== undefined) {
      throw new ImageError('usage', '--kernel, --initrd and --append need --boot direct');
    }
    // When wrap made the disk boot itself (grubCmdline), nothing of the Xen boot is left for the user to change.
    if (opts.grubCmdline === undefined && boot.kind === 'kernel' && boot.kernel) {
      b.warn(
        `the guest booted kernel ${boot.kernel}${boot.ramdisk ? ` with initrd ${boot.ramdisk}` : ''} from the Xen host; --boot grub boots the disk's own bootloader instead (or use --boot direct)`,
      );
    }
    if (opts.grubCmdline === undefined && boot.cmdline) {
      b.warn(`kernel arguments '${boot.cmdline}' dropped: with --boot grub the guest's boot menu sets them (Xen disk names and hvc0 consoles there need the same changes)`);
    }
    const order = g.virt === 'hvm' && boot.order.length ? [...boot.order] : ['hd'];
    if (!order.includes('hd')) order.push('hd');
    for (const dev of order) children.push(el('boot', { dev }));
  }
  return el('os', { firmware }, children);
}

function lifecycle(b: Builder): { poweroff: LifecycleAction; reboot: LifecycleAction; crash: LifecycleAction } {
  const { g } = b;
  let poweroff = g.onPoweroff;
  let reboot = g.onReboot;
  let crash = g.onCrash;
  // libvirt's schema and qemu driver: poweroff/reboot take destroy|restart; crash also preserve and coredump-*.
  if (poweroff !== 'destroy' && poweroff !== 'restart') {
    b.warn(`on_poweroff '${poweroff}' is not supported by KVM; using destroy`);
    poweroff = 'destroy';
  }
  if (reboot !== 'destroy' && reboot !== 'restart') {
    b.warn(`on_reboot '${reboot}' is not supported by KVM; using restart`);
    reboot = 'restart';
  }
  if (!['destroy', 'restart', 'preserve', 'coredump-destroy', 'coredump-restart'].includes(crash)) {
    b.warn(`on_crash '${crash}' is not supported by KVM; using restart`);
    crash = 'restart';
  }
  if (poweroff === 'restart' && reboot === 'destroy') {
    b.warn("on_poweroff 'restart' with on_reboot 'destroy' is not supported by KVM; on_poweroff becomes destroy");
    poweroff = 'destroy';
  }
  return { poweroff, reboot, crash };
}

function mapNic(b: Builder, n: GuestNic, used: Set<string>): XNode {
  const { opts, g } = b;
  const label = n.mac ?? `interface ${g.nics.indexOf(n)}`;
  const key = n.bridge ?? n.network;
  // A mapping naming the bridge beats a '*' mapping; --network beats --bridge at the same level.
  const exact = (m: Record<string, string> | undefined) => (key !== undefined && m && m[key] !== undefined ? m[key] : undefined);
  const wild = (m: Record<string, string> | undefined) => (m && m['*'] !== undefined ? m['*'] : undefined);
  let net = exact(opts.networks);
  let br = net === undefined ? exact(opts.bridges) : undefined;
  if (net !== undefined || br !== undefined) used.add(key!);
  else {
    net = wild(opts.networks);
    br = net === undefined ? wild(opts.bridges) : undefined;
    if (net !== undefined || br !== undefined) used.add('*');
  }
  if (n.mac !== undefined && !UNICAST_MAC.test(n.mac)) b.fail(`interface MAC ${n.mac} is not a unicast MAC address`, 'mac');
  for (const [m, opt] of [[br, '--bridge'], [net, '--network']] as const) {
    if (m !== undefined && (opt === '--bridge' ? !BRIDGE_NAME.test(m) || !m : !OBJECT_NAME.test(m))) {
      throw new ImageError('usage', `${opt} target '${m}' is not a valid ${opt === '--bridge' ? 'bridge' : 'network'} name`);
    }
  }
  let type: string;
  let source: XNode | undefined;
  if (net !== undefined) {
    type = 'network';
    source = el('source', { network: net });
  } else if (br !== undefined) {
    type = 'bridge';
    source = el('source', { bridge: br });
  } else if (n.type === 'bridge' && n.bridge) {
    if (!BRIDGE_NAME.test(n.bridge)) b.fail(`interface ${label}: bridge name '${n.bridge}' is not valid for libvirt; map it with --bridge '${n.bridge}=BRIDGE'`, 'bridge');
    type = 'bridge';
    source = el('source', { bridge: n.bridge });
  } else if (n.type === 'network' && n.network && OBJECT_NAME.test(n.network)) {
    type = 'network';
    source = el('source', { network: n.network });
  } else if (n.type === 'direct' && n.direct?.dev && DEVICE_NAME.test(n.direct.dev)) {
    type = 'direct';
    const mode = n.direct.mode !== undefined && DIRECT_MODES.includes(n.direct.mode) ? n.direct.mode : undefined;
    source = el('source', { dev: n.direct.dev, mode });
    b.warn(`interface ${label}: direct (macvtap) device ${n.direct.dev} is a network card of the Xen host`);
  } else if (n.type === 'user') {
    type = 'user';
  } else {
    type = 'ethernet';
    b.warn(
      `interface ${label} names no bridge (Xen used its default bridge): it becomes an unconnected tap device; pass --bridge '*=BRIDGE' or --network '*=NETWORK'`,
    );
  }
  if (n.script && n.script !== 'vif-bridge' && !/\/vif-bridge$/.test(n.script)) {
    b.warn(`interface ${label}: Xen script ${n.script} dropped (its routing/NAT must be set up on the KVM host)`);
  }
  if (n.ips.length && type !== 'ethernet' && type !== 'user') {
    b.warn(`interface ${label}: IP address${n.ips.length > 1 ? 'es' : ''} ${n.ips.join(' ')} dropped (Xen anti-spoofing setting; the guest configures its own addresses)`);
  }
  if (g.virt === 'hvm' && n.model && !['virtio', 'netfront'].includes(n.model)) {
    b.warn(`interface ${label}: model ${n.model} becomes virtio: the guest needs a virtio-net driver`);
  }
  let target: XNode | undefined;
  if (n.ifname && !/^(vif|vnet|macvtap|macvlan)/.test(n.ifname)) {
    if (DEVICE_NAME.test(n.ifname)) target = el('target', { dev: n.ifname });
    else b.warn(`interface ${label}: device name '${n.ifname}' dropped (not a valid interface name)`);
  }
  const rate = (tag: string, r: GuestNic['inbound']) =>
    r && (r.average !== undefined || r.peak !== undefined || r.burst !== undefined)
      ? el(tag, { average: r.average ?? r.peak, peak: r.peak, burst: r.burst })
      : undefined;
  let bandwidth: XNode | undefined;
  const inbound = rate('inbound', n.inbound);
  const outbound = rate('outbound', n.outbound);
  if (inbound || outbound) {
    if (type === 'direct' || type === 'user') b.warn(`interface ${label}: bandwidth limits dropped (not supported for ${type} interfaces)`);
    else bandwidth = el('bandwidth', {}, inbound, outbound);
  }
  const ips: XNode[] = [];
  if (type === 'ethernet') {
    for (const a of n.ips) {
      if (isIpAddress(a)) ips.push(el('ip', { address: a, family: a.includes(':') ? 'ipv6' : 'ipv4' }));
      else b.warn(`interface ${label}: IP address '${a}' dropped (not an address)`);
    }
  }
  return el(
    'interface',
    { type },
    n.mac && el('mac', { address: n.mac }),
    source,
    bandwidth,
    ips,
    target,
    el('model', { type: 'virtio' }),
    n.mtu !== undefined && el('mtu', { size: n.mtu }),
  );
}

function graphicsXml(b: Builder, gr: GuestGraphics): XNode | undefined {
  if (gr.type !== 'vnc' && gr.type !== 'spice' && gr.type !== 'sdl') {
    b.warn(`graphics type '${gr.type}' dropped`);
    return undefined;
  }
  if (gr.type === 'sdl') {
    return el('graphics', { type: 'sdl', display: gr.display, xauth: gr.xauth });
  }
  const auto = gr.autoport || gr.port === undefined || gr.port === -1;
  const okAddr = (a: string | undefined) => {
    if (a === undefined || isHostName(a)) return true;
    b.warn(`graphics listen address '${a}' dropped (not an address or host name)`);
    return false;
  };
  let listenAttr = gr.listen ?? gr.listens.find((l) => l.type === 'address' && l.address)?.address;
  if (!okAddr(listenAttr)) listenAttr = undefined;
  const listens: XNode[] = [];
  for (const l of gr.listens) {
    if (l.type === 'address') {
      if (l.address !== listenAttr && !okAddr(l.address)) continue;
      if (l.address || !listenAttr) listens.push(el('listen', { type: 'address', address: l.address }));
    } else if (l.type === 'network' && l.network) {
      listens.push(el('listen', { type: 'network', network: l.network }));
      b.warn(`graphics listen network '${l.network}' is a libvirt network of the Xen host`);
    } else if (l.type === 'none') {
      listens.push(el('listen', { type: 'none' }));
    }
  }
  if (listenAttr && !listens.some((l) => l.attrs.some(([k, v]) => k === 'address' && v === listenAttr))) {
    listens.unshift(el('listen', { type: 'address', address: listenAttr }));
  }
  const attrs: Record<string, string | number | undefined> = {
    type: gr.type,
    port: auto ? -1 : gr.port,
  };
  if (gr.type === 'spice') attrs.tlsPort = gr.tlsPort;
  Object.assign(attrs, { autoport: auto ? 'yes' : 'no', listen: listenAttr, passwd: gr.passwd, keymap: gr.keymap });
  return el(
    'graphics',
    attrs,
    listens,
    gr.type === 'spice' && gr.mouseMode && SPICE_MOUSE_MODES.includes(gr.mouseMode) && el('mouse', { mode: gr.mouseMode }),
    gr.type === 'spice' && gr.clipboard !== undefined && el('clipboard', { copypaste: gr.clipboard ? 'yes' : 'no' }),
  );
}

const CHAR_TYPES = ['pty', 'file', 'dev', 'pipe', 'tcp', 'udp', 'unix', 'null', 'vc', 'stdio', 'spicevmc'];

function charSource(b: Builder, c: GuestChar, what: string): { type: string; children: XNode[] } {
  let type = c.type;
  if (!CHAR_TYPES.includes(type)) {
    b.warn(`${what}: source type '${type}' unknown to KVM; using a pty`);
    type = 'pty';
  }
  const children: XNode[] = [];
  switch (type) {
    case 'file':
    case 'pipe':
    case 'dev':
      if (c.path) children.push(el('source', { path: c.path }));
      if (type === 'dev') b.warn(`${what}: host device ${c.path} is a device of the Xen host`);
      break;
    case 'unix':
      children.push(el('source', { mode: c.listen ? 'bind' : 'connect', path: c.path }));
      break;
    case 'tcp':
      children.push(el('source', { mode: c.listen ? 'bind' : 'connect', host: c.host ?? (c.listen ? '0.0.0.0' : 'localhost'), service: c.service }));
      children.push(el('protocol', { type: c.protocol !== undefined && CHAR_PROTOCOLS.includes(c.protocol) ? c.protocol : 'raw' }));
      break;
    case 'udp':
      if (c.bindService !== undefined) children.push(el('source', { mode: 'bind', host: c.bindHost, service: c.bindService }));
      children.push(el('source', { mode: 'connect', host: c.host ?? 'localhost', service: c.service }));
      break;
  }
  return { type, children };
}

function devicesXml(b: Builder, plan: PlannedDisk[]): XNode {
  const { g, opts } = b;
  const devs: XNode[] = [];
  if (opts.emulator) devs.push(tel('emulator', callerPath(opts.emulator, '--emulator')));
  for (const p of plan) devs.push(diskXml(b, p));

  const usedMaps = new Set<string>();
  for (const n of g.nics) devs.push(mapNic(b, n, usedMaps));
  for (const [opt, m] of [['--bridge', opts.bridges], ['--network', opts.networks]] as const) {
    for (const k of Object.keys(m ?? {})) {
      if (!usedMaps.has(k)) b.warn(`${opt} ${k}=...: no interface uses bridge ${k}`);
    }
  }

  // Serial ports, then consoles. A Xen PV console becomes a serial port with a serial console.
  const serials = g.serials.map((s, i) => ({ ...s, port: s.port ?? i }));
  const consoles: XNode[] = [];
  for (const c of g.consoles) {
    const tt = c.targetType ?? 'serial';
    if (tt === 'xen' || tt === 'serial') {
      const port = tt === 'serial' ? (c.port ?? 0) : 0;
      if (!serials.some((s) => s.port === port)) serials.push({ type: c.type === 'pty' || tt === 'xen' ? 'pty' : c.type, path: c.path, port });
      if (!consoles.length) {
        const s = serials.find((x) => x.port === port)!;
        const src = charSource(b, s, `console ${port}`);
        consoles.push(el('console', { type: src.type }, src.children, el('target', { type: 'serial', port })));
      }
    } else if (tt === 'virtio') {
      const src = charSource(b, c, 'virtio console');
      consoles.push(el('console', { type: src.type }, src.children, el('target', { type: 'virtio', port: c.port })));
    } else {
      b.warn(`console with target type '${tt}' dropped`);
    }
  }
  serials.sort((a, c) => (a.port ?? 0) - (c.port ?? 0));
  if (serials.length && !consoles.length) {
    const s = serials[0]!;
    const src = charSource(b, s, 'console');
    consoles.push(el('console', { type: src.type }, src.children, el('target', { type: 'serial', port: s.port })));
  }
  for (const s of serials) {
    const src = charSource(b, s, `serial ${s.port}`);
    devs.push(el('serial', { type: src.type }, src.children, el('target', { port: s.port })));
  }
  g.parallels.forEach((p, i) => {
    const src = charSource(b, p, `parallel ${i}`);
    devs.push(el('parallel', { type: src.type }, src.children, el('target', { port: p.port ?? i })));
  });
  devs.push(...consoles);
  for (const ch of g.channels) {
    const tt = ch.targetType === 'xen' ? 'virtio' : ch.targetType;
    if (tt !== 'virtio' && tt !== 'guestfwd') {
      b.warn(`channel with target type '${ch.targetType}' dropped`);
      continue;
    }
    const src = charSource(b, ch, `channel ${ch.targetName ?? ''}`.trim());
    devs.push(el('channel', { type: src.type }, src.children, el('target', { type: 'virtio', name: ch.targetName })));
  }

  // Input devices: Xen's PV mouse/keyboard become PS/2, tablets stay on USB.
  const inputs: string[] = [];
  for (const i of g.inputs) {
    if (!INPUT_TYPES.includes(i.type)) {
      b.warn(`input device type '${i.type}' dropped`);
      continue;
    }
    let bus = i.bus;
    if (i.type === 'tablet') bus = bus === 'virtio' ? 'virtio' : 'usb';
    else if (!bus || bus === 'xen') bus = 'ps2';
    if (!['ps2', 'usb', 'virtio'].includes(bus)) {
      b.warn(`input ${i.type} on bus ${bus} dropped`);
      continue;
    }
    const k = `${i.type}/${bus}`;
    if (!inputs.includes(k)) inputs.push(k);
  }
  if (g.source.syntax === 'xl' && g.graphics.length) {
    // libvirt gives every Xen guest with a display a mouse and keyboard; say so explicitly.
    for (const k of ['mouse/ps2', 'keyboard/ps2']) if (!inputs.includes(k)) inputs.push(k);
  }
  for (const k of inputs) {
    const [type, bus] = k.split('/');
    devs.push(el('input', { type, bus }));
  }

  for (const gr of g.graphics) {
    const x = graphicsXml(b, gr);
    if (x) devs.push(x);
  }
  for (const s of g.sounds) {
    if (['sb16', 'es1370', 'ac97', 'ich6', 'ich9', 'pcspk', 'usb', 'ich7'].includes(s)) devs.push(el('sound', { model: s }));
    else b.warn(`sound card '${s}' dropped`);
  }
  for (const v of g.videos) {
    if (v.model === 'xen') {
      devs.push(el('video', {}, el('model', { type: 'vga' })));
    } else if (['vga', 'cirrus', 'qxl', 'virtio', 'bochs', 'ramfb', 'none', 'vmvga'].includes(v.model)) {
      devs.push(el('video', {}, el('model', { type: v.model, vram: v.model === 'vga' ? undefined : v.vram, heads: v.heads })));
    } else {
      b.warn(`video model '${v.model}' dropped; libvirt adds its default`);
    }
  }
  devs.push(el('memballoon', { model: 'virtio' }));
  return el('devices', {}, devs);
}

/** Build the KVM domain XML for a parsed Xen guest. */
export function buildKvmDomain(g: GuestDefinition, opts: DomainConvertOptions = {}): DomainConvertResult {
  const b = new Builder(g, opts);
  const mode = opts.boot ?? 'grub';
  if (mode !== 'grub' && mode !== 'direct') throw new ImageError('usage', `--boot must be grub or direct, not '${String(mode)}'`);
  if (opts.name !== undefined && (!/^[^\s/][^/]*$/.test(opts.name) || !OBJECT_NAME.test(opts.name))) {
    throw new ImageError('usage', `domain name '${opts.name}' is not valid (no '/', not empty, no leading blank)`);
  }
  const plan = planDisks(b);
  const os = osXml(b, plan);

  const feats: XNode[] = [];
  let acpi = g.features.acpi;
  if (g.boot.firmware === 'efi' && !acpi) {
    b.warn('ACPI switched on: UEFI guests need it on x86');
    acpi = true;
  }
  if (acpi) feats.push(el('acpi'));
  if (g.features.apic) feats.push(el('apic'));
  if (g.features.pae && g.virt === 'hvm') feats.push(el('pae'));
  if (g.features.viridian) {
    feats.push(el('hyperv', {}, el('relaxed', { state: 'on' }), el('vapic', { state: 'on' }), el('spinlocks', { state: 'on', retries: 8191 })));
  }

  const clockAttrs: Record<string, string | number | undefined> = { offset: g.clock.offset };
  if (g.clock.offset === 'variable') {
    if (!g.clock.adjustment) clockAttrs.offset = g.clock.basis ?? 'utc';
    else Object.assign(clockAttrs, { adjustment: g.clock.adjustment, basis: g.clock.basis ?? 'utc' });
  } else if (g.clock.offset === 'timezone') {
    clockAttrs.timezone = g.clock.timezone;
  }
  const timers: XNode[] = [];
  for (const t of g.clock.timers) {
    if (['hpet', 'pit', 'rtc', 'kvmclock', 'hypervclock'].includes(t.name)) {
      const tickpolicy = t.tickpolicy !== undefined && TICK_POLICIES.includes(t.tickpolicy) ? t.tickpolicy : undefined;
      timers.push(el('timer', { name: t.name, tickpolicy, present: t.present === undefined ? undefined : t.present ? 'yes' : 'no' }));
    } else if (t.name === 'tsc' && g.source.syntax === 'xml') {
      b.warn('timer tsc (Xen TSC mode) dropped');
    } else if (t.name !== 'tsc') {
      b.warn(`timer ${t.name} dropped`);
    }
  }

  let cpuset = g.cpuset;
  if (cpuset !== undefined && !CPUSET.test(cpuset)) {
    b.warn(`cpuset '${cpuset}' dropped (not a CPU list)`);
    cpuset = undefined;
  }
  if (cpuset) b.warn(`vCPUs stay pinned to host CPUs ${cpuset} (cpuset from the Xen host): check them on the KVM host`);
  const name = opts.name ?? g.name ?? 'guest';
  if (!OBJECT_NAME.test(name)) b.fail(`domain name ${JSON.stringify(name)} is not valid for libvirt (empty or multi-line); give one with --name`, 'name');
  let title = g.title;
  if (title !== undefined && !OBJECT_NAME.test(title)) {
    b.warn('title dropped (libvirt titles are one line)');
    title = undefined;
  }
  const lc = lifecycle(b);
  const kib = (bytes: number) => Math.ceil(bytes / 1024);
  const domain = el(
    'domain',
    { type: 'kvm' },
    tel('name', name),
    g.uuid && tel('uuid', g.uuid),
    title && tel('title', title),
    g.description && tel('description', g.description),
    tel('memory', kib(g.maxMemory), { unit: 'KiB' }),
    tel('currentMemory', kib(g.memory), { unit: 'KiB' }),
    tel('vcpu', g.maxVcpus, { cpuset, current: g.vcpus !== g.maxVcpus ? g.vcpus : undefined }),
    os,
    feats.length > 0 && el('features', {}, feats),
    el('clock', clockAttrs, timers),
    tel('on_poweroff', lc.poweroff),
    tel('on_reboot', lc.reboot),
    tel('on_crash', lc.crash),
    devicesXml(b, plan),
  );
  try {
    return { xml: serialize(domain), warnings: b.warnings };
  } catch (e) {
    if (e instanceof ImageError) throw new ImageError(e.kind, `${g.source.fileName}: ${e.message}`, { ...e.context, path: g.source.fileName });
    throw e;
  }
}
