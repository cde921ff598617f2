/**
 * Opening a VMDK: a monolithic sparse file (KDMV header, embedded
 * descriptor) or a text descriptor naming extent files. Extents become
 * devices laid end to end: SPARSE → the shared engine over a SparseExtent,
 * FLAT/VMFS → a window of the file, ZERO → zeros.
 *
 * Extent files are opened only through `OpenOptions.openExtent`, which
 * confines them to the descriptor's own directory (CVE-2022-47951: a hostile
 * descriptor naming /etc/shadow). A delta link (parentFileNameHint) is a
 * backing file: followed only through `openBacking`, refused otherwise.
 */

import * as path from 'node:path';
import { type BlockDevice } from '../../core/device.js';
import { ConcatDevice } from '../../core/concat.js';
import { ImageError } from '../../core/errors.js';
import { SliceDevice } from '../../core/slice.js';
import { ZeroDevice } from '../../core/zero.js';
import { u32le } from '../../core/bytes.js';
import { DescribedImage } from '../engine/image.js';
import { MappedDevice } from '../engine/engine.js';
import type { Image, ImageInfo, OpenOptions } from '../types.js';
import { type Descriptor, type ExtentLine, MAX_DESCRIPTOR_BYTES, parseDescriptor } from './descriptor.js';
import { COWD_MAGIC, SECTOR, VMDK4_MAGIC } from './header.js';
import { SparseExtent, readSparseLayout } from './sparse.js';

const DESCRIPTOR_TYPES = ['monolithicFlat', 'vmfs', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'monolithicSparse', 'streamOptimized', 'custom'];

interface ExtentInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'cluster-size'?: number;
  compressed?: boolean;
}

async function readText(dev: BlockDevice, offset: number, length: number): Promise<string> {
  const buf = new Uint8Array(length);
  await dev.read(buf, offset);
  const nul = buf.indexOf(0);
  return Buffer.from(buf.subarray(0, nul < 0 ? buf.length : nul)).toString('latin1');
}

class Opening {
  readonly files: BlockDevice[] = [];
  readonly parts: BlockDevice[] = [];
  readonly extents: ExtentInfo[] = [];
  backing?: Image;
  clusterSize?: number;
  constructor(
    readonly child: BlockDevice,
    readonly opts: OpenOptions,
  ) {}

  get where(): string {
    return this.opts.path ?? 'vmdk';
  }

  async closeAll(): Promise<void> {
    for (const f of this.files) await f.close().catch(() => {});
    await this.backing?.close().catch(() => {});
  }

  /** The window of the backing image an extent at [start, start + size) reads through. */
  backingFor(start: number, size: number): BlockDevice | undefined {
    const b = this.backing;
    if (!b || start >= b.size) return undefined;
    return new SliceDevice(b, start, Math.min(size, b.size - start), { readOnly: true });
  }

  async parent(d: Descriptor | undefined): Promise<void> {
    const hint = d?.parentFileNameHint;
    if (hint === undefined) return;
    if (!this.opts.openBacking) {
      throw new ImageError('unsupported', `vmdk: ${this.where} is a delta link to parent '${hint}'; pass --backing to read through it`, {
        format: 'vmdk',
        field: 'parentFileNameHint',
        value: hint,
      });
    }
    this.backing = await this.opts.openBacking({ name: hint, format: 'vmdk' });
  }

  async sparse(dev: BlockDevice, start: number, sectors: number | undefined, filename: string, format: string): Promise<void> {
    const layout = await readSparseLayout(dev);
    const writable = !!this.opts.writable && !layout.compressed;
    if (this.opts.writable && !writable) {
      throw new ImageError('unsupported', 'vmdk: stream-optimized (compressed) extents are opened read-only', { format: 'vmdk', path: this.opts.path });
    }
    const extent = await SparseExtent.open(dev, layout, writable);
    const size = sectors === undefined ? layout.capacity : sectors * SECTOR;
    if (layout.capacity < size) {
      throw new ImageError('corrupt', `vmdk: extent '${filename}' holds ${layout.capacity} bytes, fewer than the ${size} its descriptor line says`, {
        format: 'vmdk',
        field: 'capacity',
        value: layout.capacity,
      });
    }
    const engine = new MappedDevice(extent, { container: dev, writable, backing: this.backingFor(start, size), ownsContainer: false });
    this.parts.push(size === layout.capacity ? engine : new SliceDevice(engine, 0, size));
    this.clusterSize ??= layout.grainBytes;
    this.extents.push({
      filename,
      format,
      'virtual-size': size,
      'cluster-size': layout.grainBytes,
      ...(layout.compressed ? { compressed: true } : {}),
    });
  }

  async extent(e: ExtentLine, start: number): Promise<void> {
    const size = e.sectors * SECTOR;
    if (e.type === 'ZERO') {
      this.parts.push(new ZeroDevice(size));
      this.extents.push({ filename: '', format: 'ZERO', 'virtual-size': size });
      return;
    }
    if (e.type !== 'FLAT' && e.type !== 'VMFS' && e.type !== 'SPARSE') {
      throw new ImageError('unsupported', `vmdk: ${e.type} extent '${e.file}' is not supported`, { format: 'vmdk', field: 'extent type', value: e.type });
    }
    if (!this.opts.openExtent) {
      throw new ImageError('unsupported', `vmdk: ${this.where} names extent file '${e.file}'; open the descriptor by its path`, { format: 'vmdk', value: e.file });
    }
    const dev = await this.opts.openExtent(e.file!);
    this.files.push(dev);
    const filename = this.opts.path ? path.join(path.dirname(this.opts.path), e.file!) : e.file!;
    if (e.type === 'SPARSE') return this.sparse(dev, start, e.sectors, filename, 'SPARSE');
    const at = e.offset * SECTOR;
    if (at + size > dev.size) {
      throw new ImageError('corrupt', `vmdk: extent '${e.file}' is ${dev.size} bytes, shorter than the ${at + size} its descriptor line needs`, {
        format: 'vmdk',
        field: 'extent sectors',
        value: e.sectors,
      });
    }
    this.parts.push(new SliceDevice(dev, at, size, { readOnly: !this.opts.writable }));
    this.extents.push({ filename, format: e.type, 'virtual-size': size });
  }
}

export async function openVmdk(child: BlockDevice, opts: OpenOptions): Promise<Image> {
  if (child.size < 4) throw new ImageError('invalid-format', 'vmdk: the file is too small to be a VMDK', { format: 'vmdk', value: child.size });
  const o = new Opening(child, opts);
  try {
    const head = new Uint8Array(4);
    await child.read(head, 0);
    const magic = u32le(head, 0);
    let d: Descriptor | undefined;
    let createType: string;
    if (magic === COWD_MAGIC) {
      throw new ImageError('unsupported', 'vmdk: VMFSSPARSE (COWD) extents are not supported', { format: 'vmdk', field: 'magic', value: 'COWD' });
    } else if (magic === VMDK4_MAGIC) {
      const layout = await readSparseLayout(child);
      const h = layout.header;
      if (h.descriptorOffset !== 0n) {
        if (h.descriptorSize * 512n > BigInt(MAX_DESCRIPTOR_BYTES)) {
          throw new ImageError('invalid-format', `vmdk: descriptorSize (${h.descriptorSize} sectors) is larger than ${MAX_DESCRIPTOR_BYTES} bytes`, {
            format: 'vmdk', field: 'descriptorSize', offset: 36, value: h.descriptorSize,
          });
        }
        const at = h.descriptorOffset * 512n;
        const len = Number(h.descriptorSize) * SECTOR;
        if (at + BigInt(len) > BigInt(child.size)) {
          throw new ImageError('corrupt', `vmdk: descriptorOffset (${h.descriptorOffset}) puts the descriptor outside the file`, {
            format: 'vmdk', field: 'descriptorOffset', offset: 28, value: h.descriptorOffset,
          });
        }
        d = parseDescriptor(await readText(child, Number(at), len));
      }
      await o.parent(d);
      createType = layout.compressed ? 'streamOptimized' : 'monolithicSparse';
      await o.sparse(child, 0, undefined, opts.path ?? '', '');
    } else {
      if (child.size > MAX_DESCRIPTOR_BYTES) {
        throw new ImageError('invalid-format', `vmdk: descriptor size (${child.size} bytes, the whole descriptor file) is larger than ${MAX_DESCRIPTOR_BYTES}`, {
          format: 'vmdk', field: 'descriptor size', value: child.size,
        });
      }
      d = parseDescriptor(await readText(child, 0, child.size));
      if (d.createType === 'vmfsSparse' || d.createType === 'seSparse') {
        throw new ImageError('unsupported', `vmdk: createType ${d.createType} is not supported`, { format: 'vmdk', field: 'createType', value: d.createType });
      }
      if (!DESCRIPTOR_TYPES.includes(d.createType)) {
        throw new ImageError('unsupported', `vmdk: createType '${d.createType}' is not a VMDK type imgtool reads`, { format: 'vmdk', field: 'createType', value: d.createType });
      }
      if (d.extents.length === 0) throw new ImageError('invalid-format', 'vmdk: the descriptor names no extents', { format: 'vmdk', field: 'extent count', value: 0 });
      createType = d.createType;
      await o.parent(d);
      let start = 0;
      for (const e of d.extents) {
        await o.extent(e, start);
        start += e.sectors * SECTOR;
      }
    }
    const dev = o.parts.length === 1 ? o.parts[0]! : new ConcatDevice(o.parts);
    const info = async (): Promise<ImageInfo> => ({
      format: 'vmdk',
      'virtual-size': dev.size,
      ...(o.clusterSize !== undefined ? { 'cluster-size': o.clusterSize } : {}),
      ...(d?.parentFileNameHint !== undefined ? { 'backing-filename': d.parentFileNameHint } : {}),
      'format-specific': {
        type: 'vmdk',
        data: { cid: d?.cid ?? 0, 'parent-cid': d?.parentCid ?? 0xffffffff, 'create-type': createType, extents: o.extents },
      },
      'dirty-flag': false,
    });
    return new DescribedImage('vmdk', dev, info, async () => {
      await o.closeAll();
      await child.close();
    });
  } catch (e) {
    await o.closeAll();
    if (e instanceof ImageError && opts.path && !e.context.path) (e.context as { path?: string }).path = opts.path;
    throw e;
  }
}

/** Does the start of a file look like a VMDK (sparse magic or a descriptor's `version=` line after comments)? */
export function probeVmdk(head: Uint8Array): boolean {
  if (head.length >= 4) {
    const m = u32le(head, 0);
    if (m === VMDK4_MAGIC || m === COWD_MAGIC) return true;
  }
  const text = Buffer.from(head.subarray(0, Math.min(head.length, 1024))).toString('latin1');
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    if (line.startsWith('#') || line.trim() === '') continue;
    return /^version=[123]$/.test(line) && /createType\s*=/.test(text);
  }
  return false;
}
