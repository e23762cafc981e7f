import { chownSync, existsSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { PalisadeError } from '../../errors/index.js';
import {
  changeFreezeState,
  ensurePrefixDir,
  listGroupIds,
  makeGroupDir,
  removeTree,
  rollbackDirs,
  writeLimit,
} from './common.js';
import { swapActive } from './detect.js';
import {
  errnoOf,
  readKeyed,
  readNumber,
  readPids,
  readText,
  rmdirTolerant,
  subtreeChildrenFirst,
  waitFor,
  writeControl,
} from './fsops.js';
import { KILL_TIMEOUT_MS, killSubtreeByFreezing, v2Freezer } from './killer.js';
import type { V2Layout } from './layout.js';
import type { CgroupLimits, CgroupManager, SandboxCgroup, SandboxCgroupStats } from './types.js';
import {
  CPU_PERIOD_US,
  validateDelegate,
  validateExecName,
  validateLimits,
  validateSandboxId,
} from './validate.js';

/** Most sub-groups (concurrent execs) a sandbox may hold; a bound on what a delegatee can create. */
export const MAX_EXEC_GROUPS = 1024;
const REQUIRED_CONTROLLERS = ['memory', 'pids', 'cpu'];

function isPopulated(dir: string): boolean {
  return readKeyed(join(dir, 'cgroup.events')).get('populated') === '1';
}

/**
 * Kills everything in the subtree at `dir`. cgroup.kill (Linux 5.14+) is atomic against
 * forking; older kernels get the freeze → SIGKILL → thaw sweep (a v2-frozen task dies on
 * SIGKILL, so the sweep converges in one round).
 */
export async function killV2Tree(
  dir: string,
  what: string,
  freezeDir: string = dir,
): Promise<void> {
  if (!existsSync(dir)) return;
  if (existsSync(join(dir, 'cgroup.kill'))) {
    try {
      writeControl(join(dir, 'cgroup.kill'), '1');
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return;
      throw err;
    }
    const emptied = await waitFor(() => !existsSync(dir) || !isPopulated(dir), KILL_TIMEOUT_MS);
    if (!emptied) {
      throw new PalisadeError(
        'INTERNAL',
        `processes of ${what} were still alive ${KILL_TIMEOUT_MS} ms after cgroup.kill (a task may be in uninterruptible sleep); retry`,
      );
    }
    return;
  }
  await killSubtreeByFreezing(dir, v2Freezer, what, freezeDir);
}

/**
 * Caps what the delegatee can build below its group, then delegates it. Per the kernel's
 * cgroup-v2 "Delegation" rules a process may move a task between two groups only with write
 * access to cgroup.procs of their common ancestor, so the delegatee needs the directory (to
 * mkdir e<N>) and the group's own cgroup.procs (the common ancestor of the group and e<N>).
 * cgroup.subtree_control stays root-owned: no controllers are enabled below the sandbox, so
 * sub-groups cannot carry limits of their own and the limit files stay out of reach.
 */
export function delegateV2Group(dir: string, sandboxId: string, uid: number, gid: number): void {
  writeLimit(dir, 'cgroup.max.depth', '1', sandboxId);
  writeLimit(dir, 'cgroup.max.descendants', String(MAX_EXEC_GROUPS), sandboxId);
  chownSync(dir, uid, gid);
  chownSync(join(dir, 'cgroup.procs'), uid, gid);
}

function applyV2Limits(dir: string, id: string, limits: CgroupLimits): void {
  writeLimit(dir, 'memory.max', String(limits.memoryBytes), id);
  if (existsSync(join(dir, 'memory.swap.max'))) {
    writeLimit(dir, 'memory.swap.max', String(limits.swapBytes), id);
  } else if (limits.swapBytes > 0 || swapActive()) {
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      'swap is in use (or swapBytes > 0) but this kernel has no memory.swap.max (swap accounting); boot with swapaccount=1, or disable swap and set swapBytes to 0',
    );
  }
  writeLimit(dir, 'pids.max', String(limits.pids), id);
  writeLimit(
    dir,
    'cpu.max',
    `${Math.max(1000, Math.round(limits.cpus * CPU_PERIOD_US))} ${CPU_PERIOD_US}`,
    id,
  );
}

export class V2SandboxCgroup implements SandboxCgroup {
  readonly procsFiles: string[];
  readonly delegatedDirs: string[];

  constructor(
    readonly id: string,
    private readonly dir: string,
  ) {
    this.procsFiles = [join(dir, 'cgroup.procs')];
    this.delegatedDirs = [dir];
  }

  async killExec(execName: string): Promise<void> {
    const dir = join(this.dir, validateExecName(execName));
    await killV2Tree(dir, `exec ${execName} of sandbox ${this.id}`, this.dir);
    await removeTree(dir, `exec ${execName} of sandbox ${this.id}`);
  }

  removeExec(execName: string): void {
    const dir = join(this.dir, validateExecName(execName));
    for (const group of subtreeChildrenFirst(dir)) rmdirTolerant(group);
  }

  execPids(execName: string): number[] {
    const dir = join(this.dir, validateExecName(execName));
    return subtreeChildrenFirst(dir).flatMap((g) => readPids(join(g, 'cgroup.procs')));
  }

  killAll(): Promise<void> {
    return killV2Tree(this.dir, `sandbox ${this.id}`);
  }

  freeze(): Promise<void> {
    return changeFreezeState(v2Freezer, this.dir, true, this.id);
  }

  thaw(): Promise<void> {
    return changeFreezeState(v2Freezer, this.dir, false, this.id);
  }

  stats(): SandboxCgroupStats {
    try {
      return {
        memoryBytes: readNumber(join(this.dir, 'memory.current')),
        memoryLimitBytes: readLimitBytes(join(this.dir, 'memory.max')),
        pids: readNumber(join(this.dir, 'pids.current')),
        cpuUsageNs: Number(readKeyed(join(this.dir, 'cpu.stat')).get('usage_usec') ?? 0) * 1000,
        oomKills: Number(readKeyed(join(this.dir, 'memory.events')).get('oom_kill') ?? 0),
      };
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') {
        throw new PalisadeError(
          'SANDBOX_NOT_RUNNING',
          `sandbox ${this.id} has no cgroup any more`,
          {
            sandboxId: this.id,
          },
        );
      }
      throw err;
    }
  }

  async remove(): Promise<void> {
    await this.killAll();
    await removeTree(this.dir, `sandbox ${this.id}`);
  }
}

function readLimitBytes(path: string): number {
  const raw = readText(path).trim();
  return raw === 'max' ? Number.MAX_SAFE_INTEGER : Number(raw);
}

export class V2CgroupManager implements CgroupManager {
  readonly version = 'v2' as const;
  private readonly prefixDir: string;

  constructor(
    private readonly layout: V2Layout,
    prefix: string,
  ) {
    this.prefixDir = join(layout.root, prefix);
    ensurePrefixDir(this.prefixDir);
    // Limits can be set on a sandbox group only if its parent (the prefix) distributes the
    // controllers, and the prefix only if the root does.
    for (const dir of [layout.root, this.prefixDir]) {
      try {
        writeControl(
          join(dir, 'cgroup.subtree_control'),
          REQUIRED_CONTROLLERS.map((c) => `+${c}`).join(' '),
        );
      } catch (err) {
        throw new PalisadeError(
          'REQUIREMENT_MISSING',
          `cannot enable the memory, pids and cpu controllers in ${dir}/cgroup.subtree_control (${errnoOf(err) ?? 'unknown error'}); ` +
            'the cgroup must not contain processes itself (cgroup v2 "no internal processes" rule) and must have the controllers available; ' +
            'run the engine from a cgroup of its own (e.g. a systemd unit with Delegate=yes) or as root at the cgroup root',
          { file: 'cgroup.subtree_control' },
          { cause: err },
        );
      }
    }
    if (
      !existsSync(join(this.prefixDir, 'cgroup.kill')) &&
      !existsSync(join(this.prefixDir, 'cgroup.freeze'))
    ) {
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        'this kernel has neither cgroup.kill nor cgroup.freeze, so sandbox processes cannot be killed race-free; use Linux ≥ 5.2 (≥ 5.14 recommended)',
      );
    }
  }

  removePrefixIfEmpty(): void {
    try {
      rmdirSync(this.prefixDir);
    } catch {
      // not empty or already gone
    }
  }

  create(
    sandboxId: string,
    limits: CgroupLimits,
    delegateUid: number,
    delegateGid: number,
  ): SandboxCgroup {
    const id = validateSandboxId(sandboxId);
    const clean = validateLimits(limits);
    const { uid, gid } = validateDelegate(delegateUid, delegateGid);
    const dir = join(this.prefixDir, id);
    makeGroupDir(dir, id);
    try {
      applyV2Limits(dir, id, clean);
      delegateV2Group(dir, id, uid, gid);
    } catch (err) {
      rollbackDirs([dir]);
      if (err instanceof PalisadeError) throw err;
      throw new PalisadeError(
        'SANDBOX_CREATE_FAILED',
        `cannot set up the cgroup of sandbox ${id} (${errnoOf(err) ?? 'unknown error'})`,
        { sandboxId: id },
        { cause: err },
      );
    }
    return new V2SandboxCgroup(id, dir);
  }

  async reapLeftovers(keep: ReadonlySet<string>): Promise<string[]> {
    const reaped: string[] = [];
    const failures: string[] = [];
    for (const id of listGroupIds(this.prefixDir).sort()) {
      if (keep.has(id)) continue;
      try {
        await new V2SandboxCgroup(id, join(this.prefixDir, id)).remove();
        reaped.push(id);
      } catch (err) {
        failures.push(`${id}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (failures.length > 0) {
      throw new PalisadeError(
        'INTERNAL',
        `could not reap leftover sandbox cgroups: ${failures.join('; ')}`,
        {
          reaped,
        },
      );
    }
    return reaped;
  }
}
