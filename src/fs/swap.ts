/**
 * Linux swap signature, as `mkswap` (util-linux) writes it: a version-1
 * header in the first page (the kernel's `union swap_header`,
 * include/linux/swap.h). Little-endian, for a page size P:
 *
 *   field          offset   size
 *   bootbits            0   1024   zero (room for a disk label / boot sector)
 *   version          1024      4   1
 *   last_page        1028      4   number of pages - 1
 *   nr_badpages      1032      4   0
 *   uuid             1036     16
 *   volume_name      1052     16   label, NUL-terminated (15 bytes at most)
 *   padding          1068    468   zero (libblkid reads label and UUID only if words 32..33 are zero)
 *   badpages         1536    ...   none
 *   magic          P - 10     10   "SWAPSPACE2"
 *
 * The rest of the swap area is never read before the kernel writes it, so a
 * fresh (all-zero) image needs only the first page. On a device that held
 * something else, `writeSwap` also erases the magic numbers of signatures
 * that lie beyond the first page (btrfs superblocks, LUKS2 secondary
 * headers, MD RAID superblocks, a GPT backup header), so blkid finds only
 * the swap signature, as mkswap's wipe does.
 */

import { randomUUID } from 'node:crypto';
import type { BlockDevice } from '../core/device.js';
import { ImageError } from '../core/errors.js';

export const SWAP_MAGIC = 'SWAPSPACE2';
/** mkswap refuses fewer than 10 pages. */
export const MIN_SWAP_PAGES = 10;

export interface SwapOptions {
  /** 8-4-4-4-12 hex; random (version 4) when omitted. */
  uuid?: string;
  /** At most 15 bytes of UTF-8 (as mkswap and swaplabel allow). */
  label?: string;
  /** 4096 (default), 8192, 16384, 32768 or 65536. */
  pageSize?: number;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function checkOptions(size: number, opts: SwapOptions): { page: number; pages: number; uuid: string; label: Buffer } {
  const page = opts.pageSize ?? 4096;
  if (![4096, 8192, 16384, 32768, 65536].includes(page)) {
    throw new ImageError('usage', `swap page size ${page} is not 4096, 8192, 16384, 32768 or 65536`, { value: page });
  }
  const pages = Math.floor(size / page);
  if (!Number.isSafeInteger(size) || pages < MIN_SWAP_PAGES) {
    throw new ImageError('usage', `a swap area needs at least ${MIN_SWAP_PAGES} pages (${MIN_SWAP_PAGES * page} bytes); this one has ${size} bytes`, {
      value: size,
    });
  }
  if (pages - 1 > 0xffffffff) throw new ImageError('usage', `swap area of ${size} bytes has more pages than a swap header can count`, { value: size });
  const uuid = opts.uuid ?? randomUUID();
  if (!UUID_RE.test(uuid)) throw new ImageError('usage', `'${uuid}' is not a UUID (8-4-4-4-12 hex digits)`, { value: uuid });
  const label = Buffer.from(opts.label ?? '', 'utf8');
  // mkswap and swaplabel keep the label NUL-terminated inside its 16 bytes: 15 bytes at most.
  if (label.length > 15) throw new ImageError('usage', `swap label '${opts.label}' is ${label.length} bytes; at most 15 fit`, { value: opts.label });
  if (label.includes(0)) throw new ImageError('usage', 'a swap label cannot contain NUL');
  return { page, pages, uuid: uuid.toLowerCase(), label };
}

/** The first page of a swap area of `size` bytes. */
export function encodeSwapHeader(size: number, opts: SwapOptions = {}): Uint8Array {
  const { page, pages, uuid, label } = checkOptions(size, opts);
  const b = new Uint8Array(page);
  const v = new DataView(b.buffer);
  v.setUint32(1024, 1, true);
  v.setUint32(1028, pages - 1, true);
  v.setUint32(1032, 0, true);
  b.set(Buffer.from(uuid.replace(/-/g, ''), 'hex'), 1036);
  b.set(label, 1052);
  b.set(Buffer.from(SWAP_MAGIC, 'ascii'), page - 10);
  return b;
}

/** Signatures beyond the first page that would make blkid see two things: [offset, magic]. */
function staleSignatures(size: number): [number, Uint8Array][] {
  const ascii = (s: string) => Buffer.from(s, 'latin1');
  const out: [number, Uint8Array][] = [];
  for (const sb of [65536, 64 << 20, 256 * 2 ** 30]) out.push([sb + 64, ascii('_BHRfS_M')]); // btrfs (+ backups)
  for (const o of [0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000]) out.push([o, ascii('SKUL\xba\xbe')]); // LUKS2 secondary
  const md = Uint8Array.of(0xfc, 0x4e, 0x2b, 0xa9); // MD superblock magic 0xa92b4efc, little-endian
  out.push([4096, md]); // MD 1.2
  if (size >= 65536) out.push([Math.floor(size / 65536) * 65536 - 65536, md]); // MD 0.90
  if (size >= 8192) out.push([(Math.floor(size / 4096) * 4096) - 8192, md]); // MD 1.0
  out.push([Math.floor(size / 512) * 512 - 512, ascii('EFI PART')]); // GPT backup header (a whole disk made swap)
  return out;
}

/**
 * Make `dev` a swap area: write the header page and erase stale signatures
 * beyond it (only where one is found: nothing else is written on a fresh
 * image). Returns the UUID written.
 */
export async function writeSwap(dev: BlockDevice, opts: SwapOptions = {}): Promise<{ uuid: string; label?: string; size: number; pageSize: number }> {
  const header = encodeSwapHeader(dev.size, opts);
  const page = header.length;
  for (const [offset, magic] of staleSignatures(dev.size)) {
    if (offset < page || offset + magic.length > dev.size) continue;
    const found = new Uint8Array(magic.length);
    await dev.read(found, offset);
    if (Buffer.compare(found, magic) === 0) await dev.write(new Uint8Array(magic.length), offset);
  }
  await dev.write(header, 0);
  await dev.flush();
  const uuid = Buffer.from(header.subarray(1036, 1052)).toString('hex');
  const pages = Math.floor(dev.size / page);
  return {
    uuid: `${uuid.slice(0, 8)}-${uuid.slice(8, 12)}-${uuid.slice(12, 16)}-${uuid.slice(16, 20)}-${uuid.slice(20)}`,
    ...(opts.label ? { label: opts.label } : {}),
    size: pages * page,
    pageSize: page,
  };
}
