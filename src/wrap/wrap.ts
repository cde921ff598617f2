/**
 * wrap: a Xen single-filesystem image becomes a partitioned KVM disk.
 *
 * The disk is composed from devices, never assembled in a scratch file:
 *
 *   [0, 1 MiB)            header: MBR (+ GRUB boot code and core image in the gap)   MemoryDevice
 *   [1 MiB, +root)        partition 1: overlay( filter(input fs) ++ zeros )          OverlayDevice
 *   [.., +swap)           partition 2: swap signature page, then nothing stored       MemoryDevice (sparse)
 *   [.., +part)           --part filesystems, each as partition 1 is: partitions 3, 4,
 *                         or, with more than four in all, partition 3 and logical
 *                         partitions 5, 6, ... in extended partition 4, each after
 *                         its EBR sector (1 MiB before it)                            MemoryDevice
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
import { randomBytes, randomUUID } from 'node:crypto';
import type { BlockDevice } from '../core/device.js';
import { ConcatDevice } from '../core/concat.js';
import { ImageError } from '../core/errors.js';
import { MemoryDevice } from '../core/memory.js';
import { ZeroDevice } from '../core/zero.js';
import { FileDevice } from '../core/file.js';
import { formatSize } from '../core/size.js';
import { OutputFile } from '../core/output.js';
import { copyDevice } from '../convert/convert.js';
import { noProgress, type Progress } from '../convert/progress.js';
import { createImage, type OpenedImage } from '../formats/index.js';
import { encodeSwapHeader } from '../fs/swap.js';
import { type DosLayout, type PartSpec, type PlacedPart, layoutDos } from '../partition/layout.js';
import { SECTOR, encodeMbr } from '../partition/mbr.js';
import { encodeEbrChain } from '../partition/ebr.js';
import type { BootMode } from '../guest/boot.js';
import { directBootInstructions } from '../guest/boot.js';
import { prepareGuest, type PreparedGuest } from '../guest/prepare.js';
import type { DiskMapping } from '../guest/domain/convert.js';
import { type WrapDomainResult, convertWrapDomain, readGuestFstab } from './domain.js';
import { type FsckResult, rawHostFile } from '../fs/e2fsprogs.js';
import { type FsckSummary, type RepairResult, type StagedFs, finalCheck, fsckSummary, inspectFs, repairAndGrow, stageFs } from './filesystem.js';

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
  /**
   * Extra filesystems (--part MOUNTPOINT=IMAGE[:SIZE]), each into its own
   * partition, checked and grown as root is; the guest's fstab names them by UUID.
   */
  parts?: Array<{ mountpoint: string; image: OpenedImage; size?: number }>;
  domain?: {
    path: string;
    text: string;
    /** Converted images for the Xen disks wrap did not consume, in order (--disk). */
    disks?: DiskMapping[];
    bridges?: Record<string, string>;
    networks?: Record<string, string>;
  };
}

export interface FsReport {
  type: string;
  uuid: string;
  'size-before': number;
  'size-after': number;
  'used-bytes': number;
  fsck: { preen: FsckSummary; final: FsckSummary };
  resized: boolean;
}

function fsReport(sb: { type: string; uuid: string; size: number }, usedBytes: number, fix: RepairResult, final: FsckResult): FsReport {
  return {
    type: sb.type,
    uuid: sb.uuid,
    'size-before': sb.size,
    'size-after': fix.sizeAfter,
    'used-bytes': usedBytes,
    fsck: { preen: fsckSummary(fix.preen), final: fsckSummary(final) },
    resized: fix.resized,
  };
}

export interface WrapReport {
  source: string;
  'source-format': string;
  output: string;
  'output-format': string;
  'disk-size': number;
  partitions: Array<{ number: number; start: number; size: number; type: string; bootable: boolean; content: string }>;
  filesystem: FsReport;
  /** The --part filesystems. */
  parts?: Array<FsReport & { mountpoint: string; source: string; partition: number; device: string }>;
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

const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;
const alignDown = (n: number, a: number) => Math.floor(n / a) * a;

/**
 * Work out partition sizes from the options; throws a usage error when they
 * cannot fit. `extra` are the sizes of the --part partitions (MiB-aligned
 * bytes): with more than four partitions in all, each logical one costs one
 * more MiB for its EBR.
 */
export function planLayout(
  fsBytes: number,
  opts: Pick<WrapOptions, 'swap' | 'size' | 'rootSize'>,
  extra: number[] = [],
): {
  diskSize: number;
  rootSize: number;
  swapSize: number;
} {
  const swapSize = opts.swap ? alignUp(opts.swap, MIB) : 0;
  if (opts.swap && opts.swap < 40 * 1024) throw new ImageError('usage', `--swap ${opts.swap} is too small (at least 40 KiB, as mkswap requires)`);
  if (opts.size !== undefined && opts.rootSize !== undefined) throw new ImageError('usage', '--size and --root-size exclude each other');
  const count = 1 + (swapSize ? 1 : 0) + extra.length;
  const fixed = MIB + swapSize + extra.reduce((s, x) => s + x, 0) + (count > 4 ? (count - 3) * MIB : 0);
  let rootSize = alignUp(fsBytes, MIB);
  if (opts.rootSize !== undefined) {
    if (opts.rootSize < fsBytes) {
      throw new ImageError('usage', `--root-size ${formatSize(opts.rootSize)} is smaller than the filesystem (${formatSize(fsBytes)})`);
    }
    rootSize = alignUp(opts.rootSize, MIB);
  }
  let diskSize = fixed + rootSize;
  if (opts.size !== undefined) {
    const room = alignDown(opts.size - fixed, MIB);
    if (room < fsBytes) {
      const need = fixed + alignUp(fsBytes, MIB);
      throw new ImageError(
        'usage',
        `--size ${formatSize(opts.size)} is too small: the filesystem${extra.length ? 's' : ''} and swap need at least ${formatSize(need)} (${need} bytes)`,
      );
    }
    rootSize = room;
    diskSize = opts.size;
  }
  return { diskSize, rootSize, swapSize };
}

/** An extra filesystem's partition size: at least the filesystem, SIZE when --part asks for more. */
export function partSize(fsBytes: number, part: { mountpoint: string; size?: number }): number {
  if (part.size !== undefined && part.size < fsBytes) {
    throw new ImageError('usage', `--part ${part.mountpoint}: size ${formatSize(part.size)} is smaller than its filesystem (${formatSize(fsBytes)})`, { value: part.size });
  }
  return alignUp(Math.max(fsBytes, part.size ?? 0), MIB);
}

/** A region of the composed disk. */
interface Piece {
  offset: number;
  dev: BlockDevice;
}

/** Concatenate pieces at their offsets, zeros between them and up to `size`. */
function composeDisk(size: number, pieces: Piece[]): ConcatDevice {
  const devices: BlockDevice[] = [];
  let pos = 0;
  for (const p of [...pieces].sort((a, b) => a.offset - b.offset)) {
    if (p.offset < pos) throw new Error(`wrap: disk pieces overlap at byte ${p.offset}`);
    if (p.offset > pos) devices.push(new ZeroDevice(p.offset - pos));
    devices.push(p.dev);
    pos = p.offset + p.dev.size;
  }
  if (pos > size) throw new Error(`wrap: disk pieces end at ${pos}, beyond the disk (${size})`);
  if (pos < size) devices.push(new ZeroDevice(size - pos));
  return new ConcatDevice(devices);
}

/** The partition table sectors: the MBR (in the header before partition 1) and the EBR chain. */
async function tablePieces(diskSize: number, layout: DosLayout, headerSize: number): Promise<{ header: MemoryDevice; ebrs: Piece[] }> {
  const primary = layout.parts.filter((p) => p.number <= 4);
  if (layout.extended) primary.push(layout.extended);
  const entries = [1, 2, 3, 4].map((n) => {
    const p = primary.find((x) => x.number === n);
    return p && { bootable: p.bootable, type: p.type, start: p.start, size: p.size };
  });
  const header = new MemoryDevice(headerSize);
  await header.write(encodeMbr({ signature: randomBytes(4).readUInt32LE(0), entries, bootCode: new Uint8Array(440) }, diskSize), 0);
  const ebrs: Piece[] = [];
  if (layout.extended) {
    const logicals = layout.parts.filter((p) => p.number > 4).map((p) => ({ ebr: p.ebr!, start: p.start, size: p.size, type: p.type }));
    for (const e of encodeEbrChain(logicals, layout.extended, diskSize)) {
      const dev = new MemoryDevice(SECTOR);
      await dev.write(e.sector, 0);
      ebrs.push({ offset: e.offset, dev });
    }
  }
  return { header, ebrs };
}

export async function wrapImage(src: OpenedImage, opts: WrapOptions): Promise<WrapReport> {
  const t0 = performance.now();
  const log = opts.log ?? (() => {});
  const progress = opts.progress ?? noProgress;
  const warnings: string[] = [];
  const grow = opts.grow ?? true;

  // 1. What are the inputs?
  const { sb, grubUnreadable: unreadable } = await inspectFs(src.image, src.path, warnings);
  if (unreadable.length) {
    warnings.push(`the filesystem has ${unreadable.join(', ')}: GRUB 2.06 cannot read it; it needs direct kernel boot, or the feature(s) disabled`);
  }
  const extras = [];
  for (const p of opts.parts ?? []) {
    const { sb: psb } = await inspectFs(p.image.image, p.image.path, warnings);
    extras.push({ ...p, sb: psb, partSize: partSize(psb.size, p) });
  }
  checkMountpoints(extras.map((p) => p.mountpoint));

  // 2. Layout: root 1, swap 2, then each --part (logical partitions from 5 when more than four in all).
  const plan = planLayout(sb.size, opts, extras.map((p) => p.partSize));
  const specs: PartSpec[] = [{ size: plan.rootSize, type: 0x83, bootable: true }];
  if (plan.swapSize) specs.push({ size: plan.swapSize, type: 0x82, bootable: false });
  for (const p of extras) specs.push({ size: p.partSize, type: 0x83, bootable: false });
  const layout = layoutDos(plan.diskSize, specs, { align: MIB });
  const parts = layout.parts;
  const rootPart = parts[0]!;
  const swapPart = plan.swapSize ? parts[1] : undefined;
  const extraParts = parts.slice(plan.swapSize ? 2 : 1);
  log(`layout: disk ${formatSize(plan.diskSize)}, ${parts.map((p) => `${p.number}: ${formatSize(p.size)} at ${p.start}`).join(', ')}`);

  // 3. Compose the disk.
  // Every overlay's scratch store, closed (and so gone: they are unlinked) however wrap ends.
  const stores: BlockDevice[] = [];
  const store = async () => {
    const s = await scratchStore(opts.output);
    stores.push(s);
    return s;
  };
  let checks: Promise<FsckResult[]> | undefined;
  try {
    const root = await stageFs(src.image, sb, rootPart.size, await store(), progress, rawHostFile(src.driver.name, src.file, 0));
    log(`filesystem: ${sb.type}, ${formatSize(sb.size)}, ${formatSize(root.usedBytes)} in use`);
    const staged: Array<(typeof extras)[number] & { part: PlacedPart; staged: StagedFs }> = [];
    for (const [i, p] of extras.entries()) {
      staged.push({ ...p, part: extraParts[i]!, staged: await stageFs(p.image.image, p.sb, extraParts[i]!.size, await store(), progress, rawHostFile(p.image.driver.name, p.image.file, 0)) });
    }
    const { header, ebrs } = await tablePieces(plan.diskSize, layout, rootPart.start);
    const pieces: Piece[] = [{ offset: 0, dev: header }, { offset: rootPart.start, dev: root.dev }, ...ebrs];
    let swapUuid: string | undefined;
    if (swapPart) {
      const swap = new MemoryDevice(swapPart.size);
      swapUuid = randomUUID();
      await swap.write(encodeSwapHeader(swapPart.size, { uuid: swapUuid }), 0);
      pieces.push({ offset: swapPart.start, dev: swap });
    }
    for (const s of staged) pieces.push({ offset: s.part.start, dev: s.staged.dev });
    const disk = composeDisk(plan.diskSize, pieces);

    // 4. Filesystems: repair what -p repairs, grow.
    const rootFix = await repairAndGrow(root.dev, sb, { file: src.path, grow, progress, log, warnings });
    const extraFix: RepairResult[] = [];
    for (const s of staged) extraFix.push(await repairAndGrow(s.staged.dev, s.sb, { file: s.image.path, grow, progress, log, warnings }));

    // 5. The guest: fstab, consoles, boot configs; GRUB into the header or a kernel for direct boot.
    let guest: PreparedGuest | undefined;
    const fstab = opts.domain ? await readGuestFstab(root.dev) : null;
    if (opts.guest) {
      guest = await prepareGuest(disk, {
        fsDev: root.dev,
        rootStart: rootPart.start,
        rootNumber: rootPart.number,
        rootUuid: sb.uuid,
        swapUuid,
        swapNumber: swapPart?.number,
        mounts: staged.map((s) => ({ mountpoint: s.mountpoint, uuid: s.sb.uuid, device: `/dev/vda${s.part.number}` })),
        boot: opts.guest.boot,
        grubBlocked: unreadable.length ? `GRUB 2.06 cannot read a filesystem with ${unreadable.join(', ')}` : undefined,
      });
      warnings.push(...guest.warnings);
      log(`guest: ${guest.fixes.changes.length} file(s) changed, boot ${guest.mode}`);
    }

    // 6. Read-only checks: every filesystem must be clean now. Nothing
    // writes to the overlays any more, so the checks (e2fsck -fn, in its
    // worker thread) run while step 7 writes the disk, on the other core;
    // the output is committed only once every check has passed, and removed
    // if one fails.
    checks = (async () => {
      const all = [await finalCheck(root.dev, src.path, log)];
      for (const s of staged) all.push(await finalCheck(s.staged.dev, s.image.path, log));
      return all;
    })();
    checks.catch(() => {}); // awaited before the commit (and in `finally`)

    // 7. Write the disk, then the files beside it; all appear together at the end.
    const out = await writeOutputs(src, opts, disk, plan.diskSize, guest, checks, (direct) =>
      opts.domain
        ? convertWrapDomain({
            text: opts.domain.text,
            sourceName: opts.domain.path,
            disk: { path: path.resolve(opts.output), format: opts.format },
            root: { source: src.path, number: rootPart.number },
            swap: swapPart ? { number: swapPart.number } : undefined,
            parts: staged.map((s) => ({ mountpoint: s.mountpoint, source: s.image.path, number: s.part.number })),
            fstab,
            extraDisks: opts.domain.disks,
            bridges: opts.domain.bridges,
            networks: opts.domain.networks,
            boot: {
              boot: guest?.mode === 'direct' ? 'direct' : 'grub',
              kernel: direct?.kernel,
              initrd: direct?.initrd,
              cmdline: direct ? guest?.cmdline : undefined,
              grubCmdline: guest?.mode === 'grub' ? guest.cmdline : undefined,
              machine: WRAP_MACHINE,
            },
          })
        : undefined,
    );
    const direct = out.direct;
    const [final, ...extraFinal] = await checks;
    return {
      source: src.path,
      'source-format': src.driver.name,
      output: opts.output,
      'output-format': opts.format,
      'disk-size': plan.diskSize,
      partitions: [...parts, ...(layout.extended ? [layout.extended] : [])]
        .sort((a, b) => a.number - b.number)
        .map((p) => ({
          number: p.number,
          start: p.start,
          size: p.size,
          type: p.type.toString(16),
          bootable: p.bootable,
          content: p === rootPart ? sb.type : p === swapPart ? 'swap' : p === layout.extended ? 'extended' : `${staged.find((s) => s.part === p)!.sb.type} ${staged.find((s) => s.part === p)!.mountpoint}`,
        })),
      filesystem: fsReport(sb, root.usedBytes, rootFix, final),
      ...(staged.length
        ? {
            parts: staged.map((s, i) => ({
              mountpoint: s.mountpoint,
              source: s.image.path,
              partition: s.part.number,
              device: `/dev/vda${s.part.number}`,
              ...fsReport(s.sb, s.staged.usedBytes, extraFix[i]!, extraFinal[i]!),
            })),
          }
        : {}),
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
      ...(out.domain ? { domain: out.domain } : {}),
      'bytes-copied': out.copied,
      'allocated-size': out.allocated,
      warnings,
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    // A check still reading an overlay (the copy failed first) ends before its store closes.
    await checks?.catch(() => {});
    for (const st of stores) await st.close();
  }
}

/** Mount points of --part: absolute, not '/', each once. */
function checkMountpoints(mps: string[]): void {
  for (const [i, m] of mps.entries()) {
    if (!/^\/[^\s]+$/.test(m) || m === '/' || /\/$/.test(m) || /(^|\/)\.\.?(\/|$)/.test(m)) {
      throw new ImageError('usage', `--part ${m}: the mount point must be an absolute path other than / (e.g. /var)`, { value: m });
    }
    if (mps.indexOf(m) !== i) throw new ImageError('usage', `--part ${m} is given twice`, { value: m });
  }
}

/** Write the disk and the files beside it (kernel, initrd, domain XML); commit them together. */
async function writeOutputs(
  src: OpenedImage,
  opts: WrapOptions,
  disk: BlockDevice,
  diskSize: number,
  guest: PreparedGuest | undefined,
  checked: Promise<unknown>,
  makeDomain: (direct: { kernel: string; initrd?: string } | undefined) => WrapDomainResult | undefined,
): Promise<{ copied: number; allocated: number; direct?: { kernel: string; initrd?: string }; domain?: WrapReport['domain'] }> {
  const created = await createImage(
    opts.output,
    opts.format,
    { size: diskSize, options: opts.options ?? {}, compress: opts.compress },
    { force: opts.force, inputs: [src.path, ...(opts.parts ?? []).map((p) => p.image.path)] },
  );
  let copied = 0;
  const sides: OutputFile[] = [];
  let direct: { kernel: string; initrd?: string } | undefined;
  let domain: WrapReport['domain'];
  try {
    const info = await created.image.info();
    // A failed check stops the copy early; its error is the one reported.
    const stop = new AbortController();
    checked.catch(() => stop.abort());
    const stats = await copyDevice(disk, created.image, {
      targetGranularity: info['cluster-size'],
      targetIsZero: created.zeroInit,
      concurrency: opts.compress ? 8 : 4,
      orderedWrites: !opts.compress,
      progress: opts.progress ?? noProgress,
      signal: stop.signal,
    }).catch(async (e: unknown) => {
      throw (await checked.then(() => undefined, (c: unknown) => c)) ?? e;
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
    const converted = makeDomain(direct);
    if (converted) {
      domain = { path: `${opts.output}.xml`, warnings: converted.warnings, consumed: converted.consumed };
      sides.push(await sideFile(domain.path, new TextEncoder().encode(converted.xml), opts.force));
    }
    // The read-only checks ran during the copy: nothing is committed unless they all passed.
    await checked;
    await created.output.commit();
    for (const s of sides) await s.commit();
  } catch (e) {
    await created.image.close().catch(() => {});
    await created.output.abort();
    for (const s of sides) await s.abort();
    throw e;
  }
  let allocated = 0;
  try {
    allocated = fs.statSync(opts.output).blocks * 512;
  } catch {
    /* block device */
  }
  return { copied, allocated, direct, domain };
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
