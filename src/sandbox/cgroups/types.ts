/** Kernel resource limits applied to one sandbox's cgroup. */
export interface CgroupLimits {
  memoryBytes: number;
  swapBytes: number;
  pids: number;
  cpus: number;
}

export interface CgroupCheck {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

export interface CgroupSupport {
  version: 'v1' | 'v2' | 'none';
  checks: CgroupCheck[];
  /** all of memory, pids, cpu and a kill mechanism (freezer on v1) usable */
  usable: boolean;
}

export interface CgroupManagerOptions {
  /** Where cgroup filesystems are mounted. @default /sys/fs/cgroup */
  root?: string;
  /** groups live under <hierarchy>/<prefix>/; e.g. 'palisade' or 'palisade-test-<pid>' */
  prefix: string;
}

export interface CgroupManager {
  readonly version: 'v1' | 'v2';
  create(
    sandboxId: string,
    limits: CgroupLimits,
    delegateUid: number,
    delegateGid: number,
  ): SandboxCgroup;
  /** Kill everything in, and remove, every group under the prefix whose id is not in `keep` (crash recovery). Returns ids reaped. */
  reapLeftovers(keep: ReadonlySet<string>): Promise<string[]>;
  /** Removes the prefix directories if no sandbox group is left in them (engine shutdown). */
  removePrefixIfEmpty(): void;
}

export interface SandboxCgroupStats {
  memoryBytes: number;
  memoryLimitBytes: number;
  pids: number;
  cpuUsageNs: number;
  oomKills: number;
}

export interface SandboxCgroup {
  readonly id: string;
  /** cgroup.procs files (one per hierarchy) the launcher must write "0" to, in this order */
  readonly procsFiles: string[];
  /** directories the agent receives as dir fds to create e<N> sub-groups in */
  readonly delegatedDirs: string[];
  /** Kill every process in e<N> (and its sub-groups), then remove the e<N> groups. Tolerates already-gone. */
  killExec(execName: string): Promise<void>;
  /** rmdir e<N> if empty (EBUSY/ENOENT ignored). */
  removeExec(execName: string): void;
  execPids(execName: string): number[];
  /** Kill every process in the sandbox group and its sub-groups, race-free against forking. */
  killAll(): Promise<void>;
  /** Pause; resolves once the kernel reports the group frozen. */
  freeze(): Promise<void>;
  /** Resume; resolves once the kernel reports the group thawed. */
  thaw(): Promise<void>;
  stats(): SandboxCgroupStats;
  /** killAll, then remove the sub-groups and the group in every hierarchy. */
  remove(): Promise<void>;
}
