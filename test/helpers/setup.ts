/**
 * Many tests run peers with spawnSync. Between tests, give the worker's event
 * loop a turn: vitest's runner goes from test to test on promise callbacks
 * alone, so a file of synchronous tests never lets the worker read its
 * parent's replies, and after 60 s the worker reports an RPC timeout.
 */
import { afterEach } from 'vitest';

afterEach(() => new Promise<void>((resolve) => setImmediate(resolve)));
