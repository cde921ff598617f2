/**
 * Xen libvirt domain XML (`<domain type='xen'>`, as `virsh dumpxml` writes
 * it for the xen/libxl driver, formatdomain.html) → GuestDefinition.
 *
 * Vocabulary: <os><type> linux|xen = PV, hvm = HVM, xenpvh = PVH;
 * <bootloader> (pygrub) and <bootloader_args>; <memory> is the maximum and
 * <currentMemory> the balloon target (scaled integers, default KiB);
 * <vcpu current='N'>MAX</vcpu>.
 *
 * Elements with no place in the intermediate definition become one warning
 * each (with FILE:LINE:COLUMN); elements Xen always has and that carry no
 * choice of the user (xenbus/ide controllers, the xen memballoon, addresses)
 * are dropped silently because the KVM writer re-creates their equivalent.
 */

import { ImageError } from '../../core/errors.js';
import { attr, elWhere, kid, kids, parseXmlStrict, text } from './xmlutil.js';
import { normalizeUuid, MAX_VCPUS } from './xenconfig.js';
import { normalizeMac, SpecError } from './xenspec.js';
import type {
  Bandwidth,
  GuestChar,
  GuestDefinition,
  GuestDisk,
  GuestGraphics,
  GuestNic,
  LifecycleAction,
  VirtKind,
} from './types.js';

/** libvirt's scaled-integer units (virScaleInteger). */
const UNITS: Record<string, number> = {
  b: 1,
  byte: 1,
  bytes: 1,
  k: 1024,
  kib: 1024,
  kb: 1000,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  mb: 1000 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  gb: 1000 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  tb: 1000 ** 4,
  p: 1024 ** 5,
  pib: 1024 ** 5,
  pb: 1000 ** 5,
};

/** 16 TiB: the largest guest memory accepted. */
const MAX_MEMORY = 16 * 1024 ** 4;

const LIFECYCLE = ['destroy', 'restart', 'preserve', 'rename-restart', 'coredump-destroy', 'coredump-restart', 'soft-reset'];

/** Top-level elements with no KVM translation here (one warning each). */
const TOP_DROPPED: Record<string, string> = {
  cpu: 'the CPU model/topology (choose one for the KVM host)',
  cputune: 'CPU tuning',
  numatune: 'NUMA tuning',
  memtune: 'memory tuning',
  blkiotune: 'block I/O tuning',
  memoryBacking: 'memory backing',
  maxMemory: 'memory hotplug slots',
  vcpus: 'per-vCPU settings',
  iothreads: 'I/O threads',
  resource: 'resource partition',
  seclabel: 'a security label of the Xen host',
  keywrap: 'key wrapping',
  idmap: 'ID mapping',
  sysinfo: 'SMBIOS data',
  genid: 'the VM generation ID',
  pm: 'power management',
  perf: 'perf events',
  metadata: 'application metadata',
  launchSecurity: 'launch security',
};

const DEVICE_DROPPED: Record<string, string> = {
  hostdev: "a host device of the Xen host (re-add passthrough on the KVM host)",
  redirdev: 'USB redirection',
  smartcard: 'a smartcard',
  watchdog: 'a watchdog',
  rng: 'a random number generator',
  tpm: 'a TPM',
  filesystem: 'a shared filesystem',
  hub: 'a USB hub',
  panic: 'a panic device',
  shmem: 'shared memory',
  iommu: 'an IOMMU',
  vsock: 'a vsock',
  lease: 'a lock lease',
  nvram: 'NVRAM',
  crypto: 'a crypto device',
  audio: 'an audio backend',
};

class XmlReader {
  readonly warnings: string[] = [];
  constructor(readonly fileName: string) {}

  fail(el: Element, message: string, field?: string): never {
    throw new ImageError('invalid-format', `${elWhere(this.fileName, el)}: ${message}`, { path: this.fileName, field });
  }

  warn(el: Element, message: string): void {
    this.warnings.push(`${elWhere(this.fileName, el)}: ${message}`);
  }

  /** A non-negative integer attribute/text, validated. */
  int(el: Element, value: string | undefined, what: string, min: number, max: number): number | undefined {
    if (value === undefined || value === '') return undefined;
    if (!/^\s*\d+\s*$/.test(value)) this.fail(el, `${what} '${value}' is not a whole number`, what);
    const n = Number(value);
    if (n < min || n > max) this.fail(el, `${what} ${n} is out of range (${min}..${max})`, what);
    return n;
  }

  /** <memory unit='..'>N</memory> → bytes. */
  memory(el: Element): number {
    const unit = (attr(el, 'unit') ?? 'KiB').toLowerCase();
    const mult = UNITS[unit];
    if (!mult) this.fail(el, `unknown memory unit '${attr(el, 'unit')}'`, el.tagName);
    const t = text(el) ?? '';
    if (!/^\d+$/.test(t)) this.fail(el, `<${el.tagName}> '${t}' is not a whole number`, el.tagName);
    const n = Number(t);
    if (!Number.isSafeInteger(n) || n * mult > MAX_MEMORY) this.fail(el, `<${el.tagName}> ${t} ${unit} is larger than ${MAX_MEMORY / 1024 ** 4} TiB`, el.tagName);
    // Round to whole KiB, as libvirt does.
    return Math.ceil((n * mult) / 1024) * 1024;
  }
}

function bandwidth(r: XmlReader, el: Element | undefined): Bandwidth | undefined {
  if (!el) return undefined;
  const b: Bandwidth = {
    average: r.int(el, attr(el, 'average'), 'bandwidth average', 0, 2 ** 32),
    peak: r.int(el, attr(el, 'peak'), 'bandwidth peak', 0, 2 ** 32),
    burst: r.int(el, attr(el, 'burst'), 'bandwidth burst', 0, 2 ** 32),
  };
  return b;
}

function charDev(r: XmlReader, el: Element): GuestChar {
  const type = attr(el, 'type') ?? 'pty';
  const c: GuestChar = { type };
  const sources = kids(el, 'source');
  for (const s of sources) {
    const mode = attr(s, 'mode');
    if (type === 'tcp') {
      c.host = attr(s, 'host');
      c.service = attr(s, 'service');
      c.listen = mode === 'bind';
    } else if (type === 'udp') {
      if (mode === 'bind') {
        c.bindHost = attr(s, 'host');
        c.bindService = attr(s, 'service');
      } else {
        c.host = attr(s, 'host');
        c.service = attr(s, 'service');
      }
    } else if (type === 'unix') {
      c.path = attr(s, 'path');
      c.listen = mode === 'bind';
    } else {
      c.path = attr(s, 'path');
    }
  }
  if (type === 'pty') c.path = undefined; // a pty path is the Xen host's runtime state
  const proto = kid(el, 'protocol');
  if (proto) c.protocol = attr(proto, 'type');
  const target = kid(el, 'target');
  if (target) {
    c.targetType = attr(target, 'type');
    c.targetName = attr(target, 'name');
    c.port = r.int(target, attr(target, 'port'), 'target port', 0, 65535);
  }
  return c;
}

function disk(r: XmlReader, el: Element): GuestDisk | undefined {
  const type = attr(el, 'type') ?? 'file';
  const device = attr(el, 'device') ?? 'disk';
  if (device !== 'disk' && device !== 'cdrom' && device !== 'floppy') {
    r.warn(el, `disk device '${device}' dropped (only disk, cdrom and floppy are converted)`);
    return undefined;
  }
  const target = kid(el, 'target');
  const dev = attr(target, 'dev');
  if (!target || !dev) r.fail(el, '<disk> has no <target dev=...>', 'target');
  const driver = kid(el, 'driver');
  const source = kid(el, 'source');
  const d: GuestDisk = {
    device,
    sourceType: 'file',
    target: dev,
    bus: attr(target, 'bus'),
    readonly: !!kid(el, 'readonly') || device === 'cdrom',
    shareable: !!kid(el, 'shareable'),
    backend: attr(driver, 'name'),
    format: attr(driver, 'type'),
  };
  // Xen's blktap names: 'aio' is raw, 'vhd' is qemu's vpc.
  if (d.format === 'aio') d.format = 'raw';
  else if (d.format === 'vhd') d.format = 'vpc';
  if (type === 'file') {
    d.path = attr(source, 'file');
    d.sourceType = d.path ? 'file' : 'none';
  } else if (type === 'block') {
    d.path = attr(source, 'dev');
    d.sourceType = d.path ? 'block' : 'none';
  } else if (type === 'network') {
    if (!source) r.fail(el, "<disk type='network'> has no <source>", 'source');
    d.sourceType = 'network';
    d.network = {
      protocol: attr(source, 'protocol') ?? '',
      name: attr(source, 'name') ?? '',
      hosts: kids(source, 'host').map((h) => ({ name: attr(h, 'name') ?? '', port: attr(h, 'port') })),
    };
    if (kid(el, 'auth')) r.warn(el, `disk ${dev}: <auth> refers to a secret on the Xen host; define the secret on the KVM host and add <auth> again`);
  } else {
    r.warn(el, `disk ${dev}: source type '${type}' is kept as a file path`);
    d.path = attr(source, 'file') ?? attr(source, 'dev') ?? attr(source, 'name');
    d.sourceType = d.path ? 'file' : 'none';
  }
  if (d.sourceType === 'none' && device === 'disk') r.fail(el, `disk ${dev} has no source (only CD-ROMs and floppies may be empty)`, 'source');
  return d;
}

function nic(r: XmlReader, el: Element): GuestNic {
  const type = attr(el, 'type') ?? 'ethernet';
  const n: GuestNic = { type, ips: [] };
  const mac = attr(kid(el, 'mac'), 'address');
  if (mac !== undefined) {
    try {
      n.mac = normalizeMac(mac);
    } catch (e) {
      if (e instanceof SpecError) r.fail(kid(el, 'mac')!, e.message, 'mac');
      throw e;
    }
  }
  const source = kid(el, 'source');
  if (type === 'bridge') n.bridge = attr(source, 'bridge');
  else if (type === 'network') n.network = attr(source, 'network');
  else if (type === 'direct') n.direct = { dev: attr(source, 'dev') ?? '', mode: attr(source, 'mode') };
  n.script = attr(kid(el, 'script'), 'path');
  n.ifname = attr(kid(el, 'target'), 'dev');
  n.model = attr(kid(el, 'model'), 'type');
  for (const ip of kids(el, 'ip')) {
    const a = attr(ip, 'address');
    if (a) n.ips.push(a);
  }
  const bw = kid(el, 'bandwidth');
  if (bw) {
    n.inbound = bandwidth(r, kid(bw, 'inbound'));
    n.outbound = bandwidth(r, kid(bw, 'outbound'));
  }
  const mtu = kid(el, 'mtu');
  if (mtu) n.mtu = r.int(mtu, attr(mtu, 'size'), 'mtu size', 68, 65535);
  for (const c of kids(el)) {
    if (['mac', 'source', 'script', 'target', 'model', 'ip', 'bandwidth', 'mtu', 'address', 'alias'].includes(c.tagName)) continue;
    r.warn(c, `interface ${n.mac ?? ''}: <${c.tagName}> dropped`.replace('  ', ' '));
  }
  return n;
}

function graphics(r: XmlReader, el: Element): GuestGraphics {
  const type = attr(el, 'type') ?? 'vnc';
  const portText = attr(el, 'port');
  const port = portText === undefined ? undefined : portText === '-1' ? -1 : r.int(el, portText, 'graphics port', 0, 65535);
  const tls = attr(el, 'tlsPort');
  const g: GuestGraphics = {
    type,
    port,
    tlsPort: tls === undefined || tls === '-1' ? undefined : r.int(el, tls, 'graphics tlsPort', 0, 65535),
    autoport: attr(el, 'autoport') === 'yes' || port === -1,
    listen: attr(el, 'listen'),
    listens: [],
    passwd: attr(el, 'passwd'),
    keymap: attr(el, 'keymap'),
    display: attr(el, 'display'),
    xauth: attr(el, 'xauth'),
  };
  for (const l of kids(el, 'listen')) {
    const lt = attr(l, 'type') ?? 'address';
    if (lt === 'address' || lt === 'network' || lt === 'socket' || lt === 'none') {
      g.listens.push({ type: lt, address: attr(l, 'address'), network: attr(l, 'network'), socket: attr(l, 'socket') });
    }
  }
  const mouse = kid(el, 'mouse');
  if (mouse) g.mouseMode = attr(mouse, 'mode');
  const clip = kid(el, 'clipboard');
  if (clip) g.clipboard = attr(clip, 'copypaste') === 'yes';
  return g;
}

/**
 * Parse Xen libvirt XML. Throws ImageError('invalid-format') naming
 * FILE:LINE:COLUMN for malformed XML and bad values, and for a domain that
 * is not a Xen domain.
 */
export function parseXenXml(textIn: string, fileName: string): GuestDefinition {
  const root = parseXmlStrict(textIn, fileName);
  const r: XmlReader = new XmlReader(fileName);
  if (root.tagName !== 'domain') r.fail(root, `root element is <${root.tagName}>, not <domain>`);
  const dtype = attr(root, 'type');
  if (dtype !== 'xen' && dtype !== 'xenlight') {
    r.fail(root, `<domain type='${dtype ?? ''}'> is not a Xen domain (expected type='xen')`, 'type');
  }

  const os = kid(root, 'os');
  const otype = kid(os, 'type');
  const ostype = text(otype) ?? 'linux';
  let virt: VirtKind;
  if (ostype === 'hvm') virt = 'hvm';
  else if (ostype === 'xenpvh') virt = 'pvh';
  else if (ostype === 'linux' || ostype === 'xen') virt = 'pv';
  else r.fail(otype ?? root, `<os><type>${ostype}</type> is not linux, xen, xenpvh or hvm`, 'os/type');

  const uuidEl = kid(root, 'uuid');
  let uuid: string | undefined;
  if (uuidEl) {
    uuid = normalizeUuid(text(uuidEl) ?? '');
    if (!uuid) r.fail(uuidEl, `uuid '${text(uuidEl)}' is not a UUID`, 'uuid');
  }
  const name = text(kid(root, 'name'));
  if (!name) r.fail(root, '<domain> has no <name>', 'name');

  const memEl = kid(root, 'memory');
  const curEl = kid(root, 'currentMemory');
  if (!memEl && !curEl) r.fail(root, '<domain> has no <memory>', 'memory');
  let maxMemory = memEl ? r.memory(memEl) : r.memory(curEl!);
  let memory = curEl ? r.memory(curEl) : maxMemory;
  if (memory > maxMemory) {
    r.warn(curEl!, `<currentMemory> is above <memory>; using ${maxMemory / 1024} KiB for both`);
    memory = maxMemory;
  }
  if (memory === 0 || maxMemory === 0) r.fail(memEl ?? curEl!, 'memory is zero', 'memory');
  maxMemory = Math.max(maxMemory, memory);

  const vcpuEl = kid(root, 'vcpu');
  let maxVcpus = 1;
  let vcpus = 1;
  let cpuset: string | undefined;
  if (vcpuEl) {
    maxVcpus = r.int(vcpuEl, text(vcpuEl), 'vcpu', 1, MAX_VCPUS) ?? 1;
    vcpus = r.int(vcpuEl, attr(vcpuEl, 'current'), 'vcpu current', 1, MAX_VCPUS) ?? maxVcpus;
    if (vcpus > maxVcpus) r.fail(vcpuEl, `vcpu current='${vcpus}' is above the maximum ${maxVcpus}`, 'vcpu');
    cpuset = attr(vcpuEl, 'cpuset');
  }

  // Boot.
  const boot: GuestDefinition['boot'] = { kind: virt === 'hvm' ? 'hvm' : 'kernel', firmware: 'bios', order: [] };
  const bootloader = text(kid(root, 'bootloader'));
  const kernel = text(kid(os, 'kernel')) || undefined;
  const initrd = text(kid(os, 'initrd')) || undefined;
  const cmdline = text(kid(os, 'cmdline')) || undefined;
  if (virt !== 'hvm' && bootloader) {
    boot.kind = 'pygrub';
    boot.bootloader = bootloader;
    boot.bootloaderArgs = text(kid(root, 'bootloader_args')) || undefined;
  } else if (virt === 'hvm' && kernel) {
    boot.kind = 'kernel';
  }
  if (virt === 'hvm' && bootloader) r.warn(kid(root, 'bootloader')!, `<bootloader> ignored: HVM guests boot from their firmware`);
  boot.kernel = kernel;
  boot.ramdisk = initrd;
  boot.cmdline = cmdline;
  if (cmdline) {
    const root_ = /(?:^|\s)root=(\S+)/.exec(cmdline);
    if (root_) boot.root = root_[1];
  }
  const loader = kid(os, 'loader');
  if (loader) {
    boot.loader = text(loader) || undefined;
    if (attr(loader, 'type') === 'pflash' || /ovmf|OVMF|edk2/.test(boot.loader ?? '')) boot.firmware = 'efi';
  }
  if (os && attr(os, 'firmware') === 'efi') boot.firmware = 'efi';
  for (const b of kids(os ?? root, 'boot')) {
    const dev = attr(b, 'dev');
    if (dev === 'hd' || dev === 'cdrom' || dev === 'network' || dev === 'fd') {
      if (!boot.order.includes(dev)) boot.order.push(dev);
    } else if (os) r.warn(b, `boot device '${dev}' unknown; ignored`);
  }
  if (virt === 'hvm' && boot.order.length === 0) boot.order.push('hd');
  for (const c of kids(os ?? root)) {
    if (['type', 'loader', 'kernel', 'initrd', 'cmdline', 'boot', 'bootmenu', 'nvram'].includes(c.tagName)) continue;
    r.warn(c, `<os><${c.tagName}> dropped`);
  }

  // Features.
  const feats = kid(root, 'features');
  // PV guests have no firmware tables to switch off: the KVM guest gets ACPI and an APIC.
  const features = { acpi: virt !== 'hvm', apic: virt !== 'hvm', pae: false, viridian: false };
  for (const f of feats ? kids(feats) : []) {
    const on = (attr(f, 'state') ?? 'on') !== 'off';
    switch (f.tagName) {
      case 'acpi':
        features.acpi = on;
        break;
      case 'apic':
        features.apic = on;
        break;
      case 'pae':
        features.pae = on;
        break;
      case 'viridian':
        features.viridian = on;
        break;
      case 'hap':
      case 'privnet':
        break; // Xen paging / private network: nothing to carry
      case 'xen':
        for (const x of kids(f)) {
          if ((attr(x, 'state') ?? 'on') === 'on') r.warn(x, `Xen feature <${x.tagName}> dropped: it has no KVM meaning`);
        }
        break;
      default:
        r.warn(f, `feature <${f.tagName}> dropped`);
    }
  }

  // Clock.
  const clockEl = kid(root, 'clock');
  const clock: GuestDefinition['clock'] = { offset: 'utc', timers: [] };
  if (clockEl) {
    const off = attr(clockEl, 'offset') ?? 'utc';
    if (off === 'utc' || off === 'localtime' || off === 'variable' || off === 'timezone') clock.offset = off;
    else r.warn(clockEl, `clock offset '${off}' unknown; using utc`);
    const adj = attr(clockEl, 'adjustment');
    if (off === 'variable' && adj !== undefined) {
      if (!/^-?\d+$/.test(adj)) r.fail(clockEl, `clock adjustment '${adj}' is not a number of seconds`, 'clock');
      clock.adjustment = Number(adj);
      clock.basis = attr(clockEl, 'basis') === 'localtime' ? 'localtime' : 'utc';
    }
    if (off === 'timezone') clock.timezone = attr(clockEl, 'timezone');
    for (const t of kids(clockEl, 'timer')) {
      const tn = attr(t, 'name') ?? '';
      const present = attr(t, 'present');
      clock.timers.push({ name: tn, present: present === undefined ? undefined : present === 'yes', tickpolicy: attr(t, 'tickpolicy') });
    }
  }

  const action = (tag: string, def: LifecycleAction): LifecycleAction => {
    const e = kid(root, tag);
    const v = text(e);
    if (!e || !v) return def;
    if (!LIFECYCLE.includes(v)) r.fail(e, `<${tag}>${v}</${tag}> is not one of ${LIFECYCLE.join(', ')}`, tag);
    return v as LifecycleAction;
  };

  const g: GuestDefinition = {
    source: { fileName, syntax: 'xml' },
    name,
    uuid,
    title: text(kid(root, 'title')) || undefined,
    description: text(kid(root, 'description')) || undefined,
    virt,
    arch: attr(otype, 'arch'),
    memory,
    maxMemory,
    vcpus,
    maxVcpus,
    cpuset,
    disks: [],
    nics: [],
    graphics: [],
    serials: [],
    consoles: [],
    parallels: [],
    channels: [],
    inputs: [],
    sounds: [],
    videos: [],
    boot,
    onPoweroff: action('on_poweroff', 'destroy'),
    onReboot: action('on_reboot', 'restart'),
    onCrash: action('on_crash', 'restart'),
    features,
    clock,
    warnings: r.warnings,
  };

  // Devices.
  const devices = kid(root, 'devices');
  const targets = new Set<string>();
  for (const d of devices ? kids(devices) : []) {
    switch (d.tagName) {
      case 'emulator':
        r.warn(d, `<emulator>${text(d)}</emulator> dropped: it is Xen's device model; libvirt picks the KVM host's emulator`);
        break;
      case 'disk': {
        const x = disk(r, d);
        if (x) {
          if (targets.has(x.target)) r.fail(d, `disk target ${x.target} is used twice`, 'target');
          targets.add(x.target);
          g.disks.push(x);
        }
        break;
      }
      case 'interface':
        g.nics.push(nic(r, d));
        break;
      case 'graphics':
        g.graphics.push(graphics(r, d));
        break;
      case 'serial':
        g.serials.push(charDev(r, d));
        break;
      case 'console':
        g.consoles.push(charDev(r, d));
        break;
      case 'parallel':
        g.parallels.push(charDev(r, d));
        break;
      case 'channel':
        g.channels.push(charDev(r, d));
        break;
      case 'input':
        g.inputs.push({ type: attr(d, 'type') ?? 'mouse', bus: attr(d, 'bus') });
        break;
      case 'sound': {
        const m = attr(d, 'model');
        if (m) g.sounds.push(m);
        break;
      }
      case 'video': {
        const m = kid(d, 'model');
        if (m) {
          g.videos.push({
            model: attr(m, 'type') ?? 'vga',
            vram: r.int(m, attr(m, 'vram'), 'video vram', 0, 2 ** 31),
            heads: r.int(m, attr(m, 'heads'), 'video heads', 1, 16),
          });
        }
        break;
      }
      case 'controller':
      case 'memballoon':
        break; // re-created for KVM (xenbus, ide, usb controllers; the balloon becomes virtio)
      default: {
        const why = DEVICE_DROPPED[d.tagName] ?? 'no KVM translation';
        r.warn(d, `<${d.tagName}> dropped: ${why}`);
      }
    }
  }

  for (const c of kids(root)) {
    if (['name', 'uuid', 'title', 'description', 'memory', 'currentMemory', 'vcpu', 'os', 'features', 'clock', 'on_poweroff',
      'on_reboot', 'on_crash', 'devices', 'bootloader', 'bootloader_args'].includes(c.tagName)) continue;
    const why = TOP_DROPPED[c.tagName] ?? 'no KVM translation';
    r.warn(c, `<${c.tagName}> dropped: ${why}`);
  }
  return g;
}
