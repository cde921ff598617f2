/** Helpers the targets share to describe a seed's structure. */

import type { Endian, FieldSpec, RegionSpec, TableSpec } from '../types.js';

/**
 * Fields from a format module's offset table (`OFF` in header.ts): each
 * field runs to the next offset (the last to `end`). Widths of 1, 2, 4 and 8
 * bytes become fields; others (strings, uuids, padding) become regions.
 */
export function fromOffsetTable(off: Readonly<Record<string, number>>, end: number, endian: Endian): { fields: FieldSpec[]; regions: RegionSpec[] } {
  const entries = Object.entries(off).sort((a, b) => a[1] - b[1]);
  const fields: FieldSpec[] = [];
  const regions: RegionSpec[] = [];
  entries.forEach(([name, offset], i) => {
    const next = i + 1 < entries.length ? entries[i + 1]![1] : end;
    const size = next - offset;
    if (size === 1 || size === 2 || size === 4 || size === 8) fields.push({ name, offset, size, endian });
    else if (size > 0) regions.push({ name, offset, length: size });
  });
  return { fields, regions };
}

export const be = (name: string, offset: number, size: FieldSpec['size']): FieldSpec => ({ name, offset, size, endian: 'be' });

export const u32be = (b: Uint8Array, o: number): number => ((b[o]! << 24) >>> 0) + (b[o + 1]! << 16) + (b[o + 2]! << 8) + b[o + 3]!;

/** A big-endian u64 as a number (tables in seeds qemu-img made are far below 2^53). */
export function u64be(b: Uint8Array, o: number): number {
  return u32be(b, o) * 2 ** 32 + u32be(b, o + 4);
}

/** Keep a table only as far as the file holds it. */
export function clipTable(t: TableSpec, fileSize: number): TableSpec | undefined {
  if (t.offset <= 0 || t.offset >= fileSize) return undefined;
  const count = Math.min(t.count, Math.floor((fileSize - t.offset) / t.entrySize));
  return count > 0 ? { ...t, count } : undefined;
}

export const BIT = (n: number) => 1n << BigInt(n);

/**
 * Fields and regions of a structure declared with defineStruct
 * (src/formats/engine/struct.ts): its layout table, placed at `base`.
 */
export function fromStruct(
  s: { readonly layout: readonly { field: string; offset: number; size: number }[] },
  base: number,
  endian: Endian,
  prefix: string,
): { fields: FieldSpec[]; regions: RegionSpec[] } {
  const fields: FieldSpec[] = [];
  const regions: RegionSpec[] = [];
  for (const r of s.layout) {
    const name = `${prefix}${r.field}`;
    if (r.size === 1 || r.size === 2 || r.size === 4 || r.size === 8) fields.push({ name, offset: base + r.offset, size: r.size, endian });
    else regions.push({ name, offset: base + r.offset, length: r.size });
  }
  return { fields, regions };
}

export const u32le = (b: Uint8Array, o: number): number => (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
export const u64le = (b: Uint8Array, o: number): number => u32le(b, o) + u32le(b, o + 4) * 2 ** 32;
