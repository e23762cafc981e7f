/**
 * Errors thrown by the SDK. Server errors keep the server's stable `code`, HTTP `status` and
 * `requestId` (quote it to the operator: the server log has the details under it). Client-side
 * failures (timeout, abort, unreachable server, malformed response) have their own classes so
 * callers can tell "the server said no" from "we never got an answer".
 */
import type { ErrorCode } from '../errors/index.js';

/** A server error code; unknown codes from newer servers pass through as strings. */
export type ApiErrorCode = ErrorCode | (string & NonNullable<unknown>);

export type ClientErrorCode =
  | 'TIMEOUT'
  | 'ABORTED'
  | 'CONNECTION_FAILED'
  | 'BAD_RESPONSE'
  | 'RESPONSE_TOO_LARGE'
  | 'INVALID_ARGUMENT';

/** Base class of every error the SDK throws. */
export class PalisadeClientError extends Error {
  readonly code: ApiErrorCode | ClientErrorCode;
  /** The server's request id, when a response (or stream event) carried one. */
  readonly requestId: string | undefined;

  constructor(
    code: ApiErrorCode | ClientErrorCode,
    message: string,
    requestId?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'PalisadeClientError';
    this.code = code;
    this.requestId = requestId;
  }
}

export interface ApiErrorInit {
  status: number;
  code: ApiErrorCode;
  message: string;
  requestId: string | undefined;
  details?: Record<string, unknown> | undefined;
  /** From Retry-After (429/503), in milliseconds. */
  retryAfterMs?: number | undefined;
  /** How many HTTP attempts were made (more than 1 only for retried idempotent calls). */
  attempts?: number;
}

/** The server answered with an error (`{code, message, requestId}`). */
export class PalisadeApiError extends PalisadeClientError {
  readonly status: number;
  declare readonly code: ApiErrorCode;
  readonly details: Readonly<Record<string, unknown>> | undefined;
  readonly retryAfterMs: number | undefined;
  readonly attempts: number;

  constructor(init: ApiErrorInit) {
    super(init.code, init.message, init.requestId);
    this.name = 'PalisadeApiError';
    this.status = init.status;
    this.details = init.details;
    this.retryAfterMs = init.retryAfterMs;
    this.attempts = init.attempts ?? 1;
  }
}

/** 400/422: the request was invalid (bad argument, path, policy text; edit without a match). */
export class InvalidRequestError extends PalisadeApiError {
  override readonly name = 'InvalidRequestError';
}
/** 401: missing, wrong, expired or revoked API key. */
export class AuthenticationError extends PalisadeApiError {
  override readonly name = 'AuthenticationError';
}
/** 403: the key lacks a scope, a quota is exhausted, or file permissions refuse the operation. */
export class PermissionDeniedError extends PalisadeApiError {
  override readonly name = 'PermissionDeniedError';
}
/** 403 POLICY_DENIED / POLICY_ASK: the permission policy refused the command; the message explains why. */
export class PolicyDeniedError extends PalisadeApiError {
  override readonly name = 'PolicyDeniedError';
}
/** 404: no such sandbox, execution, file or route (or it belongs to another tenant). */
export class NotFoundError extends PalisadeApiError {
  override readonly name = 'NotFoundError';
}
/** 409: the state does not allow it (sandbox not running, file exists, …). */
export class ConflictError extends PalisadeApiError {
  override readonly name = 'ConflictError';
}
/** 413: the request body or file is larger than the server accepts. */
export class PayloadTooLargeError extends PalisadeApiError {
  override readonly name = 'PayloadTooLargeError';
}
/** 429: rate limit or concurrency limit; `retryAfterMs` says when to try again. */
export class RateLimitError extends PalisadeApiError {
  override readonly name = 'RateLimitError';
}
/** 5xx: the server failed or is unavailable; quote `requestId` to the operator. */
export class ServerError extends PalisadeApiError {
  override readonly name = 'ServerError';
}
/**
 * An `event: error` inside a command's event stream: the command started, then failed. The
 * HTTP status was 200, so `status` is the status the same error would have had as a response.
 */
export class CommandStreamError extends PalisadeApiError {
  override readonly name = 'CommandStreamError';
}

/** The request (or one attempt of it) took longer than its timeout. Not retried. */
export class TimeoutError extends PalisadeClientError {
  override readonly name = 'TimeoutError';
  readonly timeoutMs: number;
  constructor(message: string, timeoutMs: number, options?: { cause?: unknown }) {
    super('TIMEOUT', message, undefined, options);
    this.timeoutMs = timeoutMs;
  }
}

/** The caller's AbortSignal fired. */
export class AbortError extends PalisadeClientError {
  override readonly name = 'AbortError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('ABORTED', message, undefined, options);
  }
}

/** No usable connection to the server (refused, DNS failure, reset, stream cut short). */
export class ConnectionError extends PalisadeClientError {
  override readonly name = 'ConnectionError';
  readonly attempts: number;
  constructor(message: string, attempts: number, options?: { cause?: unknown }) {
    super('CONNECTION_FAILED', message, undefined, options);
    this.attempts = attempts;
  }
}

/** The server's answer was not what the API promises (not JSON, malformed stream, too large). */
export class ProtocolError extends PalisadeClientError {
  override readonly name = 'ProtocolError';
  constructor(
    message: string,
    requestId?: string,
    code: 'BAD_RESPONSE' | 'RESPONSE_TOO_LARGE' = 'BAD_RESPONSE',
  ) {
    super(code, message, requestId);
  }
}

/** A bad argument caught before any request was sent. */
export class InvalidArgumentError extends PalisadeClientError {
  override readonly name = 'InvalidArgumentError';
  constructor(message: string) {
    super('INVALID_ARGUMENT', message);
  }
}

const POLICY_CODES = new Set(['POLICY_DENIED', 'POLICY_ASK']);

/** Picks the error class for a server error by its status (and code, for policy denials). */
export function apiError(init: ApiErrorInit): PalisadeApiError {
  const { status, code } = init;
  if (status === 400 || status === 422) return new InvalidRequestError(init);
  if (status === 401) return new AuthenticationError(init);
  if (status === 403)
    return POLICY_CODES.has(code) ? new PolicyDeniedError(init) : new PermissionDeniedError(init);
  if (status === 404) return new NotFoundError(init);
  if (status === 409) return new ConflictError(init);
  if (status === 413) return new PayloadTooLargeError(init);
  if (status === 429) return new RateLimitError(init);
  if (status >= 500) return new ServerError(init);
  return new PalisadeApiError(init);
}
