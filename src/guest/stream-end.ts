/**
 * Where a compressed member of an initramfs ends, so that what follows it (a
 * further archive, e.g. one imgtool appended) can be read the way the kernel
 * reads it. Facts from RFC 1952 (gzip), RFC 8878 (zstd frames) and the .xz
 * file format specification 1.1.0.
 *
 *   gzip   header: ID1 ID2 CM FLG (4), MTIME (4), XFL, OS; then FEXTRA (2-byte
 *          length + data), FNAME and FCOMMENT (NUL-terminated), FHCRC (2) as
 *          FLG says; the deflate stream; CRC32 and ISIZE (8)
 *   zstd   magic (4), frame header descriptor (FCS flag bits 7-6, single
 *          segment bit 5, checksum bit 2, dictionary ID flag bits 1-0), the
 *          window descriptor unless single segment, dictionary ID (0/1/2/4),
 *          frame content size (0 or 1 when single segment / 2 / 4 / 8); blocks
 *          with a 3-byte little-endian header (bit 0 last block, bits 1-2
 *          type: raw, RLE (1 byte of data), compressed, reserved; bits 3-23
 *          size); a 4-byte checksum when the descriptor says so. Skippable
 *          frames: magic 0x184D2A5?, 4-byte size, data.
 *   xz     stream header (12), blocks, index, stream footer (12): CRC32 of the
 *          next 6 bytes (4), backward size (4), stream flags (2, equal to the
 *          header's), 'YZ'; a stream is a multiple of 4 bytes long
 */

import * as zlib from 'node:zlib';
import { crc32 } from '../core/crc32.js';
import { ImageError } from '../core/errors.js';

function corrupt(format: string, what: string, offset: number): ImageError {
  return new ImageError('invalid-format', `${format}: ${what} (at offset ${offset})`, { format, offset });
}

/** The gzip member starting at `pos`: its decompressed data and the offset just past it. */
export function gunzipMember(b: Uint8Array, pos: number, maxOutput: number): { data: Uint8Array; end: number } {
  if (pos + 10 > b.length) throw corrupt('gzip', 'truncated header', pos);
  const flg = b[pos + 3]!;
  let p = pos + 10;
  if (flg & 4) {
    if (p + 2 > b.length) throw corrupt('gzip', 'truncated FEXTRA', p);
    p += 2 + (b[p]! | (b[p + 1]! << 8));
  }
  for (const bit of [8, 16]) {
    if (!(flg & bit)) continue;
    while (p < b.length && b[p] !== 0) p++;
    p++;
  }
  if (flg & 2) p += 2;
  if (p > b.length) throw corrupt('gzip', 'truncated header', pos);
  // Raw inflate stops at the end of the deflate stream and says how much it read.
  const r = zlib.inflateRawSync(b.subarray(p), { info: true, maxOutputLength: maxOutput }) as unknown as { buffer: Buffer; engine: { bytesWritten: number } };
  const end = p + r.engine.bytesWritten + 8;
  if (end > b.length) throw corrupt('gzip', 'truncated trailer', b.length);
  // The trailer: CRC32 and size of the data (mod 2^32).
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (dv.getUint32(end - 4, true) !== r.buffer.length % 2 ** 32 || dv.getUint32(end - 8, true) !== crc32(r.buffer)) {
    throw corrupt('gzip', 'the trailer does not match the data (CRC32 or size)', end - 8);
  }
  return { data: r.buffer, end };
}

/** Offset just past the zstd frames (and skippable frames) starting at `pos`. */
export function zstdEnd(b: Uint8Array, pos: number): number {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let p = pos;
  // Consecutive frames belong to one member (zstd -T writes several).
  while (p + 4 <= b.length) {
    const magic = dv.getUint32(p, true);
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      if (p + 8 > b.length) throw corrupt('zstd', 'truncated skippable frame', p);
      p += 8 + dv.getUint32(p + 4, true);
      continue;
    }
    if (magic !== 0xfd2fb528) break;
    if (p + 5 > b.length) throw corrupt('zstd', 'truncated frame header', p);
    const fhd = b[p + 4]!;
    if (fhd & 0x08) throw corrupt('zstd', 'reserved bit set in the frame header descriptor', p + 4);
    const single = (fhd >> 5) & 1;
    const fcsSize = [single, 2, 4, 8][fhd >> 6]!;
    const dictSize = [0, 1, 2, 4][fhd & 3]!;
    let q = p + 5 + (single ? 0 : 1) + dictSize + fcsSize;
    for (;;) {
      if (q + 3 > b.length) throw corrupt('zstd', 'truncated block header', q);
      const h = b[q]! | (b[q + 1]! << 8) | (b[q + 2]! << 16);
      const type = (h >> 1) & 3;
      const size = h >>> 3;
      if (type === 3) throw corrupt('zstd', 'reserved block type', q);
      q += 3 + (type === 1 ? 1 : size);
      if (h & 1) break;
    }
    if (fhd & 0x04) q += 4;
    if (q > b.length) throw corrupt('zstd', 'frame runs past the end of the data', p);
    p = q;
  }
  if (p === pos) throw corrupt('zstd', 'no frame', pos);
  return Math.min(p, b.length);
}

/** Offset just past the xz stream starting at `pos` (its footer), or -1 when no footer is found. */
export function xzEnd(b: Uint8Array, pos: number): number {
  if (pos + 12 > b.length) throw corrupt('xz', 'truncated stream header', pos);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  // The footer's last two bytes are 'YZ' at a multiple of 4 from the stream start.
  for (let f = pos + 12; f + 12 <= b.length; f += 4) {
    if (b[f + 10] !== 0x59 || b[f + 11] !== 0x5a) continue;
    if (b[f + 8] !== b[pos + 6] || b[f + 9] !== b[pos + 7]) continue;
    if (crc32(b.subarray(f + 4, f + 10)) !== dv.getUint32(f, true)) continue;
    const indexStart = f - (dv.getUint32(f + 4, true) + 1) * 4;
    if (indexStart < pos + 12 || b[indexStart] !== 0) continue;
    return f + 12;
  }
  return -1;
}
