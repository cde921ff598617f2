/**
 * The VHDX log ([MS-VHDX] 2.3): a circular buffer of entries, each a set of
 * 4 KiB writes and zero ranges to the file. A header whose logGuid is not
 * zero says the log may hold writes that never reached their place: they
 * are replayed before anything else is read.
 *
 * Finding the active sequence: every 4 KiB slot of the log is tried as an
 * entry (signature, logGuid, lengths, descriptors, data-sector sequence
 * numbers, CRC-32C); the valid entry with the highest sequence number ends
 * the sequence, and its `tail` names where the sequence starts; the entries
 * from there must follow each other with consecutive sequence numbers.
 *
 * imgtool is stricter than qemu in one place: an entry carrying this log's
 * GUID whose checksum or length fails, newer than every valid entry (or with
 * no valid entry at all), is an error (qemu silently replays nothing). Older damaged
 * entries are leftovers of the circular buffer and are ignored.
 *
 * Replay yields operations; the caller applies them in memory (a read: the
 * file never changes) or to the file (opening for write).
 */

import type { BlockDevice, Extent } from '../../core/device.js';
import { checkRange } from '../../core/device.js';
import { u32le, u64le } from '../../core/bytes.js';
import { ImageError, fieldError } from '../../core/errors.js';
import {
  type HeaderValue,
  LOG_SECTOR,
  LogDataSector,
  LogDescriptor,
  LogEntryHeader,
  type LogEntryValue,
  SIG_DATA,
  SIG_DESC,
  SIG_LOGE,
  SIG_ZERO,
  checksumWithout,
  guidEqual,
} from './structs.js';

/** Logs replayed in memory are at most this long (qemu writes 1 MiB). */
export const MAX_LOG_BYTES = 256 << 20;

export type ReplayOp = { offset: number; data: Uint8Array } | { offset: number; zero: number };

export interface Replay {
  ops: ReplayOp[];
  /** The file must be at least this long after the replay. */
  fileSize: number;
  entries: number;
}

interface Entry {
  at: number;
  header: LogEntryValue;
  ops: ReplayOp[];
}

/** A damaged entry of this log: which check failed (the field named in the error), its sequence number, where it is. */
interface Damage {
  field: 'log entry checksum' | 'log entry length';
  seq: bigint;
  at: number;
  value: number;
}

type Parsed = { ok: true; entry: Entry } | { ok: false; damage?: Damage };

class LogReader {
  constructor(
    readonly log: Uint8Array,
    readonly logOffset: number,
    readonly header: HeaderValue,
    readonly fileLimit: number,
  ) {}

  /** `n` bytes from log position `pos`, wrapping around the circular buffer. */
  slice(pos: number, n: number): Uint8Array {
    const L = this.log.length;
    const start = pos % L;
    if (start + n <= L) return this.log.subarray(start, start + n);
    const out = new Uint8Array(n);
    out.set(this.log.subarray(start));
    out.set(this.log.subarray(0, n - (L - start)), L - start);
    return out;
  }

  parse(at: number): Parsed {
    const head = LogEntryHeader.parse(this.slice(at, LogEntryHeader.size));
    if (head.signature !== SIG_LOGE || !guidEqual(head.logGuid, this.header.logGuid)) return { ok: false };
    const len = head.entryLength;
    const descBytes = Math.ceil((64 + 32 * head.descriptorCount) / LOG_SECTOR) * LOG_SECTOR;
    if (len === 0 || len % LOG_SECTOR !== 0 || len > this.log.length || head.descriptorCount > len / 32 || descBytes > len) {
      return { ok: false, damage: { field: 'log entry length', seq: head.sequenceNumber, at: at + 8, value: len } };
    }
    const whole = this.slice(at, len);
    if (checksumWithout(whole, 4) !== head.checksum) return { ok: false, damage: { field: 'log entry checksum', seq: head.sequenceNumber, at: at + 4, value: head.checksum } };
    const ops: ReplayOp[] = [];
    let dataAt = descBytes;
    for (let i = 0; i < head.descriptorCount; i++) {
      const d = LogDescriptor.parse(whole.subarray(64 + 32 * i));
      if (d.sequenceNumber !== head.sequenceNumber) return { ok: false };
      const fileOffset = this.offsetOf(d.fileOffset, at, i);
      if (d.signature === SIG_ZERO) {
        const n = u64le(d.leading, 0);
        if (n % BigInt(LOG_SECTOR) !== 0n || fileOffset + Number(n) > this.fileLimit) throw this.descError(at, i, 'zero length', n);
        ops.push({ offset: fileOffset, zero: Number(n) });
      } else if (d.signature === SIG_DESC) {
        if (dataAt + LOG_SECTOR > len) return { ok: false };
        const s = LogDataSector.parse(whole.subarray(dataAt));
        const seq = (BigInt(s.sequenceHigh) << 32n) | BigInt(s.sequenceLow);
        if (s.signature !== SIG_DATA || seq !== head.sequenceNumber) return { ok: false };
        const sector = new Uint8Array(LOG_SECTOR);
        sector.set(d.leading, 0);
        sector.set(s.data, 8);
        sector.set(d.trailing, LOG_SECTOR - 4);
        ops.push({ offset: fileOffset, data: sector });
        dataAt += LOG_SECTOR;
      } else {
        return { ok: false };
      }
    }
    return { ok: true, entry: { at, header: head, ops } };
  }

  private offsetOf(v: bigint, at: number, i: number): number {
    if (v % BigInt(LOG_SECTOR) !== 0n || v + BigInt(LOG_SECTOR) > BigInt(this.fileLimit)) throw this.descError(at, i, 'file offset', v);
    return Number(v);
  }

  private descError(at: number, i: number, what: string, v: bigint): ImageError {
    return fieldError('corrupt', 'vhdx', `log entry descriptor ${i} ${what}`, this.logOffset + ((at + 64 + 32 * i) % this.log.length), v, `is not a 4 KiB multiple inside ${this.fileLimit} bytes`);
  }
}

/** Find and decode the active log sequence. `fileLimit`: no replayed write may reach past it. */
export async function readLog(child: BlockDevice, header: HeaderValue, headerAt: number, fileLimit: number): Promise<Replay> {
  const logOffset = Number(header.logOffset);
  const length = header.logLength;
  if (length > MAX_LOG_BYTES) {
    throw fieldError('unsupported', 'vhdx', 'log length', headerAt + 68, length, `is more than the ${MAX_LOG_BYTES} bytes imgtool replays`);
  }
  const log = new Uint8Array(length);
  await child.read(log, logOffset);
  const r = new LogReader(log, logOffset, header, fileLimit);
  const valid = new Map<number, Entry>();
  let best: Entry | undefined;
  let newestBad: Damage | undefined;
  for (let at = 0; at < length; at += LOG_SECTOR) {
    if (u32le(log, at) !== SIG_LOGE) continue;
    const p = r.parse(at);
    if (p.ok) {
      valid.set(at, p.entry);
      if (!best || p.entry.header.sequenceNumber > best.header.sequenceNumber) best = p.entry;
    } else if (p.damage && (!newestBad || p.damage.seq > newestBad.seq)) newestBad = p.damage;
  }
  if (newestBad && (!best || newestBad.seq > best.header.sequenceNumber)) {
    const d = newestBad;
    const why = d.field === 'log entry checksum' ? 'does not match the entry (CRC-32C)' : 'is not a 4 KiB multiple holding its descriptors inside the log';
    throw fieldError('corrupt', 'vhdx', d.field, logOffset + d.at, d.value, `${why}, in the entry with sequence ${d.seq}, newer than any valid entry: the log cannot be replayed`);
  }
  if (!best) return { ops: [], fileSize: 0, entries: 0 };
  // The sequence runs from the newest entry's tail to the newest entry.
  const chain: Entry[] = [];
  let at = best.header.tail;
  for (let seq: bigint | undefined; ; ) {
    const e = valid.get(at % length);
    if (!e || (seq !== undefined && e.header.sequenceNumber !== seq + 1n) || chain.length > length / LOG_SECTOR) {
      throw fieldError('corrupt', 'vhdx', 'log entry tail', logOffset + best.at + 12, best.header.tail, 'does not lead to a run of consecutive valid entries ending at the newest');
    }
    chain.push(e);
    if (e === best) break;
    seq = e.header.sequenceNumber;
    at = (e.at + e.header.entryLength) % length;
  }
  const ops = chain.flatMap((e) => e.ops);
  let fileSize = 0;
  for (const e of chain) fileSize = Math.max(fileSize, Math.min(Number(e.header.lastFileOffset), fileLimit));
  return { ops, fileSize, entries: chain.length };
}

/** Apply a replay to a writable file. */
export async function applyReplay(child: BlockDevice, replay: Replay): Promise<void> {
  for (const op of replay.ops) {
    if ('data' in op) await child.write(op.data, op.offset);
    else await child.writeZeroes(op.offset, op.zero);
  }
  if (replay.fileSize > child.size) await child.writeZeroes(child.size, replay.fileSize - child.size);
}

/**
 * The file as it reads after a replay, without changing it: the file's
 * bytes (zeros past its end), then every operation over them in order.
 */
export class ReplayedDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly = true;
  constructor(
    private readonly base: BlockDevice,
    private readonly replay: Replay,
  ) {
    this.size = replay.ops.reduce((m, o) => Math.max(m, o.offset + ('data' in o ? o.data.length : o.zero)), Math.max(base.size, replay.fileSize));
  }
  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    const inBase = Math.max(0, Math.min(buf.length, this.base.size - offset));
    if (inBase > 0) await this.base.read(buf.subarray(0, inBase), offset);
    buf.fill(0, inBase);
    const end = offset + buf.length;
    for (const op of this.replay.ops) {
      const opEnd = op.offset + ('data' in op ? op.data.length : op.zero);
      const s = Math.max(offset, op.offset);
      const e = Math.min(end, opEnd);
      if (s >= e) continue;
      if ('data' in op) buf.set(op.data.subarray(s - op.offset, e - op.offset), s - offset);
      else buf.fill(0, s - offset, e - offset);
    }
  }
  async write(): Promise<void> {
    throw new ImageError('usage', 'vhdx: a replayed log view is read-only', { format: 'vhdx', operation: 'write' });
  }
  async writeZeroes(): Promise<void> {
    return this.write();
  }
  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    return { offset, length, kind: 'data' };
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {
    await this.base.close();
  }
}
