/**
 * VMDK hosted sparse extent structures (VMware "Virtual Disk Format 5.0",
 * section "Hosted Sparse Extent Header" and "Stream-Optimized Compressed
 * Sparse Extents"; qemu block/vmdk.c for what qemu reads and writes).
 *
 * Sparse extent header (512 bytes, little-endian; sector numbers are in
 * 512-byte sectors):
 *
 *   off size field
 *     0   4  magic              "KDMV" (0x564d444b little-endian)
 *     4   4  version            1; 2 (zeroed-grain GTEs, qemu compat6); 3 (streamOptimized)
 *     8   4  flags              bit 0 valid newline test, bit 1 redundant GD,
 *                               bit 2 zeroed-grain GTE, bit 16 compressed, bit 17 markers
 *    12   8  capacity           guest size in sectors
 *    20   8  grainSize          sectors per grain (our cluster)
 *    28   8  descriptorOffset   sector of the embedded descriptor (0: none)
 *    36   8  descriptorSize     its length in sectors
 *    44   4  numGTEsPerGT       grain table entries per grain table (512)
 *    48   8  rgdOffset          sector of the redundant grain directory
 *    56   8  gdOffset           sector of the grain directory; ~0 = in the footer
 *    64   8  overHead           sectors before the first grain
 *    72   1  uncleanShutdown
 *    73   4  newline test chars '\n', ' ', '\r', '\n'
 *    77   2  compressAlgorithm  0 none, 1 deflate (zlib stream)
 *    79 433  pad
 *
 * Vocabulary: grain = our cluster; grain directory (GD) = L1 table; grain
 * table (GT) = L2 table; GTE = L2 entry (a sector number).
 *
 * Stream-optimized markers (one per 512-byte aligned record):
 *
 *   off size field
 *     0   8  val    grain: its guest sector (lba); metadata: sectors that follow
 *     8   4  size   grain: compressed bytes that follow; metadata: 0
 *    12   4  type   metadata only: 0 end of stream, 1 GT, 2 GD, 3 footer
 */

import { defineStruct, type StructValue } from '../engine/struct.js';

export const VMDK4_MAGIC = 0x564d444b; // "KDMV" read little-endian
export const COWD_MAGIC = 0x44574f43; // "COWD": VMFS sparse (ESX 2)
export const SECTOR = 512;

export const FLAG_NL_DETECT = 1 << 0;
export const FLAG_RGD = 1 << 1;
export const FLAG_ZERO_GRAIN = 1 << 2;
export const FLAG_COMPRESS = 1 << 16;
export const FLAG_MARKER = 1 << 17;
export const COMPRESS_DEFLATE = 1;
export const GD_AT_END = 0xffffffffffffffffn;
/** A GTE of 1 with FLAG_ZERO_GRAIN: the grain reads as zero. */
export const GTE_ZEROED = 1;

export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;

export const SparseHeader = defineStruct('vmdk sparse extent header', [
  ['magic', 'u32le'],
  ['version', 'u32le'],
  ['flags', 'u32le'],
  ['capacity', 'u64le'],
  ['grainSize', 'u64le'],
  ['descriptorOffset', 'u64le'],
  ['descriptorSize', 'u64le'],
  ['numGTEsPerGT', 'u32le'],
  ['rgdOffset', 'u64le'],
  ['gdOffset', 'u64le'],
  ['overHead', 'u64le'],
  ['uncleanShutdown', 'u8'],
  ['singleEndLineChar', 'u8'],
  ['nonEndLineChar', 'u8'],
  ['doubleEndLineChar1', 'u8'],
  ['doubleEndLineChar2', 'u8'],
  ['compressAlgorithm', 'u16le'],
  ['pad', { bytes: 433 }],
] as const);

/** The 12 bytes before a compressed grain. */
export const GrainMarker = defineStruct('vmdk grain marker', [
  ['lba', 'u64le'],
  ['size', 'u32le'],
] as const);

/** A metadata marker: a whole sector with size 0 and a type. */
export const MetaMarker = defineStruct('vmdk metadata marker', [
  ['sectors', 'u64le'],
  ['size', 'u32le'],
  ['type', 'u32le'],
  ['pad', { bytes: 496 }],
] as const);

export type Header = ReturnType<typeof SparseHeader.parse>;

/** A fresh header with the newline-test characters and zero padding. */
export function newHeader(h: Omit<Header, 'magic' | 'pad' | 'singleEndLineChar' | 'nonEndLineChar' | 'doubleEndLineChar1' | 'doubleEndLineChar2' | 'uncleanShutdown'>): Header {
  return {
    magic: VMDK4_MAGIC,
    ...h,
    uncleanShutdown: 0,
    singleEndLineChar: 0x0a,
    nonEndLineChar: 0x20,
    doubleEndLineChar1: 0x0d,
    doubleEndLineChar2: 0x0a,
    pad: new Uint8Array(433),
  };
}

/** One metadata marker sector. */
export function metaMarker(type: number, sectors: number): Uint8Array {
  return MetaMarker.encode({ sectors: BigInt(sectors), size: 0, type, pad: new Uint8Array(496) });
}
