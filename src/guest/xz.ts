/**
 * A decoder for .xz (LZMA2) and legacy .lzma (LZMA "alone") data, for looking
 * inside compressed initramfs images without a host tool. Facts from the
 * .xz file format specification (Tukaani, 1.1.0), the LZMA specification
 * (Igor Pavlov's lzma-specification.txt, LZMA SDK) and the LZMA2 chunk
 * format as xz-embedded documents it; the code is ours.
 *
 * .xz stream (all integers little-endian except where noted):
 *
 *   stream header   12 bytes: magic FD 37 7A 58 5A 00, flags (2: 0x00, check type),
 *                   CRC32 of the flags (4)
 *   block           header: size byte (real size = (byte + 1) * 4), flags
 *                   (bits 0-1 filters - 1, bit 6 compressed size present,
 *                   bit 7 uncompressed size present), the sizes (VLI), one
 *                   filter-flags record per filter (ID VLI, properties size
 *                   VLI, properties), zero padding, CRC32 (4);
 *                   then the compressed data, padding to a multiple of 4
 *                   (counted from the block header start), the check
 *                   (0, 4, 8 or 32 bytes for none/CRC32/CRC64/SHA-256)
 *   index           starts with a 0x00 byte where a block header would start
 *   stream footer   12 bytes
 *
 *   Only the LZMA2 filter (ID 0x21, 1 property byte: dictionary size) is
 *   supported: what initramfs tools write (xz --check=crc32 [--lzma2=...]).
 *
 * LZMA2 chunks (sizes big-endian):
 *
 *   0x00                  end of the LZMA2 data
 *   0x01 / 0x02           uncompressed chunk with / without dictionary reset:
 *                         size - 1 (2 bytes), then the bytes
 *   0x80 | r << 5 | u     LZMA chunk; r: 0 nothing reset, 1 state reset,
 *                         2 state reset + new properties, 3 + dictionary reset;
 *                         u = bits 16-20 of (unpacked size - 1), then bits 0-15
 *                         (2 bytes), packed size - 1 (2 bytes), the properties
 *                         byte when r >= 2 ((pb * 5 + lp) * 9 + lc), then a
 *                         range-coded LZMA stream (the range coder restarts
 *                         at every chunk)
 *
 * .lzma ("alone"): properties byte, dictionary size (4), uncompressed size
 * (8; all ones = unknown, ended by the end marker), then one LZMA stream.
 *
 * Output is capped (`maxOutput`); corrupt input raises ImageError naming the
 * offset. Checks (CRC32/64, SHA-256) are not verified: cpio parsing after us
 * notices garbage, and a wrong answer here only affects a warning.
 */

import { ImageError } from '../core/errors.js';

const XZ_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const CHECK_SIZES = [0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64];
const FILTER_LZMA2 = 0x21;

function corrupt(what: string, offset: number): ImageError {
  return new ImageError('invalid-format', `xz: ${what} (at offset ${offset})`, { format: 'xz', offset });
}

/** Growing output buffer that doubles as the LZMA dictionary. */
class Output {
  buf: Uint8Array;
  len = 0;
  /** Matches may not reach before this position (the last dictionary reset). */
  dictStart = 0;
  constructor(
    initial: number,
    private readonly max: number,
  ) {
    this.buf = new Uint8Array(Math.max(1024, Math.min(initial, max)));
  }
  ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    if (this.len + n > this.max) {
      throw new ImageError('unsupported', `xz: the data decompresses to more than ${this.max} bytes`, { format: 'xz', value: this.max });
    }
    let size = this.buf.length;
    while (size < this.len + n) size *= 2;
    const b = new Uint8Array(Math.min(size, this.max));
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
  }
  result(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }
}

class RangeDecoder {
  range = 0;
  code = 0;
  constructor(
    private readonly b: Uint8Array,
    public pos: number,
    private end: number,
  ) {}

  private next(): number {
    if (this.pos >= this.end) throw corrupt('compressed data ends early', this.pos);
    return this.b[this.pos++]!;
  }

  init(end: number): void {
    this.end = end;
    if (this.next() !== 0) throw corrupt('range coder does not start with a zero byte', this.pos - 1);
    this.range = 0xffffffff;
    this.code = 0;
    for (let i = 0; i < 4; i++) this.code = (this.code * 256 + this.next()) >>> 0;
    if (this.code === this.range) throw corrupt('range coder starts with an invalid code', this.pos - 4);
  }

  private normalize(): void {
    if (this.range < 0x1000000) {
      this.range = (this.range * 256) >>> 0;
      this.code = ((this.code * 256) + this.next()) >>> 0;
    }
  }

  bit(probs: Uint16Array, i: number): number {
    const p = probs[i]!;
    const bound = (this.range >>> 11) * p;
    let bit: number;
    if (this.code < bound) {
      this.range = bound;
      probs[i] = p + ((2048 - p) >>> 5);
      bit = 0;
    } else {
      this.range -= bound;
      this.code -= bound;
      probs[i] = p - (p >>> 5);
      bit = 1;
    }
    this.normalize();
    return bit;
  }

  direct(n: number): number {
    let res = 0;
    for (let i = 0; i < n; i++) {
      this.range = this.range >>> 1;
      let bit = 0;
      if (this.code >= this.range) {
        this.code -= this.range;
        bit = 1;
      }
      res = res * 2 + bit;
      this.normalize();
    }
    return res;
  }

  tree(probs: Uint16Array, offset: number, bits: number): number {
    let m = 1;
    for (let i = 0; i < bits; i++) m = m * 2 + this.bit(probs, offset + m);
    return m - (1 << bits);
  }

  reverseTree(probs: Uint16Array, offset: number, bits: number): number {
    let m = 1;
    let sym = 0;
    for (let i = 0; i < bits; i++) {
      const b = this.bit(probs, offset + m);
      m = m * 2 + b;
      sym |= b << i;
    }
    return sym;
  }
}

const PROB_INIT = 1024;
const STATES = 12;
const POS_STATES_MAX = 16;
const END_POS_MODEL = 14;
const FULL_DISTANCES = 128;
const MATCH_MIN = 2;

class LenDecoder {
  // choice, choice2, low[16][8], mid[16][8], high[256]
  probs = new Uint16Array(2 + POS_STATES_MAX * 8 * 2 + 256);
  reset(): void {
    this.probs.fill(PROB_INIT);
  }
  decode(rc: RangeDecoder, posState: number): number {
    if (rc.bit(this.probs, 0) === 0) return rc.tree(this.probs, 2 + posState * 8, 3);
    if (rc.bit(this.probs, 1) === 0) return 8 + rc.tree(this.probs, 2 + POS_STATES_MAX * 8 + posState * 8, 3);
    return 16 + rc.tree(this.probs, 2 + POS_STATES_MAX * 16, 8);
  }
}

/** LZMA decoder state, kept across LZMA2 chunks. */
class Lzma {
  lc = 0;
  lp = 0;
  pb = 0;
  dictSize: number;
  literal = new Uint16Array(0x300);
  isMatch = new Uint16Array(STATES << 4);
  isRep = new Uint16Array(STATES);
  isRepG0 = new Uint16Array(STATES);
  isRepG1 = new Uint16Array(STATES);
  isRepG2 = new Uint16Array(STATES);
  isRep0Long = new Uint16Array(STATES << 4);
  posSlot = new Uint16Array(4 * 64);
  posSpecial = new Uint16Array(1 + FULL_DISTANCES - END_POS_MODEL);
  align = new Uint16Array(16);
  len = new LenDecoder();
  repLen = new LenDecoder();
  state = 0;
  reps = [0, 0, 0, 0];
  /** A match cut by the end of an LZMA2 chunk: bytes still to copy. */
  pending = 0;

  constructor(dictSize: number) {
    this.dictSize = dictSize;
  }

  setProps(props: number, at: number): void {
    if (props >= 9 * 5 * 5) throw corrupt(`LZMA properties byte ${props} is out of range`, at);
    this.lc = props % 9;
    props = Math.floor(props / 9);
    this.lp = props % 5;
    this.pb = Math.floor(props / 5);
    const size = 0x300 << (this.lc + this.lp);
    if (this.literal.length !== size) this.literal = new Uint16Array(size);
  }

  resetState(): void {
    for (const p of [this.literal, this.isMatch, this.isRep, this.isRepG0, this.isRepG1, this.isRepG2, this.isRep0Long, this.posSlot, this.posSpecial, this.align]) {
      p.fill(PROB_INIT);
    }
    this.len.reset();
    this.repLen.reset();
    this.state = 0;
    this.reps = [0, 0, 0, 0];
    this.pending = 0;
  }

  private copyMatch(out: Output, dist: number, len: number): void {
    const b = out.buf;
    let from = out.len - dist - 1;
    for (let i = 0; i < len; i++) b[out.len++] = b[from++]!;
  }

  /**
   * Decode until `limit` output bytes are produced (LZMA2 chunks, or .lzma
   * with a known size) or, with `limit` undefined, until the end marker.
   */
  decode(rc: RangeDecoder, out: Output, limit: number | undefined): void {
    const pbMask = (1 << this.pb) - 1;
    const lpMask = (1 << this.lp) - 1;
    const target = limit === undefined ? Infinity : out.len + limit;
    if (limit !== undefined) out.ensure(limit);
    if (this.pending) {
      const n = Math.min(this.pending, target - out.len);
      this.copyMatch(out, this.reps[0]!, n);
      this.pending -= n;
    }
    while (out.len < target) {
      if (limit === undefined) out.ensure(273);
      const pos = out.len;
      const posState = pos & pbMask;
      const s = this.state;
      if (rc.bit(this.isMatch, (s << 4) + posState) === 0) {
        // Literal.
        const prev = pos > out.dictStart ? out.buf[pos - 1]! : 0;
        const base = 0x300 * (((pos & lpMask) << this.lc) + (prev >> (8 - this.lc)));
        let sym = 1;
        if (s >= 7) {
          let match = out.buf[pos - this.reps[0]! - 1]!;
          do {
            const mb = (match >> 7) & 1;
            match <<= 1;
            const b = rc.bit(this.literal, base + ((1 + mb) << 8) + sym);
            sym = (sym << 1) | b;
            if (mb !== b) break;
          } while (sym < 0x100);
        }
        while (sym < 0x100) sym = (sym << 1) | rc.bit(this.literal, base + sym);
        out.buf[out.len++] = sym - 0x100;
        this.state = s < 4 ? 0 : s < 10 ? s - 3 : s - 6;
        continue;
      }
      let len: number;
      if (rc.bit(this.isRep, s) !== 0) {
        if (pos === out.dictStart) throw corrupt('a repeated match before any data', rc.pos);
        if (rc.bit(this.isRepG0, s) === 0) {
          if (rc.bit(this.isRep0Long, (s << 4) + posState) === 0) {
            if (this.reps[0]! >= pos - out.dictStart) throw corrupt(`a match distance of ${this.reps[0]! + 1} reaches before the dictionary`, rc.pos);
            this.state = s < 7 ? 9 : 11;
            out.buf[out.len] = out.buf[out.len - this.reps[0]! - 1]!;
            out.len++;
            continue;
          }
        } else {
          let dist: number;
          if (rc.bit(this.isRepG1, s) === 0) dist = this.reps[1]!;
          else {
            if (rc.bit(this.isRepG2, s) === 0) dist = this.reps[2]!;
            else {
              dist = this.reps[3]!;
              this.reps[3] = this.reps[2]!;
            }
            this.reps[2] = this.reps[1]!;
          }
          this.reps[1] = this.reps[0]!;
          this.reps[0] = dist;
        }
        len = this.repLen.decode(rc, posState);
        this.state = s < 7 ? 8 : 11;
      } else {
        this.reps[3] = this.reps[2]!;
        this.reps[2] = this.reps[1]!;
        this.reps[1] = this.reps[0]!;
        len = this.len.decode(rc, posState);
        this.state = s < 7 ? 7 : 10;
        const dist = this.distance(rc, len);
        if (dist === 0xffffffff) {
          // End marker: valid only where the stream may end here.
          if (limit !== undefined) throw corrupt('an end marker inside an LZMA2 chunk', rc.pos);
          return;
        }
        this.reps[0] = dist;
      }
      len += MATCH_MIN;
      const dist = this.reps[0]!;
      if (dist >= out.len - out.dictStart || dist >= this.dictSize) {
        throw corrupt(`a match distance of ${dist + 1} reaches before the dictionary (position ${out.len})`, rc.pos);
      }
      const n = Math.min(len, target - out.len);
      this.copyMatch(out, dist, n);
      this.pending = len - n;
    }
  }

  private distance(rc: RangeDecoder, len: number): number {
    const lenState = len < 3 ? len : 3;
    const slot = rc.tree(this.posSlot, lenState * 64, 6);
    if (slot < 4) return slot;
    const direct = (slot >> 1) - 1;
    let dist = (2 | (slot & 1)) * 2 ** direct;
    if (slot < END_POS_MODEL) dist += rc.reverseTree(this.posSpecial, dist - slot, direct);
    else dist += rc.direct(direct - 4) * 16 + rc.reverseTree(this.align, 0, 4);
    return dist >>> 0;
  }
}

function readVli(b: Uint8Array, pos: number, end: number): [number, number] {
  let value = 0;
  for (let i = 0; i < 9; i++) {
    if (pos >= end) throw corrupt('a variable-length integer runs past its header', pos);
    const byte = b[pos++]!;
    value += (byte & 0x7f) * 2 ** (7 * i);
    if (!(byte & 0x80)) {
      if (i > 0 && byte === 0) throw corrupt('a variable-length integer is not minimally encoded', pos - 1);
      return [value, pos];
    }
  }
  throw corrupt('a variable-length integer is longer than 9 bytes', pos);
}

/** Decode LZMA2 chunks from `pos` until the end byte; returns the position after it. */
function decodeLzma2(b: Uint8Array, pos: number, out: Output, dictSize: number): number {
  const lzma = new Lzma(dictSize);
  const rc = new RangeDecoder(b, pos, b.length);
  let needDictReset = true;
  let needProps = true;
  for (;;) {
    if (pos >= b.length) throw corrupt('LZMA2 data ends without an end chunk', pos);
    const control = b[pos]!;
    if (control === 0x00) return pos + 1;
    if (control === 0x01 || control === 0x02) {
      if (pos + 3 > b.length) throw corrupt('truncated LZMA2 chunk header', pos);
      if (control === 0x01) {
        out.dictStart = out.len;
        needDictReset = false;
      } else if (needDictReset) throw corrupt('the first LZMA2 chunk does not reset the dictionary', pos);
      const size = ((b[pos + 1]! << 8) | b[pos + 2]!) + 1;
      if (pos + 3 + size > b.length) throw corrupt('truncated uncompressed LZMA2 chunk', pos);
      out.ensure(size);
      out.buf.set(b.subarray(pos + 3, pos + 3 + size), out.len);
      out.len += size;
      pos += 3 + size;
      continue;
    }
    if (control < 0x80) throw corrupt(`invalid LZMA2 control byte 0x${control.toString(16)}`, pos);
    if (pos + 5 > b.length) throw corrupt('truncated LZMA2 chunk header', pos);
    const reset = (control >> 5) & 3;
    const unpacked = (control & 0x1f) * 65536 + ((b[pos + 1]! << 8) | b[pos + 2]!) + 1;
    const packed = ((b[pos + 3]! << 8) | b[pos + 4]!) + 1;
    pos += 5;
    if (reset === 3) {
      out.dictStart = out.len;
      needDictReset = false;
    } else if (needDictReset) throw corrupt('the first LZMA2 chunk does not reset the dictionary', pos - 5);
    if (reset >= 2) {
      if (pos >= b.length) throw corrupt('truncated LZMA2 chunk header', pos);
      lzma.setProps(b[pos]!, pos);
      if (lzma.lc + lzma.lp > 4) throw corrupt('LZMA2 properties with lc + lp > 4', pos);
      pos++;
      needProps = false;
    } else if (needProps) throw corrupt('an LZMA2 chunk without properties where they are required', pos - 5);
    if (reset >= 1) lzma.resetState();
    const chunkEnd = pos + packed;
    if (chunkEnd > b.length) throw corrupt('an LZMA2 chunk runs past the end of the data', pos);
    rc.pos = pos;
    rc.init(chunkEnd);
    lzma.decode(rc, out, unpacked);
    pos = chunkEnd;
  }
}

/** Decode a .xz file (one or more streams). */
export function decodeXz(b: Uint8Array, maxOutput: number): Uint8Array {
  const out = new Output(b.length * 4, maxOutput);
  let pos = 0;
  while (pos < b.length) {
    if (!XZ_MAGIC.every((m, i) => b[pos + i] === m)) {
      // Stream padding (zeros) may follow a stream; anything else ends the data.
      if (b[pos] === 0) {
        pos++;
        continue;
      }
      if (pos === 0) throw corrupt('no xz magic', 0);
      break;
    }
    if (pos + 12 > b.length) throw corrupt('truncated stream header', pos);
    const checkType = b[pos + 7]! & 0x0f;
    if (b[pos + 6] !== 0 || b[pos + 7]! & 0xf0) throw corrupt('unsupported stream flags', pos + 6);
    const checkSize = CHECK_SIZES[checkType]!;
    pos += 12;
    // Blocks until the index.
    for (;;) {
      if (pos >= b.length) throw corrupt('the stream ends before its index', pos);
      const blockStart = pos;
      const hsize = b[pos]!;
      if (hsize === 0) break; // index indicator
      const headerEnd = pos + (hsize + 1) * 4;
      if (headerEnd > b.length) throw corrupt('truncated block header', pos);
      const flags = b[pos + 1]!;
      if (flags & 0x3c) throw corrupt(`unsupported block flags 0x${flags.toString(16)}`, pos + 1);
      let p = pos + 2;
      const fieldsEnd = headerEnd - 4;
      if (flags & 0x40) [, p] = readVli(b, p, fieldsEnd);
      if (flags & 0x80) [, p] = readVli(b, p, fieldsEnd);
      const filters = (flags & 3) + 1;
      let dictSize = 0;
      for (let f = 0; f < filters; f++) {
        let id: number;
        let psize: number;
        [id, p] = readVli(b, p, fieldsEnd);
        [psize, p] = readVli(b, p, fieldsEnd);
        if (filters !== 1 || id !== FILTER_LZMA2) {
          throw new ImageError('unsupported', `xz: filter 0x${id.toString(16)} (of ${filters}) is not supported, only a lone LZMA2`, {
            format: 'xz',
            offset: p,
            value: id,
          });
        }
        if (psize !== 1 || p + 1 > fieldsEnd) throw corrupt('LZMA2 filter properties are not 1 byte', p);
        const d = b[p]!;
        if (d > 40) throw corrupt(`LZMA2 dictionary size byte ${d} is above 40`, p);
        dictSize = d === 40 ? 0xffffffff : (2 | (d & 1)) * 2 ** ((d >> 1) + 11);
        p += 1;
      }
      pos = decodeLzma2(b, headerEnd, out, dictSize);
      while ((pos - blockStart) % 4) {
        if (b[pos] !== 0) throw corrupt('non-zero block padding', pos);
        pos++;
      }
      pos += checkSize;
    }
    // Skip the index and the footer: the footer's backward size says how long the index is.
    const footerSearch = findFooter(b, pos);
    if (footerSearch < 0) break;
    pos = footerSearch + 12;
  }
  return out.result();
}

/** The stream footer after an index starting at `indexPos` (magic 'YZ' at its end), or -1. */
function findFooter(b: Uint8Array, indexPos: number): number {
  // Index: indicator, number of records (VLI), records (2 VLIs each), padding, CRC32.
  let p = indexPos + 1;
  let records: number;
  [records, p] = readVli(b, p, b.length);
  if (records > b.length) throw corrupt('index claims more records than the file can hold', indexPos);
  for (let i = 0; i < records; i++) {
    [, p] = readVli(b, p, b.length);
    [, p] = readVli(b, p, b.length);
  }
  while ((p - indexPos) % 4) p++;
  p += 4;
  if (p + 12 > b.length || b[p + 10] !== 0x59 || b[p + 11] !== 0x5a) return -1;
  return p;
}

/** Decode a legacy .lzma ("LZMA alone") file. */
export function decodeLzmaAlone(b: Uint8Array, maxOutput: number): Uint8Array {
  if (b.length < 13) throw corrupt('truncated .lzma header', 0);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const dictSize = Math.max(dv.getUint32(1, true), 4096);
  const lo = dv.getUint32(5, true);
  const hi = dv.getUint32(9, true);
  const known = !(lo === 0xffffffff && hi === 0xffffffff);
  const size = hi * 2 ** 32 + lo;
  if (known && size > maxOutput) {
    throw new ImageError('unsupported', `lzma: the data says it decompresses to ${size} bytes, more than ${maxOutput}`, { format: 'lzma', offset: 5, value: size });
  }
  const out = new Output(known ? size : b.length * 4, maxOutput);
  const lzma = new Lzma(dictSize);
  lzma.setProps(b[0]!, 0);
  lzma.resetState();
  const rc = new RangeDecoder(b, 13, b.length);
  rc.init(b.length);
  lzma.decode(rc, out, known ? size : undefined);
  return out.result();
}
