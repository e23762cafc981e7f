import { existsSync } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PalisadeError } from '../../errors/index.js';
import { readMounts } from './mounts.js';
import { defaultInodes, MAX_WORKSPACE_BYTES, MIN_WORKSPACE_BYTES } from './pool.js';
import { firstLine, runCommand } from './run.js';

const HELPER_RELATIVE = join('native', 'build', 'palisade-quota');
/** palisade-quota's exit status for "this filesystem or kernel cannot do project quotas". */
const HELPER_EXIT_UNSUPPORTED = 3;

/** <repo>/native/build/palisade-quota, found by walking up from this module (src/ or dist/src/). */
export function defaultQuotaHelper(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 6; depth++) {
    const candidate = join(dir, HELPER_RELATIVE);
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  return resolve(dirname(fileURLToPath(import.meta.url)), '../../..', HELPER_RELATIVE);
}

export interface DirectoryQuotaSupport {
  supported: boolean;
  reason: string;
}

/** glibc's gnu_dev_major/gnu_dev_minor, as "major:minor" the way mountinfo prints it. */
function deviceNumbers(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major}:${minor & 0xffffffffn}`;
}

interface ResolvedTarget {
  blockDevice: string;
}

async function resolveTarget(dir: string): Promise<ResolvedTarget | DirectoryQuotaSupport> {
  if (typeof dir !== 'string' || !isAbsolute(dir)) {
    return { supported: false, reason: 'the workspace directory must be an absolute path' };
  }
  const st = await lstat(dir, { bigint: true }).catch(() => undefined);
  if (st === undefined)
    return { supported: false, reason: 'the workspace directory does not exist' };
  if (!st.isDirectory()) {
    return {
      supported: false,
      reason: 'the workspace path is not a directory (symlinks are not followed)',
    };
  }
  const majorMinor = deviceNumbers(st.dev);
  const mount = (await readMounts()).filter((m) => m.majorMinor === majorMinor).pop();
  if (mount === undefined)
    return { supported: false, reason: 'cannot find the filesystem holding the directory' };
  if (!mount.source.startsWith('/dev/')) {
    return {
      supported: false,
      reason: `the directory is on ${mount.fsType}, which is not a block-device filesystem with project quotas (use ext4 or XFS mounted with prjquota)`,
    };
  }
  if (!/(^|,)(prjquota|pquota)(,|$)/.test(mount.superOptions)) {
    return {
      supported: false,
      reason: `the ${mount.fsType} filesystem holding the directory is not mounted with project quotas (mount it with -o prjquota; ext4 also needs mkfs/tune2fs -O quota,project and a kernel with CONFIG_QUOTA and CONFIG_QFMT_V2)`,
    };
  }
  return { blockDevice: mount.source };
}

/** For a caller-supplied workspace dir: can a project quota be applied there? */
export async function checkDirectoryQuotaSupport(
  dir: string,
  quotaHelper: string = defaultQuotaHelper(),
): Promise<DirectoryQuotaSupport> {
  const target = await resolveTarget(dir);
  if (!('blockDevice' in target)) return target;
  const result = await runCommand(quotaHelper, ['get', target.blockDevice, '0']);
  if (result.spawnError !== undefined) {
    return {
      supported: false,
      reason: `the quota helper cannot run (${result.spawnError.code ?? 'error'}); build it with: make -C native`,
    };
  }
  if (result.status !== 0) {
    return {
      supported: false,
      reason: firstLine(result.stderr) || 'project quotas are not enabled on that filesystem',
    };
  }
  return {
    supported: true,
    reason: 'project quotas are enabled on the filesystem holding the directory',
  };
}

/**
 * Charges everything under `dir` to project `projectId` (the project-inherit flag makes new
 * files follow) and sets a hard block limit of `bytes` and the default inode limit.
 */
export async function applyDirectoryQuota(
  dir: string,
  projectId: number,
  bytes: number,
  quotaHelper: string = defaultQuotaHelper(),
): Promise<void> {
  if (!Number.isInteger(projectId) || projectId <= 0 || projectId >= 0xffff_ffff) {
    throw new PalisadeError('INVALID_ARGUMENT', 'projectId must be an integer in 1..4294967294', {
      field: 'projectId',
    });
  }
  if (!Number.isSafeInteger(bytes) || bytes < MIN_WORKSPACE_BYTES || bytes > MAX_WORKSPACE_BYTES) {
    throw new PalisadeError(
      'INVALID_LIMIT',
      'disk quota must be an integer between 16 MiB and 16 TiB',
      {
        field: 'diskBytes',
      },
    );
  }
  const support = await checkDirectoryQuotaSupport(dir, quotaHelper);
  if (!support.supported) {
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `cannot apply a disk quota to the workspace directory: ${support.reason}. ` +
        'Fix: put it on a filesystem mounted with project quotas, or set limits.diskBytes to 0 (explicitly no quota), or omit workspaceDir to use the engine-managed workspace',
      { requirement: 'project-quota' },
    );
  }
  const target = await resolveTarget(dir);
  if (!('blockDevice' in target)) throw new PalisadeError('REQUIREMENT_MISSING', target.reason);
  const result = await runCommand(quotaHelper, [
    'set',
    dir,
    target.blockDevice,
    String(projectId),
    String(bytes),
    String(defaultInodes(bytes)),
  ]);
  if (result.status === 0) return;
  const reason = firstLine(result.stderr) || 'unknown error';
  throw new PalisadeError(
    result.status === HELPER_EXIT_UNSUPPORTED ? 'REQUIREMENT_MISSING' : 'SANDBOX_CREATE_FAILED',
    `cannot apply a disk quota to the workspace directory: ${reason}`,
    { requirement: 'project-quota' },
  );
}
