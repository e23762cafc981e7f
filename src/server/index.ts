export { startControlPlane, type ControlPlane, type StartOptions } from './server.js';
export { buildApp, API_VERSION, type App, type AppDeps } from './app.js';
export {
  resolveConfig,
  isLoopbackHost,
  DEFAULT_CONFIG,
  type ServerConfig,
  type ServerConfigInput,
  type TlsConfig,
  type QuotaConfig,
  type ExecConfig,
} from './config.js';
export type { ExecPolicy, ExecPolicyDecision } from './policy-hook.js';
export type { SandboxView, CreateSandboxBody, ListFilter } from './sandboxes.js';
export type { ExecView, ExecBody } from './executions.js';
export {
  parseLabelSelector,
  matchesSelector,
  validateLabels,
  validateEnvSyntax,
} from './validate.js';
