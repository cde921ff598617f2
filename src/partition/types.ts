/**
 * Partition type codes and their names.
 *
 * Names are the ones fdisk/sfdisk print (util-linux's tables of MBR system
 * ids and GPT type GUIDs), so `imgtool part list` and `fdisk -l` agree.
 * The short aliases accepted on the command line (`linux`, `swap`, `efi`,
 * ...) are imgtool's own.
 */

import { ImageError } from '../core/errors.js';
import { EXTENDED_TYPES, GPT_PROTECTIVE } from './mbr.js';

const MBR_NAMES: Record<number, string> = {
  0x00: 'Empty',
  0x01: 'FAT12',
  0x04: 'FAT16 <32M',
  0x05: 'Extended',
  0x06: 'FAT16',
  0x07: 'HPFS/NTFS/exFAT',
  0x0b: 'W95 FAT32',
  0x0c: 'W95 FAT32 (LBA)',
  0x0e: 'W95 FAT16 (LBA)',
  0x0f: "W95 Ext'd (LBA)",
  0x11: 'Hidden FAT12',
  0x14: 'Hidden FAT16 <32M',
  0x16: 'Hidden FAT16',
  0x17: 'Hidden HPFS/NTFS',
  0x1b: 'Hidden W95 FAT32',
  0x1c: 'Hidden W95 FAT32 (LBA)',
  0x1e: 'Hidden W95 FAT16 (LBA)',
  0x27: 'Hidden NTFS WinRE',
  0x41: 'PPC PReP Boot',
  0x63: 'GNU HURD or SysV',
  0x80: 'Old Minix',
  0x81: 'Minix / old Linux',
  0x82: 'Linux swap / Solaris',
  0x83: 'Linux',
  0x84: 'OS/2 hidden C: drive',
  0x85: 'Linux extended',
  0x86: 'NTFS volume set',
  0x87: 'NTFS volume set',
  0x88: 'Linux plaintext',
  0x8e: 'Linux LVM',
  0x9f: 'BSD/OS',
  0xa0: 'IBM Thinkpad hibernation',
  0xa5: 'FreeBSD',
  0xa6: 'OpenBSD',
  0xa8: 'Darwin UFS',
  0xa9: 'NetBSD',
  0xab: 'Darwin boot',
  0xaf: 'HFS / HFS+',
  0xbe: 'Solaris boot',
  0xbf: 'Solaris',
  0xda: 'Non-FS data',
  0xde: 'Dell Utility',
  0xeb: 'BeOS fs',
  0xee: 'GPT',
  0xef: 'EFI (FAT-12/16/32)',
  0xf0: 'Linux/PA-RISC boot',
  0xfb: 'VMware VMFS',
  0xfc: 'VMware VMKCORE',
  0xfd: 'Linux raid autodetect',
};

const GPT_NAMES: Record<string, string> = {
  'C12A7328-F81F-11D2-BA4B-00A0C93EC93B': 'EFI System',
  '024DEE41-33E7-11D3-9D69-0008C781F39F': 'MBR partition scheme',
  '21686148-6449-6E6F-744E-656564454649': 'BIOS boot',
  '9E1A2D38-C612-4316-AA26-8B49521E5A8B': 'PowerPC PReP boot',
  'E3C9E316-0B5C-4DB8-817D-F92DF00215AE': 'Microsoft reserved',
  'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7': 'Microsoft basic data',
  'DE94BBA4-06D1-4D40-A16A-BFD50179D6AC': 'Windows recovery environment',
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': 'Linux swap',
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': 'Linux filesystem',
  '3B8F8425-20E0-4F3B-907F-1A25A76F98E8': 'Linux server data',
  '44479540-F297-41B2-9AF7-D131D5F0458A': 'Linux root (x86)',
  '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709': 'Linux root (x86-64)',
  '69DAD710-2CE4-4E3C-B16C-21A1D49ABED3': 'Linux root (ARM)',
  'B921B045-1DF0-41C3-AF44-4C6F280D3FAE': 'Linux root (ARM-64)',
  '8DA63339-0007-60C0-C436-083AC8230908': 'Linux reserved',
  '933AC7E1-2EB4-4F13-B844-0E14E2AEF915': 'Linux home',
  'A19D880F-05FC-4D3B-A006-743F0F84911E': 'Linux RAID',
  'E6D6D379-F507-44C2-A23C-238F2A3DF928': 'Linux LVM',
  '4D21B016-B534-45C2-A9FB-5C16E091FD2D': 'Linux variable data',
  '7EC6F557-3BC5-4ACA-B293-16EF5DF639D1': 'Linux temporary data',
  '8484680C-9521-48C6-9C11-B0720656F69E': 'Linux /usr (x86-64)',
  'BC13C2FF-59E6-4262-A352-B275FD6F7172': 'Linux extended boot',
  '516E7CB4-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD data',
  '83BD6B9D-7F41-11DC-BE0B-001560B84F0F': 'FreeBSD boot',
  '516E7CB5-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD swap',
  '516E7CB6-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD UFS',
  '516E7CBA-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD ZFS',
  '48465300-0000-11AA-AA11-00306543ECAC': 'Apple HFS/HFS+',
  '7C3457EF-0000-11AA-AA11-00306543ECAC': 'Apple APFS',
  '6A898CC3-1DD2-11B2-99A6-080020736631': 'Solaris /usr & Apple ZFS',
  'AA31E02A-400F-11DB-9590-000C2911D1B8': 'VMware VMFS',
};

export function mbrTypeName(type: number): string {
  return MBR_NAMES[type] ?? 'unknown';
}

export function gptTypeName(guid: string): string {
  return GPT_NAMES[guid.toUpperCase()] ?? 'unknown';
}

/** An MBR type as sfdisk prints it in `--json` and `--dump`: lower-case hex without padding (`83`, `5`, `c`). */
export function mbrTypeCode(type: number): string {
  return type.toString(16);
}

/** Command-line aliases for MBR types. */
export const MBR_TYPE_ALIASES: Readonly<Record<string, number>> = {
  linux: 0x83,
  swap: 0x82,
  efi: 0xef,
  fat32: 0x0c,
  fat16: 0x0e,
  ntfs: 0x07,
  lvm: 0x8e,
  raid: 0xfd,
};

/**
 * Resolve a type given as a number, an alias (`linux`, `swap`, `efi`,
 * `fat32`, `fat16`, `ntfs`, `lvm`, `raid`) or hex (`83`, `0x83`). Empty
 * (0), extended and GPT-protective types are refused: `part create` writes
 * primary data partitions only.
 */
export function parseMbrType(type: number | string): number {
  let code: number;
  if (typeof type === 'number') code = type;
  else {
    const t = type.trim().toLowerCase();
    const alias = MBR_TYPE_ALIASES[t];
    if (alias !== undefined) code = alias;
    else if (/^(0x)?[0-9a-f]{1,2}$/.test(t)) code = parseInt(t.replace(/^0x/, ''), 16);
    else {
      throw new ImageError(
        'usage',
        `partition type '${type}' is not a known name (${Object.keys(MBR_TYPE_ALIASES).join(', ')}) or a hex code (83, 0x82, ...)`,
        { value: type },
      );
    }
  }
  if (!Number.isInteger(code) || code < 1 || code > 0xff) {
    throw new ImageError('usage', `partition type ${String(type)} must be a code from 0x01 to 0xff`, { value: String(type) });
  }
  if (EXTENDED_TYPES.has(code)) {
    throw new ImageError('usage', `partition type 0x${code.toString(16)} is an extended partition: only primary data partitions can be created`, {
      value: code,
    });
  }
  if (code === GPT_PROTECTIVE) {
    throw new ImageError('usage', 'partition type 0xee is the GPT protective type: it cannot be used for an MBR data partition', { value: code });
  }
  return code;
}
