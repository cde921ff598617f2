/**
 * convertDomain's options (converted disks, bridge/network mapping, boot
 * modes, names), qemuArgsFromDomain, and `imgtool domain convert` through
 * the real CLI. Every XML written is checked by virt-xml-validate.
 */
import { describe, expect, it, afterAll } from 'vitest';
import { existsSync, readFileSync, writeFileSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { DOMParser } from '@xmldom/xmldom';
import { ImageError } from '../src/core/errors.js';
import { convertDomain, qemuArgsFromDomain, convertCmdline } from '../src/guest/domain/index.js';
import { imgtool, peer, run, sha256File, tempDir } from './helpers/peers.js';

const repoRoot = resolve(new URL('.', import.meta.url).pathname, '..');
const DATA = resolve(repoRoot, '../shared/testdata/xen-config');
const t = tempDir('imgtool-domain-');
afterAll(() => t.cleanup());

function dom(xml: string): Element {
  return new DOMParser().parseFromString(xml, 'text/xml').documentElement as unknown as Element;
}
function all(root: Element, tag: string): Element[] {
  return Array.from(root.getElementsByTagName(tag) as unknown as ArrayLike<Element>);
}
const one = (root: Element, tag: string) => all(root, tag)[0];
const a = (e: Element | undefined, n: string) => (e && e.hasAttribute(n) ? e.getAttribute(n) : undefined);

let nvalid = 0;
function expectValid(xml: string): void {
  peer('virt-xml-validate');
  const f = t.path(`v${nvalid++}.xml`);
  writeFileSync(f, xml);
  const r = run('virt-xml-validate', [f, 'domain']);
  expect(r.status, r.stdout + r.stderr).toBe(0);
}

function usageError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof ImageError && e.kind === 'usage') return e.message;
    throw e;
  }
  throw new Error('no usage error');
}

const data = (p: string) => readFileSync(join(DATA, p), 'utf8');

describe('converted disks', () => {
  it('puts each --disk image in place of the next hard disk, in the source order, and leaves CD-ROMs on SATA', () => {
    const src = data('xl/test-new-disk.cfg'); // hda (phy), hdb (qcow2), hdc (cdrom)
    const { xml, warnings } = convertDomain(src, 'new-disk.cfg', {
      disks: [{ path: '/var/lib/libvirt/images/g.qcow2', format: 'qcow2' }, { path: '/dev/vg/home' }],
    });
    expectValid(xml);
    const disks = all(dom(xml), 'disk').map((d) => ({
      type: a(d, 'type'),
      device: a(d, 'device'),
      format: a(one(d, 'driver'), 'type'),
      source: a(one(d, 'source'), 'file') ?? a(one(d, 'source'), 'dev'),
      target: a(one(d, 'target'), 'dev'),
      bus: a(one(d, 'target'), 'bus'),
    }));
    expect(disks).toEqual([
      { type: 'file', device: 'disk', format: 'qcow2', source: '/var/lib/libvirt/images/g.qcow2', target: 'vda', bus: 'virtio' },
      // No format given: the source's (qcow2) is kept.
      { type: 'block', device: 'disk', format: 'qcow2', source: '/dev/vg/home', target: 'vdb', bus: 'virtio' },
      { type: 'file', device: 'cdrom', format: 'raw', source: '/root/boot.iso', target: 'sda', bus: 'sata' },
    ]);
    expect(warnings.filter((w) => w.includes('keeps its Xen path'))).toEqual([
      'new-disk.cfg: CD-ROM hdc keeps its Xen path /root/boot.iso: make that path exist on the KVM host',
    ]);
  });

  it('keeps unmapped disks at their Xen path with a warning, and names disks in the order of their Xen names', () => {
    const src = 'name="g"\nmemory=128\nbootloader="pygrub"\ndisk=["file:/x/b.img,xvdb,w", "file:/x/a.img,xvda,w"]\n';
    const { xml, warnings } = convertDomain(src, 'order.cfg', {});
    expectValid(xml);
    expect(all(dom(xml), 'disk').map((d) => [a(one(d, 'source'), 'file'), a(one(d, 'target'), 'dev')])).toEqual([
      ['/x/a.img', 'vda'],
      ['/x/b.img', 'vdb'],
    ]);
    expect(warnings.filter((w) => /disk xvd[ab] keeps its Xen path/.test(w))).toHaveLength(2);
  });

  it('refuses more --disk images than the source has hard disks, and unknown formats', () => {
    const src = data('xm/test-paravirt-root.cfg');
    expect(usageError(() => convertDomain(src, 'r.cfg', { disks: [{ path: '/a' }, { path: '/b' }] }))).toMatch(/2 --disk given, but r\.cfg has 1 hard disk/);
    expect(usageError(() => convertDomain(src, 'r.cfg', { disks: [{ path: '/a', format: 'vhdz' }] }))).toMatch(/disk format 'vhdz' unknown/);
  });
});

describe('network mapping', () => {
  const src = 'name="n"\nmemory=128\nbootloader="pygrub"\nvif=["mac=00:16:3e:00:00:01,bridge=xenbr0", "mac=00:16:3e:00:00:02,bridge=xenbr1,script=vif-route", "mac=00:16:3e:00:00:03"]\n';

  it('maps bridges and networks by Xen bridge name, with * for the rest, keeping MACs', () => {
    const { xml, warnings } = convertDomain(src, 'n.cfg', { bridges: { xenbr0: 'br0' }, networks: { '*': 'default' } });
    expectValid(xml);
    const nics = all(dom(xml), 'interface').map((n) => [a(n, 'type'), a(one(n, 'mac'), 'address'), a(one(n, 'source'), 'bridge') ?? a(one(n, 'source'), 'network'), a(one(n, 'model'), 'type')]);
    expect(nics).toEqual([
      ['bridge', '00:16:3e:00:00:01', 'br0', 'virtio'],
      ['network', '00:16:3e:00:00:02', 'default', 'virtio'],
      ['network', '00:16:3e:00:00:03', 'default', 'virtio'],
    ]);
    expect(warnings.some((w) => w.includes('vif-route'))).toBe(true);
    expect(xml).not.toContain('<script');
  });

  it('keeps bridges without a mapping, and warns about an interface with no bridge and an unused mapping', () => {
    const { xml, warnings } = convertDomain(src, 'n.cfg', { bridges: { xenbr7: 'br7' } });
    expectValid(xml);
    expect(all(dom(xml), 'interface').map((n) => a(n, 'type'))).toEqual(['bridge', 'bridge', 'ethernet']);
    expect(warnings.some((w) => w.includes('00:16:3e:00:00:03 names no bridge'))).toBe(true);
    expect(warnings.some((w) => w.includes('--bridge xenbr7=...: no interface uses bridge xenbr7'))).toBe(true);
  });

  it('drops vif*/vnet* backend names and keeps other names and bandwidth limits', () => {
    const s = 'name="n"\nmemory=128\nbootloader="pygrub"\nvif=["mac=00:16:3e:00:00:01,bridge=br0,vifname=vif5.0", "mac=00:16:3e:00:00:02,bridge=br0,vifname=web0,rate=1MB/s"]\n';
    const { xml } = convertDomain(s, 'n.cfg', {});
    expectValid(xml);
    expect(all(dom(xml), 'target').map((e) => a(e, 'dev')).filter((d) => d && !/^vd/.test(d))).toEqual(['web0']);
    expect(a(one(dom(xml), 'outbound'), 'average')).toBe('1024');
  });
});

describe('boot modes', () => {
  it('--boot grub boots the disk and drops pygrub, kernel and Xen kernel arguments with warnings', () => {
    const { xml, warnings } = convertDomain(data('xl/test-paravirt-cmdline.cfg'), 'c.cfg', {});
    expectValid(xml);
    const os = one(dom(xml), 'os')!;
    expect(all(os, 'boot').map((b) => a(b, 'dev'))).toEqual(['hd']);
    expect(all(os, 'kernel')).toEqual([]);
    expect(all(os, 'cmdline')).toEqual([]);
    expect(warnings.some((w) => w.includes('booted kernel /tmp/vmlinuz'))).toBe(true);
    expect(warnings.some((w) => w.includes("kernel arguments 'root=/dev/xvda1 console=hvc0' dropped"))).toBe(true);
  });

  it('--boot direct with --kernel/--initrd renames the root device and moves the console to ttyS0', () => {
    const { xml, warnings } = convertDomain(data('xl/test-paravirt-cmdline.cfg'), 'c.cfg', {
      boot: 'direct',
      kernel: '/srv/kvm/vmlinuz',
      initrd: '/srv/kvm/initrd.img',
      disks: [{ path: '/srv/kvm/g.img', format: 'raw' }],
    });
    expectValid(xml);
    const os = one(dom(xml), 'os')!;
    expect([one(os, 'kernel')?.textContent, one(os, 'initrd')?.textContent, one(os, 'cmdline')?.textContent]).toEqual([
      '/srv/kvm/vmlinuz',
      '/srv/kvm/initrd.img',
      'root=/dev/vda1 console=tty0 console=ttyS0,115200',
    ]);
    expect(warnings.filter((w) => w.includes('Xen host'))).toEqual([]);
    // The PV console became a serial port with a serial console.
    const d = dom(xml);
    expect(all(d, 'serial').map((s) => a(s, 'type'))).toEqual(['pty']);
    expect(a(one(one(d, 'console')!, 'target'), 'type')).toBe('serial');
  });

  it('--boot direct maps a partition-disk (xvda1) to the partition of the converted image', () => {
    const src = 'name="s"\nmemory=256\nkernel="/boot/vmlinuz-xen"\nroot="/dev/xvda1 ro"\nextra="xencons=tty resume=/dev/xvda2"\ndisk=["file:/x/root.img,xvda1,w", "file:/x/swap.img,xvda2,w"]\n';
    const { xml } = convertDomain(src, 's.cfg', { boot: 'direct', kernel: '/k', initrd: '/i', disks: [{ path: '/kvm/root.img', format: 'raw', partition: 1 }] });
    expectValid(xml);
    expect(one(dom(xml), 'cmdline')?.textContent).toBe('root=/dev/vda1 ro console=tty0 console=ttyS0,115200 resume=/dev/vdb');
  });

  it('--boot direct without --kernel keeps the Xen host kernel with a warning, and refuses a pygrub guest', () => {
    const r = convertDomain(data('xl/test-paravirt-cmdline.cfg'), 'c.cfg', { boot: 'direct' });
    expect(one(dom(r.xml), 'kernel')?.textContent).toBe('/tmp/vmlinuz');
    expect(r.warnings.some((w) => w.includes('/tmp/vmlinuz and initrd /tmp/initrd are paths on the Xen host'))).toBe(true);
    expect(usageError(() => convertDomain(data('xm/test-paravirt-root.cfg'), 'p.cfg', { boot: 'direct' }))).toMatch(/--boot direct needs --kernel: p\.cfg boots with \/usr\/bin\/pygrub/);
    expect(usageError(() => convertDomain(data('xm/test-paravirt-root.cfg'), 'p.cfg', { kernel: '/k' }))).toMatch(/need --boot direct/);
  });

  it('rewrites only Xen consoles on the command line', () => {
    const ren = (d: string) => d.replace(/^xvd/, 'vd');
    expect(convertCmdline('root=/dev/xvda2 ro quiet', ren, true)).toBe('root=/dev/vda2 ro quiet console=tty0 console=ttyS0,115200');
    expect(convertCmdline('root=UUID=1234 console=xvc0 console=hvc0', ren, true)).toBe('root=UUID=1234 console=tty0 console=ttyS0,115200');
    expect(convertCmdline('root=/dev/sda1 console=ttyS1', ren, false)).toBe('root=/dev/sda1 console=ttyS1');
    expect(convertCmdline('init="/bin/sh -c x" root=/dev/xvdb', ren, false)).toBe('init="/bin/sh -c x" root=/dev/vdb');
  });
});

describe('other conversions', () => {
  it('renames the domain, writes --emulator, and maps Xen lifecycle actions KVM lacks', () => {
    const { xml, warnings } = convertDomain(data('xl/test-paravirt-e820_host.cfg'), 'e.cfg', { name: 'debian-kvm', emulator: '/usr/bin/qemu-system-x86_64' });
    expectValid(xml);
    const d = dom(xml);
    expect(one(d, 'name')?.textContent).toBe('debian-kvm');
    expect(one(d, 'emulator')?.textContent).toBe('/usr/bin/qemu-system-x86_64');
    // on_poweroff preserve is unsupported by qemu; on_crash preserve is fine.
    expect([one(d, 'on_poweroff')?.textContent, one(d, 'on_crash')?.textContent]).toEqual(['destroy', 'preserve']);
    expect(warnings.some((w) => w.includes("on_poweroff 'preserve'"))).toBe(true);
    expect(warnings.some((w) => w.includes('e820_host'))).toBe(true);
    expect(usageError(() => convertDomain(data('xl/test-paravirt-e820_host.cfg'), 'e.cfg', { name: 'a/b' }))).toMatch(/domain name 'a\/b' is not valid/);
  });

  it('turns an OVMF guest into firmware=efi and keeps SPICE settings', () => {
    const ovmf = convertDomain(data('xl/test-fullvirt-ovmf.cfg'), 'o.cfg', {});
    expectValid(ovmf.xml);
    expect(a(one(dom(ovmf.xml), 'os'), 'firmware')).toBe('efi');
    const spice = convertDomain(data('xl/test-spice.cfg'), 's.cfg', {});
    expectValid(spice.xml);
    const g = one(dom(spice.xml), 'graphics')!;
    expect([a(g, 'type'), a(g, 'port'), a(g, 'tlsPort'), a(g, 'autoport'), a(g, 'passwd'), a(one(g, 'mouse'), 'mode'), a(one(g, 'clipboard'), 'copypaste')]).toEqual([
      'spice', '590', '500', 'no', 'thebeast', 'server', 'no',
    ]);
  });

  it('carries a fixed VNC display, multiple serial ports and their console', () => {
    const vnc = convertDomain(data('xm/test-paravirt-new-pvfb-vncdisplay.cfg'), 'v.cfg', {});
    expectValid(vnc.xml);
    const g = one(dom(vnc.xml), 'graphics')!;
    expect([a(g, 'port'), a(g, 'autoport'), a(g, 'listen')]).toEqual(['5925', 'no', '127.0.0.1']);
    const ser = convertDomain(data('xl/test-fullvirt-multiserial.cfg'), 'm.cfg', {});
    expectValid(ser.xml);
    expect(all(dom(ser.xml), 'serial').map((s) => a(one(s, 'target'), 'port'))).toEqual(['0', '1', '2']);
    expect(all(dom(ser.xml), 'console')).toHaveLength(1);
  });
});

describe('qemuArgsFromDomain', () => {
  it('gives -kernel/-initrd/-append, memory, CPUs, virtio drives and a serial console', () => {
    const { xml } = convertDomain(data('xl/test-paravirt-maxvcpus.cfg'), 'm.cfg', {
      boot: 'direct',
      kernel: '/k/vmlinuz',
      initrd: '/k/initrd',
      append: 'root=/dev/vda1',
      disks: [{ path: '/img/a,b.qcow2', format: 'qcow2' }],
    });
    expect(qemuArgsFromDomain(xml)).toEqual([
      '-kernel', '/k/vmlinuz',
      '-initrd', '/k/initrd',
      '-append', 'console=tty0 console=ttyS0,115200 root=/dev/vda1',
      '-m', '512',
      '-smp', '4,maxcpus=8',
      '-drive', 'file=/img/a,,b.qcow2,format=qcow2,if=virtio',
      '-nographic', '-serial', 'mon:stdio',
    ]);
  });

  it('produces arguments qemu-system-x86_64 accepts (checked against a real qemu, stopped before it runs)', () => {
    peer('qemu-system-x86_64');
    const img = t.path('q.raw');
    writeFileSync(img, Buffer.alloc(1 << 20));
    const { xml } = convertDomain(data('xm/test-paravirt-root.cfg'), 'r.cfg', { disks: [{ path: img, format: 'raw' }] });
    const args = qemuArgsFromDomain(xml, { serial: 'null' }).filter((x) => x !== '-nographic');
    // -S: do not start the CPU; the monitor's 'quit' ends it at once.
    const r = run('qemu-system-x86_64', [...args, '-S', '-display', 'none', '-monitor', 'stdio', '-nodefaults'], { input: 'quit\n', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
  });
});

describe('imgtool domain convert', () => {
  it('writes the XML to -o, prints warnings on stderr and leaves the source unchanged', () => {
    const src = join(DATA, 'xl/test-paravirt-cmdline.cfg');
    const before = sha256File(src);
    const out = t.path('cli.xml');
    const r = imgtool(['domain', 'convert', src, '-o', out, '--disk', '/kvm/g.qcow2:qcow2', '--bridge', 'xenbr1=virbr0', '--name', 'g-kvm']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^imgtool: warning: .*booted kernel \/tmp\/vmlinuz/m);
    const xml = readFileSync(out, 'utf8');
    expectValid(xml);
    const d = dom(xml);
    expect(one(d, 'name')?.textContent).toBe('g-kvm');
    expect(a(one(d, 'source'), 'file')).toBe('/kvm/g.qcow2');
    expect(a(one(one(d, 'interface')!, 'source'), 'bridge')).toBe('virbr0');
    expect(sha256File(src)).toBe(before);
    // No temporary files left beside the output.
    expect(readdirSync(t.dir).filter((f) => f.includes('imgtool-tmp'))).toEqual([]);
  });

  it('makes relative --disk and --kernel paths absolute, as libvirt requires', () => {
    const r = imgtool(['domain', 'convert', join(DATA, 'xl/test-paravirt-cmdline.cfg'), '--disk', 'rel/g.img:raw', '--boot', 'direct', '--kernel', 'k/vmlinuz', '--initrd', 'k/initrd']);
    expect(r.status, r.stderr).toBe(0);
    const d = dom(r.stdout);
    expect(a(one(d, 'source'), 'file')).toBe(resolve('rel/g.img'));
    expect([one(d, 'kernel')?.textContent, one(d, 'initrd')?.textContent]).toEqual([resolve('k/vmlinuz'), resolve('k/initrd')]);
    expectValid(r.stdout);
    expect(usageError(() => convertDomain(data('xl/test-paravirt-cmdline.cfg'), 'c.cfg', { disks: [{ path: 'rel.img' }] }))).toMatch(/--disk 'rel\.img' must be an absolute path/);
  });

  it('refuses to overwrite an output without --force', () => {
    const src = join(DATA, 'xm/test-paravirt-root.cfg');
    const out = t.path('exists.xml');
    writeFileSync(out, 'keep');
    const r = imgtool(['domain', 'convert', src, '-o', out]);
    expect(r.status).toBe(2);
    expect(readFileSync(out, 'utf8')).toBe('keep');
    expect(imgtool(['domain', 'convert', src, '-o', out, '--force']).status).toBe(0);
    expect(statSync(out).size).toBeGreaterThan(100);
  });

  it('prints XML on stdout, or JSON with a warnings array', () => {
    const src = join(DATA, 'suse/sles11sp3-xen.xml');
    const plain = imgtool(['domain', 'convert', src]);
    expect(plain.status).toBe(0);
    expect(plain.stdout).toMatch(/^<domain type="kvm">/);
    const json = imgtool(['domain', 'convert', src, '--output', 'json']);
    expect(json.status).toBe(0);
    const j = JSON.parse(json.stdout) as { xml: string; warnings: string[]; output: null };
    expect(j.xml).toBe(plain.stdout);
    expect(j.output).toBeNull();
    expect(j.warnings.length).toBeGreaterThan(0);
    expect(json.stderr).toBe('');
  });

  it('exits 3 naming FILE:LINE:COLUMN for a malformed configuration, and 2 for bad options', () => {
    const bad = t.path('bad.cfg');
    writeFileSync(bad, 'name = "x"\ndisk = [ "phy:/dev/a,xvda,w"\nmemory = 5\n');
    const r = imgtool(['domain', 'convert', bad]);
    expect(r.status).toBe(3);
    expect(r.stderr).toContain(`${bad}:3:1: expected ',' or ']' in the list opened at line 2 column 8`);
    expect(imgtool(['domain', 'convert', join(DATA, 'xm/test-paravirt-root.cfg'), '--boot', 'pxe']).status).toBe(2);
    expect(imgtool(['domain', 'convert', join(DATA, 'xm/test-paravirt-root.cfg'), '--bridge', 'novalue']).status).toBe(2);
    expect(existsSync(t.path('none.xml'))).toBe(false);
  });

  it('refuses a huge or binary file as a source instead of reading it all', () => {
    const big = t.path('big.cfg');
    writeFileSync(big, Buffer.alloc(5 << 20, 0x20));
    const r = imgtool(['domain', 'convert', big]);
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/larger than 4 MiB/);
    const bin = t.path('bin.cfg');
    writeFileSync(bin, Buffer.from([0x6e, 0x61, 0, 0x01]));
    expect(imgtool(['domain', 'convert', bin]).stderr).toMatch(/NUL byte at offset 2/);
  });
});
