/** Every CLI command, in the order `imgtool --help` lists them. */
import type { CommandSpec } from '../command.js';
import { convertCommand } from './convert.js';
import { infoCommand } from './info.js';
import { PART_COMMANDS } from './part.js';
import { guestFixCommand } from './guest.js';

export const COMMANDS: CommandSpec[] = [
  convertCommand,
  infoCommand,
  ...PART_COMMANDS,
  guestFixCommand,
];
