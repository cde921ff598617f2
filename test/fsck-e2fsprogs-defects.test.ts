/**
 * What `imgtool fsck` got wrong on e2fsprogs' own test images (issue 16 item
 * 6), each judged by the host's e2fsprogs 1.47.0 (and blkid):
 *  - a bare filesystem whose block 0 ends in 55 AA (an empty MBR) was refused
 *    as a partitioned disk;
 *  - a damaged primary superblock was refused before e2fsck could repair it
 *    from a backup;
 *  - a WebAssembly trap was reported as running out of memory;
 *  - e2fsck restarting forever printed without end.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { ImageError } from '../src/core/errors.js';
import { ToolCrashError, e2fsck, resize2fs } from '../src/fs/e2fsprogs.js';
import { MAX_IDENTICAL_ROUNDS, RESTART_LINE, ToolOutput } from '../src/fs/tool-output.js';
import { imgtool, must, run, tempDir } from './helpers/peers.js';
import {
  KINDS,
  blockSize,
  copy,
  e2fsprogsTestImages,
  gunzipTo,
  hostFsck,
  hostFsckUntilLoop,
  implant,
  makeTree,
  mbrDisk,
  mkfs,
  onFile,
  overwrite,
} from './e2fsprogs-fixtures.js';

const t = tempDir('imgtool-fsck-defects-');
afterAll(() => t.cleanup());

const images = new Map(e2fsprogsTestImages().map((i) => [i.name, i.gz]));
const testImage = (name: string, as = name) => gunzipTo(images.get(name)!, t.path(`${as}.img`));

describe('a bare filesystem whose first sector looks like an empty MBR', () => {
  it("is checked whole (f_dup_de: blkid sees both a dos table and ext2): same exit code as the host's e2fsck", () => {
    const img = testImage('f_dup_de');
    const probe = must('blkid', ['-p', '-o', 'export', img]);
    expect(probe).toMatch(/^PTTYPE=dos$/m);
    expect(probe).toMatch(/^TYPE=ext2$/m);
    const host = hostFsck(copy(img, t.path('f_dup_de-host.img')), '-fn');
    expect(host.status).toBe(4);
    for (const choice of [[], ['--partition', '0'], ['--whole']]) {
      const r = imgtool(['fsck', '-fn', ...choice, img]);
      expect({ choice, status: r.status, stderr: r.stderr }).toEqual({ choice, status: host.status, stderr: '' });
      expect(r.stdout).toMatch(/^Pass 5: Checking group summary information$/m);
    }
    const both = imgtool(['fsck', '--whole', '--partition', '1', img]);
    expect(both.status).toBe(16);
    expect(both.stderr).toMatch(/--whole and --partition 1 contradict each other/);
  });

  it('is grown whole by resize-fs, which the host e2fsck then finds clean', () => {
    const img = mkfs(t.path('mbr-looking.img'), KINDS[0]!, 16, makeTree(t.path('tree')), { fileMiB: 24, blockSize: 1024 });
    overwrite(img, 510, [0x55, 0xaa]);
    expect(must('blkid', ['-p', '-o', 'export', img])).toMatch(/^PTTYPE=dos$/m);
    const r = imgtool(['resize-fs', img]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/filesystem 16 MiB -> 24 MiB/);
    expect(hostFsck(img, '-fn').status).toBe(0);
    expect(must('dumpe2fs', ['-h', img])).toMatch(new RegExp(`^Block count:\\s+${(24 << 20) / blockSize(img)}$`, 'm'));
  });

  it('is told apart from a disk with partitions, which still needs --partition N (or --whole)', () => {
    const disk = mbrDisk(t.path('parted.raw'), 16);
    implant(mkfs(t.path('parted-fs.img'), KINDS[3]!, 16), disk.path, disk.parts[0]!.start);
    const r = imgtool(['fsck', disk.path]);
    expect(r.status).toBe(16);
    expect(r.stderr).toMatch(/has an MBR partition table: choose the filesystem with --partition N \(partitions: 1 \(ext4, 16 MiB\), 2 \(unknown content, 8 MiB\)\), or --whole/);
    expect(imgtool(['fsck', '--partition', '1', disk.path]).status).toBe(0);
    // --whole gives e2fsck the whole disk, which it declines as the host's e2fsck does.
    const whole = imgtool(['fsck', '--whole', disk.path]);
    expect(whole.status).toBe(hostFsck(copy(disk.path, t.path('parted-host.raw')), '-fn').status);
    expect(whole.stdout + whole.stderr).toMatch(/Bad magic number in super-block/);
    expect(whole.stderr).toMatch(/^imgtool: not an ext2\/3\/4 filesystem: .*; e2fsck gave up \(exit 8\)$/m);
  });
});

describe('a damaged primary superblock is for e2fsck to repair', () => {
  it('s_log_block_size out of range: e2fsck -n and -y give the host e2fsck exit codes, and -y leaves it clean', async () => {
    const img = mkfs(t.path('bad-log.img'), KINDS[0]!, 16, t.path('tree'), { blockSize: 1024 });
    overwrite(img, 1024 + 0x18, [0x20, 0, 0, 0]); // s_log_block_size = 32 (valid: 0..6)
    const hostN = hostFsck(copy(img, t.path('bad-log-host-n.img')), '-fn');
    const hostY = hostFsck(copy(img, t.path('bad-log-host-y.img')), '-fy');
    expect(hostN.output).toMatch(/Superblock invalid, trying backup blocks/);
    expect(hostY.status).toBe(1);
    const n = await onFile(img, false, (dev) => e2fsck(dev, { mode: 'check' }));
    expect(n.exitCode).toBe(hostN.status);
    const cli = imgtool(['fsck', '-n', img]);
    expect(cli.status).toBe(hostN.status);
    expect(cli.stderr).toBe('');
    const y = await onFile(img, true, (dev) => e2fsck(dev, { mode: 'repair' }));
    expect(y.exitCode).toBe(hostY.status);
    expect(hostFsck(img, '-fn').status).toBe(0);
  });

  it('resize2fs, which never looks for a backup, still refuses it before it runs, naming the field', async () => {
    const img = mkfs(t.path('bad-log-resize.img'), KINDS[0]!, 8, undefined, { fileMiB: 12 });
    overwrite(img, 1024 + 0x18, [0x20, 0, 0, 0]);
    const err = await onFile(img, true, (dev) => resize2fs(dev)).catch((e) => e);
    expect(err).toBeInstanceOf(ImageError);
    expect(err.message).toBe('ext superblock: s_log_block_size (at offset 1048, value 32) is out of range (0..6); resize2fs not run');
  });
});

describe('a crash of e2fsck is reported as a crash', () => {
  it("f_h_badroot (the host's e2fsck segfaults on it): a WebAssembly trap, exit 8, never 'out of memory'", async () => {
    const img = testImage('f_h_badroot');
    const host = hostFsck(copy(img, t.path('f_h_badroot-host.img')), '-fn');
    expect(host.status).toBe(8);
    expect(host.output).toMatch(/Signal \(11\) SIGSEGV/);
    const err = await onFile(img, false, (dev) => e2fsck(dev, { mode: 'check' })).catch((e) => e);
    expect(err).toBeInstanceOf(ToolCrashError);
    expect(err.message).toMatch(/^e2fsck crashed \(WebAssembly trap: memory access out of bounds\) \(last output: /);
    const r = imgtool(['fsck', '-n', img]);
    expect(r.status).toBe(8);
    expect(r.stderr).toMatch(/^imgtool: e2fsck crashed \(WebAssembly trap: memory access out of bounds\)/m);
    expect(r.stderr).not.toMatch(/memory(?! access)/);
  });
});

describe('e2fsck restarting forever', () => {
  for (const name of ['f_misstable', 'f_illitable_flexbg']) {
    it(`${name} (the host's e2fsck -fn restarts forever too): a few rounds shown, then stopped with exit 8`, async () => {
      const img = testImage(name);
      expect((await hostFsckUntilLoop(copy(img, t.path(`${name}-host.img`)), '-fn')).status).toBe('loop');
      const r = imgtool(['fsck', '-fn', img]);
      expect(r.status).toBe(8);
      expect(r.stdout.split(RESTART_LINE).length - 1).toBe(3);
      expect(r.stdout).toMatch(new RegExp(`^\\[imgtool: \\.\\.\\. the round above repeated ${MAX_IDENTICAL_ROUNDS - 1} more times \\(e2fsck restarted with the same messages each time\\)\\]$`, 'm'));
      expect(r.stdout.length).toBeLessThan(64 << 10);
      expect(r.stderr).toMatch(
        new RegExp(`^imgtool: e2fsck is looping: it restarted ${MAX_IDENTICAL_ROUNDS} times in a row printing the same messages each time \\(last: .*Restarting e2fsck from the beginning\\.\\.\\.\\); stopped it\\. A check \\(-n\\) cannot make the repair it restarts for`, 'm'),
      );
      const err = await onFile(img, false, (dev) => e2fsck(dev, { mode: 'check' })).catch((e) => e);
      expect(err).toBeInstanceOf(ImageError);
      expect(err.kind).toBe('corrupt');
    });
  }

  for (const name of ['f_misstable', 'f_illitable', 'f_itable_collision']) {
    it(`${name} repaired (-fy), restarting as e2fsck legitimately does: not stopped, the host's exit code`, async () => {
      const img = testImage(name, `${name}-y`);
      const host = hostFsck(copy(img, t.path(`${name}-y-host.img`)), '-fy');
      expect(host.output).toMatch(/Restarting e2fsck from the beginning/);
      const r = await onFile(img, true, (dev) => e2fsck(dev, { mode: 'repair' }));
      expect(r.exitCode).toBe(host.status);
      expect(r.output).not.toMatch(/\[imgtool:/);
    });
  }
});

describe('ToolOutput', () => {
  const collect = () => {
    const out: string[] = [];
    return { out, sink: new ToolOutput((fd, text) => out.push(`${fd}:${text}`)) };
  };

  it('passes legitimate repetition through untouched (one message thousands of times, spread out or not)', () => {
    const { out, sink } = collect();
    let expected = '';
    for (let i = 0; i < 5000; i++) {
      const text = `Group 1 block(s) in use but group is marked BLOCK_UNINIT\nFix? no\n\n${i % 7 === 0 ? `Inode ${i} is bad.  Clear? no\n\n` : ''}`;
      expected += text;
      // Written in odd pieces, as a pipe delivers it.
      sink.write(1, text.slice(0, 5));
      sink.write(1, text.slice(5));
    }
    sink.end();
    expect(sink.loop).toBeUndefined();
    expect(out.map((l) => l.slice(2)).join('')).toBe(expected);
  });

  it('prints restart rounds that differ, holds back identical ones, and flags a loop after the limit', () => {
    const { out, sink } = collect();
    sink.write(1, 'e2fsck 1.47.0\n');
    sink.write(2, 'Group descriptors look bad\n');
    sink.write(1, `Relocating...\n${RESTART_LINE}\n`);
    for (let round = 0; round < MAX_IDENTICAL_ROUNDS + 1 && !sink.loop; round++) {
      sink.write(2, 'Group descriptors look bad\n');
      sink.write(1, `Error writing block 142.  Ignore error? no\n\n${RESTART_LINE}\n`);
    }
    expect(sink.loop?.rounds).toBe(MAX_IDENTICAL_ROUNDS);
    sink.end();
    const text = out.join('');
    expect(text.split(RESTART_LINE).length - 1).toBe(3);
    expect(out.at(-1)).toBe(`1:[imgtool: ... the round above repeated ${MAX_IDENTICAL_ROUNDS - 1} more times (e2fsck restarted with the same messages each time)]\n`);
  });

  it('shows a round that starts like the last one but then differs, in full and in order', () => {
    const { out, sink } = collect();
    const round = (last: string) => sink.write(1, `a\nb\n${last}\n${RESTART_LINE}\n`);
    round('c');
    round('c'); // the same as the first: the next ones are held back while they match
    round('c'); // held back, then dropped
    round('d'); // differs at its third line: the count of hidden rounds, then its held lines
    sink.end();
    const c = `a\nb\nc\n${RESTART_LINE}\n`;
    const hidden = '[imgtool: ... the round above repeated 1 more time (e2fsck restarted with the same messages each time)]\n';
    expect(out.join('').replace(/^1:/gm, '')).toBe(`${c}${c}${hidden}a\nb\nd\n${RESTART_LINE}\n`);
    expect(sink.loop).toBeUndefined();
  });
});

// The host e2fsck used above is the judge; make sure it is the version whose test images these are.
it('the judge is e2fsck 1.47.0', () => {
  expect(run('e2fsck', ['-V']).stderr).toMatch(/^e2fsck 1\.47\.0 /);
});
