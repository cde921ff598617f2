/**
 * Little- and big-endian reads and writes on byte arrays: one place for every
 * codec's field access. 64-bit values are BigInt (`u64le`); `u64leSafe`
 * converts to a number and throws an ImageError naming the field when the
 * value passes 2^53 (offsets and sizes the code does arithmetic on).
 */

import { ImageError } from './errors.js';

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

export const u8 = (b: Uint8Array, off: number): number => view(b).getUint8(off);
export const u16le = (b: Uint8Array, off: number): number => view(b).getUint16(off, true);
export const u16be = (b: Uint8Array, off: number): number => view(b).getUint16(off, false);
export const u32le = (b: Uint8Array, off: number): number => view(b).getUint32(off, true);
export const u32be = (b: Uint8Array, off: number): number => view(b).getUint32(off, false);
export const u64le = (b: Uint8Array, off: number): bigint => view(b).getBigUint64(off, true);
export const u64be = (b: Uint8Array, off: number): bigint => view(b).getBigUint64(off, false);

export function put16le(b: Uint8Array, off: number, v: number): void {
  view(b).setUint16(off, v, true);
}
export function put16be(b: Uint8Array, off: number, v: number): void {
  view(b).setUint16(off, v, false);
}
export function put32le(b: Uint8Array, off: number, v: number): void {
  view(b).setUint32(off, v >>> 0, true);
}
export function put32be(b: Uint8Array, off: number, v: number): void {
  view(b).setUint32(off, v >>> 0, false);
}
export function put64le(b: Uint8Array, off: number, v: bigint | number): void {
  view(b).setBigUint64(off, BigInt(v), true);
}
export function put64be(b: Uint8Array, off: number, v: bigint | number): void {
  view(b).setBigUint64(off, BigInt(v), false);
}

/** A 64-bit value as a number, or an ImageError naming the field when it passes 2^53. */
export function safeNumber(v: bigint, format: string, field: string, offset: number): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ImageError('invalid-format', `${format}: ${field} (at offset ${offset}, value ${v}) is larger than 2^53`, {
      format,
      field,
      offset,
      value: v,
    });
  }
  return Number(v);
}

/** Read a little-endian 64-bit field as a number (see safeNumber). */
export function u64leSafe(b: Uint8Array, off: number, format: string, field: string, base = 0): number {
  return safeNumber(u64le(b, off), format, field, base + off);
}

/** An array of little-endian 32-bit entries (tables) as a Uint32Array copy. */
export function u32leArray(b: Uint8Array, count: number, off = 0): Uint32Array {
  const out = new Uint32Array(count);
  const v = view(b);
  for (let i = 0; i < count; i++) out[i] = v.getUint32(off + 4 * i, true);
  return out;
}

/** Encode 32-bit entries little-endian. */
export function encodeU32le(entries: ArrayLike<number>, first = 0, count = entries.length - first): Uint8Array {
  const out = new Uint8Array(4 * count);
  const v = view(out);
  for (let i = 0; i < count; i++) v.setUint32(4 * i, entries[first + i]! >>> 0, true);
  return out;
}
