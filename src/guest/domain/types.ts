/**
 * The intermediate guest definition shared by the Xen parsers (xl/xm
 * configuration files, Xen libvirt XML) and the KVM domain writer.
 *
 * It holds what a guest *is* (memory, CPUs, disks, network cards, consoles,
 * how it boots), in libvirt's vocabulary, with Xen's spelling kept where the
 * converter has to recognise it (disk targets `xvda`, bus `xen`, ...).
 * Everything a parser saw but cannot express here is reported in `warnings`
 * (one line per item) instead of being silently lost.
 *
 * Vocabulary (xl.cfg(5) / xm → libvirt → here):
 *   memory (MiB)            → <currentMemory>        → memory (bytes)
 *   maxmem (MiB)            → <memory>               → maxMemory (bytes)
 *   vcpus / maxvcpus        → <vcpu current=..>max   → vcpus / maxVcpus
 *   cpus                    → <vcpu cpuset=..>       → cpuset
 *   builder='hvm', type=    → <os><type>             → virt
 *   bootloader (pygrub)     → <bootloader>           → boot.kind 'pygrub'
 *   kernel/ramdisk/cmdline  → <os><kernel>...        → boot.kind 'kernel'
 *   disk = ['...']          → <disk>                 → disks
 *   vif = ['...']           → <interface>            → nics
 *   vfb / vnc / sdl / spice → <graphics>             → graphics
 *   serial / PV console     → <serial> / <console>   → serials / consoles
 */

export type VirtKind = 'pv' | 'pvh' | 'hvm';

export type LifecycleAction =
  | 'destroy'
  | 'restart'
  | 'preserve'
  | 'rename-restart'
  | 'coredump-destroy'
  | 'coredump-restart'
  | 'soft-reset';

export interface NetworkDiskSource {
  /** rbd, nbd, iscsi, ... */
  protocol: string;
  /** rbd: `pool/image`. */
  name: string;
  hosts: { name: string; port?: string }[];
}

export interface GuestDisk {
  device: 'disk' | 'cdrom' | 'floppy';
  /** How the source is reached: a file, a host block device, a network service, or nothing (empty CD-ROM). */
  sourceType: 'file' | 'block' | 'network' | 'none';
  /** Host path for file and block sources. */
  path?: string;
  network?: NetworkDiskSource;
  /** Image format as libvirt names it (raw, qcow2, qcow, qed, vpc, ...); undefined when the source does not say. */
  format?: string;
  /** Guest device name in the source: xvda, xvda1, hda, sdb, ... */
  target: string;
  /** Source bus (xen, ide, scsi, ...) when known. */
  bus?: string;
  readonly: boolean;
  shareable: boolean;
  /** Xen backend driver (phy, file, tap, tap2, qdisk, qemu); informational. */
  backend?: string;
}

export interface Bandwidth {
  /** KiB/s, as libvirt's <bandwidth> average/peak and KiB for burst. */
  average?: number;
  peak?: number;
  burst?: number;
}

export interface GuestNic {
  /** libvirt interface type: bridge, network, ethernet, direct, user, ... */
  type: string;
  mac?: string;
  bridge?: string;
  network?: string;
  /** <interface type='direct'>: host device and mode. */
  direct?: { dev: string; mode?: string };
  model?: string;
  /** Xen hotplug script (vif-bridge, vif-route, ...). */
  script?: string;
  /** Backend interface name (vifname / <target dev>). */
  ifname?: string;
  ips: string[];
  inbound?: Bandwidth;
  outbound?: Bandwidth;
  mtu?: number;
}

export interface GraphicsListen {
  type: 'address' | 'network' | 'socket' | 'none';
  address?: string;
  network?: string;
  socket?: string;
}

export interface GuestGraphics {
  type: string; // vnc, spice, sdl, ...
  /** -1 or undefined with autoport. */
  port?: number;
  tlsPort?: number;
  autoport: boolean;
  listen?: string;
  listens: GraphicsListen[];
  passwd?: string;
  keymap?: string;
  /** spice */
  mouseMode?: string;
  clipboard?: boolean;
  /** sdl */
  display?: string;
  xauth?: string;
}

/** A character device: serial port, console, parallel port or channel. */
export interface GuestChar {
  /** Source type: pty, file, dev, pipe, tcp, udp, unix, null, vc, stdio, ... */
  type: string;
  path?: string;
  /** tcp: host/service; udp: connect host/service. */
  host?: string;
  service?: string;
  listen?: boolean;
  protocol?: string;
  /** udp bind side. */
  bindHost?: string;
  bindService?: string;
  port?: number;
  /** console/channel target type: serial, xen, virtio, ... */
  targetType?: string;
  /** channel target name (org.qemu.guest_agent.0). */
  targetName?: string;
}

export interface GuestBoot {
  /**
   * pygrub: a bootloader run on the Xen host reads the guest's own boot menu.
   * kernel: a kernel named by path (PV, PVH, or an HVM direct kernel boot).
   * hvm: firmware boots from the guest's disks.
   */
  kind: 'pygrub' | 'kernel' | 'hvm';
  bootloader?: string;
  bootloaderArgs?: string;
  kernel?: string;
  ramdisk?: string;
  /** The kernel command line as the guest got it (cmdline, else `root=ROOT EXTRA`). */
  cmdline?: string;
  root?: string;
  extra?: string;
  /** HVM firmware. */
  firmware: 'bios' | 'efi';
  /** Xen's firmware path (hvmloader, ovmf.bin): informational. */
  loader?: string;
  /** HVM boot order, libvirt names. */
  order: ('hd' | 'cdrom' | 'network' | 'fd')[];
}

export interface GuestFeatures {
  acpi: boolean;
  apic: boolean;
  pae: boolean;
  /** Xen's Hyper-V enlightenments for Windows guests. */
  viridian: boolean;
}

export interface GuestTimer {
  name: string;
  present?: boolean;
  tickpolicy?: string;
}

export interface GuestClock {
  offset: 'utc' | 'localtime' | 'variable' | 'timezone';
  /** Seconds, with offset 'variable'. */
  adjustment?: number;
  basis?: 'utc' | 'localtime';
  timezone?: string;
  timers: GuestTimer[];
}

export interface GuestInput {
  type: string; // mouse, keyboard, tablet
  bus?: string; // xen, ps2, usb, virtio
}

export interface GuestVideo {
  model: string;
  vram?: number;
  heads?: number;
}

export interface GuestDefinition {
  /** Where it came from: the file name as given, and which syntax. */
  source: { fileName: string; syntax: 'xl' | 'xml' };
  name?: string;
  uuid?: string;
  description?: string;
  title?: string;
  virt: VirtKind;
  /** Guest architecture in the source (x86_64, i686); the KVM guest is x86_64 either way. */
  arch?: string;
  /** Current (balloon) memory, bytes. */
  memory: number;
  /** Maximum memory, bytes. */
  maxMemory: number;
  vcpus: number;
  maxVcpus: number;
  cpuset?: string;
  disks: GuestDisk[];
  nics: GuestNic[];
  graphics: GuestGraphics[];
  serials: GuestChar[];
  consoles: GuestChar[];
  parallels: GuestChar[];
  channels: GuestChar[];
  inputs: GuestInput[];
  sounds: string[];
  videos: GuestVideo[];
  boot: GuestBoot;
  onPoweroff: LifecycleAction;
  onReboot: LifecycleAction;
  onCrash: LifecycleAction;
  features: GuestFeatures;
  clock: GuestClock;
  /**
   * Things the parser read that have no place here (Xen-only settings,
   * host device passthrough, unknown keys, ...): one line each, prefixed
   * with the file name (and line:column for configuration files).
   */
  warnings: string[];
}
