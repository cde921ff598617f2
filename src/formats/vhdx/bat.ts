/**
 * A VHDX's BAT as a MappedFormat for the shared engine.
 *
 *   guest offset ──block──► BAT[batIndex(block)] = state | file offset (MiB) << 20
 *   not present, undefined, unmapped  unallocated (zeros: imgtool refuses parents)
 *   zero                              zero
 *   fully present                     data at the file offset
 *   partially present                 refused (differencing disks only)
 *
 * Allocation appends 1 MiB aligned blocks at the end of the file and points
 * the entry at them (fully present) after the data is written.
 */

import type { BlockDevice } from '../../core/device.js';
import { put64le } from '../../core/bytes.js';
import { fieldError } from '../../core/errors.js';
import type { Mapping, MappedFormat } from '../engine/mapping.js';
import type { VhdxLayout } from './layout.js';
import { MIB, PAYLOAD_FULLY_PRESENT, PAYLOAD_NOT_PRESENT, PAYLOAD_PARTIALLY_PRESENT, PAYLOAD_UNDEFINED, PAYLOAD_UNMAPPED, PAYLOAD_ZERO, batIndex } from './structs.js';

const UNALLOCATED = [PAYLOAD_NOT_PRESENT, PAYLOAD_UNDEFINED, PAYLOAD_UNMAPPED];

/** What no payload block may overlap: headers and region tables, log, metadata region, BAT. */
function metadataRanges(l: VhdxLayout): Array<[number, number, string]> {
  const log = Number(l.header.logOffset);
  return [
    [0, MIB, 'headers and region tables'],
    [log, log + l.header.logLength, 'log'],
    [l.metadataOffset, l.metadataOffset + l.metadataLength, 'metadata region'],
    [l.batOffset, l.batOffset + l.batLength, 'BAT region'],
  ];
}

export class VhdxBat implements MappedFormat {
  readonly name = 'vhdx';
  readonly size: number;
  readonly clusterSize: number;
  private next: number;

  private constructor(
    private readonly child: BlockDevice,
    readonly layout: VhdxLayout,
    /** Per payload block: its state, and its file offset in MiB. */
    private readonly states: Uint8Array,
    private readonly mib: Uint32Array,
    next: number,
  ) {
    this.size = layout.size;
    this.clusterSize = layout.blockSize;
    this.next = next;
  }

  static async open(child: BlockDevice, l: VhdxLayout): Promise<VhdxBat> {
    const raw = new Uint8Array(l.entries * 8);
    await child.read(raw, l.batOffset);
    const v = new DataView(raw.buffer);
    const states = new Uint8Array(l.blocks);
    const mib = new Uint32Array(l.blocks);
    let next = Math.ceil(child.size / MIB) * MIB;
    for (let b = 0; b < l.blocks; b++) {
      const i = batIndex(b, l.chunkRatio);
      const e = v.getBigUint64(8 * i, true);
      const state = Number(e & 7n);
      const at = l.batOffset + 8 * i;
      if (!UNALLOCATED.includes(state) && state !== PAYLOAD_ZERO && state !== PAYLOAD_FULLY_PRESENT && state !== PAYLOAD_PARTIALLY_PRESENT) {
        throw fieldError('corrupt', 'vhdx', `BAT entry ${i} state`, at, state, 'is not a payload block state');
      }
      if (state === PAYLOAD_PARTIALLY_PRESENT) throw fieldError('unsupported', 'vhdx', `BAT entry ${i} state`, at, state, 'is partially present, which only differencing disks use');
      states[b] = state;
      if (state !== PAYLOAD_FULLY_PRESENT) continue;
      const m = e >> 20n;
      const host = Number(m) * MIB;
      // The last block may be partial in the file (qemu wrote such images): only its guest bytes must be there.
      const length = Math.min(l.blockSize, l.size - b * l.blockSize);
      if (m < 1n || host + length > child.size) {
        throw fieldError('corrupt', 'vhdx', `BAT entry ${i} file offset`, at, m * BigInt(MIB), `puts a ${length}-byte block outside the ${child.size}-byte file`);
      }
      const clash = metadataRanges(l).find(([s0, e0]) => host < e0 && s0 < host + l.blockSize);
      if (clash) throw fieldError('corrupt', 'vhdx', `BAT entry ${i} file offset`, at, host, `puts a block over the ${clash[2]} [${clash[0]}, ${clash[1]})`);
      mib[b] = Number(m);
      next = Math.max(next, host + l.blockSize);
    }
    return new VhdxBat(child, l, states, mib, next);
  }

  async lookup(offset: number, length: number): Promise<Mapping> {
    const bs = this.layout.blockSize;
    const block = Math.floor(offset / bs);
    const within = offset - block * bs;
    const state = this.states[block]!;
    const end = offset + length;
    const run = (same: (b: number, k: number) => boolean): number => {
      let k = 1;
      while (block + k < this.states.length && (block + k) * bs < end && same(block + k, k)) k++;
      return Math.min(length, k * bs - within);
    };
    if (state === PAYLOAD_FULLY_PRESENT) {
      const host = this.mib[block]! * MIB;
      const n = run((b, k) => this.states[b] === PAYLOAD_FULLY_PRESENT && this.mib[b]! * MIB === host + k * bs);
      return { kind: 'data', length: n, host: host + within };
    }
    if (state === PAYLOAD_ZERO) return { kind: 'zero', length: run((b) => this.states[b] === PAYLOAD_ZERO) };
    return { kind: 'unallocated', length: run((b) => UNALLOCATED.includes(this.states[b]!)) };
  }

  async allocate(_offset: number): Promise<number> {
    const host = this.next;
    this.next += this.layout.blockSize;
    return host;
  }

  async commit(offset: number, host: number): Promise<void> {
    const block = Math.floor(offset / this.layout.blockSize);
    this.states[block] = PAYLOAD_FULLY_PRESENT;
    this.mib[block] = host / MIB;
    const entry = new Uint8Array(8);
    put64le(entry, 0, (BigInt(host / MIB) << 20n) | BigInt(PAYLOAD_FULLY_PRESENT));
    await this.child.write(entry, this.layout.batOffset + 8 * batIndex(block, this.layout.chunkRatio));
  }
}
