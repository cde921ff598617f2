/**
 * The engine's device for formats that keep the guest sparse: zeros written
 * where the image already reads zero (no backing file) allocate nothing,
 * as qcow and VDI did before they moved onto the engine; zeros written into
 * stored clusters are written there. Callers that write a zero buffer (a
 * guest's zeroed pages, a converter without zero detection) keep the image
 * as small as the data it holds.
 *
 * (A separate file because engine.ts belongs to the engine's owner; this is
 * additive and changes nothing for the drivers that use MappedDevice.)
 */

import { checkRange, isZero } from '../../core/device.js';
import { MappedDevice, type EngineOptions } from './engine.js';
import type { MappedFormat } from './mapping.js';

export class SparseMappedDevice extends MappedDevice {
  private readonly hasBacking: boolean;

  constructor(fmt: MappedFormat, o: EngineOptions) {
    super(fmt, o);
    this.hasBacking = !!o.backing;
  }

  override async write(buf: Uint8Array, offset: number): Promise<void> {
    if (this.hasBacking || this.readOnly || buf.length === 0 || !isZero(buf)) return super.write(buf, offset);
    checkRange(this, offset, buf.length, 'write');
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      const m = await this.fmt.lookup(pos, buf.length - done);
      // A bad run length: the engine's write reports it.
      if (!(m.length > 0) || !Number.isSafeInteger(m.length)) return super.write(buf.subarray(done), pos);
      const n = Math.min(m.length, buf.length - done);
      if (m.kind !== 'zero' && m.kind !== 'unallocated') await super.write(buf.subarray(done, done + n), pos);
      done += n;
    }
  }
}
