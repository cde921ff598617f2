/**
 * Opening a VHD: find a footer whose checksum verifies (for dynamic and
 * differencing disks the copy at offset 0, which qemu reads first; else the
 * one at the end), size the disk as qemu-img 7.2 does, then
 *
 *   fixed         the first `size` bytes of the file, as they are
 *   dynamic       the shared engine over the BAT (dynamic.ts)
 *   differencing  refused, naming the parent (a backing file imgtool does
 *                 not follow for VHD)
 */

import { type BlockDevice, checkRange } from '../../core/device.js';
import { ImageError, fieldError } from '../../core/errors.js';
import { SliceDevice } from '../../core/slice.js';
import { DescribedImage } from '../engine/image.js';
import { MappedDevice } from '../engine/engine.js';
import type { Image, ImageInfo, LayerRun, OpenOptions } from '../types.js';
import { DynamicVhd, readDynamicHeader } from './dynamic.js';
import {
  COOKIE,
  FOOTER_SIZE,
  Footer,
  type FooterValue,
  MAX_SECTORS,
  SECTOR,
  TYPE_DIFFERENCING,
  TYPE_DYNAMIC,
  TYPE_FIXED,
  ascii,
  footerValid,
  parentName,
  vhdChecksum,
  virtualSize,
} from './footer.js';

export interface FoundFooter {
  footer: FooterValue;
  bytes: Uint8Array;
  /** Where the footer that rules was read. */
  at: number;
  /** The end footer was damaged and the copy at offset 0 was used. */
  usedCopy: boolean;
}

async function sectorAt(child: BlockDevice, at: number): Promise<Uint8Array> {
  const b = new Uint8Array(FOOTER_SIZE);
  await child.read(b, at);
  return b;
}

/** The footer that rules: a verified copy at offset 0 (as qemu reads it), else the end one when it verifies. */
export async function findFooter(child: BlockDevice): Promise<FoundFooter> {
  if (child.size < FOOTER_SIZE) {
    throw new ImageError('invalid-format', `vpc: the file is ${child.size} bytes, too small for a VHD footer`, { format: 'vpc', value: child.size });
  }
  const endAt = child.size - FOOTER_SIZE;
  const end = await sectorAt(child, endAt);
  const endOk = footerValid(end);
  // qemu reads offset 0 first: a footer that verifies there rules (whatever
  // disk type it names), even where the end footer (also valid) says
  // otherwise; imgtool reads what qemu reads (found by npm run fuzz).
  const head = endAt > 0 ? await sectorAt(child, 0) : end;
  if (endAt > 0 && footerValid(head)) return { footer: Footer.parse(head), bytes: head, at: 0, usedCopy: !endOk };
  if (endOk) return { footer: Footer.parse(end), bytes: end, at: endAt, usedCopy: false };
  const bad = ascii(end.subarray(0, 8)) === COOKIE ? { b: end, at: endAt } : ascii(head.subarray(0, 8)) === COOKIE ? { b: head, at: 0 } : undefined;
  if (!bad) throw new ImageError('invalid-format', 'vpc: no "conectix" footer at the end of the file or at its start', { format: 'vpc' });
  const field = bad.at + Footer.offsetOf('checksum');
  const sum = vhdChecksum(bad.b, Footer.offsetOf('checksum'));
  throw fieldError('corrupt', 'vpc', 'footer checksum', field, Footer.parse(bad.b).checksum, `does not match the footer (computed ${sum}) and no intact copy exists`);
}

const TYPE_NAMES: Record<number, string> = { [TYPE_FIXED]: 'fixed', [TYPE_DYNAMIC]: 'dynamic', [TYPE_DIFFERENCING]: 'differencing' };

export function describeVhd(f: FooterValue, size: number, extra: { clusterSize?: number; rule: string; usedCopy: boolean; tailProbe: boolean }): ImageInfo {
  return {
    format: 'vpc',
    'virtual-size': size,
    ...(extra.clusterSize ? { 'cluster-size': extra.clusterSize } : {}),
    'dirty-flag': false,
    'format-specific': {
      type: 'vpc',
      data: {
        subformat: TYPE_NAMES[f.diskType],
        creator: ascii(f.creatorApp).replace(/\0/g, ''),
        'size-from': extra.rule,
        'current-size': Number(f.currentSize),
        geometry: { cylinders: f.cylinders, heads: f.heads, sectors: f.sectorsPerTrack },
        // A fixed VHD's only signature is its footer at the end of the file.
        'footer-at': f.diskType === TYPE_FIXED ? 'end only (found by the tail probe)' : 'start and end',
        ...(extra.usedCopy ? { 'footer-copy-used': true } : {}),
      },
    },
  };
}

/** A VHD as an Image that also answers `layerStatus` (for map), as qemu's vpc block status does. */
export class VhdImage extends DescribedImage {
  constructor(
    dev: BlockDevice,
    describe: () => Promise<ImageInfo>,
    private readonly layer: (offset: number, length: number) => Promise<LayerRun>,
    onClose?: () => Promise<void>,
  ) {
    super('vpc', dev, describe, onClose);
  }
  override async layerStatus(offset: number, length: number): Promise<LayerRun> {
    checkRange(this, offset, length, 'status');
    return this.layer(offset, length);
  }
}

/** Fixed: the guest's bytes lie at their own offset of the file (holes read as zero there). */
export function fixedLayer(child: BlockDevice): (offset: number, length: number) => Promise<LayerRun> {
  return async (offset, length) => {
    const e = await child.status(offset, length);
    return { kind: e.kind === 'data' ? 'data' : 'zero', length: Math.min(e.length, length), host: offset };
  };
}

/** Dynamic: stored blocks at their host offset; blocks not stored read as zero (qemu reports them so). */
export function dynamicLayer(fmt: DynamicVhd): (offset: number, length: number) => Promise<LayerRun> {
  return async (offset, length) => {
    const m = await fmt.lookup(offset, length);
    return m.kind === 'data' ? { kind: 'data', length: m.length, host: m.host } : { kind: 'zero', length: m.length };
  };
}

export async function openVhd(child: BlockDevice, opts: OpenOptions): Promise<Image> {
  const found = await findFooter(child);
  const f = found.footer;
  const { bytes: size, rule } = virtualSize(f);
  if (size / SECTOR > MAX_SECTORS) {
    throw fieldError('unsupported', 'vpc', 'current_size', found.at + Footer.offsetOf('currentSize'), f.currentSize, 'is larger than 2040 GiB, the VHD limit');
  }
  const info = { rule, usedCopy: found.usedCopy, tailProbe: f.diskType === TYPE_FIXED };
  if (f.diskType === TYPE_FIXED) {
    const dataEnd = child.size - FOOTER_SIZE;
    if (found.at !== dataEnd || size > dataEnd) {
      throw fieldError('corrupt', 'vpc', 'current_size', found.at + Footer.offsetOf('currentSize'), f.currentSize, `(disk size ${size}) does not fit the ${dataEnd} bytes before the footer`);
    }
    const dev = new SliceDevice(child, 0, size, { readOnly: !opts.writable });
    return new VhdImage(dev, async () => describeVhd(f, size, info), fixedLayer(child), () => child.close());
  }
  if (f.diskType !== TYPE_DYNAMIC && f.diskType !== TYPE_DIFFERENCING) {
    throw fieldError('unsupported', 'vpc', 'disk_type', found.at + Footer.offsetOf('diskType'), f.diskType, 'is not 2 (fixed), 3 (dynamic) or 4 (differencing)');
  }
  const hdrAt = f.dataOffset;
  if (hdrAt < 512n || hdrAt + 1024n > BigInt(child.size)) {
    throw fieldError('corrupt', 'vpc', 'data_offset', found.at + Footer.offsetOf('dataOffset'), hdrAt, `puts the dynamic header outside the ${child.size}-byte file`);
  }
  const layout = await readDynamicHeader(child, Number(hdrAt), size);
  if (f.diskType === TYPE_DIFFERENCING) {
    const parent = parentName(layout.header);
    throw new ImageError('unsupported', `vpc: ${opts.path ?? 'the image'} is a differencing disk (parent_name '${parent}'); imgtool does not follow VHD parents (convert the chain with qemu-img first)`, {
      format: 'vpc',
      field: 'parent_name',
      offset: layout.headerAt + 64,
      value: parent,
    });
  }
  const writable = !!opts.writable;
  const fmt = await DynamicVhd.open(child, size, layout, writable ? found.bytes : undefined);
  const dev = new MappedDevice(fmt, { container: child, writable });
  return new VhdImage(dev, async () => describeVhd(f, size, { ...info, clusterSize: layout.blockSize }), dynamicLayer(fmt));
}
