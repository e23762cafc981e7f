import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isPalisadeError, PalisadeError } from '../errors/index.js';
import { createSandboxRuntime, type EngineConfig, type SandboxRuntime } from '../sandbox/index.js';

/** Where the CLI keeps engine state unless told otherwise. */
export const DEFAULT_DATA_ROOT = process.env.PALISADE_DATA_DIR ?? '/var/lib/palisade';

const RUN_SLOTS = 64;
const RUN_UID_BASE = 1_800_000_000;
const RUN_UIDS_PER_SLOT = 1000;

function slotBusy(dataDir: string): boolean {
  const lock = join(dataDir, 'engine.lock');
  if (!existsSync(lock)) return false;
  const pid = Number(readFileSync(lock, 'utf8').trim());
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * A one-shot engine (palisade run, doctor) gets its own data directory, cgroup prefix and uid
 * range, so several can run beside each other and beside `palisade serve` without reaping each
 * other's sandboxes. Two starting at once may race for a slot; the loser moves on.
 */
export async function startOneShotEngine(
  overrides: Partial<EngineConfig> = {},
  root = DEFAULT_DATA_ROOT,
): Promise<{ engine: SandboxRuntime; dataDir: string }> {
  for (let slot = 0; slot < RUN_SLOTS; slot++) {
    const dataDir = join(root, 'run', String(slot));
    if (slotBusy(dataDir)) continue;
    try {
      const engine = await createSandboxRuntime({
        dataDir,
        cgroupPrefix: `palisade-run-${slot}`,
        uidRange: { start: RUN_UID_BASE + slot * RUN_UIDS_PER_SLOT, count: RUN_UIDS_PER_SLOT },
        workspacePoolBytes: 16 * 1024 ** 3,
        // One-shot engines create one sandbox: preparing spare workspaces would only cost time.
        warmWorkspaces: 0,
        ...overrides,
      });
      return { engine, dataDir };
    } catch (err) {
      if (isPalisadeError(err, 'CONFLICT')) continue;
      throw err;
    }
  }
  throw new PalisadeError(
    'SANDBOX_LIMIT_REACHED',
    `all ${RUN_SLOTS} one-shot engine slots under ${root}/run are busy; wait for other palisade run commands to finish`,
  );
}
