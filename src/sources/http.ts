/**
 * An image on a web server, read in place: a BlockDevice whose reads are
 * HTTP Range requests (undici, the HTTP client Node's own fetch is built on;
 * no hand-written HTTP).
 *
 * - Only what the format reads is fetched: the header, the tables and the
 *   allocated data. Small reads (metadata) go through a bounded cache of
 *   aligned 64 KiB blocks, so neighbouring table reads share a request;
 *   large reads (convert's 2 MiB chunks) are fetched as they are.
 * - Several requests are in flight at once (convert reads ahead), on kept-alive
 *   connections.
 * - Connection errors and 5xx answers are retried with exponential backoff.
 * - Every answer must carry the validator (ETag, else Last-Modified) seen
 *   when the image was opened, and exactly the Content-Range asked for: an
 *   image that changes on the server mid-read is an error, never mixed data.
 * - Redirects are followed (at most 10); an Authorization header is not sent
 *   to another origin than the one it was given for (as curl does).
 * - Proxies come from http_proxy / https_proxy / no_proxy (undici's
 *   EnvHttpProxyAgent); TLS is always verified, `caFile` adds trusted CAs.
 * - Header values (tokens) are never part of any message.
 *
 * A server that ignores Range (answers 200 with the whole body) cannot be read
 * in place: `openHttp` then says so (`ranges: false`) and the caller streams
 * the body once (spooling it like standard input).
 */

import * as fs from 'node:fs';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { createRequire } from 'node:module';

/** undici, loaded when a URL is first opened (most runs never need it). */
const undici = () => createRequire(import.meta.url)('undici') as typeof import('undici');
/** node:tls (with net, crypto, stream) loads only when a URL is opened: start-up of local commands stays light. */
const rootCertificates = (): readonly string[] => (createRequire(import.meta.url)('node:tls') as typeof import('node:tls')).rootCertificates;
import { type Extent, type SourceDevice, checkRange, checkWritable } from '../core/device.js';
import { ImageError } from '../core/errors.js';
import { escapeLine } from '../core/escape.js';

export interface HttpOptions {
  /** Extra request headers, e.g. `Authorization: Bearer ...` (never printed). */
  headers?: Record<string, string>;
  /** PEM file of extra trusted certificate authorities. */
  caFile?: string;
  /** Do not use Range requests even if the server offers them (stream the body once). */
  noRanges?: boolean;
  /** Attempts per request on connection errors and 5xx answers. Default 5. */
  attempts?: number;
  /** First backoff delay in ms (doubles each retry). Default 200. */
  backoffMs?: number;
}

const MAX_REDIRECTS = 10;
const BLOCK = 64 * 1024;
const CACHE_BLOCKS = 64;
/** Reads at least this long bypass the block cache. */
const DIRECT = 256 * 1024;

/** A URL for messages: no user:password, no query (it may hold a signature). */
export function displayUrl(url: string | URL): string {
  try {
    const u = new URL(String(url));
    return escapeLine(`${u.protocol}//${u.host}${u.pathname}${u.search ? '?…' : ''}`);
  } catch {
    return '(invalid URL)';
  }
}

export function isUrl(s: string): boolean {
  return /^https?:\/\//i.test(s);
}

interface Target {
  url: URL;
  headers: Record<string, string>;
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
}

function header(h: Answer['headers'], name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Connection state shared by the requests of one image. */
class Client {
  readonly dispatcher: Dispatcher;
  constructor(
    readonly name: string,
    private readonly opts: HttpOptions,
  ) {
    let ca: string | undefined;
    if (opts.caFile) {
      try {
        ca = fs.readFileSync(opts.caFile, 'utf8');
      } catch (e) {
        throw new ImageError('usage', `--ca-file ${opts.caFile}: ${(e as Error).message}`);
      }
    }
    // A --ca-file adds to Node's bundled trust store; it never replaces it, and nothing turns verification off.
    this.dispatcher = new (undici().EnvHttpProxyAgent)(ca ? { connect: { ca: [...rootCertificates(), ca] } } : {});
  }

  /**
   * One request with redirects and retries. Resolves with the final answer
   * (its body unread) and the URL that gave it.
   */
  async send(start: Target, extra: Record<string, string>): Promise<{ answer: Answer; target: Target }> {
    const attempts = Math.max(1, this.opts.attempts ?? 5);
    let lastError: unknown;
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) await sleep((this.opts.backoffMs ?? 200) * 2 ** (attempt - 1));
      try {
        let target = start;
        for (let hop = 0; ; hop++) {
          const answer = (await undici().request(target.url, {
            method: 'GET',
            headers: { ...target.headers, ...extra },
            dispatcher: this.dispatcher,
          })) as unknown as Answer & { statusCode: number };
          answer.status = answer.statusCode;
          if (answer.status >= 300 && answer.status < 400 && answer.status !== 304) {
            await answer.body.dump();
            const loc = header(answer.headers, 'location');
            if (!loc) throw new ImageError('io', `${this.name}: HTTP ${answer.status} redirect without a Location`);
            if (hop + 1 > MAX_REDIRECTS) throw new ImageError('io', `${this.name}: more than ${MAX_REDIRECTS} redirects`);
            const next = new URL(loc, target.url);
            if (next.protocol !== 'http:' && next.protocol !== 'https:') {
              throw new ImageError('unsupported', `${this.name}: redirected to a ${escapeLine(next.protocol)} URL`);
            }
            // Credentials stay with the origin they were given for.
            const headers = next.origin === start.url.origin ? start.headers : withoutCredentials(start.headers);
            target = { url: next, headers };
            continue;
          }
          if (answer.status >= 500) {
            await answer.body.dump();
            lastError = new ImageError('io', `${this.name}: HTTP ${answer.status} from the server`);
            break; // retry
          }
          return { answer, target };
        }
      } catch (e) {
        if (e instanceof ImageError) throw e;
        lastError = e;
      }
    }
    if (lastError instanceof ImageError) throw lastError;
    const code = (lastError as { code?: string })?.code;
    throw new ImageError('io', `${this.name}: ${code ?? 'connection failed'} after ${attempts} attempts: ${escapeLine((lastError as Error)?.message ?? String(lastError))}`);
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }
}

function withoutCredentials(h: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) if (!/^(authorization|cookie|proxy-authorization)$/i.test(k)) out[k] = v;
  return out;
}

function failFor(name: string, status: number): ImageError {
  if (status === 401 || status === 403) {
    return new ImageError('io', `${name}: access denied (HTTP ${status}); pass credentials with --header 'Authorization: ...'`);
  }
  if (status === 404) return new ImageError('io', `${name}: not found (HTTP 404)`);
  return new ImageError('io', `${name}: HTTP ${status} from the server`);
}

/** `bytes START-END/TOTAL` → numbers; undefined when malformed. */
function parseContentRange(v: string | undefined): { start: number; end: number; total: number } | undefined {
  const m = v ? /^bytes (\d+)-(\d+)\/(\d+)$/.exec(v.trim()) : null;
  if (!m) return undefined;
  const [start, end, total] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (![start, end, total].every(Number.isSafeInteger) || end < start || end >= total) return undefined;
  return { start, end, total };
}

async function readBody(body: Answer['body'], into: Uint8Array, name: string): Promise<void> {
  let pos = 0;
  for await (const chunk of body as AsyncIterable<Uint8Array>) {
    if (pos + chunk.length > into.length) {
      await body.dump().catch(() => {});
      throw new ImageError('io', `${name}: the server sent more bytes than the range asked for`);
    }
    into.set(chunk, pos);
    pos += chunk.length;
  }
  if (pos !== into.length) throw new ImageError('io', `${name}: the server sent ${pos} of ${into.length} bytes (connection cut?)`);
}

export class HttpDevice implements SourceDevice {
  readonly readOnly = true;
  /** Bytes received in range answers (tests and --debug). */
  bytesFetched = 0;
  requests = 0;
  private readonly cache = new Map<number, Promise<Uint8Array>>();

  private constructor(
    readonly name: string,
    readonly size: number,
    private readonly client: Client,
    private readonly target: Target,
    private readonly validator: { etag?: string; lastModified?: string },
  ) {}

  /**
   * Open a URL. With ranges: an HttpDevice. Without (the server ignores Range,
   * or noRanges): the body as a stream, for the caller to spool.
   */
  static async open(
    url: string,
    opts: HttpOptions = {},
  ): Promise<{ ranges: true; device: HttpDevice } | { ranges: false; body: Readable; size?: number; close: () => Promise<void> }> {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new ImageError('usage', `not a valid URL: ${escapeLine(url)}`);
    }
    const name = displayUrl(parsed);
    const client = new Client(name, opts);
    const start: Target = { url: parsed, headers: { ...(opts.headers ?? {}) } };
    try {
      const first = Math.min(BLOCK, Number.MAX_SAFE_INTEGER);
      const { answer, target } = await client.send(start, opts.noRanges ? {} : { range: `bytes=0-${first - 1}` });
      if (answer.status === 200) {
        const len = Number(header(answer.headers, 'content-length'));
        return {
          ranges: false,
          body: answer.body as unknown as Readable,
          size: Number.isSafeInteger(len) ? len : undefined,
          // A body left unread (the reader failed or stopped) is dropped first: closing waits for open requests.
          close: async () => {
            (answer.body as unknown as Readable).destroy();
            await client.close();
          },
        };
      }
      if (answer.status === 416) {
        await answer.body.dump();
        const total = /^bytes \*\/(\d+)$/.exec(header(answer.headers, 'content-range') ?? '');
        if (total && Number(total[1]) === 0) {
          return { ranges: true, device: new HttpDevice(name, 0, client, target, validatorOf(answer)) };
        }
        throw new ImageError('io', `${name}: the server refused the range request (HTTP 416)`);
      }
      if (answer.status !== 206) {
        await answer.body.dump();
        throw failFor(name, answer.status);
      }
      const range = parseContentRange(header(answer.headers, 'content-range'));
      if (!range || range.start !== 0) {
        await answer.body.dump();
        throw new ImageError('io', `${name}: the server answered a range request with a malformed Content-Range`);
      }
      const dev = new HttpDevice(name, range.total, client, target, validatorOf(answer));
      const head = new Uint8Array(range.end + 1);
      await readBody(answer.body, head, name);
      dev.bytesFetched += head.length;
      dev.requests++;
      if (head.length === BLOCK || range.end + 1 === range.total) dev.cache.set(0, Promise.resolve(head));
      return { ranges: true, device: dev };
    } catch (e) {
      await client.close().catch(() => {});
      throw e;
    }
  }

  private async fetchRange(offset: number, into: Uint8Array): Promise<void> {
    if (into.length === 0) return;
    const end = offset + into.length - 1;
    const { answer } = await this.client.send(this.target, { range: `bytes=${offset}-${end}` });
    if (answer.status !== 206) {
      await answer.body.dump();
      if (answer.status === 200) throw new ImageError('io', `${this.name}: the server stopped honouring Range requests`);
      throw failFor(this.name, answer.status);
    }
    const now = validatorOf(answer);
    if ((this.validator.etag && now.etag !== this.validator.etag) || (!this.validator.etag && this.validator.lastModified && now.lastModified !== this.validator.lastModified)) {
      await answer.body.dump();
      throw new ImageError('io', `${this.name}: the image changed on the server while it was being read (${this.validator.etag ? 'ETag' : 'Last-Modified'} differs)`);
    }
    const range = parseContentRange(header(answer.headers, 'content-range'));
    if (!range || range.start !== offset || range.end !== end || range.total !== this.size) {
      await answer.body.dump();
      throw new ImageError('io', `${this.name}: the server answered bytes ${offset}-${end} with another range (the image changed?)`);
    }
    await readBody(answer.body, into, this.name);
    this.bytesFetched += into.length;
    this.requests++;
  }

  private block(index: number): Promise<Uint8Array> {
    const hit = this.cache.get(index);
    if (hit) {
      this.cache.delete(index);
      this.cache.set(index, hit); // most recent last
      return hit;
    }
    const start = index * BLOCK;
    const buf = new Uint8Array(Math.min(BLOCK, this.size - start));
    const p = this.fetchRange(start, buf).then(() => buf);
    this.cache.set(index, p);
    p.catch(() => this.cache.delete(index));
    while (this.cache.size > CACHE_BLOCKS) this.cache.delete(this.cache.keys().next().value as number);
    return p;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buf.length, 'read');
    if (buf.length >= DIRECT) return this.fetchRange(offset, buf);
    const first = Math.floor(offset / BLOCK);
    const last = Math.floor((offset + buf.length - 1) / BLOCK);
    for (let i = first; i <= last && buf.length > 0; i++) {
      const b = await this.block(i);
      const from = Math.max(offset, i * BLOCK);
      const to = Math.min(offset + buf.length, i * BLOCK + b.length);
      buf.set(b.subarray(from - i * BLOCK, to - i * BLOCK), from - offset);
    }
  }

  async write(): Promise<void> {
    checkWritable(this, this.name);
  }
  async writeZeroes(): Promise<void> {
    checkWritable(this, this.name);
  }
  async status(offset: number, length: number): Promise<Extent> {
    checkRange(this, offset, length, 'status');
    return { offset, length, kind: 'data' };
  }
  get bytesRead(): number {
    return this.bytesFetched;
  }
  /** Nothing of it is on this machine's disk: qemu-img info has no actual-size for a URL either. */
  allocatedOnDisk(): undefined {
    return undefined;
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {
    this.cache.clear();
    await this.client.close();
  }
}

function validatorOf(a: Answer): { etag?: string; lastModified?: string } {
  return { etag: header(a.headers, 'etag'), lastModified: header(a.headers, 'last-modified') };
}
