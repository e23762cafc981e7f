/**
 * The sandbox engine. Callers create a runtime for a backend and use the SandboxRuntime
 * contract (types.ts); backends are interchangeable behind it.
 */
import { BwrapRuntime, type EngineConfig } from './bwrap/runtime.js';
import type { SandboxRuntime } from './types.js';

export type * from './types.js';
export type { EngineConfig, AllowedMount } from './bwrap/runtime.js';
export { normaliseSandboxPath, validateLabels } from './bwrap/runtime.js';
export { validateEnv, BASE_ENV, ENV_LIMITS } from './env.js';
export { DEFAULT_LIMITS, parseSize, parseDuration, resolveLimits } from './limits.js';
export { SANDBOX_ID_PATTERN, assertSandboxId } from './ids.js';
export {
  createSandboxFiles,
  sandboxPathBytes,
  FILES_DEFAULTS,
  type SandboxFiles,
  type SandboxFilesOptions,
  type SandboxPath,
  type FileType,
  type FileInfo,
  type FileEntry,
  type FileStat,
  type SearchMatch,
} from './files.js';
export {
  checkRequirements,
  defaultHelperPath,
  type RequirementCheck,
} from './bwrap/requirements.js';
export {
  checkEncryptionSupport,
  defaultFscryptHelper,
  readEncryptionStatus,
  type EncryptionStatus,
  type EncryptionSupport,
  type WorkspaceEncryption,
} from './workspace/index.js';

/** Starts the engine (bubblewrap backend). Fails closed if the host cannot isolate sandboxes. */
export async function createSandboxRuntime(config: EngineConfig): Promise<SandboxRuntime> {
  return BwrapRuntime.start(config);
}
