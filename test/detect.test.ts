/**
 * Content detection against `blkid -p`: on filesystems the real tools made
 * (mke2fs, mkswap, busybox mkdosfs) and on superblocks built here from the
 * on-disk specs for the types whose tools are not installed (XFS, Btrfs,
 * NTFS, LVM2, LUKS, FAT16). blkid judges both: same TYPE, UUID, LABEL,
 * VERSION, or both see nothing.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { FileDevice } from '../src/core/file.js';
import { MemoryDevice } from '../src/core/memory.js';
import { type ContentInfo, detectContent } from '../src/fs/detect.js';
import { crc32Update, crc32c } from '../src/partition/crc32.js';
import { must, tempDir } from './helpers/peers.js';
import { blkid, pokeFile, sparseFile } from './partition-helpers.js';

const t = tempDir('imgtool-detect-');
afterAll(() => t.cleanup());

const MiB = 1 << 20;

async function detectFile(f: string): Promise<ContentInfo> {
  const d = await FileDevice.open(f);
  try {
    return await detectContent(d);
  } finally {
    await d.close();
  }
}

async function expectLikeBlkid(f: string): Promise<ContentInfo> {
  const ours = await detectFile(f);
  const b = blkid(f);
  expect(ours.type).toBe(b.TYPE ?? 'unknown');
  expect(ours.uuid).toBe(b.UUID);
  expect(ours.label).toBe(b.LABEL);
  expect(ours.version).toBe(b.VERSION);
  return ours;
}

const uuidBytes = (u: string) => Buffer.from(u.replace(/-/g, ''), 'hex');

describe('filesystems made by the real tools', () => {
  const cases: [string, string[]][] = [
    ['ext2', ['-t', 'ext2', '-L', 'two']],
    ['ext3', ['-t', 'ext3', '-L', 'three']],
    ['ext4', ['-t', 'ext4', '-L', 'four', '-b', '4096']],
    ['ext4 without metadata_csum, with 64bit', ['-t', 'ext4', '-O', '^metadata_csum,64bit']],
    ['ext2 with the extent feature (blkid calls it ext4)', ['-t', 'ext2', '-O', 'extent']],
  ];
  for (const [name, args] of cases) {
    it(`identifies ${name} made by mke2fs as blkid does`, async () => {
      const f = sparseFile(t.path(`${name.replace(/\W/g, '_')}.img`), 16 * MiB);
      must('mke2fs', ['-q', '-F', ...args, f]);
      const c = await expectLikeBlkid(f);
      expect(c.size).toBe(16 * MiB);
      expect(c.blockSize).toBe(Number(blkid(f).BLOCK_SIZE));
      const dumpe2fs = must('dumpe2fs', ['-h', f]);
      const features = /^Filesystem features:\s*(.*)$/m.exec(dumpe2fs)![1]!.trim().split(/\s+/);
      expect([...c.features!].sort()).toEqual([...features].sort());
    });
  }

  it('agrees with blkid about an ext4 superblock whose metadata_csum checksum is wrong', async () => {
    const f = sparseFile(t.path('badcsum.img'), 16 * MiB);
    must('mke2fs', ['-q', '-F', '-t', 'ext4', f]);
    pokeFile(f, 1024 + 120, Buffer.from('tampered'));
    await expectLikeBlkid(f);
  });

  it('identifies swap made by mkswap', async () => {
    const f = sparseFile(t.path('swap.img'), 8 * MiB);
    must('mkswap', ['-q', '-L', 'sw', f]);
    const c = await expectLikeBlkid(f);
    expect(c.size).toBe(8 * MiB);
  });

  it('identifies FAT32 made by mkdosfs', async () => {
    const f = sparseFile(t.path('fat32.img'), 40 * MiB);
    must('busybox', ['mkdosfs', '-n', 'MYVOL', f]);
    expect((await expectLikeBlkid(f)).version).toBe('FAT32');
  });
});

function xfs(label: string, uuid: string): Uint8Array {
  const b = new Uint8Array(512);
  const v = new DataView(b.buffer);
  b.set(Buffer.from('XFSB'), 0);
  v.setUint32(4, 4096, false); // blocksize
  v.setBigUint64(8, 4096n, false); // dblocks = agcount * agblocks
  b.set(uuidBytes(uuid), 32);
  v.setUint32(80, 1, false); // rextsize
  v.setUint32(84, 1024, false); // agblocks
  v.setUint32(88, 4, false); // agcount
  v.setUint16(100, 0x34a4, false); // versionnum (v4)
  v.setUint16(102, 512, false); // sectsize
  v.setUint16(104, 256, false); // inodesize
  v.setUint16(106, 16, false); // inopblock
  b.set(Buffer.from(label), 108);
  b[120] = 12; // blocklog
  b[121] = 9; // sectlog
  b[122] = 8; // inodelog
  b[123] = 4; // inopblog
  b[124] = 10; // agblklog
  b[127] = 25; // imax_pct
  return b;
}

function btrfs(label: string, fsid: string, devUuid: string): Uint8Array {
  const b = new Uint8Array(4096);
  const v = new DataView(b.buffer);
  b.set(uuidBytes(fsid), 32);
  v.setBigUint64(48, 65536n, true); // bytenr
  b.set(Buffer.from('_BHRfS_M'), 64);
  v.setBigUint64(72, 7n, true); // generation
  v.setBigUint64(112, BigInt(64 * MiB), true); // total_bytes
  v.setBigUint64(136, 1n, true); // num_devices
  v.setUint32(144, 4096, true); // sectorsize
  v.setUint32(148, 16384, true); // nodesize
  v.setUint32(152, 16384, true); // leafsize
  v.setUint32(156, 4096, true); // stripesize
  v.setBigUint64(201, 1n, true); // dev_item.devid
  b.set(uuidBytes(devUuid), 201 + 66); // dev_item.uuid
  b.set(uuidBytes(fsid), 201 + 82); // dev_item.fsid
  b.set(Buffer.from(label), 299);
  v.setUint32(0, crc32c(b.subarray(32)), true);
  return b;
}

function ntfs(label: string, serial: bigint, totalSectors: number): { boot: Uint8Array; mft: Uint8Array } {
  const boot = new Uint8Array(512);
  const v = new DataView(boot.buffer);
  boot.set([0xeb, 0x52, 0x90], 0);
  boot.set(Buffer.from('NTFS    '), 3);
  v.setUint16(11, 512, true);
  boot[13] = 8; // sectors per cluster
  boot[21] = 0xf8;
  v.setBigUint64(40, BigInt(totalSectors - 1), true);
  v.setBigUint64(48, 4n, true); // $MFT at cluster 4 (byte 16384)
  v.setBigUint64(56, 8n, true);
  boot[64] = 0xf6; // MFT record = 2^10 bytes
  boot[68] = 1;
  v.setBigUint64(72, serial, true);
  boot[510] = 0x55;
  boot[511] = 0xaa;
  const mft = new Uint8Array(4 * 1024);
  for (let r = 0; r < 4; r++) mft.set(Buffer.from('FILE'), r * 1024);
  const rec = mft.subarray(3 * 1024);
  const rv = new DataView(rec.buffer, rec.byteOffset, 1024);
  rv.setUint16(20, 56, true); // first attribute
  rv.setUint32(24, 200, true); // bytes in use
  rv.setUint32(28, 1024, true); // bytes allocated
  const name = Buffer.from(label, 'utf16le');
  const len = Math.ceil((24 + name.length) / 8) * 8;
  rv.setUint32(56, 0x10, true); // $STANDARD_INFORMATION (skipped)
  rv.setUint32(60, 24, true);
  rv.setUint32(80, 0x60, true); // $VOLUME_NAME
  rv.setUint32(84, len, true);
  rv.setUint32(80 + 16, name.length, true);
  rv.setUint16(80 + 20, 24, true);
  rec.set(name, 80 + 24);
  rv.setUint32(80 + len, 0xffffffff, true);
  return { boot, mft };
}

function lvm2(uuid32: string, deviceSize: number): Uint8Array {
  const l = new Uint8Array(512);
  const v = new DataView(l.buffer);
  l.set(Buffer.from('LABELONE'), 0);
  v.setBigUint64(8, 1n, true); // this label is in sector 1
  v.setUint32(20, 32, true); // offset_xl
  l.set(Buffer.from('LVM2 001'), 24);
  l.set(Buffer.from(uuid32), 32);
  v.setBigUint64(64, BigInt(deviceSize), true);
  v.setUint32(16, crc32Update(0xf597a6cf, l.subarray(20)), true);
  return l;
}

function luks(version: 1 | 2, uuid: string, label?: string): Uint8Array {
  const h = new Uint8Array(4096);
  const v = new DataView(h.buffer);
  h.set(Buffer.from('LUKS\xba\xbe', 'latin1'), 0);
  v.setUint16(6, version, false);
  if (version === 1) {
    h.set(Buffer.from('aes'), 8);
    h.set(Buffer.from('xts-plain64'), 40);
    h.set(Buffer.from('sha256'), 72);
    v.setUint32(104, 4096, false);
    v.setUint32(108, 64, false);
  } else {
    v.setBigUint64(8, 16384n, false);
    v.setBigUint64(16, 1n, false);
    if (label) h.set(Buffer.from(label), 24);
    h.set(Buffer.from('sha256'), 72);
    v.setBigUint64(256, 0n, false);
  }
  h.set(Buffer.from(uuid), 168);
  return h;
}

function fat16(serial: number, bootLabel: string, rootLabel?: string): { boot: Uint8Array; rootOffset: number; root: Uint8Array } {
  const b = new Uint8Array(512);
  const v = new DataView(b.buffer);
  b.set([0xeb, 0x3c, 0x90], 0);
  b.set(Buffer.from('MSDOS5.0'), 3);
  v.setUint16(11, 512, true);
  b[13] = 4; // sectors per cluster
  v.setUint16(14, 1, true); // reserved
  b[16] = 2; // FATs
  v.setUint16(17, 512, true); // root entries
  v.setUint16(19, 32768, true); // sectors (16 MiB)
  b[21] = 0xf8;
  v.setUint16(22, 32, true); // sectors per FAT
  b[36] = 0x80;
  b[38] = 0x29;
  v.setUint32(39, serial, true);
  b.set(Buffer.from(bootLabel.padEnd(11)), 43);
  b.set(Buffer.from('FAT16   '), 54);
  b[510] = 0x55;
  b[511] = 0xaa;
  const root = new Uint8Array(32 * 4);
  if (rootLabel) {
    root.set(Buffer.from(rootLabel.padEnd(11)), 0);
    root[11] = 0x08;
  }
  return { boot: b, rootOffset: (1 + 64) * 512, root };
}

describe('superblocks built from the specs, judged by blkid', () => {
  it('identifies XFS with its label and UUID', async () => {
    const f = sparseFile(t.path('xfs.img'), 16 * MiB);
    pokeFile(f, 0, xfs('xfsroot', '0b5e6f1d-2c3a-4b5c-8d9e-0f1a2b3c4d5e'));
    const c = await expectLikeBlkid(f);
    expect(c).toMatchObject({ type: 'xfs', blockSize: 4096, size: 16 * MiB });
  });

  it('rejects an XFS magic whose geometry is not sane, as blkid does', async () => {
    const f = sparseFile(t.path('xfs-bad.img'), 16 * MiB);
    const sb = xfs('x', '0b5e6f1d-2c3a-4b5c-8d9e-0f1a2b3c4d5e');
    sb[123] = 5; // inopblog no longer blocklog - inodelog
    pokeFile(f, 0, sb);
    expect((await expectLikeBlkid(f)).type).toBe('unknown');
  });

  it('identifies Btrfs with its label and filesystem UUID', async () => {
    const f = sparseFile(t.path('btrfs.img'), 64 * MiB);
    pokeFile(f, 65536, btrfs('pool', '6c8e1f2a-3b4c-4d5e-9f60-718293a4b5c6', 'aa8e1f2a-3b4c-4d5e-9f60-718293a4b5c6'));
    expect((await expectLikeBlkid(f)).type).toBe('btrfs');
  });

  it('identifies NTFS with the $Volume label and the volume serial as UUID', async () => {
    const f = sparseFile(t.path('ntfs.img'), 16 * MiB);
    const n = ntfs('Windows C', 0x1a2b3c4d5e6f7081n, 32768);
    pokeFile(f, 0, n.boot);
    pokeFile(f, 16384, n.mft);
    const c = await expectLikeBlkid(f);
    expect(c).toMatchObject({ type: 'ntfs', uuid: '1A2B3C4D5E6F7081', label: 'Windows C' });
  });

  it('identifies an LVM2 physical volume with its dashed UUID', async () => {
    const f = sparseFile(t.path('lvm.img'), 16 * MiB);
    pokeFile(f, 512, lvm2('AbCdEf0123456789GhIjKlMnOpQrStUv', 16 * MiB));
    const c = await expectLikeBlkid(f);
    expect(c).toMatchObject({ type: 'LVM2_member', uuid: 'AbCdEf-0123-4567-89Gh-IjKl-MnOp-QrStUv', size: 16 * MiB });
  });

  it('rejects an LVM2 label with a bad CRC, as blkid does', async () => {
    const f = sparseFile(t.path('lvm-bad.img'), 16 * MiB);
    const l = lvm2('AbCdEf0123456789GhIjKlMnOpQrStUv', 16 * MiB);
    l[40] ^= 1;
    pokeFile(f, 512, l);
    expect((await expectLikeBlkid(f)).type).toBe('unknown');
  });

  it('identifies LUKS1 and LUKS2 (with its label)', async () => {
    const f1 = sparseFile(t.path('luks1.img'), 4 * MiB);
    pokeFile(f1, 0, luks(1, '5d3a9c1e-7b2f-4e8a-9c6d-1f0e2d3c4b5a'));
    expect((await expectLikeBlkid(f1)).type).toBe('crypto_LUKS');
    const f2 = sparseFile(t.path('luks2.img'), 4 * MiB);
    pokeFile(f2, 0, luks(2, '6e4b0d2f-8c3a-4f9b-8d7e-2a1f3e4d5c6b', 'cryptroot'));
    expect(await expectLikeBlkid(f2)).toMatchObject({ type: 'crypto_LUKS', version: '2', label: 'cryptroot' });
  });

  it('identifies FAT16 and takes the label from the root directory, as blkid does', async () => {
    const f = sparseFile(t.path('fat16.img'), 16 * MiB);
    const fat = fat16(0x12345678, 'BOOTLBL', 'ROOTDIRLBL');
    pokeFile(f, 0, fat.boot);
    pokeFile(f, fat.rootOffset, fat.root);
    expect(await expectLikeBlkid(f)).toMatchObject({ type: 'vfat', version: 'FAT16', label: 'ROOTDIRLBL', uuid: '1234-5678' });
    const g = sparseFile(t.path('fat16-noroot.img'), 16 * MiB);
    const fat2 = fat16(0x0badcafe, 'BOOTLBL');
    pokeFile(g, 0, fat2.boot);
    // Without a directory label, blkid 2.38 reports no LABEL (the boot sector's is LABEL_FATBOOT).
    expect((await expectLikeBlkid(g)).label).toBeUndefined();
  });

  it('rejects a boot sector that only looks like FAT (no FATs), as blkid does', async () => {
    const f = sparseFile(t.path('fat-bad.img'), 16 * MiB);
    const fat = fat16(1, 'X');
    fat.boot[16] = 0;
    pokeFile(f, 0, fat.boot);
    expect((await expectLikeBlkid(f)).type).toBe('unknown');
  });
});

describe('bounded detection', () => {
  it('reports unknown for an empty or tiny device without reading past its end', async () => {
    expect(await detectContent(new MemoryDevice(0))).toEqual({ type: 'unknown' });
    expect(await detectContent(new MemoryDevice(700))).toEqual({ type: 'unknown' });
    expect(await detectContent(new MemoryDevice(8 * MiB))).toEqual({ type: 'unknown' });
  });

  it('follows a looping FAT32 root-directory chain for at most 100 clusters', async () => {
    const f = sparseFile(t.path('fatloop.img'), 40 * MiB);
    must('busybox', ['mkdosfs', '-n', 'LOOPY', f]);
    const dev = new MemoryDevice(40 * MiB);
    const fd = await FileDevice.open(f);
    const all = new Uint8Array(40 * MiB);
    await fd.read(all, 0);
    await fd.close();
    dev.writeSync(all, 0);
    const bpb = new DataView(all.buffer, 0, 512);
    const reserved = bpb.getUint16(14, true);
    const root = bpb.getUint32(44, true);
    // Root cluster's FAT entry points to itself, and its directory holds no label.
    dev.writeSync(Uint8Array.of(root & 0xff, (root >> 8) & 0xff, 0, 0), reserved * 512 + root * 4);
    const dataStart = (reserved + 2 * bpb.getUint32(36, true)) * 512;
    dev.writeSync(new Uint8Array(512 * all[13]!), dataStart + (root - 2) * 512 * all[13]!);
    let reads = 0;
    const counting = Object.assign(Object.create(dev), { read: (b: Uint8Array, o: number) => (reads++, dev.read(b, o)) });
    const c = await detectContent(counting);
    expect(c.type).toBe('vfat');
    expect(c.label).toBeUndefined(); // the directory holding the label is gone
    expect(reads).toBeLessThan(250);
  });
});
