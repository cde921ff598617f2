/**
 * VDI seeds (dynamic and fixed) and structure. Fields come from the
 * format's own offset table (OFF in src/formats/vdi/header.ts); the block
 * map's place and length from the seed's header, decoded by parseHeader.
 */

import { HEADER_AREA, OFF, parseHeader } from '../../formats/vdi/header.js';
import { BLOCK_FREE, BLOCK_ZERO } from '../../formats/vdi/blockmap.js';
import { convertedSeeds } from '../seeds.js';
import type { FuzzTarget, Layout, TableSpec } from '../types.js';
import { clipTable, fromOffsetTable } from './layout.js';

const SIZE = 4 * 1024 * 1024 + 512 * 1024;

export async function vdiLayout(b: Uint8Array): Promise<Layout> {
  const h = parseHeader(b);
  const { fields, regions } = fromOffsetTable(OFF, HEADER_AREA, 'le');
  const tables: TableSpec[] = [];
  const map = clipTable(
    { name: 'block map', offset: h.offsetBmap, count: h.blocksInImage, entrySize: 4, endian: 'le', pointsTo: 'index', sentinels: [BigInt(BLOCK_FREE), BigInt(BLOCK_ZERO)] },
    b.length,
  );
  if (map) tables.push(map);
  if (h.offsetData < b.length) regions.push({ name: 'first data block', offset: h.offsetData, length: Math.min(h.blockSize, b.length - h.offsetData) });
  return { fields, tables, regions, unit: h.blockSize > 0 && h.blockSize <= 1 << 24 ? h.blockSize : 1 << 20 };
}


export const vdiTarget: FuzzTarget = {
  format: 'vdi',
  qemuFormat: 'vdi',
  divergences: [
    {
      offset: OFF.block_extra,
      size: 4,
      why: 'VirtualBox places each block after block_extra bytes (imgtool follows it); qemu-img ignores block_extra',
    },
  ],
  buildSeeds: (ctx) => convertedSeeds(ctx, 'vdi', 'vdi', SIZE, 5, [['dynamic', []], ['fixed', ['-o', 'static=on']]]),
  layout: vdiLayout,
};
