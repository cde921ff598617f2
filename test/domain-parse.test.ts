/**
 * The xl/xm configuration syntax, the disk/vif mini-languages and the Xen XML
 * reader: what they accept (as xl.cfg(5), xl-disk-configuration(5) and
 * Python define it), and how they refuse malformed input (FILE:LINE:COLUMN).
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import fc from 'fast-check';
import { ImageError } from '../src/core/errors.js';
import { parseCfgSyntax, parseXenConfig, parseXenXml, convertDomain } from '../src/guest/domain/index.js';
import { plain } from '../src/guest/domain/cfgsyntax.js';
import { parseDiskSpec, parseVifRate, parseVifSpec, parseCharSpec } from '../src/guest/domain/xenspec.js';
import { peer, run, tempDir } from './helpers/peers.js';

function settings(text: string): Record<string, unknown> {
  const f = parseCfgSyntax(text, 't.cfg');
  return Object.fromEntries([...f.settings].map(([k, s]) => [k, plain(s.value)]));
}

function errorOf(f: () => unknown): ImageError {
  try {
    f();
  } catch (e) {
    if (e instanceof ImageError) return e;
    throw e;
  }
  throw new Error('no error thrown');
}

describe('configuration syntax', () => {
  it('reads strings in all Python quotings, numbers, lists, booleans and comments', () => {
    const text = [
      '# a comment line',
      "name = 'web' # trailing comment",
      'kernel = "/boot/vmlinuz\\x2dxen"',
      'extra = """console=hvc0 "quoted" text"""',
      "root = '''/dev/xvda1'''",
      'memory = 512',
      'maxmem = 0x400',
      'vcpus = 0o2',
      'rtc_timeoffset = -3600',
      'acpi = True',
      'pae = False',
      'cpus = None',
      'disk = [ "a", \'b\', ]',
      "vif = []",
      'x = r"C:\\new"',
    ].join('\n');
    expect(settings(text)).toEqual({
      name: 'web',
      kernel: '/boot/vmlinuz-xen',
      extra: 'console=hvc0 "quoted" text',
      root: '/dev/xvda1',
      memory: 512,
      maxmem: 1024,
      vcpus: 2,
      rtc_timeoffset: -3600,
      acpi: true,
      pae: false,
      cpus: null,
      disk: ['a', 'b'],
      vif: [],
      x: 'C:\\new',
    });
  });

  it('continues lines inside brackets and after a backslash, and joins adjacent strings', () => {
    const text = 'disk = [\n  "phy:/dev/vg/a,xvda,w",  # root\n\n  "file:/b.img,xvdb,w"\n]\nextra = "a " \\\n  "b"\nvnuma = [ [ "pnode=0", "size=512" ], [ "pnode=1" ] ]; memory = 1024\n';
    expect(settings(text)).toEqual({
      disk: ['phy:/dev/vg/a,xvda,w', 'file:/b.img,xvdb,w'],
      extra: 'a b',
      vnuma: [['pnode=0', 'size=512'], ['pnode=1']],
      memory: 1024,
    });
  });

  it("appends to a list with '+=' and lets a repeated key win with a warning", () => {
    const f = parseCfgSyntax('disk = ["a"]\ndisk += ["b"]\nname = "x"\nname = "y"\n', 't.cfg');
    expect(plain(f.settings.get('disk')!.value)).toEqual(['a', 'b']);
    expect(plain(f.settings.get('name')!.value)).toBe('y');
    expect(f.warnings).toEqual(["t.cfg:4:1: 'name' set again (first at line 3); the last value is used"]);
  });

  it('reports an unterminated string at the line and column where it opens', () => {
    const e = errorOf(() => parseCfgSyntax('name = "ok"\nmemory = 512\nkernel = "/boot/vmlinuz\nramdisk = "/x"\n', 'bad.cfg'));
    expect(e.kind).toBe('invalid-format');
    expect(e.message).toMatch(/^bad\.cfg:3:10: unterminated string/);
  });

  it('reports an unterminated triple-quoted string and an unterminated list at their openings', () => {
    expect(errorOf(() => parseCfgSyntax('a = 1\n  b = """abc\n\n', 'x.cfg')).message).toMatch(/^x\.cfg:2:7: unterminated string/);
    expect(errorOf(() => parseCfgSyntax('name = "a"\ndisk = [ "phy:/dev/a,xvda,w",\n  "file:/b,xvdb,w"\n', 'x.cfg')).message).toMatch(
      /^x\.cfg:2:8: unterminated list: '\[' has no matching '\]'/,
    );
  });

  it('reports a bad list element where it stands', () => {
    expect(errorOf(() => parseCfgSyntax('disk = [ "a" 5 ]\n', 'l.cfg')).message).toMatch(/^l\.cfg:1:14: expected ',' or '\]'/);
    expect(errorOf(() => parseCfgSyntax('disk = [ "a", , "b" ]\n', 'l.cfg')).message).toMatch(/^l\.cfg:1:15: expected a value, found ','/);
    expect(errorOf(() => parseCfgSyntax('vif = [ mac=00:16:3e:00:00:01 ]\n', 'l.cfg')).message).toMatch(/^l\.cfg:1:9: unexpected name 'mac'/);
  });

  it('reports a missing "=", a missing value, junk after a value and a malformed number', () => {
    expect(errorOf(() => parseCfgSyntax('\n\nmemory 512\n', 'm.cfg')).message).toMatch(/^m\.cfg:3:8: expected '=' after 'memory'/);
    expect(errorOf(() => parseCfgSyntax('memory =\n', 'm.cfg')).message).toMatch(/^m\.cfg:1:9: expected a value for 'memory'/);
    expect(errorOf(() => parseCfgSyntax('name = "a" "b" c\n', 'm.cfg')).message).toMatch(/^m\.cfg:1:16: expected the end of the line/);
    expect(errorOf(() => parseCfgSyntax('vnclisten = 10.0.0.1\n', 'm.cfg')).message).toMatch(/^m\.cfg:1:13: malformed number/);
    expect(errorOf(() => parseCfgSyntax('= 5\n', 'm.cfg')).message).toMatch(/^m\.cfg:1:1: expected a setting name/);
  });

  it('refuses lists nested without end instead of exhausting the stack', () => {
    const e = errorOf(() => parseCfgSyntax(`x = ${'['.repeat(100_000)}\n`, 'deep.cfg'));
    expect(e.message).toMatch(/^deep\.cfg:1:\d+: lists nested deeper than 32/);
  });

  it('never throws anything but an ImageError on arbitrary text', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), (s) => {
        try {
          parseXenConfig(s, 'fuzz.cfg');
        } catch (e) {
          if (!(e instanceof ImageError)) throw e;
          expect(e.message).toMatch(/^fuzz\.cfg(:\d+:\d+)?: /);
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('xl/xm settings', () => {
  const base = 'name = "g"\nmemory = 256\ndisk = [ "file:/g.img,xvda,w" ]\nbootloader = "pygrub"\n';

  it('warns about unknown keys with their position, and converts anyway', () => {
    const g = parseXenConfig(base + 'frobnicate = 1\n  colour = "blue"\n', 'u.cfg');
    expect(g.warnings).toContain("u.cfg:5:1: unknown key 'frobnicate' ignored");
    expect(g.warnings).toContain("u.cfg:6:3: unknown key 'colour' ignored");
    const r = convertDomain(base + 'frobnicate = 1\n', 'u.cfg', {});
    expect(r.xml).toContain('<name>g</name>');
    expect(r.warnings).toContain("u.cfg:5:1: unknown key 'frobnicate' ignored");
  });

  it('warns about Xen-only keys only when they change behaviour', () => {
    const quiet = parseXenConfig(base + 'xen_platform_pci = 1\nhap = 1\npassthrough = "disabled"\n', 'q.cfg');
    expect(quiet.warnings).toEqual([]);
    const loud = parseXenConfig(base + 'hap = 0\npci = [ "0000:00:1b.0" ]\ncpu_weight = 512\n', 'l.cfg');
    expect(loud.warnings.map((w) => w.split(':').slice(0, 3).join(':'))).toEqual(['l.cfg:5:1', 'l.cfg:6:1', 'l.cfg:7:1']);
  });

  it('reads memory and vCPUs as libvirt does (maxmem defaults to memory, vcpu_avail counts online vCPUs)', () => {
    const g = parseXenConfig('name="a"\nmemory=394\nmaxmem=579\nvcpus=4\nvcpu_avail=5\ncpus="0-3,^2"\n', 'm.cfg');
    expect([g.memory, g.maxMemory, g.vcpus, g.maxVcpus, g.cpuset]).toEqual([394 << 20, 579 << 20, 2, 4, '0-3,^2']);
    const h = parseXenConfig('name="a"\nmemory="512"\nvcpus=2\nmaxvcpus=8\n', 'm.cfg');
    expect([h.memory, h.maxMemory, h.vcpus, h.maxVcpus]).toEqual([512 << 20, 512 << 20, 2, 8]);
  });

  it('refuses out-of-range memory, vCPUs and malformed identifiers, naming the place', () => {
    expect(errorOf(() => parseXenConfig('name="a"\nmemory = 99999999999\n', 'r.cfg')).message).toMatch(/^r\.cfg:2:10: 'memory' = 99999999999 is out of range/);
    expect(errorOf(() => parseXenConfig('name="a"\nvcpus = 0\n', 'r.cfg')).message).toMatch(/^r\.cfg:2:9: 'vcpus' = 0 is out of range/);
    expect(errorOf(() => parseXenConfig('name="a"\nmemory = [1]\n', 'r.cfg')).message).toMatch(/^r\.cfg:2:10: 'memory' must be a whole number/);
    expect(errorOf(() => parseXenConfig('uuid = "not-a-uuid"\n', 'r.cfg')).message).toMatch(/^r\.cfg:1:1: uuid 'not-a-uuid' is not a UUID/);
    expect(errorOf(() => parseXenConfig('vif = [ "mac=00:16:3e:zz:00:01" ]\n', 'r.cfg')).message).toMatch(/^r\.cfg:1:9: vif: malformed MAC address/);
    expect(errorOf(() => parseXenConfig('disk = [ "/a.img,xvda,w", "/b.img,xvda,w" ]\n', 'r.cfg')).message).toMatch(/^r\.cfg:1:27: disk: virtual device xvda is used twice/);
    expect(errorOf(() => parseXenConfig('type = "hvm2"\n', 'r.cfg')).message).toMatch(/^r\.cfg:1:1: type 'hvm2'/);
  });

  it('composes the kernel command line from root and extra unless cmdline is set', () => {
    expect(parseXenConfig('root="/dev/xvda2"\nextra="console=hvc0 quiet"\nkernel="/k"\n', 'c.cfg').boot.cmdline).toBe('root=/dev/xvda2 console=hvc0 quiet');
    const g = parseXenConfig('root="/dev/xvda2"\ncmdline="root=/dev/xvda1"\nkernel="/k"\n', 'c.cfg');
    expect(g.boot.cmdline).toBe('root=/dev/xvda1');
    expect(g.warnings.some((w) => w.includes('root= and extra= are ignored'))).toBe(true);
  });

  it('tells an xm hvmloader from an xl direct kernel for HVM guests', () => {
    const xm = parseXenConfig('builder="hvm"\nkernel="/usr/lib/xen/boot/hvmloader"\nboot="dc"\n', 'h.cfg');
    expect([xm.virt, xm.boot.kind, xm.boot.loader, xm.boot.order]).toEqual(['hvm', 'hvm', '/usr/lib/xen/boot/hvmloader', ['cdrom', 'hd']]);
    const xl = parseXenConfig('type="hvm"\nkernel="/boot/vmlinuz"\nramdisk="/boot/initrd"\n', 'h.cfg');
    expect([xl.boot.kind, xl.boot.kernel, xl.boot.ramdisk]).toEqual(['kernel', '/boot/vmlinuz', '/boot/initrd']);
  });
});

describe('disk specifications (xl-disk-configuration)', () => {
  const cases: [string, Record<string, unknown>][] = [
    ['phy:/dev/vg/root,xvda,w', { target: 'xvda', path: '/dev/vg/root', sourceType: 'block', device: 'disk', readonly: false }],
    ['file:/img/a.img,xvda1,r', { target: 'xvda1', path: '/img/a.img', sourceType: 'file', readonly: true }],
    ['tap:qcow2:/img/a.qcow2,xvdb,w', { target: 'xvdb', format: 'qcow2', path: '/img/a.qcow2' }],
    ['tap:tapdisk:aio:/img/a.img,xvdc,w!', { target: 'xvdc', format: 'raw', shareable: true }],
    ['/img/a.vhd,vhd,hda,rw', { target: 'hda', format: 'vpc', path: '/img/a.vhd' }],
    ['/img/legacy.img,xvda,w', { target: 'xvda', format: undefined, path: '/img/legacy.img' }],
    [',hdc:cdrom,r', { target: 'hdc', device: 'cdrom', sourceType: 'none', readonly: true }],
    ['/iso/x.iso,raw,hdc,ro,devtype=cdrom', { target: 'hdc', device: 'cdrom', path: '/iso/x.iso' }],
    ['vdev=xvdd,format=qcow2,access=ro,target=/img/with,comma.qcow2', { target: 'xvdd', format: 'qcow2', path: '/img/with,comma.qcow2', readonly: true }],
    ['/iso/y.iso,,hdd,,cdrom', { target: 'hdd', device: 'cdrom' }],
    ['phy:/dev/vg/win,ioemu:hda,w', { target: 'hda', path: '/dev/vg/win', sourceType: 'block' }],
  ];
  it.each(cases)('reads %s', (spec, want) => {
    const { disk } = parseDiskSpec(spec);
    for (const [k, v] of Object.entries(want)) expect((disk as unknown as Record<string, unknown>)[k], k).toEqual(v);
  });

  it.each([
    ['/a.img,xvda,w,extra', /too many positional fields/],
    ['/a.img,bogus,xvda,w', /unknown disk format 'bogus'/],
    ['foo:/a.img,xvda,w', /unknown disk prefix 'foo:'/],
    ['/a.img', /no virtual device/],
    ['/a.img,raw,xvda,rwx', /unknown disk access mode/],
    [',xvda,w', /only CD-ROMs may be empty/],
  ])('refuses %s', (spec, re) => {
    expect(() => parseDiskSpec(spec)).toThrow(re);
  });

  it('reads an rbd target with escaped monitor hosts into a network source', () => {
    const { disk } = parseDiskSpec('format=raw,vdev=hdb,target=rbd:pool/image:auth_supported=none:mon_host=mon1\\:6321\\;[\\:\\:1]\\:6322\\;mon3');
    expect(disk.network).toEqual({ protocol: 'rbd', name: 'pool/image', hosts: [{ name: 'mon1', port: '6321' }, { name: '::1', port: '6322' }, { name: 'mon3' }] });
  });
});

describe('vif and character device specifications', () => {
  it('reads a vif with every common key, and converts the rate to KiB/s like libvirt', () => {
    const { nic, warnings } = parseVifSpec('mac=00:16:3E:5f:48:e4,bridge=xenbr1,model=e1000,vifname=web0,ip=10.0.0.1 10.0.0.2,rate=10MB/s@20ms,script=vif-bridge,mtu=9000,devid=0');
    expect(nic).toEqual({ type: 'bridge', mac: '00:16:3e:5f:48:e4', bridge: 'xenbr1', model: 'e1000', ifname: 'web0', ips: ['10.0.0.1', '10.0.0.2'], outbound: { average: 10240 }, script: 'vif-bridge', mtu: 9000 });
    expect(warnings).toEqual([]);
    expect([parseVifRate('10240KB/s'), parseVifRate('8Mb/s'), parseVifRate('1GB/s')]).toEqual([10240, 1024, 1048576]);
    expect(parseVifSpec('mac=00:16:3e:00:00:01').nic.type).toBe('ethernet');
    expect(parseVifSpec('mac=00:16:3e:00:00:01,colour=red').warnings).toEqual(["unknown vif option 'colour=red' ignored"]);
  });

  it('reads serial device strings as libvirt does', () => {
    expect(parseCharSpec('none')).toBeUndefined();
    expect(parseCharSpec('pty')).toEqual({ type: 'pty' });
    expect(parseCharSpec('/dev/ttyS0')).toEqual({ type: 'dev', path: '/dev/ttyS0' });
    expect(parseCharSpec('tcp:127.0.0.1:7777,server,nowait')).toEqual({ type: 'tcp', protocol: 'raw', host: '127.0.0.1', service: '7777', listen: true });
    expect(parseCharSpec('unix:/run/s.sock,server')).toEqual({ type: 'unix', path: '/run/s.sock', listen: true });
    expect(parseCharSpec('udp:1.2.3.4:99@:100')).toEqual({ type: 'udp', host: '1.2.3.4', service: '99', bindHost: undefined, bindService: '100' });
    expect(() => parseCharSpec('serial-over-pigeon')).toThrow(/unknown character device type/);
  });
});

describe('Xen libvirt XML', () => {
  it('names the line and column of malformed XML', () => {
    const e = errorOf(() => parseXenXml("<domain type='xen'>\n  <name>x</name\n</domain>\n", 'bad.xml'));
    expect(e.kind).toBe('invalid-format');
    expect(e.message).toMatch(/^bad\.xml:2:\d+: malformed XML/);
    expect(errorOf(() => parseXenXml('<domain>&undefined;</domain>', 'ent.xml')).message).toMatch(/^ent\.xml:1:\d+: malformed XML: .*entity/);
  });

  it('refuses a domain that is not a Xen domain, and bad values, with their position', () => {
    expect(errorOf(() => parseXenXml("<domain type='kvm'><name>a</name></domain>", 'k.xml')).message).toMatch(/^k\.xml:1:1: <domain type='kvm'> is not a Xen domain/);
    const mem = "<domain type='xen'>\n<name>a</name>\n<memory unit='KiB'>12x</memory>\n</domain>";
    expect(errorOf(() => parseXenXml(mem, 'm.xml')).message).toMatch(/^m\.xml:3:1: <memory> '12x' is not a whole number/);
    const huge = "<domain type='xen'><name>a</name><memory unit='EiB'>1</memory></domain>";
    expect(errorOf(() => parseXenXml(huge, 'm.xml')).message).toMatch(/unknown memory unit 'EiB'/);
    const vcpu = "<domain type='xen'><name>a</name><memory>1024</memory><vcpu current='5'>4</vcpu></domain>";
    expect(errorOf(() => parseXenXml(vcpu, 'v.xml')).message).toMatch(/current='5' is above the maximum 4/);
  });

  it('reads scaled memory units and warns about elements it drops', () => {
    const xml = `<domain type='xen'><name>a</name><memory unit='GiB'>2</memory><currentMemory unit='MiB'>1024</currentMemory>
<cputune><shares>512</shares></cputune><os><type>linux</type></os><bootloader>/usr/bin/pygrub</bootloader>
<devices><hostdev mode='subsystem' type='pci'/><controller type='xenbus'/><memballoon model='xen'/></devices></domain>`;
    const g = parseXenXml(xml, 'w.xml');
    expect([g.maxMemory, g.memory, g.virt, g.boot.kind]).toEqual([2 ** 31, 2 ** 30, 'pv', 'pygrub']);
    expect(g.warnings).toEqual([
      expect.stringMatching(/^w\.xml:3:10: <hostdev> dropped/),
      expect.stringMatching(/^w\.xml:2:1: <cputune> dropped/),
    ]);
  });
});

describe('hostile input', () => {
  const repoRoot = resolve(new URL('.', import.meta.url).pathname, '..');
  const DATA = resolve(repoRoot, '../shared/testdata/xen-config');
  const samples = ['xl/test-spice.cfg', 'xm/test-escape-paths.cfg', 'xl/test-rbd-multihost-noauth.cfg', 'xl/test-vif-rate.xml', 'suse/sles11sp3-xen.xml', 'xm/test-no-source-cdrom.xml'];

  it.each(samples)('mutations of %s either convert to valid XML or fail with an ImageError naming the file', (name) => {
    const text = readFileSync(join(DATA, name), 'utf8');
    const converted = new Set<string>();
    const alphabet = ['"', "'", '[', ']', ',', '=', '<', '>', '/', ':', '\\', '\n', ' ', '0', '-', 'x', '&', '#', '\u0000'];
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(text.length), fc.nat(8), fc.constantFrom(...alphabet)), { minLength: 1, maxLength: 4 }),
        (edits) => {
          let s = text;
          for (const [at, del, ins] of edits) s = s.slice(0, at) + ins + s.slice(at + del);
          try {
            const r = convertDomain(s, name, {});
            expect(r.xml).toMatch(/^<domain type="kvm">/);
            converted.add(r.xml);
          } catch (e) {
            if (!(e instanceof ImageError)) throw e;
            expect(e.message.startsWith(name)).toBe(true);
          }
        },
      ),
      { numRuns: 300 },
    );
    // What still converts is judged by libvirt's schema (a sample, to keep the test fast).
    peer('virt-xml-validate');
    const t = tempDir('imgtool-domain-fuzz-');
    try {
      for (const [i, xml] of [...converted].slice(0, 12).entries()) {
        const f = t.path(`${i}.xml`);
        writeFileSync(f, xml);
        const v = run('virt-xml-validate', [f, 'domain']);
        expect(v.status, `${v.stderr}\n${xml}`).toBe(0);
      }
    } finally {
      t.cleanup();
    }
  });
});
