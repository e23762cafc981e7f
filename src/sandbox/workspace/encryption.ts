import { existsSync } from 'node:fs';
import { access, constants as fsConstants } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PalisadeError } from '../../errors/index.js';
import { firstLine, runCommand } from './run.js';

const HELPER_RELATIVE = join('native', 'build', 'palisade-fscrypt');
/** palisade-fscrypt's exit status for "this kernel or filesystem cannot do fscrypt". */
const HELPER_EXIT_UNSUPPORTED = 3;
/** Present when the running kernel's ext4 supports the `encrypt` feature (CONFIG_FS_ENCRYPTION). */
const EXT4_ENCRYPTION_FEATURE = '/sys/fs/ext4/features/encryption';
const HELPER_TIMEOUT_MS = 10_000;

export const ENCRYPTION_FIX =
  "use a kernel built with CONFIG_FS_ENCRYPTION (and ext4), build the helper with 'make -C native', " +
  "or set the engine option workspaceEncryption: 'off' to run with unencrypted workspaces";

/** <repo>/native/build/palisade-fscrypt, found by walking up from this module (src/ or dist/src/). */
export function defaultFscryptHelper(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 6; depth++) {
    const candidate = join(dir, HELPER_RELATIVE);
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  return resolve(dirname(fileURLToPath(import.meta.url)), '../../..', HELPER_RELATIVE);
}

export function encryptionMissing(what: string, cause?: unknown): PalisadeError {
  return new PalisadeError(
    'REQUIREMENT_MISSING',
    `workspace encryption unavailable: ${what}. Fix: ${ENCRYPTION_FIX}`,
    { requirement: 'workspace-encryption' },
    { cause },
  );
}

export interface EncryptionSupport {
  supported: boolean;
  reason: string;
}

/** Cheap static check (no mount): kernel feature flag and helper binary. */
export async function checkEncryptionSupport(
  helper: string = defaultFscryptHelper(),
): Promise<EncryptionSupport> {
  if (!existsSync(EXT4_ENCRYPTION_FEATURE)) {
    return {
      supported: false,
      reason: `the kernel's ext4 has no encryption support (${EXT4_ENCRYPTION_FEATURE} is missing; CONFIG_FS_ENCRYPTION is off)`,
    };
  }
  try {
    await access(helper, fsConstants.X_OK);
  } catch {
    return { supported: false, reason: `the helper ${helper} is missing or not executable` };
  }
  return { supported: true, reason: 'fscrypt v2 (AES-256-XTS contents, AES-256-CTS names)' };
}

export type EncryptionStatus =
  | { encrypted: false }
  | {
      encrypted: true;
      version: 2;
      contents: string;
      filenames: string;
      /** Key identifier (hex); derived from the key by the kernel, reveals nothing about it. */
      identifier: string;
      keyStatus: 'present' | 'absent' | 'incompletely-removed';
    };

async function runHelper(helper: string, command: string, dir: string): Promise<string> {
  const result = await runCommand(helper, [command, dir], { timeoutMs: HELPER_TIMEOUT_MS });
  if (result.spawnError?.code === 'ENOENT' || result.spawnError?.code === 'EACCES') {
    throw encryptionMissing(`the helper ${helper} is missing`, result.spawnError);
  }
  if (result.status === HELPER_EXIT_UNSUPPORTED) {
    throw encryptionMissing(
      `the kernel or filesystem refused fscrypt (${firstLine(result.stderr)})`,
    );
  }
  if (result.status !== 0) {
    throw new PalisadeError(
      'INTERNAL',
      `palisade-fscrypt ${command} failed: ${firstLine(result.stderr) || 'unknown error'}`,
    );
  }
  return result.stdout;
}

/**
 * Gives the empty directory `dir` a fresh random key (made and wiped inside the helper; it
 * never passes through this process) and a v2 encryption policy.
 */
export async function encryptDirectory(helper: string, dir: string): Promise<void> {
  await runHelper(helper, 'setup', dir);
}

export async function readEncryptionStatus(helper: string, dir: string): Promise<EncryptionStatus> {
  return JSON.parse(await runHelper(helper, 'status', dir)) as EncryptionStatus;
}

/** Removes `dir`'s key from its filesystem: from then on its files are ciphertext only. */
export async function removeDirectoryKey(
  helper: string,
  dir: string,
): Promise<{ removed: boolean; filesBusy: boolean }> {
  const out = JSON.parse(await runHelper(helper, 'remove-key', dir)) as {
    removed: boolean;
    filesBusy?: boolean;
  };
  return { removed: out.removed, filesBusy: out.filesBusy === true };
}
