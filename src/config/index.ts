/**
 * Operator configuration: `palisade serve --config FILE`, `--environment-file FILE` (only documented
 * PALISADE_* variables), and the policy file watcher behind policy hot-reload.
 */
export {
  applyEnvFile,
  ENV_FILE_VARIABLES,
  loadEnvFile,
  MAX_ENV_FILE_BYTES,
  MAX_ENV_VALUE_BYTES,
  parseEnvFile,
} from './env-file.js';
export {
  configKeys,
  loadServeConfig,
  mergeFlagValues,
  MAX_CONFIG_BYTES,
  parseServeConfig,
  toFlagArgs,
  type FlagSpec,
  type FlagValue,
  type FlagValues,
  type ServeConfigSchema,
} from './serve-config.js';
export {
  PolicyFileWatcher,
  sha256Hex,
  type PolicyFileEvent,
  type PolicyWatchOptions,
} from './policy-watch.js';
export { readOperatorFile, type OperatorFileOptions } from './operator-file.js';
