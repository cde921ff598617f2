/**
 * Every CLI command, in the order `imgtool --help` lists them, loaded lazily:
 * only the invoked command's module (and what it imports: a format driver,
 * the WebAssembly e2fsprogs, the HTTP client) is loaded, so `imgtool info`
 * does not pay for `wrap`'s guest code. The name and summary here are what
 * `imgtool --help` shows without loading anything; test/cli-index.test.ts
 * keeps them equal to each command's own spec.
 */
import type { CommandSpec } from '../command.js';

export interface CommandEntry {
  name: string;
  summary: string;
  load(): Promise<CommandSpec>;
}

export const COMMAND_INDEX: CommandEntry[] = [
  { name: 'convert', summary: 'convert an image from one format to another, copying only allocated data', load: async () => (await import('./convert.js')).convertCommand },
  { name: 'info', summary: 'describe an image: format, virtual size, allocation, format-specific fields', load: async () => (await import('./info.js')).infoCommand },
  { name: 'wrap', summary: 'turn a bare ext2/3/4 filesystem (a Xen guest disk) into a partitioned, bootable KVM disk', load: async () => (await import('./wrap.js')).wrapCommand },
  { name: 'part list', summary: 'show the partition table (MBR, GPT or none) and what each partition holds', load: async () => part('part list') },
  { name: 'part create', summary: 'write an MBR partition table (primary partitions, 1 MiB aligned), creating the image if needed', load: async () => part('part create') },
  { name: 'part mkswap', summary: 'write a Linux swap signature (as mkswap does) on a partition or a whole image', load: async () => part('part mkswap') },
  { name: 'guest fix', summary: 'make a partitioned Xen guest disk boot under KVM: fstab, consoles, boot configs, GRUB or direct boot', load: async () => (await import('./guest.js')).guestFixCommand },
  { name: 'domain convert', summary: 'turn a Xen guest definition (xl/xm config or Xen libvirt XML) into a KVM libvirt domain', load: async () => (await import('./domain.js')).domainConvertCommand },
  { name: 'fsck', summary: 'check or repair the ext2/3/4 filesystem of an image (e2fsck -f, built in)', load: async () => (await import('./fsck.js')).fsckCommand },
  { name: 'resize-fs', summary: 'grow (or shrink) the ext2/3/4 filesystem of an image or partition (resize2fs, built in)', load: async () => (await import('./resize-fs.js')).resizeFsCommand },
  { name: 'map', summary: "the image's allocation map, as qemu-img map prints it", load: async () => (await import('./map.js')).mapCommand },
  { name: 'compare', summary: 'compare the contents of two images, as qemu-img compare does', load: async () => (await import('./compare.js')).compareCommand },
  { name: 'measure', summary: 'the file size a new image needs, as qemu-img measure reports it', load: async () => (await import('./measure.js')).measureCommand },
  { name: 'create', summary: 'create a new empty image (or an overlay on a backing file), as qemu-img create', load: async () => (await import('./create.js')).createCommand },
  { name: 'snapshot', summary: "list an image's internal snapshots (qcow2), as qemu-img snapshot -l", load: async () => (await import('./snapshot.js')).snapshotCommand },
  { name: 'resize', summary: "change an image's virtual size, as qemu-img resize", load: async () => (await import('./resize.js')).resizeCommand },
  { name: 'check', summary: 'check an image for consistency (and repair it), as qemu-img check', load: async () => (await import('./check.js')).checkCommand },
];

async function part(name: string): Promise<CommandSpec> {
  const spec = (await import('./part.js')).PART_COMMANDS.find((c) => c.name === name);
  if (!spec) throw new Error(`part.js has no command '${name}'`);
  return spec;
}

/** Every command's full spec (tests, help checks): loads every module. */
export async function loadAllCommands(): Promise<CommandSpec[]> {
  return Promise.all(COMMAND_INDEX.map((c) => c.load()));
}
