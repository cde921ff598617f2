/**
 * Strings that come from outside imgtool (an image's backing-file name, a
 * guest's files, a Xen configuration, a URL) are escaped before they reach a
 * terminal, so a hostile image cannot forge lines ("imgtool: all good"),
 * move the cursor, retitle the window or hide text with ANSI sequences.
 *
 * - `escapeLine` is for anything printed as (part of) one line: an error, a
 *   warning, a field of `info`. Every C0 control (newline and tab included),
 *   DEL, every C1 control, and the Unicode format characters that reorder or
 *   hide text (bidirectional overrides and isolates, zero-width joiners,
 *   line/paragraph separators) become visible escapes: `\n`, `\t`, `\x1b`,
 *   `\u202e`. (A backslash already in the string is printed as it is: it
 *   is visible text, and cannot move the cursor or end a line.)
 * - `escapeText` is for multi-line text that is meant to be shown as lines
 *   (a unified diff of a guest's file): newlines and tabs stay, everything
 *   else is escaped as in `escapeLine`.
 *
 * JSON output is never escaped this way: JSON.stringify escapes control
 * characters itself and keeps the exact value for machines.
 */

// C0 controls, DEL, C1 controls; bidi embeddings/overrides/isolates; zero-width
// and joiner characters; line and paragraph separators; BOM.
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]/g;
const UNSAFE_KEEP_LINES = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]/g;

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * C0 controls as `\xHH` (or `\n`, `\r`, `\t`); DEL and everything above as
 * `\uHHHH`, which is also a valid JSON escape of the same character: JSON.stringify
 * leaves DEL, C1 controls and bidi characters raw, and escaping them this way
 * keeps a JSON document parseable and its values exact.
 */
function escapeChar(c: string): string {
  const named = NAMED[c];
  if (named) return named;
  const code = c.charCodeAt(0);
  return code < 0x20 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/** One line, safe for a terminal: no control or reordering character survives. */
export function escapeLine(s: string): string {
  return s.replace(UNSAFE, escapeChar);
}

/** Lines of text, safe for a terminal: newlines and tabs kept, other controls escaped. */
export function escapeText(s: string): string {
  return s.replace(UNSAFE_KEEP_LINES, escapeChar);
}

/**
 * A stream whose string writes are made safe for a terminal (`escapeText`;
 * a `\r` that starts a write, as a progress bar redraws its line, is kept);
 * Buffer writes (image data on a pipe) pass through untouched. The CLI's
 * standard output and error go through this, so a string that escaped every
 * other check still cannot move the cursor or hide text.
 */
export function terminalSafe<T extends NodeJS.WritableStream>(stream: T): T {
  const write = (chunk: unknown, ...rest: unknown[]): boolean => {
    if (typeof chunk === 'string') {
      const lead = chunk.startsWith('\r') ? '\r' : '';
      chunk = lead + escapeText(chunk.slice(lead.length));
    }
    return (stream.write as (...a: unknown[]) => boolean).call(stream, chunk, ...rest);
  };
  return new Proxy(stream, {
    get(target, prop) {
      if (prop === 'write') return write;
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

/**
 * Decode bytes from an image as text for a message: invalid UTF-8 becomes
 * U+FFFD (never a raw byte), then the result is escaped as one line.
 */
export function bytesForMessage(bytes: Uint8Array): string {
  return escapeLine(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
}
