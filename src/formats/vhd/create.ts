/**
 * Writing VHDs as qemu-img 7.2 lays them out.
 *
 *   fixed     [0, size) the guest's bytes, then the footer
 *   dynamic   0 footer copy, 512 dynamic header, 1536 BAT (all ones, rounded
 *             up to 512 bytes), then blocks (bitmap + 2 MiB) in allocation
 *             order, then the footer
 *
 * Size: rounded up to a CHS geometry (creator "qemu": every VHD reader agrees
 * on it), or with force_size=on kept as asked (creator "qem2", geometry
 * 65535/16/255: readers use current_size). A fixed VHD with force_size=on is
 * rounded up to a whole MiB: the rule Azure sets for uploaded disks.
 *
 * stream(): both subformats front to back (the dynamic BAT is planned from
 * the source's allocation first).
 */

import { nodeCrypto } from '../../core/lazy.js';
import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { SliceDevice } from '../../core/slice.js';
import { MappedDevice } from '../engine/engine.js';
import type { CreateOptions, Image } from '../types.js';
import { DynamicVhd, readDynamicHeader } from './dynamic.js';
import {
  FOOTER_SIZE,
  MAX_SECTORS,
  NO_DATA_OFFSET,
  SECTOR,
  TIMESTAMP_BASE,
  TYPE_DYNAMIC,
  TYPE_FIXED,
  encodeDynHeader,
  encodeFooter,
  sizeForCreate,
  Footer,
} from './footer.js';
import { VhdImage, describeVhd, dynamicLayer, fixedLayer } from './open.js';

export const VHD_CREATE_OPTIONS: Readonly<Record<string, string>> = {
  subformat: 'dynamic (default) or fixed',
  force_size: 'on|off: keep the size as given instead of rounding it up to a CHS geometry (fixed: rounded up to a whole MiB, as Azure requires)',
};

const BLOCK_SIZE = 2 << 20;
const BAT_OFFSET = 3 * SECTOR;
const MIB = 1 << 20;

export interface VhdParams {
  fixed: boolean;
  forceSize: boolean;
  size: number;
  footer: Uint8Array;
}

function onOff(v: string | undefined, key: string): boolean {
  if (v === undefined || v === 'off' || v === 'false') return false;
  if (v === 'on' || v === 'true') return true;
  throw new ImageError('usage', `vpc: ${key} must be on or off, not '${v}'`, { format: 'vpc', value: v });
}

export function vhdParams(opts: CreateOptions): VhdParams {
  for (const k of Object.keys(opts.options)) {
    if (!(k in VHD_CREATE_OPTIONS)) throw new ImageError('usage', `vpc: unknown option '${k}' (known: ${Object.keys(VHD_CREATE_OPTIONS).join(', ')})`, { format: 'vpc' });
  }
  if (opts.compress) throw new ImageError('usage', 'vpc images cannot be compressed (-c)', { format: 'vpc' });
  const sub = opts.options.subformat ?? 'dynamic';
  if (sub !== 'dynamic' && sub !== 'fixed') throw new ImageError('usage', `vpc: subformat must be dynamic or fixed, not '${sub}'`, { format: 'vpc', value: sub });
  const fixed = sub === 'fixed';
  const forceSize = onOff(opts.options.force_size, 'force_size');
  if (!Number.isSafeInteger(opts.size) || opts.size < 0) throw new ImageError('usage', `vpc: size ${opts.size} is not usable`, { format: 'vpc' });
  const asked = fixed && forceSize ? Math.ceil(opts.size / MIB) * MIB : opts.size;
  const { bytes: size, geometry } = sizeForCreate(asked, forceSize);
  if (size / SECTOR > MAX_SECTORS) throw new ImageError('usage', `vpc: ${size} bytes is larger than 2040 GiB, the VHD limit`, { format: 'vpc', value: size });
  const footer = encodeFooter({
    cookie: Buffer.from('conectix', 'latin1'),
    features: 2,
    version: 0x00010000,
    dataOffset: fixed ? NO_DATA_OFFSET : BigInt(FOOTER_SIZE),
    timestamp: Math.max(0, Math.floor(Date.now() / 1000) - TIMESTAMP_BASE),
    creatorApp: Buffer.from(forceSize ? 'qem2' : 'qemu', 'latin1'),
    creatorVersion: 0x00050003,
    creatorOs: Buffer.from('Wi2k', 'latin1'),
    originalSize: BigInt(size),
    currentSize: BigInt(size),
    cylinders: geometry.cylinders,
    heads: geometry.heads,
    sectorsPerTrack: geometry.sectorsPerTrack,
    diskType: fixed ? TYPE_FIXED : TYPE_DYNAMIC,
    uniqueId: nodeCrypto().randomBytes(16),
    savedState: 0,
    reserved: new Uint8Array(427),
  });
  return { fixed, forceSize, size, footer };
}

/** The front of a dynamic VHD: footer copy, dynamic header and BAT (`bat`: all unused when absent). */
export function dynamicFront(p: VhdParams, bat?: Uint32Array): Uint8Array {
  const entries = Math.ceil(p.size / BLOCK_SIZE);
  const batBytes = Math.ceil((entries * 4) / SECTOR) * SECTOR;
  const out = new Uint8Array(BAT_OFFSET + batBytes).fill(0xff, BAT_OFFSET);
  out.set(p.footer, 0);
  out.set(
    encodeDynHeader({
      cookie: Buffer.from('cxsparse', 'latin1'),
      dataOffset: NO_DATA_OFFSET,
      tableOffset: BigInt(BAT_OFFSET),
      headerVersion: 0x00010000,
      maxTableEntries: entries,
      blockSize: BLOCK_SIZE,
      parentUniqueId: new Uint8Array(16),
      parentTimestamp: 0,
      reserved1: 0,
      parentName: new Uint8Array(512),
      parentLocators: new Uint8Array(192),
      reserved2: new Uint8Array(256),
    }),
    FOOTER_SIZE,
  );
  if (bat) {
    const v = new DataView(out.buffer, BAT_OFFSET);
    bat.forEach((e, i) => v.setUint32(4 * i, e, false));
  }
  return out;
}

export async function createVhd(child: BlockDevice, opts: CreateOptions): Promise<Image> {
  const p = vhdParams(opts);
  const f = Footer.parse(p.footer);
  const rule = p.forceSize ? 'current_size' : 'chs';
  if (p.fixed) {
    await child.write(p.footer, p.size);
    const dev = new SliceDevice(child, 0, p.size);
    return new VhdImage(dev, async () => describeVhd(f, p.size, { rule, usedCopy: false, tailProbe: true }), fixedLayer(child), () => child.close());
  }
  const front = dynamicFront(p);
  await child.write(front, 0);
  await child.write(p.footer, front.length);
  const layout = await readDynamicHeader(child, FOOTER_SIZE, p.size);
  const fmt = await DynamicVhd.open(child, p.size, layout, p.footer);
  const dev = new MappedDevice(fmt, { container: child, writable: true, zeroInit: true });
  return new VhdImage(dev, async () => describeVhd(f, p.size, { rule, usedCopy: false, tailProbe: false, clusterSize: BLOCK_SIZE }), dynamicLayer(fmt));
}

export const blockSizeForStream = BLOCK_SIZE;
