/**
 * Structure-aware mutation, generic over a Layout: header fields set to
 * boundary values, table entries bent (flag bits, sentinels, offsets past the
 * end, at other tables, unaligned, duplicated), bytes flipped, the file cut
 * short or extended. Every choice comes from the case's Rng, so a case is
 * reproduced by its (seed, index) alone.
 */

import type { Endian, FieldSpec, Layout, Mutation, TableSpec } from './types.js';
import type { Rng } from './rng.js';

const TWO53 = 2n ** 53n;

export function readUint(b: Uint8Array, offset: number, size: number, endian: Endian): bigint {
  let v = 0n;
  for (let i = 0; i < size; i++) {
    const byte = b[endian === 'be' ? offset + i : offset + size - 1 - i]!;
    v = (v << 8n) | BigInt(byte);
  }
  return v;
}

export function writeUint(b: Uint8Array, offset: number, size: number, endian: Endian, value: bigint): void {
  let v = BigInt.asUintN(size * 8, value);
  for (let i = size - 1; i >= 0; i--) {
    b[endian === 'be' ? offset + i : offset + size - 1 - i] = Number(v & 0xffn);
    v >>= 8n;
  }
}

const hex = (v: bigint) => `0x${v.toString(16)}`;

/**
 * Boundary values for a field `bits` wide: 0, 1, max, powers of two (and
 * their neighbours), the file size and past it, 2^53 and beyond, the
 * original value's neighbours, small numbers, random.
 */
export function boundaryValue(rng: Rng, bits: number, original: bigint, fileSize: number, unit: number): bigint {
  const max = (1n << BigInt(bits)) - 1n;
  const size = BigInt(fileSize);
  const u = BigInt(unit);
  const k = BigInt(rng.below(bits));
  const choices: (() => bigint)[] = [
    () => 0n,
    () => 1n,
    () => 2n,
    () => max,
    () => max - 1n,
    () => 1n << BigInt(bits - 1),
    () => (1n << BigInt(bits - 1)) - 1n,
    () => 1n << k,
    () => (1n << k) - 1n,
    () => (1n << k) + 1n,
    () => original + 1n,
    () => original - 1n,
    () => original * 2n,
    () => original ^ (1n << k),
    () => size,
    () => size - 1n,
    () => size + u,
    () => size * 2n,
    () => (size / u + BigInt(rng.between(1, 1 << 20))) * u,
    () => u,
    () => u - 1n,
    () => u + 1n,
    () => 1n << 31n,
    () => 1n << 32n,
    () => TWO53,
    () => TWO53 + 1n,
    () => TWO53 - 1n,
    () => 1n << 56n,
    () => 1n << 62n,
    () => 1n << 63n,
    () => BigInt(rng.below(64)),
    () => rng.u64(),
  ];
  return BigInt.asUintN(bits, rng.pick(choices)());
}

function mutateField(rng: Rng, out: Uint8Array, f: FieldSpec, layout: Layout): Mutation | undefined {
  if (f.offset + f.size > out.length) return undefined;
  const from = readUint(out, f.offset, f.size, f.endian);
  const to = boundaryValue(rng, f.size * 8, from, out.length, layout.unit);
  writeUint(out, f.offset, f.size, f.endian, to);
  return { kind: 'field', field: f.name, offset: f.offset, size: f.size, from: hex(from), to: hex(to) };
}

/** Pick an entry: non-zero ones more often (they are the ones reads follow). */
function pickEntry(rng: Rng, out: Uint8Array, t: TableSpec): number {
  if (rng.chance(0.6)) {
    for (let tries = 0; tries < 16; tries++) {
      const i = rng.below(t.count);
      const at = t.offset + i * t.entrySize;
      if (at + t.entrySize <= out.length && readUint(out, at, Math.min(t.entrySize, 8), t.endian) !== 0n) return i;
    }
  }
  return rng.below(t.count);
}

function mutateEntry(rng: Rng, out: Uint8Array, t: TableSpec, layout: Layout): Mutation | undefined {
  if (t.count <= 0) return undefined;
  const index = pickEntry(rng, out, t);
  // 16-byte entries (extended L2) are an entry and a bitmap: mutate one half.
  const half = t.entrySize === 16 && rng.chance(0.5) ? 8 : 0;
  const width = t.entrySize === 16 ? 8 : t.entrySize;
  const at = t.offset + index * t.entrySize + half;
  if (at + width > out.length) return undefined;
  const bits = width * 8;
  const from = readUint(out, at, width, t.endian);
  const u = BigInt(layout.unit);
  const others = layout.tables.filter((x) => x !== t);
  const strategies: [string, () => bigint][] = [
    ['boundary', () => boundaryValue(rng, bits, from, out.length, layout.unit)],
    ['bitflip', () => from ^ (1n << BigInt(rng.below(bits)))],
    ['dup', () => readUint(out, t.offset + rng.below(t.count) * t.entrySize + half, width, t.endian)],
    ['zero', () => 0n],
  ];
  if (t.flags?.length) {
    strategies.push(['set-flag', () => from | rng.pick(t.flags!)]);
    strategies.push(['clear-flag', () => from & ~rng.pick(t.flags!)]);
  }
  if (t.sentinels?.length) strategies.push(['sentinel', () => rng.pick(t.sentinels!)]);
  if (half === 0 && t.pointsTo === 'offset') {
    const keep = from & ~((1n << 56n) - 1n); // keep flag bits above the offset field
    strategies.push(
      ['past-eof', () => keep | ((BigInt(out.length) / u + BigInt(rng.between(0, 64))) * u)],
      ['at-header', () => keep],
      ['at-self', () => keep | BigInt(t.offset - (t.offset % layout.unit))],
      ['unaligned', () => from + BigInt(rng.pick([1, 8, 256, 511, 512]))],
      ['past-2^53', () => keep | (TWO53 + u)],
    );
    if (others.length) strategies.push(['at-other-table', () => keep | BigInt(rng.pick(others).offset)]);
  }
  if (t.pointsTo === 'index') {
    strategies.push(['index-edge', () => BigInt(rng.pick([t.count - 1, t.count, t.count + 1, 2 * t.count]))]);
  }
  const [how, make] = rng.pick(strategies);
  const to = BigInt.asUintN(bits, make());
  writeUint(out, at, width, t.endian, to);
  return { kind: 'entry', table: t.name, index, offset: at, from: hex(from), to: hex(to), how };
}

function flipBytes(rng: Rng, out: Uint8Array, layout: Layout, muts: Mutation[]): void {
  if (out.length === 0) return;
  let region = { name: 'anywhere', offset: 0, length: out.length };
  const r = rng.u32() % 10;
  if (r < 4) region = { name: 'first unit', offset: 0, length: Math.min(out.length, layout.unit) };
  else if (r < 7 && layout.regions.length) region = rng.pick(layout.regions);
  else if (r < 8 && layout.tables.length) {
    const t = rng.pick(layout.tables);
    region = { name: t.name, offset: t.offset, length: t.count * t.entrySize };
  }
  const start = Math.min(region.offset, out.length - 1);
  const len = Math.max(1, Math.min(region.length, out.length - start));
  const n = rng.between(1, 8);
  for (let i = 0; i < n; i++) {
    const offset = start + rng.below(len);
    const from = out[offset]!;
    const to = rng.chance(0.5) ? from ^ (1 << rng.below(8)) : rng.below(256);
    out[offset] = to;
    muts.push({ kind: 'flip', region: region.name, offset, from, to });
  }
}

/** Interesting lengths to cut a file to: structure starts and ends, unit multiples, random. */
function cutPoint(rng: Rng, len: number, layout: Layout): number {
  const points = [0, 1, len - 1, len - layout.unit, rng.below(len), layout.unit, layout.unit - 1];
  for (const t of layout.tables) points.push(t.offset, t.offset + 1, t.offset + t.count * t.entrySize - 1);
  for (const f of layout.fields) points.push(f.offset, f.offset + f.size - 1);
  for (const g of layout.regions) points.push(g.offset + (g.length >> 1));
  const p = rng.pick(points);
  return Math.max(0, Math.min(len - 1, p));
}

function resize(rng: Rng, cur: Uint8Array, layout: Layout, muts: Mutation[]): Uint8Array {
  if (rng.chance(0.55) && cur.length > 0) {
    const to = cutPoint(rng, cur.length, layout);
    muts.push({ kind: 'truncate', from: cur.length, to });
    return cur.slice(0, to);
  }
  const add = rng.pick([1, 511, 512, layout.unit, layout.unit * 3 + 17, rng.between(1, 4 * layout.unit)]);
  const fill = rng.pick(['zero', 'random', 'copy'] as const);
  const out = new Uint8Array(cur.length + add);
  out.set(cur);
  if (fill === 'random') for (let i = cur.length; i < out.length; i++) out[i] = rng.below(256);
  if (fill === 'copy' && cur.length > 0) for (let i = cur.length; i < out.length; i++) out[i] = cur[i % cur.length]!;
  muts.push({ kind: 'extend', from: cur.length, to: out.length, fill });
  return out;
}

/** Apply 1..4 mutations to a copy of `seed`. */
export function mutate(rng: Rng, seed: Uint8Array, layout: Layout): { bytes: Uint8Array; mutations: Mutation[] } {
  let out: Uint8Array = seed.slice();
  const muts: Mutation[] = [];
  const n = rng.chance(0.6) ? 1 : rng.chance(0.6) ? 2 : rng.between(3, 4);
  for (let i = 0; i < n; i++) {
    const r = rng.u32() % 100;
    if (r < 35 && layout.fields.length) {
      const m = mutateField(rng, out, rng.pick(layout.fields), layout);
      if (m) muts.push(m);
    } else if (r < 68 && layout.tables.length) {
      const m = mutateEntry(rng, out, rng.pick(layout.tables), layout);
      if (m) muts.push(m);
    } else if (r < 88) {
      flipBytes(rng, out, layout, muts);
    } else {
      out = resize(rng, out, layout, muts);
    }
  }
  if (muts.length === 0) flipBytes(rng, out, layout, muts);
  return { bytes: out, mutations: muts };
}

/** One line per mutation, for summaries and finding files. */
export function describeMutation(m: Mutation): string {
  switch (m.kind) {
    case 'field':
      return `field ${m.field} @${m.offset} ${m.from} -> ${m.to}`;
    case 'entry':
      return `${m.table}[${m.index}] @${m.offset} ${m.from} -> ${m.to} (${m.how})`;
    case 'flip':
      return `byte @${m.offset} (${m.region}) 0x${m.from.toString(16)} -> 0x${m.to.toString(16)}`;
    case 'truncate':
      return `truncate ${m.from} -> ${m.to}`;
    case 'extend':
      return `extend ${m.from} -> ${m.to} (${m.fill})`;
    case 'reseal':
      return `checksums recomputed (${m.what})`;
  }
}

/** The name a mutation is counted under in summaries ("which fields did imgtool refuse"). */
export function mutationKey(m: Mutation): string {
  switch (m.kind) {
    case 'field':
      return `field ${m.field}`;
    case 'entry':
      return `${m.table.replace(/ \d+$/, '')} entry (${m.how})`;
    case 'flip':
      return `flip in ${m.region.replace(/ \d+$/, '')}`;
    default:
      return m.kind;
  }
}
