/**
 * Warnings about an image: fields that are wrong but do not change which
 * bytes are read (qemu ignores them on its read path too), so the image is
 * read and the user is told. Each warning is one line naming the field, its
 * byte offset and its value; a field repeated in a table (an L2 entry, a
 * block map entry) is reported for its first occurrence only.
 *
 * Drivers record warnings here; `sink` (from OpenOptions.warn) hears each one
 * as it is found (some are found only when a table is first read), and
 * `list` keeps them for `info`.
 */

import type { OpenOptions } from './types.js';

/** At most this many distinct warnings per image: a hostile image cannot flood the terminal. */
const MAX_WARNINGS = 32;

export class WarningLog {
  readonly list: string[] = [];
  private readonly keys = new Set<string>();

  constructor(
    private readonly format: string,
    private readonly sink?: OpenOptions['warn'],
  ) {}

  /**
   * Record a warning once per `key` (one key for all entries of a table).
   * The text reads like a field error: `FORMAT: FIELD (at offset N, value V) WHAT`.
   */
  add(key: string, field: string, offset: number, value: number | bigint | string, what: string): void {
    if (this.keys.has(key) || this.keys.size >= MAX_WARNINGS) return;
    this.keys.add(key);
    const text = `${this.format}: ${field} (at offset ${offset}, value ${String(value)}) ${what}`;
    this.list.push(text);
    this.sink?.(text);
  }
}
