import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PalisadeError } from '../../errors/index.js';
import { errnoOf, readPids, sigkill, subtreeChildrenFirst, waitFor } from './fsops.js';

/** How to freeze one group in a given cgroup version. */
export interface FreezerOps {
  /** Ask the kernel to freeze the group (and, hierarchically, its sub-groups). */
  freeze(dir: string): void;
  thaw(dir: string): void;
  isFrozen(dir: string): boolean;
  isThawed(dir: string): boolean;
  /** Frozen by a request on this very group (a pause), not merely because an ancestor is. */
  isSelfFrozen(dir: string): boolean;
}

export const KILL_TIMEOUT_MS = 10_000;
/** Per round: how long to wait for the kernel to finish freezing before signalling anyway. */
const FREEZE_ROUND_MS = 1_000;
/** Per round: how long to wait for SIGKILLed tasks to leave the group. */
const EXIT_ROUND_MS = 500;
const REFREEZE_TIMEOUT_MS = 5_000;

function ignoreGone(action: () => void): void {
  try {
    action();
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw err;
  }
}

function subtreePids(dir: string): number[] {
  const pids: number[] = [];
  for (const group of subtreeChildrenFirst(dir))
    pids.push(...readPids(join(group, 'cgroup.procs')));
  return pids;
}

function frozenOrGone(freezer: FreezerOps, dir: string): boolean {
  try {
    return freezer.isFrozen(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return true;
    throw err;
  }
}

export function subtreeIsEmpty(dir: string): boolean {
  return subtreePids(dir).length === 0;
}

/**
 * Kills every task in the subtree at `dir`. Freezing first means nothing in the group can
 * fork or exit while we read cgroup.procs and signal, so every pid we signal still belongs to
 * a frozen task of this group (no pid-reuse hazard) and no child escapes the sweep. SIGKILL to
 * a v1-frozen task only takes effect once thawed, hence freeze → kill → thaw, repeated until
 * the subtree is empty.
 *
 * `freezeDir` is the group that is frozen; it must be `dir` or an ancestor the sandbox cannot
 * thaw. Sub-groups (e<N>) belong to the sandbox uid, which could thaw one mid-sweep to let a
 * listed task exit and its pid be reused; freezing the root-owned sandbox group instead keeps
 * every sandbox task, including any accomplice, frozen. Every group in `dir`'s subtree is
 * thawed as well, because a sandbox may have frozen one itself and would otherwise keep its
 * killed tasks alive. If `freezeDir` was paused, it is paused again afterwards (the killed
 * tasks only die while it is briefly thawed).
 */
export async function killSubtreeByFreezing(
  dir: string,
  freezer: FreezerOps,
  what: string,
  freezeDir: string = dir,
  timeoutMs = KILL_TIMEOUT_MS,
): Promise<void> {
  let paused = false;
  try {
    paused = freezeDir !== dir && freezer.isSelfFrozen(freezeDir);
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw err;
  }
  let sweepFailure: unknown;
  try {
    await sweep(dir, freezer, what, freezeDir, timeoutMs);
  } catch (err) {
    sweepFailure = err;
  }
  if (paused) {
    ignoreGone(() => freezer.freeze(freezeDir));
    const refrozen = await waitFor(() => frozenOrGone(freezer, freezeDir), REFREEZE_TIMEOUT_MS);
    if (!refrozen && sweepFailure === undefined) {
      sweepFailure = new PalisadeError(
        'INTERNAL',
        `${what} was killed but its paused sandbox did not freeze again within ${REFREEZE_TIMEOUT_MS} ms; pause it again`,
      );
    }
  }
  if (sweepFailure !== undefined) throw sweepFailure;
}

async function sweep(
  dir: string,
  freezer: FreezerOps,
  what: string,
  freezeDir: string = dir,
  timeoutMs = KILL_TIMEOUT_MS,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (subtreeIsEmpty(dir)) return;
    ignoreGone(() => freezer.freeze(freezeDir));
    await waitFor(
      () => frozenOrGone(freezer, freezeDir),
      Math.min(FREEZE_ROUND_MS, Math.max(0, deadline - Date.now())),
    );
    for (const pid of subtreePids(dir)) sigkill(pid);
    for (const group of subtreeChildrenFirst(dir)) ignoreGone(() => freezer.thaw(group));
    if (freezeDir !== dir) ignoreGone(() => freezer.thaw(freezeDir));
    if (await waitFor(() => subtreeIsEmpty(dir), EXIT_ROUND_MS)) return;
    if (Date.now() >= deadline) {
      throw new PalisadeError(
        'INTERNAL',
        `could not kill every process of ${what} within ${timeoutMs} ms (a task may be stuck in uninterruptible sleep); retry the operation`,
        { pidsLeft: subtreePids(dir).length },
      );
    }
  }
}

export const v1Freezer: FreezerOps = {
  freeze: (dir) => writeFileSync(join(dir, 'freezer.state'), 'FROZEN'),
  thaw: (dir) => writeFileSync(join(dir, 'freezer.state'), 'THAWED'),
  isFrozen: (dir) => readFileSync(join(dir, 'freezer.state'), 'utf8').trim() === 'FROZEN',
  isThawed: (dir) => readFileSync(join(dir, 'freezer.state'), 'utf8').trim() === 'THAWED',
  isSelfFrozen: (dir) => readFileSync(join(dir, 'freezer.self_freezing'), 'utf8').trim() === '1',
};

function v2FrozenFlag(dir: string): string | undefined {
  const text = readFileSync(join(dir, 'cgroup.events'), 'utf8');
  return /^frozen (\d)$/m.exec(text)?.[1];
}

export const v2Freezer: FreezerOps = {
  freeze: (dir) => writeFileSync(join(dir, 'cgroup.freeze'), '1'),
  thaw: (dir) => writeFileSync(join(dir, 'cgroup.freeze'), '0'),
  isFrozen: (dir) => v2FrozenFlag(dir) === '1',
  isThawed: (dir) => v2FrozenFlag(dir) === '0',
  isSelfFrozen: (dir) => readFileSync(join(dir, 'cgroup.freeze'), 'utf8').trim() === '1',
};
