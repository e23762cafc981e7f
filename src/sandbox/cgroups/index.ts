/**
 * Kernel resource limits for sandboxes: one cgroup per sandbox (memory+swap, pids, CPU), a
 * kill mechanism that is race-free against forking, pause/resume, stats, and a minimal
 * delegation that lets the sandbox's own uid create per-exec sub-groups.
 */
export type {
  CgroupCheck,
  CgroupLimits,
  CgroupManager,
  CgroupManagerOptions,
  CgroupSupport,
  SandboxCgroup,
  SandboxCgroupStats,
} from './types.js';
export { detectCgroups, DEFAULT_CGROUP_ROOT } from './detect.js';
export { createCgroupManager } from './manager.js';
export { LIMIT_BOUNDS, validateLimits } from './validate.js';
