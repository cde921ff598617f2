import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { type CommandSpec, OUTPUT_OPTION, flag, list, printJson, str, wantsJson, warn } from '../command.js';
import { FORCE_OPTION } from '../common.js';
import { ImageError, ioError } from '../../core/errors.js';
import { refuseSameFile } from '../../core/output.js';
import { convertDomain, parseDiskArg, parseMapArgs } from '../../guest/domain/convert.js';

/** Guest definitions are small; a larger file is not one (and is not read into memory). */
const MAX_SOURCE_BYTES = 4 << 20;

function readSource(file: string): string {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw ioError(e, 'open', file);
  }
  try {
    const st = fs.fstatSync(fd);
    if (st.isDirectory()) throw new ImageError('usage', `${file} is a directory`, { path: file });
    const buf = Buffer.alloc(MAX_SOURCE_BYTES + 1);
    let n = 0;
    for (;;) {
      const got = fs.readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
      if (n > MAX_SOURCE_BYTES) {
        throw new ImageError('invalid-format', `${file} is larger than ${MAX_SOURCE_BYTES >> 20} MiB: not a Xen guest definition`, { path: file });
      }
    }
    return buf.subarray(0, n).toString('utf8');
  } catch (e) {
    throw ioError(e, 'read', file);
  } finally {
    fs.closeSync(fd);
  }
}

/** Write a text file atomically: a temporary sibling renamed into place. */
function writeAtomically(file: string, data: string, force: boolean, inputs: string[]): void {
  refuseSameFile(file, inputs);
  if (fs.existsSync(file) && !force) throw new ImageError('usage', `output ${file} exists: use --force to overwrite it`, { path: file });
  const temp = path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.${randomBytes(4).toString('hex')}.imgtool-tmp`);
  try {
    fs.writeFileSync(temp, data, { flag: 'wx', mode: 0o644 });
    fs.renameSync(temp, file);
  } catch (e) {
    try {
      fs.unlinkSync(temp);
    } catch {
      /* not created */
    }
    throw ioError(e, 'write', file);
  }
}

export const domainConvertCommand: CommandSpec = {
  name: 'domain convert',
  summary: 'turn a Xen guest definition (xl/xm config or Xen libvirt XML) into a KVM libvirt domain',
  usage: 'domain convert [options] SRC',
  positionals: { min: 1, max: 1 },
  options: [
    { name: 'out', short: 'o', type: 'string', valueName: 'OUT.xml', description: 'write the KVM domain XML here (default: standard output)' },
    { name: 'disk', type: 'string', multiple: true, valueName: 'PATH[:FORMAT]', description: "converted image for the source's next hard disk, in the source's order" },
    { name: 'bridge', type: 'string', multiple: true, valueName: 'XEN=KVM', description: "attach interfaces on Xen bridge XEN to KVM bridge KVM ('*' = all others)" },
    { name: 'network', type: 'string', multiple: true, valueName: 'XEN=NET', description: "attach interfaces on Xen bridge XEN to libvirt network NET ('*' = all others)" },
    { name: 'name', type: 'string', valueName: 'NEW', description: 'domain name (default: the Xen name)' },
    { name: 'boot', type: 'string', valueName: 'MODE', description: "'grub': boot from the disk; 'direct': boot --kernel/--initrd (or the source's)", default: 'grub' },
    { name: 'kernel', type: 'string', valueName: 'PATH', description: 'kernel on the KVM host (--boot direct)' },
    { name: 'initrd', type: 'string', valueName: 'PATH', description: 'initrd on the KVM host (--boot direct)' },
    { name: 'append', type: 'string', valueName: 'ARGS', description: 'kernel arguments added to the converted command line (--boot direct)' },
    { name: 'emulator', type: 'string', valueName: 'PATH', description: 'write <emulator>PATH</emulator> (default: none, libvirt picks the host\'s)' },
    FORCE_OPTION,
    OUTPUT_OPTION,
  ],
  details: `SRC is an xl or xm configuration file (Python-like KEY = VALUE lines) or
Xen libvirt XML (<domain type='xen'>, e.g. from 'virsh dumpxml').

Disks become virtio disks vda, vdb, ... (CD-ROMs: SATA sda, ...), driver qemu.
Each --disk replaces the next hard disk of the source (relative paths are made
absolute); disks without one keep their Xen path (with a warning). Interfaces
keep their MAC and bridge, model virtio. Memory and vCPUs are kept. Anything
with no KVM meaning is dropped with a warning on standard error ('warnings' in
--output json).

Boot: --boot grub (default) boots the disk's own bootloader (pygrub guests,
HVM guests, and images made bootable by 'imgtool wrap'). --boot direct boots
a kernel by path: --kernel/--initrd, else the source's kernel and ramdisk (paths
on the Xen host, warned); root=/dev/xvdX is renamed to /dev/vdX and Xen consoles
(hvc0, xvc0, xencons=) become console=tty0 console=ttyS0,115200.

Examples:
  imgtool domain convert /etc/xen/web.cfg --disk /var/lib/libvirt/images/web.qcow2:qcow2 -o web.xml
  imgtool domain convert web-xen.xml --bridge xenbr0=br0 --name web-kvm > web.xml
  imgtool domain convert web.cfg --boot direct --kernel /boot/vmlinuz-web --initrd /boot/initrd-web \\
      --disk web.img:raw -o web.xml && virsh define web.xml

Exit codes: 0 success; 2 usage (bad option, output exists); 3 invalid source
(the message names FILE:LINE:COLUMN); 5 I/O error.`,
  async run(args, ctx) {
    const src = args.positionals[0]!;
    const json = wantsJson(args);
    const boot = str(args, 'boot') ?? 'grub';
    if (boot !== 'grub' && boot !== 'direct') throw new ImageError('usage', `--boot must be grub or direct, not '${boot}'`);
    const text = readSource(src);
    // libvirt wants absolute paths: relative ones given here are taken from the current directory.
    const abs = (p: string | undefined) => (p === undefined ? undefined : path.resolve(p));
    const result = convertDomain(text, src, {
      disks: list(args, 'disk').map(parseDiskArg).map((d) => ({ ...d, path: path.resolve(d.path) })),
      bridges: parseMapArgs(list(args, 'bridge'), '--bridge'),
      networks: parseMapArgs(list(args, 'network'), '--network'),
      name: str(args, 'name'),
      boot,
      kernel: abs(str(args, 'kernel')),
      initrd: abs(str(args, 'initrd')),
      append: str(args, 'append'),
      emulator: abs(str(args, 'emulator')),
    });
    const out = str(args, 'out');
    if (out) writeAtomically(out, result.xml, flag(args, 'force'), [src]);
    if (json) {
      printJson(ctx, { source: src, output: out ?? null, warnings: result.warnings, xml: result.xml });
      return 0;
    }
    for (const w of result.warnings) warn(ctx, w);
    if (!out) ctx.stdout.write(result.xml);
    return 0;
  },
};
