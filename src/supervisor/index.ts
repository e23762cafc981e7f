export {
  startSupervisor,
  DEFAULT_SUPERVISOR_LIMITS,
  type Supervisor,
  type SupervisorEgressOptions,
  type SupervisorLimits,
  type SupervisorOptions,
} from './server.js';
export { connectRemoteRuntime, type RemoteRuntime } from './remote-runtime.js';
export type { RemoteEgressOptions } from './remote-egress.js';
export {
  MAX_FRAME_BYTES,
  MAX_WIRE_EGRESS_RULES,
  DATA_CHUNK_BYTES,
  parseRequest,
  LineReader,
} from './protocol.js';
export {
  DEFAULT_SERVICE_USER,
  dropPrivileges,
  ensureServiceUser,
  lookupUser,
  prepareSeparatedDataDir,
  readWorkerSecrets,
  sendWorkerMessage,
  spawnWorker,
  type SeparatedLayout,
  type ServiceUser,
  type WorkerMessage,
  type WorkerSecrets,
} from './split.js';
