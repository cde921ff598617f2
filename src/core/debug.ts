/**
 * A debug channel for facts a user only wants with `--debug` (which fast
 * path was taken, which fallback and why). The CLI turns it on; the library
 * is silent by default.
 */

let sink: ((line: string) => void) | undefined;
const said = new Set<string>();

/** Route debug lines to `write` (undefined: silence). */
export function setDebugSink(write: ((line: string) => void) | undefined): void {
  sink = write;
}

/** Say `message` once per process on the debug channel. */
export function debugOnce(message: string): void {
  if (!sink || said.has(message)) return;
  said.add(message);
  sink(`imgtool: debug: ${message}\n`);
}
