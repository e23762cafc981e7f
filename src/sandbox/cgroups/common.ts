import { existsSync, mkdirSync, readdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { PalisadeError } from '../../errors/index.js';
import {
  errnoOf,
  rmdirTolerant,
  sleep,
  subtreeChildrenFirst,
  waitFor,
  writeControl,
} from './fsops.js';
import type { FreezerOps } from './killer.js';
import { isValidSandboxId } from './validate.js';

export const STATE_CHANGE_TIMEOUT_MS = 5_000;
const REMOVE_TIMEOUT_MS = 3_000;

/** Writes one limit file while creating a group; failures name the file and the errno. */
export function writeLimit(dir: string, file: string, value: string, sandboxId: string): void {
  try {
    writeControl(join(dir, file), value);
  } catch (err) {
    const code = errnoOf(err) ?? 'unknown error';
    if (code === 'ENOENT') {
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        `cannot set ${file} for sandbox ${sandboxId}: the kernel does not provide it; run \`palisade doctor\` to see which cgroup controller is missing`,
        { file },
        { cause: err },
      );
    }
    throw new PalisadeError(
      'SANDBOX_CREATE_FAILED',
      `cannot set ${file}=${value} for sandbox ${sandboxId} (${code})`,
      { file, errno: code },
      { cause: err },
    );
  }
}

/** mkdir for a new sandbox group; an existing one is a leftover or a duplicate id. */
export function makeGroupDir(dir: string, sandboxId: string): void {
  try {
    mkdirSync(dir);
  } catch (err) {
    if (errnoOf(err) === 'EEXIST') {
      throw new PalisadeError(
        'CONFLICT',
        `a cgroup for sandbox ${sandboxId} already exists (a leftover from a crash? the engine reaps leftovers at start)`,
        { sandboxId },
      );
    }
    throw new PalisadeError(
      'SANDBOX_CREATE_FAILED',
      `cannot create the cgroup for sandbox ${sandboxId} (${errnoOf(err) ?? 'unknown error'})`,
      { sandboxId },
      { cause: err },
    );
  }
}

/** Best-effort undo of a half-made sandbox: the groups are empty, so rmdir suffices. */
export function rollbackDirs(dirs: string[]): void {
  for (const dir of dirs) {
    try {
      rmdirSync(dir);
    } catch {
      // Reaped at next engine start if it could not be removed now.
    }
  }
}

/** Creates the manager's prefix group; failing here means the host cannot give us cgroups. */
export function ensurePrefixDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `cannot create the cgroup ${dir} (${errnoOf(err) ?? 'unknown error'}); run the engine as root with writable cgroup hierarchies (see \`palisade doctor\`)`,
      { errno: errnoOf(err) },
      { cause: err },
    );
  }
}

/** rmdir a group and its sub-groups, children first, retrying while exiting tasks drain. */
export async function removeTree(dir: string, what: string): Promise<void> {
  const deadline = Date.now() + REMOVE_TIMEOUT_MS;
  for (;;) {
    for (const group of subtreeChildrenFirst(dir)) rmdirTolerant(group);
    if (!existsSync(dir)) return;
    if (Date.now() >= deadline) {
      throw new PalisadeError(
        'INTERNAL',
        `could not remove the cgroup of ${what}: still busy after ${REMOVE_TIMEOUT_MS} ms; retry, or the engine reaps it at next start`,
      );
    }
    await sleep(10);
  }
}

/** Freezes or thaws one group and waits until the kernel reports the new state. */
export async function changeFreezeState(
  freezer: FreezerOps,
  dir: string,
  frozen: boolean,
  sandboxId: string,
): Promise<void> {
  try {
    if (frozen) freezer.freeze(dir);
    else freezer.thaw(dir);
    const reached = await waitFor(
      () => (frozen ? freezer.isFrozen(dir) : freezer.isThawed(dir)),
      STATE_CHANGE_TIMEOUT_MS,
    );
    if (!reached) {
      throw new PalisadeError(
        'INTERNAL',
        `sandbox ${sandboxId} did not become ${frozen ? 'frozen' : 'thawed'} within ${STATE_CHANGE_TIMEOUT_MS} ms (a task may be in uninterruptible sleep); retry`,
        { sandboxId },
      );
    }
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') {
      throw new PalisadeError(
        'SANDBOX_NOT_RUNNING',
        `sandbox ${sandboxId} has no cgroup any more (it was removed)`,
        { sandboxId },
      );
    }
    throw err;
  }
}

export function groupPath(mount: string, prefix: string, id: string): string {
  return join(mount, prefix, id);
}

/** Sandbox ids that have a group under `prefixDir` (other names are not ours and are left alone). */
export function listGroupIds(prefixDir: string): string[] {
  try {
    return readdirSync(prefixDir, { withFileTypes: true })
      .filter((e) => e.isDirectory() && isValidSandboxId(e.name))
      .map((e) => e.name);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw err;
  }
}
