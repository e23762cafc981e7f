import { isPalisadeError, type ErrorCode } from '../errors/index.js';

export interface ErrorBody {
  code: ErrorCode;
  message: string;
  requestId: string;
  details?: Record<string, unknown>;
}

const STATUS: Partial<Record<ErrorCode, number>> = {
  INVALID_ARGUMENT: 400,
  INVALID_ENV: 400,
  INVALID_LIMIT: 400,
  INVALID_PATH: 400,
  INVALID_POLICY: 400,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  POLICY_DENIED: 403,
  POLICY_ASK: 403,
  KILL_SWITCH_ACTIVE: 403,
  QUOTA_EXCEEDED: 403,
  NOT_FOUND: 404,
  SANDBOX_NOT_FOUND: 404,
  EXEC_NOT_FOUND: 404,
  // The caller's argv or cwd names nothing runnable inside the sandbox: the message (stage and
  // errno text) is written for the caller and holds no host detail.
  EXEC_START_FAILED: 400,
  SANDBOX_NOT_RUNNING: 409,
  CONFLICT: 409,
  PAYLOAD_TOO_LARGE: 413,
  RATE_LIMITED: 429,
  SANDBOX_LIMIT_REACHED: 429,
  EXEC_LIMIT_REACHED: 429,
  REQUIREMENT_MISSING: 503,
};

/**
 * Maps any thrown value to a status and a body safe to send. Only 4xx PalisadeErrors keep
 * their message (they are written for the caller); everything else becomes a generic message
 * pointing at the request id, so stack traces, SQL and host paths stay in the server log.
 */
export function toErrorResponse(
  err: unknown,
  requestId: string,
): { status: number; body: ErrorBody } {
  if (isPalisadeError(err)) {
    const status = STATUS[err.code] ?? 500;
    if (status < 500) {
      const body: ErrorBody = { code: err.code, message: err.message, requestId };
      if (err.details !== undefined) body.details = { ...err.details };
      return { status, body };
    }
    return {
      status,
      body: {
        code: err.code,
        message: `The server could not complete the request (${err.code}). The operator can find details in the server log under request id ${requestId}.`,
        requestId,
      },
    };
  }
  const fastifyErr = err as {
    statusCode?: number;
    code?: string;
    validation?: unknown;
    message?: string;
  };
  if (fastifyErr && typeof fastifyErr === 'object') {
    if (fastifyErr.validation !== undefined) {
      return {
        status: 400,
        body: {
          code: 'INVALID_ARGUMENT',
          message: `Invalid request: ${sanitize(fastifyErr.message ?? '')}.`,
          requestId,
        },
      };
    }
    if (fastifyErr.code === 'FST_ERR_CTP_BODY_TOO_LARGE' || fastifyErr.statusCode === 413) {
      return {
        status: 413,
        body: {
          code: 'PAYLOAD_TOO_LARGE',
          message: 'The request body is larger than the server accepts.',
          requestId,
        },
      };
    }
    if (fastifyErr.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' || fastifyErr.statusCode === 415) {
      return {
        status: 415,
        body: {
          code: 'INVALID_ARGUMENT',
          message: 'Unsupported Content-Type: send application/json.',
          requestId,
        },
      };
    }
    if (
      typeof fastifyErr.statusCode === 'number' &&
      fastifyErr.statusCode >= 400 &&
      fastifyErr.statusCode < 500
    ) {
      const message =
        fastifyErr.code === 'FST_ERR_CTP_EMPTY_JSON_BODY'
          ? 'The request says it has a JSON body but the body is empty.'
          : err instanceof SyntaxError || fastifyErr.code === 'FST_ERR_CTP_INVALID_JSON_BODY'
            ? 'The request body is not valid JSON.'
            : 'The request is malformed.';
      return {
        status: fastifyErr.statusCode,
        body: { code: 'INVALID_ARGUMENT', message, requestId },
      };
    }
  }
  return {
    status: 500,
    body: {
      code: 'INTERNAL',
      message: `Internal error. The operator can find details in the server log under request id ${requestId}.`,
      requestId,
    },
  };
}

/** Validation messages name fields; keep them short and printable. */
function sanitize(message: string): string {
  return message.replace(/[^\x20-\x7e]/g, '?').slice(0, 300);
}
