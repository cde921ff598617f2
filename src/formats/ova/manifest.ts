/**
 * The OVA manifest (.mf, OVF spec DSP0243 section 5.1): one line per file,
 * `SHA256(disk1.vmdk)= 3a7b...` (SHA1, SHA256 or SHA512). Every file it
 * names is hashed in place and must match; a file it names that the
 * archive lacks is an error too.
 */

import { nodeCrypto } from '../../core/lazy.js';
import type { BlockDevice } from '../../core/device.js';
import { ImageError } from '../../core/errors.js';
import type { TarEntry } from './tar.js';

const ALGORITHMS: Record<string, string> = { SHA1: 'sha1', SHA256: 'sha256', SHA512: 'sha512' };
const CHUNK = 4 << 20;

export interface ManifestLine {
  algorithm: string;
  file: string;
  digest: string;
}

export function parseManifest(text: string): ManifestLine[] {
  const out: ManifestLine[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    const m = /^(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)$/.exec(line);
    if (!m) {
      throw new ImageError('invalid-format', `ova: manifest line '${line.slice(0, 200)}' is not ALGORITHM(file)= digest`, { format: 'ova', field: 'manifest', value: line.slice(0, 200) });
    }
    out.push({ algorithm: m[1]!, file: m[2]!, digest: m[3]!.toLowerCase() });
  }
  return out;
}

async function digest(dev: BlockDevice, e: TarEntry, algorithm: string): Promise<string> {
  const h = nodeCrypto().createHash(ALGORITHMS[algorithm]!);
  const buf = new Uint8Array(Math.min(CHUNK, Math.max(1, e.size)));
  for (let pos = 0; pos < e.size; pos += buf.length) {
    const part = buf.subarray(0, Math.min(buf.length, e.size - pos));
    await dev.read(part, e.offset + pos);
    h.update(part);
  }
  return h.digest('hex');
}

/** Check every file the manifest names against the archive's bytes. */
export async function verifyManifest(dev: BlockDevice, entries: TarEntry[], manifest: TarEntry): Promise<void> {
  if (manifest.size > 1 << 20) {
    throw new ImageError('invalid-format', `ova: the manifest is ${manifest.size} bytes`, { format: 'ova', field: 'manifest', value: manifest.size });
  }
  const text = Buffer.alloc(manifest.size);
  await dev.read(text, manifest.offset);
  for (const l of parseManifest(text.toString('utf8'))) {
    const e = entries.find((x) => x.name === l.file);
    if (!e) {
      throw new ImageError('invalid-format', `ova: the manifest names '${l.file}', which the archive does not hold`, { format: 'ova', field: 'manifest', value: l.file });
    }
    const got = await digest(dev, e, l.algorithm);
    if (got !== l.digest) {
      throw new ImageError('corrupt', `ova: ${l.algorithm} of '${l.file}' is ${got}, but the manifest says ${l.digest}`, { format: 'ova', field: 'manifest', value: l.file });
    }
  }
}
