/**
 * Where image bytes come from besides local files: URLs (read in place with
 * Range requests, or streamed once and spooled when the server cannot seek).
 */

import type { BlockDevice } from '../core/device.js';
import { HttpDevice, type HttpOptions } from './http.js';
import { spoolStream } from './spool.js';

export { HttpDevice, isUrl, displayUrl, type HttpOptions } from './http.js';
export { spoolStream, type SpoolOptions } from './spool.js';

export interface UrlOptions {
  http?: HttpOptions;
  scratchDir?: string;
}

/** A device over the image at `url`: in place when the server honours Range, else spooled. */
export async function openUrl(url: string, opts: UrlOptions = {}): Promise<BlockDevice> {
  const r = await HttpDevice.open(url, opts.http);
  if (r.ranges) return r.device;
  try {
    return await spoolStream(r.body as AsyncIterable<Uint8Array>, { scratchDir: opts.scratchDir });
  } finally {
    await r.close();
  }
}

