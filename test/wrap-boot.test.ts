/**
 * The whole job, booted for real: the Xen-style test guest (a bare ext4 with
 * a Debian cloud kernel, xvda in its fstab, an xvc0 getty) is wrapped by the
 * CLI with --boot grub and --boot direct, to raw and to qcow2, and each disk
 * boots in qemu-system-x86_64 (TCG) to the guest's marker, showing the fixed
 * fstab and consoles. The direct-boot case also converts the guest's xl
 * configuration (--domain) and boots from the arguments its XML implies.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { imgtool, must, peer, run, sha256File, tempDir, runAsync } from './helpers/peers.js';
import { boot, bootWith, expectFixedGuest } from './helpers/qemu.js';
import { qemuArgsFromDomain } from '../src/guest/domain/qemu.js';

const t = tempDir('imgtool-wrapboot-');
afterAll(() => t.cleanup());

const BUILD = fileURLToPath(new URL('./fixtures/build-guest.sh', import.meta.url));
let guest = '';
let guestHash = '';

beforeAll(async () => {
  for (const tool of ['qemu-system-x86_64', 'busybox', 'grub-mkimage', 'virt-xml-validate']) peer(tool);
  const r = await runAsync('bash', [BUILD, t.dir], { timeout: 280_000 });
  if (r.status !== 0) throw new Error(`build-guest.sh failed (${r.status}): ${r.stderr}`);
  guest = t.path('guest.img');
  guestHash = sha256File(guest);
}, 300_000);

interface Report {
  filesystem: { uuid: string };
  swap: { uuid: string };
  guest: { boot: { mode: string }; direct?: { kernel: string; initrd?: string; 'qemu-args': string[] } };
  domain?: { path: string };
}

function wrap(fmt: string, bootMode: string, extra: string[] = []): { out: string; report: Report } {
  const out = t.path(`kvm-${bootMode}.${fmt}`);
  const r = imgtool(['wrap', guest, '--swap', '32M', '--boot', bootMode, '-o', out, '--output', 'json', ...extra]);
  expect(r.status, r.stderr).toBe(0);
  expect(sha256File(guest)).toBe(guestHash);
  return { out, report: JSON.parse(r.stdout) as Report };
}

function hostFsckClean(out: string, fmt: string): void {
  const raw = `${out}.fsck.raw`;
  must('qemu-img', ['convert', '-f', fmt, '-O', 'raw', out, raw]);
  const r = run('e2fsck', ['-fn', `${raw}?offset=${1 << 20}`]);
  expect(r.status, r.stdout + r.stderr).toBe(0);
}

describe('a wrapped Xen guest boots under KVM (qemu, TCG)', () => {
  it.each(['raw', 'qcow2'])('through GRUB installed by wrap --boot grub, as %s', async (fmt) => {
    const { out, report } = wrap(fmt, 'grub');
    expect(report.guest.boot.mode).toBe('grub');
    hostFsckClean(out, fmt);
    const serial = await boot(['-drive', `file=${out},format=${fmt},if=virtio`]);
    expect(serial).toContain('GRUB loading');
    expectFixedGuest(serial, report.filesystem.uuid, report.swap.uuid);
  }, 300_000);

  it.each(['raw', 'qcow2'])('by direct kernel boot from wrap --boot direct, as %s', async (fmt) => {
    const { out, report } = wrap(fmt, 'direct');
    expect(report.guest.boot.mode).toBe('direct');
    expect(existsSync(`${out}.vmlinuz`)).toBe(true);
    hostFsckClean(out, fmt);
    const serial = await boot(report.guest.direct!['qemu-args']);
    expectFixedGuest(serial, report.filesystem.uuid, report.swap.uuid);
  }, 300_000);

  it('with --domain: the converted libvirt XML validates and boots with the QEMU arguments it implies', async () => {
    const cfg = t.path('guest.cfg');
    writeFileSync(
      cfg,
      [
        "name = 'webguest'",
        'memory = 512',
        'vcpus = 1',
        "kernel = '/boot/vmlinuz-xen'",
        "ramdisk = '/boot/initrd-xen'",
        "root = '/dev/xvda1 ro'",
        "extra = 'console=hvc0 xencons=tty'",
        "disk = [ 'file:/srv/xen/webguest.img,xvda1,w' ]",
        "vif = [ 'mac=00:16:3e:12:34:56,bridge=xenbr0' ]",
        '',
      ].join('\n'),
    );
    const { out, report } = wrap('qcow2', 'direct', ['--domain', cfg, '--force']);
    expect(report.domain!.path).toBe(`${out}.xml`);
    const xml = readFileSync(`${out}.xml`, 'utf8');
    const v = run('virt-xml-validate', [`${out}.xml`, 'domain']);
    expect(v.status, v.stdout + v.stderr).toBe(0);
    expect(xml).toContain(`<kernel>${out}.vmlinuz</kernel>`);
    expect(xml).toMatch(/<mac address=["']00:16:3e:12:34:56["']/);
    expect(xml).not.toMatch(/xvda|hvc0|xencons|type=["']xen["']/);
    const serial = await bootWith(qemuArgsFromDomain(xml, { serial: 'stdio' }).concat(['-monitor', 'none']));
    expectFixedGuest(serial, report.filesystem.uuid, report.swap.uuid);
  }, 300_000);

  it('--dry-run of guest fix on the wrapped disk changes nothing', () => {
    const out = t.path('kvm-grub.qcow2');
    const before = sha256File(out);
    const r = imgtool(['guest', 'fix', '--dry-run', out]);
    expect([0, 1]).toContain(r.status);
    expect(sha256File(out)).toBe(before);
  });
});
