/**
 * The allocation map of an image through its backing chain, as `qemu-img map`
 * reports it: runs of (depth, present, zero, data, compressed, offset),
 * merged where qemu merges them. Generic: it asks each layer's
 * `layerStatus` (formats/types.ts) and descends into `backingImage` for runs
 * a layer leaves unallocated. A layer without `layerStatus` is described from
 * its `status` (no host offsets, depth 0).
 */

import * as path from 'node:path';
import type { Image, LayerRun } from '../formats/types.js';
import { checkRange } from '../core/device.js';

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  compressed: boolean;
  /** Where the run's bytes lie contiguously in the layer's file (absent when they do not). */
  offset?: number;
}

/** One resolved run plus the layer it came from (for the human output's file column). */
export interface ResolvedRun extends MapEntry {
  layer: Image;
}

/** A backing file that was recorded but not opened (metadata-only open): its contents are unknown. */
function isOpen(img: Image | undefined): img is Image {
  return !!img && img.format !== 'missing';
}

async function layerRun(img: Image, pos: number, length: number): Promise<LayerRun> {
  if (img.layerStatus) return img.layerStatus(pos, length);
  const e = await img.status(pos, length);
  return { kind: e.kind, length: e.length };
}

/** What the guest sees at `pos`: a non-empty prefix of [pos, pos + length), resolved through the chain. */
export async function resolveAt(top: Image, pos: number, length: number): Promise<ResolvedRun> {
  let img = top;
  let depth = 0;
  let len = length;
  for (;;) {
    const r = await layerRun(img, pos, len);
    len = Math.min(len, r.length);
    const base = { start: pos, length: len, depth, layer: img };
    if (r.kind === 'data') return { ...base, present: true, zero: false, data: true, compressed: false, offset: r.host };
    if (r.kind === 'compressed') return { ...base, present: true, zero: false, data: true, compressed: true };
    if (r.kind === 'zero') return { ...base, present: true, zero: true, data: false, compressed: false, offset: r.host };
    const backing = img.backingImage;
    if (backing && isOpen(backing) && pos < backing.size) {
      len = Math.min(len, backing.size - pos);
      img = backing;
      depth++;
      continue;
    }
    // Unallocated in every layer: zeros, unless a backing file exists that we may not read.
    return { ...base, present: false, zero: !(backing && !isOpen(backing)), data: false, compressed: false };
  }
}

function mergeable(a: ResolvedRun, b: ResolvedRun): boolean {
  if (a.layer !== b.layer || a.depth !== b.depth || a.present !== b.present || a.zero !== b.zero) return false;
  if (a.data !== b.data || a.compressed !== b.compressed) return false;
  if (a.offset === undefined || b.offset === undefined) return a.offset === b.offset;
  return a.offset + a.length === b.offset;
}

/** The merged map of [start, start + length) of `top`. */
export async function* mapImage(top: Image, start = 0, length = top.size - start): AsyncGenerator<ResolvedRun> {
  checkRange(top, start, length, 'map');
  const end = start + length;
  let cur: ResolvedRun | undefined;
  for (let pos = start; pos < end; ) {
    const r = await resolveAt(top, pos, end - pos);
    if (cur && mergeable(cur, r)) cur.length += r.length;
    else {
      if (cur) yield cur;
      cur = r;
    }
    pos += r.length;
  }
  if (cur) yield cur;
}

/** The JSON object qemu-img prints for one entry (field order as qemu's). */
export function mapEntryJson(e: MapEntry): MapEntry {
  const out: MapEntry = { start: e.start, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data, compressed: e.compressed };
  if (e.offset !== undefined) out.offset = e.offset;
  return out;
}

/**
 * The file name of each layer of a chain as qemu shows it: the top's path as
 * given, a backing file's name joined to its parent's directory.
 */
export async function layerNames(top: Image, topPath: string): Promise<Map<Image, string>> {
  const names = new Map<Image, string>();
  let img: Image | undefined = top;
  let name = topPath;
  while (img && isOpen(img)) {
    names.set(img, name);
    const info = await img.info();
    const b = info['backing-filename'];
    if (b === undefined) break;
    name = path.isAbsolute(b) ? b : path.join(path.dirname(name), b);
    img = img.backingImage;
  }
  return names;
}
