/**
 * Public API of the policy engine. Other components import only from here.
 */
export type {
  Action,
  Decision,
  DecisionResult,
  DangerousRuleInput,
  FileTool,
  LayerName,
  MatchedRule,
  PermissionRule,
  Permissions,
  PolicyEngine,
  PolicyEngineOptions,
  PolicyLayer,
  PolicyLimits,
  RuleTool,
  SubcommandResult,
} from './types.js';
export { createPolicyEngine, DEFAULT_LIMITS } from './engine.js';
export { loadPolicyFile, parsePolicy, parsePolicyObject, MAX_POLICY_BYTES } from './policy-file.js';
export { parseRule } from './rules.js';
export { canonicalPath } from './paths.js';
export * from './network/index.js';
