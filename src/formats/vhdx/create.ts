/**
 * Writing VHDXs, laid out as qemu-img does:
 *
 *   0          file type identifier "vhdxfile", creator "imgtool"
 *   64 KiB     header 1 (sequence 0), 128 KiB header 2 (sequence 1)
 *   192 KiB    region table (BAT, metadata; both required), 256 KiB its copy
 *   1 MiB      log (log_size, default 1 MiB; empty: log GUID zero)
 *   then       metadata region (1 MiB): table, file parameters, virtual disk
 *              size, page 83, logical (512) and physical (4096) sector sizes
 *   then       BAT (rounded up to 1 MiB), then payload blocks
 *
 * BAT states as Hyper-V writes them: a dynamic disk's payload entries are
 * "not present" until written (then "fully present"); a fixed disk's are all
 * "fully present", laid out in order after the BAT, the file sized to hold
 * them (sparse). Sector-bitmap entries: "not present".
 */

import { nodeCrypto } from '../../core/lazy.js';
import type { BlockDevice } from '../../core/device.js';
import { put32le, put64le } from '../../core/bytes.js';
import { ImageError } from '../../core/errors.js';
import { DescribedImage } from '../engine/image.js';
import { MappedDevice } from '../engine/engine.js';
import type { CreateOptions, Image } from '../types.js';
import { VhdxBat } from './bat.js';
import { readHeaders, readLayout } from './layout.js';
import { describeVhdx, writeHeader } from './open.js';
import {
  BAT_GUID,
  FILE_PARAMETERS,
  Header,
  LOGICAL_SECTOR_SIZE,
  METADATA_GUID,
  MIB,
  MetadataEntry,
  MetadataTableHeader,
  PAGE83,
  PAYLOAD_FULLY_PRESENT,
  PHYSICAL_SECTOR_SIZE,
  REGION_OFFSETS,
  REGION_SIZE,
  RegionEntry,
  RegionTableHeader,
  SIG_HEAD,
  SIG_REGI,
  VIRTUAL_DISK_SIZE,
  batEntries,
  batIndex,
  chunkRatioOf,
  sealChecksum,
} from './structs.js';

export const VHDX_CREATE_OPTIONS: Readonly<Record<string, string>> = {
  subformat: 'dynamic (default) or fixed',
  block_size: 'bytes per block: a power of two from 1 MiB to 256 MiB (default by size, as qemu: 8, 16 or 32 MiB)',
  log_size: 'bytes of log: a multiple of 1 MiB (default 1 MiB)',
};

const LOGICAL = 512;
const PHYSICAL = 4096;

export interface VhdxParams {
  fixed: boolean;
  size: number;
  blockSize: number;
  logSize: number;
}

function bytesOption(v: string, key: string): number {
  const m = /^(\d+)([kKmMgG]?)$/.exec(v);
  if (!m) throw new ImageError('usage', `vhdx: ${key} must be a number of bytes (k, M, G suffixes), not '${v}'`, { format: 'vhdx', value: v });
  const mult = { '': 1, k: 1024, m: MIB, g: 1024 * MIB }[m[2]!.toLowerCase()]!;
  return Number(m[1]) * mult;
}

export function vhdxParams(opts: CreateOptions): VhdxParams {
  for (const k of Object.keys(opts.options)) {
    if (!(k in VHDX_CREATE_OPTIONS)) throw new ImageError('usage', `vhdx: unknown option '${k}' (known: ${Object.keys(VHDX_CREATE_OPTIONS).join(', ')})`, { format: 'vhdx' });
  }
  if (opts.compress) throw new ImageError('usage', 'vhdx images cannot be compressed (-c)', { format: 'vhdx' });
  const sub = opts.options.subformat ?? 'dynamic';
  if (sub !== 'dynamic' && sub !== 'fixed') throw new ImageError('usage', `vhdx: subformat must be dynamic or fixed, not '${sub}'`, { format: 'vhdx', value: sub });
  const size = Math.ceil(opts.size / LOGICAL) * LOGICAL;
  if (!Number.isSafeInteger(size) || size < 0 || size > 64 * 2 ** 40) throw new ImageError('usage', `vhdx: size ${opts.size} is not 0 .. 64 TiB`, { format: 'vhdx' });
  const auto = size > 32 * 2 ** 40 ? 64 * MIB : size > 100 * 2 ** 30 ? 32 * MIB : size > 2 ** 30 ? 16 * MIB : 8 * MIB;
  const blockSize = opts.options.block_size ? bytesOption(opts.options.block_size, 'block_size') : auto;
  if (blockSize < MIB || blockSize > 256 * MIB || (blockSize & (blockSize - 1)) !== 0) {
    throw new ImageError('usage', `vhdx: block_size ${blockSize} is not a power of two from 1 MiB to 256 MiB`, { format: 'vhdx', value: blockSize });
  }
  const logSize = opts.options.log_size ? bytesOption(opts.options.log_size, 'log_size') : MIB;
  if (logSize < MIB || logSize % MIB !== 0 || logSize > 256 * MIB) throw new ImageError('usage', `vhdx: log_size ${logSize} is not a multiple of 1 MiB up to 256 MiB`, { format: 'vhdx', value: logSize });
  return { fixed: sub === 'fixed', size, blockSize, logSize };
}

function regionTable(entries: Array<{ guid: Uint8Array; offset: number; length: number }>): Uint8Array {
  const out = new Uint8Array(REGION_SIZE);
  RegionTableHeader.encode({ signature: SIG_REGI, checksum: 0, entryCount: entries.length, reserved: 0 }, out);
  entries.forEach((e, i) =>
    out.set(RegionEntry.encode({ guid: e.guid, fileOffset: BigInt(e.offset), length: e.length, required: 1 }), RegionTableHeader.size + i * RegionEntry.size),
  );
  return sealChecksum(out, 4);
}

function metadataRegion(p: VhdxParams): Uint8Array {
  const out = new Uint8Array(MIB);
  const items: Array<[Uint8Array, Uint8Array, number]> = [];
  const u32 = (v: number) => {
    const b = new Uint8Array(4);
    put32le(b, 0, v);
    return b;
  };
  const fp = new Uint8Array(8);
  put32le(fp, 0, p.blockSize);
  put32le(fp, 4, p.fixed ? 1 : 0); // leave blocks allocated
  const vds = new Uint8Array(8);
  put64le(vds, 0, p.size);
  items.push([FILE_PARAMETERS, fp, 4], [VIRTUAL_DISK_SIZE, vds, 6], [PAGE83, nodeCrypto().randomBytes(16), 6], [LOGICAL_SECTOR_SIZE, u32(LOGICAL), 6], [PHYSICAL_SECTOR_SIZE, u32(PHYSICAL), 6]);
  out.set(MetadataTableHeader.encode({ signature: Buffer.from('metadata', 'latin1'), reserved: 0, entryCount: items.length, reserved2: new Uint8Array(20) }));
  let at = 64 * 1024;
  items.forEach(([id, data, flags], i) => {
    out.set(MetadataEntry.encode({ itemId: id, offset: at, length: data.length, flags, reserved: 0 }), MetadataTableHeader.size + i * MetadataEntry.size);
    out.set(data, at);
    at += data.length;
  });
  return out;
}

export async function createVhdx(child: BlockDevice, opts: CreateOptions): Promise<Image> {
  const p = vhdxParams(opts);
  const logOffset = MIB;
  const metaOffset = logOffset + p.logSize;
  const batOffset = metaOffset + MIB;
  const blocks = Math.ceil(p.size / p.blockSize);
  const ratio = chunkRatioOf(LOGICAL, p.blockSize);
  const entries = batEntries(blocks, ratio);
  const batLength = Math.max(MIB, Math.ceil((entries * 8) / MIB) * MIB);
  const dataStart = batOffset + batLength;

  const ident = new Uint8Array(64 * 1024);
  ident.set(Buffer.from('vhdxfile', 'latin1'));
  ident.set(Buffer.from('imgtool', 'utf16le'), 8);
  await child.write(ident, 0);
  const rt = regionTable([
    { guid: BAT_GUID, offset: batOffset, length: batLength },
    { guid: METADATA_GUID, offset: metaOffset, length: MIB },
  ]);
  await child.write(rt, REGION_OFFSETS[0]);
  await child.write(rt, REGION_OFFSETS[1]);
  await child.write(metadataRegion(p), metaOffset);
  const bat = new Uint8Array(batLength);
  if (p.fixed) {
    const v = new DataView(bat.buffer);
    for (let b = 0; b < blocks; b++) v.setBigUint64(8 * batIndex(b, ratio), (BigInt((dataStart + b * p.blockSize) / MIB) << 20n) | BigInt(PAYLOAD_FULLY_PRESENT), true);
  }
  await child.write(bat, batOffset);
  const end = p.fixed ? dataStart + blocks * p.blockSize : dataStart;
  if (typeof child.resize === 'function') await child.resize(end);
  else if (child.size < end) await child.writeZeroes(child.size, end - child.size);
  // Log: zeros (the file was empty); headers last, once everything they describe is in place.
  const base = Header.parse(new Uint8Array(Header.size));
  const h = { ...base, signature: SIG_HEAD, version: 1, logVersion: 0, logLength: p.logSize, logOffset: BigInt(logOffset) };
  const guids = { file: nodeCrypto().randomBytes(16), data: nodeCrypto().randomBytes(16) };
  await writeHeader(child, h, 0n, 0, guids);
  await writeHeader(child, h, 1n, 1, guids);
  const layout = await readLayout(child, await readHeaders(child));
  const fmt = await VhdxBat.open(child, layout);
  const dev = new MappedDevice(fmt, { container: child, writable: true, zeroInit: !p.fixed });
  return new DescribedImage('vhdx', dev, async () => describeVhdx(layout));
}
