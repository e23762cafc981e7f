export {
  KeyStore,
  KEY_PREFIX,
  isValidKeyId,
  randomBase32,
  type ApiKeyInfo,
  type Principal,
  type CreateKeyOptions,
} from './keys.js';
export { SCOPES, hasScope, isScope, isValidTenant, type Scope } from './scopes.js';
export {
  RateLimiter,
  FailedAuthThrottle,
  DEFAULT_KEY_LIMITS,
  DEFAULT_GLOBAL_LIMITS,
  type RateCategory,
  type RateLimitConfig,
  type BucketSpec,
  type RateDecision,
  type AuthThrottleOptions,
} from './limits.js';
export { LruMap } from './lru.js';
export {
  MCP_TOOLS,
  READ_ONLY_TOOLS,
  TOOL_ACCESS,
  isMcpToolName,
  normaliseRestrictions,
  restrictionError,
  toolsAllowed,
  type KeyRestrictions,
  type McpToolName,
} from './restrictions.js';
