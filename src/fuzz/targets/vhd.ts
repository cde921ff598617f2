/**
 * VHD (vpc) and VHDX seeds and structure, from the drivers' own struct
 * definitions (their layout tables). Most header mutations end at a
 * checksum (one's complement for VHD, CRC-32C for VHDX); the tables (VHD
 * BAT, VHDX BAT) carry no checksum and are mutated entry by entry.
 */

import type { LayoutRow } from '../../formats/engine/struct.js';
import { BAT_UNUSED, DynHeader, Footer } from '../../formats/vhd/footer.js';
import { HEADER_OFFSETS, Header, MIB, REGION_OFFSETS, RegionEntry, RegionTableHeader } from '../../formats/vhdx/structs.js';
import type { Endian, FieldSpec, FuzzTarget, Layout, RegionSpec, Seed, SeedContext, TableSpec } from '../types.js';
import { clipTable, u32be, u64be } from './layout.js';

const SIZE = 6 * MIB + 512 * 1024;

/** Fields (1/2/4/8 bytes) and regions (the rest) of a struct placed at `base`. */
function fromLayout(rows: readonly LayoutRow[], base: number, endian: Endian, prefix: string): { fields: FieldSpec[]; regions: RegionSpec[] } {
  const fields: FieldSpec[] = [];
  const regions: RegionSpec[] = [];
  for (const r of rows) {
    const name = `${prefix} ${r.field}`;
    if (r.size === 1 || r.size === 2 || r.size === 4 || r.size === 8) fields.push({ name, offset: base + r.offset, size: r.size, endian });
    else regions.push({ name, offset: base + r.offset, length: r.size });
  }
  return { fields, regions };
}

async function vpcLayout(b: Uint8Array): Promise<Layout> {
  const end = fromLayout(Footer.layout, b.length - 512, 'be', 'footer');
  const fields = [...end.fields];
  const regions = [...end.regions];
  const tables: TableSpec[] = [];
  let unit = 2 * MIB;
  if (b.length >= 1536 && Buffer.from(b.subarray(0, 8)).toString('latin1') === 'conectix') {
    const copy = fromLayout(Footer.layout, 0, 'be', 'footer copy');
    const dyn = fromLayout(DynHeader.layout, 512, 'be', 'dynamic header');
    fields.push(...copy.fields, ...dyn.fields);
    regions.push(...dyn.regions);
    const batAt = u64be(b, 512 + DynHeader.offsetOf('tableOffset'));
    const entries = u32be(b, 512 + DynHeader.offsetOf('maxTableEntries'));
    unit = u32be(b, 512 + DynHeader.offsetOf('blockSize')) || unit;
    const bat = clipTable({ name: 'BAT', offset: batAt, count: entries, entrySize: 4, endian: 'be', pointsTo: 'index', sentinels: [BigInt(BAT_UNUSED)] }, b.length);
    if (bat) tables.push(bat);
  }
  return { fields, tables, regions, unit };
}

async function vhdxLayout(b: Uint8Array): Promise<Layout> {
  const fields: FieldSpec[] = [];
  const regions: RegionSpec[] = [];
  const tables: TableSpec[] = [];
  HEADER_OFFSETS.forEach((at, i) => {
    const h = fromLayout(Header.layout, at, 'le', `header ${i + 1}`);
    fields.push(...h.fields);
  });
  const rt = REGION_OFFSETS[0];
  fields.push(...fromLayout(RegionTableHeader.layout, rt, 'le', 'region table').fields);
  const count = Math.min(8, new DataView(b.buffer, b.byteOffset).getUint32(rt + 8, true));
  for (let i = 0; i < count; i++) {
    const at = rt + RegionTableHeader.size + i * RegionEntry.size;
    fields.push(...fromLayout(RegionEntry.layout, at, 'le', `region entry ${i}`).fields);
    const off = Number(new DataView(b.buffer, b.byteOffset).getBigUint64(at + 16, true));
    const len = new DataView(b.buffer, b.byteOffset).getUint32(at + 24, true);
    const guid0 = b[at]!;
    // The BAT region's GUID starts 0x66 (2DC27766-...): its entries are file offsets in MiB << 20 | state.
    if (guid0 === 0x66) {
      const bat = clipTable({ name: 'BAT', offset: off, count: len / 8, entrySize: 8, endian: 'le', pointsTo: 'offset', flags: [1n, 2n, 3n, 6n, 7n] }, b.length);
      if (bat) tables.push(bat);
    } else if (off < b.length) regions.push({ name: 'metadata region', offset: off, length: Math.min(64 * 1024 + 64, b.length - off) });
  }
  return { fields, tables, regions, unit: MIB };
}

async function seeds(ctx: SeedContext, fmt: 'vpc' | 'vhdx', variants: ReadonlyArray<readonly [string, string]>): Promise<Seed[]> {
  const src = ctx.patternRaw(`${fmt}-src.raw`, SIZE, 7);
  const out: Seed[] = [];
  for (const [name, o] of variants) {
    const path = `${ctx.dir}/${fmt}-${name}.${fmt === 'vpc' ? 'vhd' : 'vhdx'}`;
    await ctx.qemuImg(['convert', '-f', 'raw', '-O', fmt, '-o', o, src, path]);
    out.push({ name: `${fmt}-${name}`, format: fmt, path });
  }
  return out;
}

export const vpcTarget: FuzzTarget = {
  format: 'vpc',
  qemuFormat: 'vpc',
  buildSeeds: (ctx) => seeds(ctx, 'vpc', [['dynamic', 'subformat=dynamic'], ['fixed', 'subformat=fixed,force_size=on']]),
  layout: vpcLayout,
};

export const vhdxTarget: FuzzTarget = {
  format: 'vhdx',
  qemuFormat: 'vhdx',
  buildSeeds: (ctx) => seeds(ctx, 'vhdx', [['dynamic', 'block_size=1M'], ['fixed', 'subformat=fixed,block_size=1M']]),
  layout: vhdxLayout,
};
