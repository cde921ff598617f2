import { type CommandSpec, OUTPUT_OPTION, printJson, wantsJson } from '../command.js';
import { BACKING_OPTIONS, DISK_OPTION, FORMAT_OPTION, openFromArgs } from '../common.js';
import { describe } from '../../formats/index.js';
import { formatSize } from '../../core/size.js';
import { escapeLine } from '../../core/escape.js';
import { BACKING_CHAIN_OPTION, infoChain } from './info-chain.js';

export const infoCommand: CommandSpec = {
  name: 'info',
  summary: 'describe an image: format, virtual size, allocation, format-specific fields',
  usage: 'info [-f FMT] [--output json] IMG',
  positionals: { min: 1, max: 1 },
  options: [FORMAT_OPTION, DISK_OPTION, OUTPUT_OPTION, ...BACKING_OPTIONS, BACKING_CHAIN_OPTION],
  details: `The JSON output uses the field names and value types of 'qemu-img info --output=json'.
A backing file is reported, never opened (unless --backing).

Example:
  imgtool info --output json disk.qcow2`,
  async run(args, ctx) {
    if (args.values['backing-chain'] === true) return infoChain(args, ctx, (a) => infoCommand.run(a, ctx));
    const path = args.positionals[0]!;
    // Warnings are part of what info reports (a `warnings` key, or lines at the end), not stderr noise.
    const opened = await openFromArgs(path, args, { metadataOnly: true, warn: () => {} });
    try {
      const info = await describe(opened);
      if (wantsJson(args)) {
        printJson(ctx, info);
        return 0;
      }
      const lines = [
        `image: ${escapeLine(info.filename)}`,
        `file format: ${info.format}`,
        `virtual size: ${formatSize(info['virtual-size'])} (${info['virtual-size']} bytes)`,
      ];
      if (info['actual-size'] !== undefined) lines.push(`disk size: ${formatSize(info['actual-size'])}`);
      if (info['cluster-size'] !== undefined) lines.push(`cluster_size: ${info['cluster-size']}`);
      if (info['backing-filename']) {
        lines.push(`backing file: ${escapeLine(info['backing-filename'])}`);
        if (info['backing-filename-format']) lines.push(`backing file format: ${escapeLine(info['backing-filename-format'])}`);
      }
      if (info['dirty-flag']) lines.push('dirty flag: yes');
      if (info.snapshots?.length) {
        lines.push('Snapshot list:', 'ID        TAG               VM SIZE                DATE       VM CLOCK     ICOUNT');
        for (const s of info.snapshots) {
          const date = new Date(s['date-sec'] * 1000).toISOString().replace('T', ' ').slice(0, 19);
          const clock = s['vm-clock-sec'];
          const hms = `${String(Math.floor(clock / 3600)).padStart(4, '0')}:${String(Math.floor(clock / 60) % 60).padStart(2, '0')}:${String(clock % 60).padStart(2, '0')}.${String(Math.floor(s['vm-clock-nsec'] / 1e6)).padStart(3, '0')}`;
          lines.push(`${escapeLine(s.id).padEnd(10)}${escapeLine(s.name).padEnd(18)}${formatSize(s['vm-state-size']).padStart(7)} ${date} ${hms} ${s.icount ?? ''}`);
        }
      }
      const fs = info['format-specific'];
      if (fs) {
        lines.push('Format specific information:');
        for (const [k, v] of Object.entries(fs.data)) lines.push(`    ${k}: ${escapeLine(typeof v === 'object' ? JSON.stringify(v) : String(v))}`);
      }
      if (info.warnings?.length) {
        lines.push('Warnings (fields qemu ignores too; the data reads as it would there):');
        for (const w of info.warnings) lines.push(`    ${escapeLine(w)}`);
      }
      ctx.stdout.write(lines.join('\n') + '\n');
    } finally {
      await opened.image.close();
    }
    return 0;
  },
};
