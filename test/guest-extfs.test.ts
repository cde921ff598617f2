/**
 * withExtFs: the ext2fs (WASM libext2fs) mount over a BlockDevice. Device
 * errors come back as the real error (not ext2fs's EIO), calls never
 * interleave, read-only mounts write nothing, binary files read back intact,
 * and host e2fsck agrees with what we wrote.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { FileDevice } from '../src/core/file.js';
import { SliceDevice } from '../src/core/slice.js';
import type { BlockDevice } from '../src/core/device.js';
import { ImageError } from '../src/core/errors.js';
import { withExtFs } from '../src/fs/ext.js';
import { pattern } from './helpers/devices.js';
import { must, run, sha256File, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-extfs-');
afterAll(() => t.cleanup());

let n = 0;
function makeFs(): string {
  const root = t.path(`root${++n}`);
  mkdirSync(`${root}/bin`, { recursive: true });
  writeFileSync(`${root}/bin/blob`, pattern(300_000, 5));
  writeFileSync(`${root}/hello`, 'hello\n');
  const img = t.path(`fs${n}.img`);
  must('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', root, img, '8M']);
  return img;
}

/** A device whose reads fail past `failAfter` bytes into the device. */
function failing(dev: BlockDevice, failAfter: number): BlockDevice {
  return new Proxy(dev, {
    get(target, prop, recv) {
      if (prop === 'read') {
        return async (buf: Uint8Array, offset: number) => {
          if (offset + buf.length > failAfter) throw new ImageError('io', `read at ${offset} failed: the disk is on fire`, { offset });
          return target.read(buf, offset);
        };
      }
      const v = Reflect.get(target, prop, recv);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

describe('withExtFs', () => {
  it('reads binary files byte for byte and writes files that host e2fsck and debugfs accept', async () => {
    const img = makeFs();
    const dev = await FileDevice.open(img, { writable: true });
    try {
      await withExtFs(dev, async (fs) => {
        expect(Buffer.compare(await fs.readFile('/bin/blob'), Buffer.from(pattern(300_000, 5)))).toBe(0);
        expect(await fs.readFile('/hello', 'utf8')).toBe('hello\n');
        await fs.writeFile('/new', Buffer.from([0xff, 0x00, 0xfe]), { mode: 0o600 });
        await fs.symlink('/hello', '/link');
      });
    } finally {
      await dev.close();
    }
    expect(run('e2fsck', ['-fn', img]).status).toBe(0);
    const out = t.path(`dump${n}`);
    must('debugfs', ['-R', `dump /new ${out}`, img]);
    expect(readFileSync(out)).toEqual(Buffer.from([0xff, 0x00, 0xfe]));
    expect(must('debugfs', ['-R', 'stat /new', img])).toMatch(/Mode:\s+0600/);
    expect(must('debugfs', ['-R', 'stat /link', img])).toContain('Fast link dest: "/hello"');
  });

  it('writes nothing to the device when mounted read-only, even if the callback writes', async () => {
    const img = makeFs();
    const hash = sha256File(img);
    const dev = await FileDevice.open(img, { writable: true });
    try {
      await withExtFs(dev, async (fs) => fs.writeFile('/scratch', 'x'), { readOnly: true });
      // A read-only FileDevice is mounted over an overlay without being asked.
    } finally {
      await dev.close();
    }
    const ro = await FileDevice.open(img);
    try {
      await withExtFs(ro, async (fs) => fs.writeFile('/scratch', 'x'));
    } finally {
      await ro.close();
    }
    expect(sha256File(img)).toBe(hash);
  });

  it('reports the device error itself, not EIO, and logs it', async () => {
    const img = makeFs();
    const dev = await FileDevice.open(img);
    const logged: string[] = [];
    try {
      const bad = failing(dev, 1 << 20);
      const e = await withExtFs(bad, (fs) => fs.readFile('/bin/blob'), { log: (m) => logged.push(m) }).catch((x) => x);
      expect(e).toBeInstanceOf(ImageError);
      expect((e as ImageError).message).toMatch(/the disk is on fire/);
      expect(logged.join('\n')).toMatch(/ext2fs: read of \d+ bytes at \d+ failed: .*the disk is on fire/);
    } finally {
      await dev.close();
    }
  });

  it('refuses a device smaller than the filesystem says it is, and one that holds no ext filesystem', async () => {
    const img = makeFs();
    const dev = await FileDevice.open(img);
    try {
      const cut = new SliceDevice(dev, 0, 4 << 20);
      await expect(withExtFs(cut, async () => 0)).rejects.toThrow(/spans 8388608 bytes .* but the device holds 4194304/);
      const notExt = new SliceDevice(dev, 4096, 1 << 20);
      const e = await withExtFs(notExt, async () => 0).catch((x) => x);
      expect((e as ImageError).context.field).toBe('s_magic');
    } finally {
      await dev.close();
    }
  });

  it('runs concurrent calls one after the other', async () => {
    const a = await FileDevice.open(makeFs());
    const b = await FileDevice.open(makeFs());
    const events: string[] = [];
    const job = (name: string, dev: BlockDevice) =>
      withExtFs(dev, async (fs) => {
        events.push(`${name} in`);
        await new Promise((r) => setTimeout(r, 30));
        await fs.readFile('/hello');
        events.push(`${name} out`);
        return name;
      });
    try {
      const results = await Promise.all([job('a', a), job('b', b), job('c', a)]);
      expect(results).toEqual(['a', 'b', 'c']);
      expect(events).toEqual(['a in', 'a out', 'b in', 'b out', 'c in', 'c out']);
      // A failed call does not block the next one.
      await expect(withExtFs(a, async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
      expect(await withExtFs(a, async (fs) => fs.readFile('/hello', 'utf8'))).toBe('hello\n');
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('writes and reads back a file larger than libext2fs\'s 16 MiB heap (a Debian initrd), judged by host debugfs', async () => {
    const img = t.path('big-file.img');
    must('mke2fs', ['-q', '-F', '-t', 'ext4', img, '64M']);
    const big = Buffer.from(pattern(24 << 20, 9));
    const dev = await FileDevice.open(img, { writable: true });
    try {
      await withExtFs(dev, async (fs) => {
        await fs.writeFile('/initrd.img', big, { mode: 0o644 });
        expect(Buffer.compare(await fs.readFile('/initrd.img'), big)).toBe(0);
      });
    } finally {
      await dev.close();
    }
    const out = t.path('big-file.out');
    must('debugfs', ['-R', `dump /initrd.img ${out}`, img]);
    expect(Buffer.compare(readFileSync(out), big)).toBe(0);
    expect(run('e2fsck', ['-fn', img]).status).toBe(0);
  });
});
