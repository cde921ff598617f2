/**
 * A local HTTP server for tests (127.0.0.1 only, an ephemeral port), serving
 * files from a directory the way web servers and object stores do, with the
 * misbehaviours a client must survive: no Range support, a file that changes
 * between requests, dropped connections, redirects, a bearer token.
 * It counts the body bytes it sends (in all, and per path: `bodyBytes`,
 * bytes really written to the socket, so a client that stops early shows).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createReadStream, statSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';

export interface ServeOptions {
  ranges?: boolean;
  /** Change the ETag (and Last-Modified) after this many requests. */
  changeAfter?: number;
  /** Destroy the socket of every Nth request before answering. */
  dropEvery?: number;
  /** Required 'Authorization' header value. */
  token?: string;
  /** Answer 503 to the first N requests. */
  unavailableFirst?: number;
  /** Serve https with this key and certificate (PEM). */
  tls?: { key: string; cert: string };
}

export interface TestServer {
  url(path: string): string;
  bytesSent: number;
  requests: number;
  /** Authorization headers seen (to prove a token is not forwarded elsewhere). */
  authSeen: string[];
  /** Requests per path (e.g. '/disk.vmdk'). */
  requestsFor(path: string): number;
  /** Body bytes written to the socket per path. */
  bodyBytes(path: string): number;
  close(): Promise<void>;
}

export async function serveDir(dir: string, opts: ServeOptions = {}): Promise<TestServer> {
  const state = { bytesSent: 0, requests: 0, authSeen: [] as string[], perPath: new Map<string, { requests: number; bytes: number }>() };
  const counted = (p: string) => {
    let c = state.perPath.get(p);
    if (!c) state.perPath.set(p, (c = { requests: 0, bytes: 0 }));
    return c;
  };
  /** Pipe `file` (a range of it) into `res`, counting the bytes as they go. */
  const send = (path: string, file: string, res: ServerResponse, range?: { start: number; end: number }) => {
    const body = createReadStream(file, range);
    body.on('data', (chunk) => (counted(path).bytes += chunk.length));
    body.pipe(res);
  };
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    state.requests++;
    const n = state.requests;
    if (req.headers.authorization) state.authSeen.push(`${req.url} ${req.headers.authorization}`);
    if (opts.dropEvery && n % opts.dropEvery === 0) {
      req.socket.destroy();
      return;
    }
    if (opts.unavailableFirst && n <= opts.unavailableFirst) {
      res.writeHead(503).end();
      return;
    }
    const url = new URL(req.url ?? '/', 'http://x');
    counted(url.pathname).requests++;
    const redirect = /^\/redirect\/(\d+)(\/.*)$/.exec(url.pathname);
    if (redirect) {
      const left = Number(redirect[1]);
      res.writeHead(302, { location: left > 1 ? `/redirect/${left - 1}${redirect[2]}` : redirect[2] }).end();
      return;
    }
    if (opts.token && req.headers.authorization !== `Bearer ${opts.token}`) {
      res.writeHead(401).end();
      return;
    }
    const file = join(dir, decodeURIComponent(url.pathname));
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      res.writeHead(404).end();
      return;
    }
    const version = opts.changeAfter && n > opts.changeAfter ? 'v2' : 'v1';
    const common = { etag: `"${version}"`, 'last-modified': version === 'v1' ? 'Mon, 01 Dec 2025 00:00:00 GMT' : 'Tue, 02 Dec 2025 00:00:00 GMT' };
    const m = opts.ranges === false ? null : /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (!m) {
      res.writeHead(200, { ...common, 'content-length': size });
      state.bytesSent += size;
      if (size === 0) res.end();
      else send(url.pathname, file, res);
      return;
    }
    const start = Number(m[1]);
    const end = Math.min(m[2] ? Number(m[2]) : size - 1, size - 1);
    if (start >= size) {
      res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
      return;
    }
    res.writeHead(206, { ...common, 'accept-ranges': 'bytes', 'content-range': `bytes ${start}-${end}/${size}`, 'content-length': end - start + 1 });
    state.bytesSent += end - start + 1;
    send(url.pathname, file, res, { start, end });
  };
  const server: Server = opts.tls ? createHttpsServer({ key: opts.tls.key, cert: opts.tls.cert }, handler) : createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    // https needs the certificate's name (localhost); plain http stays on the address it listens on.
    url: (p: string) => `${opts.tls ? 'https://localhost' : 'http://127.0.0.1'}:${port}/${p.replace(/^\//, '')}`,
    get bytesSent() {
      return state.bytesSent;
    },
    get requests() {
      return state.requests;
    },
    get authSeen() {
      return state.authSeen;
    },
    requestsFor: (p: string) => state.perPath.get(p)?.requests ?? 0,
    bodyBytes: (p: string) => state.perPath.get(p)?.bytes ?? 0,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
