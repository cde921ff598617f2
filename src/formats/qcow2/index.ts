/**
 * qcow2 format driver (qemu docs/interop/qcow2.rst): read versions 2 and 3
 * with every feature qemu 7.2 writes except encryption; write into existing
 * images; create new ones (compat 0.10 / 1.1, cluster sizes 512 B..2 MiB,
 * refcount widths 1..64 bits, lazy refcounts flag, extended L2 entries,
 * deflate or zstd compression with -c).
 *
 * Module map:
 *   header.ts    header + extensions (layout table), parse/encode
 *   l2.ts        L1/L2 entry bits
 *   refcount.ts  refcount block entries of any width
 *   snapshot.ts  snapshot table (info only)
 *   image.ts     validation at open; the driver for the shared engine
 *                (../engine: reads, writes, compression, caches live there)
 *   create.ts    layout of a new image
 *   stream.ts    a whole image front to back, for pipes
 */

import type { FormatDriver } from '../types.js';
import { probeQcow2 } from './header.js';
import { openQcow2 } from './image.js';
import { createQcow2, CREATE_OPTIONS } from './create.js';
import { qcow2Stream } from './stream.js';
import { measureQcow2 } from './measure.js';
import { recordQcow2Backing } from './backing.js';
import { resizeQcow2 } from './resize.js';
import { checkQcow2Pass } from './check.js';

export { Qcow2Image, openQcow2 } from './image.js';
export { createQcow2, parseCreateOptions } from './create.js';

export const createOptions = CREATE_OPTIONS;

export const qcow2: FormatDriver = {
  name: 'qcow2',
  extensions: ['qcow2'],
  probe: probeQcow2,
  open: (child, opts) => openQcow2(child, opts),
  create: createQcow2,
  stream: qcow2Stream,
  createOptions: CREATE_OPTIONS,
  measure: measureQcow2,
  recordBacking: recordQcow2Backing,
  resize: resizeQcow2,
  check: checkQcow2Pass,
  // preallocation=metadata maps every cluster to the child's (new, empty) file.
  createsZeroed: (opts) => (opts.options.preallocation ?? 'off') === 'off',
};
