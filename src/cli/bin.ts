#!/usr/bin/env node
/**
 * The installed `imgtool` command: the entry of the bundle (scripts/bundle.mjs).
 * With --debug, source maps are turned on before the rest of imgtool loads,
 * so every frame of a stack trace names its TypeScript file and line.
 */
if (process.argv.includes('--debug')) process.setSourceMapsEnabled(true);
const { cli } = await import('./main.js');
await cli();
