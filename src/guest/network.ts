/**
 * Does the guest's network configuration name its interfaces ethN? Under
 * KVM a virtio NIC gets a predictable name (ens3, enp1s0) unless the kernel
 * command line has net.ifnames=0, and a configuration for eth0 then brings
 * up nothing. Read (never changed) here:
 *
 *   ifupdown         /etc/network/interfaces, /etc/network/interfaces.d/*
 *   RHEL/SUSE        /etc/sysconfig/network-scripts/ifcfg-*, /etc/sysconfig/network/ifcfg-*
 *                    (the file name or DEVICE=)
 *   netplan          /etc/netplan/*.yaml
 *   systemd-networkd /etc/systemd/network/*.network ([Match] Name=)
 */

/** What the fix-up plan offers for reading guest files (missing: null / []). */
export interface ConfigReader {
  read(path: string): Promise<string | null>;
  readdir(path: string): Promise<string[]>;
  isDir(path: string): Promise<boolean>;
}

/** The kernel arguments that keep ethN names. */
export const KEEP_ETH_NAMES = ['net.ifnames=0', 'biosdevname=0'];

const ETH = /\beth\d+\b/;

/** Lines without comments (# to the end of the line). */
const meaningful = (text: string) =>
  text
    .split('\n')
    .map((l) => l.replace(/#.*$/, ''))
    .filter((l) => l.trim() !== '');

/** Why a netplan file cannot be parsed (the checks a YAML reader would fail first), or undefined. */
function netplanProblem(text: string): string | undefined {
  const lines = text.split('\n');
  const tab = lines.findIndex((l) => /^ *\t/.test(l) && !/^\s*#/.test(l));
  if (tab >= 0) return `line ${tab + 1} is indented with a tab, which YAML forbids`;
  if (!/^network\s*:/m.test(text)) return "it has no top-level 'network:' key";
  return undefined;
}

/** Why a systemd .network file cannot be parsed, or undefined. */
function networkdProblem(text: string): string | undefined {
  const lines = text.split('\n');
  const bad = lines.findIndex((l) => l.trim() !== '' && !/^\s*[#;]/.test(l) && !/^\s*\[[^\]]+\]\s*$/.test(l) && !/^\s*[A-Za-z][\w.-]*\s*=/.test(l));
  return bad >= 0 ? `line ${bad + 1} is neither a [Section] nor Key=Value` : undefined;
}

async function filesIn(r: ConfigReader, dir: string, match: RegExp): Promise<string[]> {
  if (!(await r.isDir(dir))) return [];
  return (await r.readdir(dir)).filter((n) => match.test(n)).map((n) => `${dir}/${n}`);
}

/**
 * The guest's network configuration files that name an ethN interface.
 * Files that cannot be read or parsed give a warning (and count as not naming one).
 */
export async function filesNamingEth(r: ConfigReader, warnings: string[]): Promise<string[]> {
  const found: string[] = [];
  const check = async (path: string, problem?: (text: string) => string | undefined, byName?: boolean) => {
    let text: string | null;
    try {
      text = await r.read(path);
    } catch (e) {
      warnings.push(`${path} could not be read (${(e as Error).message}): cannot tell whether it names eth0; if it does, add net.ifnames=0 to the kernel command line`);
      return;
    }
    if (text === null) return;
    const why = problem?.(text);
    if (why) {
      warnings.push(`${path} could not be parsed (${why}): cannot tell which interfaces it configures`);
      return;
    }
    if (byName || meaningful(text).some((l) => ETH.test(l))) found.push(path);
  };
  await check('/etc/network/interfaces');
  for (const p of await filesIn(r, '/etc/network/interfaces.d', /^[^.]/)) await check(p);
  for (const dir of ['/etc/sysconfig/network-scripts', '/etc/sysconfig/network']) {
    for (const p of await filesIn(r, dir, /^ifcfg-/)) {
      if (/^ifcfg-lo$/.test(p.replace(/^.*\//, ''))) continue;
      await check(p, undefined, /\/ifcfg-eth\d+$/.test(p));
    }
  }
  for (const p of await filesIn(r, '/etc/netplan', /\.ya?ml$/)) await check(p, netplanProblem);
  for (const p of await filesIn(r, '/etc/systemd/network', /\.network$/)) await check(p, networkdProblem);
  return found;
}
