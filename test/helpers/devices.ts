/** Patterned data for tests: every 512-byte sector is distinguishable. */
export function pattern(length: number, seed = 1): Uint8Array {
  const b = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
    if (i + 1 < length) b[i + 1] = (x >>> 8) & 0xff;
    if (i + 2 < length) b[i + 2] = (x >>> 16) & 0xff;
    if (i + 3 < length) b[i + 3] = (x >>> 24) & 0xff;
  }
  return b;
}
