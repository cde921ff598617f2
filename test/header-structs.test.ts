/**
 * Header structures declared with defineStruct (qcow, qcow2, VDI, VMDK):
 * decode(encode(x)) == x, and encode(decode(bytes)) == bytes on headers that
 * qemu-img 7.2 created (the peer writes the bytes; our decoder and encoder
 * must agree with them field for field).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import type { Struct, FieldList } from '../src/formats/engine/struct.js';
import { QcowHeaderStruct, encodeHeader as encodeQcow, parseHeader as parseQcow, HEADER_SIZE as QCOW_HEADER_SIZE } from '../src/formats/qcow/header.js';
import {
  ExtensionHeader,
  FeatureNameEntry,
  HeaderV2,
  HeaderV3,
  HeaderV3Tail,
  encodeHeader as encodeQcow2,
  readHeader as readQcow2,
} from '../src/formats/qcow2/header.js';
import { HEADER_AREA, Header1Plus, PRE_HEADER_SIZE, PreHeader, encodeHeader as encodeVdi, parseHeader as parseVdi } from '../src/formats/vdi/header.js';
import { GrainMarker, MetaMarker, SparseHeader } from '../src/formats/vmdk/header.js';
import { FileDevice } from '../src/core/file.js';
import { must, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-structs-');
afterAll(() => t.cleanup());

function create(name: string, fmt: string, size: string, opts: string[] = []): Uint8Array {
  const p = t.path(name);
  must('qemu-img', ['create', '-q', '-f', fmt, ...opts, p, size]);
  return new Uint8Array(readFileSync(p));
}

/** encode(decode(bytes)) == bytes, and decode(encode(decoded)) == decoded. */
function roundTrip<F extends FieldList>(s: Struct<F>, bytes: Uint8Array): ReturnType<Struct<F>['parse']> {
  const v = s.parse(bytes);
  expect(Buffer.from(s.encode(v))).toEqual(Buffer.from(bytes.subarray(0, s.size)));
  expect(s.parse(s.encode(v))).toEqual(v);
  return v;
}

describe('layout tables', () => {
  it('have the sizes of the specifications', () => {
    expect(QcowHeaderStruct.size).toBe(48);
    expect(HeaderV2.size).toBe(72);
    expect(HeaderV3.size).toBe(104);
    expect(HeaderV3Tail.size).toBe(8);
    expect(ExtensionHeader.size).toBe(8);
    expect(FeatureNameEntry.size).toBe(48);
    expect(PreHeader.size).toBe(72);
    expect(Header1Plus.size).toBe(400);
    expect(Header1Plus.offsetOf('disk_size')).toBe(368 - 72);
    expect(SparseHeader.size).toBe(512);
    expect(GrainMarker.size).toBe(12);
    expect(MetaMarker.size).toBe(512);
  });

  it('decode 64-bit fields as BigInt, past 2^53 too', () => {
    const b = new Uint8Array(48);
    b.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe], 24);
    const v = roundTrip(QcowHeaderStruct, b);
    expect(v.size).toBe(0xfffffffffffffffen);
    const h = parseQcow(b);
    expect(h.size).toBe(0xfffffffffffffffen);
    expect(Buffer.from(encodeQcow(h))).toEqual(Buffer.from(b));
  });
});

describe('qcow (version 1)', () => {
  for (const [name, opts] of [
    ['plain', []],
    ['backing', ['-b', 'base.raw', '-F', 'raw']],
  ] as const) {
    it(`round-trips the header qemu-img creates (${name})`, () => {
      if (name === 'backing') must('qemu-img', ['create', '-q', '-f', 'raw', t.path('base.raw'), '3M']);
      const file = create(`v1-${name}.qcow`, 'qcow', '3000M', [...opts]);
      const v = roundTrip(QcowHeaderStruct, file);
      expect(v.version).toBe(1);
      expect(v.size).toBe(3000n << 20n);
      const h = parseQcow(file);
      expect(Buffer.from(encodeQcow(h))).toEqual(Buffer.from(file.subarray(0, QCOW_HEADER_SIZE)));
      expect(parseQcow(encodeQcow(h))).toEqual(h);
      if (name === 'backing') {
        const off = Number(h.backingFileOffset);
        expect(Buffer.from(file.subarray(off, off + h.backingFileSize)).toString()).toBe('base.raw');
      }
    });
  }
});

describe('qcow2', () => {
  for (const [name, opts] of [
    ['v2', ['-o', 'compat=0.10']],
    ['v3', ['-o', 'compat=1.1,lazy_refcounts=on,refcount_bits=64']],
    ['v3 zstd', ['-o', 'compression_type=zstd,cluster_size=2M']],
    ['v3 backing', ['-b', 'base.raw', '-F', 'raw']],
  ] as const) {
    it(`round-trips the fixed header and its extension records qemu-img creates (${name})`, async () => {
      if (name === 'v3 backing') must('qemu-img', ['create', '-q', '-f', 'raw', t.path('base.raw'), '3M']);
      const file = create(`${name.replace(' ', '-')}.qcow2`, 'qcow2', '5G', [...opts]);
      const v2 = roundTrip(HeaderV2, file);
      expect(v2.size).toBe(5n << 30n);
      const dev = await FileDevice.open(t.path(`${name.replace(' ', '-')}.qcow2`));
      const h = await readQcow2(dev);
      await dev.close();
      expect(h.clusterBits).toBe(v2.cluster_bits);
      if (name === 'v2') {
        expect(v2.version).toBe(2);
        return;
      }
      const v3 = roundTrip(HeaderV3, file);
      expect(v3.header_length).toBe(112);
      expect(h.headerLength).toBe(112);
      roundTrip(HeaderV3Tail, file.subarray(104));
      expect(h.compressionType).toBe(name === 'v3 zstd' ? 1 : 0);
      if (name.startsWith('v3 ')) expect(h.compatible).toBe(0);
      else expect(h.compatible).toBe(1); // lazy refcounts
      // Every extension record qemu wrote, up to the end marker.
      const types: number[] = [];
      for (let pos = v3.header_length; ; ) {
        const e = roundTrip(ExtensionHeader, file.subarray(pos));
        if (e.type === 0) break;
        types.push(e.type);
        if (e.type === 0x6803f857) {
          for (let i = 0; i < e.length; i += 48) roundTrip(FeatureNameEntry, file.subarray(pos + 8 + i));
        }
        pos += 8 + Math.ceil(e.length / 8) * 8;
      }
      expect(types).toContain(0x6803f857);
      if (name === 'v3 backing') {
        expect(types).toContain(0xe2792aca);
        expect(h.backingFormat).toBe('raw');
        expect(h.backingFile).toBe('base.raw');
      }
      expect(h.featureNames.find((f) => f.type === 1 && f.bit === 0)?.name).toBe('lazy refcounts');
    });
  }

  it('encodeHeader writes what readHeader reads back', async () => {
    const file = create('enc.qcow2', 'qcow2', '1G', ['-b', 'base.raw', '-F', 'raw']);
    const dev = await FileDevice.open(t.path('enc.qcow2'));
    const h = await readQcow2(dev);
    await dev.close();
    const out = encodeQcow2({ ...h, incompatibleHigh: 0x80000000, compatibleHigh: 7 });
    const v3 = roundTrip(HeaderV3, out);
    expect(v3.incompatible_features).toBe(0x8000000000000000n | BigInt(h.incompatible));
    expect(v3.compatible_features).toBe((7n << 32n) | BigInt(h.compatible));
    // The fixed fields qemu wrote, other than those the extension area decides.
    const theirs = HeaderV3.parse(file);
    expect({ ...v3, incompatible_features: 0n, compatible_features: 0n, backing_file_offset: 0n }).toEqual({
      ...theirs,
      incompatible_features: 0n,
      compatible_features: 0n,
      backing_file_offset: 0n,
    });
  });
});

describe('VDI', () => {
  for (const [name, opts] of [
    ['dynamic', []],
    ['static', ['-o', 'static=on']],
  ] as const) {
    it(`round-trips the pre-header and header qemu-img creates (${name})`, () => {
      const file = create(`${name}.vdi`, 'vdi', '64M', [...opts]);
      const pre = roundTrip(PreHeader, file);
      expect(pre.signature).toBe(0xbeda107f);
      const v = roundTrip(Header1Plus, file.subarray(PRE_HEADER_SIZE));
      expect(v.disk_size).toBe(64n << 20n);
      expect(v.image_type).toBe(name === 'static' ? 2 : 1);
      const h = parseVdi(file);
      const len = PRE_HEADER_SIZE + h.headerSize;
      expect(Buffer.from(encodeVdi(h))).toEqual(Buffer.from(file.subarray(0, len)));
      expect(parseVdi(encodeVdi(h))).toEqual(h);
      expect(len).toBeLessThanOrEqual(HEADER_AREA);
    });
  }
});

describe('VMDK', () => {
  it('round-trips the sparse header qemu-img creates', () => {
    for (const sub of ['monolithicSparse', 'streamOptimized']) {
      const file = create(`${sub}.vmdk`, 'vmdk', '100M', ['-o', `subformat=${sub}`]);
      const v = roundTrip(SparseHeader, file);
      expect(v.capacity).toBe((100n << 20n) / 512n);
    }
  });
});
