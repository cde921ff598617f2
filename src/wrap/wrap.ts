/**
 * wrap: a Xen single-filesystem image becomes a partitioned KVM disk.
 *
 * The disk is composed from devices, never assembled in a scratch file:
 *
 *   [0, 1 MiB)            header: MBR (+ GRUB boot code and core image in the gap)   MemoryDevice
 *   [1 MiB, +root)        partition 1: overlay( filter(input fs) ++ zeros )          OverlayDevice
 *   [.., +swap)           partition 2: swap signature page, then nothing stored       MemoryDevice (sparse)
 *   [.., size)            trailing zeros when --size asks for more                    ZeroDevice
 *
 * - The filter hides the input's free blocks (read from its block bitmaps by
 *   libext2fs), so only used blocks are read and copied; old data in free
 *   space never reaches the output.
 * - e2fsck and resize2fs (WebAssembly) and the guest fix-ups write into the
 *   copy-on-write overlay: the input is opened read-only and never changes.
 * - Then one convert pass writes the composed disk to the output format,
 *   reading only allocated extents. The output is written under a temporary
 *   name and renamed at the end.
 */

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { BlockDevice } from '../core/device.js';
import { ConcatDevice } from '../core/concat.js';
import { ImageError } from '../core/errors.js';
import { AllocationFilterDevice } from '../core/filter.js';
import { MemoryDevice } from '../core/memory.js';
import { OverlayDevice } from '../core/overlay.js';
import { SliceDevice } from '../core/slice.js';
import { ZeroDevice } from '../core/zero.js';
import { FileDevice } from '../core/file.js';
import { formatSize } from '../core/size.js';
import { copyDevice } from '../convert/convert.js';
import { noProgress, type Progress } from '../convert/progress.js';
import { createImage, type OpenedImage } from '../formats/index.js';
import { GRUB_UNREADABLE, readExtSuperblock } from '../fs/ext-superblock.js';
import { extUsedRanges } from '../fs/used-blocks.js';
import { e2fsck, resize2fs, type FsckResult } from '../fs/e2fsprogs.js';
import { encodeSwapHeader } from '../fs/swap.js';
import { layoutMbr } from '../partition/layout.js';
import { encodeMbr } from '../partition/mbr.js';
import { randomBytes, randomUUID } from 'node:crypto';
import { OutputFile } from '../core/output.js';
import type { BootMode } from '../guest/boot.js';
import { directBootInstructions } from '../guest/boot.js';
import { prepareGuest, type PreparedGuest } from '../guest/prepare.js';
import type { DiskMapping } from '../guest/domain/convert.js';
import { convertWrapDomain, readGuestFstab } from './domain.js';

export const MIB = 1024 * 1024;

/** The machine type of the domain wrap writes; the <os> element it prints says the same (guest/boot.ts). */
const WRAP_MACHINE = 'pc';

export interface WrapOptions {
  /** Output path (file or host block device). */
  output: string;
  format: string;
  options?: Record<string, string>;
  compress?: boolean;
  /** Swap partition size in bytes; 0 or undefined: no swap partition. */
  swap?: number;
  /** Total disk size. */
  size?: number;
  /** Size of partition 1. */
  rootSize?: number;
  /** Grow the filesystem to fill partition 1 (default true). */
  grow?: boolean;
  force?: boolean;
  progress?: Progress;
  /** Called with each step's name and details, for -v style logs. */
  log?: (line: string) => void;
  /** Guest conversion (fix-ups and boot method); false: plain data (--no-guest). */
  guest?: { boot: BootMode } | false;
  /**
   * A Xen guest definition (xl/xm config or libvirt XML) to convert into
   * `DST.xml`, a KVM libvirt domain pointing at the output.
   */
  domain?: {
    path: string;
    text: string;
    /** Converted images for the Xen disks wrap did not consume, in order (--disk). */
    disks?: DiskMapping[];
    bridges?: Record<string, string>;
    networks?: Record<string, string>;
  };
}

export interface WrapReport {
  source: string;
  'source-format': string;
  output: string;
  'output-format': string;
  'disk-size': number;
  partitions: Array<{ number: number; start: number; size: number; type: string; bootable: boolean; content: string }>;
  filesystem: {
    type: string;
    uuid: string;
    'size-before': number;
    'size-after': number;
    'used-bytes': number;
    fsck: { preen: FsckSummary; final: FsckSummary };
    resized: boolean;
  };
  swap?: { uuid: string; size: number };
  guest?: {
    'is-guest': boolean;
    changes: Array<{ path: string; diff: string }>;
    boot: { mode: string; kernel?: string; initrd?: string; cmdline?: string; 'core-size'?: number };
    /** Direct boot: the files written beside the disk and how to boot them. */
    direct?: { kernel: string; initrd?: string; 'qemu-args': string[]; 'libvirt-os': string };
  };
  domain?: { path: string; warnings: string[]; consumed: string[] };
  'bytes-copied': number;
  'allocated-size': number;
  warnings: string[];
  seconds: number;
}

interface FsckSummary {
  'exit-code': number;
  status: string[];
  output: string;
}

const summary = (r: FsckResult): FsckSummary => ({ 'exit-code': r.exitCode, status: r.status, output: r.output });

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;
const alignDown = (n: number, a: number) => Math.floor(n / a) * a;

/** Work out partition sizes from the options; throws a usage error when they cannot fit. */
export function planLayout(fsBytes: number, opts: Pick<WrapOptions, 'swap' | 'size' | 'rootSize'>): {
  diskSize: number;
  rootSize: number;
  swapSize: number;
} {
  const swapSize = opts.swap ? alignUp(opts.swap, MIB) : 0;
  if (opts.swap && opts.swap < 40 * 1024) throw new ImageError('usage', `--swap ${opts.swap} is too small (at least 40 KiB, as mkswap requires)`);
  if (opts.size !== undefined && opts.rootSize !== undefined) throw new ImageError('usage', '--size and --root-size exclude each other');
  let rootSize = alignUp(fsBytes, MIB);
  if (opts.rootSize !== undefined) {
    if (opts.rootSize < fsBytes) {
      throw new ImageError('usage', `--root-size ${formatSize(opts.rootSize)} is smaller than the filesystem (${formatSize(fsBytes)})`);
    }
    rootSize = alignUp(opts.rootSize, MIB);
  }
  let diskSize = MIB + rootSize + swapSize;
  if (opts.size !== undefined) {
    const room = alignDown(opts.size - MIB - swapSize, MIB);
    if (room < fsBytes) {
      const need = MIB + alignUp(fsBytes, MIB) + swapSize;
      throw new ImageError('usage', `--size ${formatSize(opts.size)} is too small: the filesystem and swap need at least ${formatSize(need)} (${need} bytes)`);
    }
    rootSize = room;
    diskSize = opts.size;
  }
  return { diskSize, rootSize, swapSize };
}

export async function wrapImage(src: OpenedImage, opts: WrapOptions): Promise<WrapReport> {
  const t0 = performance.now();
  const log = opts.log ?? (() => {});
  const progress = opts.progress ?? noProgress;
  const warnings: string[] = [];
  const input = src.image;

  // 1. What is the input?
  const sb = await readExtSuperblock(input);
  if (!sb) throw await notExtError(input, src.path);
  if (sb.size > input.size) {
    throw new ImageError('invalid-format', `the ext filesystem claims ${sb.size} bytes but the image holds only ${input.size}: truncated input?`, {
      path: src.path,
      field: 's_blocks_count',
      value: sb.blocksCount,
    });
  }
  const unreadable = sb.features.filter((f) => GRUB_UNREADABLE.includes(f));
  if (unreadable.length) {
    warnings.push(`the filesystem has ${unreadable.join(', ')}: GRUB 2.06 cannot read it; it needs direct kernel boot, or the feature(s) disabled`);
  }
  if (sb.features.includes('needs_recovery')) warnings.push('the filesystem journal needs recovery (the guest was not shut down cleanly): e2fsck replays it in the output');

  // 2. Layout.
  const plan = planLayout(sb.size, opts);
  const specs = [{ size: plan.rootSize, type: 0x83, bootable: true }];
  if (plan.swapSize) specs.push({ size: plan.swapSize, type: 0x82, bootable: false });
  const parts = layoutMbr(plan.diskSize, specs, { align: MIB });
  const rootPart = parts[0]!;
  const swapPart = parts[1];
  log(`layout: disk ${formatSize(plan.diskSize)}, root ${formatSize(rootPart.size)} at ${rootPart.start}${swapPart ? `, swap ${formatSize(swapPart.size)} at ${swapPart.start}` : ''}`);

  // 3. Compose the disk.
  const fsView = new SliceDevice(input, 0, sb.size);
  progress.start('scan', 1);
  const used = await extUsedRanges(fsView);
  const usedBytes = used.reduce((s, r) => s + r.length, 0);
  progress.finish();
  log(`filesystem: ${sb.type}, ${formatSize(sb.size)}, ${formatSize(usedBytes)} in use`);
  const filtered = new AllocationFilterDevice(fsView, used);
  const rootBase = rootPart.size > sb.size ? new ConcatDevice([filtered, new ZeroDevice(rootPart.size - sb.size)]) : filtered;
  const root = new OverlayDevice(rootBase, await scratchStore(opts.output));
  const header = new MemoryDevice(rootPart.start);
  const mbr = encodeMbr(
    { signature: randomBytes(4).readUInt32LE(0), entries: [...parts.map((p) => ({ bootable: p.bootable, type: p.type, start: p.start, size: p.size })), undefined, undefined].slice(0, 4), bootCode: new Uint8Array(440) },
    plan.diskSize,
  );
  await header.write(mbr, 0);
  const devices: BlockDevice[] = [header, root];
  let swapUuid: string | undefined;
  if (swapPart) {
    if (swapPart.start !== rootPart.start + rootPart.size) devices.push(new ZeroDevice(swapPart.start - rootPart.start - rootPart.size));
    const swap = new MemoryDevice(swapPart.size);
    swapUuid = randomUUID();
    await swap.write(encodeSwapHeader(swapPart.size, { uuid: swapUuid }), 0);
    devices.push(swap);
  }
  const used2 = devices.reduce((s, d) => s + d.size, 0);
  if (used2 < plan.diskSize) devices.push(new ZeroDevice(plan.diskSize - used2));
  const disk = new ConcatDevice(devices);

  // 4. Filesystem: repair what -p repairs, grow, check again read-only.
  progress.start('fsck', 1);
  const preen = await e2fsck(root, { mode: 'preen' });
  progress.finish();
  log(`e2fsck -fp: exit ${preen.exitCode} (${preen.status.join(', ')})`);
  if (preen.exitCode & ~3) {
    throw new ImageError('corrupt', `e2fsck could not repair the filesystem automatically (exit ${preen.exitCode}); run 'e2fsck -f' on a copy of the input:\n${preen.output.trim()}`, {
      path: src.path,
    });
  }
  if (preen.exitCode & 1) warnings.push(`e2fsck repaired the filesystem in the output (the input is unchanged):\n${preen.output.trim()}`);
  let resized = false;
  let sizeAfter = sb.size;
  if ((opts.grow ?? true) && rootPart.size - sb.size >= MIB) {
    progress.start('resize', 1);
    const r = await resize2fs(root);
    progress.finish();
    if (r.exitCode !== 0) throw new ImageError('corrupt', `resize2fs failed (exit ${r.exitCode}):\n${r.output.trim()}`, { path: src.path });
    resized = r.newSize !== r.oldSize;
    sizeAfter = r.newSize;
    log(`resize2fs: ${formatSize(r.oldSize)} -> ${formatSize(r.newSize)}`);
  }

  // 5. The guest: fstab, consoles, boot configs; GRUB into the header or a kernel for direct boot.
  let guest: PreparedGuest | undefined;
  const fstab = opts.domain ? await readGuestFstab(root) : null;
  if (opts.guest) {
    guest = await prepareGuest(disk, {
      fsDev: root,
      rootStart: rootPart.start,
      rootNumber: rootPart.number,
      rootUuid: sb.uuid,
      swapUuid,
      swapNumber: swapPart?.number,
      boot: opts.guest.boot,
      grubBlocked: unreadable.length ? `GRUB 2.06 cannot read a filesystem with ${unreadable.join(', ')}` : undefined,
    });
    warnings.push(...guest.warnings);
    log(`guest: ${guest.fixes.changes.length} file(s) changed, boot ${guest.mode}`);
  }

  const final = await e2fsck(root, { mode: 'check' });
  log(`e2fsck -fn: exit ${final.exitCode}`);
  if (final.exitCode !== 0) {
    throw new ImageError('corrupt', `the filesystem is still not clean after repair (e2fsck -fn exit ${final.exitCode}):\n${final.output.trim()}`, {
      path: src.path,
    });
  }

  // 6. Write the disk, then the files beside it; all appear together at the end.
  const created = await createImage(
    opts.output,
    opts.format,
    { size: plan.diskSize, options: opts.options ?? {}, compress: opts.compress },
    { force: opts.force, inputs: [src.path] },
  );
  let copied = 0;
  const sides: OutputFile[] = [];
  let direct: { kernel: string; initrd?: string } | undefined;
  let domain: WrapReport['domain'];
  try {
    const info = await created.image.info();
    const stats = await copyDevice(disk, created.image, {
      targetGranularity: info['cluster-size'],
      targetIsZero: created.zeroInit,
      concurrency: opts.compress ? 8 : 4,
      progress,
    });
    copied = stats.writtenBytes;
    await created.image.flush();
    await created.image.close();
    if (guest?.files) {
      direct = {
        kernel: `${path.resolve(opts.output)}.vmlinuz`,
        initrd: guest.files.initrd ? `${path.resolve(opts.output)}.initrd` : undefined,
      };
      sides.push(await sideFile(direct.kernel, guest.files.kernel, opts.force));
      if (direct.initrd) sides.push(await sideFile(direct.initrd, guest.files.initrd!, opts.force));
    }
    if (opts.domain) {
      const converted = convertWrapDomain({
        text: opts.domain.text,
        sourceName: opts.domain.path,
        disk: { path: path.resolve(opts.output), format: opts.format },
        root: { source: src.path, number: rootPart.number },
        swap: swapPart ? { number: swapPart.number } : undefined,
        parts: [],
        fstab,
        extraDisks: opts.domain.disks,
        bridges: opts.domain.bridges,
        networks: opts.domain.networks,
        boot: {
          boot: guest?.mode === 'direct' ? 'direct' : 'grub',
          kernel: direct?.kernel,
          initrd: direct?.initrd,
          cmdline: direct ? guest?.cmdline : undefined,
          machine: WRAP_MACHINE,
        },
      });
      domain = { path: `${opts.output}.xml`, warnings: converted.warnings, consumed: converted.consumed };
      sides.push(await sideFile(domain.path, new TextEncoder().encode(converted.xml), opts.force));
    }
    await created.output.commit();
    for (const s of sides) await s.commit();
  } catch (e) {
    await created.image.close().catch(() => {});
    await created.output.abort();
    for (const s of sides) await s.abort();
    throw e;
  } finally {
    await root.close();
  }
  let allocated = 0;
  try {
    allocated = fs.statSync(opts.output).blocks * 512;
  } catch {
    /* block device */
  }
  return {
    source: src.path,
    'source-format': src.driver.name,
    output: opts.output,
    'output-format': opts.format,
    'disk-size': plan.diskSize,
    partitions: parts.map((p) => ({
      number: p.number,
      start: p.start,
      size: p.size,
      type: p.type.toString(16),
      bootable: p.bootable,
      content: p === rootPart ? sb.type : 'swap',
    })),
    filesystem: {
      type: sb.type,
      uuid: sb.uuid,
      'size-before': sb.size,
      'size-after': sizeAfter,
      'used-bytes': usedBytes,
      fsck: { preen: summary(preen), final: summary(final) },
      resized,
    },
    ...(swapPart && swapUuid ? { swap: { uuid: swapUuid, size: swapPart.size } } : {}),
    ...(guest
      ? {
          guest: {
            'is-guest': guest.fixes.isGuest,
            changes: guest.fixes.changes.map((c) => ({ path: c.path, diff: c.diff })),
            boot: { mode: guest.mode, kernel: guest.kernel?.kernel, initrd: guest.kernel?.initrd, cmdline: guest.cmdline, 'core-size': guest.coreSize },
            ...(direct && guest.cmdline
              ? (() => {
                  const i = directBootInstructions({ disk: path.resolve(opts.output), format: opts.format, kernelPath: direct.kernel, initrdPath: direct.initrd, cmdline: guest.cmdline });
                  return { direct: { kernel: direct.kernel, initrd: direct.initrd, 'qemu-args': i.qemuArgs, 'libvirt-os': i.libvirtOs } };
                })()
              : {}),
          },
        }
      : {}),
    ...(domain ? { domain } : {}),
    'bytes-copied': copied,
    'allocated-size': allocated,
    warnings,
    seconds: (performance.now() - t0) / 1000,
  };
}

/**
 * Where the overlay keeps changed blocks. e2fsck and the fix-ups change a
 * few MiB; resize2fs to a much larger size writes new group metadata, which
 * can reach hundreds of MiB: keep it in a sparse scratch file beside the
 * output (removed at close), not in memory.
 */
async function scratchStore(output: string): Promise<BlockDevice> {
  let dir = path.dirname(path.resolve(output));
  try {
    if (!fs.statSync(dir).isDirectory() || fs.statSync(output).isBlockDevice()) dir = (await import('node:os')).tmpdir();
  } catch {
    /* output does not exist yet: its directory is fine */
  }
  const file = path.join(dir, `.imgtool-overlay-${randomBytes(6).toString('hex')}.tmp`);
  const dev = await FileDevice.open(file, { create: true });
  // Unlink at once: the open descriptor keeps the data; nothing is left behind on a crash.
  fs.unlinkSync(file);
  return dev;
}

/** A small file written beside the output, atomically, committed with it. */
async function sideFile(file: string, data: Uint8Array, force?: boolean): Promise<OutputFile> {
  const out = await OutputFile.create(file, { force });
  try {
    await out.device.write(data, 0);
  } catch (e) {
    await out.abort();
    throw e;
  }
  return out;
}

async function notExtError(input: BlockDevice, file: string): Promise<ImageError> {
  const head = new Uint8Array(Math.min(input.size, 4096));
  await input.read(head, 0);
  const hasMbr = head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa;
  const gpt = head.length >= 520 && Buffer.from(head.subarray(512, 520)).toString('latin1') === 'EFI PART';
  if (gpt || hasMbr) {
    return new ImageError(
      'usage',
      `${file} already has a partition table (${gpt ? 'GPT' : 'MBR'}): wrap takes a bare ext2/3/4 filesystem; see 'imgtool part list ${file}'`,
      { path: file },
    );
  }
  return new ImageError('invalid-format', `${file} is not an ext2/3/4 filesystem (no ext superblock magic at byte 1080); see 'imgtool part list ${file}'`, {
    path: file,
    field: 's_magic',
    offset: 1080,
  });
}
