import { isIP } from 'node:net';
import { PalisadeError, isPalisadeError } from '../errors/index.js';
import { parseDuration } from '../sandbox/index.js';
import type { AuthThrottleOptions, RateLimitConfig } from '../auth/index.js';
import { DEFAULT_APPROVALS_CONFIG, type ApprovalsConfig } from './approvals.js';
import { DEFAULT_WS_CONFIG, type WsConfig } from './ws.js';

export interface TlsConfig {
  /** PEM certificate chain. */
  cert: string | Buffer;
  /** PEM private key. */
  key: string | Buffer;
}

export interface QuotaConfig {
  /** Live (pending, running, paused) sandboxes per tenant. @default 20 */
  maxLiveSandboxes: number;
  /** Sum of live sandboxes' memory limits per tenant. @default 8 GiB */
  maxTotalMemoryBytes: number;
}

export interface ExecConfig {
  /** Default and maximum bytes of stdout and of stderr kept per exec. @default 1 MiB / 4 MiB */
  defaultMaxOutputBytes: number;
  maxOutputBytes: number;
  /** Default and maximum exec timeout. @default 30 s / 1 h */
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  /** Background execution records kept in memory (oldest finished evicted first). @default 1000 */
  maxExecRecords: number;
  /** Running background execs per sandbox. @default 16 */
  maxRunningPerSandbox: number;
  /** Log bytes kept per background exec (oldest chunks dropped; readers see the gap). @default 1 MiB */
  maxLogBytesPerExec: number;
  /**
   * Commands running at once per tenant (foreground and background, every sandbox); more is 429
   * EXEC_LIMIT_REACHED. Well below what the whole server can run: in privilege-separated mode
   * the supervisor connection runs at most 64 commands for all tenants together. @default 16
   */
  maxRunningPerTenant: number;
  /** Commands running at once per API key (so one agent cannot use its tenant's share). @default 12 */
  maxRunningPerKey: number;
  /** Streamed execs (Accept: text/event-stream) open at once per API key. @default 8 */
  maxStreamsPerKey: number;
}

/** Bounds of the files API (`src/server/routes-files.ts`). */
export interface FilesConfig {
  /** Largest download: a whole file, or one Range. More is 413 FILE_TOO_LARGE. @default 64 MiB */
  maxReadBytes: number;
  /** Largest upload (PUT body). More is 413 FILE_TOO_LARGE. @default 64 MiB */
  maxWriteBytes: number;
  /** Largest file an edit may rewrite (and largest oldText/newText). @default 16 MiB */
  maxEditBytes: number;
  /** Most entries one list returns (then `truncated`). At most 50 000. @default 10 000 */
  maxListEntries: number;
  /** Most matches one search may return (the caller may ask for fewer). At most 100 000. @default 10 000 */
  maxSearchResults: number;
}

export interface ServerConfig {
  /** @default 127.0.0.1 */
  host: string;
  /** @default 7070; 0 picks a free port */
  port: number;
  dataDir: string;
  tls?: TlsConfig;
  /** The operator states that a TLS-terminating proxy is in front (allows non-loopback plain HTTP). */
  behindTlsProxy: boolean;
  /** Exact origins (scheme://host[:port]) allowed by CORS. Empty: CORS off. */
  corsOrigins: string[];
  /** Largest accepted request body. @default 1 MiB */
  bodyLimitBytes: number;
  /** Open client connections; more are refused by the socket layer. @default 1024 */
  maxConnections: number;
  rateLimits: { perKey?: RateLimitConfig; global?: RateLimitConfig };
  authThrottle: AuthThrottleOptions;
  quotas: QuotaConfig;
  exec: ExecConfig;
  files: FilesConfig;
  /** Human approvals for policy "ask" (`src/server/approvals.ts`). */
  approvals: ApprovalsConfig;
  /** WebSocket streams at /v1/ws (`src/server/ws.ts`). */
  ws: WsConfig;
  /** Sandbox lifetime when the caller gives none, and the maximum. @default 1 h / 7 days */
  defaultSandboxTimeoutMs: number;
  maxSandboxTimeoutMs: number;
  /** How long terminated sandboxes' records are kept. @default 7 days */
  retentionMs: number;
  /** How often expiry and retention are checked. @default 1 s */
  reaperIntervalMs: number;
  /**
   * Circuit breaker: a sandbox refused (policy denials plus egress refusals) more than this many
   * times within `breakerWindowMs` is frozen and flagged for a human. @default 20
   */
  breakerThreshold: number;
  /** @default 60 000 ms */
  breakerWindowMs: number;
  /**
   * Let clients connecting from loopback read /metrics without a key. Off by default: any local
   * user or process could otherwise read them. @default false
   */
  metricsLoopback: boolean;
  /** pino level; 'silent' disables logs. @default info */
  logLevel: string;
  /** Where logs go. @default stderr (stdout is kept for the admin key line) */
  logStream?: NodeJS.WritableStream;
}

export const DEFAULT_CONFIG: Omit<ServerConfig, 'dataDir'> = {
  host: '127.0.0.1',
  port: 7070,
  behindTlsProxy: false,
  corsOrigins: [],
  bodyLimitBytes: 1024 * 1024,
  maxConnections: 1024,
  rateLimits: {},
  authThrottle: {},
  quotas: { maxLiveSandboxes: 20, maxTotalMemoryBytes: 8 * 1024 ** 3 },
  exec: {
    defaultMaxOutputBytes: 1024 * 1024,
    maxOutputBytes: 4 * 1024 * 1024,
    defaultTimeoutMs: 30_000,
    maxTimeoutMs: 3_600_000,
    maxExecRecords: 1000,
    maxRunningPerSandbox: 16,
    maxLogBytesPerExec: 1024 * 1024,
    maxRunningPerTenant: 16,
    maxRunningPerKey: 12,
    maxStreamsPerKey: 8,
  },
  files: {
    maxReadBytes: 64 * 1024 * 1024,
    maxWriteBytes: 64 * 1024 * 1024,
    maxEditBytes: 16 * 1024 * 1024,
    maxListEntries: 10_000,
    maxSearchResults: 10_000,
  },
  approvals: DEFAULT_APPROVALS_CONFIG,
  ws: DEFAULT_WS_CONFIG,
  defaultSandboxTimeoutMs: 3_600_000,
  maxSandboxTimeoutMs: 7 * 24 * 3_600_000,
  retentionMs: 7 * 24 * 3_600_000,
  reaperIntervalMs: 1000,
  breakerThreshold: 20,
  breakerWindowMs: 60_000,
  metricsLoopback: false,
  logLevel: 'info',
};

export type ServerConfigInput = Partial<
  Omit<ServerConfig, 'quotas' | 'exec' | 'files' | 'approvals' | 'ws'>
> & {
  approvals?: Partial<ApprovalsConfig>;
  ws?: Partial<WsConfig>;
  dataDir: string;
  quotas?: Partial<QuotaConfig>;
  exec?: Partial<ExecConfig>;
  files?: Partial<FilesConfig>;
};

export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  return isIP(host) === 4 && host.startsWith('127.');
}

const ORIGIN_RE =
  /^https?:\/\/[A-Za-z0-9.-]+(:\d{1,5})?$|^https?:\/\/\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/;

/** Fills defaults and refuses insecure combinations (fail closed, with the fix in the message). */
export function resolveConfig(input: ServerConfigInput): ServerConfig {
  const config: ServerConfig = {
    ...DEFAULT_CONFIG,
    ...input,
    quotas: { ...DEFAULT_CONFIG.quotas, ...input.quotas },
    exec: { ...DEFAULT_CONFIG.exec, ...input.exec },
    files: { ...DEFAULT_CONFIG.files, ...input.files },
    approvals: { ...DEFAULT_CONFIG.approvals, ...input.approvals },
    ws: { ...DEFAULT_CONFIG.ws, ...input.ws },
  };
  for (const [name, value] of [
    ...(['maxRunningPerTenant', 'maxRunningPerKey', 'maxStreamsPerKey'] as const).map(
      (k) => [`exec.${k}`, config.exec[k]] as const,
    ),
    ...Object.entries(config.approvals).map(([k, v]) => [`approvals.${k}`, v] as const),
    ...Object.entries(config.ws).map(([k, v]) => [`ws.${k}`, v] as const),
  ]) {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new PalisadeError('INVALID_ARGUMENT', `${name} must be a positive whole number.`);
    }
  }
  if (!isLoopbackHost(config.host) && !config.tls && !config.behindTlsProxy) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `Refusing to serve plain HTTP on ${config.host}: API keys would cross the network in clear text. ` +
        'Give a TLS certificate and key (--tls-cert, --tls-key), or state that a TLS-terminating proxy is in front (--behind-tls-proxy), or bind 127.0.0.1.',
    );
  }
  if (config.tls && (!config.tls.cert || !config.tls.key)) {
    throw new PalisadeError('INVALID_ARGUMENT', 'TLS needs both a certificate and a key.');
  }
  for (const origin of config.corsOrigins) {
    if (origin === '*' || !ORIGIN_RE.test(origin)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `Invalid CORS origin ${JSON.stringify(origin)}: list exact origins such as https://app.example.com; '*' is never allowed.`,
      );
    }
  }
  if (!Number.isInteger(config.port) || config.port < 0 || config.port > 65535) {
    throw new PalisadeError('INVALID_ARGUMENT', `Invalid port ${config.port}: use 0-65535.`);
  }
  if (
    !Number.isSafeInteger(config.breakerThreshold) ||
    config.breakerThreshold < 1 ||
    config.breakerThreshold > MAX_BREAKER_THRESHOLD
  ) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `breakerThreshold (--breaker-threshold) must be a whole number from 1 to ${MAX_BREAKER_THRESHOLD} (refusals per window before a sandbox is frozen).`,
    );
  }
  if (
    !Number.isSafeInteger(config.breakerWindowMs) ||
    config.breakerWindowMs < 1000 ||
    config.breakerWindowMs > MAX_BREAKER_WINDOW_MS
  ) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'breakerWindowMs (--breaker-window) must be a whole number of milliseconds from 1000 (1 s) to 3600000 (1 h).',
    );
  }
  if (typeof config.metricsLoopback !== 'boolean') {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'metricsLoopback must be true or false (--metrics-access loopback or key).',
    );
  }
  if (!Number.isInteger(config.bodyLimitBytes) || config.bodyLimitBytes < 1024) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'The body limit must be an integer of at least 1024 bytes.',
    );
  }
  const fileBounds: Array<[keyof FilesConfig, number]> = [
    ['maxReadBytes', Number.MAX_SAFE_INTEGER],
    ['maxWriteBytes', Number.MAX_SAFE_INTEGER],
    ['maxEditBytes', Number.MAX_SAFE_INTEGER],
    ['maxListEntries', 50_000],
    ['maxSearchResults', 100_000],
  ];
  for (const [name, max] of fileBounds) {
    const value = config.files[name];
    if (!Number.isInteger(value) || value < 1 || value > max) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `files.${name} must be a whole number between 1 and ${max}.`,
      );
    }
  }
  return config;
}

/**
 * Each tracked sandbox keeps up to threshold + 1 timestamps and 4096 are tracked: this keeps the
 * breaker's memory bounded (about 33 MB at worst).
 */
export const MAX_BREAKER_THRESHOLD = 1000;
export const MAX_BREAKER_WINDOW_MS = 3_600_000;

/** `palisade serve` flags for the circuit breaker and /metrics access (parseArgs options). */
export const OPS_FLAG_OPTIONS = {
  'breaker-threshold': { type: 'string' },
  'breaker-window': { type: 'string' },
  'metrics-access': { type: 'string' },
  'exec-max-running-per-tenant': { type: 'string' },
  'exec-max-running-per-key': { type: 'string' },
  'exec-max-streams-per-key': { type: 'string' },
} as const;

/** The exec concurrency flags and the `exec` settings they set. */
const EXEC_LIMIT_FLAGS = [
  ['exec-max-running-per-tenant', 'maxRunningPerTenant'],
  ['exec-max-running-per-key', 'maxRunningPerKey'],
  ['exec-max-streams-per-key', 'maxStreamsPerKey'],
] as const;

export const OPS_FLAGS_USAGE = `  --breaker-threshold N  freeze a sandbox after more than N policy denials or egress refusals
                         within the breaker window (1-${MAX_BREAKER_THRESHOLD}; default ${DEFAULT_CONFIG.breakerThreshold})
  --breaker-window DURATION   the breaker's sliding window, e.g. 60s, 5m (1s-1h; default 60s)
  --metrics-access key|loopback   who may read /metrics: key = a key with metrics:read (default);
                         loopback = also loopback clients without a key
  --exec-max-running-per-tenant N   commands running at once per tenant (default ${DEFAULT_CONFIG.exec.maxRunningPerTenant})
  --exec-max-running-per-key N      commands running at once per API key (default ${DEFAULT_CONFIG.exec.maxRunningPerKey})
  --exec-max-streams-per-key N      streamed (SSE) execs open at once per API key (default ${DEFAULT_CONFIG.exec.maxStreamsPerKey})
`;

export interface OpsFlagValues {
  'breaker-threshold'?: string | undefined;
  'breaker-window'?: string | undefined;
  'metrics-access'?: string | undefined;
  'exec-max-running-per-tenant'?: string | undefined;
  'exec-max-running-per-key'?: string | undefined;
  'exec-max-streams-per-key'?: string | undefined;
}

type OpsConfig = Pick<
  ServerConfigInput,
  'breakerThreshold' | 'breakerWindowMs' | 'metricsLoopback' | 'exec'
>;

/** The server settings the ops flags give; validated again (with the bounds) by resolveConfig. */
export function opsConfigFromFlags(values: OpsFlagValues): OpsConfig {
  const out: OpsConfig = {};
  const threshold = values['breaker-threshold'];
  if (threshold !== undefined) {
    if (!/^\d{1,9}$/.test(threshold)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `--breaker-threshold must be a whole number from 1 to ${MAX_BREAKER_THRESHOLD}, not ${JSON.stringify(threshold.slice(0, 40))}.`,
      );
    }
    out.breakerThreshold = Number(threshold);
  }
  const window = values['breaker-window'];
  if (window !== undefined) {
    try {
      out.breakerWindowMs = parseDuration(window.slice(0, 40), '--breaker-window');
    } catch (err) {
      if (!isPalisadeError(err)) throw err;
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `--breaker-window must be a duration from 1s to 1h such as 60s or 5m, not ${JSON.stringify(window.slice(0, 40))}.`,
      );
    }
  }
  const access = values['metrics-access'];
  if (access !== undefined) {
    if (access !== 'key' && access !== 'loopback') {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `--metrics-access must be "key" (a key with metrics:read) or "loopback" (also loopback clients without a key), not ${JSON.stringify(access.slice(0, 40))}.`,
      );
    }
    out.metricsLoopback = access === 'loopback';
  }
  for (const [flag, key] of EXEC_LIMIT_FLAGS) {
    const value = values[flag];
    if (value === undefined) continue;
    if (!/^[1-9]\d{0,5}$/.test(value)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `--${flag} must be a whole number of at least 1, not ${JSON.stringify(value.slice(0, 40))}.`,
      );
    }
    out.exec = { ...out.exec, [key]: Number(value) };
  }
  // Range errors name the flag too; checking here fails before the server starts anything.
  resolveConfig({ dataDir: '/', ...out });
  return out;
}
