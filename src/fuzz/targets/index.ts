/**
 * The fuzz target registry. A format joins the fuzzer by registering a
 * FuzzTarget here (seed builder + layout); a driver not yet in DRIVERS can
 * name its module in `driverModule`.
 */

import type { FuzzTarget } from '../types.js';
import { qcowTarget } from './qcow.js';
import { qcow2Target } from './qcow2.js';
import { rawTarget } from './raw.js';
import { vdiTarget } from './vdi.js';
import { vhdTarget } from './vhd.js';
import { vhdxTarget } from './vhdx.js';
import { vmdkTarget } from './vmdk.js';

const TARGETS = new Map<string, FuzzTarget>();

export function registerTarget(t: FuzzTarget): void {
  TARGETS.set(t.format, t);
}

export function allTargets(): FuzzTarget[] {
  return [...TARGETS.values()];
}

/** Targets by format name; unknown names are an error naming the known ones. */
export function selectTargets(formats?: readonly string[]): FuzzTarget[] {
  if (!formats?.length) return allTargets();
  return formats.map((f) => {
    const t = TARGETS.get(f);
    if (!t) throw new Error(`no fuzz target for format '${f}' (known: ${[...TARGETS.keys()].join(', ')})`);
    return t;
  });
}

for (const t of [rawTarget, qcowTarget, qcow2Target, vdiTarget, vmdkTarget, vhdTarget, vhdxTarget]) registerTarget(t);
