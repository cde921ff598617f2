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
import { mapCommand } from './map.js';
import { compareCommand } from './compare.js';
import { measureCommand } from './measure.js';
import { createCommand } from './create.js';
import { snapshotCommand } from './snapshot.js';
import { resizeCommand } from './resize.js';
import { checkCommand } from './check.js';

export const COMMANDS: CommandSpec[] = [
  convertCommand,
  infoCommand,
  wrapCommand,
  ...PART_COMMANDS,
  guestFixCommand,
  domainConvertCommand,
  fsckCommand,
  resizeFsCommand,
  mapCommand,
  compareCommand,
  measureCommand,
  createCommand,
  snapshotCommand,
  resizeCommand,
  checkCommand,
];
