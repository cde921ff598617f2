/**
 * CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as used by the GPT
 * header and partition-entry array (UEFI spec 2.10, section 5.3.2) and, with
 * a different starting value and no final inversion, by LVM2 labels.
 *
 * Our own table-driven implementation: `zlib.crc32` only exists from Node
 * 20.15, and this project supports every Node 20.
 */

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** Advance a raw CRC register over `data` (no pre- or post-inversion). */
export function crc32Update(register: number, data: Uint8Array): number {
  let c = register >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** The standard CRC-32 of `data` (what `crc32` in zlib and the GPT spec compute). */
export function crc32(data: Uint8Array): number {
  return (crc32Update(0xffffffff, data) ^ 0xffffffff) >>> 0;
}

const TABLE_C = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** Advance a raw CRC-32C (Castagnoli, reflected 0x82F63B78) register; no inversions. */
export function crc32cUpdate(register: number, data: Uint8Array): number {
  let c = register >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE_C[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** The standard CRC-32C of `data` (ext4 metadata_csum, btrfs). */
export function crc32c(data: Uint8Array): number {
  return (crc32cUpdate(0xffffffff, data) ^ 0xffffffff) >>> 0;
}
