/**
 * VHDX seeds (dynamic and fixed) and structure: both headers, both region
 * tables, the metadata table and the BAT, with field offsets from the
 * format's own structure declarations (src/formats/vhdx/structs.ts). Most
 * cases get their CRC-32C checksums recomputed so mutations get past them.
 */

import { BAT_GUID, HEADER_OFFSETS, Header, METADATA_GUID, MetadataEntry, MetadataTableHeader, REGION_OFFSETS, RegionEntry, RegionTableHeader, sealChecksum } from '../../formats/vhdx/structs.js';
import { convertedSeeds } from '../seeds.js';
import type { FieldSpec, FuzzTarget, Layout, RegionSpec, TableSpec } from '../types.js';
import { fromStruct, u32le, u64le } from './layout.js';

const SIZE = 4 * 1024 * 1024;
const KIB = 1024;
const REGION_TABLE_SIZE = 64 * KIB;
const HEADER_SIZE = 4 * KIB;

const sameGuid = (b: Uint8Array, at: number, g: Uint8Array) => g.every((x, i) => b[at + i] === x);

export async function vhdxLayout(b: Uint8Array): Promise<Layout> {
  const fields: FieldSpec[] = [];
  const regions: RegionSpec[] = [];
  const tables: TableSpec[] = [];
  const add = (x: { fields: FieldSpec[]; regions: RegionSpec[] }) => {
    fields.push(...x.fields);
    regions.push(...x.regions.filter((r) => !r.name.endsWith('reserved')));
  };
  HEADER_OFFSETS.forEach((at, i) => add(fromStruct(Header, at, 'le', `header ${i + 1} `)));
  REGION_OFFSETS.forEach((at, i) => {
    add(fromStruct(RegionTableHeader, at, 'le', `region table ${i + 1} `));
    const n = Math.min(u32le(b, at + RegionTableHeader.offsetOf('entryCount')), 16);
    for (let e = 0; e < n; e++) {
      const eat = at + RegionTableHeader.size + e * RegionEntry.size;
      add(fromStruct(RegionEntry, eat, 'le', `region ${i + 1}.${e} `));
      if (i > 0) continue;
      const off = u64le(b, eat + RegionEntry.offsetOf('fileOffset'));
      const len = u32le(b, eat + RegionEntry.offsetOf('length'));
      if (sameGuid(b, eat, BAT_GUID)) {
        // The region is sized generously: mutate up to a little past the last entry in use.
        let used = Math.min(Math.floor(len / 8), Math.floor((b.length - off) / 8));
        while (used > 0 && u64le(b, off + (used - 1) * 8) === 0) used--;
        tables.push({ name: 'BAT', offset: off, count: used + 16, entrySize: 8, endian: 'le', pointsTo: 'count', flags: [1n, 2n, 4n, 6n, 7n, 1n << 20n] });
      }
      if (sameGuid(b, eat, METADATA_GUID)) {
        add(fromStruct(MetadataTableHeader, off, 'le', 'metadata table '));
        const m = Math.min(b[off + MetadataTableHeader.offsetOf('entryCount')]! | (b[off + MetadataTableHeader.offsetOf('entryCount') + 1]! << 8), 16);
        for (let k = 0; k < m; k++) {
          const mat = off + MetadataTableHeader.size + k * MetadataEntry.size;
          add(fromStruct(MetadataEntry, mat, 'le', `metadata ${k} `));
          const itemAt = off + u32le(b, mat + MetadataEntry.offsetOf('offset'));
          const itemLen = u32le(b, mat + MetadataEntry.offsetOf('length'));
          if (itemLen === 4 || itemLen === 8) fields.push({ name: `metadata item ${k}`, offset: itemAt, size: itemLen, endian: 'le' });
          else if (itemLen > 0 && itemLen < 4096) regions.push({ name: `metadata item ${k}`, offset: itemAt, length: itemLen });
        }
      }
    }
  });
  return { fields: fields.filter((f) => f.offset + f.size <= b.length), tables, regions, unit: 1 << 20 };
}

/** Recompute the CRC-32C of both headers and both region tables. */
function vhdxReseal(b: Uint8Array): string | undefined {
  const done: string[] = [];
  const seal = (at: number, len: number, what: string) => {
    if (at + len <= b.length) {
      sealChecksum(b.subarray(at, at + len), Header.offsetOf('checksum'));
      done.push(what);
    }
  };
  HEADER_OFFSETS.forEach((at, i) => seal(at, HEADER_SIZE, `header ${i + 1}`));
  REGION_OFFSETS.forEach((at, i) => seal(at, REGION_TABLE_SIZE, `region table ${i + 1}`));
  return done.length ? done.join(', ') : undefined;
}


export const vhdxTarget: FuzzTarget = {
  format: 'vhdx',
  qemuFormat: 'vhdx',
  buildSeeds: (ctx) => convertedSeeds(ctx, 'vhdx', 'vhdx', SIZE, 9, [['dynamic', ['-o', 'block_size=1M']], ['fixed', ['-o', 'subformat=fixed,block_size=1M']]]),
  layout: vhdxLayout,
  reseal: vhdxReseal,
};
