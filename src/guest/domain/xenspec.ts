/**
 * The small string languages inside Xen configuration values:
 *
 *   disk   xl-disk-configuration(5): positional `TARGET,FORMAT,VDEV,ACCESS`
 *          mixed with `key=value` (format= vdev= access= devtype= backendtype=
 *          script= backend=; `target=` last, it takes the rest of the string,
 *          commas included) and flags (cdrom, discard, ...). The legacy xm
 *          form `[PREFIX:]PATH,VDEV[:cdrom],MODE` with prefixes phy: file:
 *          tap:aio: tap2:aio: tap:qcow: ... is read too: after a prefix there
 *          is no FORMAT slot. Access: r/ro read-only, w/rw read-write, w!
 *          shared writable.
 *   vif    xl-network-configuration(5): `key=value,...` (mac bridge model type
 *          vifname script ip rate ...).
 *   rate   `N[GMK]{B|b}/s[@INTERVAL]` → KiB/s (binary prefixes, as libvirt).
 *   chr    serial/parallel: `pty`, `/dev/ttyS0`, `file:PATH`, `pipe:PATH`,
 *          `tcp:HOST:PORT[,server,nowait]`, `telnet:...`, `udp:H:P[@H:P]`,
 *          `unix:PATH[,server]`, `null`, `vc`, `stdio`, `none`.
 *   rbd    qemu's `rbd:POOL/IMAGE[:key=value...]` with `\` escaping `:` and
 *          `;` (mon_host=HOST\:PORT\;HOST\:PORT).
 *
 * Functions throw SpecError (a message without position); the caller adds
 * FILE:LINE:COLUMN of the string that held the spec.
 */

import type { Bandwidth, GuestChar, GuestDisk, GuestGraphics, GuestNic, NetworkDiskSource } from './types.js';

export class SpecError extends Error {}

/** xl/xm format names → libvirt driver type names. */
const FORMATS: Record<string, string> = {
  raw: 'raw',
  aio: 'raw',
  sync: 'raw',
  qcow: 'qcow',
  qcow2: 'qcow2',
  vhd: 'vpc',
  qed: 'qed',
  vmdk: 'vmdk',
};

const VDEV_RE = /^(?:ioemu:)?((?:xvd|hd|sd|vd|fd)[a-z]+\d*|d\d+(?:p\d+)?)(?::(cdrom|disk))?$/;

function splitVdev(s: string): { vdev: string; cdrom: boolean } | undefined {
  const m = VDEV_RE.exec(s.trim());
  if (!m) return undefined;
  return { vdev: m[1]!, cdrom: m[2] === 'cdrom' };
}

const DISK_FLAGS = new Set([
  'cdrom',
  'discard',
  'no-discard',
  'direct-io-safe',
  'trusted',
  'untrusted',
  'colo',
]);

export interface ParsedDisk {
  disk: GuestDisk;
  warnings: string[];
}

/** Parse one xl/xm disk specification string. */
export function parseDiskSpec(spec: string): ParsedDisk {
  const warnings: string[] = [];
  let target: string | undefined;
  let format: string | undefined;
  let formatSlotUsed = false;
  let vdev: string | undefined;
  let access: string | undefined;
  let cdrom = false;
  let backend: string | undefined;
  let hadPrefix = false;
  let script: string | undefined;

  const setFormat = (f: string, what: string) => {
    const v = f.trim().toLowerCase();
    if (v === '' ) return;
    if (v === 'empty') {
      format = 'empty';
      return;
    }
    const mapped = FORMATS[v];
    if (!mapped) throw new SpecError(`unknown disk format '${f}' in ${what}`);
    format = mapped;
  };
  const setAccess = (a: string) => {
    const v = a.trim();
    if (!['', 'r', 'ro', 'w', 'rw', 'w!', '!'].includes(v)) throw new SpecError(`unknown disk access mode '${a}' (r, ro, w, rw, w!)`);
    access = v;
  };
  const setVdev = (s: string) => {
    const v = splitVdev(s);
    if (!v) throw new SpecError(`'${s}' is not a virtual device name (xvda, hda, sdb, ...)`);
    vdev = v.vdev;
    if (v.cdrom) cdrom = true;
  };

  let rest = spec;
  for (let guard = 0; guard < 10_000; guard++) {
    const lead = /^\s*/.exec(rest)![0].length;
    const body = rest.slice(lead);
    // target= takes everything after it, commas included.
    if (/^target=/.test(body)) {
      target = body.slice('target='.length);
      break;
    }
    const kv = /^([A-Za-z][-A-Za-z0-9_]*)=([^,]*)(,|$)/.exec(body);
    if (kv) {
      const key = kv[1]!.toLowerCase();
      const value = kv[2]!;
      switch (key) {
        case 'format':
          setFormat(value, 'format=');
          break;
        case 'vdev':
          setVdev(value);
          break;
        case 'access':
          setAccess(value);
          break;
        case 'devtype':
          if (value === 'cdrom') cdrom = true;
          else if (value !== 'disk') throw new SpecError(`unknown devtype '${value}' (disk, cdrom)`);
          break;
        case 'backendtype':
          if (!['phy', 'tap', 'qdisk', 'standalone'].includes(value)) throw new SpecError(`unknown backendtype '${value}' (phy, tap, qdisk)`);
          backend = value;
          break;
        case 'script':
          script = value;
          break;
        case 'backend':
          warnings.push(`disk backend domain '${value}' (a Xen driver domain) has no KVM meaning: the disk is served by the KVM host`);
          break;
        case 'specification':
        case 'colo-host':
        case 'colo-port':
        case 'colo-export':
        case 'active-disk':
        case 'hidden-disk':
          warnings.push(`disk option '${key}=${value}' has no KVM meaning and was dropped`);
          break;
        default:
          warnings.push(`unknown disk option '${key}=${value}' ignored`);
      }
      rest = body.slice(kv[0].length);
      if (kv[3] === '') break;
      continue;
    }
    // Deprecated prefixes before the target (xm syntax).
    if (target === undefined) {
      const pre = /^([a-z][a-z0-9]*):(?=.)/.exec(body);
      if (pre && !/^[a-z][a-z0-9]*:\/\//.test(body)) {
        const p = pre[1]!;
        let known = true;
        if (p === 'raw' || p === 'qcow' || p === 'qcow2' || p === 'vhd' || p === 'qed' || p === 'vmdk' || p === 'aio' || p === 'sync') {
          setFormat(p, `prefix '${p}:'`);
        } else if (p === 'iscsi' || p === 'nbd' || p === 'enbd' || p === 'drbd') {
          script = `block-${p}`;
        } else if (p === 'tap' || p === 'tap2' || p === 'tapdisk' || p === 'ioemu' || p === 'file' || p === 'phy') {
          if (p === 'phy' || p === 'file' || !backend) backend = p === 'tapdisk' ? 'tap' : p;
        } else {
          known = false;
        }
        if (known) {
          hadPrefix = true;
          rest = body.slice(pre[0].length);
          continue;
        }
        if (p !== 'rbd' && !/^[a-z]:/i.test(body)) {
          // libxl refuses unknown prefixes; a path never starts with "word:" anyway.
          throw new SpecError(`unknown disk prefix '${p}:'`);
        }
      }
    }
    // A positional parameter up to the next comma.
    const comma = body.indexOf(',');
    const token = (comma < 0 ? body : body.slice(0, comma)).trim();
    const last = comma < 0;
    rest = last ? '' : body.slice(comma + 1);
    if (DISK_FLAGS.has(token)) {
      if (token === 'cdrom') cdrom = true;
      else if (token !== 'discard' && token !== 'no-discard' && token !== 'direct-io-safe' && token !== 'trusted' && token !== 'untrusted') {
        warnings.push(`disk flag '${token}' has no KVM meaning and was dropped`);
      }
    } else if (target === undefined) {
      target = token;
    } else if (!hadPrefix && !formatSlotUsed && vdev === undefined) {
      formatSlotUsed = true;
      if (target === '' && splitVdev(token)) {
        // ",hdc:cdrom,r": an empty drive; the slot holds the vdev.
        format = 'empty';
        setVdev(token);
      } else if (token !== '' && !FORMATS[token.toLowerCase()] && token.toLowerCase() !== 'empty' && splitVdev(token)) {
        // Legacy three-field form without a prefix: PATH,VDEV,ACCESS.
        setVdev(token);
      } else {
        setFormat(token, 'the format field');
      }
    } else if (vdev === undefined) {
      setVdev(token);
    } else if (access === undefined) {
      setAccess(token);
    } else if (token !== '') {
      throw new SpecError(`too many positional fields ('${token}')`);
    }
    if (last) break;
  }

  if (vdev === undefined) throw new SpecError('no virtual device (vdev) given');
  const device: GuestDisk['device'] = cdrom ? 'cdrom' : vdev.startsWith('fd') ? 'floppy' : 'disk';
  const path = target ?? '';
  const readonly = access === 'r' || access === 'ro' || (cdrom && access === undefined);
  const shareable = access === 'w!' || access === '!';
  const disk: GuestDisk = {
    device,
    sourceType: 'file',
    target: vdev,
    readonly,
    shareable,
    backend,
    format: format === 'empty' ? undefined : format,
  };
  if (path === '' || format === 'empty') {
    if (device === 'disk') throw new SpecError(`disk ${vdev} has no target (only CD-ROMs may be empty)`);
    disk.sourceType = 'none';
  } else if (path.startsWith('rbd:')) {
    disk.sourceType = 'network';
    disk.network = parseRbd(path, warnings);
    disk.path = path;
  } else {
    disk.path = path;
    disk.sourceType = backend === 'phy' ? 'block' : 'file';
  }
  if (script) {
    warnings.push(`disk ${vdev}: block script '${script}' (target '${path}') is Xen hotplug glue; on KVM the target must be a path the host can open`);
  }
  return { disk, warnings };
}

/** Split on a separator that a backslash can escape; keeps escapes in the parts. */
function splitEscaped(s: string, sep: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '\\' && i + 1 < s.length) {
      cur += c + s[i + 1];
      i++;
    } else if (c === sep) {
      parts.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  parts.push(cur);
  return parts;
}

function unescape(s: string): string {
  return s.replace(/\\(.)/g, '$1');
}

/** qemu's rbd pseudo-filename → libvirt network source. */
export function parseRbd(target: string, warnings: string[]): NetworkDiskSource {
  const parts = splitEscaped(target.slice('rbd:'.length), ':');
  const name = unescape(parts[0] ?? '');
  if (!name) throw new SpecError(`rbd target '${target}' names no pool/image`);
  const hosts: NetworkDiskSource['hosts'] = [];
  for (const opt of parts.slice(1)) {
    const eq = opt.indexOf('=');
    const key = eq < 0 ? opt : opt.slice(0, eq);
    const value = eq < 0 ? '' : opt.slice(eq + 1);
    if (key === 'mon_host') {
      // qemu removes the escapes; librados then splits the list on ';', ',' or blanks.
      for (const h of unescape(value).split(/[;,\s]+/)) {
        if (!h) continue;
        const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(h) ?? /^([^:]+)(?::(\d+))?$/.exec(h);
        if (!m) throw new SpecError(`rbd monitor host '${h}' is not HOST[:PORT]`);
        hosts.push(m[2] ? { name: m[1]!, port: m[2] } : { name: m[1]! });
      }
    } else if (key === 'auth_supported' && value === 'none') {
      // no authentication: nothing to carry
    } else {
      warnings.push(`rbd option '${unescape(opt)}' dropped (add it to the KVM disk by hand if needed)`);
    }
  }
  return { protocol: 'rbd', name, hosts };
}

const RATE_RE = /^(\d+)([GMK]?)([Bb])\/s(?:@\S+)?$/;

/** `10240KB/s` → 10240 (KiB/s). Prefixes are binary, as libvirt reads them. */
export function parseVifRate(rate: string): number {
  const m = RATE_RE.exec(rate.trim());
  if (!m) throw new SpecError(`rate '${rate}' is not N[GMK]B/s or N[GMK]b/s`);
  let bytes = Number(m[1]) * (m[2] === 'G' ? 2 ** 30 : m[2] === 'M' ? 2 ** 20 : m[2] === 'K' ? 2 ** 10 : 1);
  if (m[3] === 'b') bytes /= 8;
  const kib = Math.max(1, Math.round(bytes / 1024));
  if (!Number.isSafeInteger(kib) || kib > 2 ** 32) throw new SpecError(`rate '${rate}' is too large`);
  return kib;
}

const MAC_RE = /^[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2}){5}$/;

export function normalizeMac(mac: string): string {
  const m = mac.trim();
  if (!MAC_RE.test(m)) throw new SpecError(`malformed MAC address '${mac}'`);
  const out = m
    .split(':')
    .map((b) => b.padStart(2, '0').toLowerCase())
    .join(':');
  if (parseInt(out.slice(0, 2), 16) & 1) throw new SpecError(`MAC address '${mac}' is a multicast address (a network card needs a unicast one)`);
  return out;
}

export interface ParsedNic {
  nic: GuestNic;
  warnings: string[];
}

/** Parse one vif specification. `pvTypeName` is 'vif' for xl, 'netfront' for xm. */
export function parseVifSpec(spec: string): ParsedNic {
  const warnings: string[] = [];
  const kv = new Map<string, string>();
  for (const raw of spec.split(',')) {
    const item = raw.trim();
    if (!item) continue;
    const eq = item.indexOf('=');
    if (eq < 0) {
      warnings.push(`vif item '${item}' is not key=value; ignored`);
      continue;
    }
    kv.set(item.slice(0, eq).trim().toLowerCase(), item.slice(eq + 1).trim());
  }
  const nic: GuestNic = { type: 'ethernet', ips: [] };
  for (const [key, value] of kv) {
    switch (key) {
      case 'mac':
        nic.mac = normalizeMac(value);
        break;
      case 'bridge':
        if (value) nic.bridge = value;
        break;
      case 'script':
        if (value) nic.script = value;
        break;
      case 'model':
        if (value) nic.model = value;
        break;
      case 'type':
        if (!['ioemu', 'vif', 'netfront'].includes(value)) warnings.push(`vif type '${value}' unknown; ignored`);
        break;
      case 'vifname':
        if (value) nic.ifname = value;
        break;
      case 'ip':
        nic.ips.push(...value.split(/\s+/).filter(Boolean));
        break;
      case 'rate':
        nic.outbound = { average: parseVifRate(value) };
        break;
      case 'mtu': {
        const n = Number(value);
        if (!Number.isInteger(n) || n < 68 || n > 65535) throw new SpecError(`vif mtu '${value}' is not 68..65535`);
        nic.mtu = n;
        break;
      }
      case 'devid':
      case 'accel':
        break; // ordering / Xen acceleration: nothing to carry
      case 'backend':
        warnings.push(`vif backend domain '${value}' (a Xen driver domain) has no KVM meaning and was dropped`);
        break;
      case 'gatewaydev':
      case 'forwarddev':
        warnings.push(`vif ${key} '${value}' (vif-route/vif-nat script setting) has no KVM meaning and was dropped`);
        break;
      default:
        warnings.push(`unknown vif option '${key}=${value}' ignored`);
    }
  }
  const t = kv.get('type');
  if (!nic.model && (t === 'vif' || t === 'netfront')) nic.model = 'netfront';
  // As libvirt: a bridge, or the bridge hotplug script, makes a bridged interface.
  if (nic.bridge || nic.script === 'vif-bridge' || nic.script === 'vif-vnic') nic.type = 'bridge';
  return { nic, warnings };
}

/** Parse a serial/parallel device string; undefined for 'none'. */
export function parseCharSpec(spec: string): GuestChar | undefined {
  const v = spec.trim();
  if (v === '' || v === 'none') return undefined;
  if (v.startsWith('/')) return { type: 'dev', path: v };
  const colon = v.indexOf(':');
  const prefix = colon < 0 ? v : v.slice(0, colon);
  const value = colon < 0 ? '' : v.slice(colon + 1);
  switch (prefix) {
    case 'pty':
    case 'null':
    case 'vc':
    case 'stdio':
      return { type: prefix };
    case 'file':
    case 'pipe':
      if (!value) throw new SpecError(`character device '${spec}' names no path`);
      return { type: prefix, path: value };
    case 'tcp':
    case 'telnet': {
      const c = value.indexOf(':');
      if (c < 0) throw new SpecError(`character device '${spec}' is not ${prefix}:HOST:PORT`);
      const opts = value.slice(c + 1).split(',');
      return {
        type: 'tcp',
        protocol: prefix === 'telnet' ? 'telnet' : 'raw',
        host: value.slice(0, c) || undefined,
        service: opts[0],
        listen: opts.includes('server'),
      };
    }
    case 'udp': {
      const c = value.indexOf(':');
      if (c < 0) throw new SpecError(`character device '${spec}' is not udp:HOST:PORT[@HOST:PORT]`);
      const at = value.indexOf('@', c);
      const connect = at < 0 ? value.slice(c + 1) : value.slice(c + 1, at);
      const r: GuestChar = { type: 'udp', host: value.slice(0, c) || undefined, service: connect };
      if (at >= 0) {
        const bind = value.slice(at + 1);
        const bc = bind.indexOf(':');
        if (bc < 0) throw new SpecError(`character device '${spec}' has a malformed bind address`);
        r.bindHost = bind.slice(0, bc) || undefined;
        r.bindService = bind.slice(bc + 1);
      }
      return r;
    }
    case 'unix': {
      const opts = value.split(',');
      if (!opts[0]) throw new SpecError(`character device '${spec}' names no socket path`);
      return { type: 'unix', path: opts[0], listen: opts.slice(1).includes('server') };
    }
    default:
      throw new SpecError(`unknown character device type '${prefix}'`);
  }
}

/**
 * A PV framebuffer spec (`vfb = ['type=vnc,vncunused=1,...']`, or xl's
 * `vnc=1,sdl=0,...`) → graphics (one per enabled display).
 */
export function parseVfbSpec(spec: string, warnings: string[]): GuestGraphics[] {
  const kv = new Map<string, string>();
  for (const raw of spec.split(',')) {
    const item = raw.trim();
    if (!item) continue;
    const eq = item.indexOf('=');
    if (eq < 0) {
      warnings.push(`vfb item '${item}' is not key=value; ignored`);
      continue;
    }
    kv.set(item.slice(0, eq).trim(), item.slice(eq + 1).trim());
  }
  const t = kv.get('type');
  const vnc = t === 'vnc' || kv.get('vnc') === '1' || (t === undefined && kv.get('vnc') === undefined && kv.get('sdl') !== '1');
  const sdl = t === 'sdl' || kv.get('sdl') === '1';
  const out: GuestGraphics[] = [];
  if (vnc) {
    out.push(
      vncGraphics({
        unused: kv.get('vncunused'),
        display: kv.get('vncdisplay'),
        listen: kv.get('vnclisten'),
        passwd: kv.get('vncpasswd'),
        keymap: kv.get('keymap'),
      }),
    );
  }
  if (sdl) out.push({ type: 'sdl', autoport: false, listens: [], display: kv.get('display'), xauth: kv.get('xauthority') });
  for (const k of kv.keys()) {
    if (!['type', 'vnc', 'sdl', 'vncunused', 'vncdisplay', 'vnclisten', 'vncpasswd', 'keymap', 'display', 'xauthority', 'opengl'].includes(k)) {
      warnings.push(`unknown vfb option '${k}' ignored`);
    }
  }
  return out;
}

/** VNC settings as xl/xm spell them → graphics. */
export function vncGraphics(o: { unused?: string; display?: string; listen?: string; passwd?: string; keymap?: string }): GuestGraphics {
  let listen = o.listen || undefined;
  let display = o.display;
  // vnclisten=ADDRESS:DISPLAY (xl) — not for bare IPv6 addresses.
  if (listen && !listen.includes('::')) {
    const m = /^(.*):(\d+)$/.exec(listen);
    if (m && m[1]!.split(':').length === 1) {
      listen = m[1];
      display ??= m[2];
    }
  }
  const autoport = o.unused === undefined ? display === undefined : o.unused !== '0';
  let port: number | undefined;
  if (!autoport) {
    const d = Number(display ?? '0');
    if (!Number.isInteger(d) || d < 0 || d > 65535 - 5900) throw new SpecError(`vncdisplay '${display}' is not a display number`);
    port = 5900 + d;
  }
  return {
    type: 'vnc',
    autoport,
    port: autoport ? -1 : port,
    listen,
    listens: listen ? [{ type: 'address', address: listen }] : [],
    passwd: o.passwd || undefined,
    keymap: o.keymap || undefined,
  };
}

export function bandwidthIsEmpty(b: Bandwidth | undefined): boolean {
  return !b || (b.average === undefined && b.peak === undefined && b.burst === undefined);
}
