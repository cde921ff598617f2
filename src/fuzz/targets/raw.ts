/**
 * raw seeds. raw has no structure of its own; its fields are the words other
 * formats' probes look at (magics, versions), so that a raw image that
 * happens to start like a qcow, qcow2 or VDI file is read as one when the
 * format is detected (cases without --format), as the CLI does.
 */

import type { FuzzTarget, Layout, Seed, SeedContext } from '../types.js';
import { be } from './layout.js';

const SIZE = 2 * 1024 * 1024 + 4096;

export async function rawLayout(b: Uint8Array): Promise<Layout> {
  return {
    fields: [be('word 0 (qcow/qcow2 magic)', 0, 4), be('word 4 (qcow version)', 4, 4), { name: 'word 64 (VDI signature)', offset: 64, size: 4, endian: 'le' }],
    tables: [],
    regions: [{ name: 'first sector', offset: 0, length: Math.min(512, b.length) }],
    unit: 512,
  };
}

async function rawSeeds(ctx: SeedContext): Promise<Seed[]> {
  return [{ name: 'raw', format: 'raw', path: ctx.patternRaw('raw.raw', SIZE, 6) }];
}

export const rawTarget: FuzzTarget = {
  format: 'raw',
  qemuFormat: 'raw',
  buildSeeds: rawSeeds,
  layout: rawLayout,
};
