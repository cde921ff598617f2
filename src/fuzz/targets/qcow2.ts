/**
 * qcow2 seeds and structure. Field offsets follow the layout table in
 * src/formats/qcow2/header.ts (a test checks them against encodeHeader);
 * table locations come from the seed itself, read with the format's own
 * readHeader and L1/L2 helpers.
 */

import { MemoryDevice } from '../../core/memory.js';
import { readHeader, type Qcow2Header } from '../../formats/qcow2/header.js';
import { compressedDesc, stdOffset } from '../../formats/qcow2/l2.js';
import type { FieldSpec, FuzzTarget, Layout, RegionSpec, Seed, SeedContext, TableSpec } from '../types.js';
import { BIT, be, clipTable, u32be, u64be } from './layout.js';

const SIZE = 4 * 1024 * 1024;

/** Header fields [name, offset, width] as in header.ts's table; offsets from 72 on exist in version 3 only. */
const FIELDS: [string, number, FieldSpec['size']][] = [
  ['magic', 0, 4], ['version', 4, 4], ['backing_file_offset', 8, 8], ['backing_file_size', 16, 4],
  ['cluster_bits', 20, 4], ['size', 24, 8], ['crypt_method', 32, 4], ['l1_size', 36, 4],
  ['l1_table_offset', 40, 8], ['refcount_table_offset', 48, 8], ['refcount_table_clusters', 56, 4],
  ['nb_snapshots', 60, 4], ['snapshots_offset', 64, 8],
  ['incompatible_features', 72, 8], ['compatible_features', 80, 8], ['autoclear_features', 88, 8],
  ['refcount_order', 96, 4], ['header_length', 100, 4], ['compression_type', 104, 1],
];
export const QCOW2_FIELDS_V2: FieldSpec[] = FIELDS.filter((f) => f[1] < 72).map(([n, o, w]) => be(n, o, w));
export const QCOW2_FIELDS_V3: FieldSpec[] = FIELDS.filter((f) => f[1] >= 72).map(([n, o, w]) => be(n, o, w));

const u16 = (b: Uint8Array, o: number) => (b[o]! << 8) | b[o + 1]!;
const u32 = u32be;

function hiLo(b: Uint8Array, o: number): number {
  return stdOffset(u32(b, o), u32(b, o + 4));
}

/** Header extensions: their type and length words as fields, their bodies as regions. */
function extensions(b: Uint8Array, h: Qcow2Header, fields: FieldSpec[], regions: RegionSpec[]): void {
  const cs = 2 ** h.clusterBits;
  const end = h.backingFileOffset || Math.min(cs, b.length);
  for (let pos = h.headerLength, i = 0; pos + 8 <= end && i < 16; i++) {
    const type = u32(b, pos);
    const len = u32(b, pos + 4);
    if (type === 0) break;
    const name = `ext 0x${type.toString(16)}`;
    fields.push(be(`${name} type`, pos, 4), be(`${name} length`, pos + 4, 4));
    regions.push({ name: `${name} data`, offset: pos + 8, length: len });
    pos += 8 + Math.ceil(len / 8) * 8;
  }
  if (h.backingFileOffset) regions.push({ name: 'backing file name', offset: h.backingFileOffset, length: h.backingFileSize });
}

function l2Tables(b: Uint8Array, h: Qcow2Header, l1: TableSpec, tag: string, out: TableSpec[]): void {
  const cs = 2 ** h.clusterBits;
  const ext = (h.incompatible & 16) !== 0;
  for (let i = 0; i < l1.count && out.length < 64; i++) {
    const off = hiLo(b, l1.offset + i * 8);
    if (off === 0) continue;
    const t = clipTable(
      { name: `${tag}L2 ${i}`, offset: off, count: cs / (ext ? 16 : 8), entrySize: ext ? 16 : 8, endian: 'be', pointsTo: 'offset', flags: [BIT(63), BIT(62), BIT(0), BIT(1), BIT(56)] },
      b.length,
    );
    if (t) out.push(t);
  }
}

/** The snapshot table: per snapshot its header words as fields, its L1 table as a table. */
function snapshots(b: Uint8Array, h: Qcow2Header, fields: FieldSpec[], tables: TableSpec[], regions: RegionSpec[]): void {
  let pos = h.snapshotsOffset;
  for (let i = 0; i < h.nbSnapshots && pos + 40 <= b.length; i++) {
    const extra = u32(b, pos + 36);
    const idLen = u16(b, pos + 12);
    const nameLen = u16(b, pos + 14);
    const s = `snapshot ${i}`;
    fields.push(
      be(`${s} l1_table_offset`, pos, 8),
      be(`${s} l1_size`, pos + 8, 4),
      be(`${s} id_str_size`, pos + 12, 2),
      be(`${s} name_size`, pos + 14, 2),
      be(`${s} vm_state_size`, pos + 32, 4),
      be(`${s} extra_data_size`, pos + 36, 4),
    );
    if (extra >= 16) fields.push(be(`${s} disk_size`, pos + 48, 8));
    const l1 = clipTable({ name: `${s} L1`, offset: u64be(b, pos), count: u32(b, pos + 8), entrySize: 8, endian: 'be', pointsTo: 'offset', flags: [BIT(63), BIT(0)] }, b.length);
    if (l1) {
      tables.push(l1);
      l2Tables(b, h, l1, `${s} `, tables);
    }
    const len = 40 + extra + idLen + nameLen;
    regions.push({ name: `${s} entry`, offset: pos, length: len });
    pos += Math.ceil(len / 8) * 8;
  }
}

/** The data of the first compressed clusters (decoder input: deflate or zstd), as regions. */
function compressedClusters(b: Uint8Array, h: Qcow2Header, tables: TableSpec[], regions: RegionSpec[]): void {
  let n = 0;
  for (const t of tables) {
    if (!t.name.startsWith('L2')) continue;
    for (let i = 0; i < t.count && n < 8; i++) {
      const at = t.offset + i * t.entrySize;
      const hi = u32(b, at);
      if ((hi & 0x40000000) === 0) continue;
      const d = compressedDesc(hi, u32(b, at + 4), h.clusterBits);
      if (d.offset < 0 || d.offset >= b.length) continue;
      regions.push({ name: 'compressed cluster', offset: d.offset, length: Math.min(d.length, b.length - d.offset) });
      n++;
    }
  }
}

export async function qcow2Layout(b: Uint8Array): Promise<Layout> {
  const h = await readHeader(MemoryDevice.from(b, { readOnly: true }));
  const cs = 2 ** h.clusterBits;
  const fields = [...QCOW2_FIELDS_V2, ...(h.version === 3 ? QCOW2_FIELDS_V3 : [])];
  const regions: RegionSpec[] = [{ name: 'header cluster', offset: 0, length: Math.min(cs, b.length) }];
  const tables: TableSpec[] = [];
  extensions(b, h, fields, regions);
  const l1 = clipTable({ name: 'L1', offset: h.l1TableOffset, count: h.l1Size, entrySize: 8, endian: 'be', pointsTo: 'offset', flags: [BIT(63), BIT(0), BIT(56)] }, b.length);
  if (l1) {
    tables.push(l1);
    l2Tables(b, h, l1, '', tables);
  }
  const rt = clipTable({ name: 'refcount table', offset: h.refcountTableOffset, count: (h.refcountTableClusters * cs) / 8, entrySize: 8, endian: 'be', pointsTo: 'offset', flags: [BIT(0), BIT(63)] }, b.length);
  if (rt) {
    tables.push(rt);
    const width = 2 ** h.refcountOrder / 8;
    for (let i = 0; i < rt.count && tables.length < 96; i++) {
      const off = u64be(b, rt.offset + i * 8);
      if (off === 0) continue;
      if (width === 2 || width === 4 || width === 8) {
        const t = clipTable({ name: `refcount block ${i}`, offset: off, count: cs / width, entrySize: width, endian: 'be', pointsTo: 'count' }, b.length);
        if (t) tables.push(t);
      } else regions.push({ name: `refcount block ${i}`, offset: off, length: cs });
    }
  }
  snapshots(b, h, fields, tables, regions);
  compressedClusters(b, h, tables, regions);
  return { fields, tables, regions, unit: cs };
}

async function qcow2Seeds(ctx: SeedContext): Promise<Seed[]> {
  const src = ctx.patternRaw('qcow2-src.raw', SIZE, 1);
  const seeds: Seed[] = [];
  const make = async (name: string, args: string[], after?: (file: string) => Promise<void>) => {
    const file = `${ctx.dir}/${name}.qcow2`;
    await ctx.qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', ...args, src, file]);
    if (after) await after(file);
    seeds.push({ name, format: 'qcow2', path: file });
  };
  await make('qcow2-v3', []);
  await make('qcow2-v2', ['-o', 'compat=0.10']);
  await make('qcow2-4k', ['-o', 'cluster_size=4096,refcount_bits=32']);
  await make('qcow2-deflate', ['-c']);
  await make('qcow2-zstd', ['-c', '-o', 'compression_type=zstd']);
  await make('qcow2-extl2', ['-o', 'extended_l2=on,cluster_size=65536'], (f) =>
    ctx.qemuIo(['-f', 'qcow2', '-c', 'write -P 0x5a 4k 2k', '-c', 'write -z 131072 4096', '-c', 'write -P 0x11 1050624 3k', f]),
  );
  await make('qcow2-zero', ['-o', 'refcount_bits=8'], (f) => ctx.qemuIo(['-f', 'qcow2', '-c', 'write -z 0 128k', '-c', 'write -z -u 2M 64k', f]));
  await make('qcow2-snapshots', [], async (f) => {
    await ctx.qemuImg(['snapshot', '-c', 'first', f]);
    await ctx.qemuIo(['-f', 'qcow2', '-c', 'write -P 0x77 64k 64k', f]);
    await ctx.qemuImg(['snapshot', '-c', 'second', f]);
    await ctx.qemuIo(['-f', 'qcow2', '-c', 'write -P 0x78 1M 4k', f]);
  });
  // An overlay naming its backing file (relative, in the same directory).
  const base = `${ctx.dir}/qcow2-base.qcow2`;
  await ctx.qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', ctx.patternRaw('qcow2-base.raw', SIZE, 2), base]);
  const ovl = `${ctx.dir}/qcow2-backing.qcow2`;
  await ctx.qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'qcow2-base.qcow2', '-F', 'qcow2', ovl]);
  await ctx.qemuIo(['-f', 'qcow2', '-c', 'write -P 0x42 64k 128k', '-c', 'write -z 1M 64k', '-c', 'write -P 0x43 3M 4k', ovl]);
  seeds.push({ name: 'qcow2-backing', format: 'qcow2', path: ovl, backing: { name: 'qcow2-base.qcow2', path: base, format: 'qcow2' } });
  return seeds;
}

export const qcow2Target: FuzzTarget = {
  format: 'qcow2',
  qemuFormat: 'qcow2',
  qemuBacking: true,
  // qemu opens an external data file by the name in the image: never let it.
  qemuUnsafe: (b) => (b.length >= 80 && u32be(b, 4) >= 3 && (b[79]! & 4) !== 0 ? 'external data file bit set' : undefined),
  buildSeeds: qcow2Seeds,
  layout: qcow2Layout,
};
