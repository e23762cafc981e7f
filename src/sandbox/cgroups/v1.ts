import { chownSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { PalisadeError } from '../../errors/index.js';
import {
  changeFreezeState,
  ensurePrefixDir,
  groupPath,
  listGroupIds,
  makeGroupDir,
  removeTree,
  rollbackDirs,
  writeLimit,
} from './common.js';
import {
  errnoOf,
  readIfExists,
  readKeyed,
  readNumber,
  readPids,
  rmdirTolerant,
  subtreeChildrenFirst,
  writeControl,
} from './fsops.js';
import { KILL_TIMEOUT_MS, killSubtreeByFreezing, v1Freezer } from './killer.js';
import { v1Hierarchies, v1Mounts, type V1Layout } from './layout.js';
import {
  CPU_PERIOD_US,
  validateDelegate,
  validateExecName,
  validateLimits,
  validateSandboxId,
} from './validate.js';
import type { CgroupLimits, CgroupManager, SandboxCgroup, SandboxCgroupStats } from './types.js';

function subtreePidsOf(dir: string): number[] {
  return subtreeChildrenFirst(dir).flatMap((g) => readPids(join(g, 'cgroup.procs')));
}

/** True if /proc says `pid` is (still) in `relativePath` of the hierarchy that has `controller`. */
function pidIsInGroup(pid: number, controller: string, relativePath: string): boolean {
  const text = readIfExists(`/proc/${pid}/cgroup`);
  if (text === undefined) return false;
  return text.split('\n').some((line) => {
    const [, controllers, path] = line.split(':');
    return (
      controllers?.split(',').includes(controller) === true &&
      (path === relativePath || path?.startsWith(`${relativePath}/`) === true)
    );
  });
}

export class V1SandboxCgroup implements SandboxCgroup {
  readonly procsFiles: string[];
  /**
   * Only the freezer group is delegated: per-exec groups exist to kill an exec's tree, and the
   * freezer is what kills. Keeping memory/pids/cpu root-owned means a sandbox cannot create
   * memory cgroups (a host-wide 64K memcg-ID pool) or set limits on sub-groups at all.
   */
  readonly delegatedDirs: string[];
  private readonly freezerDir: string;
  private readonly dirs: string[];

  constructor(
    readonly id: string,
    private readonly layout: V1Layout,
    private readonly prefix: string,
  ) {
    this.dirs = v1Mounts(layout).map((m) => groupPath(m, prefix, id));
    this.freezerDir = groupPath(layout.freezer, prefix, id);
    this.procsFiles = this.dirs.map((d) => join(d, 'cgroup.procs'));
    this.delegatedDirs = [this.freezerDir];
  }

  async killExec(execName: string): Promise<void> {
    const dir = join(this.freezerDir, validateExecName(execName));
    await killSubtreeByFreezing(
      dir,
      v1Freezer,
      `exec ${execName} of sandbox ${this.id}`,
      this.freezerDir,
    );
    await removeTree(dir, `exec ${execName} of sandbox ${this.id}`);
  }

  removeExec(execName: string): void {
    const dir = join(this.freezerDir, validateExecName(execName));
    for (const group of subtreeChildrenFirst(dir)) rmdirTolerant(group);
  }

  execPids(execName: string): number[] {
    return subtreePidsOf(join(this.freezerDir, validateExecName(execName)));
  }

  async killAll(): Promise<void> {
    const deadline = Date.now() + KILL_TIMEOUT_MS;
    for (;;) {
      await killSubtreeByFreezing(this.freezerDir, v1Freezer, `sandbox ${this.id}`);
      // The launcher joins the freezer group first, so every sandbox task is normally caught
      // above. A task that is in another hierarchy's group but not the freezer's can only come
      // from a launcher that broke that order; pull it into the freezer group and sweep again.
      let strays = 0;
      for (const { mount, controller } of v1Hierarchies(this.layout)) {
        if (controller === 'freezer') continue;
        for (const pid of subtreePidsOf(groupPath(mount, this.prefix, this.id))) {
          if (!pidIsInGroup(pid, controller, `/${this.prefix}/${this.id}`)) continue;
          strays++;
          try {
            writeControl(join(this.freezerDir, 'cgroup.procs'), String(pid));
          } catch (err) {
            if (errnoOf(err) !== 'ESRCH' && errnoOf(err) !== 'ENOENT') throw err;
          }
        }
      }
      if (strays === 0) return;
      if (Date.now() >= deadline) {
        throw new PalisadeError(
          'INTERNAL',
          `could not kill every process of sandbox ${this.id} within ${KILL_TIMEOUT_MS} ms; retry`,
        );
      }
    }
  }

  freeze(): Promise<void> {
    return changeFreezeState(v1Freezer, this.freezerDir, true, this.id);
  }

  thaw(): Promise<void> {
    return changeFreezeState(v1Freezer, this.freezerDir, false, this.id);
  }

  stats(): SandboxCgroupStats {
    const memory = groupPath(this.layout.memory, this.prefix, this.id);
    try {
      return {
        memoryBytes: readNumber(join(memory, 'memory.usage_in_bytes')),
        memoryLimitBytes: readNumber(join(memory, 'memory.limit_in_bytes')),
        pids: readNumber(join(groupPath(this.layout.pids, this.prefix, this.id), 'pids.current')),
        cpuUsageNs: readNumber(
          join(groupPath(this.layout.cpuacct, this.prefix, this.id), 'cpuacct.usage'),
        ),
        oomKills: Number(readKeyed(join(memory, 'memory.oom_control')).get('oom_kill') ?? 0),
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
    for (const dir of this.dirs) await removeTree(dir, `sandbox ${this.id}`);
  }
}

function applyV1Limits(layout: V1Layout, prefix: string, id: string, limits: CgroupLimits): void {
  const memory = groupPath(layout.memory, prefix, id);
  writeLimit(memory, 'memory.limit_in_bytes', String(limits.memoryBytes), id);
  if (layout.swapAccounting) {
    writeLimit(
      memory,
      'memory.memsw.limit_in_bytes',
      String(limits.memoryBytes + limits.swapBytes),
      id,
    );
  } else {
    if (limits.swapBytes > 0) {
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        'swapBytes > 0 needs swap accounting (memory.memsw.*), which this kernel lacks; boot with swapaccount=1 or set swapBytes to 0',
      );
    }
    writeLimit(memory, 'memory.swappiness', '0', id);
  }
  // A new memcg inherits oom_kill_disable from its parent; with it set, a sandbox over its
  // limit would hang instead of having a task killed. Force the OOM killer on.
  writeLimit(memory, 'memory.oom_control', '0', id);
  if (readKeyed(join(memory, 'memory.oom_control')).get('oom_kill_disable') !== '0') {
    throw new PalisadeError(
      'SANDBOX_CREATE_FAILED',
      `cannot enable the OOM killer for sandbox ${id}'s memory group (memory.oom_control)`,
    );
  }
  writeLimit(groupPath(layout.pids, prefix, id), 'pids.max', String(limits.pids), id);
  const cpu = groupPath(layout.cpu, prefix, id);
  writeLimit(cpu, 'cpu.cfs_period_us', String(CPU_PERIOD_US), id);
  writeLimit(
    cpu,
    'cpu.cfs_quota_us',
    String(Math.max(1000, Math.round(limits.cpus * CPU_PERIOD_US))),
    id,
  );
}

export class V1CgroupManager implements CgroupManager {
  readonly version = 'v1' as const;

  constructor(
    private readonly layout: V1Layout,
    private readonly prefix: string,
  ) {
    for (const mount of v1Mounts(layout)) ensurePrefixDir(join(mount, prefix));
  }

  removePrefixIfEmpty(): void {
    for (const mount of v1Mounts(this.layout)) {
      try {
        rmdirSync(join(mount, this.prefix));
      } catch {
        // not empty (another engine's or a live group) or already gone
      }
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
    const created: string[] = [];
    try {
      for (const mount of v1Mounts(this.layout)) {
        const dir = groupPath(mount, this.prefix, id);
        makeGroupDir(dir, id);
        created.push(dir);
      }
      applyV1Limits(this.layout, this.prefix, id, clean);
      // v1 delegation needs only the directory: mkdir inside it, and the sub-groups (with all
      // their files) are then owned by the creator. The group's own files stay root-owned.
      chownSync(groupPath(this.layout.freezer, this.prefix, id), uid, gid);
    } catch (err) {
      rollbackDirs(created.reverse());
      if (err instanceof PalisadeError) throw err;
      throw new PalisadeError(
        'SANDBOX_CREATE_FAILED',
        `cannot set up the cgroup of sandbox ${id} (${errnoOf(err) ?? 'unknown error'})`,
        { sandboxId: id },
        { cause: err },
      );
    }
    return new V1SandboxCgroup(id, this.layout, this.prefix);
  }

  async reapLeftovers(keep: ReadonlySet<string>): Promise<string[]> {
    const ids = new Set<string>();
    for (const mount of v1Mounts(this.layout)) {
      for (const id of listGroupIds(join(mount, this.prefix))) ids.add(id);
    }
    const reaped: string[] = [];
    const failures: string[] = [];
    for (const id of [...ids].sort()) {
      if (keep.has(id)) continue;
      try {
        await new V1SandboxCgroup(id, this.layout, this.prefix).remove();
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
