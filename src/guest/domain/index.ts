/**
 * Xen guest definitions → KVM libvirt domains.
 *
 *   parseXenConfig(text, fileName)  xl/xm configuration → GuestDefinition
 *   parseXenXml(text, fileName)     Xen libvirt XML     → GuestDefinition
 *   convertDomain(source, name, opts) either of them   → { xml, warnings }
 *   qemuArgsFromDomain(xml)         KVM XML → qemu-system-x86_64 arguments
 */

export type * from './types.js';
export { parseXenConfig } from './xenconfig.js';
export { parseXenXml } from './xenxml.js';
export {
  buildKvmDomain,
  convertCmdline,
  convertDomain,
  parseDiskArg,
  parseMapArgs,
  parseXenGuest,
  KVM_DISK_FORMATS,
  type DiskMapping,
  type MergedDisk,
  type DomainConvertOptions,
  type DomainConvertResult,
} from './convert.js';
export { qemuArgsFromDomain, type QemuArgsOptions } from './qemu.js';
export { parseCfgSyntax, type CfgFile, type CfgSetting, type CfgValue } from './cfgsyntax.js';
