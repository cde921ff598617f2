/** qemu-img's size syntax: `512`, `64k`, `2M`, `1G`, `1T` (powers of 1024; `b` for bytes). */

import { ImageError } from './errors.js';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new ImageError('usage', `${what}: '${text}' is not a size (examples: 512, 64k, 2M, 1G)`, { value: text });
  const n = Number(m[1]) * UNITS[m[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(n)) {
    throw new ImageError('usage', `${what}: '${text}' is not a whole number of bytes, or is too large`, { value: text });
  }
  return n;
}

/** Human size: 1.5 GiB, 64 KiB, 512 B. */
export function formatSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 && v !== Math.floor(v) ? 2 : v === Math.floor(v) ? 0 : 1)} ${units[i]}`;
}

/**
 * qemu's `-o key=value,key=value` option strings; `,,` is a literal comma.
 * Several -o options merge, later ones win.
 */
export function parseKeyValues(items: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items) {
    const parts: string[] = [];
    let cur = '';
    for (let i = 0; i < item.length; i++) {
      const c = item[i]!;
      if (c === ',' && item[i + 1] === ',') {
        cur += ',';
        i++;
      } else if (c === ',') {
        parts.push(cur);
        cur = '';
      } else cur += c;
    }
    parts.push(cur);
    for (const p of parts) {
      if (!p) continue;
      const eq = p.indexOf('=');
      if (eq <= 0) throw new ImageError('usage', `option '${p}' is not KEY=VALUE`, { value: p });
      out[p.slice(0, eq).trim()] = p.slice(eq + 1);
    }
  }
  return out;
}
