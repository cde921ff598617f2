/**
 * e2fsck, resize2fs and mke2fs run in a worker thread (src/fs/e2fsprogs.ts).
 * However a run ends (success, the tool's own failure, a device error, an
 * abort, a crash, a loop), the moment its promise settles no worker thread
 * and no message port of it may remain (they would keep the process alive:
 * issue 17 item 7), and no write of it may still be in progress.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import type { BlockDevice, Extent } from '../src/core/device.js';
import { ImageError } from '../src/core/errors.js';
import { MemoryDevice } from '../src/core/memory.js';
import { ToolCrashError, e2fsck, mke2fs, prepareTool, resize2fs } from '../src/fs/e2fsprogs.js';
import { extUsedRanges } from '../src/fs/used-blocks.js';
import { tempDir } from './helpers/peers.js';
import { KINDS, damage, e2fsprogsTestImages, gunzipTo, makeTree, mkfs, onFile } from './e2fsprogs-fixtures.js';

const t = tempDir('imgtool-e2fs-hygiene-');
afterAll(() => t.cleanup());

/** Worker threads and message ports this process holds (a live Worker shows as a MessagePort). */
function threadHandles(): string[] {
  return process.getActiveResourcesInfo().filter((r) => r === 'MessagePort' || r === 'Worker');
}

/** Run `fn`, and check right after it settles (no waiting) that it left no thread handle behind. */
async function leavesNothing<T>(fn: () => Promise<T>): Promise<{ value?: T; error?: unknown }> {
  const before = threadHandles();
  let outcome: { value?: T; error?: unknown };
  try {
    outcome = { value: await fn() };
  } catch (error) {
    outcome = { error };
  }
  expect(threadHandles()).toEqual(before);
  return outcome;
}

/** A device whose reads or writes can be held at a gate, or fail. */
class GatedDevice implements BlockDevice {
  writesStarted = 0;
  writesDone = 0;
  reads = 0;
  /** Called when the gated operation arrives; it waits until `open()`. */
  onGate?: () => void;
  private release?: () => void;
  constructor(
    readonly inner: BlockDevice,
    private readonly gate: { op: 'read' | 'write'; nth: number } | { op: 'fail-read'; nth: number },
  ) {}
  get size() {
    return this.inner.size;
  }
  get readOnly() {
    return this.inner.readOnly;
  }
  open(): void {
    this.release?.();
  }
  private async wait(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.release = resolve;
      this.onGate?.();
    });
  }
  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.reads++;
    if (this.reads === this.gate.nth && this.gate.op === 'fail-read') throw new ImageError('io', `injected read failure at ${offset}`, { offset });
    if (this.reads === this.gate.nth && this.gate.op === 'read') await this.wait();
    return this.inner.read(buf, offset);
  }
  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.writesStarted++;
    if (this.writesStarted === this.gate.nth && this.gate.op === 'write') await this.wait();
    await this.inner.write(buf, offset);
    this.writesDone++;
  }
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.inner.writeZeroes(offset, length);
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

const ext4 = KINDS[3]!;

describe('an e2fsprogs run leaves no worker thread or message port behind', () => {
  it('after e2fsck succeeds, finds errors, and repairs', async () => {
    const tree = makeTree(t.path('tree'));
    const clean = mkfs(t.path('clean.img'), ext4, 16, tree);
    const ok = await leavesNothing(() => onFile(clean, false, (dev) => e2fsck(dev, { mode: 'check' })));
    expect(ok.value?.exitCode).toBe(0);
    const bad = mkfs(t.path('bad.img'), ext4, 16, tree);
    damage(bad, 'dir-block');
    const n = await leavesNothing(() => onFile(bad, false, (dev) => e2fsck(dev, { mode: 'check' })));
    expect(n.value!.exitCode & 4).toBe(4);
    const y = await leavesNothing(() => onFile(bad, true, (dev) => e2fsck(dev, { mode: 'repair' })));
    expect(y.value?.exitCode).toBe(1);
  });

  it('after e2fsck gives up on a device with no filesystem (exit 8, explained as an ImageError)', async () => {
    const r = await leavesNothing(() => e2fsck(new MemoryDevice(4 << 20), { mode: 'check' }));
    expect(r.error).toBeInstanceOf(ImageError);
    expect((r.error as ImageError).message).toMatch(/^not an ext2\/3\/4 filesystem/);
  });

  it('after a device read fails in the middle of e2fsck', async () => {
    const img = mkfs(t.path('eio.img'), ext4, 16);
    const r = await leavesNothing(() => onFile(img, false, (dev) => e2fsck(new GatedDevice(dev, { op: 'fail-read', nth: 5 }), { mode: 'check' })));
    expect(r.error).toBeInstanceOf(ImageError);
    expect((r.error as ImageError).message).toMatch(/^e2fsck stopped: the device failed a read .*injected read failure/);
  });

  it('after an abort while e2fsck waits for a device read that never comes back', async () => {
    const img = mkfs(t.path('abort-read.img'), ext4, 16);
    const ac = new AbortController();
    await onFile(img, false, async (dev) => {
      const gated = new GatedDevice(dev, { op: 'read', nth: 8 });
      gated.onGate = () => ac.abort();
      const r = await leavesNothing(() => e2fsck(gated, { mode: 'check', signal: ac.signal }));
      expect(r.error).toBeInstanceOf(ImageError);
      expect((r.error as ImageError).kind).toBe('interrupted');
      gated.open();
    });
  });

  it('after an abort while a write is in progress: the run settles only once that write is done', async () => {
    const img = mkfs(t.path('abort-write.img'), KINDS[0]!, 16, t.path('tree'));
    damage(img, 'block-bitmap');
    const ac = new AbortController();
    await onFile(img, true, async (dev) => {
      const gated = new GatedDevice(dev, { op: 'write', nth: 1 });
      let settled = false;
      gated.onGate = () => {
        ac.abort();
        // Let the abort be handled, then let the write finish.
        setImmediate(() => {
          expect(settled).toBe(false);
          gated.open();
        });
      };
      const r = await leavesNothing(() => e2fsck(gated, { mode: 'repair', signal: ac.signal }).finally(() => (settled = true)));
      expect((r.error as ImageError).kind).toBe('interrupted');
      expect((r.error as ImageError).message).toBe('e2fsck was cancelled after it had written to the device');
      expect(gated.writesStarted).toBeGreaterThan(0);
      expect(gated.writesDone).toBe(gated.writesStarted);
    });
  });

  it('after a run that took the worker prepareTool started ahead; an unused one does not keep a process alive', async () => {
    const img = mkfs(t.path('prepared.img'), ext4, 8);
    prepareTool('e2fsck');
    const r = await leavesNothing(() => onFile(img, false, (dev) => e2fsck(dev, { mode: 'check' })));
    expect(r.value?.exitCode).toBe(0);
    // A process that prepares and never runs exits by itself (the spare worker is unref'd).
    const lib = new URL('../dist/fs/e2fsprogs.js', import.meta.url).href;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', `(await import(${JSON.stringify(lib)})).prepareTool('e2fsck');`], {
      timeout: 60_000,
      encoding: 'utf8',
    });
    expect(child.error).toBeUndefined();
    expect([child.status, child.stderr]).toEqual([0, '']);
  });

  it('after a signal that was aborted before the run (no worker is started)', async () => {
    const img = mkfs(t.path('pre-abort.img'), ext4, 8);
    const r = await leavesNothing(() => onFile(img, false, (dev) => e2fsck(dev, { mode: 'check', signal: AbortSignal.abort() })));
    expect((r.error as ImageError).kind).toBe('interrupted');
  });

  it('after e2fsck crashes (a WebAssembly trap) and after it loops', async () => {
    const images = new Map(e2fsprogsTestImages().map((i) => [i.name, i.gz]));
    const crash = gunzipTo(images.get('f_h_badroot')!, t.path('f_h_badroot.img'));
    const c = await leavesNothing(() => onFile(crash, false, (dev) => e2fsck(dev, { mode: 'check' })));
    expect(c.error).toBeInstanceOf(ToolCrashError);
    const loop = gunzipTo(images.get('f_misstable')!, t.path('f_misstable.img'));
    const l = await leavesNothing(() => onFile(loop, false, (dev) => e2fsck(dev, { mode: 'check' })));
    expect((l.error as ImageError).message).toMatch(/^e2fsck is looping/);
  });

  it('after resize2fs grows, and after it refuses a size below its minimum (exit 1)', async () => {
    const img = mkfs(t.path('grow.img'), ext4, 16, t.path('tree'), { fileMiB: 24 });
    await onFile(img, true, async (dev) => {
      const grown = await leavesNothing(() => resize2fs(dev));
      expect(grown.value?.newSize).toBe(24 << 20);
      const tiny = await leavesNothing(() => resize2fs(dev, { size: 1 << 20 }));
      expect(tiny.value?.exitCode).toBe(1);
    });
  });

  it('after mke2fs succeeds, and after it fails on a device too small', async () => {
    const ok = await leavesNothing(() => mke2fs(new MemoryDevice(16 << 20)));
    expect(ok.value?.exitCode).toBe(0);
    const small = await leavesNothing(() => mke2fs(new MemoryDevice(16 << 10)));
    expect((small.error as ImageError).kind).toBe('usage');
  });

  it('after libext2fs (ext2fs package) lists the used blocks', async () => {
    const img = mkfs(t.path('used.img'), ext4, 16, t.path('tree'));
    const r = await leavesNothing(() => onFile(img, false, (dev) => extUsedRanges(dev)));
    expect(r.value!.length).toBeGreaterThan(0);
  });
});
