/**
 * The VDI pre-header and header (VirtualBox VDICore.h: VDIPREHEADER followed
 * by VDIHEADER1 or VDIHEADER1PLUS). Little-endian. Offsets are from the start
 * of the file; field names are qemu's (block/vdi.c), VirtualBox's in brackets.
 *
 * | field              | offset | size | VirtualBox name      | notes                               |
 * |--------------------|--------|------|----------------------|-------------------------------------|
 * | text               |      0 |   64 | szFileInfo           | "<<< ... Disk Image >>>\n", NUL pad |
 * | signature          |     64 |    4 | u32Signature         | 0xbeda107f                          |
 * | version            |     68 |    4 | u32Version           | 0x00010001 = 1.1                    |
 * | header_size        |     72 |    4 | cbHeader             | 384 (VDIHEADER1), 400 (1PLUS)       |
 * | image_type         |     76 |    4 | u32Type              | 1 normal, 2 fixed, 3 undo, 4 diff   |
 * | image_flags        |     80 |    4 | fFlags               |                                     |
 * | description        |     84 |  256 | szComment            | UTF-8, NUL terminated               |
 * | offset_bmap        |    340 |    4 | offBlocks            | block map offset                    |
 * | offset_data        |    344 |    4 | offData              | first data block offset             |
 * | cylinders          |    348 |    4 | LegacyGeometry       | 0 = not calculated                  |
 * | heads              |    352 |    4 |                      |                                     |
 * | sectors            |    356 |    4 |                      |                                     |
 * | sector_size        |    360 |    4 | LegacyGeometry.cbSector | 512                              |
 * | unused1            |    364 |    4 | u32Dummy             |                                     |
 * | disk_size          |    368 |    8 | cbDisk               | guest bytes                         |
 * | block_size         |    376 |    4 | cbBlock              | 1 MiB by default                    |
 * | block_extra        |    380 |    4 | cbBlockExtra         | bytes before each block's data      |
 * | blocks_in_image    |    384 |    4 | cBlocks              | block map entries                   |
 * | blocks_allocated   |    388 |    4 | cBlocksAllocated     | data blocks in the file             |
 * | uuid_image         |    392 |   16 | uuidCreate           | IPRT layout (first 3 fields LE)     |
 * | uuid_last_snap     |    408 |   16 | uuidModify           |                                     |
 * | uuid_link          |    424 |   16 | uuidLinkage          | parent (differencing images)        |
 * | uuid_parent        |    440 |   16 | uuidParentModify     |                                     |
 * | lchs_cylinders     |    456 |    4 | LCHSGeometry         | only when header_size >= 400        |
 * | lchs_heads         |    460 |    4 |                      |                                     |
 * | lchs_sectors       |    464 |    4 |                      |                                     |
 * | lchs_sector_size   |    468 |    4 |                      | 512                                 |
 *
 * Parsing here only decodes; `validateHeader` in image.ts decides what is
 * acceptable (it needs the file size).
 */

import { nodeCrypto } from '../../core/lazy.js';
import { defineStruct } from '../engine/struct.js';

/** VDIPREHEADER: at offset 0. */
export const PreHeader = defineStruct('vdi pre-header', [
  ['text', { bytes: 64 }],
  ['signature', 'u32le'],
  ['version', 'u32le'],
] as const);

/** VDIHEADER1PLUS: at offset 72, right after the pre-header (VDIHEADER1 is its first 384 bytes). */
export const Header1Plus = defineStruct('vdi header', [
  ['header_size', 'u32le'],
  ['image_type', 'u32le'],
  ['image_flags', 'u32le'],
  ['description', { bytes: 256 }],
  ['offset_bmap', 'u32le'],
  ['offset_data', 'u32le'],
  ['cylinders', 'u32le'],
  ['heads', 'u32le'],
  ['sectors', 'u32le'],
  ['sector_size', 'u32le'],
  ['unused1', 'u32le'],
  ['disk_size', 'u64le'],
  ['block_size', 'u32le'],
  ['block_extra', 'u32le'],
  ['blocks_in_image', 'u32le'],
  ['blocks_allocated', 'u32le'],
  ['uuid_image', { bytes: 16 }],
  ['uuid_last_snap', { bytes: 16 }],
  ['uuid_link', { bytes: 16 }],
  ['uuid_parent', { bytes: 16 }],
  ['lchs_cylinders', 'u32le'],
  ['lchs_heads', 'u32le'],
  ['lchs_sectors', 'u32le'],
  ['lchs_sector_size', 'u32le'],
] as const);

export const PRE_HEADER_SIZE = PreHeader.size; // 72
export const HEADER1_SIZE = 384;
export const HEADER1PLUS_SIZE = Header1Plus.size; // 400
/** Bytes of the file the header occupies at most (pre-header + VDIHEADER1PLUS). */
export const HEADER_AREA = PRE_HEADER_SIZE + HEADER1PLUS_SIZE; // 472

export const VDI_SIGNATURE = 0xbeda107f;
export const VDI_VERSION_1_1 = 0x00010001;
export const VDI_TEXT = '<<< Oracle VM VirtualBox Disk Image >>>\n';

export const TYPE_NORMAL = 1;
export const TYPE_FIXED = 2;
export const TYPE_UNDO = 3;
export const TYPE_DIFF = 4;

type FieldName = keyof ReturnType<typeof PreHeader.parse> | keyof ReturnType<typeof Header1Plus.parse>;
/** Field byte offsets in the file (from the two structs' layout tables), for error messages and patching. */
export const OFF = Object.fromEntries([
  ...PreHeader.layout.map((r) => [r.field, r.offset] as const),
  ...Header1Plus.layout.map((r) => [r.field, PRE_HEADER_SIZE + r.offset] as const),
]) as Readonly<Record<FieldName, number>>;

export interface VdiHeader {
  text: string;
  signature: number;
  version: number;
  headerSize: number;
  imageType: number;
  imageFlags: number;
  description: string;
  offsetBmap: number;
  offsetData: number;
  cylinders: number;
  heads: number;
  sectors: number;
  sectorSize: number;
  /** 64-bit on disk: kept as bigint until validated. */
  diskSize: bigint;
  blockSize: number;
  blockExtra: number;
  blocksInImage: number;
  blocksAllocated: number;
  /** 16 bytes each, as stored (IPRT byte order). */
  uuidImage: Uint8Array;
  uuidLastSnap: Uint8Array;
  uuidLink: Uint8Array;
  uuidParent: Uint8Array;
  /** Present only when headerSize >= 400. */
  lchs?: { cylinders: number; heads: number; sectors: number; sectorSize: number };
}

function cstring(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return Buffer.from(nul < 0 ? bytes : bytes.subarray(0, nul)).toString('utf8');
}

/** A string in a NUL-padded field of `size` bytes (at most size - 1 of them, so a NUL always ends it). */
function cfield(text: string, size: number): Uint8Array {
  const out = new Uint8Array(size);
  out.set(Buffer.from(text, 'utf8').subarray(0, size - 1));
  return out;
}

/** Decode the header from the first HEADER_AREA bytes of the file (shorter buffers are zero-extended). */
export function parseHeader(head: Uint8Array): VdiHeader {
  const b = new Uint8Array(HEADER_AREA);
  b.set(head.subarray(0, HEADER_AREA));
  const p = PreHeader.parse(b);
  const v = Header1Plus.parse(b.subarray(PRE_HEADER_SIZE));
  const h: VdiHeader = {
    text: cstring(p.text),
    signature: p.signature,
    version: p.version,
    headerSize: v.header_size,
    imageType: v.image_type,
    imageFlags: v.image_flags,
    description: cstring(v.description),
    offsetBmap: v.offset_bmap,
    offsetData: v.offset_data,
    cylinders: v.cylinders,
    heads: v.heads,
    sectors: v.sectors,
    sectorSize: v.sector_size,
    diskSize: v.disk_size,
    blockSize: v.block_size,
    blockExtra: v.block_extra,
    blocksInImage: v.blocks_in_image,
    blocksAllocated: v.blocks_allocated,
    uuidImage: v.uuid_image,
    uuidLastSnap: v.uuid_last_snap,
    uuidLink: v.uuid_link,
    uuidParent: v.uuid_parent,
  };
  if (h.headerSize >= HEADER1PLUS_SIZE) {
    h.lchs = { cylinders: v.lchs_cylinders, heads: v.lchs_heads, sectors: v.lchs_sectors, sectorSize: v.lchs_sector_size };
  }
  return h;
}

/**
 * Encode a header into a new buffer of PRE_HEADER_SIZE + headerSize bytes
 * (headerSize 384 or 400; other sizes keep the 400-byte layout and pad).
 */
export function encodeHeader(h: VdiHeader): Uint8Array {
  const len = PRE_HEADER_SIZE + Math.max(h.headerSize, HEADER1_SIZE);
  const b = new Uint8Array(Math.max(len, HEADER_AREA));
  PreHeader.encode({ text: cfield(h.text, 64), signature: h.signature >>> 0, version: h.version >>> 0 }, b);
  const lchs = h.lchs && h.headerSize >= HEADER1PLUS_SIZE ? h.lchs : { cylinders: 0, heads: 0, sectors: 0, sectorSize: 0 };
  Header1Plus.encode(
    {
      header_size: h.headerSize >>> 0,
      image_type: h.imageType >>> 0,
      image_flags: h.imageFlags >>> 0,
      description: cfield(h.description, 256),
      offset_bmap: h.offsetBmap >>> 0,
      offset_data: h.offsetData >>> 0,
      cylinders: h.cylinders >>> 0,
      heads: h.heads >>> 0,
      sectors: h.sectors >>> 0,
      sector_size: h.sectorSize >>> 0,
      unused1: 0,
      disk_size: h.diskSize,
      block_size: h.blockSize >>> 0,
      block_extra: h.blockExtra >>> 0,
      blocks_in_image: h.blocksInImage >>> 0,
      blocks_allocated: h.blocksAllocated >>> 0,
      uuid_image: h.uuidImage,
      uuid_last_snap: h.uuidLastSnap,
      uuid_link: h.uuidLink,
      uuid_parent: h.uuidParent,
      lchs_cylinders: lchs.cylinders >>> 0,
      lchs_heads: lchs.heads >>> 0,
      lchs_sectors: lchs.sectors >>> 0,
      lchs_sector_size: lchs.sectorSize >>> 0,
    },
    b.subarray(PRE_HEADER_SIZE),
  );
  return b.subarray(0, len);
}

/**
 * A fresh random (version 4) UUID in IPRT byte order: VirtualBox stores
 * RTUUID with time_low, time_mid and time_hi_and_version little-endian, the
 * remaining 8 bytes as in the RFC 4122 string.
 */
export function randomVdiUuid(): Uint8Array {
  return uuidToIprt(nodeCrypto().randomUUID());
}

/** RFC 4122 text form to IPRT bytes. */
export function uuidToIprt(text: string): Uint8Array {
  const be = Buffer.from(text.replace(/-/g, ''), 'hex');
  const out = new Uint8Array(16);
  out.set([be[3]!, be[2]!, be[1]!, be[0]!, be[5]!, be[4]!, be[7]!, be[6]!], 0);
  out.set(be.subarray(8, 16), 8);
  return out;
}

/** IPRT bytes to RFC 4122 text form. */
export function iprtToUuid(b: Uint8Array): string {
  const be = Buffer.from([b[3]!, b[2]!, b[1]!, b[0]!, b[5]!, b[4]!, b[7]!, b[6]!, ...b.subarray(8, 16)]).toString('hex');
  return `${be.slice(0, 8)}-${be.slice(8, 12)}-${be.slice(12, 16)}-${be.slice(16, 20)}-${be.slice(20)}`;
}

export function isNullUuid(b: Uint8Array): boolean {
  return b.every((x) => x === 0);
}
