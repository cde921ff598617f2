/**
 * Benchmark row: `imgtool wrap` against the manual pipeline a skilled user
 * would run today on the same input, in the same run:
 *   truncate + sfdisk + dd conv=sparse + e2fsck -fy + mkswap + qemu-img convert
 */

import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Inputs, type Row, pairRuns, timed } from './bench.js';

const CLI = fileURLToPath(new URL('../bin/main.js', import.meta.url));

export function wrapRows(inp: Inputs, runs: number): Row[] {
  const ours = path.join(inp.dir, 'wrap-imgtool.qcow2');
  const theirs = path.join(inp.dir, 'wrap-pipeline.qcow2');
  const scratch = path.join(inp.dir, 'wrap-pipeline.raw');
  const fsBytes = fs.statSync(inp.sparse).size;
  const mib = 1024 * 1024;
  const rootSectors = Math.ceil(fsBytes / mib) * 2048;
  const swapSectors = 1024 * 2048;
  const disk = mib + rootSectors * 512 + swapSectors * 512;
  const script = [
    'set -e',
    `rm -f ${scratch}`,
    `truncate -s ${disk} ${scratch}`,
    `printf 'label: dos\\nstart=2048, size=${rootSectors}, type=83, bootable\\nsize=${swapSectors}, type=82\\n' | sfdisk -q ${scratch}`,
    `dd if=${inp.sparse} of=${scratch} bs=4M seek=${mib} oflag=seek_bytes conv=sparse,notrunc status=none`,
    `e2fsck -fy '${scratch}?offset=${mib}' >/dev/null || [ $? -le 1 ]`,
    // mkswap 2.38 has no --offset: make the signature in a scratch file, copy its first page.
    `truncate -s ${swapSectors * 512} ${scratch}.swap && mkswap -q ${scratch}.swap`,
    `dd if=${scratch}.swap of=${scratch} bs=4096 count=1 seek=${mib + rootSectors * 512} oflag=seek_bytes conv=notrunc status=none`,
    `rm -f ${scratch}.swap`,
    `qemu-img convert -O qcow2 ${scratch} ${theirs}`,
    `rm -f ${scratch}`,
  ].join('\n');
  const row = pairRuns(
    'wrap 2 GiB ext3 + 1 GiB swap → qcow2 (vs truncate+sfdisk+dd+e2fsck+mkswap+qemu-img)',
    runs,
    () => (fs.rmSync(ours, { force: true }), timed(process.execPath, [CLI, 'wrap', inp.sparse, '--swap', '1G', '-o', ours])),
    () => (fs.rmSync(theirs, { force: true }), timed('bash', ['-c', script])),
    {
      peerName: 'pipeline',
      outputs: () => [fs.statSync(ours).blocks * 512, fs.statSync(theirs).blocks * 512],
      target: '≤ 1.0, output ≤ pipeline',
    },
  );
  fs.rmSync(ours, { force: true });
  fs.rmSync(theirs, { force: true });
  return [row];
}
