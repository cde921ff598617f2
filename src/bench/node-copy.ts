/**
 * The floor for any Node program on this machine: a bare copy loop through
 * node:fs (2 MiB reads, 4 in flight on libuv's pool, a Buffer.compare zero
 * check, holes left as holes), no imgtool code at all. The bench runs it
 * against `qemu-img convert -O raw` so the table shows how much of imgtool's
 * gap to qemu-img is Node's own (thread-pool round trips, JS buffers) and
 * how much is ours.
 *
 * usage: node node-copy.js SRC DST
 */
import * as fs from 'node:fs';

const CHUNK = 2 << 20;
const IN_FLIGHT = 4;

async function main(src: string, dst: string): Promise<void> {
  const inFd = fs.openSync(src, 'r');
  const outFd = fs.openSync(dst, 'wx');
  const size = fs.fstatSync(inFd).size;
  const zero = new Uint8Array(CHUNK);
  const io = (op: typeof fs.read | typeof fs.write, fd: number, b: Uint8Array, n: number, at: number) =>
    new Promise<void>((res, rej) => (op as typeof fs.read)(fd, b, 0, n, at, (e) => (e ? rej(e) : res())));
  let next = 0;
  const worker = async () => {
    const b = new Uint8Array(CHUNK);
    while (next < size) {
      const at = next;
      const n = Math.min(CHUNK, size - at);
      next += n;
      await io(fs.read, inFd, b, n, at);
      if (Buffer.compare(b.subarray(0, n), zero.subarray(0, n)) !== 0) await io(fs.write, outFd, b, n, at);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  fs.ftruncateSync(outFd, size);
  fs.fdatasyncSync(outFd);
  fs.closeSync(outFd);
  fs.closeSync(inFd);
}

await main(process.argv[2]!, process.argv[3]!);
