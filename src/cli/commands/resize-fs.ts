/**
 * `imgtool resize-fs [-f FMT] [--partition N] IMG [SIZE]`: grow (or shrink)
 * the ext2/3/4 filesystem of an image, or of one partition, with resize2fs
 * (WebAssembly, src/fs/e2fsprogs.ts). e2fsck -fp runs first, as resize2fs
 * requires a freshly checked filesystem.
 */

import { type CommandSpec, OUTPUT_OPTION, flag, printJson, str, wantsJson } from '../command.js';
import { BACKING_OPTIONS, FORMAT_OPTION, openFromArgs } from '../common.js';
import { ImageError } from '../../core/errors.js';
import { formatSize, parseSize } from '../../core/size.js';
import { type FsckResult, e2fsck, prepareTool, rawHostFile, resize2fs } from '../../fs/e2fsprogs.js';
import { PARTITION_OPTION, WHOLE_OPTION, selectTarget, type Target } from './fsck.js';

export const resizeFsCommand: CommandSpec = {
  name: 'resize-fs',
  summary: 'grow (or shrink) the ext2/3/4 filesystem of an image or partition (resize2fs, built in)',
  usage: 'resize-fs [-f FMT] [--partition N | --whole] [--no-check] [--output json] IMG [SIZE]',
  positionals: { min: 1, max: 2 },
  options: [
    FORMAT_OPTION,
    PARTITION_OPTION,
    WHOLE_OPTION,
    { name: 'no-check', type: 'boolean', description: 'do not run e2fsck -fp first (resize2fs then refuses a filesystem mounted since its last check)' },
    OUTPUT_OPTION,
    ...BACKING_OPTIONS,
  ],
  details: `Without SIZE the filesystem grows to fill its partition (--partition N) or the whole image
(--whole or --partition 0, or by itself when the image has no partitions).
SIZE (512, 64k, 2M, 10G, ...) may also be smaller than the filesystem: resize2fs shrinks it
if the data fits. The partition table and the image size are not changed: grow the image
and the partition first, then the filesystem.

The filesystem is checked first as 'e2fsck -fp' would (resize2fs needs a freshly checked
filesystem); if that finds errors it cannot fix safely, nothing is resized: run
'imgtool fsck -y' first.

Examples:
  imgtool resize-fs --partition 1 disk.qcow2        # fill partition 1
  imgtool resize-fs xen-root.img 8G                 # a bare filesystem image, to 8 GiB
  imgtool resize-fs --output json -f vdi vm.vdi

Exit codes: 0 resized (or already that size); 2 usage (SIZE beyond the partition or below
what the data needs); 3 not an ext filesystem, or it has errors e2fsck -p cannot fix;
4 unsupported feature or missing WebAssembly build; 5 I/O error; 70 e2fsck or resize2fs
crashed (a WebAssembly trap: an internal error, reported as such); 130 interrupted.`,
  async run(args, ctx) {
    const file = args.positionals[0]!;
    const sizeArg = args.positionals[1];
    const size = sizeArg === undefined ? undefined : parseSize(sizeArg, 'SIZE');
    const json = wantsJson(args);
    prepareTool(flag(args, 'no-check') ? 'resize2fs' : 'e2fsck');
    const opened = await openFromArgs(file, args, { writable: true });
    let target: Target;
    let preen: FsckResult | undefined;
    let result;
    try {
      target = await selectTarget(opened.image, file, str(args, 'partition'), flag(args, 'whole'));
      if (size !== undefined && size > target.size) {
        throw new ImageError(
          'usage',
          `SIZE ${formatSize(size)} (${size} bytes) is larger than the ${target.partition ? `partition (${target.size} bytes)` : `image (${target.size} bytes)`}: grow it first`,
          { value: size },
        );
      }
      const echo = json ? undefined : (chunk: string) => ctx.stdout.write(chunk);
      const hostFile = rawHostFile(opened.driver.name, opened.file, target.offset);
      if (!flag(args, 'no-check')) {
        preen = await e2fsck(target.dev, { mode: 'preen', name: target.name, hostFile, onOutput: echo });
        if (preen.exitCode & ~3) {
          throw new ImageError(
            'corrupt',
            `e2fsck -fp found errors it cannot fix safely (exit ${preen.exitCode}: ${preen.status.join(', ')}); nothing was resized: run 'imgtool fsck -y${target.partition ? ` --partition ${target.partition}` : ''} ${file}' first`,
            { path: file },
          );
        }
      }
      result = await resize2fs(target.dev, { size, name: target.name, hostFile, onOutput: echo });
    } finally {
      await opened.image.close();
    }
    if (result.exitCode !== 0) {
      const why = result.output.trim().split('\n').filter((l) => l && !/^resize2fs \d/.test(l)).slice(-3).join(' / ');
      const tooSmall = /smaller than minimum|No space left|too large|too many block group/i.test(result.output);
      throw new ImageError(tooSmall ? 'usage' : 'corrupt', `resize2fs failed (exit ${result.exitCode}): ${why}`, { path: file });
    }
    if (json) {
      printJson(ctx, {
        image: file,
        format: opened.driver.name,
        partition: target.partition ?? null,
        offset: target.offset,
        'partition-size': target.size,
        'old-size': result.oldSize,
        'new-size': result.newSize,
        fsck: preen ? { 'exit-code': preen.exitCode, status: preen.status, output: preen.output } : null,
        output: result.output,
      });
    } else {
      const where = target.partition ? `${file} partition ${target.partition}` : file;
      const change =
        result.newSize === result.oldSize
          ? `already ${formatSize(result.newSize)} (${result.newSize} bytes): nothing to do`
          : `${formatSize(result.oldSize)} -> ${formatSize(result.newSize)} (${result.oldSize} -> ${result.newSize} bytes)`;
      ctx.stdout.write(`${where}: filesystem ${change}\n`);
    }
    return 0;
  },
};
