/**
 * Value patterns of libvirt's domain schema (basictypes.rng and
 * domaincommon.rng, libvirt 9), for the values the KVM writer copies from
 * a Xen source. A value that does not fit is never written: the writer
 * drops it with a warning, or refuses the source when the value is one the
 * guest cannot do without (its name, a MAC address).
 *
 *   objectNameWithSlash  [^\n]+                     <name>, <title>
 *   absFilePath          (/|[a-zA-Z]:\\).+          disk source file, kernel, initrd, emulator
 *   deviceName           [a-zA-Z0-9_.\-\\:/]+       interface target dev, direct source dev
 *   bridge               [a-zA-Z0-9_.\-\\:/ ]*      <source bridge>
 *   dnsName              [a-zA-Z0-9.\-]+            host names
 *   uniMacAddr           [a-fA-F0-9][02468aAcCeE](:[a-fA-F0-9]{2}){5}
 *   cpuset               ([0-9]+(-[0-9]+)?|\^[0-9]+)(,([0-9]+(-[0-9]+)?|\^[0-9]+))*
 */

import { isIP } from 'node:net';

export const OBJECT_NAME = /^[^\n]+$/;
export const ABS_FILE_PATH = /^(\/|[a-zA-Z]:\\).+$/s;
export const DEVICE_NAME = /^[a-zA-Z0-9_.\-\\:/]+$/;
export const BRIDGE_NAME = /^[a-zA-Z0-9_.\-\\:/ ]*$/;
export const DNS_NAME = /^[a-zA-Z0-9.-]+$/;
export const UNICAST_MAC = /^[a-fA-F0-9][02468aAcCeE](:[a-fA-F0-9]{2}){5}$/;
export const CPUSET = /^([0-9]+(-[0-9]+)?|\^[0-9]+)(,([0-9]+(-[0-9]+)?|\^[0-9]+))*$/;

export function isIpAddress(s: string): boolean {
  return isIP(s) !== 0;
}

export function isHostName(s: string): boolean {
  return isIpAddress(s) || DNS_NAME.test(s);
}

/** Network disk protocols this writer emits (their schema needs only a name and hosts). */
export const NETWORK_DISK_PROTOCOLS = ['rbd', 'nbd', 'gluster', 'sheepdog', 'http', 'https', 'ftp', 'ftps', 'tftp'];

export const INPUT_TYPES = ['mouse', 'keyboard', 'tablet'];
export const TICK_POLICIES = ['delay', 'catchup', 'merge', 'discard'];
export const CHAR_PROTOCOLS = ['raw', 'telnet', 'telnets', 'tls'];
export const DIRECT_MODES = ['vepa', 'bridge', 'private', 'passthrough'];
export const SPICE_MOUSE_MODES = ['server', 'client'];
