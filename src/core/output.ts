/**
 * Outputs are written under a temporary name in the destination directory
 * and renamed into place only when complete. A failed or interrupted command
 * removes the partial file: `cleanupPendingOutputs()` runs from the CLI's
 * signal handlers and error path.
 *
 * Host block devices cannot be renamed: they are written in place, and only
 * after `--force`.
 */

import * as fs from 'node:fs';
import * as path from 'node:path';
import { nodeCrypto } from './lazy.js';
import { FileDevice } from './file.js';
import { ImageError, ioError } from './errors.js';

const pending = new Set<string>();

/** Remove every temporary output not yet committed (signal and error paths). */
export function cleanupPendingOutputs(): void {
  for (const p of pending) {
    try {
      fs.unlinkSync(p);
    } catch {
      /* already gone */
    }
  }
  pending.clear();
}

/** Refuse when `output` names the same file as one of `inputs` (also through links). */
export function refuseSameFile(output: string, inputs: string[]): void {
  let out: fs.Stats;
  try {
    out = fs.statSync(output);
  } catch {
    return; // output does not exist: cannot be an input
  }
  for (const i of inputs) {
    if (i === '-') continue;
    try {
      const st = fs.statSync(i);
      if (st.dev === out.dev && st.ino === out.ino) {
        throw new ImageError('usage', `output ${output} is the input ${i}: refusing to overwrite an input`, { path: output });
      }
    } catch (e) {
      if (e instanceof ImageError) throw e;
    }
  }
}

export class OutputFile {
  private done = false;
  private constructor(
    readonly finalPath: string,
    readonly tempPath: string | undefined,
    readonly device: FileDevice,
  ) {}

  /**
   * Open a new output. Regular files: a temporary sibling, renamed by commit().
   * An existing host block device: opened in place (requires force).
   */
  static async create(finalPath: string, opts: { force?: boolean; inputs?: string[] } = {}): Promise<OutputFile> {
    refuseSameFile(finalPath, opts.inputs ?? []);
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(finalPath);
    } catch {
      st = undefined;
    }
    if (st && !opts.force) {
      throw new ImageError('usage', `output ${finalPath} exists: use --force to overwrite it`, { path: finalPath });
    }
    if (st?.isBlockDevice()) {
      return new OutputFile(finalPath, undefined, await FileDevice.open(finalPath, { writable: true }));
    }
    if (st?.isDirectory()) throw new ImageError('usage', `output ${finalPath} is a directory`, { path: finalPath });
    const dir = path.dirname(path.resolve(finalPath));
    const temp = path.join(dir, `.${path.basename(finalPath)}.${nodeCrypto().randomBytes(4).toString('hex')}.imgtool-tmp`);
    pending.add(temp);
    try {
      return new OutputFile(finalPath, temp, await FileDevice.open(temp, { create: true }));
    } catch (e) {
      pending.delete(temp);
      throw e;
    }
  }

  /** Flush, close and move into place. */
  async commit(): Promise<void> {
    if (this.done) return;
    await this.device.flush();
    await this.device.close();
    if (this.tempPath) {
      try {
        fs.renameSync(this.tempPath, this.finalPath);
      } catch (e) {
        throw ioError(e, 'rename', this.finalPath);
      }
      pending.delete(this.tempPath);
    }
    this.done = true;
  }

  /** Close and remove the partial file. Safe to call after commit (no-op). */
  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    try {
      await this.device.close();
    } catch {
      /* closing a broken file: nothing more to do */
    }
    if (this.tempPath) {
      try {
        fs.unlinkSync(this.tempPath);
      } catch {
        /* gone */
      }
      pending.delete(this.tempPath);
    }
  }
}
