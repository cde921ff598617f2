import { describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FileDevice } from '../src/core/file.js';
import { MemoryDevice } from '../src/core/memory.js';
import { type BlockDevice, growDevice, resizeDevice } from '../src/core/device.js';
import { ImageError } from '../src/core/errors.js';
import { raw } from '../src/formats/raw.js';

describe('BlockDevice.resize', () => {
  it('a device without resize gives the unsupported error', async () => {
    const dev = new MemoryDevice(4096);
    expect((dev as BlockDevice).resize).toBeUndefined();
    const err = await resizeDevice(dev, 8192, 'qcow').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageError);
    expect((err as ImageError).kind).toBe('unsupported');
    expect((err as ImageError).message).toContain('qcow');
    await expect(growDevice(dev, 8192, 'vdi')).rejects.toMatchObject({ kind: 'unsupported' });
    await expect(raw.resize!(dev, 8192)).rejects.toMatchObject({ kind: 'unsupported' });
  });

  it('a FileDevice grows (leaving zeros) and shrinks', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imgtool-resize-'));
    try {
      const file = path.join(dir, 'f.img');
      fs.writeFileSync(file, Buffer.alloc(4096, 0xab));
      const dev = await FileDevice.open(file, { writable: true });
      await growDevice(dev, 1 << 20, 'test');
      expect(dev.size).toBe(1 << 20);
      expect(fs.statSync(file).size).toBe(1 << 20);
      const tail = new Uint8Array(4096);
      await dev.read(tail, (1 << 20) - 4096);
      expect(tail.every((b) => b === 0)).toBe(true);
      await dev.resize!(8192);
      expect(dev.size).toBe(8192);
      await dev.close();
      expect(fs.statSync(file).size).toBe(8192);
      expect(fs.readFileSync(file).subarray(0, 4096).every((b) => b === 0xab)).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
