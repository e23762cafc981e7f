/**
 * HTTP transport: authentication, per-attempt timeouts, AbortSignal, bounded body reads and
 * retries. Retries are deliberately narrow: only idempotent methods (GET, HEAD, PUT, DELETE),
 * only on 429/503 (honouring Retry-After) and on connection failures that happen before a
 * request can have reached the server (refused, DNS, unreachable). A POST (create, exec,
 * pause, …) is never retried: the server may already have acted on it.
 */
import {
  AbortError,
  ConnectionError,
  InvalidArgumentError,
  PalisadeClientError,
  ProtocolError,
  TimeoutError,
  apiError,
  type PalisadeApiError,
} from './errors.js';

export type HttpMethod = 'GET' | 'HEAD' | 'PUT' | 'DELETE' | 'POST';

const IDEMPOTENT: ReadonlySet<HttpMethod> = new Set(['GET', 'HEAD', 'PUT', 'DELETE']);
const RETRY_STATUSES: ReadonlySet<number> = new Set([429, 503]);
/** Failures of the connect phase: nothing was sent, so an idempotent retry is certainly safe. */
const CONNECT_ERRORS: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
]);
/** Error bodies are small JSON documents; anything longer is cut. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

export interface TransportOptions {
  baseUrl: string;
  apiKey: string;
  timeoutMs: number;
  retries: number;
  retryBaseDelayMs: number;
  retryMaxDelayMs: number;
  maxRetryAfterMs: number;
  maxResponseBytes: number;
  fetch: typeof fetch;
  /** Source of randomness for jitter, in [0, 1). */
  random: () => number;
}

export interface RequestSpec {
  method: HttpMethod;
  /** Path under the base URL, starting with /v1/… (segments already encoded). */
  path: string;
  /** Strings are URL-encoded as UTF-8; a Uint8Array is sent percent-encoded byte for byte. */
  query?: Record<string, string | number | boolean | Uint8Array | undefined>;
  json?: unknown;
  body?: Uint8Array;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  /** Per-attempt time limit (headers and the whole body). @default the client's timeoutMs */
  timeoutMs?: number | undefined;
}

export interface JsonResult<T> {
  body: T;
  status: number;
  headers: Headers;
}

export interface BytesResult {
  data: Uint8Array;
  status: number;
  headers: Headers;
}

/** The body consumer runs inside the attempt's deadline and abort scope. */
export type Consumer<R> = (response: Response, signal: AbortSignal) => Promise<R>;

export class Transport {
  readonly #options: TransportOptions;

  constructor(options: TransportOptions) {
    this.#options = options;
  }

  get baseUrl(): string {
    return this.#options.baseUrl;
  }

  get maxResponseBytes(): number {
    return this.#options.maxResponseBytes;
  }

  async json<T>(spec: RequestSpec): Promise<JsonResult<T>> {
    return this.send(spec, async (res, signal) => {
      const data = await readBounded(res, this.#options.maxResponseBytes, signal);
      const requestId = res.headers.get('x-request-id') ?? undefined;
      if (data.byteLength === 0)
        return { body: undefined as T, status: res.status, headers: res.headers };
      try {
        const body = JSON.parse(new TextDecoder().decode(data)) as T;
        return { body, status: res.status, headers: res.headers };
      } catch {
        throw new ProtocolError(
          `The server's answer to ${spec.method} ${spec.path} is not JSON (HTTP ${res.status}).`,
          requestId,
        );
      }
    });
  }

  async bytes(spec: RequestSpec, maxBytes = this.#options.maxResponseBytes): Promise<BytesResult> {
    return this.send(spec, async (res, signal) => ({
      data: await readBounded(res, maxBytes, signal),
      status: res.status,
      headers: res.headers,
    }));
  }

  /**
   * Sends the request (retrying where safe) and hands a successful response to `consume`.
   * Errors thrown while consuming are never retried.
   */
  async send<R>(spec: RequestSpec, consume: Consumer<R>): Promise<R> {
    const o = this.#options;
    const url = this.#url(spec);
    const retryable = IDEMPOTENT.has(spec.method);
    const timeoutMs = spec.timeoutMs ?? o.timeoutMs;
    const headers: Record<string, string> = {
      authorization: `Bearer ${o.apiKey}`,
      accept: 'application/json',
      ...spec.headers,
    };
    let body: string | Uint8Array | undefined;
    if (spec.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(spec.json);
    } else if (spec.body !== undefined) {
      headers['content-type'] = 'application/octet-stream';
      body = spec.body;
    }
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(spec.signal);
      const scope = new AttemptScope(spec.signal, timeoutMs);
      let response: Response;
      try {
        response = await o.fetch(url, {
          method: spec.method,
          headers,
          // The API never redirects; following one could hand the key to another origin.
          redirect: 'error',
          signal: scope.signal,
          ...(body !== undefined ? { body } : {}),
        });
      } catch (err) {
        scope.dispose();
        const mapped = scope.mapError(err, spec, timeoutMs);
        if (mapped) throw mapped;
        const code = connectErrorCode(err);
        if (retryable && code !== undefined && CONNECT_ERRORS.has(code) && attempt <= o.retries) {
          await sleep(this.#backoff(attempt, undefined) ?? 0, spec.signal);
          continue;
        }
        throw new ConnectionError(
          `Cannot reach the Palisade API at ${o.baseUrl} (${code ?? describe(err)}) after ${attempt} attempt${attempt === 1 ? '' : 's'}; is the server running? Check PALISADE_URL.`,
          attempt,
          { cause: err },
        );
      }
      if (!response.ok) {
        let error: PalisadeApiError;
        try {
          error = await this.#errorFrom(response, scope.signal, attempt);
        } catch (err) {
          scope.dispose();
          throw scope.mapError(err, spec, timeoutMs) ?? err;
        }
        scope.dispose();
        if (retryable && RETRY_STATUSES.has(response.status) && attempt <= o.retries) {
          const wait = this.#backoff(attempt, error.retryAfterMs);
          if (wait !== undefined) {
            await sleep(wait, spec.signal);
            continue;
          }
        }
        throw error;
      }
      try {
        return await consume(response, scope.signal);
      } catch (err) {
        throw scope.mapError(err, spec, timeoutMs) ?? mapBodyError(err, o.baseUrl, attempt);
      } finally {
        scope.dispose();
        // Unread bodies hold the connection; release it.
        if (!response.bodyUsed) await response.body?.cancel().catch(() => undefined);
      }
    }
  }

  /**
   * Full-jitter exponential backoff; a Retry-After from the server wins. Undefined: the server
   * asked for a longer wait than `maxRetryAfterMs`, so give up now rather than hang.
   */
  #backoff(attempt: number, retryAfterMs: number | undefined): number | undefined {
    const o = this.#options;
    if (retryAfterMs !== undefined)
      return retryAfterMs <= o.maxRetryAfterMs ? retryAfterMs : undefined;
    const ceiling = Math.min(o.retryMaxDelayMs, o.retryBaseDelayMs * 2 ** (attempt - 1));
    return Math.floor(o.random() * ceiling);
  }

  async #errorFrom(
    res: Response,
    signal: AbortSignal,
    attempts: number,
  ): Promise<PalisadeApiError> {
    const headerId = res.headers.get('x-request-id') ?? undefined;
    const retryAfterMs = parseRetryAfter(res.headers.get('retry-after'));
    let parsed: { code?: unknown; message?: unknown; requestId?: unknown; details?: unknown } = {};
    try {
      const data = await readBounded(res, MAX_ERROR_BODY_BYTES, signal, true);
      parsed = JSON.parse(new TextDecoder().decode(data)) as typeof parsed;
      if (parsed === null || typeof parsed !== 'object') parsed = {};
    } catch (err) {
      if (signal.aborted) throw err;
      parsed = {};
    }
    const code = typeof parsed.code === 'string' ? parsed.code : fallbackCode(res.status);
    const message =
      typeof parsed.message === 'string'
        ? parsed.message
        : `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''} from ${this.#options.baseUrl}.`;
    return apiError({
      status: res.status,
      code,
      message,
      requestId: typeof parsed.requestId === 'string' ? parsed.requestId : headerId,
      details:
        parsed.details !== null && typeof parsed.details === 'object'
          ? (parsed.details as Record<string, unknown>)
          : undefined,
      retryAfterMs,
      attempts,
    });
  }

  #url(spec: RequestSpec): string {
    let url = this.#options.baseUrl + spec.path;
    if (spec.query) {
      const q = new URLSearchParams();
      const raw: string[] = [];
      for (const [k, v] of Object.entries(spec.query)) {
        if (v instanceof Uint8Array) raw.push(`${encodeURIComponent(k)}=${percentEncodeBytes(v)}`);
        else if (v !== undefined) q.set(k, String(v));
      }
      const text = [q.toString(), ...raw].filter((part) => part.length > 0).join('&');
      if (text.length > 0) url += `?${text}`;
    }
    return url;
  }
}

/** One attempt's abort scope: the caller's signal plus the attempt's deadline. */
class AttemptScope {
  readonly #controller = new AbortController();
  readonly #timer: NodeJS.Timeout;
  readonly #outer: AbortSignal | undefined;
  readonly #onOuterAbort = () => this.#controller.abort(this.#outer?.reason);
  timedOut = false;

  constructor(outer: AbortSignal | undefined, timeoutMs: number) {
    this.#outer = outer;
    outer?.addEventListener('abort', this.#onOuterAbort, { once: true });
    this.#timer = setTimeout(() => {
      this.timedOut = true;
      this.#controller.abort(new Error('timeout'));
    }, timeoutMs);
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  dispose(): void {
    clearTimeout(this.#timer);
    this.#outer?.removeEventListener('abort', this.#onOuterAbort);
  }

  /** Turns a failure caused by this scope into AbortError/TimeoutError; else undefined. */
  mapError(err: unknown, spec: RequestSpec, timeoutMs: number): Error | undefined {
    if (err instanceof AbortError || err instanceof TimeoutError) return err;
    if (this.#outer?.aborted)
      return new AbortError(`${spec.method} ${spec.path} was aborted by the caller.`, {
        cause: this.#outer.reason,
      });
    if (this.timedOut)
      return new TimeoutError(
        `${spec.method} ${spec.path} did not complete within ${timeoutMs} ms; raise timeoutMs if the operation is expected to take longer.`,
        timeoutMs,
        { cause: err },
      );
    return undefined;
  }
}

function mapBodyError(err: unknown, baseUrl: string, attempts: number): unknown {
  if (err instanceof PalisadeClientError) return err;
  if (err instanceof TypeError || connectErrorCode(err) !== undefined)
    return new ConnectionError(
      `The connection to ${baseUrl} broke while reading the response (${describe(err)}).`,
      attempts,
      { cause: err },
    );
  return err;
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted)
    throw new AbortError('The operation was aborted by the caller.', { cause: signal.reason });
}

/** Node's fetch wraps socket errors: TypeError('fetch failed', {cause: {code}}). */
function connectErrorCode(err: unknown): string | undefined {
  const seen = new Set<unknown>();
  let current: unknown = err;
  while (current !== null && typeof current === 'object' && !seen.has(current)) {
    seen.add(current);
    const c = current as { code?: unknown; cause?: unknown; errors?: unknown };
    if (typeof c.code === 'string' && c.code !== 'ABORT_ERR') return c.code;
    if (Array.isArray(c.errors) && c.errors.length > 0) current = c.errors[0];
    else current = c.cause;
  }
  return undefined;
}

function describe(err: unknown): string {
  const cause = (err as { cause?: unknown })?.cause;
  const text =
    cause instanceof Error ? cause.message : err instanceof Error ? err.message : String(err);
  return text.slice(0, 200);
}

function fallbackCode(status: number): string {
  if (status === 429) return 'RATE_LIMITED';
  if (status === 401) return 'UNAUTHENTICATED';
  if (status === 403) return 'FORBIDDEN';
  if (status === 404) return 'NOT_FOUND';
  if (status === 413) return 'PAYLOAD_TOO_LARGE';
  if (status >= 500) return status === 503 ? 'UNAVAILABLE' : 'INTERNAL';
  return 'HTTP_ERROR';
}

/** Retry-After is seconds or an HTTP date; returns milliseconds (never negative). */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  if (/^\d{1,9}$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - now);
}

/** Reads a body up to `limit` bytes; more is an error (or, with `truncate`, cut off). */
export async function readBounded(
  res: Response,
  limit: number,
  signal: AbortSignal,
  truncate = false,
): Promise<Uint8Array> {
  if (!res.body) return new Uint8Array(0);
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (!truncate && Number.isFinite(declared) && declared > limit) {
    await res.body.cancel().catch(() => undefined);
    throw tooLarge(res, limit);
  }
  const parts: Uint8Array[] = [];
  let total = 0;
  const reader = res.body.getReader();
  try {
    for (;;) {
      if (signal.aborted) throw signal.reason;
      const { done, value } = await reader.read();
      if (done) break;
      if (total + value.byteLength > limit) {
        if (!truncate) throw tooLarge(res, limit);
        parts.push(value.subarray(0, limit - total));
        total = limit;
        break;
      }
      parts.push(value);
      total += value.byteLength;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  return concat(parts, total);
}

function tooLarge(res: Response, limit: number): ProtocolError {
  return new ProtocolError(
    `The server's response is larger than the client's limit of ${limit} bytes (maxResponseBytes).`,
    res.headers.get('x-request-id') ?? undefined,
    'RESPONSE_TOO_LARGE',
  );
}

export function concat(parts: Uint8Array[], total?: number): Uint8Array {
  const size = total ?? parts.reduce((n, p) => n + p.byteLength, 0);
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/** Waits `ms`, or rejects with AbortError as soon as the caller aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new AbortError('The operation was aborted by the caller.', { cause: signal.reason }));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(new AbortError('The operation was aborted by the caller.', { cause: signal?.reason }));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

const UNRESERVED = /[A-Za-z0-9\-._~]/;

/** Every byte that is not an unreserved ASCII character becomes %XX (exact bytes, no UTF-8). */
export function percentEncodeBytes(bytes: Uint8Array): string {
  let out = '';
  for (const b of bytes) {
    const c = String.fromCharCode(b);
    out += b < 0x80 && UNRESERVED.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

export function assertArgument(condition: boolean, message: string): asserts condition {
  if (!condition) throw new InvalidArgumentError(message);
}
