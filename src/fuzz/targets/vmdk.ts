/**
 * VMDK seeds (monolithic sparse, stream-optimized, zeroed-grain) and
 * structure: the sparse extent header (and the stream footer's copy), the
 * embedded descriptor, the grain directory and grain tables. Field offsets
 * come from the format's own declaration (SparseHeader in
 * src/formats/vmdk/header.ts).
 */

import { GD_AT_END, SECTOR, SparseHeader, VMDK4_MAGIC } from '../../formats/vmdk/header.js';
import { convertedSeeds } from '../seeds.js';
import type { FuzzTarget, Layout, TableSpec } from '../types.js';
import { fromStruct, u32le, u64le } from './layout.js';
import { readUint } from '../mutate.js';

const SIZE = 4 * 1024 * 1024;

function grainTables(b: Uint8Array, hdrAt: number, tag: string, tables: TableSpec[]): void {
  const big = (f: string) => readUint(b, hdrAt + SparseHeader.offsetOf(f as never), 8, 'le');
  const gdSector = big('gdOffset');
  if (gdSector === GD_AT_END || gdSector === 0n) return;
  const perGt = u32le(b, hdrAt + SparseHeader.offsetOf('numGTEsPerGT'));
  const grain = Number(big('grainSize'));
  const count = Math.ceil(Number(big('capacity')) / Math.max(1, grain * perGt));
  const gd: TableSpec = { name: `${tag}grain directory`, offset: Number(gdSector) * SECTOR, count, entrySize: 4, endian: 'le', pointsTo: 'index' };
  if (gd.offset + count * 4 > b.length) return;
  tables.push(gd);
  for (let i = 0; i < count && tables.length < 32; i++) {
    const gt = u32le(b, gd.offset + i * 4) * SECTOR;
    if (gt > 0 && gt + perGt * 4 <= b.length) {
      tables.push({ name: `${tag}grain table ${i}`, offset: gt, count: perGt, entrySize: 4, endian: 'le', pointsTo: 'index', sentinels: [0n, 1n] });
    }
  }
}

export async function vmdkLayout(b: Uint8Array): Promise<Layout> {
  const head = fromStruct(SparseHeader, 0, 'le', '');
  const fields = [...head.fields];
  const regions = head.regions.filter((r) => r.name !== 'pad');
  const tables: TableSpec[] = [];
  const descAt = u64le(b, SparseHeader.offsetOf('descriptorOffset')) * SECTOR;
  const descLen = u64le(b, SparseHeader.offsetOf('descriptorSize')) * SECTOR;
  if (descAt > 0 && descAt + descLen <= b.length) regions.push({ name: 'embedded descriptor', offset: descAt, length: descLen });
  grainTables(b, 0, '', tables);
  // Stream-optimized: the real header is the footer, one sector before the end-of-stream marker.
  const footAt = b.length - 2 * SECTOR;
  if (footAt > 0 && u32le(b, footAt) === VMDK4_MAGIC) {
    const foot = fromStruct(SparseHeader, footAt, 'le', 'footer ');
    fields.push(...foot.fields);
    grainTables(b, footAt, 'footer ', tables);
  }
  const grain = u64le(b, SparseHeader.offsetOf('grainSize')) * SECTOR;
  return { fields, tables, regions, unit: grain > 0 && grain <= 1 << 24 ? grain : 65536 };
}


export const vmdkTarget: FuzzTarget = {
  format: 'vmdk',
  qemuFormat: 'vmdk',
  qemuBacking: true,
  // Without the sparse magic qemu reads the file as a text descriptor and opens the extent files it names.
  qemuUnsafe: (b) => (b.length < 4 || u32le(b, 0) !== VMDK4_MAGIC ? 'not a sparse extent: qemu would open extent files by name' : undefined),
  buildSeeds: (ctx) => convertedSeeds(ctx, 'vmdk', 'vmdk', SIZE, 8, [['sparse', []], ['stream', ['-o', 'subformat=streamOptimized']], ['zeroed', ['-o', 'zeroed_grain=on']]]),
  layout: vmdkLayout,
};
