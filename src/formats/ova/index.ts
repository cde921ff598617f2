/**
 * OVA: a tar archive holding an OVF descriptor (first), its disks and
 * optionally a manifest (OVF spec DSP0243; VMware and VirtualBox export
 * streamOptimized VMDKs in them). Read in place, never extracted:
 *
 *   tar.ts       entries and their data offsets (node-tar's Header per block)
 *   ovf.ts       the disks the descriptor lists, with capacities
 *   manifest.ts  SHA1/SHA256/SHA512 lines, verified when present
 *
 * `open` gives disk `opts.disk` (default 0) as an image: a window of the
 * archive, opened by whichever driver recognises it. Read-only.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { SliceDevice } from '../../core/slice.js';
import { createRequire } from 'node:module';
import { DescribedImage } from '../engine/image.js';
import type { FormatDriver, Image, ImageInfo, OpenOptions } from '../types.js';
import { verifyManifest } from './manifest.js';
import { type OvfDisk, parseOvf } from './ovf.js';
import { type TarEntry, checkEntryName, tarEntries } from './tar.js';

const MAX_OVF = 16 << 20;

function probeOva(head: Uint8Array): boolean {
  if (head.length < 512) return false;
  const block = Buffer.from(head.buffer, head.byteOffset, 512);
  if (block.subarray(257, 262).toString('latin1') !== 'ustar') return false;
  // node-tar is loaded only for files that are tar archives (start-up stays light).
  const { Header } = createRequire(import.meta.url)('tar') as typeof import('tar');
  const h = new Header(block);
  return h.cksumValid && /\.ovf$/i.test(h.path ?? '');
}

function entryWindow(child: BlockDevice, entries: TarEntry[], name: string): SliceDevice | undefined {
  const e = entries.find((x) => x.name === name);
  return e && new SliceDevice(child, e.offset, e.size, { readOnly: true });
}

async function openOva(child: BlockDevice, opts: OpenOptions, drivers: () => readonly FormatDriver[]): Promise<Image> {
  if (opts.writable) throw new ImageError('unsupported', 'ova: archives are read in place, read-only', { format: 'ova', operation: 'open' });
  const entries = await tarEntries(child);
  const ovf = entries.find((e) => /\.ovf$/i.test(e.name));
  if (!ovf) throw new ImageError('invalid-format', 'ova: the archive holds no .ovf descriptor', { format: 'ova', field: 'ovf' });
  if (ovf.size > MAX_OVF) throw new ImageError('invalid-format', `ova: the OVF descriptor is ${ovf.size} bytes`, { format: 'ova', field: 'ovf', value: ovf.size });
  const text = Buffer.alloc(ovf.size);
  await child.read(text, ovf.offset);
  const disks = parseOvf(text.toString('utf8'));
  if (disks.length === 0) throw new ImageError('invalid-format', 'ova: the OVF descriptor lists no disks', { format: 'ova', field: 'DiskSection' });
  const mf = entries.find((e) => /\.mf$/i.test(e.name));
  if (mf) await verifyManifest(child, entries, mf);
  const index = opts.disk ?? 0;
  const disk: OvfDisk | undefined = disks[index];
  if (!disk) {
    throw new ImageError('usage', `ova: there is no disk ${index}: the OVA has ${disks.length} (--disk 0${disks.length > 1 ? `..${disks.length - 1}` : ''})`, { format: 'ova', value: index });
  }
  checkEntryName(disk.file, ovf.offset);
  const window = entryWindow(child, entries, disk.file);
  if (!window) {
    throw new ImageError('invalid-format', `ova: disk ${index} (${disk.id}) is the file '${disk.file}', which the archive does not hold`, { format: 'ova', field: 'References', value: disk.file });
  }
  const head = new Uint8Array(Math.min(4096, window.size));
  await window.read(head, 0);
  const candidates = drivers().filter((d) => d.name !== 'ova');
  const driver = candidates.find((d) => d.probe(head)) ?? candidates[candidates.length - 1]!;
  const inner = await driver.open(window, {
    path: `${opts.path ?? 'ova'}/${disk.file}`,
    // A descriptor inside the archive may name further extents: other entries, never files.
    openExtent: async (name) => {
      checkEntryName(name, ovf.offset);
      const w = entryWindow(child, entries, name);
      if (!w) throw new ImageError('invalid-format', `ova: '${disk.file}' names '${name}', which the archive does not hold`, { format: 'ova', value: name });
      return w;
    },
  });
  const info = async (): Promise<ImageInfo> => {
    const i = await inner.info();
    return {
      format: 'ova',
      'virtual-size': inner.size,
      ...(i['cluster-size'] !== undefined ? { 'cluster-size': i['cluster-size'] } : {}),
      'format-specific': {
        type: 'ova',
        data: {
          disk: index,
          'disk-format': i.format,
          manifest: mf ? 'verified' : 'none',
          disks: disks.map((d) => ({
            index: d.index,
            id: d.id,
            file: d.file,
            ...(d.capacity !== undefined ? { capacity: d.capacity } : {}),
            ...(d.format !== undefined ? { format: d.format } : {}),
            'file-size': entries.find((e) => e.name === d.file)?.size ?? null,
          })),
          ...(i['format-specific'] ? { [`${i.format}`]: i['format-specific'].data } : {}),
        },
      },
    };
  };
  return new DescribedImage('ova', inner, info, () => child.close());
}

/** The OVA driver; `drivers` lists the formats a disk inside may have (resolved when an OVA is opened). */
export function ovaDriver(drivers: () => readonly FormatDriver[]): FormatDriver {
  return {
    name: 'ova',
    extensions: [],
    probe: probeOva,
    async open(child: BlockDevice, opts: OpenOptions): Promise<Image> {
      try {
        return await openOva(child, opts, drivers);
      } catch (e) {
        if (e instanceof ImageError && opts.path && !e.context.path) (e.context as { path?: string }).path = opts.path;
        throw e;
      }
    },
  };
}
