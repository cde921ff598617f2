/**
 * The shared engine for mapped formats: a BlockDevice of the guest's view
 * over a driver's `lookup` (see mapping.ts) and the container device that
 * holds the clusters.
 *
 * It owns:
 *   read        unallocated → backing or zeros; zero → zeros; data → container;
 *               compressed → decoded on the shared pool (codecs.ts), the last
 *               few clusters kept (a reader walking a cluster in small pieces
 *               decodes it once)
 *   status      the driver's runs as data / zero / unallocated (with a
 *               backing file: the backing file's status for unallocated runs)
 *   write       into data runs in place; a cluster not stored yet is built
 *               whole (old contents from backing, zeros or its compressed
 *               form, then the new bytes: copy-on-write of partial
 *               clusters), written to host space from `allocate`, and only
 *               then `commit`ted to the table
 *               (with `compress`: stored compressed when the format can and
 *               it shrinks, with the format's `writeCodec`, on the shared pool)
 *   writeZeroes skips ranges that already read as zero, records whole
 *               clusters as zero where the driver can, writes zeros otherwise
 *   locking     allocation is serialised (one Mutex); reads and writes to
 *               allocated clusters run concurrently (the formats/types.ts
 *               contract: overlapping requests are never in flight together)
 */

import { type BlockDevice, type Extent, checkRange, checkWritable, growDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import { Mutex } from '../../core/mutex.js';
import { compressCluster, decompressCluster } from './codecs.js';
import type { Mapping, MappedFormat } from './mapping.js';

export interface EngineOptions {
  /** The container: data and compressed runs are read from (and written to) its host offsets. */
  container: BlockDevice;
  writable?: boolean;
  /** The backing image (already opened, only when the user allowed it). */
  backing?: BlockDevice;
  /** The image is new and its tables map nothing: it reads as zero everywhere. */
  zeroInit?: boolean;
  /** Store new clusters compressed (qemu-img -c) when the format can and the cluster shrinks. */
  compress?: boolean;
  /** Close the container when the device closes (false when the caller shares it). */
  ownsContainer?: boolean;
}

const DECODED_CLUSTERS = 4;

export class MappedDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly zeroInit: boolean;
  private readonly allocation = new Mutex();
  private readonly decoded = new Map<number, Promise<Uint8Array>>();
  private closed = false;

  constructor(
    readonly fmt: MappedFormat,
    private readonly o: EngineOptions,
  ) {
    this.size = fmt.size;
    this.readOnly = !o.writable;
    this.zeroInit = !!o.zeroInit;
  }

  /** The driver's run at `pos`, checked: non-empty, inside the request. */
  private async lookup(pos: number, length: number): Promise<Mapping> {
    const m = await this.fmt.lookup(pos, length);
    if (!(m.length > 0) || !Number.isSafeInteger(m.length)) {
      throw new ImageError('corrupt', `${this.fmt.name}: lookup at ${pos} returned an empty run`, { format: this.fmt.name, offset: pos });
    }
    return m.length > length ? { ...m, length } : m;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      const m = await this.lookup(pos, buf.length - done);
      await this.readRun(buf.subarray(done, done + m.length), pos, m);
      done += m.length;
    }
  }

  private async readRun(out: Uint8Array, pos: number, m: Mapping): Promise<void> {
    switch (m.kind) {
      case 'unallocated':
        return this.readBacking(out, pos);
      case 'zero':
        out.fill(0);
        return;
      case 'data':
        return this.o.container.read(out, m.host);
      case 'compressed': {
        const cluster = await this.decode(m);
        const within = pos % this.fmt.clusterSize;
        if (within + out.length > cluster.length) {
          throw new ImageError(
            'corrupt',
            `${this.fmt.name}: compressed cluster at host offset ${m.host} decodes to ${cluster.length} bytes, fewer than the ${within + out.length} read`,
            { format: this.fmt.name, field: 'compressed cluster', offset: m.host, value: cluster.length },
          );
        }
        out.set(cluster.subarray(within, within + out.length));
        return;
      }
    }
  }

  private async readBacking(out: Uint8Array, pos: number): Promise<void> {
    const b = this.o.backing;
    const n = b ? Math.max(0, Math.min(out.length, b.size - pos)) : 0;
    if (n > 0) await b!.read(out.subarray(0, n), pos);
    out.fill(0, n);
  }

  private decode(m: Extract<Mapping, { kind: 'compressed' }>): Promise<Uint8Array> {
    const hit = this.decoded.get(m.host);
    if (hit) return hit;
    const p = (async () => {
      const stored = new Uint8Array(m.stored);
      await this.o.container.read(stored, m.host);
      return decompressCluster(this.fmt.name, m.codec, stored, this.fmt.clusterSize, m.host);
    })();
    this.decoded.set(m.host, p);
    p.catch(() => this.decoded.delete(m.host));
    while (this.decoded.size > DECODED_CLUSTERS) this.decoded.delete(this.decoded.keys().next().value as number);
    return p;
  }

  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    const m = await this.lookup(offset, length);
    if (m.kind === 'unallocated' && this.o.backing) {
      const b = this.o.backing;
      if (offset >= b.size) return { offset, length: m.length, kind: 'zero' };
      const e = await b.status(offset, Math.min(m.length, b.size - offset));
      return { offset, length: e.length, kind: e.kind };
    }
    const kind = m.kind === 'compressed' ? 'data' : m.kind;
    return { offset, length: m.length, kind };
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, buf.length, 'write');
    const cs = this.fmt.clusterSize;
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      // One cluster at most per step: a new cluster is built whole.
      const n = Math.min(buf.length - done, cs - (pos % cs));
      const m = await this.lookup(pos, n);
      if (m.kind === 'data') {
        await this.o.container.write(buf.subarray(done, done + m.length), m.host);
        done += m.length;
      } else {
        await this.allocation.run(() => this.writeNewCluster(buf.subarray(done, done + n), pos));
        done += n;
      }
    }
  }

  /** Write `piece` (inside one cluster) to a cluster that is not stored as data yet. Holds the allocation lock. */
  private async writeNewCluster(piece: Uint8Array, pos: number): Promise<void> {
    const { allocate, commit } = this.fmt;
    if (!allocate || !commit) {
      throw new ImageError('unsupported', `${this.fmt.name}: this image cannot allocate clusters`, { format: this.fmt.name, operation: 'write' });
    }
    // Another writer may have stored this cluster while we waited for the lock.
    const again = await this.lookup(pos, piece.length);
    if (again.kind === 'data' && again.length >= piece.length) return this.o.container.write(piece, again.host);
    const cs = this.fmt.clusterSize;
    const start = pos - (pos % cs);
    const cluster = new Uint8Array(cs);
    if (piece.length < Math.min(cs, this.size - start)) {
      // Copy-on-write: the cluster's bytes as they read now, under the new ones.
      await this.read(cluster.subarray(0, Math.min(cs, this.size - start)), start);
    }
    cluster.set(piece, pos - start);
    if (await this.writeCompressed(cluster, start)) return;
    const host = await allocate.call(this.fmt, start);
    await this.makeRoom(host + cluster.length);
    await this.o.container.write(cluster, host);
    await commit.call(this.fmt, start, host);
  }

  /** Store a new cluster compressed, when asked and it shrinks; false to store it as data. */
  private async writeCompressed(cluster: Uint8Array, start: number): Promise<boolean> {
    const { writeCodec, allocateCompressed, commitCompressed } = this.fmt;
    if (!this.o.compress || !writeCodec || !allocateCompressed || !commitCompressed) return false;
    const stored = await compressCluster(writeCodec, cluster);
    if (stored.length >= cluster.length) return false;
    const host = await allocateCompressed.call(this.fmt, start, stored.length);
    await this.makeRoom(host + stored.length);
    await this.o.container.write(stored, host);
    await commitCompressed.call(this.fmt, start, host, stored.length);
    return true;
  }

  /**
   * Grow the container to hold `end` bytes: a growable device (a new file)
   * grows by being written; an existing file opened for writing is extended
   * with resize. (The one place mapped formats grow their container.)
   */
  private async makeRoom(end: number): Promise<void> {
    await growDevice(this.o.container, end, this.fmt.name);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, length, 'writeZeroes');
    const cs = this.fmt.clusterSize;
    const zeros = new Uint8Array(Math.min(cs, length));
    for (let done = 0; done < length; ) {
      const pos = offset + done;
      const n = Math.min(length - done, cs - (pos % cs));
      const m = await this.lookup(pos, n);
      if (m.kind === 'zero' || (m.kind === 'unallocated' && !this.o.backing)) {
        done += m.length;
        continue;
      }
      const whole = pos % cs === 0 && (n === cs || pos + n === this.size);
      const marked = whole && this.fmt.markZero ? await this.allocation.run(() => this.fmt.markZero!(pos)) : false;
      if (!marked) await this.write(zeros.subarray(0, n), pos);
      done += n;
    }
  }

  async flush(): Promise<void> {
    if (!this.readOnly) await this.fmt.flush?.();
    await this.o.container.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.readOnly) await this.fmt.flush?.();
    } finally {
      if (this.o.ownsContainer !== false) await this.o.container.close();
      await this.o.backing?.close();
    }
  }
}
