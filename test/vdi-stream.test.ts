/**
 * VDI written front to back to a pipe: the streamed bytes, saved, must pass
 * `qemu-img check`, compare identical to the source and have the layout the
 * seekable writer gives (VirtualBox offsets, zero blocks unallocated).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { closeSync, ftruncateSync, openSync, readSync, statSync, writeSync } from 'node:fs';
import { openImage } from '../src/formats/index.js';
import { vdi } from '../src/formats/vdi/index.js';
import { parseHeader } from '../src/formats/vdi/header.js';
import { writeToStdout } from '../src/convert/stream.js';
import { pattern } from './helpers/devices.js';
import { must, qemuCheck, qemuCompare, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-vdi-stream-');
afterAll(() => t.cleanup());
const MiB = 1 << 20;
const GiB = 1 << 30;

function makeRaw(name: string, size: number, data: Array<[number, number, number]>): string {
  const p = t.path(`${name}.raw`);
  const fd = openSync(p, 'w');
  ftruncateSync(fd, size);
  for (const [off, len, seed] of data) writeSync(fd, seed === 0 ? new Uint8Array(len) : pattern(len, seed), 0, len, off);
  closeSync(fd);
  return p;
}

function head(path: string, n = 472): Uint8Array {
  const fd = openSync(path, 'r');
  const b = new Uint8Array(n);
  readSync(fd, b, 0, n, 0);
  closeSync(fd);
  return b;
}

/** Stream `src` (opened by our readers) as VDI into `dst`, writing chunks strictly in order. */
async function streamTo(src: string, dst: string, options: Record<string, string> = {}): Promise<void> {
  const opened = await openImage(src, src.endsWith('.raw') ? { format: 'raw' } : {});
  const fd = openSync(dst, 'w');
  try {
    let pos = 0;
    for await (const chunk of vdi.stream!(opened.image, { size: opened.image.size, options })) {
      writeSync(fd, chunk, 0, chunk.length, pos);
      pos += chunk.length;
    }
  } finally {
    closeSync(fd);
    await opened.image.close();
  }
}

function expectClean(img: string): void {
  const c = qemuCheck(img, 'vdi');
  expect(c.status, c.text).toBe(0);
  expect(c.json?.['check-errors'], c.text).toBe(0);
  expect(c.text).not.toMatch(/ERROR:/);
}

const CASES: Array<[string, number, Array<[number, number, number]>]> = [
  ['empty', 3 * MiB, []],
  [
    'sparse-both-ends',
    64 * MiB + 1536,
    [
      [0, 300_000, 1],
      [64 * MiB + 1536 - 100_000, 100_000, 2],
      [10 * MiB, MiB, 0], // written zeros: a data extent in the file that must not be allocated
    ],
  ],
  ['full', 3 * MiB + 4096, [[0, 3 * MiB + 4096, 3]]],
  ['odd-size', 3 * MiB + 100, [[2 * MiB + 1000, MiB - 900, 7]]],
];

describe.each(CASES)('VDI stream of %s', (name, size, data) => {
  for (const variant of ['dynamic', 'static'] as const) {
    it(`gives a ${variant} image that qemu-img checks clean and finds identical to the source`, async () => {
      const src = makeRaw(`${name}-${variant}`, size, data);
      const img = t.path(`${name}-${variant}.vdi`);
      await streamTo(src, img, variant === 'static' ? { static: 'on' } : {});
      expectClean(img);
      const r = qemuCompare(src, img, 'raw', 'vdi');
      expect(r.status, r.stdout + r.stderr).toBe(0);
      const h = parseHeader(head(img));
      expect(h.imageType).toBe(variant === 'static' ? 2 : 1);
      expect([h.offsetBmap, h.headerSize]).toEqual([MiB, 400]);
      expect(statSync(img).size).toBe(h.offsetData + h.blocksAllocated * MiB);
    });
  }
});

describe('VDI stream layout', () => {
  it('allocates exactly the blocks holding non-zero data, in guest order', async () => {
    const src = makeRaw('order', 16 * MiB, [
      [5 * MiB + 7, 10, 11],
      [MiB, 4096, 12],
      [9 * MiB, MiB, 0],
      [15 * MiB + MiB - 1, 1, 13],
    ]);
    const img = t.path('order.vdi');
    await streamTo(src, img);
    const h = parseHeader(head(img));
    expect(h.blocksAllocated).toBe(3);
    const map = new DataView(head(img, MiB + 64).buffer, MiB, 64);
    const entries = Array.from({ length: 16 }, (_, i) => map.getUint32(4 * i, true));
    expect(entries).toEqual([
      0xffffffff, 0, 0xffffffff, 0xffffffff, 0xffffffff, 1, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
      0xffffffff, 0xffffffff, 0xffffffff, 2,
    ]);
    expect(qemuCompare(src, img, 'raw', 'vdi').status).toBe(0);
  });

  it('streams a disk above 4 GiB with data beyond 4 GiB, reading only the allocated data', async () => {
    const raw = makeRaw('big', 4 * GiB + 4 * MiB, [
      [4 * GiB + 12_345, 70_000, 21],
      [0, 512, 22],
    ]);
    const q = t.path('big.qcow');
    must('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow', raw, q]);
    const img = t.path('big.vdi');
    await streamTo(q, img);
    expectClean(img);
    expect(qemuCompare(raw, img, 'raw', 'vdi').status).toBe(0);
    expect(parseHeader(head(img)).blocksAllocated).toBe(2);
  });

  it('goes through a real pipe with back-pressure', async () => {
    const src = makeRaw('pipe', 32 * MiB, [
      [0, 8 * MiB, 31],
      [20 * MiB, 5 * MiB, 32],
    ]);
    const img = t.path('pipe.vdi');
    const child = spawn('sh', ['-c', `sleep 0.2; cat > '${img}'`], { stdio: ['pipe', 'inherit', 'inherit'] });
    const done = new Promise<number>((res) => child.on('close', (code) => res(code ?? -1)));
    const opened = await openImage(src, { format: 'raw' });
    const written = await writeToStdout(opened.image, vdi, { size: opened.image.size, options: {} }, child.stdin);
    child.stdin.end();
    await opened.image.close();
    expect(await done).toBe(0);
    expect(statSync(img).size).toBe(written);
    expectClean(img);
    expect(qemuCompare(src, img, 'raw', 'vdi').status).toBe(0);
  });

  it('refuses -c and unknown options before emitting anything', async () => {
    const src = makeRaw('opts', MiB, []);
    const opened = await openImage(src, { format: 'raw' });
    const first = async (o: Parameters<NonNullable<typeof vdi.stream>>[1]) => {
      for await (const _ of vdi.stream!(opened.image, o)) return 'emitted';
      return 'nothing';
    };
    await expect(first({ size: MiB, options: {}, compress: true })).rejects.toMatchObject({ kind: 'usage' });
    await expect(first({ size: MiB, options: { preallocation: 'full' } })).rejects.toMatchObject({ kind: 'usage' });
    await opened.image.close();
  });
});
