/**
 * Images from anywhere, through the CLI: http(s) URLs (read in place, or
 * streamed when the server has no ranges) and gzip/xz/zstd/bzip2-wrapped
 * images from files, pipes and URLs. Every conversion is judged against the
 * local, uncompressed image by qemu-img compare; the server counts the bytes
 * it sends; no credential ever appears in any output.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { imgtoolAsync, must, qemuCompare, run, tempDir } from './helpers/peers.js';
import { serveDir, type TestServer } from './helpers/http-server.js';

const t = tempDir('imgtool-src-');
const MIB = 1 << 20;
let server: TestServer;

beforeAll(async () => {
  // 10 GiB virtual, 100 MiB of data (some at the very end): a URL read must fetch about the data, not the disk.
  must('qemu-img', ['create', '-q', '-f', 'qcow2', t.path('big.qcow2'), '10G']);
  must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x61 0 60M', '-c', 'write -P 0x62 5G 30M', '-c', 'write -P 0x63 10230M 10M', t.path('big.qcow2')]);
  // Small images of three formats for the compressed wrappers.
  must('qemu-img', ['create', '-q', '-f', 'raw', t.path('inner.raw'), '8M']);
  must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 1M', '-c', 'write -P 0x3c 7M 512k', t.path('inner.raw')]);
  must('qemu-img', ['convert', '-O', 'qcow2', t.path('inner.raw'), t.path('inner.qcow2')]);
  must('qemu-img', ['convert', '-O', 'vdi', t.path('inner.raw'), t.path('inner.vdi')]);
  for (const inner of ['inner.raw', 'inner.qcow2', 'inner.vdi']) {
    must('sh', ['-c', `gzip -kc ${t.path(inner)} > ${t.path(inner)}.gz && xz -kc ${t.path(inner)} > ${t.path(inner)}.xz && zstd -qc ${t.path(inner)} > ${t.path(inner)}.zst && bzip2 -kc ${t.path(inner)} > ${t.path(inner)}.bz2`]);
  }
  server = await serveDir(t.dir);
});
afterAll(async () => {
  await server?.close();
  t.cleanup();
});

describe('http(s) sources', () => {
  it('info from a URL agrees with info on the local file', async () => {
    const r = await imgtoolAsync(['info', '--output', 'json', server.url('big.qcow2')]);
    expect(r.status, r.stderr).toBe(0);
    const local = JSON.parse((await imgtoolAsync(['info', '--output', 'json', t.path('big.qcow2')])).stdout);
    const remote = JSON.parse(r.stdout);
    expect(remote['virtual-size']).toBe(local['virtual-size']);
    expect(remote.format).toBe('qcow2');
    expect(remote['actual-size']).toBeUndefined();
  });

  it('converts a 10 GiB qcow2 with 100 MiB of data, fetching about the data, identical to the file (qemu-img compare)', async () => {
    const before = server.bytesSent;
    const out = t.path('from-url.qcow2');
    const r = await imgtoolAsync(['convert', server.url('big.qcow2'), out]);
    expect(r.status, r.stderr).toBe(0);
    const fetched = server.bytesSent - before;
    const file = statSync(t.path('big.qcow2')).size; // data plus metadata
    expect(fetched).toBeGreaterThanOrEqual(100 * MIB);
    expect(fetched).toBeLessThanOrEqual(file * 1.1);
    expect(qemuCompare(t.path('big.qcow2'), out, 'qcow2', 'qcow2').status).toBe(0);
    expect(run('qemu-img', ['check', out]).status).toBe(0);
  });

  it('a server without Range support is streamed once (--no-ranges does the same)', async () => {
    const plain = await serveDir(t.dir, { ranges: false });
    try {
      const out = t.path('from-noranges.qcow2');
      expect((await imgtoolAsync(['convert', plain.url('inner.qcow2'), out])).status).toBe(0);
      expect(plain.requests).toBe(1);
      expect(qemuCompare(t.path('inner.raw'), out, 'raw', 'qcow2').status).toBe(0);
    } finally {
      await plain.close();
    }
    const out2 = t.path('from-no-ranges-flag.raw');
    const before = server.requests;
    expect((await imgtoolAsync(['convert', '--no-ranges', '-O', 'raw', server.url('inner.vdi'), out2])).status).toBe(0);
    expect(server.requests - before).toBe(1);
    expect(qemuCompare(t.path('inner.raw'), out2, 'raw', 'raw').status).toBe(0);
  });

  it('fails with one clear line when the file changes on the server mid-read', async () => {
    const changing = await serveDir(t.dir, { changeAfter: 3 });
    try {
      const r = await imgtoolAsync(['convert', changing.url('big.qcow2'), t.path('changed.qcow2')]);
      expect(r.status).toBe(5);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/changed on the server/);
    } finally {
      await changing.close();
    }
  });

  it('sends --header credentials and never prints them, not even with --debug', async () => {
    const token = 'tok-9f8e7d6c';
    const priv = await serveDir(t.dir, { token });
    try {
      const denied = await imgtoolAsync(['info', '--debug', priv.url('inner.qcow2')]);
      expect(denied.status).toBe(5);
      expect(denied.stderr).toMatch(/access denied \(HTTP 401\)/);
      const wrong = await imgtoolAsync(['convert', '--debug', '--header', 'Authorization: Bearer wrong-tok-1234', priv.url('inner.qcow2'), t.path('x.qcow2')]);
      expect(wrong.stdout + wrong.stderr).not.toContain('wrong-tok-1234');
      const ok = await imgtoolAsync(['convert', '--header', `Authorization: Bearer ${token}`, priv.url('inner.qcow2'), t.path('priv.qcow2')]);
      expect(ok.status, ok.stderr).toBe(0);
      expect(ok.stdout + ok.stderr).not.toContain(token);
      expect(qemuCompare(t.path('inner.raw'), t.path('priv.qcow2'), 'raw', 'qcow2').status).toBe(0);
    } finally {
      await priv.close();
    }
  });

  it('verifies TLS: a self-signed server fails clearly, and works with --ca-file', async () => {
    must('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost',
      '-keyout', t.path('key.pem'), '-out', t.path('cert.pem')]);
    const tls = await serveDir(t.dir, { tls: { key: readFileSync(t.path('key.pem'), 'utf8'), cert: readFileSync(t.path('cert.pem'), 'utf8') } });
    try {
      const refused = await imgtoolAsync(['info', tls.url('inner.qcow2')]);
      expect(refused.status).toBe(5);
      expect(refused.stderr.trim().split('\n')).toHaveLength(1);
      expect(refused.stderr).toMatch(/certificate/i);
      const out = t.path('tls.qcow2');
      const ok = await imgtoolAsync(['convert', '--ca-file', t.path('cert.pem'), tls.url('inner.qcow2'), out]);
      expect(ok.status, ok.stderr).toBe(0);
      expect(qemuCompare(t.path('inner.raw'), out, 'raw', 'qcow2').status).toBe(0);
    } finally {
      await tls.close();
    }
  });

  it('follows redirects', async () => {
    const out = t.path('redirected.raw');
    expect((await imgtoolAsync(['convert', '-O', 'raw', server.url('redirect/3/inner.qcow2'), out])).status).toBe(0);
    expect(qemuCompare(t.path('inner.raw'), out, 'raw', 'raw').status).toBe(0);
  });
});

describe('other commands from URLs', () => {
  it('compare: a URL against the local file is identical (exit 0), against another image differs (exit 1)', async () => {
    const same = await imgtoolAsync(['compare', server.url('inner.qcow2'), t.path('inner.raw')]);
    expect(same.status, same.stderr).toBe(0);
    const noRanges = await imgtoolAsync(['compare', '--no-ranges', server.url('inner.vdi'), t.path('inner.qcow2')]);
    expect(noRanges.status, noRanges.stderr).toBe(0);
    const other = await imgtoolAsync(['compare', server.url('inner.qcow2'), t.path('big.qcow2')]);
    expect(other.status).toBe(1);
  });

  it('wrap: a Xen filesystem image from a URL (ranged and not) gives the disk the local file gives', async () => {
    const fsImg = t.path('xen-fs.img');
    const tree = t.path('xen-tree');
    must('sh', ['-c', `mkdir -p ${tree}/etc ${tree}/boot && printf '/dev/xvda1 / ext3 defaults 0 1\\n' > ${tree}/etc/fstab && head -c 3000000 /dev/urandom > ${tree}/data`]);
    must('mke2fs', ['-q', '-F', '-t', 'ext3', '-d', tree, fsImg, '24M']);
    const layouts: unknown[] = [];
    const plain = await serveDir(t.dir, { ranges: false });
    try {
      for (const [name, src] of [['local', fsImg], ['ranged', server.url('xen-fs.img')], ['unranged', plain.url('xen-fs.img')]] as const) {
        const out = t.path(`wrapped-${name}.qcow2`);
        const r = await imgtoolAsync(['wrap', src, '-o', out]);
        expect(r.status, `${name}: ${r.stderr}`).toBe(0);
        expect(run('qemu-img', ['check', out]).status, name).toBe(0);
        const raw = t.path(`wrapped-${name}.raw`);
        must('qemu-img', ['convert', '-O', 'raw', out, raw]);
        const table = JSON.parse(must('sfdisk', ['--json', raw])).partitiontable;
        layouts.push(table.partitions.map((p: { start: number; size: number; type: string }) => [p.start, p.size, p.type]));
        // The filesystem inside is the guest's, clean for the host's e2fsck, its data file intact.
        const p1 = table.partitions[0];
        const part = t.path(`wrapped-${name}.p1`);
        must('dd', [`if=${raw}`, `of=${part}`, 'bs=512', `skip=${p1.start}`, `count=${p1.size}`, 'status=none']);
        expect(run('e2fsck', ['-fn', part]).status, name).toBe(0);
        expect(must('debugfs', ['-R', 'cat /data', part]).length).toBeGreaterThan(0);
        expect(run('sh', ['-c', `debugfs -R 'cat /data' ${part} 2>/dev/null | cmp -s - ${tree}/data`]).status, name).toBe(0);
      }
    } finally {
      await plain.close();
    }
    expect(layouts[1]).toEqual(layouts[0]);
    expect(layouts[2]).toEqual(layouts[0]);
  });
});

describe('compressed inputs', () => {
  const inners = [
    ['inner.raw', 'raw'],
    ['inner.qcow2', 'qcow2'],
    ['inner.vdi', 'vdi'],
  ] as const;
  for (const ext of ['gz', 'xz', 'zst', 'bz2']) {
    it(`${ext}: raw, qcow2 and VDI inside convert identically from a file, a pipe and a URL`, async () => {
      for (const [inner, fmt] of inners) {
        const src = t.path(`${inner}.${ext}`);
        const viaFile = t.path(`${inner}.${ext}.file.qcow2`);
        const viaPipe = t.path(`${inner}.${ext}.pipe.qcow2`);
        const viaUrl = t.path(`${inner}.${ext}.url.qcow2`);
        const a = await imgtoolAsync(['convert', src, viaFile]);
        expect(a.status, `${inner}.${ext} file: ${a.stderr}`).toBe(0);
        const b = await imgtoolAsync(['convert', '-', viaPipe], { input: readFileSync(src) });
        expect(b.status, `${inner}.${ext} pipe: ${b.stderr}`).toBe(0);
        const c = await imgtoolAsync(['convert', server.url(`${inner}.${ext}`), viaUrl]);
        expect(c.status, `${inner}.${ext} url: ${c.stderr}`).toBe(0);
        for (const out of [viaFile, viaPipe, viaUrl]) expect(qemuCompare(t.path(inner), out, fmt, 'qcow2').status).toBe(0);
      }
    });
  }

  it('a truncated or corrupted stream fails with one clear line (exit 3)', async () => {
    for (const ext of ['gz', 'xz', 'zst', 'bz2']) {
      const whole = readFileSync(t.path(`inner.qcow2.${ext}`));
      const cut = t.path(`cut.${ext}`);
      writeFileSync(cut, whole.subarray(0, Math.floor(whole.length * 0.6)));
      const r = await imgtoolAsync(['convert', cut, t.path(`cut-${ext}.qcow2`)]);
      expect(r.status, `${ext}: ${r.stderr}`).toBe(3);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      const bad = Buffer.from(whole);
      for (let i = Math.floor(bad.length / 3); i < Math.floor(bad.length / 3) + 8; i++) bad[i] = bad[i]! ^ 0xff;
      const flipped = t.path(`bad.${ext}`);
      writeFileSync(flipped, bad);
      const f = await imgtoolAsync(['convert', flipped, t.path(`bad-${ext}.qcow2`)]);
      expect(f.status, `${ext} corrupt: ${f.stderr}`).toBe(3);
    }
  });

  it('a bomb (a small xz whose image declares 1 MiB but runs on for 300 MiB) stops at the cap', async () => {
    const head = t.path('bomb-head.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', head, '1M']);
    const bomb = t.path('bomb.qcow2.xz');
    must('sh', ['-c', `(cat ${head}; head -c 300M /dev/zero | tr '\\000' 'U') | xz -1 -T1 > ${bomb}`]);
    expect(statSync(bomb).size).toBeLessThan(1 * MIB);
    const r = await imgtoolAsync(['convert', bomb, t.path('bomb-out.qcow2')]);
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/decompression bomb|longer than/);
  });
});
