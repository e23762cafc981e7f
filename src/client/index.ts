/**
 * Palisade TypeScript SDK (`palisade/client`). No dependencies beyond Node 20.
 *
 *   const sandbox = await Sandbox.create({ labels: { app: 'demo' } });
 *   const r = await sandbox.commands.run('echo hello');
 *   await sandbox.files.write('/workspace/a.txt', 'hi');
 *   await sandbox.kill();
 */
export { PalisadeClient, type ClientOptions } from './client.js';
export { Sandbox, type Connection } from './sandbox.js';
export {
  Commands,
  CommandHandle,
  type OutputCallback,
  type RunOptions,
  type WaitOptions,
} from './commands.js';
export { Files, type FilePath, type ReadOptions, type WriteOptions } from './files.js';
export { Network } from './network.js';
export {
  AbortError,
  AuthenticationError,
  CommandStreamError,
  ConflictError,
  ConnectionError,
  InvalidArgumentError,
  InvalidRequestError,
  NotFoundError,
  PalisadeApiError,
  PalisadeClientError,
  PayloadTooLargeError,
  PermissionDeniedError,
  PolicyDeniedError,
  ProtocolError,
  RateLimitError,
  ServerError,
  TimeoutError,
  type ApiErrorCode,
  type ClientErrorCode,
} from './errors.js';
export type * from './types.js';
