/**
 * Every error a user can hit is a PalisadeError with a stable `code` (for machines) and a
 * message that says what went wrong and what to do (for people). `details` carries
 * structured, non-secret context; it must never contain stack traces, SQL or host paths
 * that a remote caller should not see.
 */
export type ErrorCode =
  // input validation
  | 'INVALID_ARGUMENT'
  | 'INVALID_ENV'
  | 'INVALID_LIMIT'
  | 'INVALID_PATH'
  | 'INVALID_POLICY'
  | 'INVALID_CONFIG'
  // sandbox lifecycle
  | 'SANDBOX_NOT_FOUND'
  | 'SANDBOX_NOT_RUNNING'
  | 'SANDBOX_CREATE_FAILED'
  | 'SANDBOX_LIMIT_REACHED'
  | 'EXEC_NOT_FOUND'
  | 'EXEC_FAILED'
  | 'EXEC_START_FAILED'
  | 'EXEC_LIMIT_REACHED'
  // sandbox files API
  | 'FILE_NOT_FOUND'
  | 'FILE_EXISTS'
  | 'FILE_TOO_LARGE'
  | 'FILE_PERMISSION_DENIED'
  | 'FILE_NOT_A_DIRECTORY'
  | 'FILE_IS_A_DIRECTORY'
  | 'FILE_DIRECTORY_NOT_EMPTY'
  | 'FILE_CHANGED'
  | 'FILE_NO_SPACE'
  | 'FILE_OPERATION_FAILED'
  | 'EDIT_NO_MATCH'
  | 'EDIT_NOT_UNIQUE'
  | 'RANGE_NOT_SATISFIABLE'
  // host requirements (fail closed)
  | 'REQUIREMENT_MISSING'
  // policy
  | 'POLICY_DENIED'
  | 'POLICY_ASK'
  | 'KILL_SWITCH_ACTIVE'
  // control plane (API server, auth, audit)
  | 'UNAUTHENTICATED'
  | 'FORBIDDEN'
  | 'NOT_FOUND'
  | 'RATE_LIMITED'
  | 'QUOTA_EXCEEDED'
  | 'PAYLOAD_TOO_LARGE'
  | 'AUDIT_CHAIN_BROKEN'
  // generic
  | 'CONFLICT'
  | 'INTERNAL';

export class PalisadeError extends Error {
  readonly code: ErrorCode;
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    details?: Record<string, unknown>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'PalisadeError';
    this.code = code;
    this.details = details;
  }

  toJSON(): { code: ErrorCode; message: string; details?: Readonly<Record<string, unknown>> } {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

export function isPalisadeError(err: unknown, code?: ErrorCode): err is PalisadeError {
  return err instanceof PalisadeError && (code === undefined || err.code === code);
}
