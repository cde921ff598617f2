/**
 * Benchmark row: `imgtool wrap` against the manual pipeline a skilled user
 * would run today on the same input, in the same run:
 *   truncate + sfdisk + dd conv=sparse + e2fsck -fy + mkswap + qemu-img convert
 */

import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { type Inputs, type Row, pairRuns, timed } from './bench.js';

const CLI = fileURLToPath(new URL('../bin/main.js', import.meta.url));

export function wrapRows(inp: Inputs, runs: number): Row[] {
  const rows = [wrapRow('wrap 2 GiB ext3 + 1 GiB swap → qcow2 (vs truncate+sfdisk+dd+e2fsck+mkswap+qemu-img)', inp, inp.sparse, runs)];
  const guest = debianGuest(inp.dir);
  if (guest) {
    rows.push(wrapRow('wrap 2 GiB ext3 Debian-style guest (kernel, 90 MB modules, zstd initrd without virtio) → qcow2, guest fixed', inp, guest, runs));
    fs.rmSync(guest, { force: true });
  }
  return rows;
}

/**
 * A guest shaped like the Xen fleet's: 2 GiB ext3 with /usr/share's files, a
 * sysvinit inittab, eth0, and Debian's cloud kernel with an initrd built
 * by initramfs-tools' rules but without virtio (its modules in the guest), so
 * wrap inspects and extends the initrd. The kernel package comes from the
 * test cache or apt-get download; undefined (row skipped, said on stderr)
 * when neither works.
 */
export function debianGuest(dir: string): string | undefined {
  const cache = fileURLToPath(new URL('../../test/.cache/', import.meta.url));
  let deb = fs.existsSync(cache) ? fs.readdirSync(cache).find((n) => /^linux-image-.*cloud-amd64.*\.deb$/.test(n)) : undefined;
  const work = path.join(dir, 'guest-bench');
  fs.mkdirSync(work, { recursive: true });
  try {
    if (deb) deb = path.join(cache, deb);
    else {
      execFileSync('sh', ['-c', `cd ${work} && apt-get download -q linux-image-cloud-amd64 >/dev/null 2>&1 || true; ls ${work}`]);
      const got = fs.readdirSync(work).find((n) => n.endsWith('.deb'));
      if (!got) throw new Error('no Debian kernel package (apt-get download linux-image-cloud-amd64 failed)');
      const meta = path.join(work, got);
      execFileSync('dpkg-deb', ['-x', meta, path.join(work, 'meta')]);
      const dep = execFileSync('dpkg-deb', ['-f', meta, 'Depends'], { encoding: 'utf8' }).match(/linux-image-[^ ,]+/)?.[0];
      if (!dep) throw new Error('the kernel metapackage names no kernel');
      execFileSync('sh', ['-c', `cd ${work} && apt-get download -q ${dep} >/dev/null`]);
      deb = path.join(work, fs.readdirSync(work).find((n) => n.startsWith(dep) && n.endsWith('.deb'))!);
    }
    const root = path.join(work, 'root');
    const script = [
      'set -e',
      `mkdir -p ${root}/etc/network ${root}/usr && cp -a /usr/share ${root}/usr/`,
      `dpkg-deb -x ${deb} ${root}`,
      `V=$(ls ${root}/lib/modules)`,
      `printf '/dev/xvda1 / ext3 defaults 0 1\n/dev/xvda2 none swap sw 0 0\n' > ${root}/etc/fstab`,
      `printf 'id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\nco:2345:respawn:/sbin/getty hvc0 9600 vt100\nxc:2345:respawn:/sbin/getty xvc0 9600 vt100\n' > ${root}/etc/inittab`,
      `printf 'auto eth0\niface eth0 inet dhcp\n' > ${root}/etc/network/interfaces`,
      `depmod -b ${root} $V`,
      // conf/initramfs.conf marks an initramfs-tools initrd, as Debian's are: wrap then adds the virtio modules to it.
      `mkdir -p ${work}/ird/conf ${work}/ird/lib/modules && touch ${work}/ird/conf/initramfs.conf && cp -a ${root}/lib/modules/$V ${work}/ird/lib/modules/ && find ${work}/ird -name 'virtio*' -delete`,
      `(cd ${work}/ird && find . | cpio -o -H newc 2>/dev/null | zstd -q -T2 > ${root}/boot/initrd.img-$V)`,
      `mke2fs -q -F -t ext3 -d ${root} ${path.join(dir, 'guest.img')} 2G`,
    ].join('\n');
    execFileSync('bash', ['-c', script], { stdio: 'ignore' });
    return path.join(dir, 'guest.img');
  } catch (e) {
    process.stderr.write(`bench: the Debian-style guest row is skipped: ${(e as Error).message}\n`);
    return undefined;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function wrapRow(name: string, inp: Inputs, input: string, runs: number): Row {
  const ours = path.join(inp.dir, 'wrap-imgtool.qcow2');
  const theirs = path.join(inp.dir, 'wrap-pipeline.qcow2');
  const scratch = path.join(inp.dir, 'wrap-pipeline.raw');
  const fsBytes = fs.statSync(input).size;
  const mib = 1024 * 1024;
  const rootSectors = Math.ceil(fsBytes / mib) * 2048;
  const swapSectors = 1024 * 2048;
  const disk = mib + rootSectors * 512 + swapSectors * 512;
  const script = [
    'set -e',
    `rm -f ${scratch}`,
    `truncate -s ${disk} ${scratch}`,
    `printf 'label: dos\\nstart=2048, size=${rootSectors}, type=83, bootable\\nsize=${swapSectors}, type=82\\n' | sfdisk -q ${scratch}`,
    `dd if=${input} of=${scratch} bs=4M seek=${mib} oflag=seek_bytes conv=sparse,notrunc status=none`,
    `e2fsck -fy '${scratch}?offset=${mib}' >/dev/null || [ $? -le 1 ]`,
    // mkswap 2.38 has no --offset: make the signature in a scratch file, copy its first page.
    `truncate -s ${swapSectors * 512} ${scratch}.swap && mkswap -q ${scratch}.swap`,
    `dd if=${scratch}.swap of=${scratch} bs=4096 count=1 seek=${mib + rootSectors * 512} oflag=seek_bytes conv=notrunc status=none`,
    `rm -f ${scratch}.swap`,
    `qemu-img convert -O qcow2 ${scratch} ${theirs}`,
    `rm -f ${scratch}`,
  ].join('\n');
  const row = pairRuns(
    name,
    runs,
    () => (fs.rmSync(ours, { force: true }), timed(process.execPath, [CLI, 'wrap', input, '--swap', '1G', '-o', ours])),
    () => (fs.rmSync(theirs, { force: true }), timed('bash', ['-c', script])),
    {
      peerName: 'pipeline',
      outputs: () => [fs.statSync(ours).blocks * 512, fs.statSync(theirs).blocks * 512],
      target: '≤ 1.0, output ≤ pipeline',
    },
  );
  fs.rmSync(ours, { force: true });
  fs.rmSync(theirs, { force: true });
  return row;
}
