/** CRC-32 moved to src/core/crc32.ts (src/fs needs it and must not import src/partition); kept as a re-export. */
export { crc32, crc32Update, crc32c, crc32cUpdate } from '../core/crc32.js';
