/**
 * The lazy command index (src/cli/commands/index.ts) names and summarises
 * each command without loading it; those words must stay equal to each
 * command's own spec, and every spec must be reachable.
 */
import { describe, expect, it } from 'vitest';
import { COMMAND_INDEX } from '../src/cli/commands/index.js';

describe('the command index', () => {
  it("has each command's own name and summary, in a unique entry", async () => {
    const names = COMMAND_INDEX.map((c) => c.name);
    expect(new Set(names).size).toBe(names.length);
    for (const entry of COMMAND_INDEX) {
      const spec = await entry.load();
      expect(spec.name).toBe(entry.name);
      expect(spec.summary).toBe(entry.summary);
    }
  });
});
