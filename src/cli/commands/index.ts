/** Every CLI command, in the order `imgtool --help` lists them. */
import type { CommandSpec } from '../command.js';
import { convertCommand } from './convert.js';
import { infoCommand } from './info.js';
import { wrapCommand } from './wrap.js';
import { PART_COMMANDS } from './part.js';
import { guestFixCommand } from './guest.js';
import { domainConvertCommand } from './domain.js';
import { fsckCommand } from './fsck.js';
import { resizeFsCommand } from './resize-fs.js';

export const COMMANDS: CommandSpec[] = [
  convertCommand,
  infoCommand,
  wrapCommand,
  ...PART_COMMANDS,
  guestFixCommand,
  domainConvertCommand,
  fsckCommand,
  resizeFsCommand,
];
