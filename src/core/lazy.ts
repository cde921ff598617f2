/**
 * Node built-ins that only some commands need, loaded on first use.
 *
 * A static `import ... from 'node:crypto'` loads (and compiles) the module
 * when the bundle starts, whatever the command: node:crypto, node:zlib and
 * node:child_process together cost about 10 ms of every start on this
 * machine, which is a sixth of imgtool's start-up over bare Node (README,
 * Performance). `require` through createRequire is synchronous and cached by
 * Node, so a getter here costs a lookup after the first call.
 */

import { createRequire } from 'node:module';

const load = createRequire(import.meta.url);

export const nodeCrypto = (): typeof import('node:crypto') => load('node:crypto') as typeof import('node:crypto');
export const nodeZlib = (): typeof import('node:zlib') => load('node:zlib') as typeof import('node:zlib');
export const nodeChildProcess = (): typeof import('node:child_process') => load('node:child_process') as typeof import('node:child_process');
