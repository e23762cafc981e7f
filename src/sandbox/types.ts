/**
 * The sandbox engine's public contract. Every backend (bubblewrap today; microVM and
 * Kubernetes later) implements SandboxRuntime. Callers (API server, egress gateway, CLI)
 * depend on these types only, never on a backend's internals.
 */

export type SandboxState = 'pending' | 'running' | 'paused' | 'terminated' | 'failed';

/** Where a sandbox's root filesystem comes from. Only `host` exists today. */
export type TemplateSpec =
  /** The host's system directories (/usr, /bin, /lib*), read-only, with a synthesised minimal /etc. */
  { kind: 'host' };

export interface ResourceLimits {
  /** Memory limit in bytes (cgroup memory.max / memory.limit_in_bytes). @default 512 MiB */
  memoryBytes: number;
  /** Swap allowed on top of memory. @default 0 */
  swapBytes: number;
  /** Maximum number of processes and threads. @default 256 */
  pids: number;
  /** CPU quota in cores (0.5 = half a core). @default 1 */
  cpus: number;
  /** Workspace disk quota in bytes (project quota on the workspace pool). @default 1 GiB */
  diskBytes: number;
  /** Size of the private /tmp (tmpfs, charged to the sandbox's memory). @default 64 MiB */
  tmpBytes: number;
}

/** An extra bind mount. Its source must be in the operator's allowlist. */
export interface MountRequest {
  /** Host path; must equal or lie under an allowlisted source. */
  source: string;
  /** Absolute path inside the sandbox. @default the allowlist entry's target */
  target?: string;
  /** Read-write only if the allowlist entry permits writes. @default false */
  writable?: boolean;
}

/**
 * The network hook used by the egress gateway. A sandbox always lives in its own network
 * namespace with only loopback. Each bridge makes the in-sandbox agent listen on
 * 127.0.0.1:`port` inside the namespace and forward every accepted connection to the host
 * unix socket `hostSocket`, which the gateway serves. The socket path identifies the sandbox.
 */
export interface NetworkBridge {
  port: number;
  hostSocket: string;
}

export interface SandboxNetwork {
  bridges: NetworkBridge[];
  /** Extra environment set in every exec (e.g. HTTP_PROXY). Validated like any env. */
  env?: Record<string, string>;
  /** Called once the sandbox is destroyed (or its creation failed): release the bridges. */
  release?: () => Promise<void>;
}

/** The identity a network provider needs (e.g. to own a socket by the sandbox's uid). */
export interface SandboxIdentity {
  id: string;
  hostUid: number;
  hostGid: number;
}

/**
 * Called by create() once the sandbox's id and host uid are known and before anything runs
 * in it; typically the egress gateway's attach.
 */
export type NetworkProvider = (sandbox: SandboxIdentity) => Promise<SandboxNetwork>;

export interface CreateSandboxOptions {
  template?: TemplateSpec;
  limits?: Partial<ResourceLimits>;
  /** Environment for every exec in this sandbox (validated; dangerous names rejected). */
  env?: Record<string, string>;
  mounts?: MountRequest[];
  /**
   * Use this host directory as /workspace instead of an engine-managed one. Its filesystem
   * must support project quotas, or `limits.diskBytes` must be 0 (explicitly no quota).
   */
  workspaceDir?: string;
  /** Omitted: no network at all (loopback only). */
  network?: SandboxNetwork | NetworkProvider;
  labels?: Record<string, string>;
}

export interface SandboxInfo {
  id: string;
  backend: string;
  template: TemplateSpec;
  state: SandboxState;
  /** Why the sandbox is in its state (e.g. "destroyed by request", "agent exited"). */
  reason: string;
  createdAt: Date;
  limits: ResourceLimits;
  labels: Record<string, string>;
  /** Unprivileged host uid the sandbox runs as (never 0, distinct per sandbox). */
  hostUid: number;
  /** Whether kernel cgroup limits are enforced (false only when the operator relaxed it). */
  cgroupsEnforced: boolean;
}

export interface ExecRequest {
  /** argv form: run the program directly, no shell. Exactly one of argv and command. */
  argv?: string[];
  /** Shell-string form: run with /bin/sh -c. */
  command?: string;
  /** Working directory inside the sandbox. @default /workspace */
  cwd?: string;
  /** Per-exec environment, merged over the sandbox's (validated). */
  env?: Record<string, string>;
  /** Whole stdin for the command; stdin is closed after it. Use ExecHandle.writeStdin to stream. */
  stdin?: string | Uint8Array;
  /** Keep stdin open for ExecHandle.writeStdin. @default false */
  openStdin?: boolean;
  /** Kill the exec's whole process tree after this long. @default engine default (30 s) */
  timeoutMs?: number;
  /** Bytes of stdout and of stderr kept; more is dropped and flagged. @default 1 MiB each */
  maxOutputBytes?: number;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /** Aborting sends SIGINT to the exec, then kills its tree after a grace period. */
  signal?: AbortSignal;
}

export interface ExecResult {
  /** Exit status, or null if ended by a signal. */
  exitCode: number | null;
  /** Signal name (e.g. SIGKILL) if ended by a signal. */
  signal: string | null;
  stdout: Buffer;
  stderr: Buffer;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  timedOut: boolean;
  /** True if the exec was interrupted (abort signal or interrupt()). */
  interrupted: boolean;
  durationMs: number;
}

export interface ExecHandle {
  readonly id: string;
  readonly sandboxId: string;
  /** Resolves when the process and its output are done. Never rejects for a non-zero exit. */
  readonly done: Promise<ExecResult>;
  /** Write to stdin (only with openStdin). Resolves once the sandbox accepted the bytes. */
  writeStdin(data: string | Uint8Array): Promise<void>;
  closeStdin(): void;
  /** Send a signal to the exec's process group. */
  signal(signal: 'SIGINT' | 'SIGTERM' | 'SIGKILL' | 'SIGHUP' | 'SIGQUIT'): void;
  /** SIGINT, then kill the whole tree after a grace period. */
  interrupt(): void;
  /**
   * Kill every process the exec started (its cgroup), including processes it left running in
   * the background after its main process ended.
   */
  kill(): Promise<void>;
}

export interface SandboxStats {
  memoryBytes: number;
  memoryLimitBytes: number;
  pids: number;
  cpuUsageNs: number;
  diskBytes: number | null;
  diskLimitBytes: number | null;
}

export interface SandboxRuntime {
  readonly backend: string;
  create(options?: CreateSandboxOptions): Promise<SandboxInfo>;
  /** Starts a command; resolves when it is running (rejects if it could not start). */
  exec(sandboxId: string, request: ExecRequest): Promise<ExecHandle>;
  /** exec and wait for the result. */
  run(sandboxId: string, request: ExecRequest): Promise<ExecResult>;
  /** Kill every process of the sandbox and remove its mounts, directories and cgroups. */
  destroy(sandboxId: string, reason?: string): Promise<void>;
  pause(sandboxId: string): Promise<void>;
  resume(sandboxId: string): Promise<void>;
  stats(sandboxId: string): Promise<SandboxStats>;
  get(sandboxId: string): SandboxInfo | undefined;
  list(): SandboxInfo[];
  /** Subscribe to state changes (e.g. a sandbox that died on its own). Returns unsubscribe. */
  onStateChange(listener: (info: SandboxInfo) => void): () => void;
  /** Destroy every sandbox and release engine resources. */
  close(): Promise<void>;
}
