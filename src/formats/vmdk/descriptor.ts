/**
 * The VMDK text descriptor (VMware "Virtual Disk Format 5.0", section "The
 * Descriptor File"): a separate file (monolithicFlat, twoGbMaxExtent*,
 * vmfs) or embedded in a sparse extent (monolithicSparse, streamOptimized).
 *
 *   # Disk DescriptorFile
 *   version=1
 *   CID=fffffffe                     content id, 8 hex digits
 *   parentCID=ffffffff               ffffffff: no parent
 *   createType="monolithicSparse"
 *   parentFileNameHint="base.vmdk"   delta links only
 *   # Extent description
 *   RW 204800 SPARSE "disk.vmdk"     ACCESS SECTORS TYPE "FILE" [OFFSET]
 *   RW 4194304 FLAT "disk-f001.vmdk" 0
 *   RW 1048576 ZERO
 *   # The Disk Data Base
 *   ddb.adapterType = "ide"
 *
 * Hostile input: the text is bounded by the caller; extent lines, their
 * sizes and names are validated here; opening the files is the caller's
 * (inside the descriptor's directory only).
 */

import { ImageError } from '../../core/errors.js';

export const MAX_DESCRIPTOR_BYTES = 1 << 20;
export const MAX_EXTENTS = 4096;
/** Sectors a descriptor may describe in all: 2^53 bytes. */
const MAX_SECTORS = Math.floor(Number.MAX_SAFE_INTEGER / 512);

export type ExtentType = 'SPARSE' | 'FLAT' | 'ZERO' | 'VMFS' | 'VMFSSPARSE' | 'VMFSRDM' | 'VMFSRAW' | 'SESPARSE';
const EXTENT_TYPES: readonly string[] = ['SPARSE', 'FLAT', 'ZERO', 'VMFS', 'VMFSSPARSE', 'VMFSRDM', 'VMFSRAW', 'SESPARSE'];

export interface ExtentLine {
  access: 'RW' | 'RDONLY' | 'NOACCESS';
  sectors: number;
  type: ExtentType;
  /** Absent for ZERO. */
  file?: string;
  /** FLAT: sector offset inside the file. */
  offset: number;
}

export interface Descriptor {
  version: number;
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint?: string;
  extents: ExtentLine[];
  ddb: Record<string, string>;
}

function bad(field: string, value: string | number, why: string, kind: 'invalid-format' | 'unsupported' = 'invalid-format'): ImageError {
  return new ImageError(kind, `vmdk: descriptor ${field} '${String(value).slice(0, 200)}' ${why}`, {
    format: 'vmdk',
    field,
    value: typeof value === 'string' ? value.slice(0, 200) : value,
  });
}

const unquote = (v: string): string => (v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1) : v);

function parseExtent(line: string): ExtentLine {
  const m = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/.exec(line);
  if (!m) throw bad('extent line', line, 'is not ACCESS SECTORS TYPE ["FILE" [OFFSET]]');
  const [, access, sectorsText, type, file, offsetText] = m;
  if (!EXTENT_TYPES.includes(type!)) throw bad('extent type', type!, 'is not a VMDK extent type', 'unsupported');
  const sectors = Number(sectorsText);
  if (!Number.isSafeInteger(sectors) || sectors <= 0 || sectors > MAX_SECTORS) throw bad('extent sectors', sectorsText!, 'is not a usable size');
  const offset = offsetText === undefined ? 0 : Number(offsetText);
  if (!Number.isSafeInteger(offset) || offset > MAX_SECTORS) throw bad('extent offset', offsetText!, 'is not a usable sector offset');
  if (type !== 'ZERO' && file === undefined) throw bad('extent line', line, 'names no file');
  if (type === 'FLAT' && offsetText === undefined) throw bad('extent line', line, 'is a FLAT extent without an offset');
  if (type !== 'FLAT' && offsetText !== undefined) throw bad('extent line', line, `gives an offset, which only FLAT extents have`);
  if (file !== undefined && (file.length === 0 || file.includes('\0'))) throw bad('extent file', file, 'is not a file name');
  return { access: access as ExtentLine['access'], sectors, type: type as ExtentType, file, offset };
}

export function parseDescriptor(text: string): Descriptor {
  if (text.length > MAX_DESCRIPTOR_BYTES) throw bad('size', text.length, `is larger than ${MAX_DESCRIPTOR_BYTES} bytes`);
  const d: Descriptor = { version: 1, cid: 0xffffffff, parentCid: 0xffffffff, createType: '', extents: [], ddb: {} };
  let total = 0;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '').trim();
    if (!line || line.startsWith('#')) continue;
    if (/^(RW|RDONLY|NOACCESS)\s/.test(line)) {
      if (d.extents.length >= MAX_EXTENTS) throw bad('extent count', d.extents.length + 1, `is more than ${MAX_EXTENTS}`);
      const e = parseExtent(line);
      total += e.sectors;
      if (total > MAX_SECTORS) throw bad('extent sectors', total, 'add up to more than 2^53 bytes');
      d.extents.push(e);
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) continue; // VMware ignores lines it does not know
    const key = line.slice(0, eq).trim();
    const value = unquote(line.slice(eq + 1).trim());
    switch (key) {
      case 'version':
        d.version = Number(value);
        break;
      case 'CID':
      case 'parentCID': {
        if (!/^[0-9a-fA-F]{1,8}$/.test(value)) throw bad(key, value, 'is not a 32-bit hexadecimal number');
        if (key === 'CID') d.cid = parseInt(value, 16);
        else d.parentCid = parseInt(value, 16);
        break;
      }
      case 'createType':
        d.createType = value;
        break;
      case 'parentFileNameHint':
        d.parentFileNameHint = value;
        break;
      default:
        if (key.startsWith('ddb.')) d.ddb[key.slice(4)] = value;
    }
  }
  return d;
}

export interface DescriptorParams {
  cid: number;
  createType: string;
  extents: Array<{ sectors: number; type: 'SPARSE' | 'FLAT'; file: string; offset?: number }>;
  hwVersion: string;
  adapterType: string;
  /** Guest size in sectors (for the geometry). */
  sectors: number;
  toolsVersion?: string;
}

/** The descriptor text as qemu-img writes it. */
export function encodeDescriptor(p: DescriptorParams): string {
  const heads = p.adapterType === 'ide' ? 16 : 255;
  const cylinders = Math.floor(p.sectors / (heads * 63));
  const extents = p.extents
    .map((e) => `RW ${e.sectors} ${e.type} "${e.file}"${e.type === 'FLAT' ? ` ${e.offset ?? 0}` : ''}`)
    .join('\n');
  return [
    '# Disk DescriptorFile',
    'version=1',
    `CID=${(p.cid >>> 0).toString(16).padStart(8, '0')}`,
    'parentCID=ffffffff',
    `createType="${p.createType}"`,
    '',
    '# Extent description',
    extents,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    `ddb.virtualHWVersion = "${p.hwVersion}"`,
    `ddb.geometry.cylinders = "${cylinders}"`,
    `ddb.geometry.heads = "${heads}"`,
    'ddb.geometry.sectors = "63"',
    `ddb.adapterType = "${p.adapterType}"`,
    `ddb.toolsVersion = "${p.toolsVersion ?? '2147483647'}"`,
    '',
  ].join('\n');
}
