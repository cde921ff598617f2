/**
 * The swap signature writer: byte-identical to mkswap's header, read back by
 * swaplabel and blkid, on whole images and on partitions of qcow2 images.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { FileDevice } from '../src/core/file.js';
import { MemoryDevice } from '../src/core/memory.js';
import { ImageError } from '../src/core/errors.js';
import { encodeSwapHeader, writeSwap } from '../src/fs/swap.js';
import { detectContent } from '../src/fs/detect.js';
import { must, qemuCheck, sha256File, tempDir } from './helpers/peers.js';
import { blkid, pokeFile, readRange, runCli, sfdiskWrite, sparseFile } from './partition-helpers.js';

const t = tempDir('imgtool-swap-');
afterAll(() => t.cleanup());

const MiB = 1 << 20;
const UUID = '3f1c2a9e-8b7d-4e6f-a5c4-0123456789ab';

function swaplabel(file: string): { label?: string; uuid?: string } {
  const out = must('swaplabel', [file]);
  return { label: /^LABEL:\s*(.*)$/m.exec(out)?.[1], uuid: /^UUID:\s*(.*)$/m.exec(out)?.[1] };
}

describe('encodeSwapHeader', () => {
  for (const page of [4096, 65536]) {
    it(`writes the same first page as mkswap (page size ${page})`, () => {
      const f = sparseFile(t.path(`mk-${page}.img`), 16 * MiB + 1234);
      must('mkswap', ['-q', '-p', String(page), '-U', UUID, '-L', 'mkswap-lbl', f]);
      const ours = encodeSwapHeader(16 * MiB + 1234, { uuid: UUID, label: 'mkswap-lbl', pageSize: page });
      expect(Buffer.from(ours).equals(readRange(f, 0, page))).toBe(true);
    });
  }

  it('refuses areas under 10 pages, labels over 15 bytes, bad UUIDs and page sizes', () => {
    expect(() => encodeSwapHeader(40959)).toThrow(/at least 10 pages/);
    expect(encodeSwapHeader(40960).length).toBe(4096);
    expect(() => encodeSwapHeader(MiB, { label: '1234567890123456' })).toThrow(/at most 15/);
    expect(() => encodeSwapHeader(MiB, { uuid: 'not-a-uuid' })).toThrow(ImageError);
    expect(() => encodeSwapHeader(MiB, { pageSize: 2048 })).toThrow(/page size/);
  });
});

describe('writeSwap', () => {
  it('makes a whole image that swaplabel and blkid read with our UUID and label', async () => {
    const f = sparseFile(t.path('whole.img'), 8 * MiB);
    const dev = await FileDevice.open(f, { writable: true });
    const r = await writeSwap(dev, { label: 'imgswap', uuid: UUID });
    await dev.close();
    expect(r.uuid).toBe(UUID);
    expect(swaplabel(f)).toEqual({ label: 'imgswap', uuid: UUID });
    const b = blkid(f);
    expect([b.TYPE, b.VERSION, b.UUID, b.LABEL]).toEqual(['swap', '1', UUID, 'imgswap']);
  });

  it('chooses a random UUID when none is given, and writes only the first page on a fresh device', async () => {
    const dev = new MemoryDevice(4 * MiB);
    const a = await writeSwap(dev);
    expect(a.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const allocated = [];
    for (let off = 0; off < dev.size; off += 65536) if ((await dev.status(off, 65536)).kind === 'data') allocated.push(off);
    expect(allocated).toEqual([0]);
    expect((await detectContent(dev)).uuid).toBe(a.uuid);
    expect((await writeSwap(new MemoryDevice(4 * MiB))).uuid).not.toBe(a.uuid);
  });

  it('erases a stale btrfs signature further in, so blkid sees only swap', async () => {
    const f = sparseFile(t.path('stale.img'), 8 * MiB);
    pokeFile(f, 65536 + 64, Buffer.from('_BHRfS_M'));
    const dev = await FileDevice.open(f, { writable: true });
    await writeSwap(dev, { uuid: UUID });
    await dev.close();
    expect(readRange(f, 65536 + 64, 8).equals(Buffer.alloc(8))).toBe(true);
    expect(blkid(f).TYPE).toBe('swap');
  });
});

describe('part mkswap', () => {
  it('writes swap on partition 2 of a qcow2 image; swaplabel and blkid read it', async () => {
    const raw = sparseFile(t.path('disk.img'), 32 * MiB);
    sfdiskWrite(raw, 'label: dos\n,8M,83\n,16M,82\n');
    const q = t.path('disk.qcow2');
    must('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, q]);
    const r = await runCli(['part', 'mkswap', q, '--partition', '2', '--label', 'p2swap', '--uuid', UUID]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/LABEL=p2swap, UUID=3f1c2a9e/);
    expect(qemuCheck(q, 'qcow2').status).toBe(0);
    const back = t.path('disk-back.img');
    must('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', q, back]);
    const b = blkid(back, { offset: 9 * MiB, size: 16 * MiB });
    expect([b.TYPE, b.UUID, b.LABEL]).toEqual(['swap', UUID, 'p2swap']);
    const part = t.path('p2.img');
    must('dd', ['if=' + back, 'of=' + part, 'bs=1M', 'skip=9', 'count=16', 'status=none']);
    expect(swaplabel(part)).toEqual({ label: 'p2swap', uuid: UUID });
    // Partition 1 and the table are untouched.
    expect(readRange(back, 0, 512).equals(readRange(raw, 0, 512))).toBe(true);
  });

  it('refuses to overwrite a filesystem or a partitioned whole image without --force', async () => {
    const f = sparseFile(t.path('fs.img'), 32 * MiB);
    sfdiskWrite(f, 'label: dos\n,16M,83\n,,82\n');
    must('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'offset=1048576', f, '16384k']);
    const before = sha256File(f);
    const r1 = await runCli(['part', 'mkswap', f, '--partition', '1']);
    expect(r1.status).toBe(2);
    expect(r1.stderr).toMatch(/partition 1 holds ext4: use --force/);
    const r2 = await runCli(['part', 'mkswap', f]);
    expect(r2.status).toBe(2);
    expect(r2.stderr).toMatch(/has a partition table: name a partition with --partition N/);
    const r3 = await runCli(['part', 'mkswap', f, '--partition', '9']);
    expect(r3.stderr).toMatch(/has no partition 9 \(partitions: 1, 2\)/);
    expect(sha256File(f)).toBe(before);
    const ok = await runCli(['part', 'mkswap', f, '--partition', '1', '--force', '--output', 'json']);
    expect(ok.status).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ target: 'partition 1', size: 16 * MiB, pageSize: 4096 });
    expect(ok.stderr).toMatch(/note: partition 1 has type 83/);
    expect(blkid(f, { offset: MiB, size: 16 * MiB }).TYPE).toBe('swap');
  });
});
