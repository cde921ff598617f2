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
 *               it shrinks, with the format's `writeCodec`, on the shared pool);
 *               two or more whole new clusters in one write, when the driver
 *               has `allocateRun`: one host range, one write, one commit;
 *               `shared` data runs are copied, never written in place
 *   writeZeroes skips ranges that already read as zero, records whole
 *               clusters as zero where the driver can, writes zeros otherwise
 *   locking     allocation is serialised (one Mutex); reads and writes to
 *               allocated clusters run concurrently (the formats/types.ts
 *               contract: overlapping requests are never in flight together),
 *               and so do the data writes of whole-cluster runs (allocated
 *               and committed under the lock, written between)
 *   growth      the container grows as clusters are placed; with `growAhead`
 *               a growable file is extended in steps ahead of the writes
 *               (writes inside a file's size skip the filesystem's
 *               serialised size updates) and trimmed to the driver's
 *               `hostEnd` at close
 */

import { type BlockDevice, type Extent, checkRange, checkWritable, growDevice, isZero, isZeroRange } from '../../core/device.js';
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
  /** The device data runs live on (an external data file); default the container. Closed with the device when given. */
  data?: BlockDevice;
  /** Grow a growable container ahead of writes in steps, trimmed to `fmt.hostEnd()` at close. */
  growAhead?: boolean;
  /** A write of zeros onto a cluster that reads as zero (zero, or unallocated without backing) stores nothing. */
  skipZeroWrites?: boolean;
  /** status: an unallocated run past the backing file's end stays 'unallocated' (qcow2), instead of 'zero'. */
  unallocatedPastBacking?: boolean;
}

const DECODED_CLUSTERS = 4;
/** status joins at most this many further runs of the same kind into one extent. */
const STATUS_RUNS = 1024;
/** growAhead: the container is extended by its own size, at least 64 MiB and at most 1 GiB, at a time. */
const GROW_MIN = 64 << 20;
const GROW_MAX = 1 << 30;

export class MappedDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly zeroInit: boolean;
  private readonly allocation = new Mutex();
  private readonly decoded = new Map<number, Promise<Uint8Array>>();
  private closed = false;
  private grownAhead = false;
  private readonly dataDev: BlockDevice;

  constructor(
    readonly fmt: MappedFormat,
    private readonly o: EngineOptions,
  ) {
    this.size = fmt.size;
    this.readOnly = !o.writable;
    this.zeroInit = !!o.zeroInit;
    this.dataDev = o.data ?? o.container;
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
    // The runs of one request are read (and decoded) concurrently.
    const runs: Array<Promise<void>> = [];
    try {
      for (let done = 0; done < buf.length; ) {
        const pos = offset + done;
        const m = await this.lookup(pos, buf.length - done);
        runs.push(this.readRun(buf.subarray(done, done + m.length), pos, m));
        done += m.length;
      }
    } finally {
      const settled = await Promise.allSettled(runs);
      for (const r of settled) if (r.status === 'rejected') throw r.reason;
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
        return this.dataDev.read(out, m.host);
      case 'compressed': {
        const within = pos % this.fmt.clusterSize;
        const cluster = await this.decode(m, pos - within);
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

  private decode(m: Extract<Mapping, { kind: 'compressed' }>, guestStart: number): Promise<Uint8Array> {
    const hit = this.decoded.get(m.host);
    if (hit) return hit;
    const p = (async () => {
      const stored = new Uint8Array(m.stored);
      await this.o.container.read(stored, m.host);
      return decompressCluster(this.fmt.name, m.codec, stored, this.fmt.clusterSize, m.host, m.exact ? { exact: true, guest: guestStart } : {});
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
      if (offset >= b.size) return { offset, length: m.length, kind: this.o.unallocatedPastBacking ? 'unallocated' : 'zero' };
      const e = await b.status(offset, Math.min(m.length, b.size - offset));
      return { offset, length: e.length, kind: e.kind };
    }
    const kind = m.kind === 'compressed' ? 'data' : m.kind;
    // Following runs of the same kind join the extent (data runs need not be contiguous on the host).
    let len = m.length;
    for (let i = 0; len < length && i < STATUS_RUNS; i++) {
      const next = await this.lookup(offset + len, length - len);
      if ((next.kind === 'compressed' ? 'data' : next.kind) !== kind) break;
      len += next.length;
    }
    return { offset, length: len, kind };
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, buf.length, 'write');
    const cs = this.fmt.clusterSize;
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      const m = await this.lookup(pos, buf.length - done);
      if (m.kind === 'data' && !m.shared) {
        await this.dataDev.write(buf.subarray(done, done + m.length), m.host);
        done += m.length;
        continue;
      }
      let run = this.wholeRun(pos, Math.min(m.length, buf.length - done));
      if (run >= 1 && this.o.skipZeroWrites && this.readsZero(m)) {
        // Zero clusters onto clusters that read as zero store nothing: skip them, and end the run at the next one.
        const zeroAt = (k: number) => isZeroRange(buf, done + k * cs, done + (k + 1) * cs);
        let z = 0;
        while (z < run && zeroAt(z)) z++;
        if (z > 0) {
          done += z * cs;
          continue;
        }
        let k = 1;
        while (k < run && !zeroAt(k)) k++;
        run = k;
      }
      if (run >= 1) {
        await this.writeNewRun(buf.subarray(done, done + run * cs), pos, run);
        done += run * cs;
        continue;
      }
      // One cluster at most per step: a new cluster is built whole.
      const n = Math.min(buf.length - done, cs - (pos % cs));
      const piece = buf.subarray(done, done + n);
      done += n;
      if (this.o.skipZeroWrites && this.readsZero(m) && isZero(piece)) continue;
      // A whole cluster to compress: compressed before taking the lock (compressions run in parallel).
      const whole = pos % cs === 0 && (n === cs || pos + n === this.size);
      const stored = whole && m.kind !== 'data' ? await this.compressed(piece) : undefined;
      await this.allocation.run(() => this.writeNewCluster(piece, pos, stored));
    }
  }

  /** How many whole clusters from `pos` (a run of `length` bytes not stored as data) one `allocateRun` can take; 0 when it does not apply. */
  private wholeRun(pos: number, length: number): number {
    const cs = this.fmt.clusterSize;
    if (!this.fmt.allocateRun || !this.fmt.commitRun || this.o.compress || pos % cs !== 0) return 0;
    return Math.floor(length / cs);
  }

  /**
   * Write `clusters` whole clusters that are not stored as data yet: host
   * space for all of them at once, one write, one commit (data before the
   * table). No other request touches these clusters (the formats/types.ts
   * contract), so the data write runs outside the allocation lock.
   */
  private async writeNewRun(data: Uint8Array, pos: number, clusters: number): Promise<void> {
    const host = await this.allocation.run(async () => {
      const h = await this.fmt.allocateRun!(pos, clusters);
      await this.makeRoom(h + data.length, this.dataDev);
      return h;
    });
    await this.dataDev.write(data, host);
    await this.allocation.run(() => this.fmt.commitRun!(pos, clusters, host));
  }

  /** Does this run read as zero in the guest? */
  private readsZero(m: Mapping): boolean {
    return m.kind === 'zero' || (m.kind === 'unallocated' && !this.o.backing);
  }

  /** `cluster` compressed with the format's codec, when the engine compresses and it shrinks. */
  private async compressed(cluster: Uint8Array): Promise<Uint8Array | undefined> {
    const { writeCodec, allocateCompressed, commitCompressed } = this.fmt;
    if (!this.o.compress || !writeCodec || !allocateCompressed || !commitCompressed) return undefined;
    let input = cluster;
    if (input.length < this.fmt.clusterSize) {
      input = new Uint8Array(this.fmt.clusterSize);
      input.set(cluster);
    }
    const stored = await compressCluster(writeCodec, input);
    return stored.length < input.length ? stored : undefined;
  }

  /**
   * Write `piece` (inside one cluster) to a cluster that is not stored as
   * data yet (`stored`: the whole cluster `piece`, compressed already). Holds
   * the allocation lock.
   */
  private async writeNewCluster(piece: Uint8Array, pos: number, stored?: Uint8Array): Promise<void> {
    const { allocate, commit } = this.fmt;
    if (!allocate || !commit) {
      throw new ImageError('unsupported', `${this.fmt.name}: this image cannot allocate clusters`, { format: this.fmt.name, operation: 'write' });
    }
    // Another writer may have stored this cluster while we waited for the lock.
    const again = await this.lookup(pos, piece.length);
    if (again.kind === 'data' && !again.shared && again.length >= piece.length) return this.dataDev.write(piece, again.host);
    if (this.o.skipZeroWrites && this.readsZero(again) && isZero(piece)) return;
    const cs = this.fmt.clusterSize;
    const start = pos - (pos % cs);
    if (stored) return this.placeCompressed(stored, start);
    const cluster = new Uint8Array(cs);
    const inCluster = Math.min(cs, this.size - start);
    if (piece.length < inCluster) {
      // Copy-on-write: the cluster's bytes as they read now, under the new
      // ones (unless all of it reads as zero: the new buffer is zeros already,
      // and zero-filling a 1 MiB VDI block per partial write costs more than
      // the write).
      const whole = await this.lookup(start, inCluster);
      if (!(this.readsZero(whole) && whole.length >= inCluster)) await this.read(cluster.subarray(0, inCluster), start);
    }
    cluster.set(piece, pos - start);
    if (await this.writeCompressed(cluster, start)) return;
    const host = await allocate.call(this.fmt, start);
    await this.makeRoom(host + cluster.length, this.dataDev);
    await this.dataDev.write(cluster, host);
    await commit.call(this.fmt, start, host);
  }

  /** Store a new cluster compressed, when asked and it shrinks; false to store it as data. */
  private async writeCompressed(cluster: Uint8Array, start: number): Promise<boolean> {
    const stored = await this.compressed(cluster);
    if (!stored) return false;
    await this.placeCompressed(stored, start);
    return true;
  }

  /** Host space, data, then the table entry for a compressed cluster. Holds the allocation lock. */
  private async placeCompressed(stored: Uint8Array, start: number): Promise<void> {
    const host = await this.fmt.allocateCompressed!(start, stored.length);
    await this.makeRoom(host + stored.length);
    await this.o.container.write(stored, host);
    await this.fmt.commitCompressed!(start, host, stored.length);
  }

  /**
   * Grow the container to hold `end` bytes: a growable device (a new file)
   * grows by being written; an existing file opened for writing is extended
   * with resize. (The one place mapped formats grow their container.)
   */
  private async makeRoom(end: number, dev: BlockDevice = this.o.container): Promise<void> {
    const g = dev as BlockDevice & { growable?: boolean };
    if (this.o.growAhead && dev === this.o.container && end > dev.size && g.growable && typeof dev.resize === 'function') {
      this.grownAhead = true;
      return dev.resize(end + Math.min(GROW_MAX, Math.max(GROW_MIN, dev.size)));
    }
    await growDevice(dev, end, this.fmt.name);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkWritable(this);
    checkRange(this, offset, length, 'writeZeroes');
    const cs = this.fmt.clusterSize;
    const zeros = new Uint8Array(Math.min(cs, length));
    for (let done = 0; done < length; ) {
      const pos = offset + done;
      const m = await this.lookup(pos, length - done);
      if (this.readsZero(m)) {
        done += m.length;
        continue;
      }
      const n = Math.min(length - done, cs - (pos % cs));
      const whole = pos % cs === 0 && (n === cs || pos + n === this.size);
      const marked = whole && this.fmt.markZero ? await this.allocation.run(() => this.fmt.markZero!(pos)) : false;
      if (!marked) await this.write(zeros.subarray(0, n), pos);
      done += n;
    }
  }

  async flush(): Promise<void> {
    if (!this.readOnly && this.fmt.flush) await this.allocation.run(() => this.fmt.flush!());
    await this.o.container.flush();
    if (this.o.data) await this.o.data.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.readOnly && this.fmt.flush) await this.allocation.run(() => this.fmt.flush!());
      const c = this.o.container;
      if (this.grownAhead && this.fmt.hostEnd && c.resize) {
        const end = this.fmt.hostEnd();
        if (c.size > end) await c.resize(end);
      }
      if (!this.readOnly && this.o.growAhead) await c.flush();
    } finally {
      try {
        if (this.o.ownsContainer !== false) await this.o.container.close();
        await this.o.data?.close();
      } finally {
        await this.o.backing?.close();
      }
    }
  }
}
