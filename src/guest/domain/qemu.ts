/**
 * A KVM domain XML → qemu-system-x86_64 arguments, for booting a converted
 * guest in a test without libvirt (`-kernel/-initrd/-append`, memory, CPUs,
 * virtio drives, serial console on stdio). Not a replacement for libvirt:
 * network cards, graphics and most devices are left out on purpose.
 *
 * qemu's option syntax: commas inside option values are written twice
 * (`file=a,,b` names the file `a,b`).
 */

import { ImageError } from '../../core/errors.js';
import { attr, kid, kids, parseXmlStrict, text } from './xmlutil.js';

export interface QemuArgsOptions {
  /** Where the serial port goes (default `mon:stdio`, with the monitor multiplexed). */
  serial?: string;
  /** Add `-accel ACCEL` (kvm, tcg). */
  accel?: string;
}

const UNIT: Record<string, number> = {
  b: 1, bytes: 1, k: 1024, kib: 1024, kb: 1000, m: 1024 ** 2, mib: 1024 ** 2, mb: 1000 ** 2,
  g: 1024 ** 3, gib: 1024 ** 3, gb: 1000 ** 3, t: 1024 ** 4, tib: 1024 ** 4, tb: 1000 ** 4,
};

function qemuEscape(v: string): string {
  return v.replace(/,/g, ',,');
}

function bytesOf(el: Element): number {
  const unit = (attr(el, 'unit') ?? 'KiB').toLowerCase();
  const mult = UNIT[unit];
  const t = text(el) ?? '';
  if (!mult || !/^\d+$/.test(t)) throw new ImageError('invalid-format', `<${el.tagName}> '${t}' ${unit} is not a memory size`);
  return Number(t) * mult;
}

/** qemu-system-x86_64 arguments that boot the domain's direct kernel (or its disks) on a serial console. */
export function qemuArgsFromDomain(xml: string, opts: QemuArgsOptions = {}): string[] {
  const root = parseXmlStrict(xml, 'domain XML');
  if (root.tagName !== 'domain') throw new ImageError('invalid-format', `root element is <${root.tagName}>, not <domain>`);
  const args: string[] = [];
  if (opts.accel) args.push('-accel', opts.accel);
  const os = kid(root, 'os');
  const kernel = text(kid(os, 'kernel'));
  const initrd = text(kid(os, 'initrd'));
  const cmdline = text(kid(os, 'cmdline'));
  if (kernel) args.push('-kernel', kernel);
  if (initrd) args.push('-initrd', initrd);
  if (cmdline) args.push('-append', cmdline);
  const mem = kid(root, 'memory') ?? kid(root, 'currentMemory');
  if (mem) args.push('-m', String(Math.max(1, Math.ceil(bytesOf(mem) / 1024 ** 2))));
  const vcpu = kid(root, 'vcpu');
  if (vcpu) {
    const max = Number(text(vcpu));
    const cur = Number(attr(vcpu, 'current') ?? max);
    if (!Number.isInteger(max) || max < 1 || !Number.isInteger(cur) || cur < 1) throw new ImageError('invalid-format', `<vcpu> '${text(vcpu)}' is not a CPU count`);
    args.push('-smp', cur === max ? String(max) : `${cur},maxcpus=${max}`);
  }
  const devices = kid(root, 'devices');
  for (const d of devices ? kids(devices, 'disk') : []) {
    const source = kid(d, 'source');
    const path = attr(source, 'file') ?? attr(source, 'dev');
    if (!path) continue; // empty CD-ROM or a network disk
    const format = attr(kid(d, 'driver'), 'type') ?? 'raw';
    const bus = attr(kid(d, 'target'), 'bus');
    const device = attr(d, 'device') ?? 'disk';
    const parts = [`file=${qemuEscape(path)}`, `format=${format}`];
    if (device === 'cdrom') parts.push('media=cdrom', 'if=ide', 'readonly=on');
    else {
      parts.push(`if=${bus === 'virtio' ? 'virtio' : bus === 'sata' || bus === 'ide' ? 'ide' : 'virtio'}`);
      if (kid(d, 'readonly')) parts.push('readonly=on');
    }
    args.push('-drive', parts.join(','));
  }
  args.push('-nographic', '-serial', opts.serial ?? 'mon:stdio');
  return args;
}
