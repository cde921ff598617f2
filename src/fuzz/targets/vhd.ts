/**
 * VHD (qemu's "vpc") seeds, dynamic and fixed, and structure: the footer (at
 * the end, and its copy at 0), the dynamic header and the BAT, with field
 * offsets from the format's own structure declarations (Footer, DynHeader in
 * src/formats/vhd/footer.ts). Most cases get their checksums recomputed so
 * mutations get past the checksum test.
 */

import { DynHeader, Footer, FOOTER_SIZE, TYPE_DYNAMIC, vhdChecksum } from '../../formats/vhd/footer.js';
import { convertedSeeds } from '../seeds.js';
import type { FuzzTarget, Layout, TableSpec } from '../types.js';
import { fromStruct, u32be, u64be } from './layout.js';

const SIZE = 4 * 1024 * 1024;
const FOOTER_SUM = Footer.offsetOf('checksum');
const DYN_SUM = DynHeader.offsetOf('checksum');

export async function vhdLayout(b: Uint8Array): Promise<Layout> {
  const at = b.length - FOOTER_SIZE;
  const foot = fromStruct(Footer, at, 'be', 'footer ');
  const fields = [...foot.fields];
  const regions = [...foot.regions];
  const tables: TableSpec[] = [];
  let unit = 512;
  if (u32be(b, at + Footer.offsetOf('diskType')) === TYPE_DYNAMIC) {
    const copy = fromStruct(Footer, 0, 'be', 'footer copy ');
    const dynAt = u64be(b, at + Footer.offsetOf('dataOffset'));
    const dyn = fromStruct(DynHeader, dynAt, 'be', 'dynamic header ');
    fields.push(...copy.fields, ...dyn.fields);
    regions.push(...copy.regions, ...dyn.regions);
    unit = u32be(b, dynAt + DynHeader.offsetOf('blockSize'));
    tables.push({
      name: 'BAT',
      offset: u64be(b, dynAt + DynHeader.offsetOf('tableOffset')),
      count: u32be(b, dynAt + DynHeader.offsetOf('maxTableEntries')),
      entrySize: 4,
      endian: 'be',
      pointsTo: 'index',
      sentinels: [0xffffffffn],
    });
  }
  return { fields, tables, regions, unit };
}

function sealAt(b: Uint8Array, at: number, len: number, sumAt: number): boolean {
  if (at < 0 || at + len > b.length) return false;
  const view = b.subarray(at, at + len);
  const sum = vhdChecksum(view, sumAt);
  new DataView(view.buffer, view.byteOffset).setUint32(sumAt, sum);
  return true;
}

/** Recompute the footer's (at the end and at 0) and the dynamic header's checksums. */
function vhdReseal(b: Uint8Array, layout: Layout): string | undefined {
  const done: string[] = [];
  if (sealAt(b, b.length - FOOTER_SIZE, FOOTER_SIZE, FOOTER_SUM)) done.push('footer');
  const copy = layout.fields.find((f) => f.name === 'footer copy cookie');
  if (copy && sealAt(b, 0, FOOTER_SIZE, FOOTER_SUM)) done.push('footer copy');
  const dyn = layout.fields.find((f) => f.name === 'dynamic header dataOffset');
  if (dyn && sealAt(b, dyn.offset - DynHeader.offsetOf('dataOffset'), DynHeader.size, DYN_SUM)) done.push('dynamic header');
  return done.length ? done.join(', ') : undefined;
}


export const vhdTarget: FuzzTarget = {
  format: 'vpc',
  qemuFormat: 'vpc',
  buildSeeds: (ctx) => convertedSeeds(ctx, 'vpc', 'vhd', SIZE, 7, [['dynamic', []], ['fixed', ['-o', 'subformat=fixed']]]),
  layout: vhdLayout,
  reseal: vhdReseal,
};
