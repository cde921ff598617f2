/**
 * xl.cfg(5) / xm configuration files → GuestDefinition.
 *
 * Follows the meaning libvirt's xen_common.c/xen_xl.c/xen_xm.c give the
 * settings (those are the facts the tests compare against):
 *   - memory/maxmem are MiB; maxmem defaults to memory, memory to 128.
 *   - vcpus (default 1) is the current count, maxvcpus the maximum; xm's
 *     vcpu_avail bitmap gives the current count as its population.
 *   - builder='hvm' (xm) or type='hvm'|'pv'|'pvh' (xl) pick the guest kind.
 *   - for HVM guests `kernel` naming hvmloader is the firmware (xm), any
 *     other kernel is a direct kernel boot (xl).
 *   - cmdline wins over root/extra; otherwise `root=ROOT EXTRA`.
 *   - booleans are numbers (non-zero) or the string "1".
 *   - a vif is bridged when it names a bridge or the vif-bridge script.
 *   - PV guests always have a Xen console (pty); HVM guests get serial=.
 *
 * Unknown keys are warnings (with file:line:column). Keys that only mean
 * something to Xen are warnings when their value changes behaviour, silent
 * when it is Xen's default.
 */

import { type CfgSetting, type CfgValue, cfgError, parseCfgSyntax, plain, where } from './cfgsyntax.js';
import {
  SpecError,
  parseCharSpec,
  parseDiskSpec,
  parseVfbSpec,
  parseVifSpec,
  vncGraphics,
} from './xenspec.js';
import type { GuestChar, GuestDefinition, GuestGraphics, LifecycleAction, VirtKind } from './types.js';

const MIB = 1024 * 1024;
/** Largest memory accepted, MiB (16 TiB: well above any x86 guest, far below 2^53 bytes). */
const MAX_MEMORY_MIB = 16 * 1024 * 1024;
/** Largest vCPU count accepted (qemu's x86 limit with x2APIC and q35). */
export const MAX_VCPUS = 4096;

const LIFECYCLE: LifecycleAction[] = [
  'destroy',
  'restart',
  'preserve',
  'rename-restart',
  'coredump-destroy',
  'coredump-restart',
  'soft-reset',
];

/** Keys read by the parser below. */
const HANDLED = new Set([
  'name', 'uuid', 'description', 'builder', 'type', 'memory', 'maxmem', 'vcpus', 'maxvcpus', 'vcpu_avail', 'cpus',
  'kernel', 'ramdisk', 'cmdline', 'root', 'extra', 'bootloader', 'bootargs', 'bootloader_args', 'boot', 'bios',
  'bios_path_override', 'on_poweroff', 'on_reboot', 'on_crash', 'localtime', 'rtc_timeoffset', 'hpet',
  'pae', 'acpi', 'apic', 'viridian', 'disk', 'vif', 'vfb', 'vnc', 'vncunused', 'vncdisplay', 'vnclisten', 'vncpasswd',
  'keymap', 'sdl', 'display', 'xauthority', 'opengl', 'spice', 'spicehost', 'spiceport', 'spicetls_port',
  'spicedisable_ticketing', 'spicepasswd', 'spiceagent_mouse', 'spice_clipboard_sharing', 'spicevdagent',
  'serial', 'parallel', 'soundhw', 'usbdevice', 'vga', 'stdvga', 'videoram', 'channel', 'device_model_override',
  'device_model', 'vkb', 'usb', 'usbctrl', 'xen_platform_pci', 'hap', 'passthrough', 'e820_host', 'tsc_mode',
  'timer_mode', 'shadow_memory', 'vncconsole', 'monitor', 'nographic', 'on_watchdog', 'on_soft_reset', 'acpi_s3',
  'acpi_s4', 'blkdev_start', 'nomigrate', 'claim_mode', 'max_grant_frames', 'max_maptrack_frames', 'oos',
]);

/**
 * Xen-only keys: silent when the value is one of the listed defaults, a
 * warning ("has no KVM meaning") otherwise. `undefined` defaults: always warn.
 */
const XEN_ONLY: Record<string, { defaults?: string[]; why: string }> = {
  device_model_override: { why: "Xen's device model path; libvirt picks the KVM host's emulator" },
  device_model: { why: "Xen's device model path; libvirt picks the KVM host's emulator" },
  device_model_version: { defaults: ['qemu-xen'], why: "Xen's device model flavour" },
  device_model_stubdomain_override: { defaults: ['0'], why: 'a Xen stub domain' },
  device_model_user: { why: 'the user Xen runs the device model as' },
  device_model_args: { why: 'extra arguments for Xen\'s qemu' },
  device_model_args_hvm: { why: 'extra arguments for Xen\'s qemu' },
  device_model_args_pv: { why: 'extra arguments for Xen\'s qemu' },
  vkb: { why: 'a Xen PV keyboard' },
  xen_platform_pci: { defaults: ['1'], why: 'the Xen platform PCI device' },
  hap: { defaults: ['1'], why: 'Xen hardware-assisted paging control (KVM always uses EPT/NPT when available)' },
  passthrough: { defaults: ['disabled'], why: 'Xen IOMMU passthrough mode' },
  e820_host: { defaults: ['0'], why: "the host's memory map for PCI passthrough" },
  tsc_mode: { defaults: ['default'], why: 'Xen TSC emulation mode' },
  timer_mode: { defaults: ['1', 'no_delay_for_missed_ticks'], why: 'Xen virtual timer mode' },
  shadow_memory: { why: 'Xen shadow page-table memory' },
  vncconsole: { defaults: ['0'], why: 'xm opening a VNC viewer on start' },
  monitor: { defaults: ['0'], why: "Xen's qemu monitor" },
  nographic: { defaults: ['0'], why: 'an xm display switch' },
  on_watchdog: { why: 'a Xen watchdog action' },
  on_soft_reset: { defaults: ['soft-reset'], why: 'a Xen soft-reset action' },
  blkdev_start: { why: 'the first Xen block device name' },
  nomigrate: { defaults: ['0'], why: 'Xen migration control' },
  claim_mode: { why: 'Xen memory claim mode' },
  max_grant_frames: { why: 'Xen grant table size' },
  max_maptrack_frames: { why: 'Xen grant table size' },
  oos: { defaults: ['1'], why: 'Xen out-of-sync shadow pages' },
  usb: { defaults: ['0', '1'], why: 'the HVM USB controller (libvirt adds one)' },
  usbctrl: { why: 'a Xen USB controller (libvirt adds one)' },
  acpi_s3: { defaults: ['1'], why: 'ACPI S3 control' },
  acpi_s4: { defaults: ['1'], why: 'ACPI S4 control' },
  opengl: { defaults: ['0'], why: 'SDL OpenGL' },
  spicevdagent: { defaults: ['0'], why: 'the SPICE guest agent channel' },
};

/** Recognised keys that carry host resources or Xen features with no direct KVM equivalent: always a warning. */
const DROPPED: Record<string, string> = {
  pci: 'PCI passthrough refers to the Xen host\'s devices; re-add it on the KVM host',
  pci_permissive: 'PCI passthrough option',
  pci_msitranslate: 'PCI passthrough option',
  pci_power_mgmt: 'PCI passthrough option',
  usbdev: 'USB passthrough refers to the Xen host\'s devices; re-add it on the KVM host',
  irqs: 'IRQ passthrough',
  iomem: 'I/O memory passthrough',
  ioports: 'I/O port passthrough',
  dtdev: 'device-tree passthrough',
  rdm: 'reserved device memory (passthrough)',
  gfx_passthru: 'graphics passthrough',
  vtpm: 'a Xen vTPM (add a <tpm> by hand)',
  vdispl: 'a Xen PV display',
  vsnd: 'a Xen PV sound device',
  p9: 'a Xen 9pfs share (add a <filesystem> by hand)',
  vusb: 'a Xen PV USB controller',
  cpuid: 'a Xen CPUID policy (choose a <cpu> model on the KVM host)',
  nestedhvm: 'nested virtualisation (use <cpu mode=\'host-passthrough\'> on the KVM host)',
  cpu_weight: 'a Xen credit-scheduler weight (libvirt: <cputune><shares>)',
  cpu_cap: 'a Xen credit-scheduler cap (libvirt: <cputune><quota>)',
  cpus_soft: 'Xen soft CPU affinity',
  pool: 'a Xen CPU pool',
  vnuma: 'a Xen virtual NUMA layout (libvirt: <cpu><numa>)',
  seclabel: 'a Xen FLASK security label',
  init_seclabel: 'a Xen FLASK security label',
  device_tree: 'a device tree (ARM)',
  altp2m: 'Xen alternate p2m',
  firmware_override: 'a Xen firmware path',
  acpi_firmware: 'extra ACPI tables (libvirt: <os><acpi><table>)',
  smbios_firmware: 'SMBIOS tables (libvirt: <sysinfo>)',
  ms_vm_genid: 'a VM generation ID (libvirt: <genid>)',
  stubdomain_memory: 'a Xen stub domain',
  stubdomain_kernel: 'a Xen stub domain',
  stubdomain_ramdisk: 'a Xen stub domain',
  maxmem_kb: 'Xen memory accounting',
  rtc_timeoffset_hvm: 'Xen RTC offset',
  vif2: 'a Xen netchannel2 interface',
  driver_domain: 'a Xen driver domain',
  gic_version: 'an ARM interrupt controller',
  nr_spis: 'ARM interrupts',
  mca_caps: 'Xen machine-check capabilities',
  vpmu: 'a Xen virtual PMU',
  suppress_vmdesc: 'Xen migration data',
  ioreq_server_pages: 'Xen device model pages',
  pvshim: 'a Xen PV shim',
  pvshim_path: 'a Xen PV shim',
  pvshim_cmdline: 'a Xen PV shim',
  pvshim_extra: 'a Xen PV shim',
  max_event_channels: 'Xen event channels',
  ioreq_server: 'Xen device model',
  dm_restrict: 'Xen device model sandboxing',
  xenstore_domid: 'Xen',
};

class Reader {
  readonly warnings: string[];
  private readonly used = new Set<string>();

  constructor(
    readonly fileName: string,
    readonly settings: Map<string, CfgSetting>,
    warnings: string[],
  ) {
    this.warnings = [...warnings];
  }

  has(key: string): boolean {
    return this.settings.has(key);
  }

  get(key: string): CfgSetting | undefined {
    this.used.add(key);
    return this.settings.get(key);
  }

  fail(s: CfgSetting | CfgValue, message: string, key?: string): never {
    throw cfgError(this.fileName, s.pos, message, key);
  }

  warn(s: CfgSetting | CfgValue | undefined, message: string): void {
    this.warnings.push(s ? `${where(this.fileName, s.pos)}: ${message}` : `${this.fileName}: ${message}`);
  }

  /** A string setting (numbers are accepted and rendered as written). */
  str(key: string): string | undefined {
    const s = this.get(key);
    if (!s) return undefined;
    const v = s.value;
    if (v.kind === 'string') return v.value;
    if (v.kind === 'number') return v.text;
    if (v.kind === 'none') return undefined;
    if (v.kind === 'bool') return v.value ? '1' : '0';
    // xl accepts a one-element list where a string is expected.
    if (v.kind === 'list' && v.items.length === 1 && v.items[0]!.kind === 'string') return v.items[0].value;
    this.fail(v, `'${key}' must be a string, not a list`, key);
  }

  /** An integer setting; strings holding decimal integers are accepted (as libvirt). */
  int(key: string, min: number, max: number): number | undefined {
    const s = this.get(key);
    if (!s) return undefined;
    const v = s.value;
    let n: number;
    if (v.kind === 'number') n = v.value;
    else if (v.kind === 'string' && /^\s*-?\d+\s*$/.test(v.value)) n = Number(v.value);
    else if (v.kind === 'bool') n = v.value ? 1 : 0;
    else if (v.kind === 'none') return undefined;
    else this.fail(v, `'${key}' must be a whole number, found ${JSON.stringify(plain(v))}`, key);
    if (!Number.isInteger(n) || n < min || n > max) {
      this.fail(v, `'${key}' = ${JSON.stringify(plain(v))} is out of range (${min}..${max})`, key);
    }
    return n;
  }

  /** A boolean: a non-zero number, or the string "1" (libvirt's reading), or True/False. */
  bool(key: string): boolean | undefined {
    const s = this.get(key);
    if (!s) return undefined;
    const v = s.value;
    if (v.kind === 'number') return v.value !== 0;
    if (v.kind === 'bool') return v.value;
    if (v.kind === 'string') return v.value.trim() === '1' || /^(true|yes|on)$/i.test(v.value.trim());
    if (v.kind === 'none') return undefined;
    this.fail(v, `'${key}' must be 0 or 1, not a list`, key);
  }

  /** A list of strings; a bare string counts as a one-element list. */
  strings(key: string): { value: string; item: CfgValue }[] | undefined {
    const s = this.get(key);
    if (!s) return undefined;
    const v = s.value;
    if (v.kind === 'string') return [{ value: v.value, item: v }];
    if (v.kind === 'none') return [];
    if (v.kind !== 'list') this.fail(v, `'${key}' must be a list of strings`, key);
    return v.items.map((item) => {
      if (item.kind !== 'string') this.fail(item, `'${key}' entries must be strings, found ${JSON.stringify(plain(item))}`, key);
      return { value: item.value, item };
    });
  }

  /** Run a spec parser, turning its SpecError into FILE:LINE:COL. */
  spec<T>(item: CfgValue, key: string, f: () => T): T {
    try {
      return f();
    } catch (e) {
      if (e instanceof SpecError) this.fail(item, `${key}: ${e.message}`, key);
      throw e;
    }
  }

  unusedKeys(): CfgSetting[] {
    return [...this.settings.values()].filter((s) => !this.used.has(s.key));
  }
}

function isHvmloader(path: string): boolean {
  return /(^|\/)hvmloader[^/]*$/.test(path);
}

function popcount(n: number): number {
  let c = 0;
  for (let x = n; x > 0; x = Math.floor(x / 2)) c += x % 2;
  return c;
}

const UUID_RE = /^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/;

export function normalizeUuid(u: string): string | undefined {
  const t = u.trim();
  if (!UUID_RE.test(t)) return undefined;
  const h = t.replace(/-/g, '').toLowerCase();
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Validate a cpuset (`0-3,^2,8`); undefined when it is not one. */
export function cpusetOk(s: string): boolean {
  return /^\s*\^?\d+(-\d+)?(\s*,\s*\^?\d+(-\d+)?)*\s*$/.test(s);
}

/**
 * Parse an xl or xm configuration file. Throws ImageError('invalid-format')
 * naming FILE:LINE:COLUMN for syntax errors and malformed values.
 */
export function parseXenConfig(text: string, fileName: string): GuestDefinition {
  const cfg = parseCfgSyntax(text, fileName);
  const r: Reader = new Reader(fileName, cfg.settings, cfg.warnings);

  // Guest kind.
  let virt: VirtKind = 'pv';
  const typeS = r.get('type');
  const type = r.str('type');
  if (type !== undefined) {
    if (type === 'pv' || type === 'pvh' || type === 'hvm') virt = type;
    else r.fail(typeS!, `type '${type}' is not pv, pvh or hvm`, 'type');
  } else if (r.str('builder') === 'hvm') {
    virt = 'hvm';
  } else {
    r.str('builder');
  }
  const hvm = virt === 'hvm';

  // Identity.
  let name = r.str('name');
  if (!name) {
    name = fileName.replace(/^.*\//, '').replace(/\.(cfg|conf|xl|xm)$/, '') || 'guest';
    r.warn(undefined, `no 'name' setting; using '${name}'`);
  }
  const uuidS = r.get('uuid');
  let uuid: string | undefined;
  const uuidText = r.str('uuid');
  if (uuidText !== undefined) {
    uuid = normalizeUuid(uuidText);
    if (!uuid) r.fail(uuidS!, `uuid '${uuidText}' is not a UUID`, 'uuid');
  }

  // Memory (MiB).
  let memMiB = r.int('memory', 1, MAX_MEMORY_MIB);
  if (memMiB === undefined) {
    memMiB = 128;
    r.warn(undefined, "no 'memory' setting; using Xen's default of 128 MiB");
  }
  let maxMiB = r.int('maxmem', 1, MAX_MEMORY_MIB) ?? memMiB;
  if (maxMiB < memMiB) {
    r.warn(r.get('maxmem'), `maxmem (${maxMiB} MiB) is below memory (${memMiB} MiB); using ${memMiB} MiB for both`);
    maxMiB = memMiB;
  }

  // vCPUs.
  let vcpus = r.int('vcpus', 1, MAX_VCPUS) ?? 1;
  let maxVcpus = r.int('maxvcpus', 1, MAX_VCPUS) ?? vcpus;
  if (maxVcpus < vcpus) {
    // xl: "maxvcpus ... vcpus are online at boot": more online than the maximum is a contradiction; keep the larger.
    r.warn(r.get('maxvcpus'), `maxvcpus (${maxVcpus}) is below vcpus (${vcpus}); using ${vcpus} as the maximum`);
    maxVcpus = vcpus;
  }
  const avail = r.int('vcpu_avail', 0, Number.MAX_SAFE_INTEGER);
  if (avail !== undefined && !r.has('maxvcpus')) {
    const online = popcount(maxVcpus >= 53 ? avail : avail % 2 ** maxVcpus);
    if (online > 0 && online <= maxVcpus) vcpus = online;
  }
  let cpuset: string | undefined;
  const cpusS = r.get('cpus');
  if (cpusS) {
    if (cpusS.value.kind === 'list') {
      r.warn(cpusS, `per-vCPU pinning (cpus as a list) dropped: pin vCPUs on the KVM host with <cputune><vcpupin>`);
    } else {
      const c = r.str('cpus')!;
      if (c === 'all' || c === '') cpuset = undefined;
      else if (cpusetOk(c)) cpuset = c.replace(/\s+/g, '');
      else r.warn(cpusS, `cpus '${c}' is not a CPU list (node: and socket: forms are Xen-only); dropped`);
    }
  }

  // Lifecycle.
  const action = (key: string, def: LifecycleAction): LifecycleAction => {
    const v = r.str(key);
    if (v === undefined) return def;
    if ((LIFECYCLE as string[]).includes(v)) return v as LifecycleAction;
    r.fail(r.get(key)!, `${key} '${v}' is not one of ${LIFECYCLE.join(', ')}`, key);
  };
  const onPoweroff = action('on_poweroff', 'destroy');
  const onReboot = action('on_reboot', 'restart');
  const onCrash = action('on_crash', 'restart');

  // Boot.
  const kernel = r.str('kernel') || undefined;
  const ramdisk = r.str('ramdisk') || undefined;
  const cmdlineKey = r.str('cmdline');
  const root = r.str('root') || undefined;
  const extra = r.str('extra') || undefined;
  let cmdline: string | undefined;
  if (cmdlineKey !== undefined) {
    cmdline = cmdlineKey;
    if (root || extra) r.warn(r.get('cmdline'), 'root= and extra= are ignored because cmdline= is set (as xl does)');
  } else if (root && extra) cmdline = `root=${root} ${extra}`;
  else if (root) cmdline = `root=${root}`;
  else if (extra) cmdline = extra;
  const bootloader = r.str('bootloader') || undefined;
  let bootloaderArgs = r.str('bootargs') || undefined;
  const blArgs = r.get('bootloader_args');
  if (blArgs) {
    const v = blArgs.value;
    bootloaderArgs = v.kind === 'list' ? v.items.map((i) => String(plain(i))).join(' ') : r.str('bootloader_args');
  }
  const boot: GuestDefinition['boot'] = { kind: 'kernel', firmware: 'bios', order: [] };
  if (hvm) {
    boot.kind = 'hvm';
    if (kernel && isHvmloader(kernel)) {
      boot.loader = kernel;
    } else if (kernel) {
      boot.kind = 'kernel';
      boot.kernel = kernel;
      boot.ramdisk = ramdisk;
      boot.cmdline = cmdline;
      boot.root = root;
      boot.extra = extra;
    }
    const bios = r.str('bios');
    if (bios === 'ovmf') boot.firmware = 'efi';
    else if (bios !== undefined && bios !== 'rombios' && bios !== 'seabios') r.warn(r.get('bios'), `bios '${bios}' unknown; using the KVM host's default BIOS`);
    const biosPath = r.str('bios_path_override');
    if (biosPath) r.warn(r.get('bios_path_override'), `bios_path_override '${biosPath}' is a Xen firmware build; libvirt picks the KVM host's ${boot.firmware === 'efi' ? 'OVMF' : 'SeaBIOS'}`);
    const order = r.str('boot') ?? 'c';
    for (const ch of order) {
      const dev = ch === 'a' ? 'fd' : ch === 'd' ? 'cdrom' : ch === 'n' ? 'network' : 'hd';
      if (!boot.order.includes(dev)) boot.order.push(dev);
    }
    if (bootloader) r.warn(r.get('bootloader'), `bootloader '${bootloader}' ignored: HVM guests boot from their firmware`);
  } else {
    if (bootloader) {
      boot.kind = 'pygrub';
      boot.bootloader = bootloader;
      boot.bootloaderArgs = bootloaderArgs;
    } else if (!kernel) {
      r.warn(undefined, 'neither bootloader nor kernel is set: the guest could not boot on Xen either');
    }
    boot.kernel = kernel;
    boot.ramdisk = ramdisk;
    boot.cmdline = cmdline;
    boot.root = root;
    boot.extra = extra;
    r.str('boot');
    r.str('bios');
  }

  // Features (HVM only; libvirt's defaults: pae, acpi, apic on).
  const features = {
    acpi: hvm ? (r.bool('acpi') ?? true) : true,
    apic: hvm ? (r.bool('apic') ?? true) : true,
    pae: hvm ? (r.bool('pae') ?? true) : false,
    viridian: hvm ? (r.bool('viridian') ?? false) : false,
  };
  if (!hvm) {
    for (const k of ['acpi', 'apic', 'pae', 'viridian']) r.get(k);
  }

  // Clock.
  const localtime = r.bool('localtime') ?? false;
  const clock: GuestDefinition['clock'] = { offset: localtime ? 'localtime' : 'utc', timers: [] };
  const rtcOffset = r.int('rtc_timeoffset', -(2 ** 31), 2 ** 31 - 1);
  if (hvm && rtcOffset) {
    clock.offset = 'variable';
    clock.adjustment = rtcOffset;
    clock.basis = localtime ? 'localtime' : 'utc';
  }
  const hpet = r.bool('hpet');
  if (hvm && hpet !== undefined) clock.timers.push({ name: 'hpet', present: hpet });

  // Disks.
  const disks: GuestDefinition['disks'] = [];
  const targets = new Set<string>();
  for (const { value, item } of r.strings('disk') ?? []) {
    const d = r.spec(item, 'disk', () => parseDiskSpec(value));
    if (targets.has(d.disk.target)) r.fail(item, `disk: virtual device ${d.disk.target} is used twice`, 'disk');
    targets.add(d.disk.target);
    for (const w of d.warnings) r.warn(item, w);
    disks.push(d.disk);
  }

  // Network cards.
  const nics: GuestDefinition['nics'] = [];
  for (const { value, item } of r.strings('vif') ?? []) {
    const n = r.spec(item, 'vif', () => parseVifSpec(value));
    for (const w of n.warnings) r.warn(item, w);
    nics.push(n.nic);
  }

  // Graphics.
  const graphics: GuestGraphics[] = [];
  if (r.bool('vnc')) {
    graphics.push(
      r.spec(r.get('vnc')!.value, 'vnc', () =>
        vncGraphics({
          unused: r.str('vncunused'),
          display: r.str('vncdisplay'),
          listen: r.str('vnclisten'),
          passwd: r.str('vncpasswd'),
          keymap: r.str('keymap'),
        }),
      ),
    );
  } else if (r.bool('sdl')) {
    graphics.push({ type: 'sdl', autoport: false, listens: [], display: r.str('display'), xauth: r.str('xauthority') });
  }
  if (hvm && r.bool('spice')) {
    const host = r.str('spicehost') || undefined;
    const port = r.int('spiceport', 0, 65535) ?? 0;
    const tlsPort = r.int('spicetls_port', 0, 65535) ?? 0;
    const noTicket = r.bool('spicedisable_ticketing') ?? false;
    const passwd = noTicket ? undefined : r.str('spicepasswd');
    if (!noTicket && passwd === undefined) r.fail(r.get('spice')!, "spice needs spicepasswd unless spicedisable_ticketing=1", 'spicepasswd');
    graphics.push({
      type: 'spice',
      autoport: !port && !tlsPort,
      port: port || undefined,
      tlsPort: tlsPort || undefined,
      listen: host,
      listens: host ? [{ type: 'address', address: host }] : [],
      passwd,
      mouseMode: r.bool('spiceagent_mouse') ? 'client' : 'server',
      clipboard: r.bool('spice_clipboard_sharing') ?? false,
    });
  }
  if (graphics.length === 0) {
    for (const { value, item } of r.strings('vfb') ?? []) {
      graphics.push(...r.spec(item, 'vfb', () => parseVfbSpec(value, r.warnings)));
    }
  } else if (r.has('vfb')) {
    r.warn(r.get('vfb'), 'vfb ignored: vnc/sdl settings already define the display');
  }
  // Read the display keys even when unused, so they are not reported as unknown.
  for (const k of ['vncunused', 'vncdisplay', 'vnclisten', 'vncpasswd', 'keymap', 'display', 'xauthority', 'sdl', 'spicehost', 'spiceport',
    'spicetls_port', 'spicedisable_ticketing', 'spicepasswd', 'spiceagent_mouse', 'spice_clipboard_sharing']) r.get(k);

  // Character devices.
  const serials: GuestChar[] = [];
  const consoles: GuestChar[] = [];
  const parallels: GuestChar[] = [];
  const channels: GuestChar[] = [];
  if (hvm) {
    const serialS = r.get('serial');
    if (serialS) {
      const entries = serialS.value.kind === 'list' ? r.strings('serial')! : [{ value: r.str('serial')!, item: serialS.value }];
      entries.forEach(({ value, item }, port) => {
        const c = r.spec(item, 'serial', () => parseCharSpec(value));
        if (c) serials.push({ ...c, port });
      });
    }
    const par = r.str('parallel');
    if (par !== undefined) {
      const c = r.spec(r.get('parallel')!.value, 'parallel', () => parseCharSpec(par));
      if (c) parallels.push({ ...c, port: 0 });
    }
    if (serials.length) consoles.push({ type: serials[0]!.type, path: serials[0]!.path, targetType: 'serial', port: 0 });
  } else {
    consoles.push({ type: 'pty', targetType: 'xen', port: 0 });
    for (const k of ['serial', 'parallel']) {
      const s = r.get(k);
      if (s && !(s.value.kind === 'string' && s.value.value === 'none')) r.warn(s, `${k} ignored: only HVM guests have emulated ${k} ports (PV guests use the Xen console)`);
    }
  }
  for (const { value, item } of r.strings('channel') ?? []) {
    const kv = new Map(value.split(',').map((p) => {
      const eq = p.indexOf('=');
      return [eq < 0 ? p.trim() : p.slice(0, eq).trim(), eq < 0 ? '' : p.slice(eq + 1).trim()] as [string, string];
    }));
    const conn = kv.get('connection');
    const targetName = kv.get('name');
    if (conn === 'pty') channels.push({ type: 'pty', targetType: 'xen', targetName });
    else if (conn === 'socket' && kv.get('path')) channels.push({ type: 'unix', path: kv.get('path'), listen: true, targetType: 'xen', targetName });
    else r.warn(item, `channel '${value}' dropped: only connection=pty and connection=socket,path=... are understood`);
  }

  // Emulated devices (HVM).
  const sounds: string[] = [];
  const soundhw = r.str('soundhw');
  if (soundhw !== undefined) {
    if (!hvm) r.warn(r.get('soundhw'), 'soundhw ignored: PV guests have no emulated sound card');
    else {
      const list = soundhw === 'all' ? ['sb16', 'es1370'] : soundhw.split(',').map((s) => s.trim()).filter(Boolean);
      for (const s of list) {
        const m = s === 'hda' ? 'ich6' : s;
        if (['sb16', 'es1370', 'ac97', 'ich6', 'ich9', 'pcspk', 'usb'].includes(m)) sounds.push(m);
        else r.warn(r.get('soundhw'), `sound card '${s}' unknown; dropped`);
      }
    }
  }
  const inputs: GuestDefinition['inputs'] = [];
  const usbdevS = r.get('usbdevice');
  if (usbdevS) {
    const list = usbdevS.value.kind === 'list' ? r.strings('usbdevice')!.map((x) => x.value) : [r.str('usbdevice')!];
    for (const u of list) {
      if (u === 'tablet' || u === 'mouse' || u === 'keyboard') inputs.push({ type: u, bus: 'usb' });
      else r.warn(usbdevS, `usbdevice '${u}' dropped (host USB devices refer to the Xen host)`);
    }
  }
  const videos: GuestDefinition['videos'] = [];
  if (hvm) {
    const vga = r.str('vga');
    const stdvga = r.bool('stdvga');
    const vram = r.int('videoram', 1, 1024 * 1024);
    let model: string | undefined;
    if (vga === 'stdvga' || (vga === undefined && stdvga)) model = 'vga';
    else if (vga === 'cirrus') model = 'cirrus';
    else if (vga === 'qxl') model = 'qxl';
    else if (vga === 'none') model = 'none';
    else if (vga !== undefined) r.warn(r.get('vga'), `vga '${vga}' unknown; the KVM default video card is used`);
    if (model) videos.push({ model, vram: vram !== undefined ? vram * 1024 : undefined });
  } else {
    for (const k of ['vga', 'stdvga', 'videoram']) r.get(k);
  }

  // Xen-only keys.
  for (const [key, info] of Object.entries(XEN_ONLY)) {
    const s = r.get(key);
    if (!s) continue;
    const v = s.value;
    const text = v.kind === 'list' ? JSON.stringify(plain(v)) : v.kind === 'none' ? '' : v.kind === 'bool' ? (v.value ? '1' : '0') : String(v.kind === 'number' ? v.text : v.value);
    if (info.defaults && info.defaults.includes(text)) continue;
    if (key === 'passthrough' && text === 'disabled') continue;
    r.warn(s, `${key} = ${JSON.stringify(text)} dropped: ${info.why}`);
  }
  for (const [key, why] of Object.entries(DROPPED)) {
    const s = r.get(key);
    if (s) r.warn(s, `${key} dropped: ${why}`);
  }
  // Keys read (or deliberately ignored) elsewhere.
  for (const k of HANDLED) r.get(k);
  for (const s of r.unusedKeys()) r.warn(s, `unknown key '${s.key}' ignored`);

  return {
    source: { fileName, syntax: 'xl' },
    name,
    uuid,
    description: r.str('description') || undefined,
    virt,
    memory: memMiB * MIB,
    maxMemory: maxMiB * MIB,
    vcpus,
    maxVcpus,
    cpuset,
    disks,
    nics,
    graphics,
    serials,
    consoles,
    parallels,
    channels,
    inputs,
    sounds,
    videos,
    boot,
    onPoweroff,
    onReboot,
    onCrash,
    features,
    clock,
    warnings: r.warnings,
  };
}

/** True when the text looks like XML rather than a configuration file. */
export function looksLikeXml(text: string): boolean {
  return /^\uFEFF?\s*</.test(text);
}
