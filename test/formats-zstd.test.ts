/**
 * zstd-compressed qcow2 clusters: decoded by libzstd with qemu's rules, and
 * written so that qemu-img reads them.
 *
 * The differential test mutates bytes inside the compressed clusters of an
 * image qemu-img wrote, at fixed positions, and lets qemu-img judge each
 * mutant: where `qemu-img convert` fails, imgtool must fail with a typed
 * 'corrupt' error naming the cluster; where it succeeds, imgtool must read
 * exactly the bytes qemu-img wrote out.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync, statSync } from 'node:fs';
import { ImageError } from '../src/core/errors.js';
import { createImage, openImage } from '../src/formats/index.js';
import { imgtool, qemuCheck, qemuCompare, qemuInfo, run, tempDir } from './helpers/peers.js';
import { qemuImg } from './qcow2-helpers.js';

const t = tempDir();
afterAll(() => t.cleanup());

/** Compressible, varied text: what a real disk's compressed clusters hold. */
function textData(size: number, seed: number): Buffer {
  const words = ['disk', 'image', 'cluster', 'qemu', 'zstd', 'frame', 'block', 'guest', 'host', 'table', 'entry', 'sector'];
  let x = seed >>> 0;
  const out: string[] = [];
  let len = 0;
  for (let i = 0; len < size; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const line = `${i} ${words[x % 12]} ${words[(x >>> 8) % 12]} ${(x >>> 16).toString(16)}\n`;
    out.push(line);
    len += line.length;
  }
  return Buffer.from(out.join('')).subarray(0, size);
}

interface Compressed {
  guest: number;
  host: number;
  length: number;
}

/** The compressed clusters of a qcow2 image (standard L2 entries), from its own tables. */
function compressedClusters(img: Buffer): Compressed[] {
  const bits = img.readUInt32BE(20);
  const cs = 2 ** bits;
  const l1Size = img.readUInt32BE(36);
  const l1 = Number(img.readBigUInt64BE(40));
  const x = 62n - BigInt(bits - 8);
  const out: Compressed[] = [];
  for (let i = 0; i < l1Size; i++) {
    const l2 = Number(img.readBigUInt64BE(l1 + i * 8) & 0x00fffffffffffe00n);
    if (!l2) continue;
    for (let j = 0; j < cs / 8; j++) {
      const e = img.readBigUInt64BE(l2 + j * 8);
      if (!(e & (1n << 62n))) continue;
      const host = Number(e & ((1n << x) - 1n));
      const sectors = Number((e >> x) & ((1n << BigInt(bits - 8)) - 1n));
      out.push({ guest: (i * (cs / 8) + j) * cs, host, length: (sectors + 1) * 512 - (host % 512) });
    }
  }
  return out;
}

/**
 * The image with guest cluster 0 replaced by compressed data `z`: appended
 * at the end of the file (sector aligned) and pointed at by L2 entry 0, so
 * no other cluster's stored bytes change.
 */
function withFirstCluster(img: Buffer, z: Buffer): Buffer {
  const bits = img.readUInt32BE(20);
  const l2 = Number(img.readBigUInt64BE(Number(img.readBigUInt64BE(40))) & 0x00fffffffffffe00n);
  const at = Math.ceil(img.length / 512) * 512;
  const out = Buffer.alloc(at + Math.ceil(z.length / 512) * 512);
  img.copy(out);
  z.copy(out, at);
  const x = 62n - BigInt(bits - 8);
  const sectors = BigInt(Math.ceil(z.length / 512) - 1);
  out.writeBigUInt64BE((1n << 62n) | (sectors << x) | BigInt(at), l2);
  return out;
}

async function ourRead(path: string): Promise<Buffer> {
  const opened = await openImage(path);
  try {
    const buf = Buffer.alloc(opened.image.size);
    await opened.image.read(buf, 0);
    return buf;
  } finally {
    await opened.image.close();
  }
}

describe('qcow2 zstd clusters against qemu-img', () => {
  let orig: Buffer;
  let clusters: Compressed[];
  const SIZE = 256 << 10;

  beforeAll(() => {
    const raw = t.path('text.raw');
    writeFileSync(raw, textData(SIZE, 5));
    const img = t.path('text.qcow2');
    qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd,cluster_size=16k', raw, img]);
    orig = readFileSync(img);
    clusters = compressedClusters(orig);
  });

  it('reads the unmutated image exactly as qemu-img does', async () => {
    expect(clusters.length).toBe(SIZE / 16384);
    const raw = t.path('text-qemu.raw');
    qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', t.path('text.qcow2'), raw]);
    expect(Buffer.compare(await ourRead(t.path('text.qcow2')), readFileSync(raw))).toBe(0);
  });

  it('fails exactly where qemu-img fails, and reads identical bytes where it succeeds', async () => {
    const mutant = t.path('mutant.qcow2');
    const qraw = t.path('mutant.raw');
    let rejected = 0;
    let accepted = 0;
    let stricter = 0;
    const undefinedGarbage: string[] = [];
    const original = readFileSync(t.path('text.raw'));
    const disagreements: string[] = [];
    // Positions: the frame header, the first block header, and spread through the data; three flips each.
    for (const c of clusters.slice(0, 6)) {
      const frameLen = c.length;
      const positions = new Set<number>([0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
      for (let k = 1; k < 12; k++) positions.add(Math.floor((frameLen * k) / 12));
      for (const p of positions) {
        for (const flip of [0x01, 0x40, 0xff]) {
          if (p >= frameLen) continue;
          const bad = Buffer.from(orig);
          bad[c.host + p]! ^= flip;
          writeFileSync(mutant, bad);
          const q = run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', mutant, qraw]);
          const ours = await ourRead(mutant).catch((e: unknown) => e);
          const label = `cluster at guest ${c.guest}, byte ${p} ^ 0x${flip.toString(16)}`;
          if (q.status !== 0) {
            rejected++;
            if (!(ours instanceof ImageError) || ours.kind !== 'corrupt') {
              disagreements.push(`${label}: qemu-img fails (${q.stderr.trim()}), imgtool ${ours instanceof Error ? ours.message : 'reads it'}`);
            } else if (!/guest offset \d+ \(host offset \d+\)/.test(ours.message)) {
              disagreements.push(`${label}: message does not name the cluster: ${ours.message}`);
            }
          } else {
            accepted++;
            const theirs = readFileSync(qraw);
            if (ours instanceof Buffer && Buffer.compare(ours, theirs) === 0) continue;
            if (Buffer.compare(theirs, original) === 0) {
              // The mutation does not change what qemu reads: imgtool must read the same.
              disagreements.push(`${label}: qemu-img reads the original data, imgtool ${ours instanceof Error ? `fails: ${ours.message}` : 'reads different bytes'}`);
            } else if (ours instanceof ImageError && ours.kind === 'corrupt') {
              stricter++; // the host's libzstd decoded corrupt data without noticing; ours noticed
            } else {
              undefinedGarbage.push(`${label}: ${ours instanceof Error ? ours.message : 'different garbage'}`);
            }
          }
        }
      }
    }
    expect(disagreements).toEqual([]);
    // Where the host's libzstd decodes a corrupt frame without noticing (zstd
    // frames without a checksum carry no integrity check), what it produces
    // is not defined by the format and differs between libzstd builds (the
    // host's x86-64 assembly decoders, our WebAssembly build of the C ones).
    // Ours may then notice the corruption (a typed error) or produce other
    // bytes than qemu does; neither is the image's data. Bounded, and listed
    // here when it happens.
    expect(undefinedGarbage.length, undefinedGarbage.join('\n')).toBeLessThanOrEqual(Math.ceil(accepted / 20));
    expect(stricter + undefinedGarbage.length).toBeLessThan(accepted);
    // Both outcomes were exercised.
    expect(rejected).toBeGreaterThan(50);
    expect(accepted).toBeGreaterThan(0);
  }, 300_000);

  it('follows qemu on frame sizes: several frames, no content size, too much or too little', async () => {
    const c = clusters[0]!;
    const text = readFileSync(t.path('text.raw'));
    /** A zstd frame (made by the zstd CLI, the host's libzstd) of text[from, to). */
    const frame = (from: number, to: number, flags: string[] = []): Buffer => {
      const f = t.path(`frame-${from}-${to}`);
      writeFileSync(f, text.subarray(from, to));
      run('zstd', ['-q', '-f', '--no-check', ...flags, f, '-o', `${f}.zst`]);
      return readFileSync(`${f}.zst`);
    };
    const cases: Array<[string, Buffer, boolean]> = [
      ['one frame without a content size', frame(0, 16384, ['--no-content-size']), true],
      ['two frames of 8 KiB', Buffer.concat([frame(0, 8192), frame(8192, 16384)]), true],
      ['a skippable frame, then the data', Buffer.concat([Buffer.from('502a4d1804000000abcdabcd', 'hex'), frame(0, 16384)]), true],
      ['a frame of 16 KiB + 1', frame(0, 16385), false],
      ['a frame of 16 KiB + 1 without a content size', frame(0, 16385, ['--no-content-size']), false],
      ['a frame of 16 KiB - 1 and nothing after it', Buffer.concat([frame(0, 16383), Buffer.alloc(16)]), false],
    ];
    for (const [what, z, ok] of cases) {
      const mutant = t.path('sizes.qcow2');
      writeFileSync(mutant, withFirstCluster(orig, z));
      const q = run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', mutant, t.path('sizes.raw')]);
      expect(q.status === 0, `${what}: qemu-img ${q.stderr}`).toBe(ok);
      const ours = await ourRead(mutant).catch((x: unknown) => x);
      if (ok) {
        expect(ours instanceof Buffer && Buffer.compare(ours, readFileSync(t.path('sizes.raw'))) === 0, what).toBe(true);
      } else {
        expect(ours, what).toBeInstanceOf(ImageError);
        expect((ours as ImageError).kind).toBe('corrupt');
        expect((ours as ImageError).message).toMatch(new RegExp(`guest offset ${c.guest} \\(host offset \\d+\\)`));
      }
    }
  });
});

describe('writing zstd-compressed qcow2', () => {
  it('convert -c -o compression_type=zstd writes an image qemu-img checks clean and finds identical', () => {
    const raw = t.path('w.raw');
    const data = Buffer.alloc(4 << 20);
    textData(3 << 20, 9).copy(data, 0);
    writeFileSync(raw, data);
    const out = t.path('w.qcow2');
    const r = imgtool(['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', raw, out]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const info = qemuInfo(out) as { 'format-specific': { data: Record<string, unknown> } };
    expect(info['format-specific'].data['compression-type']).toBe('zstd');
    const c = qemuCheck(out, 'qcow2');
    expect(c.status).toBe(0);
    expect(c.json?.['check-errors'] ?? 0).toBe(0);
    expect(c.json?.['leaks'] ?? 0).toBe(0);
    expect(qemuCompare(raw, out, 'raw', 'qcow2').status).toBe(0);
    // The clusters really are compressed (zstd frames in the L2 entries), and the file is small.
    const img = readFileSync(out);
    const comp = compressedClusters(img);
    expect(comp.length).toBeGreaterThan(20);
    expect(img.readUInt32LE(comp[0]!.host)).toBe(0xfd2fb528);
    expect(statSync(out).size).toBeLessThan(2 << 20);
  });

  it('create with compression_type=zstd and compress writes zstd clusters qemu-img reads; compat=0.10 refuses it', async () => {
    const out = t.path('c.qcow2');
    const data = textData(1 << 20, 3);
    const made = await createImage(out, 'qcow2', { size: 1 << 20, options: { compression_type: 'zstd' }, compress: true });
    await made.image.write(data, 0);
    await made.image.close();
    await made.output.commit();
    const info = qemuInfo(out) as { 'format-specific': { data: Record<string, unknown> } };
    expect(info['format-specific'].data['compression-type']).toBe('zstd');
    expect(qemuCheck(out, 'qcow2').status).toBe(0);
    const raw = t.path('c.raw');
    writeFileSync(raw, data);
    expect(qemuCompare(raw, out, 'raw', 'qcow2').status).toBe(0);
    expect(compressedClusters(readFileSync(out)).length).toBe(16);
    const v2 = await createImage(t.path('v2.qcow2'), 'qcow2', { size: 1 << 20, options: { compat: '0.10', compression_type: 'zstd' } }).catch((e: unknown) => e);
    expect((v2 as ImageError).kind).toBe('usage');
  });
});
