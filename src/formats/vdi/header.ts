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

import { randomUUID } from 'node:crypto';

export const PRE_HEADER_SIZE = 72;
export const HEADER1_SIZE = 384;
export const HEADER1PLUS_SIZE = 400;
/** Bytes of the file the header occupies at most (pre-header + VDIHEADER1PLUS). */
export const HEADER_AREA = PRE_HEADER_SIZE + HEADER1PLUS_SIZE; // 472

export const VDI_SIGNATURE = 0xbeda107f;
export const VDI_VERSION_1_1 = 0x00010001;
export const VDI_TEXT = '<<< Oracle VM VirtualBox Disk Image >>>\n';

export const TYPE_NORMAL = 1;
export const TYPE_FIXED = 2;
export const TYPE_UNDO = 3;
export const TYPE_DIFF = 4;

/** Field byte offsets in the file, for error messages and patching. */
export const OFF = {
  text: 0,
  signature: 64,
  version: 68,
  header_size: 72,
  image_type: 76,
  image_flags: 80,
  description: 84,
  offset_bmap: 340,
  offset_data: 344,
  cylinders: 348,
  heads: 352,
  sectors: 356,
  sector_size: 360,
  unused1: 364,
  disk_size: 368,
  block_size: 376,
  block_extra: 380,
  blocks_in_image: 384,
  blocks_allocated: 388,
  uuid_image: 392,
  uuid_last_snap: 408,
  uuid_link: 424,
  uuid_parent: 440,
  lchs_cylinders: 456,
  lchs_heads: 460,
  lchs_sectors: 464,
  lchs_sector_size: 468,
} as const;

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

/** Decode the header from the first HEADER_AREA bytes of the file (shorter buffers are zero-extended). */
export function parseHeader(head: Uint8Array): VdiHeader {
  const b = new Uint8Array(HEADER_AREA);
  b.set(head.subarray(0, HEADER_AREA));
  const v = new DataView(b.buffer);
  const u32 = (o: number) => v.getUint32(o, true);
  const h: VdiHeader = {
    text: cstring(b.subarray(0, 64)),
    signature: u32(OFF.signature),
    version: u32(OFF.version),
    headerSize: u32(OFF.header_size),
    imageType: u32(OFF.image_type),
    imageFlags: u32(OFF.image_flags),
    description: cstring(b.subarray(OFF.description, OFF.description + 256)),
    offsetBmap: u32(OFF.offset_bmap),
    offsetData: u32(OFF.offset_data),
    cylinders: u32(OFF.cylinders),
    heads: u32(OFF.heads),
    sectors: u32(OFF.sectors),
    sectorSize: u32(OFF.sector_size),
    diskSize: v.getBigUint64(OFF.disk_size, true),
    blockSize: u32(OFF.block_size),
    blockExtra: u32(OFF.block_extra),
    blocksInImage: u32(OFF.blocks_in_image),
    blocksAllocated: u32(OFF.blocks_allocated),
    uuidImage: b.slice(OFF.uuid_image, OFF.uuid_image + 16),
    uuidLastSnap: b.slice(OFF.uuid_last_snap, OFF.uuid_last_snap + 16),
    uuidLink: b.slice(OFF.uuid_link, OFF.uuid_link + 16),
    uuidParent: b.slice(OFF.uuid_parent, OFF.uuid_parent + 16),
  };
  if (h.headerSize >= HEADER1PLUS_SIZE) {
    h.lchs = {
      cylinders: u32(OFF.lchs_cylinders),
      heads: u32(OFF.lchs_heads),
      sectors: u32(OFF.lchs_sectors),
      sectorSize: u32(OFF.lchs_sector_size),
    };
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
  const v = new DataView(b.buffer);
  const put32 = (o: number, x: number) => v.setUint32(o, x >>> 0, true);
  b.set(Buffer.from(h.text, 'utf8').subarray(0, 63), OFF.text);
  put32(OFF.signature, h.signature);
  put32(OFF.version, h.version);
  put32(OFF.header_size, h.headerSize);
  put32(OFF.image_type, h.imageType);
  put32(OFF.image_flags, h.imageFlags);
  b.set(Buffer.from(h.description, 'utf8').subarray(0, 255), OFF.description);
  put32(OFF.offset_bmap, h.offsetBmap);
  put32(OFF.offset_data, h.offsetData);
  put32(OFF.cylinders, h.cylinders);
  put32(OFF.heads, h.heads);
  put32(OFF.sectors, h.sectors);
  put32(OFF.sector_size, h.sectorSize);
  v.setBigUint64(OFF.disk_size, h.diskSize, true);
  put32(OFF.block_size, h.blockSize);
  put32(OFF.block_extra, h.blockExtra);
  put32(OFF.blocks_in_image, h.blocksInImage);
  put32(OFF.blocks_allocated, h.blocksAllocated);
  b.set(h.uuidImage, OFF.uuid_image);
  b.set(h.uuidLastSnap, OFF.uuid_last_snap);
  b.set(h.uuidLink, OFF.uuid_link);
  b.set(h.uuidParent, OFF.uuid_parent);
  if (h.lchs && h.headerSize >= HEADER1PLUS_SIZE) {
    put32(OFF.lchs_cylinders, h.lchs.cylinders);
    put32(OFF.lchs_heads, h.lchs.heads);
    put32(OFF.lchs_sectors, h.lchs.sectors);
    put32(OFF.lchs_sector_size, h.lchs.sectorSize);
  }
  return b.subarray(0, len);
}

/**
 * A fresh random (version 4) UUID in IPRT byte order: VirtualBox stores
 * RTUUID with time_low, time_mid and time_hi_and_version little-endian, the
 * remaining 8 bytes as in the RFC 4122 string.
 */
export function randomVdiUuid(): Uint8Array {
  return uuidToIprt(randomUUID());
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
