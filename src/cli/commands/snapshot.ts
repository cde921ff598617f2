import { type CommandSpec, flag } from '../command.js';
import { FORMAT_OPTION, openFromArgs } from '../common.js';
import { snapshotTable } from '../../maintenance/snapshots.js';
import { ImageError } from '../../core/errors.js';

export const snapshotCommand: CommandSpec = {
  name: 'snapshot',
  summary: "list an image's internal snapshots (qcow2), as qemu-img snapshot -l",
  usage: 'snapshot -l [-f FMT] IMG',
  positionals: { min: 1, max: 1 },
  options: [FORMAT_OPTION, { name: 'list', short: 'l', type: 'boolean', description: 'list the snapshots' }],
  details: `Creating, applying and deleting snapshots (qemu-img's -c, -a, -d) are not
supported yet. An image without snapshots (or a format without them)
prints nothing.

Example:
  imgtool snapshot -l disk.qcow2`,
  async run(args, ctx) {
    if (!flag(args, 'list')) throw new ImageError('usage', 'snapshot: only -l (list) is supported');
    const opened = await openFromArgs(args.positionals[0]!, args, { metadataOnly: true });
    try {
      const snapshots = (await opened.image.info()).snapshots ?? [];
      if (snapshots.length) ctx.stdout.write(snapshotTable(snapshots));
      return 0;
    } finally {
      await opened.image.close();
    }
  },
};
