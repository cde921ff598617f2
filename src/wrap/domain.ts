/**
 * wrap --domain: which of the Xen guest's disks did the wrap consume?
 *
 * A Xen guest usually has one volume per filesystem, each exported to the
 * guest as a partition device (`phy:/dev/vg0/web-disk,xvda1,w`,
 * `phy:/dev/vg0/web-swap,xvda2,w`). wrap puts them into one disk, so the
 * KVM domain gets that one disk in place of all of them:
 *
 *   root   the Xen disk holding the wrapped filesystem: named by the guest's
 *          fstab (`/dev/xvda1 /`) or the config's root=, and where that is
 *          missing or ambiguous, the disk whose path is wrap's input;
 *   swap   (only when wrap made a swap partition) the Xen disk the guest's
 *          fstab swaps on (/dev/xvda2), else one whose path says swap and
 *          that the fstab mounts nowhere else;
 *   --part each extra filesystem: the Xen disk whose path is the part's
 *          input, else the one the guest's fstab mounts there.
 *
 * The root disk is replaced by the new disk (its partition number renames
 * `/dev/xvda1` on a kernel command line); the others are merged into it.
 * Every other hard disk is kept (mapped by --disk in order, else at its Xen
 * path, with a warning naming --disk).
 */

import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { buildKvmDomain, diskIndex, parseXenGuest, type DiskMapping, type DomainConvertOptions, type MergedDisk } from '../guest/domain/convert.js';
import type { GuestDisk } from '../guest/domain/types.js';
import type { BlockDevice } from '../core/device.js';
import { withExtFs } from '../fs/ext.js';
import { readGuestFile } from '../guest/boot.js';

/** The guest's /etc/fstab (read-only), or null when it has none or it cannot be read. */
export async function readGuestFstab(fsDev: BlockDevice): Promise<string | null> {
  try {
    return await withExtFs(fsDev, async (fsys) => (await readGuestFile(fsys, '/etc/fstab', 1 << 20)).toString('latin1'), { readOnly: true });
  } catch {
    return null;
  }
}

export interface WrapDomainRequest {
  /** The Xen definition's text and name. */
  text: string;
  sourceName: string;
  /** The new disk. */
  disk: { path: string; format: string };
  /** wrap's input and the partition it became. */
  root: { source: string; number: number };
  /** The swap partition wrap made, if any. */
  swap?: { number: number };
  /** Extra filesystems (--part). */
  parts: Array<{ mountpoint: string; source: string; number: number }>;
  /** The guest's /etc/fstab before the fix-ups (null: unknown). */
  fstab: string | null;
  /** --disk, --bridge, --network, and the boot wrap chose. */
  extraDisks?: DiskMapping[];
  bridges?: Record<string, string>;
  networks?: Record<string, string>;
  boot: Pick<DomainConvertOptions, 'boot' | 'kernel' | 'initrd' | 'cmdline' | 'machine' | 'grubCmdline'>;
}

export interface WrapDomainResult {
  xml: string;
  warnings: string[];
  /** Xen targets the new disk stands for: [root, ...merged]. */
  consumed: string[];
}

/** fstab lines: first field → its mount point (swap areas under 'swap'). */
export function fstabEntries(fstab: string | null): Array<{ spec: string; mountpoint: string }> {
  if (!fstab) return [];
  const out: Array<{ spec: string; mountpoint: string }> = [];
  for (const line of fstab.split('\n')) {
    if (/^\s*(#|$)/.test(line)) continue;
    const f = line.trim().split(/\s+/);
    if (f.length < 3) continue;
    out.push({ spec: f[0]!, mountpoint: f[2] === 'swap' ? 'swap' : f[1]! });
  }
  return out;
}

/** Does Xen disk target `target` (xvda1) name guest device `dev` (/dev/xvda1, /dev/sda1)? */
function sameDevice(target: string, dev: string): boolean {
  const name = dev.replace(/^\/dev\//, '');
  if (name === target) return true;
  const a = diskIndex(target);
  const b = diskIndex(name);
  return !!a && !!b && a.prefix !== 'd' && b.prefix !== 'd' && a.index === b.index && a.partition === b.partition;
}

function samePath(a: string | undefined, b: string): boolean {
  if (!a) return false;
  if (path.resolve(a) === path.resolve(b)) return true;
  try {
    return fs.realpathSync(a) === fs.realpathSync(b);
  } catch {
    return false;
  }
}

/** Root= from the config's kernel arguments (PV guests booted by the Xen host). */
function configRoot(cmdline: string | undefined): string | undefined {
  return /(?:^|\s)root=(\/dev\/\S+)/.exec(cmdline ?? '')?.[1];
}

export function convertWrapDomain(req: WrapDomainRequest): WrapDomainResult {
  const g = parseXenGuest(req.text, req.sourceName);
  const notes: string[] = [];
  const note = (m: string) => notes.push(`${req.sourceName}: ${m}`);
  const hard = g.disks.filter((d) => d.device === 'disk');
  const taken = new Set<GuestDisk>();
  const fstab = fstabEntries(req.fstab);
  const byFstab = (mountpoint: string) =>
    fstab.filter((e) => e.mountpoint === mountpoint).flatMap((e) => hard.filter((d) => !taken.has(d) && sameDevice(d.target, e.spec)));
  const byPath = (src: string) => hard.filter((d) => !taken.has(d) && samePath(d.path, src));

  // Root: the config's word (fstab, root=), the input path where that is missing or ambiguous.
  let root: GuestDisk | undefined;
  const named = [...new Set([...byFstab('/'), ...hard.filter((d) => configRoot(g.boot.cmdline) && sameDevice(d.target, configRoot(g.boot.cmdline)!))])];
  if (named.length === 1) root = named[0];
  else root = byPath(req.root.source).find((d) => named.length === 0 || named.includes(d)) ?? (named.length ? undefined : hard.length === 1 ? hard[0] : undefined);
  if (!root && (named.length || hard.length)) {
    root = named[0] ?? [...hard].sort((a, b) => (diskIndex(a.target)?.index ?? 1e9) - (diskIndex(b.target)?.index ?? 1e9))[0];
    note(`cannot tell which disk held the root filesystem: took ${root!.target} (${root!.path ?? 'no path'})`);
  }
  const merged: MergedDisk[] = [];
  const consumed: string[] = [];
  if (root) {
    taken.add(root);
    consumed.push(root.target);
    const merge = (d: GuestDisk | undefined, partition: number) => {
      if (!d) return;
      taken.add(d);
      consumed.push(d.target);
      merged.push({ target: d.target, into: root!.target, partition });
    };
    for (const p of req.parts) merge(byPath(p.source)[0] ?? byFstab(p.mountpoint)[0], p.number);
    if (req.swap) {
      // The disk the fstab swaps on; else (swap by UUID=, or no fstab) one whose path says swap and that the fstab mounts nowhere else.
      const mountedElsewhere = (d: GuestDisk) => fstab.some((e) => e.mountpoint !== 'swap' && sameDevice(d.target, e.spec));
      const swap = byFstab('swap')[0] ?? hard.find((d) => !taken.has(d) && /swap/i.test(d.path ?? '') && !mountedElsewhere(d));
      merge(swap, req.swap.number);
    }
  } else {
    note('has no hard disk: the new disk is added as vda');
  }
  if (!root) g.disks.unshift({ device: 'disk', sourceType: 'none', target: 'xvda', readonly: false, shareable: false });
  // Disks left over keep their Xen path with a warning naming --disk (the domain writer's).
  const disks: DiskMapping[] = [{ ...req.disk, partition: req.root.number, target: root?.target ?? 'xvda' }, ...(req.extraDisks ?? [])];
  // The domain keeps the Xen guest's identity; a config without one gets a fresh one.
  g.uuid ??= randomUUID();
  const built = buildKvmDomain(g, {
    ...req.boot,
    disks,
    merged,
    bridges: req.bridges,
    networks: req.networks,
  });
  return { xml: built.xml, warnings: [...g.warnings, ...notes, ...built.warnings], consumed };
}
