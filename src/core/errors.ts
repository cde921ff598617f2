/**
 * One error type for the whole library.
 *
 * Callers match on `kind`; the context says where: the file, the format, the
 * on-disk field, its byte offset and the value found. The CLI prints
 * `message` on one line and maps `kind` to an exit code (see EXIT_CODES).
 */

export type ErrorKind =
  | 'usage' //          the caller asked for something impossible (bad option, output exists)
  | 'io' //             the operating system failed a read, write, open, ...
  | 'invalid-format' // the bytes are not what the format says they must be
  | 'corrupt' //        the format is recognised but its metadata is inconsistent
  | 'unsupported' //    valid, but a feature imgtool does not (or will not) handle
  | 'out-of-bounds' //  a request outside a device's range
  | 'interrupted'; //   stopped by a signal

export interface ErrorContext {
  path?: string;
  format?: string;
  /** Name of the on-disk field that was wrong, e.g. `l1_table_offset`. */
  field?: string;
  /** Byte offset of that field (or of the structure) in the container file. */
  offset?: number;
  /** The value found. bigint for 64-bit fields. */
  value?: number | bigint | string;
  /** What we were doing: `read`, `write`, `open`, ... */
  operation?: string;
}

export class ImageError extends Error {
  readonly kind: ErrorKind;
  readonly context: ErrorContext;

  constructor(kind: ErrorKind, message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ImageError';
    this.kind = kind;
    this.context = context;
  }

  /** A one-line description including the context, for the CLI. */
  describe(): string {
    const c = this.context;
    const where: string[] = [];
    if (c.path && !this.message.includes(c.path)) where.push(c.path);
    if (c.format && !this.message.includes(c.format)) where.push(c.format);
    if (c.field && !this.message.includes(c.field)) where.push(`field ${c.field}`);
    if (c.offset !== undefined && !this.message.includes('offset')) where.push(`at offset ${c.offset}`);
    if (c.value !== undefined && !this.message.includes('value')) where.push(`value ${String(c.value)}`);
    return where.length ? `${where.join(': ')}: ${this.message}` : this.message;
  }
}

/** Shorthand for a format error that names the field, its offset and its value. */
export function fieldError(
  kind: 'invalid-format' | 'corrupt' | 'unsupported',
  format: string,
  field: string,
  offset: number,
  value: number | bigint | string,
  why: string,
): ImageError {
  return new ImageError(kind, `${format}: ${field} (at offset ${offset}, value ${String(value)}) ${why}`, {
    format,
    field,
    offset,
    value,
  });
}

/** Wrap a Node.js system error (ENOENT, EIO, ...) as an ImageError of kind `io`. */
export function ioError(err: unknown, operation: string, path?: string): ImageError {
  if (err instanceof ImageError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = e?.code ? `${e.code}: ` : '';
  const msg = e?.message ?? String(err);
  // Node's messages already say "ENOENT: no such file or directory, open 'x'"
  const text = msg.startsWith(code) ? msg : code + msg;
  return new ImageError('io', `${operation} failed: ${text}`, { path, operation }, { cause: err });
}

/**
 * CLI exit codes. 0 is success. Commands that answer a question (compare,
 * check, fsck) use their own documented codes for the answer; errors map here.
 * 128 and above are left to signals (130 after Ctrl-C).
 */
export const EXIT_CODES: Record<ErrorKind | 'internal', number> = {
  usage: 2,
  'invalid-format': 3,
  corrupt: 3,
  unsupported: 4,
  io: 5,
  'out-of-bounds': 6,
  interrupted: 130,
  internal: 70,
};
