/**
 * How large an image says it is, from its first bytes alone: used to cap a
 * decompressed or spooled stream before the whole image is there (a
 * decompression bomb declaring a 1 MiB disk must not produce 100 GiB).
 *
 * Only the virtual-size field of each header is read (offsets from the
 * formats' specs, as their drivers read them); the result bounds the
 * container: the virtual size, plus room for metadata, compressed clusters'
 * slack and snapshots (`containerBound`).
 */

import { DRIVERS } from './index.js';

/** Field offsets of the virtual size in each format's first bytes. */
const SIZE_FIELDS: Record<string, (v: DataView) => bigint | undefined> = {
  qcow2: (v) => v.getBigUint64(24, false),
  qcow: (v) => v.getBigUint64(24, false),
  vdi: (v) => v.getBigUint64(368, true),
  // hosted sparse extent header: capacity in 512-byte sectors
  vmdk: (v) => (v.getUint32(0, true) === 0x564d444b ? v.getBigUint64(12, true) * 512n : undefined),
  // a dynamic VHD starts with a copy of the footer: current size at 48
  vpc: (v) => (v.byteLength >= 56 ? v.getBigUint64(48, false) : undefined),
};

/** The virtual size the image in `head` declares, if its format has it in the first bytes. */
export function declaredVirtualSize(head: Uint8Array): { format: string; size: number } | undefined {
  const driver = DRIVERS.find((d) => d.name !== 'raw' && d.probe(head));
  const field = driver && SIZE_FIELDS[driver.name];
  if (!driver || !field || head.length < 512) return undefined;
  try {
    const v = field(new DataView(head.buffer, head.byteOffset, head.byteLength));
    if (v === undefined) return undefined;
    return { format: driver.name, size: v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v) };
  } catch {
    return undefined;
  }
}

/** The most bytes a container of this virtual size can sensibly need: twice it, plus 64 MiB. */
export function containerBound(virtualSize: number): number {
  return Math.min(Number.MAX_SAFE_INTEGER, 2 * virtualSize + (64 << 20));
}
