/**
 * `imgtool fsck -fn` on e2fsprogs 1.47.0's own e2fsck test images (all 185
 * tests/f_*\/image.gz of the source `npm run setup` downloads), judged by the
 * host's e2fsck 1.47.0 -fn on a copy of the same image: the same exit code on
 * every image. Where the host e2fsck restarts forever (two images do), imgtool
 * must stop with a clear error and exit 8 instead of printing without end.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { tempDir } from './helpers/peers.js';
import { copy, e2fsprogsTestImages, gunzipTo, hostFsckUntilLoop } from './e2fsprogs-fixtures.js';
import { runCli } from './partition-helpers.js';

const t = tempDir('imgtool-fsck-images-');
afterAll(() => t.cleanup());

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

describe("imgtool fsck -fn on e2fsprogs' own test images agrees with the host's e2fsck -fn", () => {
  // Throws (the file fails, it is not skipped) when the e2fsprogs source is missing.
  const images = e2fsprogsTestImages();

  it('finds all 185 f_* images of e2fsprogs 1.47.0', () => {
    expect(images.length).toBe(185);
  });

  for (const image of images) {
    it(`${image.name}: same exit code as the host (a looping host: exit 8 with a clear error)`, async () => {
      const ours = gunzipTo(image.gz, t.path(`${image.name}.img`));
      const theirs = copy(ours, t.path(`${image.name}-host.img`));
      const before = sha256(ours);
      // The host's e2fsck is another process: it runs while ours does.
      const [host, r] = await Promise.all([hostFsckUntilLoop(theirs, '-fn'), runCli(['fsck', '-fn', ours])]);
      if (host.status === 'loop') {
        expect(r.status).toBe(8);
        expect(r.stderr).toMatch(/^imgtool: e2fsck is looping: it restarted 100 times in a row printing the same messages each time/m);
      } else {
        expect(r.status).toBe(host.status);
        // imgtool adds a line of its own only to an operational error (8): why e2fsck stopped.
        if (!(host.status & 8)) expect(r.stderr).not.toMatch(/^imgtool:/m);
      }
      // Output stays bounded, and the checked image is untouched.
      expect(r.stdout.length + r.stderr.length).toBeLessThan(2 << 20);
      expect(sha256(ours)).toBe(before);
    });
  }
});
