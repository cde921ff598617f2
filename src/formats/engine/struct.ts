/**
 * On-disk structures declared once: a list of fields is at the same time
 *
 *   - the binary-parser definition that decodes the structure,
 *   - its layout table (`layout`: field, offset, size: used in error
 *     messages to name the offset of a bad field), and
 *   - the encoder's plan (`encode` writes the fields at the same offsets).
 *
 * 64-bit fields decode to BigInt (binary-parser's uint64); byte runs to a
 * Uint8Array copy. Every structure is fixed-size; `parse` refuses a short
 * buffer.
 */

import { Parser } from 'binary-parser';
import { put16be, put16le, put32be, put32le, put64be, put64le } from '../../core/bytes.js';
import { ImageError } from '../../core/errors.js';

export type FieldType = 'u8' | 'u16le' | 'u32le' | 'u64le' | 'u16be' | 'u32be' | 'u64be' | { bytes: number };
export type FieldList = ReadonlyArray<readonly [name: string, type: FieldType]>;

type ValueOf<T extends FieldType> = T extends 'u64le' | 'u64be' ? bigint : T extends { bytes: number } ? Uint8Array : number;
export type StructValue<F extends FieldList> = { [K in F[number] as K[0]]: ValueOf<K[1]> };

const SIZES = { u8: 1, u16le: 2, u16be: 2, u32le: 4, u32be: 4, u64le: 8, u64be: 8 } as const;
const PARSER_TYPES = {
  u8: 'uint8',
  u16le: 'uint16le',
  u16be: 'uint16be',
  u32le: 'uint32le',
  u32be: 'uint32be',
  u64le: 'uint64le',
  u64be: 'uint64be',
} as const;

export interface LayoutRow {
  field: string;
  offset: number;
  size: number;
}

export interface Struct<F extends FieldList> {
  readonly name: string;
  readonly size: number;
  readonly layout: readonly LayoutRow[];
  /** Byte offset of a field inside the structure. */
  offsetOf(field: F[number][0]): number;
  parse(bytes: Uint8Array): StructValue<F>;
  encode(value: StructValue<F>, out?: Uint8Array): Uint8Array;
}

type Setter = (b: Uint8Array, off: number, v: never) => void;
const SETTERS: Record<Exclude<FieldType, { bytes: number }>, Setter> = {
  u8: (b, o, v: number) => void (b[o] = v),
  u16le: put16le,
  u16be: put16be,
  u32le: put32le,
  u32be: put32be,
  u64le: put64le,
  u64be: put64be,
};

const sizeOf = (t: FieldType): number => (typeof t === 'string' ? SIZES[t] : t.bytes);

export function defineStruct<const F extends FieldList>(name: string, fields: F): Struct<F> {
  let parser = new Parser();
  const layout: LayoutRow[] = [];
  let offset = 0;
  for (const [field, type] of fields) {
    parser = typeof type === 'string' ? parser[PARSER_TYPES[type]](field) : parser.buffer(field, { length: type.bytes, clone: true });
    layout.push({ field, offset, size: sizeOf(type) });
    offset += sizeOf(type);
  }
  const size = offset;
  const at = new Map(layout.map((r) => [r.field, r.offset]));
  return {
    name,
    size,
    layout,
    offsetOf: (field) => at.get(field)!,
    parse(bytes) {
      if (bytes.length < size) {
        throw new ImageError('invalid-format', `${name}: ${bytes.length} bytes, fewer than the ${size} of the structure`, { value: bytes.length });
      }
      const buf = Buffer.from(bytes.buffer, bytes.byteOffset, size);
      const v = parser.parse(buf) as Record<string, unknown>;
      for (const [field, type] of fields) if (typeof type !== 'string') v[field] = new Uint8Array(v[field] as Buffer);
      return v as StructValue<F>;
    },
    encode(value, out = new Uint8Array(size)) {
      const v = value as Record<string, number | bigint | Uint8Array>;
      for (const [i, [field, type]] of fields.entries()) {
        const o = layout[i]!.offset;
        if (typeof type === 'string') SETTERS[type](out, o, v[field] as never);
        else out.set((v[field] as Uint8Array).subarray(0, type.bytes), o);
      }
      return out;
    },
  };
}
