export {
  startSupervisor,
  DEFAULT_SUPERVISOR_LIMITS,
  type Supervisor,
  type SupervisorLimits,
  type SupervisorOptions,
} from './server.js';
export { connectRemoteRuntime, type RemoteRuntime } from './remote-runtime.js';
export { MAX_FRAME_BYTES, DATA_CHUNK_BYTES, parseRequest, LineReader } from './protocol.js';
export {
  DEFAULT_SERVICE_USER,
  dropPrivileges,
  ensureServiceUser,
  lookupUser,
  prepareSeparatedDataDir,
  readWorkerSecrets,
  spawnWorker,
  type SeparatedLayout,
  type ServiceUser,
  type WorkerSecrets,
} from './split.js';
