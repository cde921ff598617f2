/**
 * qcow2 header and header extensions: parse (with validation) and encode.
 *
 * Spec: qemu docs/interop/qcow2.rst, "Header", "Header extensions". All
 * numbers big-endian.
 *
 * Header (version 2: the first 72 bytes; version 3: header_length bytes, >= 104)
 *
 *   field                     offset  size
 *   magic "QFI\xfb"              0      4
 *   version (2 or 3)             4      4
 *   backing_file_offset          8      8   name lives in the first cluster
 *   backing_file_size           16      4   <= 1023
 *   cluster_bits                20      4   9..21 here (qemu: 2 MiB max)
 *   size (virtual, bytes)       24      8
 *   crypt_method                32      4   0 none, 1 AES, 2 LUKS
 *   l1_size (entries)           36      4
 *   l1_table_offset             40      8   cluster aligned
 *   refcount_table_offset       48      8   cluster aligned
 *   refcount_table_clusters     56      4
 *   nb_snapshots                60      4
 *   snapshots_offset            64      8   cluster aligned
 *   -- version 3 --
 *   incompatible_features       72      8   0 dirty, 1 corrupt, 2 data file, 3 compression type, 4 extended L2
 *   compatible_features         80      8   0 lazy refcounts
 *   autoclear_features          88      8   0 bitmaps, 1 raw external data
 *   refcount_order              96      4   0..6 (v2: 4)
 *   header_length              100      4   multiple of 8
 *   compression_type           104      1   0 deflate, 1 zstd (present if header_length > 104)
 *   padding                    105      7
 *
 * Header extension: type u32, length u32, data, padding to 8. The area runs
 * from header_length to the backing file name (or the end of the first
 * cluster). Types: 0 end, 0xe2792aca backing format, 0x6803f857 feature name
 * table (48-byte entries: type u8, bit u8, name[46]), 0x23852875 bitmaps,
 * 0x0537be77 encryption header, 0x44415441 external data file name.
 */

import type { BlockDevice } from '../../core/device.js';
import { fieldError } from '../../core/errors.js';
import { defineStruct } from '../engine/struct.js';
import type { WarningLog } from '../warnings.js';

const V2_FIELDS = [
  ['magic', 'u32be'],
  ['version', 'u32be'],
  ['backing_file_offset', 'u64be'],
  ['backing_file_size', 'u32be'],
  ['cluster_bits', 'u32be'],
  ['size', 'u64be'],
  ['crypt_method', 'u32be'],
  ['l1_size', 'u32be'],
  ['l1_table_offset', 'u64be'],
  ['refcount_table_offset', 'u64be'],
  ['refcount_table_clusters', 'u32be'],
  ['nb_snapshots', 'u32be'],
  ['snapshots_offset', 'u64be'],
] as const;

/** The version 2 header (72 bytes); names are the spec's. */
export const HeaderV2 = defineStruct('qcow2 header', V2_FIELDS);

/** The version 3 header (104 bytes): version 2's fields, then the feature words. */
export const HeaderV3 = defineStruct('qcow2 version 3 header', [
  ...V2_FIELDS,
  ['incompatible_features', 'u64be'],
  ['compatible_features', 'u64be'],
  ['autoclear_features', 'u64be'],
  ['refcount_order', 'u32be'],
  ['header_length', 'u32be'],
] as const);

/** The optional fields after byte 104 (present when header_length > 104; we write 112). */
export const HeaderV3Tail = defineStruct('qcow2 header compression type', [
  ['compression_type', 'u8'],
  ['padding', { bytes: 7 }],
] as const);

/** Each header extension starts with this record; its data (padded to 8 bytes) follows. */
export const ExtensionHeader = defineStruct('qcow2 header extension', [
  ['type', 'u32be'],
  ['length', 'u32be'],
] as const);

/** One entry of the feature name table extension. */
export const FeatureNameEntry = defineStruct('qcow2 feature name table entry', [
  ['type', 'u8'],
  ['bit', 'u8'],
  ['name', { bytes: 46 }],
] as const);

export type HeaderV3Value = ReturnType<typeof HeaderV3.parse>;

export const QCOW2_MAGIC = 0x514649fb;
export const FORMAT = 'qcow2';

export const INCOMPAT_DIRTY = 1;
export const INCOMPAT_CORRUPT = 2;
export const INCOMPAT_DATA_FILE = 4;
export const INCOMPAT_COMPRESSION = 8;
export const INCOMPAT_EXTL2 = 16;
export const INCOMPAT_KNOWN = 0x1f;
export const COMPAT_LAZY_REFCOUNTS = 1;
export const AUTOCLEAR_BITMAPS = 1;
export const AUTOCLEAR_DATA_FILE_RAW = 2;

export const EXT_END = 0;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

/** qemu's implementation limits, which we share so images stay interchangeable. */
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
export const MAX_L1_BYTES = 32 * 1024 * 1024;
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MAX_SNAPSHOTS = 65536;
export const MAX_BACKING_NAME = 1023;

export interface FeatureName {
  type: number; // 0 incompatible, 1 compatible, 2 autoclear
  bit: number;
  name: string;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  /** Feature bitmasks: bits 0..31 as a number; `incompatibleHigh` holds bits 32..63 (all unknown). */
  incompatible: number;
  incompatibleHigh: number;
  compatible: number;
  /** Bits 32..63 of compatible_features (unknown; preserved on rewrite). */
  compatibleHigh: number;
  autoclear: number;
  /** Bits 32..63 of autoclear_features (unknown: cleared before our first write). */
  autoclearHigh: number;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  // From extensions and the backing name area.
  backingFile?: string;
  backingFormat?: string;
  /** Byte offset of the backing format extension's data (for messages). */
  backingFormatOffset?: number;
  dataFile?: string;
  featureNames: FeatureName[];
  hasBitmaps: boolean;
}

const u32 = (b: Uint8Array, o: number) => ((b[o]! << 24) >>> 0) + (b[o + 1]! << 16) + (b[o + 2]! << 8) + b[o + 3]!;

type FieldName = keyof HeaderV3Value;
const at = (field: FieldName): number => HeaderV3.offsetOf(field);

/** A 64-bit offset/size field as a number; error when it cannot be one. */
function u64num(v: bigint, field: FieldName): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw fieldError('invalid-format', FORMAT, field, at(field), v, 'is larger than 2^53');
  }
  return Number(v);
}

const high = (v: bigint): number => Number(v >> 32n);
const low = (v: bigint): number => Number(v & 0xffffffffn);
const join = (hi: number, lo: number): bigint => (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);

export function probeQcow2(head: Uint8Array): boolean {
  return head.length >= 8 && u32(head, 0) === QCOW2_MAGIC && (u32(head, 4) === 2 || u32(head, 4) === 3);
}

function latin(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('utf8');
}

/**
 * Read and validate the header and its extensions. Checks that only need
 * the header and the file size live here; table contents are checked by
 * their own modules.
 */
export async function readHeader(child: BlockDevice, log?: WarningLog): Promise<Qcow2Header> {
  const fileSize = child.size;
  if (fileSize < 72) throw fieldError('invalid-format', FORMAT, 'header', 0, fileSize, 'file is too small for a qcow2 header');
  const first = new Uint8Array(Math.min(fileSize, 4096));
  await child.read(first, 0);
  if (u32(first, 0) !== QCOW2_MAGIC) throw fieldError('invalid-format', FORMAT, 'magic', 0, u32(first, 0), 'is not QFI\\xfb');
  const version = u32(first, 4);
  if (version !== 2 && version !== 3) {
    throw fieldError('unsupported', FORMAT, 'version', 4, version, 'is not 2 or 3');
  }
  const clusterBits = u32(first, 20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw fieldError('invalid-format', FORMAT, 'cluster_bits', 20, clusterBits, `is outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}`);
  }
  const cs = 2 ** clusterBits;
  // The whole first cluster (header, extensions, backing name), as far as the file has it.
  let hdr = first;
  if (cs > first.length && fileSize > first.length) {
    hdr = new Uint8Array(Math.min(cs, fileSize));
    await child.read(hdr, 0);
  }
  const f = HeaderV2.parse(hdr);
  const h: Qcow2Header = {
    version,
    backingFileOffset: u64num(f.backing_file_offset, 'backing_file_offset'),
    backingFileSize: f.backing_file_size,
    clusterBits,
    size: 0,
    cryptMethod: f.crypt_method,
    l1Size: f.l1_size,
    l1TableOffset: u64num(f.l1_table_offset, 'l1_table_offset'),
    refcountTableOffset: u64num(f.refcount_table_offset, 'refcount_table_offset'),
    refcountTableClusters: f.refcount_table_clusters,
    nbSnapshots: f.nb_snapshots,
    snapshotsOffset: snapshotsOffset(f.snapshots_offset, f.nb_snapshots, log),
    incompatible: 0,
    incompatibleHigh: 0,
    compatible: 0,
    compatibleHigh: 0,
    autoclear: 0,
    autoclearHigh: 0,
    refcountOrder: 4,
    headerLength: HeaderV2.size,
    compressionType: 0,
    featureNames: [],
    hasBitmaps: false,
  };
  if (f.size > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw fieldError('unsupported', FORMAT, 'size', at('size'), f.size, 'virtual size is larger than 2^53 bytes');
  }
  h.size = Number(f.size);

  if (version === 3) {
    if (hdr.length < HeaderV3.size) throw fieldError('invalid-format', FORMAT, 'header_length', at('header_length'), hdr.length, 'file is too small for a version 3 header');
    const v3 = HeaderV3.parse(hdr);
    h.incompatibleHigh = high(v3.incompatible_features);
    h.incompatible = low(v3.incompatible_features);
    h.compatibleHigh = high(v3.compatible_features);
    h.compatible = low(v3.compatible_features);
    h.autoclearHigh = high(v3.autoclear_features);
    h.autoclear = low(v3.autoclear_features);
    h.refcountOrder = v3.refcount_order;
    h.headerLength = v3.header_length;
    if (h.headerLength < HeaderV3.size || h.headerLength > cs || h.headerLength > hdr.length) {
      throw fieldError('invalid-format', FORMAT, 'header_length', at('header_length'), h.headerLength, 'must be at least 104 and inside the first cluster');
    }
    if (h.headerLength % 8 !== 0) {
      log?.add('header_length', 'header_length', at('header_length'), h.headerLength, 'is not a multiple of 8 (the header extensions are read from there, as qemu does)');
    }
    // compression_type: the first byte of HeaderV3Tail, present when header_length reaches it.
    if (h.headerLength > HeaderV3.size) h.compressionType = hdr[HeaderV3.size]!;
    if (h.refcountOrder > 6) {
      throw fieldError('invalid-format', FORMAT, 'refcount_order', at('refcount_order'), h.refcountOrder, 'is larger than 6 (64-bit refcounts)');
    }
  }

  // Extensions: from the end of the header to the backing name (or the cluster end).
  if (h.backingFileOffset > cs) {
    throw fieldError('invalid-format', FORMAT, 'backing_file_offset', 8, h.backingFileOffset, 'is past the first cluster');
  }
  if (h.backingFileOffset !== 0 && h.backingFileSize === 0) {
    // qemu reads an empty name: no backing file. The extensions still end at the offset.
    log?.add('backing_file_size', 'backing_file_size', 16, 0, `is 0 while backing_file_offset is ${h.backingFileOffset}: the image has no backing file`);
  } else if (h.backingFileOffset !== 0) {
    if (h.backingFileSize > MAX_BACKING_NAME) {
      throw fieldError('invalid-format', FORMAT, 'backing_file_size', 16, h.backingFileSize, `is more than ${MAX_BACKING_NAME}`);
    }
    if (h.backingFileOffset < h.headerLength || h.backingFileOffset + h.backingFileSize > cs || h.backingFileOffset + h.backingFileSize > hdr.length) {
      throw fieldError('invalid-format', FORMAT, 'backing_file_offset', 8, h.backingFileOffset, `the name (${h.backingFileSize} bytes) is not inside the first cluster after the header`);
    }
    h.backingFile = latin(hdr.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize));
  }
  const extEnd = Math.min(h.backingFileOffset !== 0 ? h.backingFileOffset : cs, hdr.length);
  let pos = h.headerLength;
  const seen = new Set<number>();
  while (pos + 8 <= extEnd) {
    const { type, length: len } = ExtensionHeader.parse(hdr.subarray(pos, pos + ExtensionHeader.size));
    if (type === EXT_END) break;
    const data = pos + ExtensionHeader.size;
    if (len > extEnd - data) {
      throw fieldError('invalid-format', FORMAT, `header extension 0x${type.toString(16)} length`, pos + 4, len, `runs past the extension area end (${extEnd})`);
    }
    const body = hdr.subarray(data, data + len);
    const known = type === EXT_BACKING_FORMAT || type === EXT_DATA_FILE || type === EXT_FEATURE_TABLE || type === EXT_BITMAPS || type === EXT_CRYPTO;
    if (known && seen.has(type)) {
      throw fieldError('invalid-format', FORMAT, `header extension 0x${type.toString(16)}`, pos, type, 'appears twice');
    }
    seen.add(type);
    switch (type) {
      case EXT_BACKING_FORMAT:
        h.backingFormat = latin(body);
        h.backingFormatOffset = data;
        break;
      case EXT_DATA_FILE:
        h.dataFile = latin(body);
        break;
      case EXT_FEATURE_TABLE:
        if (len % 48 !== 0) {
          log?.add('feature table', 'feature name table length', pos + 4, len, `is not a multiple of 48: the last ${len % 48} bytes are ignored (the table only names feature bits for messages)`);
        }
        for (let e = 0; e + FeatureNameEntry.size <= len; e += FeatureNameEntry.size) {
          const entry = FeatureNameEntry.parse(body.subarray(e, e + FeatureNameEntry.size));
          const nul = entry.name.indexOf(0);
          h.featureNames.push({ type: entry.type, bit: entry.bit, name: latin(nul < 0 ? entry.name : entry.name.subarray(0, nul)) });
        }
        break;
      case EXT_BITMAPS:
        h.hasBitmaps = true; // bitmaps are not used: reading and writing keep working without them
        break;
      default:
        break; // unknown extensions are skipped (bounds were checked)
    }
    pos = data + Math.ceil(len / 8) * 8;
  }
  return h;
}

/** snapshots_offset: an offset past 2^53 is an error only when there are snapshots (qemu ignores it otherwise). */
function snapshotsOffset(v: bigint, nbSnapshots: number, log?: WarningLog): number {
  if (v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  if (nbSnapshots !== 0) throw fieldError('invalid-format', FORMAT, 'snapshots_offset', at('snapshots_offset'), v, 'is larger than 2^53');
  log?.add('snapshots_offset', 'snapshots_offset', at('snapshots_offset'), v, 'is not a valid offset, but nb_snapshots is 0: there is no snapshot table');
  return 0;
}

export function featureName(h: Qcow2Header, type: number, bit: number): string | undefined {
  return h.featureNames.find((f) => f.type === type && f.bit === bit)?.name;
}

function putU32(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

export function putU64(b: Uint8Array, o: number, v: number): void {
  putU32(b, o, Math.floor(v / 2 ** 32));
  putU32(b, o + 4, v >>> 0);
}

/** The feature names we write into images we create (as qemu does), for tools that do not know a bit. */
const OUR_FEATURE_NAMES: FeatureName[] = [
  { type: 0, bit: 0, name: 'dirty bit' },
  { type: 0, bit: 1, name: 'corrupt bit' },
  { type: 0, bit: 2, name: 'external data file' },
  { type: 0, bit: 3, name: 'compression type' },
  { type: 0, bit: 4, name: 'extended L2 entries' },
  { type: 1, bit: 0, name: 'lazy refcounts' },
  { type: 2, bit: 0, name: 'bitmaps' },
  { type: 2, bit: 1, name: 'raw external data' },
];

/** The fixed part of the header (72 bytes for version 2, 104 for version 3), with header_length 112. */
function encodeFixed(h: Qcow2Header, backingFileOffset: number, backingFileSize: number): Uint8Array {
  const v2 = {
    magic: QCOW2_MAGIC,
    version: h.version,
    backing_file_offset: BigInt(backingFileOffset),
    backing_file_size: backingFileSize,
    cluster_bits: h.clusterBits,
    size: BigInt(h.size),
    crypt_method: h.cryptMethod,
    l1_size: h.l1Size,
    l1_table_offset: BigInt(h.l1TableOffset),
    refcount_table_offset: BigInt(h.refcountTableOffset),
    refcount_table_clusters: h.refcountTableClusters,
    nb_snapshots: h.nbSnapshots,
    snapshots_offset: BigInt(h.snapshotsOffset),
  };
  if (h.version !== 3) return HeaderV2.encode(v2);
  return HeaderV3.encode({
    ...v2,
    incompatible_features: join(h.incompatibleHigh, h.incompatible),
    compatible_features: join(h.compatibleHigh, h.compatible),
    autoclear_features: join(h.autoclearHigh, h.autoclear),
    refcount_order: h.refcountOrder,
    header_length: HeaderV3.size + HeaderV3Tail.size,
  });
}

/**
 * Encode a header (and, for version 3, a feature name table and the backing
 * format extension) into one cluster. The backing name goes right after the
 * extensions; `backingFileOffset/Size` are computed here.
 */
export function encodeHeader(h: Qcow2Header): Uint8Array {
  const cs = 2 ** h.clusterBits;
  const out = new Uint8Array(cs);
  let pos = HeaderV2.size;
  if (h.version === 3) {
    HeaderV3Tail.encode({ compression_type: h.compressionType, padding: new Uint8Array(7) }, out.subarray(HeaderV3.size));
    pos = HeaderV3.size + HeaderV3Tail.size;
    const ext = (type: number, body: Uint8Array) => {
      const need = ExtensionHeader.size + Math.ceil(body.length / 8) * 8;
      if (pos + need + ExtensionHeader.size > cs) return; // no room (512-byte clusters): extensions are optional
      ExtensionHeader.encode({ type, length: body.length }, out.subarray(pos));
      out.set(body, pos + ExtensionHeader.size);
      pos += need;
    };
    if (h.backingFormat) ext(EXT_BACKING_FORMAT, Buffer.from(h.backingFormat, 'utf8'));
    const table = new Uint8Array(FeatureNameEntry.size * OUR_FEATURE_NAMES.length);
    OUR_FEATURE_NAMES.forEach((f, i) => {
      const name = new Uint8Array(46);
      name.set(Buffer.from(f.name, 'utf8'));
      FeatureNameEntry.encode({ type: f.type, bit: f.bit, name }, table.subarray(i * FeatureNameEntry.size));
    });
    ext(EXT_FEATURE_TABLE, table);
    pos += ExtensionHeader.size; // end-of-extensions marker (zeros)
  }
  let backingOffset = 0;
  let backingSize = 0;
  if (h.backingFile) {
    const name = Buffer.from(h.backingFile, 'utf8');
    backingOffset = pos;
    backingSize = name.length;
    out.set(name, pos);
  }
  out.set(encodeFixed(h, backingOffset, backingSize), 0);
  return out;
}

/** Bytes 40..63 (table locations) and, for v3, the feature words: what a writer changes after creation. */
export function encodeMutableFields(h: Qcow2Header): { offset: number; bytes: Uint8Array } {
  // v2 headers stop at 72; snapshots_offset (64) is not rewritten for them: we never change it.
  const from = at('l1_table_offset');
  const to = h.version === 3 ? at('refcount_order') : at('snapshots_offset');
  return { offset: from, bytes: encodeFixed(h, 0, 0).slice(from, to) };
}
