/**
 * Booting test guests in qemu-system-x86_64 under software emulation (TCG:
 * nested KVM guests hang on these machines). Timeouts are hang guards (qemu
 * is killed), not timing assertions.
 */
import { spawn } from 'node:child_process';
import { expect } from 'vitest';
import { peer } from './peers.js';

/** Boot qemu (TCG, virtio disk, serial on stdout); resolves with the serial output once the guest powered off. */
export function boot(args: string[], timeoutMs = 150_000): Promise<string> {
  return bootWith(['-m', '512', '-nographic', '-serial', 'stdio', '-monitor', 'none', ...args], timeoutMs);
}

/** The text the guest's init printed between `--- NAME` and the next `---` line. */
export function section(out: string, name: string): string {
  const start = out.indexOf(`--- ${name}\n`);
  if (start < 0) throw new Error(`no '--- ${name}' section in the serial output:\n${out.slice(-3000)}`);
  const rest = out.slice(start + name.length + 5);
  const end = rest.search(/^(---|IMGTOOL-END)/m);
  // The kernel prints to the same serial console (printk lines such as
  // "[    2.21] clocksource: ..." can land inside a section at any moment):
  // they are not the guest script's output, so drop them.
  return (end < 0 ? rest : rest.slice(0, end)).replace(/^\[\s*\d+\.\d+\] .*\n?/gm, '');
}

export function expectFixedGuest(out: string, fsUuid: string, swapUuid: string): void {
  expect(out, out.slice(-3000)).toContain('IMGTOOL-BOOT-OK');
  expect(out).toContain('IMGTOOL-END');
  expect(section(out, 'cmdline')).toMatch(new RegExp(`root=UUID=${fsUuid} ro (\\S+ )*console=tty0 console=ttyS0,115200\\s*$`));
  expect(section(out, 'root')).toMatch(/^\/dev\/vda1 \/ ext4/);
  const fstab = section(out, '/etc/fstab');
  expect(fstab).toContain(`UUID=${fsUuid}\t/\text4`);
  expect(fstab).toContain(`UUID=${swapUuid}\tnone\tswap`);
  expect(fstab).not.toContain('xvd');
  const inittab = section(out, '/etc/inittab');
  expect(inittab).toContain('co:2345:respawn:/sbin/getty 115200 ttyS0');
  expect(inittab).toContain('1:2345:respawn:/sbin/getty 38400 tty1');
  expect(inittab).not.toMatch(/xvc0|hvc0/);
  expect(section(out, '/etc/securetty')).toMatch(/^ttyS0$/m);
  const wants = section(out, 'getty.target.wants');
  expect(wants).toContain('serial-getty@ttyS0.service -> /lib/systemd/system/serial-getty@.service');
  expect(wants).toContain('getty@tty1.service -> /lib/systemd/system/getty@.service');
  expect(wants).not.toContain('hvc0');
  // The swap line in the fixed fstab works: the init's `swapon -a` found the partition by UUID.
  expect(section(out, 'swap')).toMatch(/^\/dev\/vda2\s+partition/m);
}


/** Boot with arguments that already choose the console (e.g. from a domain's XML); adds only TCG and no network. */
export function bootWith(args: string[], timeoutMs = 150_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const q = spawn(peer('qemu-system-x86_64'), ['-accel', 'tcg', '-no-reboot', '-nic', 'none', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    q.stdout.on('data', (d) => (out += String(d)));
    q.stderr.on('data', (d) => (out += String(d)));
    const timer = setTimeout(() => {
      q.kill('SIGKILL');
      reject(new Error(`qemu did not finish within ${timeoutMs / 1000} s (hang); serial output:\n${out.slice(-3000)}`));
    }, timeoutMs);
    q.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    q.on('exit', () => {
      clearTimeout(timer);
      resolve(out.replace(/\r/g, ''));
    });
  });
}
