/**
 * Images read from a web server (issue: images from anywhere). A local server
 * on 127.0.0.1 serves qemu-img-made images; what imgtool reads over HTTP must
 * equal the local file (qemu-img compare judges the conversions), with only
 * the allocated data and the metadata fetched, and every misbehaviour ending
 * in a clear error, never mixed data.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HttpDevice } from '../src/sources/http.js';
import { openUrl } from '../src/sources/index.js';
import { ImageError } from '../src/core/errors.js';
import { readBytes } from '../src/core/device.js';
import { readFileSync } from 'node:fs';
import { must, tempDir } from './helpers/peers.js';
import { serveDir, type TestServer } from './helpers/http-server.js';

const t = tempDir('imgtool-http-');
const MIB = 1 << 20;
let server: TestServer | undefined;

beforeAll(() => {
  // 1 GiB virtual, 6 MiB of data in three places.
  must('qemu-img', ['create', '-q', '-f', 'qcow2', t.path('disk.qcow2'), '1G']);
  must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 2M', '-c', 'write -P 0x22 500M 2M', '-c', 'write -P 0x33 1022M 2M', t.path('disk.qcow2')]);
  must('qemu-img', ['create', '-q', '-f', 'raw', t.path('small.raw'), '64M']);
  must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 40M 2M', t.path('small.raw')]);
});
afterEach(async () => {
  await server?.close();
  server = undefined;
});
afterAll(() => t.cleanup());

async function expectImageError(p: Promise<unknown>, re: RegExp): Promise<ImageError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(ImageError);
  expect((e as ImageError).message).toMatch(re);
  return e as ImageError;
}

describe('HttpDevice', () => {
  it('reads any range exactly as the file holds it, with ranged requests', async () => {
    server = await serveDir(t.dir);
    const r = await HttpDevice.open(server.url('disk.qcow2'));
    expect(r.ranges).toBe(true);
    if (!r.ranges) return;
    const local = readFileSync(t.path('disk.qcow2'));
    expect(r.device.size).toBe(local.length);
    for (const [off, len] of [
      [0, 512],
      [65_000, 200_000],
      [local.length - 700, 700],
      [123_457, 1_000_000],
    ] as const) {
      expect(Buffer.from(await readBytes(r.device, off, len)).equals(local.subarray(off, off + len))).toBe(true);
    }
    await r.device.close();
  });

  it('refuses to mix data when the file changes on the server between requests', async () => {
    server = await serveDir(t.dir, { changeAfter: 1 });
    const r = await HttpDevice.open(server.url('disk.qcow2'));
    if (!r.ranges) throw new Error('expected ranges');
    await expectImageError(readBytes(r.device, 1 * MIB, 1 * MIB), /changed on the server/);
    await r.device.close();
  });

  it('retries dropped connections and 5xx answers, then succeeds', async () => {
    server = await serveDir(t.dir, { dropEvery: 2, unavailableFirst: 1 });
    const r = await HttpDevice.open(server.url('disk.qcow2'), { backoffMs: 10 });
    if (!r.ranges) throw new Error('expected ranges');
    const local = readFileSync(t.path('disk.qcow2'));
    for (let i = 0; i < 5; i++) {
      const off = i * 300_000;
      expect(Buffer.from(await readBytes(r.device, off, 300_000)).equals(local.subarray(off, off + 300_000))).toBe(true);
    }
    await r.device.close();
  });

  it('gives up with a clear error when the server stays down', async () => {
    server = await serveDir(t.dir, { unavailableFirst: 1000 });
    await expectImageError(HttpDevice.open(server.url('disk.qcow2'), { backoffMs: 1, attempts: 3 }), /HTTP 503/);
  });

  it('follows at most 10 redirects', async () => {
    server = await serveDir(t.dir);
    const ok = await HttpDevice.open(server.url('redirect/10/disk.qcow2'));
    expect(ok.ranges).toBe(true);
    if (ok.ranges) await ok.device.close();
    await expectImageError(HttpDevice.open(server.url('redirect/11/disk.qcow2')), /more than 10 redirects/);
  });

  it('sends a bearer token, and never shows it in an error', async () => {
    const token = 'sekrit-token-123';
    server = await serveDir(t.dir, { token });
    const e = await expectImageError(HttpDevice.open(server.url('disk.qcow2')), /access denied \(HTTP 401\)/);
    expect(e.message).not.toContain(token);
    const r = await HttpDevice.open(server.url('disk.qcow2'), { headers: { Authorization: `Bearer ${token}` } });
    expect(r.ranges).toBe(true);
    if (r.ranges) await r.device.close();
    const wrong = await expectImageError(HttpDevice.open(server.url('disk.qcow2'), { headers: { Authorization: 'Bearer nope-456' } }), /HTTP 401/);
    expect(wrong.message + wrong.describe()).not.toContain('nope-456');
  });

  it('a server without Range support is streamed once and spooled', async () => {
    server = await serveDir(t.dir, { ranges: false });
    const dev = await openUrl(server.url('small.raw'));
    const local = readFileSync(t.path('small.raw'));
    expect(dev.size).toBe(local.length);
    expect(Buffer.from(await readBytes(dev, 39 * MIB, 4 * MIB)).equals(local.subarray(39 * MIB, 43 * MIB))).toBe(true);
    await dev.close();
    expect(server.requests).toBe(1);
  });
});
