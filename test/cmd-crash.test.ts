/**
 * Crash safety of `resize` and `check -r`: the driver's work runs on a
 * device that dies after its k-th write, for every k. Whatever k, the image
 * left behind passes qemu-img check with at most leaked clusters, reads as
 * before (qemu-img compare), and a new `imgtool check -r all` finishes the
 * repair (qemu-img check clean).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import type { BlockDevice, Extent } from '../src/core/device.js';
import { FileDevice } from '../src/core/file.js';
import { qcow2 } from '../src/formats/qcow2/index.js';
import { imgtool, must, qemuCheck, run, tempDir } from './helpers/peers.js';

const t = tempDir('imgtool-cmd-crash-');
afterAll(() => t.cleanup());

class Crash extends Error {}

/** A device whose writes stop (throwing) after `budget` of them; counts them. */
class DyingDevice implements BlockDevice {
  writes = 0;
  constructor(
    private readonly inner: BlockDevice,
    private readonly budget: number,
  ) {}
  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.inner.read(buf, offset);
  }
  private spend(): void {
    if (this.writes >= this.budget) throw new Crash('power lost');
    this.writes++;
  }
  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.spend();
    await this.inner.write(buf, offset);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.spend();
    await this.inner.writeZeroes(offset, length);
  }
  status(offset: number, length: number): Promise<Extent> {
    return this.inner.status(offset, length);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Run `work` on a copy of `src` dying after k writes, for every k until it completes; `verify` each result. */
async function everyCrashPoint(src: string, work: (dev: BlockDevice) => Promise<unknown>, verify: (file: string, k: number) => void): Promise<number> {
  for (let k = 0; ; k++) {
    const file = t.path(`crash-${k}.qcow2`);
    copyFileSync(src, file);
    const fd = await FileDevice.open(file, { writable: true, growable: true });
    const dev = new DyingDevice(fd, k);
    let done = false;
    try {
      await work(dev);
      done = true;
    } catch (e) {
      if (!(e instanceof Crash)) throw e;
    } finally {
      await fd.close();
    }
    verify(file, k);
    if (done) return k;
    if (k > 500) throw new Error('no end');
  }
}

describe('crash at every write', () => {
  it('qcow2 resize moving the L1 table: at most leaks, data intact, check -r finishes', async () => {
    const src = t.path('grow.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', src, '64M']);
    must('qemu-io', ['-c', 'write -P 1 0 64k', '-c', 'write -P 2 60M 8k', src]);
    const steps = await everyCrashPoint(
      src,
      (dev) => qcow2.resize!(dev, 3 * 2 ** 30),
      (file) => {
        expect([0, 3]).toContain(qemuCheck(file).status);
        expect(run('qemu-img', ['compare', src, file]).status).toBe(0);
        expect(imgtool(['check', '-r', 'all', file]).status).toBe(0);
        expect(qemuCheck(file).status).toBe(0);
      },
    );
    expect(steps).toBeGreaterThan(2);
  });

  it('qcow2 shrink: the old image or the new one, at most leaks, check -r finishes', async () => {
    const src = t.path('shrink.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', src, '1200M']);
    must('qemu-io', ['-c', 'write -P 1 0 64k', '-c', 'write -c -P 2 100M 64k', '-c', 'write -P 3 300M 128k', '-c', 'write -P 4 1100M 64k', src]);
    const ref = t.path('shrink-ref.raw');
    must('qemu-img', ['convert', '-O', 'raw', src, ref]);
    must('qemu-img', ['resize', '-q', '-f', 'raw', '--shrink', ref, '200M']);
    const steps = await everyCrashPoint(
      src,
      (dev) => qcow2.resize!(dev, 200 << 20),
      (file) => {
        expect([0, 3]).toContain(qemuCheck(file).status);
        const size = JSON.parse(must('qemu-img', ['info', '--output=json', file]))['virtual-size'];
        expect(run('qemu-img', ['compare', size === 200 << 20 ? ref : src, file]).status).toBe(0);
        expect(imgtool(['check', '-r', 'all', file]).status).toBe(0);
        expect(qemuCheck(file).status).toBe(0);
      },
    );
    expect(steps).toBeGreaterThan(2);
  });

  it('qcow2 check -r all of refcounts too high and too low: a new check -r all always finishes, data intact', async () => {
    const src = t.path('damaged.qcow2');
    const pristine = t.path('pristine.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', pristine, '64M']);
    must('qemu-io', ['-c', 'write -P 1 0 192k', '-c', 'write -P 2 10M 64k', pristine]);
    const d = readFileSync(pristine);
    const rb = Number(d.readBigUInt64BE(Number(d.readBigUInt64BE(48))));
    d.writeUInt16BE(0, rb + 2 * 5); // a data cluster's refcount too low
    d.writeUInt16BE(3, rb + 2 * 6); // another's too high
    const n = Math.ceil(d.length / 65536);
    writeFileSync(src, Buffer.concat([d, Buffer.alloc(n * 65536 + 65536 - d.length)]));
    const leak = readFileSync(src);
    leak.writeUInt16BE(1, rb + 2 * n); // and a leaked cluster
    writeFileSync(src, leak);
    expect(qemuCheck(src).status).toBe(2);
    const steps = await everyCrashPoint(
      src,
      (dev) => qcow2.check!(dev, 'all', () => {}),
      (file) => {
        expect(run('qemu-img', ['compare', pristine, file]).status).toBe(0);
        expect(imgtool(['check', '-r', 'all', file]).status).toBe(0);
        expect(qemuCheck(file).status).toBe(0);
      },
    );
    expect(steps).toBeGreaterThan(2);
  });
});
