/**
 * qcow (version 1) seeds and structure. Fields come from the format's own
 * offset table (OFF in src/formats/qcow/header.ts), tables from the seed's
 * header decoded by parseHeader.
 */

import { HEADER_SIZE, OFF, parseHeader } from '../../formats/qcow/header.js';
import type { FuzzTarget, Layout, RegionSpec, Seed, SeedContext, TableSpec } from '../types.js';
import { readUint } from '../mutate.js';
import { BIT, clipTable, fromOffsetTable, u64be } from './layout.js';

const SIZE = 4 * 1024 * 1024;

/**
 * The data of compressed clusters (bit 63 set; offset in bits 0..62-cluster_bits,
 * length in the next cluster_bits bits, as header.ts describes), as regions.
 */
function compressedClusters(b: Uint8Array, t: TableSpec, clusterBits: number, regions: RegionSpec[]): void {
  for (let i = 0; i < t.count && regions.length < 16; i++) {
    const e = readUint(b, t.offset + i * 8, 8, 'be');
    if (e >> 63n === 0n) continue;
    const offBits = BigInt(63 - clusterBits);
    const offset = Number(e & ((1n << offBits) - 1n));
    const length = Number((e >> offBits) & ((1n << BigInt(clusterBits)) - 1n));
    if (offset < b.length && length > 0) regions.push({ name: 'compressed cluster', offset, length: Math.min(length, b.length - offset) });
  }
}

export async function qcowLayout(b: Uint8Array): Promise<Layout> {
  const h = parseHeader(b);
  const { fields, regions } = fromOffsetTable(OFF, HEADER_SIZE, 'be');
  const cs = 2 ** h.clusterBits;
  const perL1 = 2 ** (h.clusterBits + h.l2Bits);
  const tables: TableSpec[] = [];
  const l1 = clipTable({ name: 'L1', offset: Number(h.l1TableOffset), count: Math.ceil(Number(h.size) / perL1), entrySize: 8, endian: 'be', pointsTo: 'offset', flags: [BIT(63), BIT(0)] }, b.length);
  if (l1) {
    tables.push(l1);
    for (let i = 0; i < l1.count && tables.length < 64; i++) {
      const off = u64be(b, l1.offset + i * 8);
      const t = off ? clipTable({ name: `L2 ${i}`, offset: off, count: 2 ** h.l2Bits, entrySize: 8, endian: 'be', pointsTo: 'offset', flags: [BIT(63), BIT(62), BIT(9)] }, b.length) : undefined;
      if (t) {
        tables.push(t);
        compressedClusters(b, t, h.clusterBits, regions);
      }
    }
  }
  if (h.backingFileOffset) regions.push({ name: 'backing file name', offset: Number(h.backingFileOffset), length: h.backingFileSize });
  return { fields, tables, regions, unit: cs };
}

async function qcowSeeds(ctx: SeedContext): Promise<Seed[]> {
  const src = ctx.patternRaw('qcow-src.raw', SIZE, 3);
  const plain = `${ctx.dir}/qcow-plain.qcow`;
  const comp = `${ctx.dir}/qcow-compressed.qcow`;
  await ctx.qemuImg(['convert', '-f', 'raw', '-O', 'qcow', src, plain]);
  // qemu-img 7.2's `convert -c -O qcow` fails; qemu-io writes compressed clusters one by one.
  await ctx.qemuImg(['create', '-q', '-f', 'qcow', comp, String(SIZE)]);
  await ctx.qemuIo(['-f', 'qcow', '-c', 'write -c -P 0x11 0 4k', '-c', 'write -c -P 0x12 64k 4k', '-c', 'write -c -P 0x13 68k 4k', '-c', 'write -c -P 0x14 2M 4k', '-c', 'write -P 0x15 3M 4k', comp]);
  const base = ctx.patternRaw('qcow-base.raw', SIZE, 4);
  const ovl = `${ctx.dir}/qcow-backing.qcow`;
  await ctx.qemuImg(['create', '-q', '-f', 'qcow', '-b', 'qcow-base.raw', '-F', 'raw', ovl]);
  await ctx.qemuIo(['-f', 'qcow', '-c', 'write -P 0x42 64k 8k', '-c', 'write -P 0x43 2M 4k', ovl]);
  return [
    { name: 'qcow-plain', format: 'qcow', path: plain },
    { name: 'qcow-compressed', format: 'qcow', path: comp },
    { name: 'qcow-backing', format: 'qcow', path: ovl, backing: { name: 'qcow-base.raw', path: base, format: 'raw' } },
  ];
}

export const qcowTarget: FuzzTarget = {
  format: 'qcow',
  qemuFormat: 'qcow',
  qemuBacking: true,
  buildSeeds: qcowSeeds,
  layout: qcowLayout,
};
