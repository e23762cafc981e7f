/**
 * Sandbox workspaces with a kernel-enforced disk quota. See docs/sandbox-workspace.md for how
 * the pool works and docs/security/workspace.md for what it defends against.
 */
export {
  openWorkspacePool,
  validateWorkspaceId,
  DEFAULT_POOL_BYTES,
  MIN_WORKSPACE_BYTES,
  MAX_WORKSPACE_BYTES,
  WORKSPACE_SUBDIR,
  type WorkspaceEncryption,
  type WorkspacePool,
  type WorkspacePoolOptions,
  type WorkspaceOwner,
  type WorkspaceQuota,
  type WorkspaceUsage,
} from './pool.js';
export {
  checkEncryptionSupport,
  defaultFscryptHelper,
  readEncryptionStatus,
  removeDirectoryKey,
  type EncryptionStatus,
  type EncryptionSupport,
} from './encryption.js';
export {
  applyDirectoryQuota,
  checkDirectoryQuotaSupport,
  defaultQuotaHelper,
  type DirectoryQuotaSupport,
} from './directory-quota.js';
