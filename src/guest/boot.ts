/**
 * Making a wrapped Xen guest boot under KVM: find its kernels, decide how to
 * boot it (GRUB in the MBR, or qemu/libvirt direct kernel boot), build the
 * kernel command line, install GRUB's boot code, extract kernel and initrd.
 *
 * Vocabulary:
 *   fsDev      the guest's root filesystem (partition 1 of the wrapped disk)
 *   disk       the whole disk (MBR, gap, partitions)
 *   Xen-only   a kernel that only boots as a Xen PV guest: a `-xen` flavour
 *              (2.6.18-xen, 2.6.32-5-xen-amd64, 2.6.18-398.el5xen) or an
 *              image that is not an x86 bzImage (a PV `vmlinux` ELF)
 *   core.img   GRUB's second stage, built by the host's grub-mkimage,
 *              embedded in the sectors between the MBR and partition 1
 *
 * The boot code comes from the host's GRUB (package grub-pc-bin) at run
 * time; our code patches the fields grub-bios-setup patches (see grub.ts).
 */

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { BlockDevice } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import { type ExtFs, isFsError, withExtFs } from '../fs/ext.js';
import { GRUB_UNREADABLE, readExtSuperblock } from '../fs/ext-superblock.js';
import { MAX_CORE_SECTORS, SECTOR, patchBootSector, patchCoreImage } from './grub.js';
import { listInitrd, modulesIn } from './initrd.js';
import { ReadAheadDevice } from './read-ahead.js';

export type BootMode = 'auto' | 'grub' | 'direct' | 'none';

export interface KernelInfo {
  version: string;
  /** Path in the guest, e.g. /boot/vmlinuz-6.1.0-x-cloud-amd64. */
  kernel: string;
  initrd?: string;
  xenOnly: boolean;
  /**
   * The kernel can reach a virtio disk at boot: virtio_blk and virtio_pci are
   * built in or in the initrd. undefined when it could not be told.
   */
  hasVirtio?: boolean;
  /** Why the kernel is Xen-only, or why hasVirtio is false/unknown. */
  notes?: string[];
  /** The kernel itself lacks a virtio driver (per /boot/config-V): no initrd change can help. */
  noVirtioDriver?: boolean;
  /**
   * The arguments the guest's own boot config passes to this kernel (from
   * menu.lst/grub.conf/grub.cfg, else /etc/default/grub), without the kernel
   * path. Feed them to kernelCmdline as `extra`: it drops root= and the Xen
   * consoles.
   */
  args?: string;
}

/** Largest kernel and initrd we read (the file's inode size is checked first). */
const MAX_KERNEL = 256 << 20;
export const MAX_INITRD = 1 << 30;

const KERNEL_NAME = /^(?:vmlinuz|vmlinux|kernel)-(.+)$/;
/** Initrd names by distribution, for a kernel version V. */
const INITRD_NAMES = (v: string) => [`initrd.img-${v}`, `initramfs-${v}.img`, `initrd-${v}.img`, `initrd-${v}`, `initramfs-${v}`];

/** Xen flavours: 2.6.18-xen, 2.6.32-5-xen-amd64, 2.6.18-398.el5xen, 3.0.101-63-xen, 2.6.16-xenU. */
export function isXenFlavour(version: string): boolean {
  return /(?:^|[-.\d])xen(?:u|0)?(?:[-.+_]|$)/i.test(version);
}

/** Compare kernel versions numerically by their digit groups ("6.1.0-10" < "6.1.0-9"? no: 10 > 9). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/(\d+)/);
  const pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    if (x === y) continue;
    if (i % 2 === 1) {
      const d = Number(x || -1) - Number(y || -1);
      if (d) return d;
    }
    return x < y ? -1 : 1;
  }
  return 0;
}

/** Does `p` exist in the guest (following symlinks)? */
export async function exists(fsys: ExtFs, p: string): Promise<boolean> {
  try {
    await fsys.stat(p);
    return true;
  } catch (e) {
    if (isFsError(e, 'ENOENT') || isFsError(e, 'ENOTDIR')) return false;
    throw e;
  }
}

async function readHead(fsys: ExtFs, p: string, n: number): Promise<Uint8Array> {
  const fh = await fsys.open(p, 'r');
  try {
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fh.read(buf, 0, n, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Read a whole guest file, refusing files larger than `max` (checked against the inode size first). */
export async function readGuestFile(fsys: ExtFs, p: string, max: number): Promise<Buffer> {
  const st = await fsys.stat(p);
  if (!st.isFile()) throw new ImageError('unsupported', `${p} in the guest is not a regular file`, { path: p });
  if (st.size > max) {
    throw new ImageError('unsupported', `${p} in the guest is ${st.size} bytes, more than the ${max} imgtool reads`, { path: p, value: st.size });
  }
  return fsys.readFile(p);
}

/** What kind of image a kernel file is, from its first 1 KiB. */
export function kernelImageKind(head: Uint8Array): 'bzImage' | 'elf' | 'gzip' | 'unknown' {
  if (head.length >= 0x206 && head[0x1fe] === 0x55 && head[0x1ff] === 0xaa && Buffer.from(head.subarray(0x202, 0x206)).toString('latin1') === 'HdrS') {
    return 'bzImage';
  }
  if (head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c && head[3] === 0x46) return 'elf';
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  return 'unknown';
}

/** CONFIG_X values from a kernel config file. */
function parseConfig(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split('\n')) {
    const r = /^(CONFIG_[A-Z0-9_]+)=(.*)$/.exec(line);
    if (r) m.set(r[1]!, r[2]!);
  }
  return m;
}

/** The modules a KVM guest needs to reach its virtio disk. */
const VIRTIO_NEEDED: Array<[string, string]> = [
  ['virtio_blk', 'CONFIG_VIRTIO_BLK'],
  ['virtio_pci', 'CONFIG_VIRTIO_PCI'],
];

/** How kernelsIn looks at each kernel's initrd. */
export interface KernelScanOptions {
  /** Look inside initrds for the virtio modules (default true); false leaves hasVirtio unknown. */
  initrds?: boolean;
  /**
   * Receives each initrd read (its bytes, by guest path), so that a later
   * step does not read it through libext2fs again; filled up to
   * INITRD_CACHE_BYTES in all.
   */
  cache?: Map<string, Uint8Array>;
}

/** Most initrd bytes kernelsIn keeps in a cache for the caller. */
const INITRD_CACHE_BYTES = 128 << 20;

async function inspectKernel(fsys: ExtFs, version: string, kernelPath: string, scan: KernelScanOptions): Promise<KernelInfo> {
  const info: KernelInfo = { version, kernel: kernelPath, xenOnly: false, notes: [] };
  for (const name of INITRD_NAMES(version)) {
    if (await exists(fsys, `/boot/${name}`)) {
      info.initrd = `/boot/${name}`;
      break;
    }
  }
  if (isXenFlavour(version)) {
    info.xenOnly = true;
    info.notes!.push(`${kernelPath} is a Xen flavour (-xen): it boots only as a Xen PV guest`);
  }
  const kind = kernelImageKind(await readHead(fsys, kernelPath, 1024));
  if (kind !== 'bzImage') {
    info.xenOnly = true;
    info.notes!.push(`${kernelPath} is not an x86 bzImage (${kind === 'unknown' ? 'unrecognised format' : `${kind} image`}): only Xen PV boots it`);
  }

  // Which of the virtio drivers are built in?
  // A missing, odd (a directory, huge) or unreadable file only means we know less.
  const optional = async (p: string): Promise<string | undefined> => {
    try {
      return (await readGuestFile(fsys, p, 16 << 20)).toString('utf8');
    } catch (e) {
      if (isFsError(e, 'ENOENT') || isFsError(e, 'ENOTDIR')) return undefined;
      if (e instanceof ImageError && e.kind === 'unsupported') {
        info.notes!.push(`${p} ignored: ${e.message}`);
        return undefined;
      }
      throw e;
    }
  };
  const configText = await optional(`/boot/config-${version}`);
  const config = configText === undefined ? undefined : parseConfig(configText);
  const builtinText = await optional(`/lib/modules/${version}/modules.builtin`);
  const builtin = builtinText === undefined ? new Set<string>() : modulesIn(builtinText.split('\n'));
  const missingFromKernel: string[] = [];
  const needed: string[] = [];
  for (const [mod, opt] of VIRTIO_NEEDED) {
    const v = config?.get(opt);
    if (v === 'y' || builtin.has(mod)) continue;
    if (config && v === undefined) missingFromKernel.push(mod);
    needed.push(mod);
  }
  if (missingFromKernel.length) {
    info.hasVirtio = false;
    info.noVirtioDriver = true;
    info.notes!.push(`the kernel ${version} has no ${missingFromKernel.join(', ')} (not in /boot/config-${version})`);
    return info;
  }
  if (!needed.length) {
    info.hasVirtio = true;
    return info;
  }
  if (scan.initrds === false) return info;
  if (!info.initrd) {
    // Without an initrd only built-in drivers can find the root disk.
    info.hasVirtio = config ? false : undefined;
    info.notes!.push(
      config
        ? `the kernel ${version} has ${needed.join(', ')} as modules and there is no initrd to load them`
        : `no initrd for ${version} and no /boot/config-${version}: cannot tell whether virtio drivers are built in`,
    );
    return info;
  }
  let contents;
  try {
    const image = await readGuestFile(fsys, info.initrd, MAX_INITRD);
    if (scan.cache) {
      const held = [...scan.cache.values()].reduce((n, b) => n + b.length, 0);
      if (held + image.length <= INITRD_CACHE_BYTES) scan.cache.set(info.initrd, image);
    }
    contents = await listInitrd(image);
  } catch (e) {
    info.notes!.push(`cannot read ${info.initrd}: ${(e as Error).message}`);
    return info;
  }
  const have = modulesIn(contents.files);
  const absent = needed.filter((m) => !have.has(m));
  if (!absent.length) info.hasVirtio = true;
  else if (contents.problem) {
    info.notes!.push(`${info.initrd} could not be fully read (${contents.problem}); ${absent.join(', ')} not seen in the part read`);
  } else {
    info.hasVirtio = false;
    info.notes!.push(`${info.initrd} (${contents.segments.join('+')}) has no ${absent.join(', ')}`);
  }
  return info;
}

/** The kernels in the guest's /boot, newest first. Run inside an open filesystem. */
export async function kernelsIn(fsys: ExtFs, scan: KernelScanOptions = {}): Promise<KernelInfo[]> {
  let names: string[];
  try {
    names = await fsys.readdir('/boot');
  } catch (e) {
    if (isFsError(e, 'ENOENT') || isFsError(e, 'ENOTDIR')) return [];
    throw e;
  }
  const found: Array<[string, string]> = [];
  for (const n of names) {
    const m = KERNEL_NAME.exec(n);
    if (!m) continue;
    const p = `/boot/${n}`;
    let st;
    try {
      st = await fsys.stat(p);
    } catch (e) {
      if (isFsError(e, 'ENOENT')) continue; // a dangling symlink
      throw e;
    }
    if (!st.isFile() || st.size < 1024) continue;
    found.push([m[1]!, p]);
  }
  // vmlinuz-V and vmlinux-V for the same V: prefer vmlinuz.
  found.sort((a, b) => compareVersions(b[0], a[0]) || a[1].localeCompare(b[1]));
  const out: KernelInfo[] = [];
  for (const [version, p] of found) {
    if (out.some((k) => k.version === version)) continue;
    out.push(await inspectKernel(fsys, version, p, scan));
  }
  if (out.length) {
    const entries = await bootConfigArgs(fsys);
    for (const k of out) {
      const base = k.kernel.slice(k.kernel.lastIndexOf('/') + 1);
      const args = entries.byKernel.get(base) ?? entries.defaults;
      if (args !== undefined) k.args = args;
    }
  }
  return out;
}

/** Boot configs read for kernel arguments, first match wins. */
const ARG_CONFIGS = ['/boot/grub/menu.lst', '/boot/grub/grub.conf', '/boot/grub/grub.cfg', '/boot/grub2/grub.cfg'];

/** Kernel arguments by kernel file name from the guest's boot configs, and /etc/default/grub's. */
export async function bootConfigArgs(fsys: ExtFs): Promise<{ byKernel: Map<string, string>; defaults?: string }> {
  const byKernel = new Map<string, string>();
  const read = async (p: string): Promise<string | undefined> => {
    try {
      return (await readGuestFile(fsys, p, 4 << 20)).toString('latin1');
    } catch (e) {
      if (e instanceof ImageError || isFsError(e, 'ENOENT') || isFsError(e, 'ENOTDIR') || isFsError(e, 'ELOOP')) return undefined;
      throw e;
    }
  };
  for (const p of ARG_CONFIGS) {
    const text = await read(p);
    if (text === undefined) continue;
    for (const line of text.split('\n')) {
      const m = /^\s*(?:kernel|linux|linux16)\s+(\S+)\s*(.*)$/.exec(line);
      if (!m) continue;
      const base = m[1]!.replace(/^\([^)]*\)/, '').replace(/^.*\//, '');
      if (!byKernel.has(base)) byKernel.set(base, m[2]!.trim());
    }
  }
  let defaults: string | undefined;
  const def = await read('/etc/default/grub');
  if (def !== undefined) {
    const val = (name: string) => {
      const m = new RegExp(`^\\s*${name}=(?:"([^"]*)"|'([^']*)'|(\\S*))`, 'm').exec(def);
      return m ? (m[1] ?? m[2] ?? m[3] ?? '') : '';
    };
    defaults = `${val('GRUB_CMDLINE_LINUX')} ${val('GRUB_CMDLINE_LINUX_DEFAULT')}`.trim();
  }
  return { byKernel, defaults };
}

/** The kernels in the guest's /boot (the filesystem is opened read-only). */
export async function findKernels(fsDev: BlockDevice): Promise<KernelInfo[]> {
  return withExtFs(new ReadAheadDevice(fsDev), (fsys) => kernelsIn(fsys), { readOnly: true });
}

/** The kernel to boot: the newest that is not Xen-only, preferring one known to reach virtio disks. */
export function pickBootKernel(kernels: KernelInfo[]): KernelInfo | undefined {
  const usable = kernels.filter((k) => !k.xenOnly);
  return usable.find((k) => k.hasVirtio === true) ?? usable.find((k) => k.hasVirtio === undefined) ?? usable[0];
}

export interface GrubHost {
  /** Directory holding boot.img and the i386-pc modules. */
  dir: string;
  mkimage: string;
}

/** GRUB's i386-pc files on this machine, or undefined. */
export function findGrub(dirs = ['/usr/lib/grub/i386-pc', '/usr/share/grub2/i386-pc', '/usr/lib/grub2/i386-pc']): GrubHost | undefined {
  const dir = dirs.find((d) => fs.existsSync(path.join(d, 'boot.img')) && fs.existsSync(path.join(d, 'diskboot.img')));
  if (!dir) return undefined;
  for (const name of ['grub-mkimage', 'grub2-mkimage']) {
    for (const bin of (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/usr/bin', '/usr/sbin'])) {
      const p = path.join(bin, name);
      if (fs.existsSync(p)) return { dir, mkimage: p };
    }
  }
  return undefined;
}

function describeKernels(kernels: KernelInfo[]): string {
  if (!kernels.length) return 'no kernel in /boot';
  return kernels.map((k) => `${k.kernel}${k.xenOnly ? ' (Xen-only)' : ''}`).join(', ');
}

/**
 * Decide the boot method. auto: GRUB when the guest has a bootable kernel and
 * the host has GRUB's i386-pc files; direct kernel boot when it has a kernel
 * but no GRUB; none (with a warning) otherwise. An explicit grub or direct
 * that cannot be done is an ImageError naming what was found.
 */
export function resolveBootMode(
  requested: BootMode,
  kernels: KernelInfo[],
  grubAvailable: boolean,
): { mode: 'grub' | 'direct' | 'none'; warnings: string[] } {
  const bootable = kernels.filter((k) => !k.xenOnly);
  const warnings: string[] = [];
  const noKernel = `the guest has no kernel that boots under KVM (found: ${describeKernels(kernels)})`;
  switch (requested) {
    case 'none':
      return { mode: 'none', warnings };
    case 'grub':
      if (!bootable.length) throw new ImageError('unsupported', `--boot grub: ${noKernel}`, { value: describeKernels(kernels) });
      if (!grubAvailable) {
        throw new ImageError(
          'unsupported',
          "--boot grub: GRUB's i386-pc files are not installed on this machine (need /usr/lib/grub/i386-pc/boot.img and grub-mkimage: Debian package grub-pc-bin)",
        );
      }
      return { mode: 'grub', warnings };
    case 'direct':
      if (!bootable.length) throw new ImageError('unsupported', `--boot direct: ${noKernel}`, { value: describeKernels(kernels) });
      return { mode: 'direct', warnings };
    case 'auto':
      if (!bootable.length) {
        warnings.push(`not making the disk bootable: ${noKernel}; install a generic kernel in the guest, or boot it some other way`);
        return { mode: 'none', warnings };
      }
      if (!grubAvailable) {
        warnings.push(
          "GRUB's i386-pc files are not installed on this machine (Debian package grub-pc-bin): using direct kernel boot; the kernel and initrd must be passed to the hypervisor",
        );
        return { mode: 'direct', warnings };
      }
      return { mode: 'grub', warnings };
    default:
      throw new ImageError('usage', `--boot must be auto, grub, direct or none, not '${String(requested)}'`);
  }
}

/** Kernel arguments that only mean something on Xen. */
export function isXenConsoleArg(arg: string): boolean {
  return /^xencons=/.test(arg) || /^console=(hvc0|xvc0)(,.*)?$/.test(arg);
}

/**
 * The kernel command line for KVM: root=..., the caller's extra arguments
 * without Xen console arguments (and without root= or consoles of its own,
 * each once, a resume= on a Xen disk pointed at the new swap), then
 * console=tty0 console=ttyS0,115200 (the last console is /dev/console).
 */
export function kernelCmdline(opts: { root: string; extra?: string; /** The new swap ('UUID=...'): a resume= naming a Xen disk becomes it (or goes). */ resume?: string }): string {
  const root = opts.root.startsWith('root=') ? opts.root.slice(5) : opts.root;
  const extra = (opts.extra ?? '')
    .split(/\s+/)
    .map((a) => (/^resume=\/dev\/(?:xvd|sd|hd)[a-z]+\d*$/.test(a) ? (opts.resume ? `resume=${opts.resume}` : '') : a))
    .filter((a) => a && !isXenConsoleArg(a) && !/^(root|BOOT_IMAGE)=/.test(a) && !/^console=(tty0|ttyS0)(,.*)?$/.test(a))
    .filter((a, i, all) => all.indexOf(a) === i);
  const args = [`root=${root}`];
  if (!extra.includes('ro') && !extra.includes('rw')) args.push('ro');
  args.push(...extra, 'console=tty0', 'console=ttyS0,115200');
  return args.join(' ');
}

/**
 * Modules built into core.img: the disk, the partition maps, ext2/3/4, the
 * Linux loader, and everything grub-mkconfig's output loads (video, fonts,
 * gettext, the Xen-only xzio/lzopio inside `if`), so that no module is ever
 * loaded from the guest's /boot/grub/i386-pc, which belongs to another GRUB
 * version.
 */
export const GRUB_MODULES = [
  'biosdisk', 'part_msdos', 'part_gpt', 'ext2', 'linux', 'normal', 'search', 'search_fs_uuid', 'search_fs_file',
  'search_label', 'configfile', 'echo', 'test', 'boot', 'serial', 'terminal', 'gzio', 'minicmd', 'ls', 'cat',
  'sleep', 'loadenv', 'all_video', 'gfxterm', 'font', 'gettext', 'xzio', 'lzopio', 'png',
];

interface GuestGrubConfig {
  /** The config file, e.g. /boot/grub/grub.cfg. */
  path?: string;
  /** The guest has GRUB modules of its own next to it (another GRUB version: never load them). */
  hasModules?: boolean;
  why: string;
}

/**
 * Can GRUB boot the guest through its own GRUB 2 config? Yes when its first
 * menu entry boots (linux, not multiboot/Xen) a kernel from /boot that is not
 * Xen-only and names the root by UUID, LABEL or a virtio name. An `insmod` of
 * a module the core image lacks only prints an error in GRUB, so it does not
 * disqualify the config.
 */
async function guestGrubConfig(fsys: ExtFs): Promise<GuestGrubConfig> {
  for (const dir of ['/boot/grub', '/boot/grub2']) {
    const cfg = `${dir}/grub.cfg`;
    if (!(await exists(fsys, cfg))) continue;
    const text = (await readGuestFile(fsys, cfg, 4 << 20)).toString('utf8');
    const firstEntry = /^\s*menuentry\b[^{\n]*\{([^}]*)\}/m.exec(text);
    if (!firstEntry) return { why: `${cfg} has no menuentry` };
    const body = firstEntry[1]!;
    const linux = /^\s*linux(?:16)?\s+(\S+)/m.exec(body);
    if (!linux) return { why: `the first menuentry of ${cfg} has no linux command (a Xen or multiboot entry?)` };
    const kpath = linux[1]!.replace(/^\([^)]*\)/, '');
    // Which kernels are Xen-only does not depend on their initrds.
    const kernels = await kernelsIn(fsys, { initrds: false });
    const k = kernels.find((x) => x.kernel === kpath || x.kernel === `/boot${kpath}`);
    if (!k || k.xenOnly) return { why: `the first menuentry of ${cfg} boots ${kpath}, ${k ? 'a Xen-only kernel' : 'which is not in /boot'}` };
    if (!/\sroot=(UUID=|LABEL=|\/dev\/vd)/.test(body)) return { why: `the first menuentry of ${cfg} does not name the root by UUID` };
    return { path: cfg, hasModules: await exists(fsys, `${dir}/i386-pc`), why: '' };
  }
  return { why: 'the guest has no GRUB 2 grub.cfg' };
}

export interface InstallGrubOptions {
  /** Byte offset of partition 1 (the gap before it holds core.img). */
  partitionStart: number;
  /** MBR partition number (1-based) holding the root filesystem. */
  partitionNumber: number;
  fsDev: BlockDevice;
  rootUuid: string;
  kernel: KernelInfo;
  cmdline: string;
  /** Use the guest's own grub.cfg when it is usable (default true). */
  useGuestConfig?: boolean;
  /** Host GRUB (default: findGrub()). */
  grub?: GrubHost;
}

const grubQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The config embedded in core.img. */
export function embeddedGrubConfig(opts: {
  rootUuid: string;
  partitionNumber: number;
  kernel: KernelInfo;
  cmdline: string;
  guestConfig?: string;
  /** The guest has its own i386-pc modules next to guestConfig. */
  guestHasModules?: boolean;
}): string {
  const lines = [
    'serial --unit=0 --speed=115200',
    'terminal_input serial console',
    'terminal_output serial console',
    `set root=(hd0,msdos${opts.partitionNumber})`,
    `search --no-floppy --fs-uuid --set=root ${opts.rootUuid}`,
  ];
  if (opts.guestConfig) {
    // $prefix is where GRUB looks for grubenv, locales, fonts and modules. When the guest has
    // modules of its own (another GRUB version), point it where there are none.
    const dir = path.posix.dirname(opts.guestConfig);
    lines.push(`set prefix=($root)${dir}${opts.guestHasModules ? '/imgtool-no-modules' : ''}`, `configfile ($root)${opts.guestConfig}`);
  } else {
    lines.push(
      'set prefix=($root)/boot/grub',
      `echo ${grubQuote(`imgtool: booting ${opts.kernel.kernel}`)}`,
      `linux ($root)${opts.kernel.kernel} ${opts.cmdline.split(/\s+/).map(grubQuote).join(' ')}`,
    );
    if (opts.kernel.initrd) lines.push(`initrd ($root)${opts.kernel.initrd}`);
    lines.push('boot');
  }
  return lines.join('\n') + '\n';
}

/**
 * Install GRUB for BIOS boot: core.img (built by the host's grub-mkimage with
 * an embedded config that finds the root by UUID and boots the kernel) goes
 * into the sectors after the MBR, GRUB's boot.img code into the MBR (disk
 * signature and partition table kept). Writes only through `disk`.
 */
export async function installGrub(
  disk: BlockDevice,
  opts: InstallGrubOptions,
): Promise<{ coreSize: number; warnings: string[]; /** The guest's grub.cfg GRUB hands over to, when it does. */ guestConfig?: string }> {
  const warnings: string[] = [];
  const grub = opts.grub ?? findGrub();
  if (!grub) {
    throw new ImageError('unsupported', "GRUB's i386-pc files are not installed on this machine (need boot.img and grub-mkimage: Debian package grub-pc-bin)");
  }
  const { partitionStart, partitionNumber } = opts;
  if (!Number.isSafeInteger(partitionStart) || partitionStart % SECTOR !== 0 || partitionStart < 2 * SECTOR || partitionStart > disk.size) {
    throw new ImageError('usage', `partition start ${partitionStart} is not a sector-aligned offset inside the disk past sector 1`, { value: partitionStart });
  }
  if (!Number.isInteger(partitionNumber) || partitionNumber < 1 || partitionNumber > 4) {
    throw new ImageError('usage', `GRUB installs for a primary MBR partition (1-4), not ${partitionNumber}`, { value: partitionNumber });
  }
  // The MBR must be there and agree with what we were told.
  const mbr = new Uint8Array(SECTOR);
  await disk.read(mbr, 0);
  if (mbr[510] !== 0x55 || mbr[511] !== 0xaa) {
    throw new ImageError('invalid-format', 'the disk has no MBR (no 0x55AA at offset 510): write the partition table before installing GRUB', {
      field: 'boot_signature',
      offset: 510,
    });
  }
  const mv = new DataView(mbr.buffer);
  const startLba = partitionStart / SECTOR;
  for (let i = 0; i < 4; i++) {
    const e = 446 + 16 * i;
    const type = mbr[e + 4]!;
    const lba = mv.getUint32(e + 8, true);
    const count = mv.getUint32(e + 12, true);
    if (type === 0xee) throw new ImageError('unsupported', 'the disk has a GPT: BIOS GRUB on GPT needs a BIOS boot partition, which imgtool does not create', { offset: e + 4, value: type });
    if (i === partitionNumber - 1 && (lba !== startLba || type === 0)) {
      throw new ImageError('usage', `MBR partition ${partitionNumber} starts at sector ${lba} (type 0x${type.toString(16)}), not at ${startLba}`, {
        field: `partition ${partitionNumber} start`,
        offset: e + 8,
        value: lba,
      });
    }
    if (type !== 0 && count > 0 && lba < startLba) {
      throw new ImageError('unsupported', `MBR partition ${i + 1} starts at sector ${lba}, inside the gap GRUB's core image needs`, { offset: e + 8, value: lba });
    }
  }

  // Can GRUB read this filesystem, and boot this kernel?
  const sb = await readExtSuperblock(opts.fsDev);
  if (!sb) throw new ImageError('invalid-format', 'partition 1 holds no ext filesystem', { field: 's_magic', offset: 1024 + 0x38 });
  const unreadable = sb.features.filter((f) => GRUB_UNREADABLE.includes(f));
  if (unreadable.length) {
    throw new ImageError('unsupported', `GRUB cannot read a filesystem with ${unreadable.join(', ')}: use --boot direct`, { value: unreadable.join(',') });
  }
  if (opts.kernel.xenOnly) throw new ImageError('unsupported', `${opts.kernel.kernel} is Xen-only: GRUB cannot boot it under KVM`, { value: opts.kernel.kernel });
  // These go into GRUB's script unquoted: only plain names.
  if (!/^[0-9a-fA-F-]{4,64}$/.test(opts.rootUuid)) throw new ImageError('usage', `root UUID '${opts.rootUuid}' is not a filesystem UUID`, { value: opts.rootUuid });
  for (const p of [opts.kernel.kernel, opts.kernel.initrd]) {
    if (p !== undefined && !/^\/[A-Za-z0-9._+~\/-]+$/.test(p)) {
      throw new ImageError('unsupported', `the guest path '${p}' has characters imgtool does not put into a GRUB config: use --boot direct`, { value: p });
    }
  }

  let guest: GuestGrubConfig = { why: '' };
  if (opts.useGuestConfig !== false) {
    guest = await withExtFs(new ReadAheadDevice(opts.fsDev), guestGrubConfig, { readOnly: true });
    if (!guest.path && guest.why !== 'the guest has no GRUB 2 grub.cfg') warnings.push(`not using the guest's grub.cfg: ${guest.why}; GRUB boots ${opts.kernel.kernel} directly`);
  }
  const guestConfig = guest.path;

  const config = embeddedGrubConfig({
    rootUuid: opts.rootUuid,
    partitionNumber,
    kernel: opts.kernel,
    cmdline: opts.cmdline,
    guestConfig,
    guestHasModules: guest.hasModules,
  });
  const core = buildCoreImage(grub, config, `(hd0,msdos${partitionNumber})/boot/grub`);
  const patched = patchCoreImage(core, 1);
  const sectors = patched.length / SECTOR;
  if (1 + sectors > startLba) {
    throw new ImageError(
      'unsupported',
      `GRUB's core image needs ${sectors} sectors after the MBR but partition ${partitionNumber} starts at sector ${startLba}`,
      { value: sectors },
    );
  }
  if (sectors > MAX_CORE_SECTORS) throw new ImageError('unsupported', `GRUB's core image is too large (${sectors} sectors)`, { value: sectors });
  // Something already in the gap (another boot loader) is overwritten: say so.
  const old = new Uint8Array(patched.length);
  await disk.read(old, SECTOR);
  if (old.some((b) => b !== 0) && !Buffer.from(old.subarray(0, 512)).equals(Buffer.from(patched.subarray(0, 512)))) {
    warnings.push(`sectors 1..${sectors} before partition ${partitionNumber} held data (another boot loader?): overwritten by GRUB's core image`);
  }
  const bootImg = fs.readFileSync(path.join(grub.dir, 'boot.img'));
  const sector0 = patchBootSector(bootImg, mbr, 1);
  await disk.write(patched, SECTOR);
  await disk.write(sector0, 0);
  await disk.flush();
  return { coreSize: core.length, warnings, guestConfig };
}

/** Run grub-mkimage; returns core.img's bytes. */
function buildCoreImage(grub: GrubHost, config: string, prefix: string): Uint8Array {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'imgtool-grub-'));
  try {
    const cfg = path.join(tmp, 'early.cfg');
    const out = path.join(tmp, 'core.img');
    fs.writeFileSync(cfg, config);
    const r = spawnSync(grub.mkimage, ['-O', 'i386-pc', '-d', grub.dir, '-o', out, '-c', cfg, '-p', prefix, ...GRUB_MODULES], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    if (r.error) throw new ImageError('io', `cannot run ${grub.mkimage}: ${r.error.message}`, { path: grub.mkimage });
    if (r.status !== 0) throw new ImageError('io', `${grub.mkimage} failed (exit ${r.status}): ${r.stderr.trim()}`, { path: grub.mkimage });
    return fs.readFileSync(out);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Read the guest's kernel and initrd (for direct kernel boot). */
export async function extractKernel(fsDev: BlockDevice, kernel: KernelInfo): Promise<{ kernel: Uint8Array; initrd?: Uint8Array }> {
  return withExtFs(
    new ReadAheadDevice(fsDev),
    async (fsys) => {
      const k = await readGuestFile(fsys, kernel.kernel, MAX_KERNEL);
      const kind = kernelImageKind(k.subarray(0, 1024));
      if (kind !== 'bzImage') {
        throw new ImageError('unsupported', `${kernel.kernel} is not an x86 bzImage (${kind}): qemu -kernel cannot boot it`, { path: kernel.kernel });
      }
      const initrd = kernel.initrd ? await readGuestFile(fsys, kernel.initrd, MAX_INITRD) : undefined;
      return { kernel: k, initrd };
    },
    { readOnly: true },
  );
}

const xmlEscape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
/** qemu option values double their commas. */
const qemuValue = (s: string) => s.replace(/,/g, ',,');

/** How to boot the disk with an external kernel: qemu-system-x86_64 arguments and libvirt's <os> element. */
export function directBootInstructions(opts: { disk: string; format: string; kernelPath: string; initrdPath?: string; cmdline: string }): {
  qemuArgs: string[];
  libvirtOs: string;
} {
  const qemuArgs = ['-drive', `file=${qemuValue(opts.disk)},format=${opts.format},if=virtio`, '-kernel', opts.kernelPath];
  if (opts.initrdPath) qemuArgs.push('-initrd', opts.initrdPath);
  qemuArgs.push('-append', opts.cmdline);
  const os = [
    '<os>',
    '  <type arch="x86_64" machine="pc">hvm</type>',
    `  <kernel>${xmlEscape(opts.kernelPath)}</kernel>`,
    ...(opts.initrdPath ? [`  <initrd>${xmlEscape(opts.initrdPath)}</initrd>`] : []),
    `  <cmdline>${xmlEscape(opts.cmdline)}</cmdline>`,
    '</os>',
  ].join('\n');
  return { qemuArgs, libvirtOs: os };
}
