/**
 * The qcow (version 1) format driver: qemu's original copy-on-write format.
 *
 * Spec: qemu block/qcow.c (the only definition of the format); header and
 * table layouts in header.ts and tables.ts, reading/writing in image.ts.
 *
 * Vocabulary: cluster (qemu) = cluster; "compressed cluster" = L2 entry with
 * bit 63 set (raw deflate); backing file = base image for unallocated clusters.
 *
 * qcow v1 and qcow2 share the magic 'QFI\xfb': this driver probes only
 * version 1, the qcow2 driver versions 2 and 3.
 */

import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { escapeLine } from '../../core/escape.js';
import type { CreateOptions, FormatDriver, Image, OpenOptions } from '../types.js';
import { isQcow1 } from './header.js';
import { QcowImage, createQcow, readHeader, readL1 } from './image.js';
import { measureQcow } from './measure.js';
import { recordQcowBacking } from './backing.js';
import { resizeQcow } from './resize.js';
import { checkQcow } from './check.js';

export { QcowImage } from './image.js';

export const qcow: FormatDriver = {
  name: 'qcow',
  extensions: ['qcow'],
  probe: isQcow1,
  async open(child: BlockDevice, opts: OpenOptions): Promise<Image> {
    try {
      const g = await readHeader(child);
      const l1 = await readL1(child, g);
      let backing: Image | undefined;
      if (g.backingName !== undefined) {
        if (!opts.openBacking) {
          throw new ImageError(
            'unsupported',
            `qcow: ${opts.path ?? 'the image'} has a backing file '${escapeLine(g.backingName)}': pass --backing to read through it`,
            { format: 'qcow', field: 'backing_file', value: g.backingName },
          );
        }
        backing = await opts.openBacking({ name: g.backingName });
      }
      const image = new QcowImage(child, g, l1, { writable: !!opts.writable, backing, path: opts.path });
      if (opts.writable) {
        try {
          await image.verifyNoOverlaps();
        } catch (e) {
          await backing?.close();
          throw e;
        }
      }
      return image;
    } catch (e) {
      if (e instanceof ImageError && opts.path && !e.context.path) e.context.path = opts.path;
      throw e;
    }
  },
  async create(child: BlockDevice, opts: CreateOptions): Promise<Image> {
    const keys = Object.keys(opts.options);
    if (keys.length) {
      throw new ImageError('usage', `qcow: unknown option '${keys[0]}' (qcow takes no -o options)`, { format: 'qcow', value: keys[0] });
    }
    if (!Number.isSafeInteger(opts.size) || opts.size < 0) {
      throw new ImageError('usage', `qcow: invalid size ${opts.size}`, { format: 'qcow', value: opts.size });
    }
    return createQcow(child, { size: opts.size, compress: !!opts.compress });
  },
  createOptions: {},
  measure: measureQcow,
  recordBacking: recordQcowBacking,
  resize: resizeQcow,
  check: checkQcow,
  createsZeroed: () => true,
};
