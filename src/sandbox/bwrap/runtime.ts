/**
 * The bubblewrap backend: one long-lived sandbox = one bwrap process tree whose pid 1 is the
 * Palisade agent. The engine talks to the agent over the bwrap process's stdin/stdout; every
 * exec is forked by the agent inside the sandbox, so it inherits all namespaces, the seccomp
 * filter, the sandbox uid and the cgroup from the start.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  renameSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, isAbsolute, join, posix } from 'node:path';
import type { Readable } from 'node:stream';
import { constants as osConstants } from 'node:os';
import { PalisadeError } from '../../errors/index.js';
import { createCgroupManager, type CgroupManager, type SandboxCgroup } from '../cgroups/index.js';
import {
  openWorkspacePool,
  checkDirectoryQuotaSupport,
  applyDirectoryQuota,
  type WorkspaceEncryption,
  type WorkspacePool,
} from '../workspace/index.js';
import { BASE_ENV, composeEnv, validateEnv } from '../env.js';
import { assertSandboxId, newSandboxId } from '../ids.js';
import { DEFAULT_LIMITS, DEFAULT_MAX_LIMITS, resolveLimits } from '../limits.js';
import type {
  CreateSandboxOptions,
  ExecHandle,
  ExecRequest,
  ExecResult,
  ResourceLimits,
  SandboxInfo,
  SandboxNetwork,
  SandboxRuntime,
  SandboxStats,
} from '../types.js';
import {
  attachDecoder,
  encodeExec,
  encodeFrame,
  FrameType,
  MAX_REQUEST_FRAME,
  type AgentFrame,
} from './protocol.js';
import {
  AGENT_PATH,
  filesystemArgs,
  NET_DIR,
  namespaceArgs,
  RESERVED_TARGETS,
  WORKSPACE,
  writeSyntheticEtc,
} from './layout.js';
import { checkRequirements, defaultHelperPath, formatMissing } from './requirements.js';
import { buildSeccompProgram } from './seccomp.js';

export interface AllowedMount {
  /** Host directory (or file) that may be mounted. */
  source: string;
  /** Default path inside the sandbox. @default same as source */
  target?: string;
  /** Whether callers may ask for it read-write. @default false */
  writable?: boolean;
}

export interface EngineConfig {
  /** Engine state: workspaces pool, per-sandbox files. @default /var/lib/palisade */
  dataDir: string;
  /** @default 'bwrap' from PATH */
  bwrapPath?: string;
  /** @default <package>/native/build/palisade-sandbox */
  helperPath?: string;
  /** Host uids given to sandboxes, one per live sandbox. @default { start: 1_900_000_000, count: 100_000 } */
  uidRange?: { start: number; count: number };
  /** 'optional' lets sandboxes run without kernel limits on a development machine; shown by doctor. @default 'required' */
  cgroups?: 'required' | 'optional';
  /** Where the cgroup filesystems are mounted. @default /sys/fs/cgroup */
  cgroupRoot?: string;
  /** Name of the cgroup directory under each hierarchy. @default 'palisade' */
  cgroupPrefix?: string;
  /** Host paths callers may mount into sandboxes (read-only unless marked writable). @default none */
  allowedMounts?: AllowedMount[];
  defaultLimits?: Partial<ResourceLimits>;
  maxLimits?: Partial<ResourceLimits>;
  /** @default 1000 */
  maxSandboxes?: number;
  /** @default 30 s */
  defaultExecTimeoutMs?: number;
  /** @default 1 h */
  maxExecTimeoutMs?: number;
  /** @default 1 MiB */
  defaultMaxOutputBytes?: number;
  /** @default 64 MiB */
  maxOutputBytesLimit?: number;
  /** Sparse size of the workspace pool image. @default 64 GiB */
  workspacePoolBytes?: number;
  /**
   * Workspaces (default disk size) prepared ahead of time so that create does not wait for
   * mkfs and mount. 0 disables. @default 2
   */
  warmWorkspaces?: number;
  /**
   * Encrypt engine-managed workspaces at rest (fscrypt v2, one random key per sandbox that lives
   * only in the kernel and is removed at destroy). 'required' fails closed when the kernel cannot
   * do it. Caller-supplied `workspaceDir`s are never encrypted by the engine. @default 'required'
   */
  workspaceEncryption?: WorkspaceEncryption;
}

/** A sandbox identity whose workspace is being prepared before anyone asked for it. */
interface WarmWorkspace {
  id: string;
  slot: number;
  hostUid: number;
  workspace: Promise<string>;
}

type ResolvedConfig = Required<
  Omit<EngineConfig, 'defaultLimits' | 'maxLimits' | 'allowedMounts'>
> & {
  allowedMounts: AllowedMount[];
};

const MAX_EXECS_PER_SANDBOX = 64; // MAX_EXECS in the agent
const STDIN_WINDOW = 256 * 1024; // STDIN_BUF_MAX in the agent
const STDIN_CHUNK = 64 * 1024;
const INTERRUPT_GRACE_MS = 2000;
const AGENT_READY_TIMEOUT_MS = 10_000;
const MAX_ARGS = 4096;
const MAX_CWD_BYTES = 4096;

interface PendingStdin {
  data: Buffer;
  resolve: () => void;
  reject: (err: Error) => void;
  bytesLeftToAck: number;
}

interface ExecState {
  id: number;
  name: string;
  started: { resolve: () => void; reject: (e: Error) => void };
  finish: (r: ExecResult) => void;
  fail: (e: Error) => void;
  startTime: number;
  stdout: Buffer[];
  stderr: Buffer[];
  stdoutBytes: number;
  stderrBytes: number;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  maxOutput: number;
  onStdout?: (c: Buffer) => void;
  onStderr?: (c: Buffer) => void;
  timedOut: boolean;
  interrupted: boolean;
  timer?: NodeJS.Timeout;
  graceTimer?: NodeJS.Timeout;
  running: boolean;
  ended: boolean;
  stdinInflight: number;
  stdinQueue: PendingStdin[];
  stdinClosed: boolean;
}

interface SandboxRecord {
  info: SandboxInfo;
  proc: ChildProcess;
  cgroup: SandboxCgroup | undefined;
  workspace: string;
  ownsWorkspace: boolean;
  slot: number;
  env: Record<string, string>;
  execs: Map<number, ExecState>;
  nextExecId: number;
  exited: Promise<void>;
  agentLog: string[];
  /** Host pid of the agent (pid 1 inside); killing it ends the pid namespace. */
  agentHostPid: number | undefined;
  releaseNetwork: (() => Promise<void>) | undefined;
}

const SIGNAL_NUMBERS: Record<string, number> = {
  SIGHUP: osConstants.signals.SIGHUP,
  SIGINT: osConstants.signals.SIGINT,
  SIGQUIT: osConstants.signals.SIGQUIT,
  SIGKILL: osConstants.signals.SIGKILL,
  SIGTERM: osConstants.signals.SIGTERM,
};

function signalName(n: number): string {
  for (const [name, value] of Object.entries(osConstants.signals)) if (value === n) return name;
  return `SIG${n}`;
}

const ERRNO_TEXT: Record<number, string> = {
  2: 'no such file or directory',
  13: 'permission denied',
  20: 'not a directory',
  8: 'not an executable format',
  11: 'resource temporarily unavailable (process limit reached?)',
  12: 'out of memory',
  7: 'argument list too long',
  40: 'too many levels of symbolic links',
};

export class BwrapRuntime implements SandboxRuntime {
  readonly backend = 'bwrap';
  private readonly sandboxes = new Map<string, SandboxRecord>();
  private readonly usedSlots = new Set<number>();
  private readonly listeners = new Set<(info: SandboxInfo) => void>();
  private closed = false;
  private readonly warm: WarmWorkspace[] = [];
  private refilling: Promise<void> | undefined;

  private constructor(
    private readonly config: ResolvedConfig,
    private readonly defaults: ResourceLimits,
    private readonly max: ResourceLimits,
    private readonly cgroups: CgroupManager | undefined,
    private readonly pool: WorkspacePool,
    private readonly seccompFile: string,
    private readonly etcDir: string,
    private readonly lockFile: string,
  ) {}

  /** Checks every host requirement (fail closed), reaps leftovers of a crashed engine, opens the workspace pool. */
  static async start(config: EngineConfig): Promise<BwrapRuntime> {
    if (!config || typeof config.dataDir !== 'string' || !isAbsolute(config.dataDir)) {
      throw new PalisadeError('INVALID_ARGUMENT', 'engine dataDir must be an absolute path');
    }
    const uidRange = config.uidRange ?? { start: 1_900_000_000, count: 100_000 };
    if (
      !Number.isInteger(uidRange.start) ||
      !Number.isInteger(uidRange.count) ||
      uidRange.start < 65536 ||
      uidRange.count < 1 ||
      uidRange.start + uidRange.count > 4_294_967_294
    ) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'uidRange must lie within 65536..4294967294 (sandbox uids are never 0 and never ordinary users)',
      );
    }
    const full: ResolvedConfig = {
      dataDir: config.dataDir,
      bwrapPath: config.bwrapPath ?? 'bwrap',
      helperPath: config.helperPath ?? defaultHelperPath(),
      uidRange,
      cgroups: config.cgroups ?? 'required',
      cgroupPrefix: config.cgroupPrefix ?? 'palisade',
      cgroupRoot: config.cgroupRoot ?? '/sys/fs/cgroup',
      allowedMounts: (config.allowedMounts ?? []).map(normaliseAllowedMount),
      maxSandboxes: config.maxSandboxes ?? 1000,
      defaultExecTimeoutMs: config.defaultExecTimeoutMs ?? 30_000,
      maxExecTimeoutMs: config.maxExecTimeoutMs ?? 3_600_000,
      defaultMaxOutputBytes: config.defaultMaxOutputBytes ?? 1024 * 1024,
      maxOutputBytesLimit: config.maxOutputBytesLimit ?? 64 * 1024 * 1024,
      workspacePoolBytes: config.workspacePoolBytes ?? 64 * 1024 ** 3,
      warmWorkspaces: config.warmWorkspaces ?? 2,
      workspaceEncryption: config.workspaceEncryption ?? 'required',
    };
    if (
      !Number.isInteger(full.warmWorkspaces) ||
      full.warmWorkspaces < 0 ||
      full.warmWorkspaces > 64
    ) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'warmWorkspaces must be a whole number between 0 and 64',
      );
    }
    if (full.workspaceEncryption !== 'required' && full.workspaceEncryption !== 'off') {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        "workspaceEncryption must be 'required' (default) or 'off'",
      );
    }
    if (!/^[a-zA-Z0-9_-]{1,64}$/.test(full.cgroupPrefix)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'cgroupPrefix must be 1-64 characters of [A-Za-z0-9_-]',
      );
    }
    const checks = checkRequirements({
      bwrapPath: full.bwrapPath,
      helperPath: full.helperPath,
      cgroupsRequired: full.cgroups === 'required',
      cgroupRoot: full.cgroupRoot,
    });
    const missing = formatMissing(checks);
    if (missing) {
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        `cannot create sandboxes on this host: ${missing}. Run 'palisade doctor' for details.`,
      );
    }
    // Traversable but not listable: bubblewrap runs as the sandbox's uid and must reach the
    // shared /etc files, the agent binary and its own workspace below the data directory.
    mkdirSync(full.dataDir, { recursive: true, mode: 0o711 });
    chmodSync(full.dataDir, 0o711);
    assertTraversable(full.dataDir);
    const lock = acquireEngineLock(full.dataDir);
    try {
      return await BwrapRuntime.startLocked(full, config, checks, lock);
    } catch (err) {
      releaseEngineLock(lock);
      throw err;
    }
  }

  private static async startLocked(
    full: ResolvedConfig,
    config: EngineConfig,
    checks: ReturnType<typeof checkRequirements>,
    lock: string,
  ): Promise<BwrapRuntime> {
    const max = { ...DEFAULT_MAX_LIMITS, ...(config.maxLimits ?? {}) };
    const defaults = resolveLimits(config.defaultLimits, DEFAULT_LIMITS, max);
    const etcDir = join(full.dataDir, 'etc');
    writeSyntheticEtc(etcDir);
    // The agent binary is copied next to the engine's state so that it is reachable by the
    // sandbox uid wherever the package itself is installed (e.g. under a 0700 home directory).
    const binDir = join(full.dataDir, 'bin');
    mkdirSync(binDir, { recursive: true, mode: 0o755 });
    const agentCopy = join(binDir, 'palisade-sandbox');
    copyFileSync(full.helperPath, agentCopy + '.tmp');
    chmodSync(agentCopy + '.tmp', 0o755);
    renameSync(agentCopy + '.tmp', agentCopy);
    // The files helper (files API) is built next to the agent and mounted at /.palisade/files.
    const filesHelper = join(dirname(full.helperPath), 'palisade-files');
    if (!existsSync(filesHelper)) {
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        `the files helper ${filesHelper} is missing; build it with 'make -C native' (or 'npm run setup')`,
      );
    }
    const filesCopy = join(binDir, 'palisade-files');
    copyFileSync(filesHelper, filesCopy + '.tmp');
    chmodSync(filesCopy + '.tmp', 0o755);
    renameSync(filesCopy + '.tmp', filesCopy);
    full.helperPath = agentCopy;
    const seccompFile = join(full.dataDir, 'seccomp.bpf');
    writeFileSync(seccompFile, buildSeccompProgram().bytes, { mode: 0o644 });

    let cgroups: CgroupManager | undefined;
    const cgSupport = checks.find((c) => c.name === 'cgroup limits');
    if (cgSupport?.ok)
      cgroups = createCgroupManager({ prefix: full.cgroupPrefix, root: full.cgroupRoot });
    const pool = await openWorkspacePool({
      dataDir: full.dataDir,
      sizeBytes: full.workspacePoolBytes,
      encryption: full.workspaceEncryption,
    });
    const runtime = new BwrapRuntime(full, defaults, max, cgroups, pool, seccompFile, etcDir, lock);
    await runtime.reapLeftovers();
    runtime.refillWarm();
    return runtime;
  }

  /** A crashed engine leaves processes (if any escaped pid-1 death), cgroups and workspaces: remove them. */
  private async reapLeftovers(): Promise<void> {
    const { start, count } = this.config.uidRange;
    // Sandboxes die with their engine (--die-with-parent), so any process still running as a
    // sandbox uid is a leftover; kill it before touching its cgroup or workspace.
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      let status: string;
      try {
        status = readFileSync(`/proc/${entry}/status`, 'utf8');
      } catch {
        continue;
      }
      const m = /^Uid:\s+(\d+)/m.exec(status);
      const uid = m ? Number(m[1]) : -1;
      if (uid >= start && uid < start + count) {
        try {
          process.kill(Number(entry), 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    if (this.cgroups) await this.cgroups.reapLeftovers(new Set());
    await this.pool.reapLeftovers(new Set());
    rmSync(join(this.config.dataDir, 'sandboxes'), { recursive: true, force: true });
  }

  /** Keeps `warmWorkspaces` default-size workspaces ready, one at a time, in the background. */
  private refillWarm(): void {
    if (this.refilling || this.closed) return;
    this.refilling = (async () => {
      while (
        !this.closed &&
        this.warm.length < this.config.warmWorkspaces &&
        this.sandboxes.size + this.warm.length < this.config.maxSandboxes
      ) {
        let slot: number;
        try {
          slot = this.allocateSlot();
        } catch {
          return;
        }
        const id = newSandboxId();
        const hostUid = this.config.uidRange.start + slot;
        const workspace = this.pool.create(
          id,
          { uid: hostUid, gid: hostUid },
          { bytes: this.defaults.diskBytes },
        );
        const entry: WarmWorkspace = { id, slot, hostUid, workspace };
        this.warm.push(entry);
        const ok = await workspace.then(
          () => true,
          () => false,
        );
        if (!ok) {
          // Preparing failed (e.g. disk full); create() reports the real error when it tries itself.
          const at = this.warm.indexOf(entry);
          if (at >= 0) this.warm.splice(at, 1);
          this.usedSlots.delete(slot);
          return;
        }
      }
    })().finally(() => {
      this.refilling = undefined;
    });
  }

  /** A prepared identity and workspace, if one fits the request. */
  private async takeWarm(
    limits: ResourceLimits,
    options: CreateSandboxOptions,
  ): Promise<{ id: string; slot: number; hostUid: number; workspace: string } | undefined> {
    if (options.workspaceDir !== undefined || limits.diskBytes !== this.defaults.diskBytes)
      return undefined;
    const entry = this.warm.shift();
    if (!entry) return undefined;
    try {
      return {
        id: entry.id,
        slot: entry.slot,
        hostUid: entry.hostUid,
        workspace: await entry.workspace,
      };
    } catch {
      this.usedSlots.delete(entry.slot);
      return undefined;
    }
  }

  onStateChange(listener: (info: SandboxInfo) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private setState(rec: SandboxRecord, state: SandboxInfo['state'], reason: string): void {
    rec.info = { ...rec.info, state, reason };
    for (const l of this.listeners) {
      try {
        l(rec.info);
      } catch {
        // a listener's failure must not break the engine
      }
    }
  }

  get(id: string): SandboxInfo | undefined {
    return this.sandboxes.get(id)?.info;
  }

  list(): SandboxInfo[] {
    return [...this.sandboxes.values()].map((r) => r.info);
  }

  private allocateSlot(): number {
    for (let i = 0; i < this.config.uidRange.count; i++) {
      if (!this.usedSlots.has(i)) {
        this.usedSlots.add(i);
        return i;
      }
    }
    throw new PalisadeError(
      'SANDBOX_LIMIT_REACHED',
      'no free sandbox uid left in the configured uidRange; destroy sandboxes or widen the range',
    );
  }

  private validateNetwork(network: SandboxNetwork): void {
    if (typeof network !== 'object' || network === null || !Array.isArray(network.bridges)) {
      throw new PalisadeError('INVALID_ARGUMENT', 'network must have a bridges array');
    }
    if (network.bridges.length > 4)
      throw new PalisadeError('INVALID_ARGUMENT', 'at most 4 network bridges');
    for (const b of network.bridges) {
      if (
        !Number.isInteger(b.port) ||
        b.port < 1 ||
        b.port > 65535 ||
        typeof b.hostSocket !== 'string' ||
        !isAbsolute(b.hostSocket)
      ) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          'network bridges need a port 1-65535 and an absolute host socket path',
        );
      }
      if (!existsSync(b.hostSocket)) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          `network bridge socket ${b.hostSocket} does not exist`,
        );
      }
    }
    validateEnv(network.env, 'network env');
  }

  private resolveMounts(
    requested: CreateSandboxOptions['mounts'],
  ): Array<{ source: string; target: string; writable: boolean }> {
    if (requested === undefined) return [];
    if (!Array.isArray(requested) || requested.length > 32) {
      throw new PalisadeError('INVALID_ARGUMENT', 'mounts must be an array of at most 32 entries');
    }
    return requested.map((m) => {
      if (!m || typeof m.source !== 'string' || !isAbsolute(m.source)) {
        throw new PalisadeError('INVALID_PATH', 'each mount needs an absolute host source path');
      }
      let source: string;
      try {
        source = realpathSync(m.source);
      } catch {
        throw new PalisadeError('INVALID_PATH', `mount source ${m.source} does not exist`);
      }
      const entry = this.config.allowedMounts.find(
        (a) => source === a.source || source.startsWith(a.source + '/'),
      );
      if (!entry) {
        throw new PalisadeError(
          'INVALID_PATH',
          `mount source ${m.source} is not in the operator's allowedMounts list`,
        );
      }
      const defaultTarget = posix.join(
        entry.target ?? entry.source,
        source.slice(entry.source.length),
      );
      const target =
        m.target === undefined ? defaultTarget : normaliseSandboxPath(m.target, 'mount target');
      if (RESERVED_TARGETS.some((r) => target === r || (r !== '/' && target.startsWith(r + '/')))) {
        throw new PalisadeError(
          'INVALID_PATH',
          `mount target ${target} would cover a system directory; choose a path like /mnt/name or /opt/name`,
        );
      }
      const writable = m.writable === true;
      if (writable && !entry.writable) {
        throw new PalisadeError(
          'INVALID_PATH',
          `mount ${m.source} may only be mounted read-only (the operator did not mark it writable)`,
        );
      }
      return { source, target, writable };
    });
  }

  async create(options: CreateSandboxOptions = {}): Promise<SandboxInfo> {
    if (this.closed) throw new PalisadeError('SANDBOX_CREATE_FAILED', 'the engine is shut down');
    if (typeof options !== 'object' || options === null)
      throw new PalisadeError('INVALID_ARGUMENT', 'create options must be an object');
    if (this.sandboxes.size >= this.config.maxSandboxes) {
      throw new PalisadeError(
        'SANDBOX_LIMIT_REACHED',
        `this engine already runs ${this.sandboxes.size} sandboxes (maxSandboxes); destroy some first`,
      );
    }
    const template = options.template ?? { kind: 'host' as const };
    if (template.kind !== 'host') {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `unknown template kind ${JSON.stringify((template as { kind: unknown }).kind)}; available: host`,
      );
    }
    const limits = resolveLimits(options.limits, this.defaults, this.max);
    const sandboxEnv = validateEnv(options.env, 'sandbox env');
    const labels = validateLabels(options.labels);
    const mounts = this.resolveMounts(options.mounts);
    if (options.network !== undefined && typeof options.network !== 'function') {
      this.validateNetwork(options.network);
    }
    if (options.workspaceDir !== undefined) {
      if (
        typeof options.workspaceDir !== 'string' ||
        !isAbsolute(options.workspaceDir) ||
        !existsSync(options.workspaceDir)
      ) {
        throw new PalisadeError(
          'INVALID_PATH',
          'workspaceDir must be an existing absolute directory',
        );
      }
    }

    const warm = await this.takeWarm(limits, options);
    const id = warm?.id ?? newSandboxId();
    const slot = warm?.slot ?? this.allocateSlot();
    const hostUid = this.config.uidRange.start + slot;
    let cgroup: SandboxCgroup | undefined;
    let workspace: string | undefined = warm?.workspace;
    let ownsWorkspace = warm !== undefined;
    let network: SandboxNetwork | undefined;
    const cleanup = async () => {
      await network?.release?.().catch(() => undefined);
      if (cgroup) await cgroup.remove().catch(() => undefined);
      if (workspace && ownsWorkspace)
        await this.pool.remove(id, { uid: hostUid }).catch(() => undefined);
      this.usedSlots.delete(slot);
    };
    try {
      if (this.cgroups) cgroup = this.cgroups.create(id, limits, hostUid, hostUid);
      if (warm) {
        // prepared ahead of time by refillWarm
      } else if (options.workspaceDir !== undefined) {
        workspace = realpathSync(options.workspaceDir);
        if (limits.diskBytes > 0) {
          const support = await checkDirectoryQuotaSupport(workspace);
          if (!support.supported) {
            throw new PalisadeError(
              'REQUIREMENT_MISSING',
              `cannot enforce a disk quota on ${options.workspaceDir}: ${support.reason}. Use an engine-managed workspace, or set the disk limit to 0 to run this workspace without a quota.`,
            );
          }
          await applyDirectoryQuota(workspace, hostUid, limits.diskBytes);
        }
      } else {
        workspace = await this.pool.create(
          id,
          { uid: hostUid, gid: hostUid },
          { bytes: limits.diskBytes },
        );
        ownsWorkspace = true;
      }
      const info: SandboxInfo = {
        id,
        backend: this.backend,
        template,
        state: 'pending',
        reason: 'starting',
        createdAt: new Date(),
        limits,
        labels,
        hostUid,
        cgroupsEnforced: cgroup !== undefined,
      };
      if (workspace === undefined) throw new Error('workspace was not prepared');
      if (typeof options.network === 'function') {
        network = await options.network({ id, hostUid, hostGid: hostUid });
        this.validateNetwork(network);
      } else {
        network = options.network;
      }
      const rec = await this.spawnSandbox(info, {
        cgroup,
        workspace,
        ownsWorkspace,
        slot,
        env: { ...validateEnv(network?.env, 'network env'), ...sandboxEnv },
        mounts,
        bridges: network?.bridges ?? [],
        tmpBytes: limits.tmpBytes,
        releaseNetwork: network?.release,
      });
      this.setState(rec, 'running', 'started');
      this.refillWarm();
      return rec.info;
    } catch (err) {
      await cleanup();
      if (err instanceof PalisadeError) throw err;
      throw new PalisadeError(
        'SANDBOX_CREATE_FAILED',
        `sandbox could not be created: ${(err as Error).message}`,
        undefined,
        { cause: err },
      );
    }
  }

  private async spawnSandbox(
    info: SandboxInfo,
    parts: {
      cgroup: SandboxCgroup | undefined;
      workspace: string;
      ownsWorkspace: boolean;
      slot: number;
      env: Record<string, string>;
      mounts: Array<{ source: string; target: string; writable: boolean }>;
      bridges: Array<{ port: number; hostSocket: string }>;
      tmpBytes: number;
      releaseNetwork: (() => Promise<void>) | undefined;
    },
  ): Promise<SandboxRecord> {
    const fds: number[] = [];
    try {
      fds.push(openSync(this.seccompFile, 'r'));
      const cgroupDirs = parts.cgroup?.delegatedDirs ?? [];
      for (const dir of cgroupDirs) fds.push(openSync(dir, 'r'));
      const seccompFd = 3;
      const agentArgs = ['agent'];
      cgroupDirs.forEach((_: string, i: number) => agentArgs.push('--cgroup-fd', String(4 + i)));
      for (const b of parts.bridges)
        agentArgs.push('--bridge', `${b.port}:${NET_DIR}/${b.port}.sock`);
      // bwrap reports the host pid of the sandbox's pid 1 (the agent) on this pipe.
      const infoFd = 4 + cgroupDirs.length;
      const bwrapArgs = [
        '--info-fd',
        String(infoFd),
        ...namespaceArgs(),
        ...filesystemArgs({
          syntheticEtc: this.etcDir,
          workspace: parts.workspace,
          agentBinary: this.config.helperPath,
          filesBinary: join(dirname(this.config.helperPath), 'palisade-files'),
          tmpBytes: parts.tmpBytes,
          mounts: parts.mounts,
          bridgeSockets: parts.bridges,
        }),
        '--seccomp',
        String(seccompFd),
        '--',
        AGENT_PATH,
        ...agentArgs,
      ];
      const launchArgs = ['launch', '--uid', String(info.hostUid), '--gid', String(info.hostUid)];
      for (const f of parts.cgroup?.procsFiles ?? []) launchArgs.push('--cgroup-procs', f);
      const bwrap = findBwrap(this.config.bwrapPath);
      launchArgs.push('--', bwrap, ...bwrapArgs);
      const proc = spawn(this.config.helperPath, launchArgs, {
        stdio: ['pipe', 'pipe', 'pipe', ...fds, 'pipe'],
        env: { PATH: '/usr/bin:/bin' },
        detached: true,
      });
      const rec: SandboxRecord = {
        info,
        proc,
        cgroup: parts.cgroup,
        workspace: parts.workspace,
        ownsWorkspace: parts.ownsWorkspace,
        slot: parts.slot,
        env: parts.env,
        execs: new Map(),
        nextExecId: 1,
        exited: new Promise((resolve) => proc.once('close', () => resolve())),
        agentLog: [],
        agentHostPid: undefined,
        releaseNetwork: parts.releaseNetwork,
      };
      const infoStream = proc.stdio[infoFd] as Readable;
      let infoText = '';
      infoStream.setEncoding('utf8');
      infoStream.on('data', (t: string) => {
        if (infoText.length < 4096) infoText += t;
        const m = /"child-pid":\s*(\d+)/.exec(infoText);
        if (m) rec.agentHostPid = Number(m[1]);
      });
      infoStream.on('error', () => undefined);
      const stderrChunks: string[] = [];
      proc.stderr!.setEncoding('utf8');
      proc.stderr!.on('data', (s: string) => {
        if (stderrChunks.join('').length < 4096) stderrChunks.push(s);
      });
      proc.stdin!.on('error', () => undefined);
      const ready = new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error('the sandbox agent did not start within 10 s')),
          AGENT_READY_TIMEOUT_MS,
        );
        const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
          clearTimeout(timer);
          // Give stderr a moment to arrive so the error names the cause.
          setImmediate(() =>
            reject(
              new Error(
                `bubblewrap exited (${signal ?? `status ${code}`}) before the sandbox was ready: ${stderrChunks.join('').trim() || 'no message'}`,
              ),
            ),
          );
        };
        proc.once('exit', onExit);
        proc.once('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
        attachDecoder(
          proc.stdout!,
          (frame) => {
            if (frame.type === FrameType.Ready) {
              clearTimeout(timer);
              proc.off('exit', onExit);
              resolve();
              return;
            }
            this.onAgentFrame(rec, frame);
          },
          (message) => this.agentFailed(rec, message),
        );
      });
      try {
        await ready;
      } catch (err) {
        proc.kill('SIGKILL');
        await rec.exited;
        throw err;
      }
      proc.once('exit', (code, signal) => {
        if (rec.info.state === 'running' || rec.info.state === 'paused') {
          this.agentFailed(
            rec,
            `the sandbox agent exited unexpectedly (${signal ?? `status ${code}`}) ${stderrChunks.join('').trim()}`,
          );
        }
      });
      this.sandboxes.set(info.id, rec);
      return rec;
    } finally {
      for (const fd of fds) closeSync(fd);
    }
  }

  private agentFailed(rec: SandboxRecord, reason: string): void {
    if (rec.info.state === 'terminated' || rec.info.state === 'failed') return;
    this.setState(rec, 'failed', reason);
    const err = new PalisadeError('SANDBOX_NOT_RUNNING', `the sandbox stopped: ${reason}`);
    for (const ex of [...rec.execs.values()]) this.failExec(rec, ex, err);
    void this.stopProcesses(rec);
  }

  private onAgentFrame(rec: SandboxRecord, frame: AgentFrame): void {
    if (frame.type === FrameType.Log) {
      if (rec.agentLog.length < 32) rec.agentLog.push(frame.body.toString('utf8', 0, 512));
      return;
    }
    const ex = rec.execs.get(frame.id);
    if (!ex) return;
    switch (frame.type) {
      case FrameType.Started:
        ex.running = true;
        ex.started.resolve();
        break;
      case FrameType.StartFailed: {
        const errno = frame.body.readUInt32LE(0);
        const stage = frame.body.toString('utf8', 4);
        const what = ERRNO_TEXT[errno] ?? `errno ${errno}`;
        const message =
          stage === 'exec'
            ? `cannot run the command: ${what}`
            : stage === 'chdir'
              ? `cannot enter the working directory: ${what}`
              : `cannot start the command (${stage}): ${what}`;
        const err = new PalisadeError('EXEC_START_FAILED', message, { stage, errno });
        ex.started.reject(err);
        this.endExec(rec, ex);
        break;
      }
      case FrameType.Stdout:
      case FrameType.Stderr:
        this.onOutput(ex, frame.type === FrameType.Stdout ? 'stdout' : 'stderr', frame.body);
        break;
      case FrameType.StdinAck:
        this.onStdinAck(rec, ex, frame.body.readUInt32LE(0));
        break;
      case FrameType.Exit: {
        const code = frame.body.readInt32LE(0);
        const sig = frame.body.readInt32LE(4);
        ex.finish({
          exitCode: sig ? null : code,
          signal: sig ? signalName(sig) : null,
          stdout: Buffer.concat(ex.stdout, ex.stdoutBytes),
          stderr: Buffer.concat(ex.stderr, ex.stderrBytes),
          stdoutTruncated: ex.stdoutTruncated,
          stderrTruncated: ex.stderrTruncated,
          timedOut: ex.timedOut,
          interrupted: ex.interrupted,
          durationMs: Math.round((performance.now() - ex.startTime) * 1000) / 1000,
        });
        this.endExec(rec, ex);
        break;
      }
    }
  }

  private onOutput(ex: ExecState, which: 'stdout' | 'stderr', chunk: Buffer): void {
    const bytes = which === 'stdout' ? ex.stdoutBytes : ex.stderrBytes;
    const room = ex.maxOutput - bytes;
    let kept = chunk;
    if (room <= 0) kept = chunk.subarray(0, 0);
    else if (chunk.length > room) kept = chunk.subarray(0, room);
    if (kept.length < chunk.length) {
      if (which === 'stdout') ex.stdoutTruncated = true;
      else ex.stderrTruncated = true;
    }
    if (kept.length === 0) return;
    if (which === 'stdout') {
      ex.stdout.push(kept);
      ex.stdoutBytes += kept.length;
      ex.onStdout?.(kept);
    } else {
      ex.stderr.push(kept);
      ex.stderrBytes += kept.length;
      ex.onStderr?.(kept);
    }
  }

  private endExec(rec: SandboxRecord, ex: ExecState): void {
    if (ex.ended) return;
    ex.ended = true;
    if (ex.timer) clearTimeout(ex.timer);
    if (ex.graceTimer) clearTimeout(ex.graceTimer);
    for (const p of ex.stdinQueue)
      p.reject(new PalisadeError('EXEC_FAILED', 'the command ended before reading its stdin'));
    ex.stdinQueue = [];
    rec.execs.delete(ex.id);
    rec.cgroup?.removeExec(ex.name);
  }

  private failExec(rec: SandboxRecord, ex: ExecState, err: Error): void {
    ex.started.reject(err);
    ex.fail(err);
    this.endExec(rec, ex);
  }

  private requireRunning(id: string): SandboxRecord {
    assertSandboxId(id);
    const rec = this.sandboxes.get(id);
    if (!rec) throw new PalisadeError('SANDBOX_NOT_FOUND', `sandbox ${id} does not exist`);
    if (rec.info.state !== 'running') {
      throw new PalisadeError(
        'SANDBOX_NOT_RUNNING',
        `sandbox ${id} is ${rec.info.state} (${rec.info.reason}); only running sandboxes accept commands`,
      );
    }
    return rec;
  }

  private validateExec(request: ExecRequest): {
    argv: string[];
    cwd: string;
    env: Record<string, string>;
    timeoutMs: number;
    maxOutput: number;
  } {
    if (typeof request !== 'object' || request === null)
      throw new PalisadeError('INVALID_ARGUMENT', 'exec request must be an object');
    const hasArgv = request.argv !== undefined;
    const hasCommand = request.command !== undefined;
    if (hasArgv === hasCommand)
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'give exactly one of argv (no shell) or command (a shell string)',
      );
    let argv: string[];
    if (hasArgv) {
      if (
        !Array.isArray(request.argv) ||
        request.argv.length === 0 ||
        request.argv.length > MAX_ARGS ||
        !request.argv.every((a) => typeof a === 'string')
      ) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          `argv must be a non-empty array of at most ${MAX_ARGS} strings`,
        );
      }
      argv = request.argv;
      if (argv[0] === '')
        throw new PalisadeError('INVALID_ARGUMENT', 'argv[0] (the program) must not be empty');
    } else {
      if (typeof request.command !== 'string' || request.command.length === 0) {
        throw new PalisadeError('INVALID_ARGUMENT', 'command must be a non-empty shell string');
      }
      argv = ['/bin/sh', '-c', request.command];
    }
    if (argv.some((a) => a.includes('\0')))
      throw new PalisadeError('INVALID_ARGUMENT', 'arguments must not contain NUL bytes');
    const cwd = request.cwd === undefined ? WORKSPACE : normaliseSandboxPath(request.cwd, 'cwd');
    if (Buffer.byteLength(cwd) > MAX_CWD_BYTES)
      throw new PalisadeError('INVALID_PATH', 'cwd is too long');
    const env = validateEnv(request.env, 'exec env');
    const timeoutMs = request.timeoutMs ?? this.config.defaultExecTimeoutMs;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > this.config.maxExecTimeoutMs) {
      throw new PalisadeError(
        'INVALID_LIMIT',
        `timeoutMs must be a whole number between 1 and ${this.config.maxExecTimeoutMs}`,
      );
    }
    const maxOutput = request.maxOutputBytes ?? this.config.defaultMaxOutputBytes;
    if (
      !Number.isInteger(maxOutput) ||
      maxOutput < 0 ||
      maxOutput > this.config.maxOutputBytesLimit
    ) {
      throw new PalisadeError(
        'INVALID_LIMIT',
        `maxOutputBytes must be a whole number between 0 and ${this.config.maxOutputBytesLimit}`,
      );
    }
    return { argv, cwd, env, timeoutMs, maxOutput };
  }

  async exec(sandboxId: string, request: ExecRequest): Promise<ExecHandle> {
    const rec = this.requireRunning(sandboxId);
    const v = this.validateExec(request);
    if (rec.execs.size >= MAX_EXECS_PER_SANDBOX) {
      throw new PalisadeError(
        'SANDBOX_LIMIT_REACHED',
        `sandbox ${sandboxId} already runs ${MAX_EXECS_PER_SANDBOX} commands; wait for some to finish`,
      );
    }
    const stdinData = request.stdin === undefined ? undefined : Buffer.from(request.stdin);
    const envList = composeEnv(BASE_ENV, rec.env, v.env);
    const frame = encodeExec(rec.nextExecId, v.cwd, v.argv, envList);
    if (frame.length > MAX_REQUEST_FRAME) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `the command, its arguments and environment are larger than ${MAX_REQUEST_FRAME} bytes`,
      );
    }
    const id = rec.nextExecId++;
    let startedResolve!: () => void;
    let startedReject!: (e: Error) => void;
    const started = new Promise<void>((res, rej) => {
      startedResolve = res;
      startedReject = rej;
    });
    let finish!: (r: ExecResult) => void;
    let fail!: (e: Error) => void;
    const done = new Promise<ExecResult>((res, rej) => {
      finish = res;
      fail = rej;
    });
    done.catch(() => undefined);
    const ex: ExecState = {
      id,
      name: `e${id}`,
      started: { resolve: startedResolve, reject: startedReject },
      finish,
      fail,
      startTime: performance.now(),
      stdout: [],
      stderr: [],
      stdoutBytes: 0,
      stderrBytes: 0,
      stdoutTruncated: false,
      stderrTruncated: false,
      maxOutput: v.maxOutput,
      ...(request.onStdout ? { onStdout: request.onStdout } : {}),
      ...(request.onStderr ? { onStderr: request.onStderr } : {}),
      timedOut: false,
      interrupted: false,
      running: false,
      ended: false,
      stdinInflight: 0,
      stdinQueue: [],
      stdinClosed: false,
    };
    rec.execs.set(id, ex);
    rec.proc.stdin!.write(frame);
    ex.timer = setTimeout(() => {
      ex.timedOut = true;
      void this.killExecTree(rec, ex);
    }, v.timeoutMs);
    const handle: ExecHandle = {
      id: `${sandboxId}:${id}`,
      sandboxId,
      done,
      writeStdin: (data) => this.writeStdin(rec, ex, Buffer.from(data)),
      closeStdin: () => this.closeStdin(rec, ex),
      signal: (name) => this.signalExec(rec, ex, name),
      interrupt: () => this.interruptExec(rec, ex),
      kill: () => this.killExecTree(rec, ex),
    };
    if (request.signal) {
      if (request.signal.aborted) handle.interrupt();
      else request.signal.addEventListener('abort', () => handle.interrupt(), { once: true });
    }
    await started;
    if (stdinData !== undefined) {
      void this.writeStdin(rec, ex, stdinData)
        .catch(() => undefined)
        .finally(() => this.closeStdin(rec, ex));
    } else if (!request.openStdin) {
      this.closeStdin(rec, ex);
    }
    return handle;
  }

  async run(sandboxId: string, request: ExecRequest): Promise<ExecResult> {
    const handle = await this.exec(sandboxId, request);
    return handle.done;
  }

  private writeStdin(rec: SandboxRecord, ex: ExecState, data: Buffer): Promise<void> {
    if (ex.ended)
      return Promise.reject(new PalisadeError('EXEC_FAILED', 'the command has already ended'));
    if (ex.stdinClosed)
      return Promise.reject(new PalisadeError('INVALID_ARGUMENT', 'stdin is already closed'));
    if (data.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      ex.stdinQueue.push({ data, resolve, reject, bytesLeftToAck: data.length });
      this.pumpStdin(rec, ex);
    });
  }

  /** Sends queued stdin within the agent's window; the agent acknowledges what the command consumed. */
  private pumpStdin(rec: SandboxRecord, ex: ExecState): void {
    for (const pending of ex.stdinQueue) {
      while (pending.data.length > 0 && ex.stdinInflight < STDIN_WINDOW) {
        const n = Math.min(STDIN_CHUNK, STDIN_WINDOW - ex.stdinInflight, pending.data.length);
        rec.proc.stdin!.write(encodeFrame(FrameType.Stdin, ex.id, pending.data.subarray(0, n)));
        pending.data = pending.data.subarray(n);
        ex.stdinInflight += n;
      }
      if (pending.data.length > 0) return;
    }
  }

  private onStdinAck(rec: SandboxRecord, ex: ExecState, n: number): void {
    ex.stdinInflight = Math.max(0, ex.stdinInflight - n);
    let left = n;
    while (left > 0 && ex.stdinQueue.length > 0) {
      const head = ex.stdinQueue[0]!;
      const sent = head.bytesLeftToAck - head.data.length;
      const take = Math.min(left, sent);
      head.bytesLeftToAck -= take;
      left -= take;
      if (head.bytesLeftToAck === 0) {
        ex.stdinQueue.shift();
        head.resolve();
      } else break;
    }
    this.pumpStdin(rec, ex);
    if (ex.stdinClosed && ex.stdinQueue.length === 0)
      rec.proc.stdin!.write(encodeFrame(FrameType.StdinClose, ex.id));
  }

  private closeStdin(rec: SandboxRecord, ex: ExecState): void {
    if (ex.stdinClosed || ex.ended) return;
    ex.stdinClosed = true;
    if (ex.stdinQueue.length === 0) rec.proc.stdin!.write(encodeFrame(FrameType.StdinClose, ex.id));
  }

  private signalExec(rec: SandboxRecord, ex: ExecState, name: string): void {
    const n = SIGNAL_NUMBERS[name];
    if (n === undefined)
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `unsupported signal ${name}; use SIGINT, SIGTERM, SIGKILL, SIGHUP or SIGQUIT`,
      );
    if (ex.ended) return;
    const body = Buffer.alloc(4);
    body.writeUInt32LE(n, 0);
    rec.proc.stdin!.write(encodeFrame(FrameType.Signal, ex.id, body));
  }

  private interruptExec(rec: SandboxRecord, ex: ExecState): void {
    if (ex.ended || ex.interrupted) return;
    ex.interrupted = true;
    this.signalExec(rec, ex, 'SIGINT');
    ex.graceTimer = setTimeout(() => void this.killExecTree(rec, ex), INTERRUPT_GRACE_MS);
  }

  /** Kills everything the exec started: its cgroup when limits are enforced, else its process group. */
  private async killExecTree(rec: SandboxRecord, ex: ExecState): Promise<void> {
    // Also after the main process ended: what it left running (e.g. `server &`) lives on in
    // the exec's cgroup until killed here or the sandbox is destroyed.
    if (rec.cgroup) {
      if (rec.info.state === 'terminated') return;
      await rec.cgroup.killExec(ex.name).catch(() => undefined);
    } else if (!ex.ended) this.signalExec(rec, ex, 'SIGKILL');
  }

  async destroy(sandboxId: string, reason = 'destroyed by request'): Promise<void> {
    assertSandboxId(sandboxId);
    const rec = this.sandboxes.get(sandboxId);
    if (!rec) throw new PalisadeError('SANDBOX_NOT_FOUND', `sandbox ${sandboxId} does not exist`);
    if (rec.info.state === 'terminated') return;
    this.setState(rec, 'terminated', reason);
    const err = new PalisadeError(
      'SANDBOX_NOT_RUNNING',
      `sandbox ${sandboxId} was destroyed while the command ran`,
    );
    for (const ex of [...rec.execs.values()]) this.failExec(rec, ex, err);
    // A frozen cgroup cannot die: thaw first. Then kill every process (cgroup), and the bwrap
    // parent, whose death takes pid 1 and with it the whole pid namespace.
    await this.stopProcesses(rec);
    await rec.releaseNetwork?.().catch(() => undefined);
    if (rec.cgroup) await rec.cgroup.remove();
    if (rec.ownsWorkspace) await this.pool.remove(sandboxId, { uid: rec.info.hostUid });
    this.sandboxes.delete(sandboxId);
    this.usedSlots.delete(rec.slot);
    this.refillWarm();
  }

  /**
   * Kills the sandbox's pid 1 first, so that the kernel kills everything else in the pid
   * namespace and bwrap (its parent) reaps it and exits: no zombie is left for the host's init.
   * The cgroup kill afterwards catches anything that could still be there.
   */
  private async stopProcesses(rec: SandboxRecord): Promise<void> {
    if (rec.cgroup) await rec.cgroup.thaw().catch(() => undefined);
    if (rec.agentHostPid !== undefined) {
      try {
        process.kill(rec.agentHostPid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    const exited = await Promise.race([
      rec.exited.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), 2000)),
    ]);
    if (!exited) {
      if (rec.cgroup) await rec.cgroup.killAll().catch(() => undefined);
      rec.proc.kill('SIGKILL');
      await rec.exited;
    }
    if (rec.cgroup) await rec.cgroup.killAll().catch(() => undefined);
  }

  async pause(sandboxId: string): Promise<void> {
    const rec = this.requireRunning(sandboxId);
    if (!rec.cgroup)
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        'pause needs the freezer cgroup, which is not enforced on this engine (cgroups: optional)',
      );
    await rec.cgroup.freeze();
    this.setState(rec, 'paused', 'paused by request');
  }

  async resume(sandboxId: string): Promise<void> {
    assertSandboxId(sandboxId);
    const rec = this.sandboxes.get(sandboxId);
    if (!rec) throw new PalisadeError('SANDBOX_NOT_FOUND', `sandbox ${sandboxId} does not exist`);
    if (rec.info.state !== 'paused')
      throw new PalisadeError(
        'SANDBOX_NOT_RUNNING',
        `sandbox ${sandboxId} is ${rec.info.state}, not paused`,
      );
    await rec.cgroup!.thaw();
    this.setState(rec, 'running', 'resumed');
  }

  async stats(sandboxId: string): Promise<SandboxStats> {
    assertSandboxId(sandboxId);
    const rec = this.sandboxes.get(sandboxId);
    if (!rec) throw new PalisadeError('SANDBOX_NOT_FOUND', `sandbox ${sandboxId} does not exist`);
    const cg = rec.cgroup?.stats();
    const disk = rec.ownsWorkspace
      ? await this.pool.usage({ uid: rec.info.hostUid }).catch(() => undefined)
      : undefined;
    return {
      memoryBytes: cg?.memoryBytes ?? 0,
      memoryLimitBytes: cg?.memoryLimitBytes ?? rec.info.limits.memoryBytes,
      pids: cg?.pids ?? 0,
      cpuUsageNs: cg?.cpuUsageNs ?? 0,
      diskBytes: disk?.usedBytes ?? null,
      diskLimitBytes: disk?.limitBytes ?? null,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(
      [...this.sandboxes.keys()].map((id) =>
        this.destroy(id, 'engine shut down').catch(() => undefined),
      ),
    );
    await this.refilling;
    for (const entry of this.warm.splice(0)) {
      const made = await entry.workspace.then(
        () => true,
        () => false,
      );
      if (made) await this.pool.remove(entry.id, { uid: entry.hostUid }).catch(() => undefined);
      this.usedSlots.delete(entry.slot);
    }
    await this.pool.close();
    this.cgroups?.removePrefixIfEmpty();
    releaseEngineLock(this.lockFile);
  }
}

/**
 * One engine per data directory: the reaper kills every process in the engine's uid range and
 * every cgroup under its prefix, so two engines sharing them would destroy each other's sandboxes.
 */
function acquireEngineLock(dataDir: string): string {
  const file = join(dataDir, 'engine.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: 'wx', mode: 0o600 });
      return file;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number(readFileSync(file, 'utf8').trim());
      if (Number.isInteger(owner) && owner > 0 && (owner === process.pid || isAlive(owner))) {
        throw new PalisadeError(
          'CONFLICT',
          `another Palisade engine (pid ${owner}) is using ${dataDir}; stop it or use a different data directory`,
        );
      }
      rmSync(file, { force: true }); // stale lock of a crashed engine
    }
  }
  throw new PalisadeError('CONFLICT', `cannot lock ${dataDir}`);
}

/** Sandbox uids are nobody on the host: every directory above dataDir must let others pass through. */
function assertTraversable(dataDir: string): void {
  let dir = dataDir;
  for (;;) {
    const parent = dirname(dir);
    if (parent === dir) return;
    dir = parent;
    if ((statSync(dir).mode & 0o001) === 0) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `data directory ${dataDir} is not reachable by sandbox users because ${dir} is not searchable by others; run chmod o+x ${dir} or choose another data directory`,
      );
    }
  }
}

function releaseEngineLock(file: string): void {
  try {
    if (readFileSync(file, 'utf8').trim() === String(process.pid)) rmSync(file, { force: true });
  } catch {
    // already gone
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function findBwrap(configured: string): string {
  if (configured.includes('/')) return configured;
  for (const dir of ['/usr/bin', '/usr/local/bin', '/bin'])
    if (existsSync(join(dir, configured))) return join(dir, configured);
  return configured;
}

function normaliseAllowedMount(m: AllowedMount): AllowedMount {
  if (!m || typeof m.source !== 'string' || !isAbsolute(m.source)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'allowedMounts entries need an absolute source path',
    );
  }
  let source: string;
  try {
    source = realpathSync(m.source);
  } catch {
    throw new PalisadeError('INVALID_ARGUMENT', `allowedMounts source ${m.source} does not exist`);
  }
  return {
    source,
    target:
      m.target === undefined ? source : normaliseSandboxPath(m.target, 'allowedMounts target'),
    writable: m.writable === true,
  };
}

/** Absolute, normalised path inside the sandbox; `..` cannot climb above `/`. */
export function normaliseSandboxPath(path: unknown, what: string): string {
  if (typeof path !== 'string' || path.length === 0 || path.includes('\0')) {
    throw new PalisadeError('INVALID_PATH', `${what} must be a non-empty path without NUL bytes`);
  }
  // '..' is refused outright rather than resolved: a caller that needs it is confused, and
  // the kernel (not this string) confines whatever path is used inside the sandbox.
  if (path.split('/').includes('..')) {
    throw new PalisadeError(
      'INVALID_PATH',
      `${what} ${JSON.stringify(path.slice(0, 200))} must not contain '..'; give an absolute path inside the sandbox or one relative to /workspace`,
    );
  }
  const absolute = path.startsWith('/') ? path : posix.join(WORKSPACE, path);
  const normal = posix.normalize(absolute);
  if (!normal.startsWith('/')) {
    throw new PalisadeError(
      'INVALID_PATH',
      `${what} ${JSON.stringify(path)} is not a valid sandbox path`,
    );
  }
  return normal.length > 1 && normal.endsWith('/') ? normal.slice(0, -1) : normal;
}

const LABEL_KEY = /^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$/;
const LABEL_VALUE = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$|^$/;

export function validateLabels(labels: unknown): Record<string, string> {
  if (labels === undefined) return {};
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) {
    throw new PalisadeError('INVALID_ARGUMENT', 'labels must be an object of key: value strings');
  }
  const entries = Object.entries(labels as Record<string, unknown>);
  if (entries.length > 32) throw new PalisadeError('INVALID_ARGUMENT', 'at most 32 labels');
  const out: Record<string, string> = {};
  for (const [k, v] of entries) {
    if (!LABEL_KEY.test(k)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `invalid label key ${JSON.stringify(k.slice(0, 64))}: use 1-63 of a-z 0-9 . _ / - starting and ending with a letter or digit`,
      );
    }
    if (typeof v !== 'string' || !LABEL_VALUE.test(v)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `invalid value for label ${k}: use up to 63 of A-Z a-z 0-9 . _ - starting and ending with a letter or digit`,
      );
    }
    out[k] = v;
  }
  return out;
}
