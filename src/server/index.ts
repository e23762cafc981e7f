export { startControlPlane, type ControlPlane, type StartOptions } from './server.js';
export {
  buildApp,
  API_VERSION,
  type App,
  type AppDeps,
  type AppEgress,
  type EgressOptions,
} from './app.js';
export {
  EgressAuditSink,
  EgressRuleCombiner,
  SandboxNetworks,
  allowRuleCovered,
  type EgressRulesText,
  type NetworkView,
} from './network.js';
export {
  resolveConfig,
  opsConfigFromFlags,
  OPS_FLAG_OPTIONS,
  OPS_FLAGS_USAGE,
  isLoopbackHost,
  DEFAULT_CONFIG,
  type ServerConfig,
  type ServerConfigInput,
  type TlsConfig,
  type QuotaConfig,
  type ExecConfig,
} from './config.js';
export type { ExecPolicy, ExecPolicyDecision } from './policy-hook.js';
export type { SandboxView, CreateSandboxBody, ListFilter, NetworkRulesBody } from './sandboxes.js';
export type { ExecView, ExecBody } from './executions.js';
export {
  parseLabelSelector,
  matchesSelector,
  validateLabels,
  validateEnvSyntax,
} from './validate.js';
