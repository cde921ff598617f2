/**
 * The fuzz worker: a child process that reads one case at a time through the
 * public API (openImage, info, a full extent walk, reads of every extent,
 * bounded) and reports ok / rejected (ImageError) / crash (anything else).
 * Hangs and memory blow-ups are caught by the parent, which kills us.
 */

import * as fs from 'node:fs';
import { pathToFileURL } from 'node:url';
import { ImageError } from '../core/errors.js';
import { isZero } from '../core/device.js';
import { FileDevice } from '../core/file.js';
import { openImage } from '../formats/index.js';
import type { FormatDriver, Image } from '../formats/types.js';
import type { CaseReply, CaseRequest, ErrorReport, ReadLimits } from './protocol.js';

/** A driver broke the device contract (device.ts): counted as a crash. */
export class ContractError extends Error {
  override name = 'ContractError';
}

const CHUNK = 1 << 20;

function report(e: unknown): ErrorReport {
  if (e instanceof ImageError) {
    return { name: e.name, message: e.message, kind: e.kind, field: e.context.field, offset: e.context.offset };
  }
  if (e instanceof Error) return { name: e.name, message: e.message, stack: e.stack };
  return { name: typeof e, message: String(e) };
}

/** Walk status from 0 to the end and read each extent; check the contract on the way. */
async function walk(image: Image, limits: ReadLimits): Promise<void> {
  const size = image.size;
  if (!Number.isSafeInteger(size) || size < 0) throw new ContractError(`size ${size} is not a byte count`);
  let pos = 0;
  let bytes = 0;
  const buf = new Uint8Array(CHUNK);
  for (let calls = 0; pos < size && calls < limits.maxStatus; calls++) {
    const e = await image.status(pos, size - pos);
    if (e.offset !== pos || !(e.length > 0) || e.offset + e.length > size) {
      throw new ContractError(`status(${pos}, ${size - pos}) returned [${e.offset}, ${e.offset + e.length}) ${e.kind}`);
    }
    for (let at = pos; at < pos + e.length && bytes < limits.maxBytes; ) {
      const n = Math.min(CHUNK, pos + e.length - at, limits.maxBytes - bytes);
      const view = buf.subarray(0, n);
      await image.read(view, at);
      if (e.kind === 'zero' && !isZero(view)) throw new ContractError(`extent at ${pos} is 'zero' but [${at}, ${at + n}) reads non-zero`);
      at += n;
      bytes += n;
    }
    pos += e.length;
  }
}

/** Write the whole guest view to `file` (holes where it reads zero). */
async function exportRaw(image: Image, file: string): Promise<void> {
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, image.size);
    const buf = new Uint8Array(CHUNK);
    for (let pos = 0; pos < image.size; pos += CHUNK) {
      const view = buf.subarray(0, Math.min(CHUNK, image.size - pos));
      await image.read(view, pos);
      if (!isZero(view)) fs.writeSync(fd, view, 0, view.length, pos);
    }
  } finally {
    fs.closeSync(fd);
  }
}

async function open(req: CaseRequest): Promise<{ image: Image; driver: string }> {
  if (req.driverModule) {
    const mod = (await import(pathToFileURL(req.driverModule).href)) as { driver: FormatDriver };
    const child = await FileDevice.open(req.path);
    try {
      return { image: await mod.driver.open(child, { path: req.path }), driver: mod.driver.name };
    } catch (e) {
      await child.close();
      throw e;
    }
  }
  const opened = await openImage(req.path, { format: req.format, backing: req.backingDir });
  return { image: opened.image, driver: opened.driver.name };
}

function resetPeak(): void {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
  } catch {
    /* not permitted here: the parent's polling still bounds memory */
  }
}

function peakRss(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export async function runCase(req: CaseRequest): Promise<CaseReply> {
  const reply: CaseReply = { type: 'result', id: req.id, outcome: 'ok', peakRss: 0 };
  let image: Image | undefined;
  try {
    const o = await open(req);
    image = o.image;
    reply.driver = o.driver;
    reply.size = image.size;
    const info = await image.info();
    reply.backing = info['backing-filename'];
    await walk(image, req.limits);
    if (req.exportPath && image.size <= req.limits.maxExport) {
      await exportRaw(image, req.exportPath);
      reply.exported = true;
    }
  } catch (e) {
    reply.outcome = e instanceof ImageError ? 'rejected' : 'crash';
    reply.error = report(e);
  }
  if (image) {
    try {
      await image.close();
    } catch (e) {
      if (reply.outcome === 'ok' || !(e instanceof ImageError)) {
        reply.outcome = e instanceof ImageError ? 'rejected' : 'crash';
        reply.error = report(e);
      }
    }
  }
  return reply;
}

let current: number | undefined;
let last: number | undefined;

function main(): void {
  const send = (m: CaseReply) => process.send?.(m);
  // A stray rejection or exception from a driver belongs to the case running now.
  const stray = (e: unknown) => {
    const late = current === undefined;
    const id = current ?? last;
    if (id !== undefined) send({ type: 'result', id, outcome: 'crash', error: report(e), peakRss: peakRss(), late });
    // During a case the process state is suspect: end it (the parent starts another). Between cases, carry on.
    if (!late) process.exit(70);
  };
  process.on('unhandledRejection', stray);
  process.on('uncaughtException', stray);
  process.on('message', (req: CaseRequest) => {
    current = req.id;
    resetPeak();
    void runCase(req).then((r) => {
      r.peakRss = peakRss();
      current = undefined;
      last = req.id;
      send(r);
    });
  });
  process.on('disconnect', () => process.exit(0));
  send({ type: 'result', id: -1, outcome: 'ok', peakRss: 0 });
}

if (process.send) main();
