/** Where each v1 controller this component needs is mounted (co-mounted controllers share a path). */
export interface V1Layout {
  freezer: string;
  memory: string;
  pids: string;
  cpu: string;
  cpuacct: string;
  /** memory.memsw.* exists, so swap can be limited. */
  swapAccounting: boolean;
}

export interface V2Layout {
  root: string;
}

export type CgroupLayout = { version: 'v1'; v1: V1Layout } | { version: 'v2'; v2: V2Layout };

/** The distinct mount points of a v1 layout, freezer first: the launcher must join the freezer
 * group before any other so that every sandbox task is always reachable by the freezer sweep. */
export function v1Mounts(layout: V1Layout): string[] {
  const ordered = [layout.freezer, layout.memory, layout.pids, layout.cpu, layout.cpuacct];
  return ordered.filter((path, index) => ordered.indexOf(path) === index);
}

/** Each distinct v1 mount with one controller it carries (to find it in /proc/<pid>/cgroup). */
export function v1Hierarchies(layout: V1Layout): Array<{ mount: string; controller: string }> {
  const roles = ['freezer', 'memory', 'pids', 'cpu', 'cpuacct'] as const;
  return v1Mounts(layout).map((mount) => ({
    mount,
    controller: roles.find((role) => layout[role] === mount) as string,
  }));
}
