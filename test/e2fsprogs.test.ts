/**
 * e2fsck, resize2fs and mke2fs compiled to WebAssembly, run on imgtool
 * devices. The host's e2fsprogs 1.47.0 is the judge: same exit status and
 * messages as the host e2fsck, repaired images the host finds clean, files
 * the host's debugfs reads back unchanged, neighbouring bytes untouched.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync, openSync, writeSync, closeSync, statSync, mkdirSync } from 'node:fs';
import type { BlockDevice, Extent } from '../src/core/device.js';
import { ImageError } from '../src/core/errors.js';
import { FileDevice } from '../src/core/file.js';
import { MemoryDevice } from '../src/core/memory.js';
import { OverlayDevice } from '../src/core/overlay.js';
import { SliceDevice } from '../src/core/slice.js';
import { openImage } from '../src/formats/index.js';
import { e2fsck, fsckStatus, isOutOfMemory, mke2fs, resize2fs, wasmAvailable, wasmDir } from '../src/fs/e2fsprogs.js';
import { must, qemuCheck, run, sha256File, tempDir } from './helpers/peers.js';
import {
  DAMAGES,
  KINDS,
  blockSize,
  copy,
  damage,
  debugfsCat,
  extract,
  hostFsck,
  implant,
  makeTree,
  mbrDisk,
  mkfs,
  onFile,
  sameMessages,
  sha256Range,
} from './e2fsprogs-fixtures.js';

const t = tempDir('imgtool-e2fsprogs-');
let tree: string;
beforeAll(() => {
  tree = makeTree(t.path('tree'));
});
afterAll(() => t.cleanup());

/** A device wrapper that records writes and flushes (and can fail reads in a range). */
class Probe implements BlockDevice {
  writes = 0;
  flushes = 0;
  reads = 0;
  constructor(
    readonly inner: BlockDevice,
    readonly failReads?: { from: number; to: number },
  ) {}
  get size() {
    return this.inner.size;
  }
  get readOnly() {
    return this.inner.readOnly;
  }
  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.reads++;
    if (this.failReads && offset < this.failReads.to && offset + buf.length > this.failReads.from) {
      throw new ImageError('io', `injected read failure at ${offset}`, { offset });
    }
    return this.inner.read(buf, offset);
  }
  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.writes++;
    return this.inner.write(buf, offset);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.writes++;
    return this.inner.writeZeroes(offset, length);
  }
  status(offset: number, length: number): Promise<Extent> {
    return this.inner.status(offset, length);
  }
  async flush(): Promise<void> {
    this.flushes++;
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** dumpe2fs of an image without the fields that hold the time of the last write or check. */
function dumpe2fsSansTimes(img: string): string {
  return must('dumpe2fs', [img])
    .split('\n')
    .filter((l) => !/^(Last mount time|Last write time|Last checked|Lifetime writes|Checksum|Filesystem created|Next check after):/.test(l))
    .join('\n');
}

describe('the WebAssembly build', () => {
  it('is present (npm run setup builds it) and says where it is', () => {
    expect(wasmAvailable()).toBe(true);
    expect(wasmAvailable('mke2fs')).toBe(true);
    expect(statSync(`${wasmDir()}/e2fsck.wasm`).size).toBeGreaterThan(100_000);
  });

  it("reports a missing build as an ImageError telling to run 'npm run setup'", async () => {
    const saved = process.env.IMGTOOL_WASM_DIR;
    process.env.IMGTOOL_WASM_DIR = t.path('no-such-dir');
    try {
      expect(wasmAvailable()).toBe(false);
      const img = mkfs(t.path('nobuild.img'), KINDS[0]!, 8);
      const err = await onFile(img, false, (dev) => e2fsck(dev, { mode: 'check' })).catch((e) => e);
      expect(err).toBeInstanceOf(ImageError);
      expect((err as ImageError).kind).toBe('unsupported');
      expect((err as ImageError).message).toBe("e2fsprogs WebAssembly build missing: run 'npm run setup'");
    } finally {
      if (saved === undefined) delete process.env.IMGTOOL_WASM_DIR;
      else process.env.IMGTOOL_WASM_DIR = saved;
    }
  });
});

describe('e2fsck agrees with the host e2fsck', () => {
  for (const kind of KINDS) {
    for (const dmg of [undefined, ...DAMAGES]) {
      it(`${kind.name}, ${dmg ? `damaged ${dmg}` : 'clean'}: same status and messages for -fn and -fy; the repair leaves it clean`, async () => {
        const base = `${kind.type}-${kind.features ?? 'default'}-${dmg ?? 'clean'}`.replace(/[^a-z0-9-]/gi, '_');
        const img = mkfs(t.path(`${base}.img`), kind, 16, tree);
        if (dmg) damage(img, dmg);
        const hostN = hostFsck(img, '-fn');
        // The damage is real (the host sees it) and a clean image is clean.
        if (dmg) expect(hostN.status & 4).toBe(4);
        else expect(hostN.status).toBe(0);
        const before = sha256File(img);

        const probe = new Probe(await FileDevice.open(img, { writable: true }));
        const n = await e2fsck(probe, { mode: 'check' }).finally(() => probe.close());
        expect(n.exitCode).toBe(hostN.status);
        expect(n.status).toEqual(fsckStatus(hostN.status));
        const mn = sameMessages(n, '/dev/disk', hostN, img);
        expect(mn.stdout[0]).toBe(mn.stdout[1]);
        expect(mn.stderr[0]).toBe(mn.stderr[1]);
        // -n never writes: nothing reached the device, the file is unchanged.
        expect(probe.writes).toBe(0);
        expect(probe.flushes).toBe(0);
        expect(sha256File(img)).toBe(before);

        const theirs = copy(img, t.path(`${base}-host.img`));
        const hostY = hostFsck(theirs, '-fy');
        const ours = copy(img, t.path(`${base}-ours.img`));
        const y = await onFile(ours, true, (dev) => e2fsck(dev, { mode: 'repair' }));
        expect(y.exitCode).toBe(hostY.status);
        const my = sameMessages(y, '/dev/disk', hostY, theirs);
        expect(my.stdout[0]).toBe(my.stdout[1]);
        expect(my.stderr[0]).toBe(my.stderr[1]);
        expect(hostFsck(ours, '-fn').status).toBe(0);
        // Both repairs leave the same filesystem: dumpe2fs (every group's bitmaps, free counts,
        // flags and checksums) agrees apart from the superblock's clock fields.
        expect(dumpe2fsSansTimes(ours)).toBe(dumpe2fsSansTimes(theirs));
      });
    }
  }

  it('preen (-p) fixes what is safe and reports what is not, as the host e2fsck -fp does', async () => {
    const img = mkfs(t.path('preen.img'), KINDS[3]!, 16, tree);
    damage(img, 'block-bitmap');
    const theirs = copy(img, t.path('preen-host.img'));
    const hostP = hostFsck(theirs, '-fp');
    const r = await onFile(img, true, (dev) => e2fsck(dev, { mode: 'preen' }));
    expect(r.exitCode).toBe(hostP.status);
    const m = sameMessages(r, '/dev/disk', hostP, theirs);
    expect(m.stdout[0]).toBe(m.stdout[1]);
    expect(m.stderr[0]).toBe(m.stderr[1]);
  });

  it('checks a filesystem whose primary superblock is destroyed through a backup, as the host does', async () => {
    const img = mkfs(t.path('nosb.img'), KINDS[0]!, 16, tree);
    const fd = openSync(img, 'r+');
    writeSync(fd, Buffer.alloc(1024), 0, 1024, 1024);
    closeSync(fd);
    const hostN = hostFsck(img, '-fn');
    const n = await onFile(img, false, (dev) => e2fsck(dev, { mode: 'check' }));
    expect(n.exitCode).toBe(hostN.status);
    const ours = copy(img, t.path('nosb-ours.img'));
    const theirs = copy(img, t.path('nosb-host.img'));
    const hostY = hostFsck(theirs, '-fy');
    const y = await onFile(ours, true, (dev) => e2fsck(dev, { mode: 'repair' }));
    expect(y.exitCode).toBe(hostY.status);
    expect(hostFsck(ours, '-fn').status).toBe(0);
  });

  it('passes extra arguments through (-E journal_only replays nothing on a clean ext4)', async () => {
    const img = mkfs(t.path('extra.img'), KINDS[3]!, 16);
    const r = await onFile(img, true, (dev) => e2fsck(dev, { mode: 'preen', extraArgs: ['-E', 'journal_only'], name: 'vm-root.qcow2' }));
    expect(r.exitCode).toBe(0);
    expect(r.output).not.toMatch(/Pass 1/);
  });

  it('streams the output as e2fsck writes it and names the device as asked', async () => {
    const img = mkfs(t.path('stream.img'), KINDS[2]!, 16, tree);
    const chunks: string[] = [];
    const r = await onFile(img, false, (dev) => e2fsck(dev, { mode: 'check', name: 'guest disk.qcow2', onOutput: (c) => chunks.push(c) }));
    expect(chunks.join('')).toBe(r.output);
    expect(r.output).toMatch(/^Pass 5: Checking group summary information$/m);
    expect(r.output).toMatch(/^\/dev\/guest_disk\.qcow2: \d+\/\d+ files/m);
  });
});

describe('e2fsck safety', () => {
  it('refuses a device that holds no ext filesystem, naming the magic it found', async () => {
    const dev = new MemoryDevice(4 << 20);
    const err = await e2fsck(dev, { mode: 'check' }).catch((e) => e);
    expect(err).toBeInstanceOf(ImageError);
    expect(err.kind).toBe('invalid-format');
    expect(err.message).toMatch(/^not an ext2\/3\/4 filesystem: the superblock magic s_magic at offset 1080 has value 0x0000, not 0xef53/);
    expect(err.context).toMatchObject({ field: 's_magic', offset: 1080 });
    const tiny = await e2fsck(new MemoryDevice(1000), { mode: 'check' }).catch((e) => e);
    expect(tiny.message).toMatch(/not an ext2\/3\/4 filesystem/);
  });

  it('refuses features e2fsprogs 1.47 does not know, as the host e2fsck does', async () => {
    const img = mkfs(t.path('feat.img'), KINDS[0]!, 8);
    // s_feature_incompat |= 0x1000 (dirdata) and an unknown bit 0x80000000.
    const fd = openSync(img, 'r+');
    const b = Buffer.alloc(4);
    const rd = readFileSync(img).subarray(1024 + 0x60, 1024 + 0x64);
    b.writeUInt32LE((rd.readUInt32LE(0) | 0x1000 | 0x80000000) >>> 0);
    writeSync(fd, b, 0, 4, 1024 + 0x60);
    closeSync(fd);
    expect(hostFsck(img, '-fn').status).toBe(8);
    const err = await onFile(img, false, (dev) => e2fsck(dev, { mode: 'check' })).catch((e) => e);
    expect(err).toBeInstanceOf(ImageError);
    expect(err.kind).toBe('unsupported');
    expect(err.message).toMatch(/features e2fsprogs 1\.47 does not support \(dirdata, incompat bit 0x80000000\)/);
  });

  it('refuses to repair a read-only device', async () => {
    const img = mkfs(t.path('ro.img'), KINDS[0]!, 8);
    const err = await onFile(img, false, (dev) => e2fsck(dev, { mode: 'repair' })).catch((e) => e);
    expect(err).toBeInstanceOf(ImageError);
    expect(err.kind).toBe('usage');
  });

  it('stops at once, with the device error, when the device fails a read (no repair around it)', async () => {
    const img = mkfs(t.path('eio.img'), KINDS[3]!, 16, tree);
    const before = sha256File(img);
    const bs = blockSize(img);
    const out = must('debugfs', ['-R', 'imap /dir1/file3.bin', img]);
    const blk = Number(/located at block (\d+)/.exec(out)![1]);
    const probe = new Probe(await FileDevice.open(img, { writable: true }), { from: blk * bs, to: blk * bs + bs });
    const started = Date.now();
    const err = await e2fsck(probe, { mode: 'repair' }).catch((e) => e).finally(() => probe.close());
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(err).toBeInstanceOf(ImageError);
    expect(err.kind).toBe('io');
    expect(err.message).toMatch(/^e2fsck stopped: the device failed a read of \d+ bytes at offset \d+: injected read failure/);
    expect(sha256File(img)).toBe(before);
  });

  it('is cancelled through an AbortSignal, rejecting with an interrupted ImageError', async () => {
    const img = mkfs(t.path('abort.img'), KINDS[3]!, 16, tree);
    const ac = new AbortController();
    const err = await onFile(img, false, (dev) =>
      e2fsck(dev, { mode: 'check', signal: ac.signal, onOutput: (c) => c.includes('Pass 1') && ac.abort() }),
    ).catch((e) => e);
    expect(err).toBeInstanceOf(ImageError);
    expect(err.kind).toBe('interrupted');
  });

  it('works through a tiny shared buffer (every request split into 4 KiB chunks)', async () => {
    const img = mkfs(t.path('chunks.img'), KINDS[3]!, 16, tree);
    damage(img, 'dir-block');
    const theirs = copy(img, t.path('chunks-host.img'));
    const hostY = hostFsck(theirs, '-fy');
    const r = await onFile(img, true, (dev) => e2fsck(dev, { mode: 'repair', chunkSize: 4096, direct: false }));
    expect(r.exitCode).toBe(hostY.status);
    expect(hostFsck(img, '-fn').status).toBe(0);
  });

  it('classifies e2fsck giving up on a failed allocation as running out of memory', () => {
    const out = 'Pass 1: Checking inodes, blocks, and sizes\nError allocating block bitmap (4): Memory allocation failed\ne2fsck: aborted\n';
    expect(isOutOfMemory(8, out)).toBe(true);
    expect(isOutOfMemory(4, out)).toBe(false);
    expect(isOutOfMemory(8, 'e2fsck: Bad magic number in super-block\n')).toBe(false);
  });
});

describe('e2fsck and resize2fs on a partition of a disk image', () => {
  for (const fmt of ['raw', 'qcow2', 'vdi'] as const) {
    it(`repairs partition 1 of an MBR disk in ${fmt} and touches nothing outside it`, async () => {
      const fsImg = mkfs(t.path(`p-${fmt}-fs.img`), KINDS[3]!, 24, tree);
      damage(fsImg, 'inode-table');
      const hostY = hostFsck(copy(fsImg, t.path(`p-${fmt}-host.img`)), '-fy');
      const disk = mbrDisk(t.path(`p-${fmt}.raw`), 24);
      implant(fsImg, disk.path, disk.parts[0]!.start);
      const p1 = disk.parts[0]!;
      const outsideBefore = [sha256Range(disk.path, 0, p1.start), sha256Range(disk.path, p1.start + p1.size, statSync(disk.path).size - p1.start - p1.size)];
      let file = disk.path;
      if (fmt !== 'raw') {
        file = t.path(`p-${fmt}.${fmt}`);
        must('qemu-img', ['convert', '-f', 'raw', '-O', fmt, disk.path, file]);
      }
      const opened = await openImage(file, { format: fmt, writable: true });
      let r;
      try {
        r = await e2fsck(new SliceDevice(opened.image, p1.start, p1.size), { mode: 'repair' });
      } finally {
        await opened.image.close();
      }
      expect(r.exitCode).toBe(hostY.status);
      expect(r.exitCode).toBe(1);
      let rawAfter = file;
      if (fmt !== 'raw') {
        expect(qemuCheck(file, fmt).status).toBe(0);
        rawAfter = t.path(`p-${fmt}-after.raw`);
        must('qemu-img', ['convert', '-f', fmt, '-O', 'raw', file, rawAfter]);
      }
      expect(hostFsck(extract(rawAfter, p1.start, p1.size, t.path(`p-${fmt}-p1.img`)), '-fn').status).toBe(0);
      expect([sha256Range(rawAfter, 0, p1.start), sha256Range(rawAfter, p1.start + p1.size, statSync(rawAfter).size - p1.start - p1.size)]).toEqual(outsideBefore);
    });
  }

  for (const fmt of ['raw', 'qcow2'] as const) {
    it(`grows the filesystem in partition 1 of a ${fmt} disk to fill it; files and partition 2 unchanged`, async () => {
      const fsImg = mkfs(t.path(`g-${fmt}-fs.img`), KINDS[3]!, 12, tree);
      const disk = mbrDisk(t.path(`g-${fmt}.raw`), 32);
      implant(fsImg, disk.path, disk.parts[0]!.start);
      const [p1, p2] = disk.parts as [{ start: number; size: number }, { start: number; size: number }];
      const p2Before = sha256Range(disk.path, p2.start, statSync(disk.path).size - p2.start);
      let file = disk.path;
      if (fmt !== 'raw') {
        file = t.path(`g-${fmt}.${fmt}`);
        must('qemu-img', ['convert', '-f', 'raw', '-O', fmt, disk.path, file]);
      }
      const opened = await openImage(file, { format: fmt, writable: true });
      let r;
      try {
        r = await resize2fs(new SliceDevice(opened.image, p1.start, p1.size));
      } finally {
        await opened.image.close();
      }
      expect(r.exitCode).toBe(0);
      expect(r.oldSize).toBe(12 << 20);
      expect(r.newSize).toBe(32 << 20);
      let rawAfter = file;
      if (fmt !== 'raw') {
        expect(qemuCheck(file, fmt).status).toBe(0);
        rawAfter = t.path(`g-${fmt}-after.raw`);
        must('qemu-img', ['convert', '-f', fmt, '-O', 'raw', file, rawAfter]);
      }
      expect(statSync(rawAfter).size).toBe(statSync(disk.path).size);
      const part = extract(rawAfter, p1.start, p1.size, t.path(`g-${fmt}-p1.img`));
      expect(hostFsck(part, '-fn').status).toBe(0);
      expect(must('dumpe2fs', ['-h', part])).toMatch(new RegExp(`^Block count:\\s+${(32 << 20) / blockSize(part)}$`, 'm'));
      expect(debugfsCat(part, '/deep/er/est/big.bin').equals(readFileSync(`${tree}/deep/er/est/big.bin`))).toBe(true);
      expect(debugfsCat(part, '/dir3/file19.bin').equals(readFileSync(`${tree}/dir3/file19.bin`))).toBe(true);
      expect(sha256Range(rawAfter, p2.start, statSync(rawAfter).size - p2.start)).toBe(p2Before);
    });
  }
});

describe('resize2fs', () => {
  it('shrinks to a given size, and refuses a size beyond the device or below the minimum', async () => {
    const img = mkfs(t.path('shrink.img'), KINDS[3]!, 32, tree);
    await onFile(img, true, async (dev) => {
      const big = await resize2fs(dev, { size: 64 << 20 }).catch((e) => e);
      expect(big).toBeInstanceOf(ImageError);
      expect(big.message).toMatch(/larger than the device/);
      const tiny = await resize2fs(dev, { size: 1 << 20 });
      expect(tiny.exitCode).toBe(1);
      expect(tiny.output).toMatch(/New size smaller than minimum/);
      expect(tiny.newSize).toBe(32 << 20);
      const r = await resize2fs(dev, { size: 20 << 20 });
      expect(r.exitCode).toBe(0);
      expect([r.oldSize, r.newSize]).toEqual([32 << 20, 20 << 20]);
    });
    // The file keeps its size (the tool cannot truncate the device); the filesystem is clean.
    expect(statSync(img).size).toBe(32 << 20);
    expect(hostFsck(img, '-fn').status).toBe(0);
    expect(debugfsCat(img, '/deep/er/est/big.bin').equals(readFileSync(`${tree}/deep/er/est/big.bin`))).toBe(true);
  });

  it('asks for a check first on a filesystem mounted since its last check, as the host does', async () => {
    const img = mkfs(t.path('dirty.img'), KINDS[3]!, 16, undefined, { fileMiB: 24 });
    // A last mount time after the last check: "mounted since checked" (debugfs keeps the checksum right).
    must('debugfs', ['-w', '-R', 'ssv mtime 20300101', img]);
    const host = run('resize2fs', [copy(img, t.path('dirty-host.img'))]);
    const r = await onFile(img, true, (dev) => resize2fs(dev));
    expect(r.exitCode).toBe(host.status);
    expect(r.output).toMatch(/Please run 'e2fsck -f \/dev\/disk' first/);
    const forced = await onFile(img, true, (dev) => resize2fs(dev, { force: true }));
    expect(forced.exitCode).toBe(0);
    expect(forced.newSize).toBe(24 << 20);
  });
});

describe('an overlay over a read-only input', () => {
  it('takes e2fsck -y and resize2fs while the base file stays byte-identical', async () => {
    const img = mkfs(t.path('ovl.img'), KINDS[1]!, 16, tree, { fileMiB: 40 });
    damage(img, 'dir-block');
    const before = sha256File(img);
    const base = await FileDevice.open(img);
    const ovl = new OverlayDevice(base);
    try {
      const y = await e2fsck(ovl, { mode: 'repair' });
      expect(y.exitCode).toBe(1);
      const r = await resize2fs(ovl);
      expect(r.exitCode).toBe(0);
      expect(r.newSize).toBe(40 << 20);
      const out = Buffer.alloc(ovl.size);
      await ovl.read(out, 0);
      writeFileSync(t.path('ovl-result.img'), out);
    } finally {
      await ovl.close();
      await base.close();
    }
    expect(sha256File(img)).toBe(before);
    expect(hostFsck(t.path('ovl-result.img'), '-fn').status).toBe(0);
    expect(debugfsCat(t.path('ovl-result.img'), '/hello.txt').toString()).toBe('hello, world\n');
  });
});

describe('mke2fs', () => {
  it('makes a filesystem the host e2fsck finds clean, with the features the host mke2fs picks', async () => {
    for (const type of ['ext2', 'ext4'] as const) {
      const path = t.path(`mk-${type}.img`);
      closeSync(openSync(path, 'w'));
      must('truncate', ['-s', '48M', path]);
      const r = await onFile(path, true, (dev) => mke2fs(dev, { type, label: 'rootfs' }));
      expect(r.size).toBe(48 << 20);
      expect(hostFsck(path, '-fn').status).toBe(0);
      const ours = must('dumpe2fs', ['-h', path]);
      expect(ours).toMatch(/^Filesystem volume name:\s+rootfs$/m);
      expect(ours).toMatch(new RegExp(`^Filesystem UUID:\\s+${r.uuid}$`, 'm'));
      const hostImg = t.path(`mk-${type}-host.img`);
      must('truncate', ['-s', '48M', hostImg]);
      must('mke2fs', ['-q', '-F', '-t', type, hostImg]);
      const feats = (s: string) => /^Filesystem features:\s+(.*)$/m.exec(s)![1];
      expect(feats(ours)).toBe(feats(must('dumpe2fs', ['-h', hostImg])));
    }
  });

  it('reports a device too small for a filesystem as a usage ImageError with mke2fs\'s reason', async () => {
    const err = await mke2fs(new MemoryDevice(16 << 10)).catch((e) => e);
    expect(err).toBeInstanceOf(ImageError);
    expect(err.kind).toBe('usage');
    expect(err.message).toMatch(/^mke2fs failed \(exit 1\): mke2fs: inode_size \(256\) \* inodes_count \(0\) too big/);
  });

  it('fills the given size only, on any device (here memory)', async () => {
    const dev = new MemoryDevice(32 << 20);
    const r = await mke2fs(dev, { type: 'ext4', size: 20 << 20, blockSize: 4096 });
    expect(r.size).toBe(20 << 20);
    const out = Buffer.alloc(dev.size);
    await dev.read(out, 0);
    mkdirSync(t.path('mem'), { recursive: true });
    writeFileSync(t.path('mem/fs.img'), out);
    expect(hostFsck(t.path('mem/fs.img'), '-fn').status).toBe(0);
  });
});
