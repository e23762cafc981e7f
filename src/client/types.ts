/** Shapes of the HTTP API (v1) as the SDK returns them: JSON as the server sends it. */

export type SandboxState = 'pending' | 'running' | 'paused' | 'terminated' | 'failed';

export interface ResourceLimits {
  /** Memory limit in bytes. Server default 512 MiB. */
  memoryBytes?: number;
  swapBytes?: number;
  pids?: number;
  /** CPU quota in cores (0.5 = half a core). */
  cpus?: number;
  diskBytes?: number;
  tmpBytes?: number;
}

export interface NetworkRules {
  /** Destinations the sandbox may reach, e.g. "pypi.org", "*.npmjs.org:443", "10.0.0.0/8:5432". */
  allow?: string[];
  deny?: string[];
}

export interface SandboxPolicy {
  /** Permission rules in the policy-file format (docs/policy.md); tighten, never loosen, the operator's. */
  permissions?: Record<string, unknown>;
  /** Egress rules (docs/policy-network.md). Omitted: the sandbox has no network at all. */
  network?: NetworkRules;
}

export interface CreateSandboxOptions {
  labels?: Record<string, string>;
  /** Environment for every command in the sandbox (values are never logged by the server). */
  env?: Record<string, string>;
  limits?: ResourceLimits;
  /** Lifetime; the sandbox is destroyed this long after creation. Server default 1 h, max 7 days. */
  timeoutMs?: number;
  policy?: SandboxPolicy;
  /** Shorthand for `policy.network`. */
  network?: NetworkRules;
  signal?: AbortSignal;
}

export interface SandboxInfo {
  id: string;
  state: SandboxState;
  reason: string;
  labels: Record<string, string>;
  limits: ResourceLimits;
  createdAt: string;
  updatedAt: string;
  expiresAt: string | null;
  endedAt: string | null;
  policy: Record<string, unknown> | null;
}

export interface ListSandboxesOptions {
  state?: SandboxState;
  /** Every label must match exactly (turned into a label selector `k=v,…`). */
  labels?: Record<string, string>;
  /** A raw label selector (`app=web,tier!=db,canary`); combined with `labels`. */
  labelSelector?: string;
  /** Page size, 1–999. Server default applies when omitted. */
  limit?: number;
  /** `nextCursor` of the previous page. */
  cursor?: string;
  signal?: AbortSignal;
}

export interface SandboxPage {
  items: SandboxInfo[];
  nextCursor: string | null;
}

export interface NetworkInfo {
  sandboxId: string;
  /** False: created without network; it has loopback only and can never get network. */
  enabled: boolean;
  rules: { allow: string[]; deny: string[] } | null;
  operator: { allow: string[]; deny: string[] };
  effective: { allow: string[]; deny: string[] } | null;
  stats: { activeConnections: number; bytesIn: number; bytesOut: number; denied: number } | null;
  recentDenials: {
    time: string;
    host: string;
    port: number;
    reason: string;
    rule: string | null;
    [key: string]: unknown;
  }[];
}

/** A background execution as the server reports it. */
export interface ExecInfo {
  id: string;
  sandboxId: string;
  status: 'running' | 'exited';
  command: string;
  startedAt: string;
  endedAt: string | null;
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  interrupted: boolean;
  durationMs: number | null;
  logBytesDropped: number;
  truncated: boolean;
}

export interface CommandResult {
  execId: string;
  /** Exit status, or null if the command ended by a signal. Non-zero exits do not throw. */
  exitCode: number | null;
  signal: string | null;
  /** Output decoded as UTF-8 (invalid sequences become U+FFFD). */
  stdout: string;
  stderr: string;
  /** The exact output bytes. */
  stdoutBytes: Uint8Array;
  stderrBytes: Uint8Array;
  truncated: boolean;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  timedOut: boolean;
  interrupted: boolean;
  durationMs: number;
}

export interface LogChunk {
  seq: number;
  stream: 'stdout' | 'stderr';
  data: Uint8Array;
}

export interface LogPage {
  chunks: LogChunk[];
  /** Pass back as `cursor` to read on. */
  nextCursor: string;
  /** True if output before these chunks was dropped (the server keeps at most 1 MiB per exec). */
  dropped: boolean;
  exec: ExecInfo;
}

export type FileType =
  'file' | 'directory' | 'symlink' | 'fifo' | 'socket' | 'char-device' | 'block-device' | 'other';

export interface FileEntry {
  name: string;
  /** The exact name bytes, base64 (for names that are not valid UTF-8). */
  nameBase64: string;
  /**
   * The exact name bytes (decoded from `nameBase64` by the SDK): pass `join(dirBytes, nameBytes)`
   * back to read/write/stat/list/remove to reach a name that is not valid UTF-8.
   */
  nameBytes: Uint8Array;
  type: FileType;
  size: number;
  mode: number;
  mtime: string;
}

export interface FileListing {
  entries: FileEntry[];
  truncated: boolean;
}

export interface FileStat {
  path: string;
  type: FileType;
  size: number;
  mode: number;
  mtime: string;
  /** For symlinks: where the link points. */
  target?: string;
}

export interface SearchMatch {
  path: string;
  pathBase64: string;
  /** The exact path bytes (decoded from `pathBase64` by the SDK). */
  pathBytes: Uint8Array;
  type: FileType;
}

export interface SearchResult {
  matches: SearchMatch[];
  truncated: boolean;
}

export interface WriteResult {
  path: string;
  size: number;
}
