/**
 * Which Xen disks a wrap consumed (convertWrapDomain), and the domain
 * writer's disk options behind it (`target`, `merged`, `machine`): decided
 * from the guest's fstab, the config's root= and the input paths. Every
 * domain written is judged by virt-xml-validate.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { run, tempDir } from './helpers/peers.js';
import { convertWrapDomain, fstabEntries, type WrapDomainRequest } from '../src/wrap/domain.js';
import { convertDomain } from '../src/guest/domain/convert.js';

const t = tempDir('imgtool-wdplan-');
afterAll(() => t.cleanup());

function validate(xml: string): void {
  const f = t.path(`d${Math.random().toString(36).slice(2)}.xml`);
  writeFileSync(f, xml);
  const v = run('virt-xml-validate', [f, 'domain']);
  expect(v.status, v.stdout + v.stderr + xml).toBe(0);
}

const disks = (xml: string) => (xml.match(/<disk\b[\s\S]*?<\/disk>/g) ?? []).map((d) => /<source (?:file|dev)="([^"]+)"/.exec(d)?.[1]);

function plan(cfgDisks: string[], over: Partial<WrapDomainRequest> = {}) {
  const text = [`name = 'g'`, 'memory = 256', `disk = [${cfgDisks.map((d) => `'${d}'`).join(', ')}]`, ''].join('\n');
  const r = convertWrapDomain({
    text,
    sourceName: 'g.cfg',
    disk: { path: '/kvm/g.qcow2', format: 'qcow2' },
    root: { source: '/srv/in/root.img', number: 1 },
    parts: [],
    fstab: null,
    boot: { boot: 'grub', machine: 'pc' },
    ...over,
  });
  validate(r.xml);
  return { ...r, sources: disks(r.xml) };
}

const FSTAB_XEN = '/dev/xvda1 / ext4 defaults 0 1\n/dev/xvda2 none swap sw 0 0\n/dev/xvda3 /var ext4 defaults 0 2\n# /dev/xvdc1 /old ext4 defaults 0 2\n';

describe('which Xen disks a wrap consumed', () => {
  it('fstab names root, swap and /var: all three become the new disk; an unnamed data disk is kept', () => {
    const r = plan(['phy:/dev/vg/a,xvda1,w', 'phy:/dev/vg/b,xvda2,w', 'phy:/dev/vg/c,xvda3,w', 'phy:/dev/vg/d,xvdb,w'], {
      fstab: FSTAB_XEN,
      swap: { number: 2 },
      parts: [{ mountpoint: '/var', source: '/srv/in/var.img', number: 3 }],
    });
    expect(r.consumed).toEqual(['xvda1', 'xvda3', 'xvda2']);
    expect(r.sources).toEqual(['/kvm/g.qcow2', '/dev/vg/d']);
    expect(r.warnings.join('\n')).toMatch(/disk xvdb keeps its Xen path \/dev\/vg\/d: .*--disk/);
    expect(r.xml).toContain('machine="pc"');
  });

  it('an fstab on sdX names for xvdX targets still matches (same disk index and partition)', () => {
    const r = plan(['phy:/dev/vg/a,xvda1,w', 'phy:/dev/vg/b,xvda2,w'], { fstab: '/dev/sda1 / ext3 defaults 0 1\n/dev/sda2 none swap sw 0 0\n', swap: { number: 2 } });
    expect(r.consumed).toEqual(['xvda1', 'xvda2']);
    expect(r.sources).toEqual(['/kvm/g.qcow2']);
  });

  it('swap by UUID in the fstab: the disk whose path says swap is consumed, unless the fstab mounts it elsewhere', () => {
    const byUuid = 'UUID=0b5e7a35-8d5f-4c5e-9a3d-1f0c2b9e7d11 none swap sw 0 0\n/dev/xvda1 / ext4 defaults 0 1\n';
    const r = plan(['phy:/dev/vg/g-disk,xvda1,w', 'phy:/dev/vg/g-swap,xvda2,w'], { fstab: byUuid, swap: { number: 2 } });
    expect(r.consumed).toEqual(['xvda1', 'xvda2']);
    const mounted = plan(['phy:/dev/vg/g-disk,xvda1,w', 'phy:/dev/vg/swapfiles,xvda2,w'], { fstab: byUuid + '/dev/xvda2 /srv ext4 defaults 0 2\n', swap: { number: 2 } });
    expect(mounted.consumed).toEqual(['xvda1']);
  });

  it('without a new swap partition the Xen swap disk is kept', () => {
    const r = plan(['phy:/dev/vg/a,xvda1,w', 'phy:/dev/vg/b,xvda2,w'], { fstab: FSTAB_XEN });
    expect(r.consumed).toEqual(['xvda1']);
    expect(r.sources).toEqual(['/kvm/g.qcow2', '/dev/vg/b']);
  });

  it('--disk maps the disks left over, in order; extra --disk is a usage error', () => {
    const r = plan(['phy:/dev/vg/a,xvda1,w', 'phy:/dev/vg/b,xvda2,w', 'phy:/dev/vg/d,xvdb,w'], {
      fstab: FSTAB_XEN,
      swap: { number: 2 },
      extraDisks: [{ path: '/kvm/data.raw', format: 'raw' }],
    });
    expect(r.sources).toEqual(['/kvm/g.qcow2', '/kvm/data.raw']);
    expect(r.warnings.join('\n')).not.toMatch(/--disk/);
    expect(() => plan(['phy:/dev/vg/a,xvda1,w'], { extraDisks: [{ path: '/kvm/x.raw' }] })).toThrow(/1 --disk given, but g.cfg has 0 other hard disks/);
  });

  it('a --part input named by path in the config is consumed even where the fstab says nothing', () => {
    const r = plan(['file:/srv/in/root.img,xvda1,w', 'file:/srv/in/home.img,xvdc,w'], {
      parts: [{ mountpoint: '/home', source: '/srv/in/home.img', number: 2 }],
    });
    expect(r.consumed).toEqual(['xvda1', 'xvdc']);
    expect(r.sources).toEqual(['/kvm/g.qcow2']);
  });

  it('a config with no hard disk gets the new disk as vda, with a note', () => {
    const r = plan([]);
    expect(r.sources).toEqual(['/kvm/g.qcow2']);
    expect(r.xml).toMatch(/<target dev="vda" bus="virtio"\/>/);
    expect(r.warnings.join('\n')).toMatch(/no hard disk/);
  });

  it('several disks and nothing to tell root by: the first Xen name, with a note', () => {
    const r = plan(['phy:/dev/vg/b,xvdb1,w', 'phy:/dev/vg/a,xvda1,w']);
    expect(r.consumed).toEqual(['xvda1']);
    expect(r.warnings.join('\n')).toMatch(/cannot tell which disk held the root filesystem: took xvda1/);
  });

  it('reads fstab lines, swap areas under "swap", comments and short lines skipped', () => {
    expect(fstabEntries('# c\n/dev/xvda1 / ext4 defaults\n\n/dev/xvda2 none swap sw\nbad line\n')).toEqual([
      { spec: '/dev/xvda1', mountpoint: '/' },
      { spec: '/dev/xvda2', mountpoint: 'swap' },
    ]);
  });
});

describe('domain writer: disks by target, merged disks', () => {
  const cfg = [
    "name = 'm'",
    'memory = 256',
    "kernel = '/boot/vmlinuz'",
    "root = '/dev/xvda1 ro'",
    "extra = 'resume=/dev/xvda2 console=hvc0'",
    "disk = ['phy:/dev/vg/a,xvda1,w', 'phy:/dev/vg/b,xvda2,w', 'phy:/dev/vg/c,xvdb,w']",
    '',
  ].join('\n');

  it('a merged disk is not written and its name on the command line becomes its partition of the new disk', () => {
    const r = convertDomain(cfg, 'm.cfg', {
      disks: [{ path: '/kvm/m.qcow2', format: 'qcow2', partition: 1, target: 'xvda1' }, { path: '/kvm/c.raw' }],
      merged: [{ target: 'xvda2', into: 'xvda1', partition: 2 }],
      boot: 'direct',
      kernel: '/kvm/m.vmlinuz',
      machine: 'pc',
    });
    validate(r.xml);
    expect(disks(r.xml)).toEqual(['/kvm/m.qcow2', '/kvm/c.raw']);
    expect(r.xml).toMatch(/<cmdline>root=\/dev\/vda1 ro resume=\/dev\/vda2 console=tty0 console=ttyS0,115200<\/cmdline>/);
    expect(r.xml).toContain('<type arch="x86_64" machine="pc">hvm</type>');
  });

  it('refuses a merge into a disk no image replaces, and a target the source lacks', () => {
    expect(() => convertDomain(cfg, 'm.cfg', { disks: [{ path: '/kvm/x.raw' }], merged: [{ target: 'xvda2', into: 'xvda1', partition: 2 }] })).toThrow(
      /merged into xvda1, which no image replaces/,
    );
    expect(() => convertDomain(cfg, 'm.cfg', { disks: [{ path: '/kvm/x.raw', target: 'xvdz' }] })).toThrow(/no hard disk xvdz/);
    expect(() => convertDomain(cfg, 'm.cfg', { disks: [{ path: '/kvm/x.raw', target: 'xvda1' }], merged: [{ target: 'xvdq', into: 'xvda1', partition: 2 }] })).toThrow(
      /no disk xvdq to merge/,
    );
  });

  it('without a machine option the XML names none (libvirt picks), as before', () => {
    const r = convertDomain(cfg, 'm.cfg', {});
    expect(r.xml).toContain('<type arch="x86_64">hvm</type>');
  });
});
