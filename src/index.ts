export { PalisadeError, isPalisadeError, type ErrorCode } from './errors/index.js';
export type * from './sandbox/types.js';
