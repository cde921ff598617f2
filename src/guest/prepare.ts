/**
 * Make a guest's disk boot under KVM: the fix-ups inside its root filesystem,
 * then the boot method (GRUB in the MBR and the gap, or a kernel and initrd
 * for direct boot). One flow for `wrap` (on the composed disk before it is
 * written) and `guest fix` (on an existing disk).
 */

import type { BlockDevice } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import { fixGuest, type GuestFixReport, type GuestMount } from './fixups.js';
import {
  type BootMode,
  type KernelInfo,
  extractKernel,
  findGrub,
  installGrub,
  kernelCmdline,
  pickBootKernel,
  resolveBootMode,
} from './boot.js';

export interface PrepareGuestOptions {
  /** The root filesystem (a window of `disk`). */
  fsDev: BlockDevice;
  /**
   * Why GRUB cannot boot this disk, if it cannot (filesystem features GRUB
   * 2.06 cannot read, a GPT disk, a logical partition): auto then uses direct
   * boot, an explicit grub is an error naming the reason.
   */
  grubBlocked?: string;
  /** Byte offset and MBR number of the root partition. */
  rootStart: number;
  rootNumber: number;
  rootUuid?: string;
  swapUuid?: string;
  swapNumber?: number;
  /** Filesystems besides root on the new disk (their fstab entries are rewritten). */
  mounts?: GuestMount[];
  boot: BootMode;
  dryRun?: boolean;
}

export interface PreparedGuest {
  fixes: GuestFixReport;
  mode: 'grub' | 'direct' | 'none';
  kernel?: KernelInfo;
  cmdline?: string;
  coreSize?: number;
  /** For direct boot: the kernel and initrd bytes, to be written beside the disk. */
  files?: { kernel: Uint8Array; initrd?: Uint8Array };
  warnings: string[];
}

export async function prepareGuest(disk: BlockDevice, opts: PrepareGuestOptions): Promise<PreparedGuest> {
  const fixes = await fixGuest(opts.fsDev, {
    rootDevice: `/dev/vda${opts.rootNumber}`,
    rootUuid: opts.rootUuid,
    swapUuid: opts.swapUuid,
    swapDevice: opts.swapNumber ? `/dev/vda${opts.swapNumber}` : undefined,
    mounts: opts.mounts,
    dryRun: opts.dryRun,
  });
  const warnings = [...fixes.warnings];
  if (!fixes.isGuest) {
    if (opts.boot === 'grub' || opts.boot === 'direct') {
      // An explicit request is an error when it cannot be done (resolveBootMode names what was found).
      resolveBootMode(opts.boot, fixes.kernels, !!findGrub());
    }
    return { fixes, mode: 'none', warnings };
  }
  const grubHost = !!findGrub();
  const resolved = resolveBootMode(opts.boot, fixes.kernels, grubHost && !opts.grubBlocked);
  if (opts.boot === 'auto' && grubHost && opts.grubBlocked && resolved.mode === 'direct') {
    warnings.push(`${opts.grubBlocked}: using direct kernel boot`);
  } else if (!(opts.boot === 'auto' && fixes.kernels.length === 0)) {
    // (With no kernel at all, the fix-ups have said so already.)
    warnings.push(...resolved.warnings);
  }
  if (resolved.mode === 'grub' && opts.grubBlocked) {
    throw new ImageError('unsupported', `--boot grub: ${opts.grubBlocked}`, { value: opts.grubBlocked });
  }
  const kernel = pickBootKernel(fixes.kernels);
  if (resolved.mode === 'none' || !kernel) return { fixes, mode: 'none', warnings };
  // The guest's own arguments for this kernel survive (minus Xen-only consoles), plus what the
  // fix-ups need (net.ifnames=0, rd.driver.pre=): GRUB's config, direct boot and the domain XML use this.
  const extra = [kernel.args ?? '', ...fixes.kernelArgs].join(' ');
  const resume = opts.swapUuid ? `UUID=${opts.swapUuid}` : opts.swapNumber ? `/dev/vda${opts.swapNumber}` : undefined;
  const cmdline = kernelCmdline({ root: opts.rootUuid ? `UUID=${opts.rootUuid}` : `/dev/vda${opts.rootNumber}`, extra, resume });
  const out: PreparedGuest = { fixes, mode: resolved.mode, kernel, cmdline, warnings };
  if (opts.dryRun) return out;
  if (resolved.mode === 'grub') {
    const g = await installGrub(disk, {
      partitionStart: opts.rootStart,
      partitionNumber: opts.rootNumber,
      fsDev: opts.fsDev,
      rootUuid: opts.rootUuid!,
      kernel,
      cmdline,
    });
    warnings.push(...g.warnings);
    out.coreSize = g.coreSize;
  } else {
    out.files = await extractKernel(opts.fsDev, kernel);
  }
  return out;
}
