/**
 * Host requirements of the bubblewrap backend. The engine refuses to start when a required
 * check fails (fail closed); `palisade doctor` prints every check with its fix.
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { packageRoot } from '../../util/paths.js';
import { detectCgroups } from '../cgroups/index.js';

export interface RequirementCheck {
  name: string;
  ok: boolean;
  /** Required checks block sandbox creation; others only warn. */
  required: boolean;
  detail: string;
  fix?: string;
}

export const MIN_BWRAP_VERSION = [0, 8, 0] as const;
const MIN_KERNEL = [5, 11] as const;

/** The native helper shipped with the project (built by `npm run setup`). */
export function defaultHelperPath(): string {
  return join(packageRoot(), 'native/build/palisade-sandbox');
}

export function findBinary(name: string): string | undefined {
  if (name.includes('/')) return existsSync(name) ? name : undefined;
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(delimiter)) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  for (const dir of ['/usr/bin', '/usr/local/bin', '/bin']) {
    const candidate = join(dir, name);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

function compareVersions(a: readonly number[], b: readonly number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export function checkBwrap(bwrapPath: string): RequirementCheck {
  const fix =
    'install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) or set the engine option bwrapPath';
  const found = findBinary(bwrapPath);
  if (!found)
    return { name: 'bubblewrap', ok: false, required: true, detail: `${bwrapPath} not found`, fix };
  const r = spawnSync(found, ['--version'], { encoding: 'utf8', timeout: 5000 });
  const m = /(\d+)\.(\d+)\.(\d+)/.exec(r.stdout ?? '');
  if (r.status !== 0 || !m)
    return {
      name: 'bubblewrap',
      ok: false,
      required: true,
      detail: `${found} --version failed`,
      fix,
    };
  const version = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (compareVersions(version, MIN_BWRAP_VERSION) < 0) {
    return {
      name: 'bubblewrap',
      ok: false,
      required: true,
      detail: `${found} is version ${version.join('.')}; ${MIN_BWRAP_VERSION.join('.')} or newer is required (for --disable-userns and --size)`,
      fix: 'upgrade bubblewrap',
    };
  }
  return {
    name: 'bubblewrap',
    ok: true,
    required: true,
    detail: `${found} version ${version.join('.')}`,
  };
}

export function checkRoot(): RequirementCheck {
  const uid = process.getuid?.() ?? -1;
  return uid === 0
    ? {
        name: 'privileges',
        ok: true,
        required: true,
        detail: 'running as root (needed to give each sandbox its own host uid and cgroup)',
      }
    : {
        name: 'privileges',
        ok: false,
        required: true,
        detail: `running as uid ${uid}; the engine needs root to run each sandbox as its own unprivileged host uid and to manage cgroups`,
        fix: 'run the engine as root (palisade serve drops privileges for its network-facing part)',
      };
}

export function checkKernel(): RequirementCheck {
  const m = /^(\d+)\.(\d+)/.exec(release());
  const version = m ? [Number(m[1]), Number(m[2])] : [0, 0];
  const ok = compareVersions(version, MIN_KERNEL) >= 0;
  return {
    name: 'kernel',
    ok,
    required: true,
    detail: `Linux ${release()}${ok ? '' : `; ${MIN_KERNEL.join('.')} or newer is required (close_range, cgroup features)`}`,
    ...(ok ? {} : { fix: 'upgrade the kernel' }),
  };
}

export function checkUserNamespaces(): RequirementCheck {
  const max = Number(readText('/proc/sys/user/max_user_namespaces') ?? '0');
  const debianSwitch = readText('/proc/sys/kernel/unprivileged_userns_clone');
  const apparmor = readText('/proc/sys/kernel/apparmor_restrict_unprivileged_userns');
  if (!existsSync('/proc/self/ns/user') || max <= 0) {
    return {
      name: 'user namespaces',
      ok: false,
      required: true,
      detail: `user namespaces unavailable (user.max_user_namespaces=${max})`,
      fix: 'sysctl -w user.max_user_namespaces=15000',
    };
  }
  if (debianSwitch === '0') {
    return {
      name: 'user namespaces',
      ok: false,
      required: true,
      detail: 'kernel.unprivileged_userns_clone=0',
      fix: 'sysctl -w kernel.unprivileged_userns_clone=1',
    };
  }
  if (apparmor === '1') {
    return {
      name: 'user namespaces',
      ok: false,
      required: true,
      detail:
        'AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)',
      fix: 'add an AppArmor profile allowing userns for bwrap, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0',
    };
  }
  return {
    name: 'user namespaces',
    ok: true,
    required: true,
    detail: `available (user.max_user_namespaces=${max})`,
  };
}

export function checkSeccomp(): RequirementCheck {
  const status = readText('/proc/self/status') ?? '';
  const actions = readText('/proc/sys/kernel/seccomp/actions_avail') ?? '';
  const ok =
    /^Seccomp:/m.test(status) && actions.includes('errno') && actions.includes('kill_process');
  return ok
    ? { name: 'seccomp', ok, required: true, detail: `seccomp filters supported (${actions})` }
    : {
        name: 'seccomp',
        ok,
        required: true,
        detail: 'seccomp filter mode is not available in this kernel',
        fix: 'use a kernel built with CONFIG_SECCOMP_FILTER=y',
      };
}

export function checkHelper(helperPath: string): RequirementCheck {
  try {
    accessSync(helperPath, constants.X_OK);
    // The files helper is built beside the agent; the engine refuses to start without it.
    accessSync(join(dirname(helperPath), 'palisade-files'), constants.X_OK);
    return {
      name: 'native helper',
      ok: true,
      required: true,
      detail: `${helperPath} (and palisade-files)`,
    };
  } catch {
    return {
      name: 'native helper',
      ok: false,
      required: true,
      detail: `${helperPath} is missing`,
      fix: 'run `npm run setup` in the Palisade directory (needs gcc)',
    };
  }
}

export function checkCgroups(required: boolean, root?: string): RequirementCheck[] {
  const support = detectCgroups(root);
  const checks: RequirementCheck[] = support.checks.map((c) => ({
    name: `cgroup ${c.name}`,
    ok: c.ok,
    required,
    detail: c.detail,
    ...(c.fix ? { fix: c.fix } : {}),
  }));
  checks.push({
    name: 'cgroup limits',
    ok: support.usable,
    required,
    detail: support.usable
      ? `cgroup ${support.version} with memory, pids, cpu and a kill mechanism`
      : required
        ? 'kernel resource limits cannot be enforced'
        : 'RELAXED by operator (cgroups: optional): sandboxes run WITHOUT memory/pids/cpu limits',
    ...(support.usable
      ? {}
      : {
          fix: 'mount the memory, pids, cpu and freezer controllers (or cgroup v2 with them enabled)',
        }),
  });
  return checks;
}

export interface RequirementOptions {
  bwrapPath: string;
  helperPath: string;
  cgroupsRequired: boolean;
  /** @default /sys/fs/cgroup */
  cgroupRoot?: string;
}

export function checkRequirements(options: RequirementOptions): RequirementCheck[] {
  return [
    checkRoot(),
    checkKernel(),
    checkBwrap(options.bwrapPath),
    checkUserNamespaces(),
    checkSeccomp(),
    checkHelper(options.helperPath),
    ...checkCgroups(options.cgroupsRequired, options.cgroupRoot),
  ];
}

export function formatMissing(checks: RequirementCheck[]): string {
  return checks
    .filter((c) => c.required && !c.ok)
    .map((c) => `${c.name}: ${c.detail}${c.fix ? ` (fix: ${c.fix})` : ''}`)
    .join('; ');
}
