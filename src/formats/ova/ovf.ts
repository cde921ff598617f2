/**
 * The OVF descriptor's disks (DMTF DSP0243, OVF 1.x and 2.x): the
 * References section names files, the DiskSection names disks, each with a
 * fileRef into References and a capacity in `capacityAllocationUnits`
 * ("byte * 2^30" = GiB; absent = bytes).
 *
 *   <References><File ovf:id="file1" ovf:href="disk1.vmdk" ovf:size="..."/></References>
 *   <DiskSection><Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="8"
 *       ovf:capacityAllocationUnits="byte * 2^30" ovf:format="...vmdk.html#streamOptimized"/></DiskSection>
 *
 * Attributes are matched by local name, whatever namespace prefix the file uses.
 */

import { createRequire } from 'node:module';
import { ImageError } from '../../core/errors.js';

export interface OvfDisk {
  index: number;
  id: string;
  /** The archive entry holding the disk (References/File/@href). */
  file: string;
  /** Guest size in bytes, when the OVF gives it. */
  capacity?: number;
  format?: string;
  populatedSize?: number;
}

type El = { localName: string; attributes: { length: number; item(i: number): { localName: string; value: string } | null }; getElementsByTagNameNS(ns: string, n: string): { length: number; item(i: number): El | null } };

function attr(e: El, name: string): string | undefined {
  for (let i = 0; i < e.attributes.length; i++) {
    const a = e.attributes.item(i)!;
    if (a.localName === name) return a.value;
  }
  return undefined;
}

function elements(root: El, name: string): El[] {
  const list = root.getElementsByTagNameNS('*', name);
  const out: El[] = [];
  for (let i = 0; i < list.length; i++) out.push(list.item(i)!);
  return out;
}

function bad(why: string, value?: string): ImageError {
  return new ImageError('invalid-format', `ova: the OVF descriptor ${why}`, { format: 'ova', field: 'ovf', value });
}

/** Bytes per unit of `capacityAllocationUnits`: "byte", "byte * 2^30", "byte * 1024". */
export function allocationUnits(units: string | undefined): number {
  if (units === undefined) return 1;
  const m = /^\s*byte\s*(?:\*\s*(\d+)(?:\s*\^\s*(\d+))?)?\s*$/.exec(units);
  if (!m) throw bad(`has capacityAllocationUnits '${units}', not 'byte * N' or 'byte * 2^N'`, units);
  const base = m[1] === undefined ? 1 : Number(m[1]);
  const v = m[2] === undefined ? base : base ** Number(m[2]);
  if (!Number.isSafeInteger(v) || v < 1) throw bad(`has capacityAllocationUnits '${units}' out of range`, units);
  return v;
}

function num(v: string | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v.trim())) throw bad(`has ${what} '${v}', not a number`, v);
  return Number(v);
}

export function parseOvf(text: string): OvfDisk[] {
  const errors: string[] = [];
  let doc;
  try {
    const { DOMParser } = createRequire(import.meta.url)('@xmldom/xmldom') as typeof import('@xmldom/xmldom');
    doc = new DOMParser({
      errorHandler: (level: string, msg: string) => {
        if (level !== 'warning') errors.push(msg);
      },
    }).parseFromString(text, 'text/xml');
  } catch (e) {
    throw bad(`is not well-formed XML (${(e as Error).message})`);
  }
  const root = doc.documentElement as unknown as El | null;
  if (errors.length || !root || root.localName !== 'Envelope') throw bad(`is not an OVF Envelope${errors.length ? ` (${errors[0]})` : ''}`);
  const files = new Map<string, string>();
  for (const f of elements(root, 'File')) {
    const id = attr(f, 'id');
    const href = attr(f, 'href');
    if (id !== undefined && href !== undefined) files.set(id, href);
  }
  return elements(root, 'Disk').map((d, index) => {
    const id = attr(d, 'diskId') ?? `disk${index}`;
    const ref = attr(d, 'fileRef');
    const file = ref === undefined ? undefined : files.get(ref);
    if (file === undefined) throw bad(`disk ${index} (${id}) has fileRef '${ref ?? ''}', which References does not name`, ref);
    const cap = num(attr(d, 'capacity'), 'capacity');
    const capacity = cap === undefined ? undefined : cap * allocationUnits(attr(d, 'capacityAllocationUnits'));
    if (capacity !== undefined && !Number.isSafeInteger(capacity)) throw bad(`disk ${index} has a capacity past 2^53 bytes`);
    return { index, id, file, capacity, format: attr(d, 'format'), populatedSize: num(attr(d, 'populatedSize'), 'populatedSize') };
  });
}
