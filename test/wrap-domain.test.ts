/**
 * wrap --domain on the usual Xen layouts: root `xvda1` and swap `xvda2` on
 * separate volumes (and /var, /home on more) become one KVM disk. The XML
 * is judged by virt-xml-validate, then defined and started by a real
 * libvirt daemon (started here, private to this test: its own socket,
 * configuration and state, in a mount namespace; `type='qemu'` since nested
 * KVM is unavailable), and the guest must reach its marker on the serial
 * console with swap on and /var, /home and /srv (logical partitions) mounted
 * from the new disk.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { imgtool, must, mustAsync, peer, run, runAsync, sha256File, tempDir } from './helpers/peers.js';
import { section } from './helpers/qemu.js';

const t = tempDir('imgtool-wrapdom-');
const BUILD = fileURLToPath(new URL('./fixtures/build-guest.sh', import.meta.url));
const NAME = `imgtool-test-${process.pid}`;
let guest = '';
let root = '';
let daemon: ChildProcess | undefined;
const uri = () => `qemu:///system?socket=${t.path('lv/sock/libvirt-sock')}`;
const virsh = (args: string[]) => run('virsh', ['-q', '-c', uri(), ...args]);

/** The test guest's init, extended: swap on, everything in fstab mounted, then the mounts listed. */
const INIT = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc 2>/dev/null
{
  echo "IMGTOOL-BOOT-OK"
  echo "--- cmdline"; cat /proc/cmdline
  echo "--- /etc/fstab"; cat /etc/fstab
  echo "--- swap"; swapon -a 2>&1; cat /proc/swaps
  echo "--- mount -a"; mount -a 2>&1
  echo "--- mounts"; cat /proc/mounts
  echo "--- markers"; cat /var/marker /home/marker /srv/marker 2>&1
  echo "IMGTOOL-END"
} >/dev/ttyS0 2>&1
sync
poweroff -f
`;
const FSTAB = ['/dev/xvda1\t/\text4\tdefaults\t0\t1', '/dev/xvda2\tnone\tswap\tsw\t0\t0', '/dev/xvda3\t/var\text4\tdefaults\t0\t2', '/dev/xvdb\t/home\text3\tdefaults\t0\t2', '/dev/xvdc1\t/srv\text2\tdefaults\t0\t2', 'proc\t/proc\tproc\tdefaults\t0\t0', ''].join('\n');

/**
 * A libvirt daemon of our own: in a private mount namespace, /etc/libvirt,
 * /run/libvirt and libvirt's state directories are this test's; the qemu
 * driver runs qemu as root without security drivers, cgroups or virtlogd
 * (none of which a CI machine without systemd has); passwd/group gain the
 * libvirt-qemu user the Debian build insists on resolving at start.
 */
const START = `set -e
D=$1
cp /etc/passwd $D/passwd; cp /etc/group $D/group
grep -q '^libvirt-qemu:' $D/passwd || echo 'libvirt-qemu:x:64055:64055::/nonexistent:/usr/sbin/nologin' >> $D/passwd
grep -q '^libvirt-qemu:' $D/group || echo 'libvirt-qemu:x:64055:' >> $D/group
grep -q '^kvm:' $D/group || echo 'kvm:x:64056:' >> $D/group
mount --bind $D/passwd /etc/passwd
mount --bind $D/group /etc/group
for d in /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
  mkdir -p $d $D/root$d
  mount --bind $D/root$d $d
done
cp $D/libvirtd.conf $D/qemu.conf /etc/libvirt/
exec "$2" --config /etc/libvirt/libvirtd.conf --pid-file $D/libvirtd.pid
`;

/** Does the daemon answer? (stdin closed from the start: nothing to write into a pipe a quick exit has closed.) */
function answers(): Promise<boolean> {
  return new Promise((resolve) => {
    const v = spawn(peer('virsh'), ['-c', uri(), 'version'], { stdio: 'ignore' });
    v.on('error', () => resolve(false));
    v.on('exit', (code) => resolve(code === 0));
  });
}

async function startLibvirt(): Promise<void> {
  const d = t.path('lv');
  mkdirSync(`${d}/sock`, { recursive: true });
  writeFileSync(`${d}/start.sh`, START);
  writeFileSync(`${d}/libvirtd.conf`, [`unix_sock_dir = "${d}/sock"`, 'auth_unix_rw = "none"', 'auth_unix_ro = "none"', ''].join('\n'));
  writeFileSync(
    `${d}/qemu.conf`,
    ['user = "root"', 'group = "root"', 'dynamic_ownership = 0', 'remember_owner = 0', 'security_driver = "none"', 'stdio_handler = "file"', 'namespaces = []', 'cgroup_controllers = []', ''].join('\n'),
  );
  let log = '';
  daemon = spawn(peer('unshare'), ['-m', '--propagation', 'private', 'sh', `${d}/start.sh`, d, peer('libvirtd')], { stdio: ['ignore', 'pipe', 'pipe'] });
  daemon.stdout!.on('data', (b) => (log += String(b)));
  daemon.stderr!.on('data', (b) => (log += String(b)));
  // Hang guard: the daemon answers within seconds; 60 s of polling is the limit.
  for (let i = 0; i < 300; i++) {
    if (daemon.exitCode !== null) throw new Error(`libvirtd exited (${daemon.exitCode}):\n${log}`);
    if (existsSync(`${d}/sock/libvirt-sock`) && (await answers())) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`libvirtd did not answer on ${d}/sock:\n${log}`);
}

beforeAll(async () => {
  for (const tool of ['virt-xml-validate', 'virsh', 'libvirtd', 'unshare', 'debugfs', 'mke2fs', 'stty', 'sfdisk', 'qemu-img', 'qemu-system-x86_64']) peer(tool);
  const r = await runAsync('bash', [BUILD, t.dir], { timeout: 280_000 });
  if (r.status !== 0) throw new Error(`build-guest.sh failed (${r.status}): ${r.stderr}`);
  guest = t.path('guest.img');
  // The same guest with /var and /home in its fstab (on xvda3 and xvdb) and an init that mounts them.
  root = t.path('root.img');
  await mustAsync('cp', [guest, root]);
  writeFileSync(t.path('init.sh'), INIT);
  writeFileSync(t.path('fstab'), FSTAB);
  const cmds = ['rm /sbin/init', `write ${t.path('init.sh')} /sbin/init`, 'sif /sbin/init mode 0100755', 'rm /etc/fstab', `write ${t.path('fstab')} /etc/fstab`, 'mkdir /var', 'mkdir /home', 'mkdir /srv'];
  writeFileSync(t.path('debugfs.cmd'), cmds.join('\n') + '\n');
  await mustAsync(peer('debugfs'), ['-w', '-f', t.path('debugfs.cmd'), root]);
  for (const [name, dir, type, size] of [['var', 'v', 'ext4', '16M'], ['home', 'h', 'ext3', '12M'], ['srv', 's', 'ext2', '8M']] as const) {
    mkdirSync(t.path(dir));
    writeFileSync(t.path(`${dir}/marker`), `${name.toUpperCase()}-MARKER\n`);
    await mustAsync(peer('mke2fs'), ['-q', '-F', '-t', type, '-d', t.path(dir), t.path(`${name}.img`), size]);
  }
  await startLibvirt();
}, 400_000);

afterAll(async () => {
  if (daemon && daemon.exitCode === null) {
    virsh(['destroy', NAME]);
    virsh(['undefine', NAME]);
    const gone = new Promise((r) => daemon!.once('exit', r));
    daemon.kill('SIGTERM');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 20_000))]);
    if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
  }
  t.cleanup();
}, 60_000);

interface Report {
  filesystem: { uuid: string };
  swap?: { uuid: string };
  parts?: Array<{ mountpoint: string; uuid: string; device: string }>;
  guest?: { direct?: { 'libvirt-os': string } };
  domain: { path: string; warnings: string[]; consumed: string[] };
}

function cfg(name: string, lines: string[]): string {
  const file = t.path(`${name}.cfg`);
  writeFileSync(file, [`name = '${NAME}'`, 'memory = 512', 'vcpus = 1', ...lines, ''].join('\n'));
  return file;
}

const TWO_DISKS = "disk = ['phy:/dev/vg0/web1-disk,xvda1,w', 'phy:/dev/vg0/web1-swap,xvda2,w']";

function wrapDomain(out: string, args: string[]): { report: Report; xml: string; stderr: string } {
  const r = imgtool(['wrap', '-o', out, '--output', 'json', '--force', ...args]);
  expect(r.status, r.stderr).toBe(0);
  const report = JSON.parse(r.stdout) as Report;
  const v = run('virt-xml-validate', [`${out}.xml`, 'domain']);
  expect(v.status, v.stdout + v.stderr).toBe(0);
  return { report, xml: readFileSync(`${out}.xml`, 'utf8'), stderr: r.stderr };
}

const disks = (xml: string) => xml.match(/<disk\b[\s\S]*?<\/disk>/g) ?? [];

describe('wrap --domain: the two-disk Xen layout becomes one disk', () => {
  it('root xvda1 and swap xvda2 become the new disk: one <disk>, no leftover swap volume, Xen uuid and MAC kept, bridge mapped', () => {
    const hash = sha256File(guest);
    const file = cfg('two', [
      "uuid = '3f1c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b'",
      "kernel = '/boot/vmlinuz-xen'",
      "root = '/dev/xvda1 ro'",
      TWO_DISKS,
      "vif = ['mac=00:16:3e:12:34:56,bridge=xenbr0']",
    ]);
    const out = t.path('two.qcow2');
    const { report, xml, stderr } = wrapDomain(out, [guest, '--swap', '32M', '--boot', 'direct', '--domain', file, '--bridge', 'xenbr0=br0']);
    expect(sha256File(guest)).toBe(hash);
    expect(report.domain.consumed.sort()).toEqual(['xvda1', 'xvda2']);
    const d = disks(xml);
    expect(d).toHaveLength(1);
    expect(d[0]).toContain(`<source file="${out}"/>`);
    expect(d[0]).toContain('type="qcow2"');
    expect(xml).not.toMatch(/web1-swap|web1-disk|xvd/);
    expect(xml).toContain('<uuid>3f1c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b</uuid>');
    expect(xml).toMatch(/<mac address="00:16:3e:12:34:56"\/>\s*<source bridge="br0"\/>/);
    // Nothing about the disks is left for the user to fix.
    expect(stderr).not.toMatch(/Xen path|--disk/);
    expect(report.domain.warnings.join('\n')).not.toMatch(/xvda2|--disk/);
    // The <os> element wrap prints and the XML agree on the machine.
    const printed = /machine="([^"]+)"/.exec(report.guest!.direct!['libvirt-os'])?.[1];
    expect(printed).toBeTruthy();
    expect(xml).toContain(`machine="${printed}"`);
  }, 120_000);

  it('with --boot grub on a PV config (kernel, root=, extra=): no warning about the Xen kernel or its arguments; libvirt defines and starts it, GRUB on the disk boots the guest with swap on partition 2', async () => {
    const file = cfg('grub', ["kernel = '/boot/vmlinuz-xen'", "ramdisk = '/boot/initrd-xen'", "root = '/dev/xvda1 ro'", "extra = 'console=hvc0 xencons=tty'", TWO_DISKS]);
    const { report, xml, stderr } = wrapDomain(t.path('grub.qcow2'), [guest, '--swap', '32M', '--boot', 'grub', '--domain', file]);
    expect(report.domain.warnings).toEqual([]);
    expect(stderr).not.toContain(file);
    expect(disks(xml)).toHaveLength(1);
    expect(xml).toMatch(/<boot dev="hd"\/>/);
    expect(xml).toContain('machine="pc"');
    const serial = await startUnderLibvirt(xml, 'grub');
    // The GRUB configuration wrap installed says what it boots (on the serial terminal).
    expect(serial).toMatch(/imgtool: booting \/boot\/vmlinuz-/);
    expect(section(serial, 'cmdline')).toContain(`root=UUID=${report.filesystem.uuid}`);
    expect(section(serial, 'root')).toMatch(/^\/dev\/vda1 \/ ext4/);
    expect(section(serial, 'swap')).toMatch(/^\/dev\/vda2\s+partition/m);
  }, 300_000);

  it('without --swap the Xen swap volume is kept, with a warning naming --disk; --disk maps it', () => {
    const file = cfg('noswap', [TWO_DISKS]);
    const out = t.path('noswap.qcow2');
    const kept = wrapDomain(out, [guest, '--no-guest', '--domain', file]);
    expect(kept.report.domain.consumed).toEqual(['xvda1']);
    expect(disks(kept.xml)).toHaveLength(2);
    expect(disks(kept.xml)[1]).toContain('/dev/vg0/web1-swap');
    expect(kept.report.domain.warnings.join('\n')).toMatch(/xvda2.*--disk/);
    const mapped = wrapDomain(out, [guest, '--no-guest', '--domain', file, '--disk', t.path('swap.img:raw')]);
    expect(disks(mapped.xml)).toHaveLength(2);
    expect(disks(mapped.xml)[1]).toContain(`<source file="${t.path('swap.img')}"/>`);
    expect(mapped.report.domain.warnings.join('\n')).not.toMatch(/xvda2/);
  }, 120_000);

  it('a config without a uuid gets a fresh one on each run; other disks are kept with a warning naming --disk', () => {
    const file = cfg('nouuid', ["disk = ['phy:/dev/vg0/web1-disk,xvda1,w', 'phy:/dev/vg0/web1-swap,xvda2,w', 'phy:/dev/vg0/web1-data,xvdb,w']"]);
    const uuids = [1, 2].map(() => {
      const { report, xml } = wrapDomain(t.path('nouuid.raw'), [guest, '--swap', '32M', '--boot', 'none', '--domain', file]);
      expect(report.domain.consumed.sort()).toEqual(['xvda1', 'xvda2']);
      expect(disks(xml)).toHaveLength(2);
      expect(disks(xml)[1]).toContain('/dev/vg0/web1-data');
      expect(report.domain.warnings.join('\n')).toMatch(/xvdb.*--disk/);
      return /<uuid>([0-9a-f-]{36})<\/uuid>/.exec(xml)?.[1];
    });
    expect(uuids[0]).toBeTruthy();
    expect(uuids[1]).toBeTruthy();
    expect(uuids[0]).not.toBe(uuids[1]);
  }, 120_000);

  it('when the config does not say which disk held root, the one whose path is the input does', () => {
    // A filesystem without /etc/fstab, no root= in the config: two candidates, the input path decides.
    const data = t.path('var.img');
    const file = cfg('bypath', [`disk = ['file:/srv/xen/other.img,xvda1,w', 'file:${data},xvdb1,w']`]);
    const { report, xml } = wrapDomain(t.path('bypath.raw'), [data, '--no-guest', '--domain', file]);
    expect(report.domain.consumed).toEqual(['xvdb1']);
    const d = disks(xml);
    expect(d).toHaveLength(2);
    expect(xml).toContain(`<source file="${t.path('bypath.raw')}"/>`);
    expect(xml).toContain('/srv/xen/other.img');
    expect(xml).not.toContain(data);
  }, 120_000);

  it("when the guest's fstab and the config's root= disagree, the input path decides between them", () => {
    // fstab: /dev/xvda1 is /; the config says root=/dev/xvdc1; the input is the config's xvdc1.
    const file = cfg('disagree', ["kernel = '/boot/vmlinuz-xen'", "root = '/dev/xvdc1 ro'", `disk = ['file:/srv/xen/old-root.img,xvda1,w', 'file:${guest},xvdc1,w']`]);
    const { report } = wrapDomain(t.path('disagree.raw'), [guest, '--boot', 'none', '--domain', file]);
    expect(report.domain.consumed).toEqual(['xvdc1']);
  }, 120_000);

  it('refuses --disk, --bridge and --network without --domain', () => {
    const r = imgtool(['wrap', guest, '-o', t.path('nodomain.raw'), '--bridge', 'xenbr0=br0']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--bridge needs --domain/);
  });
});

describe('wrap --domain --part: root, swap, /var, /home and /srv volumes in one disk, started by libvirt', () => {
  it('defines and starts under libvirt; the guest mounts /var, /home and /srv (logical partitions 5 and 6) from the new disk by UUID and swaps on it', async () => {
    const file = cfg('four', [
      "uuid = '5a0b6c7d-8e9f-4a1b-9c2d-3e4f5a6b7c8d'",
      "kernel = '/boot/vmlinuz-xen'",
      "root = '/dev/xvda1 ro'",
      "disk = ['phy:/dev/vg0/web2-disk,xvda1,w', 'phy:/dev/vg0/web2-swap,xvda2,w', 'phy:/dev/vg0/web2-var,xvda3,w', 'phy:/dev/vg0/web2-home,xvdb,w', 'phy:/dev/vg0/web2-srv,xvdc1,w']",
    ]);
    const out = t.path('five.qcow2');
    const inputs = [root, t.path('var.img'), t.path('home.img'), t.path('srv.img')];
    const hashes = inputs.map(sha256File);
    const { report, xml } = wrapDomain(out, [
      root, '--swap', '32M', '--part', `/var=${t.path('var.img')}`, '--part', `/home=${t.path('home.img')}:24M`, '--part', `/srv=${t.path('srv.img')}`,
      '--boot', 'direct', '--domain', file,
    ]);
    expect(inputs.map(sha256File)).toEqual(hashes);
    expect(report.domain.consumed.sort()).toEqual(['xvda1', 'xvda2', 'xvda3', 'xvdb', 'xvdc1']);
    expect(disks(xml)).toHaveLength(1);
    expect(xml).not.toMatch(/web2-|xvd/);
    expect(report.parts!.map((p) => [p.mountpoint, p.device])).toEqual([
      ['/var', '/dev/vda3'],
      ['/home', '/dev/vda5'],
      ['/srv', '/dev/vda6'],
    ]);

    const serial = await startUnderLibvirt(xml, 'five');
    const fstab = section(serial, '/etc/fstab');
    expect(fstab).toContain(`UUID=${report.filesystem.uuid}\t/\text4`);
    expect(fstab).toContain(`UUID=${report.swap!.uuid}\tnone\tswap`);
    for (const p of report.parts!) expect(fstab).toContain(`UUID=${p.uuid}\t${p.mountpoint}\t`);
    expect(fstab).not.toContain('xvd');
    expect(section(serial, 'swap')).toMatch(/^\/dev\/vda2\s+partition/m);
    const mounts = section(serial, 'mounts');
    expect(mounts).toMatch(/^\/dev\/vda1 \/ ext4/m);
    expect(mounts).toMatch(/^\/dev\/vda3 \/var ext4/m);
    expect(mounts).toMatch(/^\/dev\/vda5 \/home ext3/m);
    expect(mounts).toMatch(/^\/dev\/vda6 \/srv ext2/m);
    expect(section(serial, 'markers')).toMatch(/VAR-MARKER\s+HOME-MARKER\s+SRV-MARKER/);
  }, 300_000);
});

/**
 * virsh define + virsh start the domain (as type='qemu': nested KVM is
 * unavailable), read its serial console (started paused, so nothing is
 * missed) to the guest's end marker, then undefine it.
 */
async function startUnderLibvirt(xml: string, name: string): Promise<string> {
  const domXml = t.path(`${name}-qemu.xml`);
  writeFileSync(domXml, xml.replace('<domain type="kvm">', '<domain type="qemu">'));
  const def = virsh(['define', domXml]);
  expect(def.status, def.stderr).toBe(0);
  try {
    const start = virsh(['start', '--paused', NAME]);
    expect(start.status, start.stderr).toBe(0);
    const pty = virsh(['ttyconsole', NAME]).stdout.trim();
    expect(pty).toMatch(/^\/dev\/pts\/\d+$/);
    must('stty', ['-F', pty, 'raw', '-echo']);
    const serial = await readConsole(pty, () => {
      const r = virsh(['resume', NAME]);
      expect(r.status, r.stderr).toBe(0);
    });
    expect(serial, serial.slice(-3000)).toContain('IMGTOOL-BOOT-OK');
    expect(serial).toContain('IMGTOOL-END');
    return serial;
  } finally {
    virsh(['destroy', NAME]);
    virsh(['undefine', NAME]);
  }
}

/** Read the guest's serial console (a pty) until its end marker or until qemu closes it; `go` resumes the guest once reading. */
function readConsole(pty: string, go: () => void, timeoutMs = 200_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const cat = spawn('cat', [pty], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    const done = () => {
      clearTimeout(timer);
      cat.kill('SIGTERM');
      resolve(out.replace(/\r/g, ''));
    };
    // Hang guard, not a timing assertion.
    const timer = setTimeout(() => {
      cat.kill('SIGKILL');
      reject(new Error(`no end marker on the console within ${timeoutMs / 1000} s:\n${out.slice(-3000)}`));
    }, timeoutMs);
    cat.stdout.on('data', (b) => {
      out += String(b);
      if (out.includes('IMGTOOL-END')) setTimeout(done, 500);
    });
    cat.on('exit', done);
    cat.on('spawn', () => {
      try {
        go();
      } catch (e) {
        clearTimeout(timer);
        cat.kill('SIGKILL');
        reject(e);
      }
    });
  });
}
