import { accessSync, constants, existsSync, readdirSync, statfsSync } from 'node:fs';
import { release } from 'node:os';
import { join, resolve } from 'node:path';
import { readIfExists } from './fsops.js';
import type { CgroupLayout, V1Layout } from './layout.js';
import type { CgroupCheck, CgroupSupport } from './types.js';

export const DEFAULT_CGROUP_ROOT = '/sys/fs/cgroup';
const CGROUP2_SUPER_MAGIC = 0x63677270;
const V1_CONTROLLERS = ['memory', 'pids', 'cpu', 'cpuacct', 'freezer'] as const;
const V2_CONTROLLERS = ['memory', 'pids', 'cpu'] as const;

interface CgroupMount {
  mountPoint: string;
  fsType: string;
  superOptions: string[];
}

/** Mount points in /proc/self/mountinfo encode space, tab, newline and backslash as octal. */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

function cgroupMounts(): CgroupMount[] {
  const text = readIfExists('/proc/self/mountinfo') ?? '';
  const mounts: CgroupMount[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const separator = fields.indexOf('-');
    if (separator < 0) continue;
    const fsType = fields[separator + 1];
    const mountPoint = fields[4];
    if ((fsType !== 'cgroup' && fsType !== 'cgroup2') || mountPoint === undefined) continue;
    mounts.push({
      mountPoint: unescapeMountField(mountPoint),
      fsType,
      superOptions: (fields[separator + 3] ?? '').split(','),
    });
  }
  return mounts;
}

function isCgroup2(path: string): boolean {
  try {
    return statfsSync(path).type === CGROUP2_SUPER_MAGIC;
  } catch {
    return false;
  }
}

function writable(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export function swapActive(): boolean {
  const lines = (readIfExists('/proc/swaps') ?? '').split('\n').filter((l) => l.trim() !== '');
  return lines.length > 1;
}

function kernelAtLeast(major: number, minor: number): boolean {
  const match = /^(\d+)\.(\d+)/.exec(release());
  if (!match) return false;
  const [maj, min] = [Number(match[1]), Number(match[2])];
  return maj > major || (maj === major && min >= minor);
}

/** True if any direct child group of `root` has `file` (core files exist only below the root). */
function someChildHas(root: string, file: string): boolean {
  try {
    return readdirSync(root, { withFileTypes: true }).some(
      (e) => e.isDirectory() && existsSync(join(root, e.name, file)),
    );
  } catch {
    return false;
  }
}

export interface CgroupProbe {
  support: CgroupSupport;
  /** Present only when `support.usable`. */
  layout?: CgroupLayout;
}

function probeV2(root: string): CgroupProbe {
  const checks: CgroupCheck[] = [
    { name: 'cgroup filesystem', ok: true, detail: `cgroup v2 (unified) at ${root}` },
  ];
  const available = new Set(
    (readIfExists(join(root, 'cgroup.controllers')) ?? '').trim().split(/\s+/),
  );
  for (const controller of V2_CONTROLLERS) {
    const ok = available.has(controller);
    checks.push({
      name: `controller ${controller}`,
      ok,
      detail: ok
        ? `${controller} is available in ${root}/cgroup.controllers`
        : `${controller} is not listed in ${root}/cgroup.controllers`,
      ...(ok
        ? {}
        : {
            fix:
              controller === 'memory'
                ? 'boot the kernel with cgroup_enable=memory, and if the engine runs under systemd give its unit Delegate=yes'
                : `enable the ${controller} controller for this cgroup (parent's cgroup.subtree_control, or Delegate=yes for a systemd unit)`,
          }),
    });
  }
  const hasKill = someChildHas(root, 'cgroup.kill') || kernelAtLeast(5, 14);
  const hasFreeze = someChildHas(root, 'cgroup.freeze') || kernelAtLeast(5, 2);
  checks.push({
    name: 'kill mechanism',
    ok: hasKill || hasFreeze,
    detail: hasKill
      ? 'cgroup.kill (atomic kill of a whole group)'
      : hasFreeze
        ? 'cgroup.freeze, then SIGKILL every task (kernel without cgroup.kill)'
        : 'neither cgroup.kill nor cgroup.freeze is available',
    ...(hasKill || hasFreeze
      ? {}
      : { fix: 'use a Linux kernel ≥ 5.2 (≥ 5.14 recommended for cgroup.kill)' }),
  });
  checks.push({
    name: 'swap accounting',
    ok: true,
    detail: swapActive()
      ? 'swap is active: memory.swap.max is required and checked when each sandbox is created'
      : 'no swap is active on this host',
  });
  const canWrite = writable(root);
  checks.push({
    name: 'permission',
    ok: canWrite,
    detail: canWrite ? `${root} is writable` : `${root} is not writable by this process`,
    ...(canWrite
      ? {}
      : { fix: 'run the engine as root, or delegate this cgroup to the engine user' }),
  });
  const usable = checks.every((c) => c.ok);
  return usable
    ? { support: { version: 'v2', checks, usable }, layout: { version: 'v2', v2: { root } } }
    : { support: { version: 'v2', checks, usable } };
}

function probeV1(root: string, mounts: CgroupMount[]): CgroupProbe {
  const checks: CgroupCheck[] = [
    { name: 'cgroup filesystem', ok: true, detail: `cgroup v1 hierarchies under ${root}` },
  ];
  const found = new Map<string, string>();
  for (const controller of V1_CONTROLLERS) {
    const mount = mounts.find((m) => m.fsType === 'cgroup' && m.superOptions.includes(controller));
    const probeFile = {
      memory: 'memory.limit_in_bytes',
      pids: 'cgroup.procs',
      cpu: 'cpu.cfs_quota_us',
      cpuacct: 'cpuacct.usage',
      freezer: 'cgroup.procs',
    }[controller];
    const ok = mount !== undefined && existsSync(join(mount.mountPoint, probeFile));
    if (ok) found.set(controller, mount.mountPoint);
    const role = {
      memory: 'memory limit',
      pids: 'process-count limit',
      cpu: 'CPU quota (needs CONFIG_CFS_BANDWIDTH)',
      cpuacct: 'CPU usage statistics',
      freezer: 'race-free kill and pause/resume',
    }[controller];
    checks.push({
      name: `controller ${controller}`,
      ok,
      detail: ok
        ? `${role}: mounted at ${mount?.mountPoint}`
        : `${role}: no usable ${controller} hierarchy under ${root}`,
      ...(ok
        ? {}
        : {
            fix: `mount it: mkdir -p ${root}/${controller} && mount -t cgroup -o ${controller} cgroup ${root}/${controller}${controller === 'memory' ? ' (and boot with cgroup_enable=memory if it is disabled)' : ''}`,
          }),
    });
  }
  const memory = found.get('memory');
  if (memory !== undefined) {
    const hierarchical = readIfExists(join(memory, 'memory.use_hierarchy'))?.trim() !== '0';
    checks.push({
      name: 'memory hierarchy',
      ok: hierarchical,
      detail: hierarchical
        ? 'limits apply to a group and all its sub-groups (memory.use_hierarchy=1)'
        : 'memory.use_hierarchy is 0: a sub-group would escape the sandbox memory limit',
      ...(hierarchical
        ? {}
        : { fix: `echo 1 > ${memory}/memory.use_hierarchy (before any groups exist)` }),
    });
    const memsw = existsSync(join(memory, 'memory.memsw.limit_in_bytes'));
    const swapOn = swapActive();
    checks.push({
      name: 'swap accounting',
      ok: memsw || !swapOn,
      detail: memsw
        ? 'memory.memsw.* present: memory+swap is limited'
        : swapOn
          ? 'swap is active but swap accounting (memory.memsw.*) is not: sandboxes could use unlimited swap'
          : 'no swap accounting, but no swap is active either (sandbox swappiness is set to 0)',
      ...(memsw || !swapOn ? {} : { fix: 'boot with swapaccount=1, or disable swap (swapoff -a)' }),
    });
  }
  const notWritable = [...new Set(found.values())].filter((m) => !writable(m));
  checks.push({
    name: 'permission',
    ok: notWritable.length === 0,
    detail:
      notWritable.length === 0
        ? 'cgroup hierarchies are writable'
        : `not writable by this process: ${notWritable.join(', ')}`,
    ...(notWritable.length === 0 ? {} : { fix: 'run the engine as root' }),
  });
  const usable = checks.every((c) => c.ok);
  if (!usable) return { support: { version: 'v1', checks, usable } };
  const at = (c: string): string => found.get(c) as string;
  const v1: V1Layout = {
    freezer: at('freezer'),
    memory: at('memory'),
    pids: at('pids'),
    cpu: at('cpu'),
    cpuacct: at('cpuacct'),
    swapAccounting: existsSync(join(at('memory'), 'memory.memsw.limit_in_bytes')),
  };
  return { support: { version: 'v1', checks, usable }, layout: { version: 'v1', v1 } };
}

/**
 * Works out which cgroup version `root` offers and whether everything a sandbox needs is
 * there. Pure v2 when `root` itself is a cgroup2 filesystem; otherwise the v1 hierarchies
 * mounted below `root` (a hybrid host's empty unified hierarchy is ignored: it has no
 * controllers). Reads only; creates nothing.
 */
export function probeCgroups(rootOption: string = DEFAULT_CGROUP_ROOT): CgroupProbe {
  const root = resolve(rootOption);
  if (!existsSync(root)) {
    return {
      support: {
        version: 'none',
        usable: false,
        checks: [
          {
            name: 'cgroup filesystem',
            ok: false,
            detail: `${root} does not exist`,
            fix: 'mount cgroups: mount -t cgroup2 none /sys/fs/cgroup (or the v1 hierarchies), or configure the right root',
          },
        ],
      },
    };
  }
  if (isCgroup2(root)) return probeV2(root);
  const below = cgroupMounts().filter(
    (m) => m.fsType === 'cgroup' && m.mountPoint.startsWith(`${root}/`),
  );
  if (below.length > 0) return probeV1(root, below);
  return {
    support: {
      version: 'none',
      usable: false,
      checks: [
        {
          name: 'cgroup filesystem',
          ok: false,
          detail: `no cgroup v2 filesystem at ${root} and no cgroup v1 hierarchies below it`,
          fix: 'mount cgroup v2 at /sys/fs/cgroup (systemd does this by default) or mount the v1 memory, pids, cpu,cpuacct and freezer hierarchies',
        },
      ],
    },
  };
}

export function detectCgroups(root?: string): CgroupSupport {
  return probeCgroups(root).support;
}

/** For error messages: the failed checks, each with its fix. */
export function describeFailures(support: CgroupSupport): string {
  return support.checks
    .filter((c) => !c.ok)
    .map((c) => `${c.name}: ${c.detail}${c.fix ? ` (fix: ${c.fix})` : ''}`)
    .join('; ');
}
