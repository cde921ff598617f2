/**
 * `imgtool part list | create | mkswap`: read partition tables of any image,
 * write MBR tables, write a swap signature. Thin: parse, call
 * src/partition and src/fs, print.
 */

import * as fs from 'node:fs';
import { type CliContext, type CommandSpec, OUTPUT_OPTION, flag, list, printJson, str, wantsJson, warn } from '../command.js';
import { BACKING_OPTIONS, DISK_OPTION, FORCE_OPTION, FORMAT_OPTION, openFromArgs } from '../common.js';
import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { SliceDevice } from '../../core/slice.js';
import { formatSize, parseSize } from '../../core/size.js';
import { createImage, formatFromExtension } from '../../formats/index.js';
import type { Image } from '../../formats/types.js';
import { type ContentInfo } from '../../fs/detect.js';
import { writeSwap } from '../../fs/swap.js';
import { type DiskInfo, inspectDisk } from '../../partition/inspect.js';
import { type PartSpec, type PlacedPart, layoutMbr, writeMbrTable } from '../../partition/layout.js';
import { formatSignature } from '../../partition/mbr.js';
import { mbrTypeCode, mbrTypeName } from '../../partition/types.js';

// ------------------------------------------------------------------ list

function describeContent(c: ContentInfo): string {
  if (c.type === 'unknown') return '-';
  const bits: string[] = [c.type];
  if (c.type === 'swap' && c.version) bits.push(`v${c.version}`);
  if (c.type === 'vfat' && c.version) bits.push(c.version);
  if (c.label !== undefined) bits.push(`LABEL=${JSON.stringify(c.label)}`);
  if (c.uuid) bits.push(`UUID=${c.uuid}`);
  return bits.join(' ');
}

function renderDisk(path: string, d: DiskInfo): string {
  const lines: string[] = [];
  lines.push(`Disk ${path}: ${formatSize(d.size)}, ${d.size} bytes, ${Math.floor(d.size / 512)} sectors`);
  lines.push(`Sector size: ${d.sectorSize} bytes`);
  if (d.scheme === 'none') {
    lines.push('Partition table: none');
    if (d.content) {
      lines.push(`Content: ${describeContent(d.content)}`);
      const c = d.content;
      if (c.blockSize) lines.push(`Block size: ${c.blockSize}`);
      if (c.features?.length) lines.push(`Features: ${c.features.join(' ')}`);
    }
  } else {
    lines.push(`Partition table: ${d.scheme === 'mbr' ? 'MBR (dos)' : 'GPT'}`);
    if (d.diskId) lines.push(`Disk identifier: ${d.diskId}`);
    lines.push('');
    const gpt = d.scheme === 'gpt';
    const head = ['#', 'Boot', 'Start', 'End', 'Sectors', 'Size', 'Type', gpt ? 'Name' : 'Kind', 'Content'];
    const rows = d.partitions.map((p) => [
      String(p.number),
      p.bootable ? '*' : '',
      String(p.startSector),
      String(p.endSector),
      String(p.sectors),
      formatSize(p.size),
      gpt ? p.typeName : `${p.type} ${p.typeName}`,
      gpt ? (p.name ?? '') : p.kind,
      p.kind === 'extended' ? '' : describeContent(p.content),
    ]);
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const right = new Set([2, 3, 4, 5]);
    const fmt = (r: string[]) =>
      r.map((c, i) => (i === r.length - 1 ? c : right.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
    lines.push(fmt(head));
    rows.forEach((r) => lines.push(fmt(r)));
    if (!d.partitions.length) lines.push('(no partitions)');
  }
  return lines.join('\n') + '\n';
}

function printNotes(ctx: CliContext, d: { warnings: string[]; hint?: string }): void {
  for (const w of d.warnings) warn(ctx, w);
  if (d.hint) warn(ctx, d.hint, 'hint');
}

export const partListCommand: CommandSpec = {
  name: 'part list',
  summary: 'show the partition table (MBR, GPT or none) and what each partition holds',
  usage: 'part list [-f FMT] [--disk N] [--output json] IMG',
  positionals: { min: 1, max: 1 },
  options: [FORMAT_OPTION, DISK_OPTION, OUTPUT_OPTION, ...BACKING_OPTIONS],
  details: `Reads an image of any format (raw, qcow2, VDI, ...) read-only. For each partition: number,
start and end (sectors; bytes in JSON), size, type code and name, boot flag, kind (primary,
extended, logical), and what it holds (ext2/3/4, swap, XFS, Btrfs, FAT, NTFS, LVM2 PV, LUKS).
An image without a partition table is described as a whole.

JSON fields: scheme ('mbr', 'gpt', 'none'), diskId, size, partitions[] with number, start,
end (exclusive), size, startSector, endSector (inclusive), sectors, type ('83' as sfdisk
spells it, or a GPT type GUID), typeName, bootable, kind, name/uuid/attrs (GPT), content
{type, label, uuid, version, blockSize, features, size}, warnings[], hint.

Damaged or hostile tables (looping EBR chains, partitions past the end of the disk, bad GPT
CRCs) are reported as warnings; a damaged primary GPT is read from its backup.

Examples:
  imgtool part list disk.qcow2
  imgtool part list --output json xen-root.img

Exit codes: 0 success (also with warnings); 2 usage; 3 unreadable image; 5 I/O error.`,
  async run(args, ctx) {
    const path = args.positionals[0]!;
    const json = wantsJson(args);
    const opened = await openFromArgs(path, args);
    try {
      const info = await inspectDisk(opened.image);
      if (json) printJson(ctx, info);
      else {
        ctx.stdout.write(renderDisk(path, info));
        printNotes(ctx, info);
      }
    } finally {
      await opened.image.close();
    }
    return 0;
  },
};

// ------------------------------------------------------------------ create

/** `SIZE:TYPE[:boot]`, `rest:TYPE`, or `SIZE` (Linux). */
export function parsePartArg(text: string): PartSpec {
  const parts = text.split(':');
  if (parts.length < 1 || parts.length > 3 || !parts[0]) {
    throw new ImageError('usage', `--part '${text}' is not SIZE[:TYPE[:boot]] (examples: 512M:linux:boot, 1G:swap, rest:83)`, { value: text });
  }
  const [sizeText, typeText, flagText] = parts as [string, string | undefined, string | undefined];
  const size = sizeText.toLowerCase() === 'rest' ? 'rest' : parseSize(sizeText, `--part '${text}' size`);
  if (flagText !== undefined && flagText.toLowerCase() !== 'boot' && flagText !== '*') {
    throw new ImageError('usage', `--part '${text}': the third field can only be 'boot'`, { value: text });
  }
  return { size, type: typeText || 'linux', bootable: flagText !== undefined };
}

function layoutJson(diskSize: number, signature: number, parts: PlacedPart[]) {
  return {
    scheme: 'mbr',
    diskId: formatSignature(signature),
    size: diskSize,
    partitions: parts.map((p) => ({
      number: p.number,
      start: p.start,
      end: p.start + p.size,
      size: p.size,
      startSector: p.start / 512,
      endSector: (p.start + p.size) / 512 - 1,
      sectors: p.size / 512,
      type: mbrTypeCode(p.type),
      typeName: mbrTypeName(p.type),
      bootable: p.bootable,
    })),
  };
}

async function refuseExisting(dev: BlockDevice, path: string): Promise<void> {
  const d = await inspectDisk(dev, { content: false, partitioninfo: false });
  if (d.scheme !== 'none') {
    throw new ImageError('usage', `${path} already has ${d.scheme === 'gpt' ? 'a GPT' : 'an MBR'} partition table: use --force to replace it`, { path });
  }
  if (d.content && d.content.type !== 'unknown') {
    throw new ImageError('usage', `${path} holds a bare ${d.content.type} signature and no partition table: use --force to write a table over its start`, {
      path,
    });
  }
}

export const partCreateCommand: CommandSpec = {
  name: 'part create',
  summary: 'write an MBR partition table (primary partitions, 1 MiB aligned), creating the image if needed',
  usage: 'part create IMG --part SIZE:TYPE[:boot] ... [--size DISKSIZE] [-f FMT] [-O FMT] [--force]',
  positionals: { min: 1, max: 1 },
  options: [
    { name: 'part', short: 'p', type: 'string', multiple: true, valueName: 'SIZE:TYPE[:boot]', description: "a partition, in order; SIZE 'rest' fills the disk (last only)" },
    { name: 'size', short: 's', type: 'string', valueName: 'SIZE', description: 'virtual size of a new image (512, 64k, 2M, 1G)' },
    FORMAT_OPTION,
    { name: 'output-format', short: 'O', type: 'string', valueName: 'FMT', description: 'format of a new image; from the extension when omitted (.qcow2, .vdi, .img)' },
    { name: 'align', type: 'string', valueName: 'SIZE', description: 'partition alignment', default: '1M' },
    { name: 'signature', type: 'string', valueName: 'HEX', description: 'disk signature (label-id), e.g. 0x1234abcd; random when omitted' },
    FORCE_OPTION,
    OUTPUT_OPTION,
  ],
  details: `Types: linux (83), swap (82), efi (ef), fat32 (0c), fat16 (0e), ntfs (07), lvm (8e),
raid (fd), or a hex code. ':boot' sets the boot flag. Partitions are primary (at most 4),
placed in order, each starting on the next 1 MiB boundary; CHS fields are written as sfdisk
and parted write them (255 heads, 63 sectors/track).

If IMG does not exist it is created (--size required; format from -O or the extension).
If it exists it is opened for writing in its own format; an existing partition table (or a
bare filesystem) is only replaced with --force. Boot code in an existing MBR is kept.

Examples:
  imgtool part create disk.qcow2 --size 10G --part 512M:linux:boot --part 1G:swap --part rest:linux
  imgtool part create --force disk.img --part rest:lvm

Exit codes: 0 success; 2 usage (does not fit, table exists, bad option); 3 unreadable image;
4 format cannot be written; 5 I/O error.`,
  async run(args, ctx) {
    const path = args.positionals[0]!;
    const json = wantsJson(args);
    const specs = list(args, 'part').map(parsePartArg);
    if (!specs.length) throw new ImageError('usage', 'part create: give at least one --part SIZE:TYPE[:boot]');
    const align = parseSize(str(args, 'align') ?? '1M', '--align');
    const sigText = str(args, 'signature');
    let signature: number | undefined;
    if (sigText !== undefined) {
      if (!/^(0x)?[0-9a-f]{1,8}$/i.test(sigText)) throw new ImageError('usage', `--signature '${sigText}' is not a 32-bit hex number`, { value: sigText });
      signature = parseInt(sigText.replace(/^0x/i, ''), 16);
    }
    const sizeText = str(args, 'size');
    const exists = fs.existsSync(path);

    let placed: PlacedPart[];
    let written: number;
    let diskSize: number;
    if (exists) {
      if (str(args, 'output-format')) throw new ImageError('usage', `${path} exists: -O applies only when creating an image (use -f to name its format)`);
      const opened = await openFromArgs(path, args, { writable: true });
      try {
        const image = opened.image;
        diskSize = image.size;
        if (sizeText !== undefined && parseSize(sizeText, '--size') !== image.size) {
          throw new ImageError('usage', `${path} exists with a size of ${image.size} bytes: --size applies only when creating (use 'imgtool resize')`);
        }
        if (!flag(args, 'force')) await refuseExisting(image, path);
        placed = layoutMbr(image.size, specs, { align });
        written = (await writeMbrTable(image, placed, { signature })).signature;
      } finally {
        await opened.image.close();
      }
    } else {
      if (sizeText === undefined) throw new ImageError('usage', `${path} does not exist: give --size to create it`);
      diskSize = parseSize(sizeText, '--size');
      const format = str(args, 'output-format') ?? formatFromExtension(path);
      if (!format) throw new ImageError('usage', `cannot tell the format of '${path}' from its name: name it with -O (raw, qcow2, vdi, ...)`);
      // Lay out before creating anything: a layout that does not fit leaves no file behind.
      placed = layoutMbr(diskSize, specs, { align });
      const created = await createImage(path, format, { size: diskSize, options: {} });
      let image: Image | undefined = created.image;
      try {
        written = (await writeMbrTable(image, placed, { signature })).signature;
        const img = image;
        image = undefined;
        await img.close();
        await created.output.commit();
      } catch (e) {
        if (image) await image.close().catch(() => {});
        await created.output.abort();
        throw e;
      }
    }
    if (json) printJson(ctx, layoutJson(diskSize, written, placed));
    else {
      ctx.stdout.write(`${path}: MBR partition table written, disk identifier ${formatSignature(written)}\n`);
      for (const p of placed) {
        ctx.stdout.write(
          `  ${p.number}${p.bootable ? ' *' : '  '} start ${String(p.start / 512).padStart(10)}  end ${String((p.start + p.size) / 512 - 1).padStart(10)}  ` +
            `${formatSize(p.size).padStart(9)}  ${mbrTypeCode(p.type)} ${mbrTypeName(p.type)}\n`,
        );
      }
    }
    return 0;
  },
};

// ------------------------------------------------------------------ mkswap

export const partMkswapCommand: CommandSpec = {
  name: 'part mkswap',
  summary: 'write a Linux swap signature (as mkswap does) on a partition or a whole image',
  usage: 'part mkswap IMG [--partition N] [--label L] [--uuid U] [-f FMT] [--force]',
  positionals: { min: 1, max: 1 },
  options: [
    { name: 'partition', short: 'n', type: 'string', valueName: 'N', description: 'partition number (as in part list); the whole image when omitted' },
    { name: 'label', short: 'L', type: 'string', valueName: 'LABEL', description: 'swap label (at most 15 bytes)' },
    { name: 'uuid', short: 'U', type: 'string', valueName: 'UUID', description: 'swap UUID; random when omitted' },
    { name: 'page-size', type: 'string', valueName: 'BYTES', description: 'page size of the target system', default: '4096' },
    FORMAT_OPTION,
    { name: 'force', type: 'boolean', description: 'overwrite a filesystem, or write to a whole image that has a partition table' },
    OUTPUT_OPTION,
  ],
  details: `Writes the swap header (version 1, 'SWAPSPACE2') in the first page of the partition or image
and erases stale signatures further in (btrfs, LUKS2, MD RAID, GPT backup) if any; nothing
else is written. 'swapon' and 'swaplabel' read the result.

Examples:
  imgtool part mkswap disk.qcow2 --partition 2 --label swap
  imgtool part mkswap swap.img --uuid 8f1b1e3c-3c1e-4a57-9a0e-6f6d8b2f1a10

Exit codes: 0 success; 2 usage (no such partition, would overwrite a filesystem); 3 unreadable
image; 5 I/O error.`,
  async run(args, ctx) {
    const path = args.positionals[0]!;
    const json = wantsJson(args);
    const pageSize = Number(str(args, 'page-size') ?? '4096');
    const force = flag(args, 'force');
    const opened = await openFromArgs(path, args, { writable: true });
    let result: Awaited<ReturnType<typeof writeSwap>>;
    let target: string;
    try {
      const image = opened.image;
      const disk = await inspectDisk(image, { partitioninfo: false });
      const nText = str(args, 'partition');
      let dev: BlockDevice;
      if (nText !== undefined) {
        const n = Number(nText);
        const p = disk.partitions.find((x) => x.number === n);
        if (!Number.isInteger(n) || !p) {
          const have = disk.partitions.filter((x) => x.kind !== 'extended').map((x) => x.number);
          throw new ImageError('usage', `${path} has no partition ${nText} (partitions: ${have.join(', ') || 'none'})`, { path, value: nText });
        }
        if (p.kind === 'extended') throw new ImageError('usage', `partition ${n} is an extended partition (a container for logical partitions)`, { path });
        if (p.end > image.size) throw new ImageError('usage', `partition ${n} runs past the end of the image`, { path });
        refuseContent(p.content, `partition ${n}`, force);
        if (disk.scheme === 'mbr' && p.type !== '82') warn(ctx, `partition ${n} has type ${p.type} (${p.typeName}), not 82 (Linux swap)`, 'note');
        if (disk.scheme === 'gpt' && p.type !== '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F') warn(ctx, `partition ${n} has type ${p.typeName}, not Linux swap`, 'note');
        dev = new SliceDevice(image, p.start, p.size);
        target = `partition ${n}`;
      } else {
        if (disk.scheme !== 'none' && !force) {
          throw new ImageError('usage', `${path} has a partition table: name a partition with --partition N, or --force to make the whole image swap`, { path });
        }
        if (disk.content) refuseContent(disk.content, path, force);
        dev = image;
        target = 'the whole image';
      }
      result = await writeSwap(dev, { label: str(args, 'label'), uuid: str(args, 'uuid'), pageSize });
    } finally {
      await opened.image.close();
    }
    if (json) printJson(ctx, { target, ...result });
    else {
      ctx.stdout.write(
        `Setting up swapspace version 1 on ${target}, size = ${formatSize(result.size)} (${result.size} bytes)\n` +
          `${result.label ? `LABEL=${result.label}, ` : 'no label, '}UUID=${result.uuid}\n`,
      );
    }
    return 0;
  },
};

function refuseContent(c: ContentInfo, what: string, force: boolean): void {
  if (force || c.type === 'unknown' || c.type === 'swap') return;
  throw new ImageError('usage', `${what} holds ${c.type}${c.label ? ` (label ${c.label})` : ''}: use --force to overwrite it with swap`);
}

export const PART_COMMANDS: CommandSpec[] = [partListCommand, partCreateCommand, partMkswapCommand];
