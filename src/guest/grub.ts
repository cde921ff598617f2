/**
 * Patching GRUB 2's i386-pc boot code the way `grub-bios-setup` does when it
 * embeds the core image in the gap between the MBR and the first partition.
 * Facts from GRUB's boot/i386/pc/boot.S, diskboot.S and util/setup.c; the
 * boot code itself comes from the host's GRUB at run time.
 *
 * boot.img (the MBR's first 440 bytes of code):
 *
 *   field              offset  size
 *   BPB                  0x03    87   copied from the disk's existing sector 0 (0x03..0x5a)
 *   kernel_sector        0x5c     8   LBA of core.img's first sector (little-endian)
 *   boot_drive           0x64     1   0xff: use the drive the BIOS passed in DL
 *   boot_drive_check     0x66     2   a 2-byte jmp; 0x90 0x90 (nop nop) on a hard disk,
 *                                     so a BIOS passing a bogus DL falls back to 0x80
 *   disk signature      0x1b8     6   kept from the disk (440..445)
 *   partition table     0x1be    64   kept from the disk (446..509)
 *   boot signature      0x1fe     2   0x55 0xaa
 *
 * core.img's first sector is diskboot.img; its blocklist grows downward from
 * the end of that sector, 12 bytes per entry:
 *
 *   field     offset (first entry)  size
 *   start     0x1f4                    8   LBA of the rest of core.img
 *   len       0x1fc                    2   sectors
 *   segment   0x1fe                    2   real-mode load segment (0x820 for the first)
 *
 * An entry with len 0 ends the list. grub-bios-setup clears the old entries,
 * writes one entry per contiguous run (here: one), and a terminator.
 */

import { ImageError } from '../core/errors.js';

export const SECTOR = 512;
const BPB_START = 0x03;
const BPB_END = 0x5a;
const KERNEL_SECTOR = 0x5c;
const BOOT_DRIVE = 0x64;
const DRIVE_CHECK = 0x66;
const NT_MAGIC = 0x1b8;
const PART_END = 0x1fe;
const LIST_SIZE = 12;
const FIRST_BLOCK = SECTOR - LIST_SIZE;
/** GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20: where diskboot loads the second sector. */
const FIRST_SEGMENT = 0x820;
/** core.img may not reach 0x78000 in memory; it is linked at 0x9000 (GRUB_KERNEL_I386_PC_LINK_ADDR). */
export const MAX_CORE_SECTORS = (0x78000 - 0x9000) / SECTOR;

/** The new sector 0: GRUB's boot code with the disk's BPB area, signature and partition table kept. */
export function patchBootSector(bootImg: Uint8Array, oldSector: Uint8Array, coreLba: number): Uint8Array {
  if (bootImg.length !== SECTOR) {
    throw new ImageError('invalid-format', `GRUB boot.img is ${bootImg.length} bytes, expected ${SECTOR}`, { value: bootImg.length });
  }
  if (bootImg[0x1fe] !== 0x55 || bootImg[0x1ff] !== 0xaa) {
    throw new ImageError('invalid-format', 'GRUB boot.img has no 0x55AA signature: not an i386-pc boot image', {});
  }
  const out = Uint8Array.from(bootImg);
  out.set(oldSector.subarray(BPB_START, BPB_END), BPB_START);
  new DataView(out.buffer).setBigUint64(KERNEL_SECTOR, BigInt(coreLba), true);
  out[BOOT_DRIVE] = 0xff;
  out[DRIVE_CHECK] = 0x90;
  out[DRIVE_CHECK + 1] = 0x90;
  out.set(oldSector.subarray(NT_MAGIC, PART_END), NT_MAGIC);
  out[0x1fe] = 0x55;
  out[0x1ff] = 0xaa;
  return out;
}

/**
 * Pad core.img to whole sectors and point its blocklist at the sectors after
 * the first: the core lives at [coreLba, coreLba + sectors).
 */
export function patchCoreImage(core: Uint8Array, coreLba: number): Uint8Array {
  const sectors = Math.ceil(core.length / SECTOR);
  if (sectors < 2) throw new ImageError('invalid-format', `GRUB core.img is only ${core.length} bytes`, { value: core.length });
  if (sectors > MAX_CORE_SECTORS) {
    throw new ImageError('unsupported', `GRUB core.img is ${sectors} sectors; at most ${MAX_CORE_SECTORS} fit in real-mode memory`, {
      value: sectors,
    });
  }
  const out = new Uint8Array(sectors * SECTOR);
  out.set(core);
  const v = new DataView(out.buffer);
  // Clear the existing blocklist entries (down from the first, until a zero length).
  for (let at = FIRST_BLOCK; at > 0 && v.getUint16(at + 8, true) !== 0; at -= LIST_SIZE) out.fill(0, at, at + LIST_SIZE);
  v.setBigUint64(FIRST_BLOCK, BigInt(coreLba + 1), true);
  v.setUint16(FIRST_BLOCK + 8, sectors - 1, true);
  v.setUint16(FIRST_BLOCK + 10, FIRST_SEGMENT, true);
  out.fill(0, FIRST_BLOCK - LIST_SIZE, FIRST_BLOCK);
  return out;
}

/** Read back what patchBootSector/patchCoreImage wrote (tests, `guest` reports). */
export function readBootFields(sector0: Uint8Array, coreFirst: Uint8Array) {
  const b = new DataView(sector0.buffer, sector0.byteOffset, SECTOR);
  const c = new DataView(coreFirst.buffer, coreFirst.byteOffset, SECTOR);
  return {
    kernelSector: Number(b.getBigUint64(KERNEL_SECTOR, true)),
    bootDrive: b.getUint8(BOOT_DRIVE),
    driveCheck: b.getUint16(DRIVE_CHECK, true),
    blockStart: Number(c.getBigUint64(FIRST_BLOCK, true)),
    blockLen: c.getUint16(FIRST_BLOCK + 8, true),
    blockSegment: c.getUint16(FIRST_BLOCK + 10, true),
    nextLen: c.getUint16(FIRST_BLOCK - LIST_SIZE + 8, true),
  };
}
