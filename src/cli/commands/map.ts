import { type CommandSpec, OUTPUT_OPTION, str, wantsJson } from '../command.js';
import { BACKING_OPTIONS, FORMAT_OPTION, openFromArgs } from '../common.js';
import { layerNames, mapEntryJson, mapImage } from '../../maintenance/map.js';
import { parseSize } from '../../core/size.js';
import { escapeLine } from '../../core/escape.js';
import { ImageError } from '../../core/errors.js';

/** printf's `%#-16x`: 0x-prefixed hex (plain 0 for zero), left-justified in 16 columns. */
const hex16 = (n: number) => (n === 0 ? '0' : '0x' + n.toString(16)).padEnd(16);

/** One entry as qemu-img prints it: `{ "start": 0, "length": 65536, ...}`. */
const qemuJsonLine = (e: object) => `{ ${Object.entries(e).map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(', ')}}`;

export const mapCommand: CommandSpec = {
  name: 'map',
  summary: "the image's allocation map, as qemu-img map prints it",
  usage: 'map [-f FMT] [--output json|human] [--start-offset N] [--max-length N] [--backing] IMG',
  positionals: { min: 1, max: 1 },
  options: [
    FORMAT_OPTION,
    OUTPUT_OPTION,
    { name: 'start-offset', type: 'string', valueName: 'OFFSET', description: 'map from this guest offset' },
    { name: 'max-length', type: 'string', valueName: 'LENGTH', description: 'map at most this many bytes' },
    ...BACKING_OPTIONS,
  ],
  details: `JSON fields as 'qemu-img map --output=json': start, length, depth, present, zero,
data, compressed, and offset (where the run's bytes lie contiguously in that
layer's file). Runs an overlay leaves unallocated are looked up in its backing
file only with --backing; without it they are reported at depth 0 with
"present": false and "zero": false (their contents are the unread backing file's).
Raw images are reported as data throughout (imgtool does not look for holes).

Example:
  imgtool map --output json disk.qcow2`,
  async run(args, ctx) {
    const json = wantsJson(args);
    const path = args.positionals[0]!;
    const opened = await openFromArgs(path, args, { metadataOnly: true });
    try {
      const image = opened.image;
      const start = str(args, 'start-offset') !== undefined ? parseSize(str(args, 'start-offset')!, '--start-offset') : 0;
      if (start > image.size) throw new ImageError('usage', `--start-offset ${start} is past the end of the image (${image.size})`);
      const max = str(args, 'max-length') !== undefined ? parseSize(str(args, 'max-length')!, '--max-length') : image.size;
      const length = Math.min(max, image.size - start);
      if (json) {
        const lines: string[] = [];
        for await (const e of mapImage(image, start, length)) lines.push(qemuJsonLine(mapEntryJson(e)));
        ctx.stdout.write(`[${lines.join(',\n')}]\n`);
        return 0;
      }
      const names = await layerNames(image, path);
      ctx.stdout.write(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
      for await (const e of mapImage(image, start, length)) {
        if (!e.data) continue;
        if (e.offset === undefined) {
          ctx.stderr.write('imgtool: File contains external, encrypted or compressed clusters.\n');
          return 1;
        }
        ctx.stdout.write(`${hex16(e.start)}${hex16(e.length)}${hex16(e.offset)}${escapeLine(names.get(e.layer) ?? path)}\n`);
      }
      return 0;
    } finally {
      await opened.image.close();
    }
  },
};
