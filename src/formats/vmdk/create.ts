/**
 * Writing VMDKs as qemu-img does: monolithicSparse (header, embedded
 * descriptor, redundant GD and its GTs, GD and its GTs, grains appended) on
 * the shared engine; streamOptimized front to back (stream.ts).
 *
 *   sector 0        header (version 1, 2 with compat6; flags: newline test,
 *                   redundant GD, zeroed-grain GTEs with zeroed_grain=on)
 *   sectors 1..20   descriptor
 *   21              redundant GD, then its GTs (4 sectors each)
 *   ..              GD, then its GTs
 *   overHead        (rounded up to a grain) grains, in allocation order
 */

import { nodeCrypto } from '../../core/lazy.js';
import * as path from 'node:path';
import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { DescribedImage } from '../engine/image.js';
import { MappedDevice } from '../engine/engine.js';
import type { CreateOptions, Image, ImageInfo } from '../types.js';
import { encodeDescriptor } from './descriptor.js';
import { FLAG_NL_DETECT, FLAG_RGD, FLAG_ZERO_GRAIN, SECTOR, SparseHeader, newHeader } from './header.js';
import { SparseExtent, encodeDirectory } from './sparse.js';

export const VMDK_CREATE_OPTIONS: Readonly<Record<string, string>> = {
  subformat: 'monolithicSparse (default) or streamOptimized (compressed, written front to back; can go to a pipe)',
  adapter_type: 'ide (default), lsilogic, buslogic or legacyESX',
  hwversion: 'virtual hardware version in the descriptor (default 4)',
  compat6: 'on|off: VMDK version 6 (hwversion 6, header version 2)',
  zeroed_grain: 'on|off: record zero writes as zeroed-grain entries',
  toolsversion: 'VMware tools version in the descriptor (default 2147483647)',
};

const GRAIN_SECTORS = 128;
const GTES = 512;
const DESC_SECTORS = 20;

export interface VmdkParams {
  subformat: 'monolithicSparse' | 'streamOptimized';
  capacitySectors: number;
  adapterType: string;
  hwVersion: string;
  toolsVersion: string;
  compat6: boolean;
  zeroedGrain: boolean;
  cid: number;
  /** The name the descriptor gives the extent (the file's own name). */
  extentName: string;
}

function onOff(opts: Record<string, string>, key: string): boolean {
  const v = opts[key];
  if (v === undefined || v === 'off' || v === 'false') return false;
  if (v === 'on' || v === 'true') return true;
  throw new ImageError('usage', `vmdk: ${key} must be on or off, not '${v}'`, { format: 'vmdk', value: v });
}

export function vmdkParams(opts: CreateOptions): VmdkParams {
  for (const k of Object.keys(opts.options)) {
    if (!(k in VMDK_CREATE_OPTIONS)) throw new ImageError('usage', `vmdk: unknown option '${k}' (known: ${Object.keys(VMDK_CREATE_OPTIONS).join(', ')})`, { format: 'vmdk' });
  }
  const o = opts.options;
  const subformat = o.subformat ?? 'monolithicSparse';
  if (subformat !== 'monolithicSparse' && subformat !== 'streamOptimized') {
    throw new ImageError('unsupported', `vmdk: imgtool writes subformat monolithicSparse or streamOptimized, not '${subformat}'`, { format: 'vmdk', value: subformat });
  }
  if (opts.compress && subformat !== 'streamOptimized') {
    throw new ImageError('usage', 'vmdk: compressed (-c) output needs -o subformat=streamOptimized', { format: 'vmdk' });
  }
  const adapterType = o.adapter_type ?? 'ide';
  if (!['ide', 'lsilogic', 'buslogic', 'legacyESX'].includes(adapterType)) {
    throw new ImageError('usage', `vmdk: adapter_type must be ide, lsilogic, buslogic or legacyESX, not '${adapterType}'`, { format: 'vmdk', value: adapterType });
  }
  const compat6 = onOff(o, 'compat6');
  if (compat6 && o.hwversion !== undefined) throw new ImageError('usage', 'vmdk: compat6 and hwversion cannot be given together', { format: 'vmdk' });
  const hwVersion = o.hwversion ?? (compat6 ? '6' : '4');
  if (!/^[0-9]{1,4}$/.test(hwVersion)) throw new ImageError('usage', `vmdk: hwversion must be a number, not '${hwVersion}'`, { format: 'vmdk', value: hwVersion });
  const toolsVersion = o.toolsversion ?? '2147483647';
  if (!/^[0-9]{1,10}$/.test(toolsVersion)) throw new ImageError('usage', `vmdk: toolsversion must be a number, not '${toolsVersion}'`, { format: 'vmdk', value: toolsVersion });
  if (!Number.isSafeInteger(opts.size) || opts.size < 0) throw new ImageError('usage', `vmdk: size ${opts.size} is not usable`, { format: 'vmdk' });
  return {
    subformat,
    capacitySectors: Math.ceil(opts.size / SECTOR),
    adapterType,
    hwVersion,
    toolsVersion,
    compat6,
    zeroedGrain: onOff(o, 'zeroed_grain'),
    cid: nodeCrypto().randomInt(0, 0xfffffffe),
    extentName: opts.path && opts.path !== '-' ? path.basename(opts.path) : 'disk.vmdk',
  };
}

/** The embedded descriptor, padded to its 20 sectors. */
export function descriptorSectors(p: VmdkParams): Uint8Array {
  const text = encodeDescriptor({
    cid: p.cid,
    createType: p.subformat,
    extents: [{ sectors: p.capacitySectors, type: 'SPARSE', file: p.extentName }],
    hwVersion: p.hwVersion,
    adapterType: p.adapterType,
    sectors: p.capacitySectors,
    toolsVersion: p.toolsVersion,
  });
  const out = new Uint8Array(DESC_SECTORS * SECTOR);
  const bytes = Buffer.from(text, 'latin1');
  if (bytes.length > out.length) throw new ImageError('usage', 'vmdk: the descriptor does not fit its 20 sectors', { format: 'vmdk' });
  out.set(bytes);
  return out;
}

export const grainGeometry = (capacitySectors: number) => {
  const gdEntries = Math.ceil(capacitySectors / (GRAIN_SECTORS * GTES));
  return { grainSectors: GRAIN_SECTORS, gtes: GTES, gdEntries, gdSectors: Math.ceil((gdEntries * 4) / SECTOR), gtSectors: (GTES * 4) / SECTOR, descSectors: DESC_SECTORS };
};

export async function createMonolithicSparse(child: BlockDevice, p: VmdkParams): Promise<Image> {
  const g = grainGeometry(p.capacitySectors);
  const rgd = 1 + DESC_SECTORS;
  const rgdTables = rgd + g.gdSectors;
  const gd = rgdTables + g.gdEntries * g.gtSectors;
  const gdTables = gd + g.gdSectors;
  const end = gdTables + g.gdEntries * g.gtSectors;
  const overHead = Math.ceil(end / GRAIN_SECTORS) * GRAIN_SECTORS;
  const header = newHeader({
    version: p.compat6 ? 2 : 1,
    flags: FLAG_NL_DETECT | FLAG_RGD | (p.zeroedGrain ? FLAG_ZERO_GRAIN : 0),
    capacity: BigInt(p.capacitySectors),
    grainSize: BigInt(GRAIN_SECTORS),
    descriptorOffset: 1n,
    descriptorSize: BigInt(DESC_SECTORS),
    numGTEsPerGT: GTES,
    rgdOffset: BigInt(rgd),
    gdOffset: BigInt(gd),
    overHead: BigInt(overHead),
    compressAlgorithm: 0,
  });
  await child.write(SparseHeader.encode(header), 0);
  await child.write(descriptorSectors(p), SECTOR);
  await child.write(encodeDirectory(g.gdEntries, rgdTables, g.gtSectors), rgd * SECTOR);
  await child.write(encodeDirectory(g.gdEntries, gdTables, g.gtSectors), gd * SECTOR);
  const written = (gd + g.gdSectors) * SECTOR;
  if (overHead * SECTOR > written) await child.writeZeroes(written, overHead * SECTOR - written);
  // Zero GTs between the directories were never written: the file reads zero there.
  const extent = await SparseExtent.open(child, undefined, true);
  const dev = new MappedDevice(extent, { container: child, writable: true, zeroInit: true });
  return new DescribedImage('vmdk', dev, async () => describeNew(p, GRAIN_SECTORS * SECTOR));
}

/** What `info` says about an image this driver writes. */
export function describeNew(p: VmdkParams, grainBytes: number): ImageInfo {
  const size = p.capacitySectors * SECTOR;
  return {
    format: 'vmdk',
    'virtual-size': size,
    'cluster-size': grainBytes,
    'format-specific': {
      type: 'vmdk',
      data: {
        cid: p.cid,
        'parent-cid': 0xffffffff,
        'create-type': p.subformat,
        extents: [
          { filename: p.extentName, format: '', 'virtual-size': size, 'cluster-size': grainBytes, ...(p.subformat === 'streamOptimized' ? { compressed: true } : {}) },
        ],
      },
    },
    'dirty-flag': false,
  };
}
