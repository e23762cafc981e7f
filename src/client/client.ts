/** The client: connection settings and the sandbox-level calls. */
import { InvalidArgumentError } from './errors.js';
import { sandboxPath } from './commands.js';
import { Sandbox } from './sandbox.js';
import { Transport } from './transport.js';
import type {
  CreateSandboxOptions,
  ListSandboxesOptions,
  SandboxInfo,
  SandboxPage,
} from './types.js';

export interface ClientOptions {
  /** Server URL. @default $PALISADE_URL, else http://127.0.0.1:7070 */
  baseUrl?: string;
  /** API key (psk_…). @default $PALISADE_API_KEY; one of the two is required */
  apiKey?: string;
  /** Time limit of each HTTP attempt (response and body). @default 60000 ms */
  timeoutMs?: number;
  /** Retries of idempotent calls on 429/503 and connect failures. 0 disables. @default 3 */
  retries?: number;
  /** First backoff ceiling; doubles per retry, full jitter. @default 250 ms */
  retryBaseDelayMs?: number;
  /** Largest backoff ceiling. @default 8000 ms */
  retryMaxDelayMs?: number;
  /** A Retry-After longer than this is not waited for: the error is thrown at once. @default 60000 ms */
  maxRetryAfterMs?: number;
  /** Largest response body read into memory (file reads, JSON). @default 128 MiB */
  maxResponseBytes?: number;
  /**
   * Allow plain http:// to a host that is not loopback (the key would cross the network in
   * clear text). @default false
   */
  allowInsecureHttp?: boolean;
  /** The fetch implementation. @default globalThis.fetch (Node 20's undici) */
  fetch?: typeof fetch;
  /** Where defaults for baseUrl and apiKey come from. @default process.env */
  env?: Record<string, string | undefined>;
}

const DEFAULT_URL = 'http://127.0.0.1:7070';

export class PalisadeClient {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  /** @internal the transport shared by every sandbox object of this client */
  readonly transport: Transport;

  constructor(options: ClientOptions = {}) {
    const env = options.env ?? process.env;
    const apiKey = options.apiKey ?? env.PALISADE_API_KEY;
    if (!apiKey)
      throw new InvalidArgumentError(
        'No API key: pass apiKey or set PALISADE_API_KEY (an administrator creates keys with `palisade keys create`).',
      );
    if (/[\s]/.test(apiKey))
      throw new InvalidArgumentError('The API key contains whitespace; check how it was copied.');
    const baseUrl = normalizeBaseUrl(
      options.baseUrl ?? env.PALISADE_URL ?? DEFAULT_URL,
      options.allowInsecureHttp ?? false,
    );
    const timeoutMs = positive(options.timeoutMs, 60_000, 'timeoutMs');
    this.baseUrl = baseUrl;
    this.timeoutMs = timeoutMs;
    this.transport = new Transport({
      baseUrl,
      apiKey,
      timeoutMs,
      retries: nonNegative(options.retries, 3, 'retries'),
      retryBaseDelayMs: nonNegative(options.retryBaseDelayMs, 250, 'retryBaseDelayMs'),
      retryMaxDelayMs: nonNegative(options.retryMaxDelayMs, 8_000, 'retryMaxDelayMs'),
      maxRetryAfterMs: nonNegative(options.maxRetryAfterMs, 60_000, 'maxRetryAfterMs'),
      maxResponseBytes: positive(options.maxResponseBytes, 128 * 1024 * 1024, 'maxResponseBytes'),
      fetch: options.fetch ?? globalThis.fetch,
      random: Math.random,
    });
  }

  /** Creates a sandbox and returns it once it runs. */
  async createSandbox(options: CreateSandboxOptions = {}): Promise<Sandbox> {
    const { signal, network, policy, ...rest } = options;
    const mergedPolicy = network !== undefined ? { ...policy, network } : policy;
    const { body } = await this.transport.json<SandboxInfo>({
      method: 'POST',
      path: '/v1/sandboxes',
      json: { ...rest, ...(mergedPolicy !== undefined ? { policy: mergedPolicy } : {}) },
      signal,
    });
    return new Sandbox(this, body);
  }

  /** An existing sandbox (fetches its current info; NotFoundError if it is not yours or gone). */
  async connectSandbox(id: string, options: { signal?: AbortSignal } = {}): Promise<Sandbox> {
    return new Sandbox(this, await this.getSandboxInfo(id, options));
  }

  async getSandboxInfo(id: string, options: { signal?: AbortSignal } = {}): Promise<SandboxInfo> {
    return (
      await this.transport.json<SandboxInfo>({
        method: 'GET',
        path: sandboxPath(id),
        signal: options.signal,
      })
    ).body;
  }

  /** A handle on a sandbox by id, without a request (its `info` is undefined until fetched). */
  sandbox(id: string): Sandbox {
    return new Sandbox(this, id);
  }

  /** One page of this tenant's sandboxes. */
  async listSandboxes(options: ListSandboxesOptions = {}): Promise<SandboxPage> {
    const selector = [
      ...Object.entries(options.labels ?? {}).map(([k, v]) => `${k}=${v}`),
      ...(options.labelSelector ? [options.labelSelector] : []),
    ].join(',');
    if (
      options.limit !== undefined &&
      !(Number.isInteger(options.limit) && options.limit >= 1 && options.limit <= 999)
    )
      throw new InvalidArgumentError('limit must be a whole number from 1 to 999.');
    return (
      await this.transport.json<SandboxPage>({
        method: 'GET',
        path: '/v1/sandboxes',
        query: {
          state: options.state,
          labelSelector: selector.length > 0 ? selector : undefined,
          limit: options.limit,
          cursor: options.cursor,
        },
        signal: options.signal,
      })
    ).body;
  }

  /** Every matching sandbox, page by page. */
  async *iterateSandboxes(
    options: Omit<ListSandboxesOptions, 'cursor'> = {},
  ): AsyncGenerator<SandboxInfo> {
    let cursor: string | null = null;
    do {
      const page: SandboxPage = await this.listSandboxes({
        ...options,
        ...(cursor ? { cursor } : {}),
      });
      yield* page.items;
      cursor = page.nextCursor;
    } while (cursor);
  }

  /**
   * Any other API route (admin routes such as /v1/kill, /v1/keys, /v1/audit) with the same
   * authentication, timeouts, retry rules and typed errors. Resolves with the parsed JSON body
   * (undefined for an empty one).
   */
  async request<T = unknown>(spec: {
    method: 'GET' | 'HEAD' | 'PUT' | 'DELETE' | 'POST';
    /** Starts with /v1/ (or /healthz); query parameters go in `query`. */
    path: string;
    query?: Record<string, string | number | boolean | undefined>;
    json?: unknown;
    signal?: AbortSignal;
    timeoutMs?: number;
  }): Promise<T> {
    if (!/^\/(v1\/|healthz$)[A-Za-z0-9._~\-/%]*$/.test(spec.path))
      throw new InvalidArgumentError(
        `path must be an API path such as /v1/kill (no query string; use \`query\`), got ${JSON.stringify(spec.path.slice(0, 100))}.`,
      );
    return (await this.transport.json<T>(spec)).body;
  }

  /** The calling key: id, tenant and scopes. */
  async whoami(
    options: { signal?: AbortSignal } = {},
  ): Promise<{ keyId: string; tenant: string; scopes: string[] }> {
    return (
      await this.transport.json<{ keyId: string; tenant: string; scopes: string[] }>({
        method: 'GET',
        path: '/v1/whoami',
        signal: options.signal,
      })
    ).body;
  }
}

function normalizeBaseUrl(raw: string, allowInsecureHttp: boolean): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new InvalidArgumentError(
      `Invalid server URL ${JSON.stringify(raw)}: use e.g. https://palisade.example.com or ${DEFAULT_URL}.`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new InvalidArgumentError(
      `The server URL must be http:// or https://, not ${url.protocol}`,
    );
  if (url.username || url.password)
    throw new InvalidArgumentError(
      'Do not put credentials in the server URL; use apiKey / PALISADE_API_KEY.',
    );
  if (url.search || url.hash)
    throw new InvalidArgumentError('The server URL must not have a query or fragment.');
  if (url.protocol === 'http:' && !allowInsecureHttp && !isLoopback(url.hostname))
    throw new InvalidArgumentError(
      `Refusing to send the API key in clear text to ${url.host}: use https://, or a loopback address, or set allowInsecureHttp: true if the network path is trusted.`,
    );
  return url.href.replace(/\/+$/, '');
}

function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0)
    throw new InvalidArgumentError(`${name} must be a positive number.`);
  return value;
}

function nonNegative(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 0)
    throw new InvalidArgumentError(`${name} must be a whole number >= 0.`);
  return value;
}
