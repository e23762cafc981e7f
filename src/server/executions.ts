import { randomBytes } from 'node:crypto';
import type { AuditLog } from '../audit/index.js';
import { PalisadeError } from '../errors/index.js';
import type { ExecHandle, ExecRequest, ExecResult, SandboxRuntime } from '../sandbox/types.js';
import { ChunkLog, type LogRead, type StreamName } from './chunk-log.js';
import type { ExecConfig } from './config.js';
import { outcomeError, type ApprovalService } from './approvals.js';
import { ExecSlots } from './exec-limits.js';
import { argvToShell, type ExecPolicy } from './policy-hook.js';
import { validateEnvSyntax } from './validate.js';

export interface ExecBody {
  command?: string;
  argv?: string[];
  cwd?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  stdin?: string;
  maxOutputBytes?: number;
  background?: boolean;
  encoding?: 'utf8' | 'base64';
}

export interface Caller {
  keyId: string;
  tenant: string;
}

export interface ExecView {
  id: string;
  sandboxId: string;
  /**
   * `pending`: waiting for a human approval (see `approvalId`); `denied`/`cancelled`: the
   * approval was denied, expired or cancelled and the command never ran.
   */
  status: 'pending' | 'running' | 'exited' | 'denied' | 'cancelled';
  /** The approval this exec waited for, if the policy asked. */
  approvalId: string | null;
  /** Why a pending exec did not run (denial reason, expiry, cancellation). */
  notRunReason: string | null;
  command: string;
  startedAt: string;
  endedAt: string | null;
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  interrupted: boolean;
  durationMs: number | null;
  logBytesDropped: number;
  /** Output was lost: more than the log keeps, or more than maxOutputBytes was produced. */
  truncated: boolean;
}

interface ExecRecord {
  id: string;
  sandboxId: string;
  tenant: string;
  command: string;
  startedAt: Date;
  endedAt: Date | null;
  result: Omit<ExecResult, 'stdout' | 'stderr'> | null;
  log: ChunkLog;
  /** Null while waiting for approval, and forever if the approval was not granted. */
  handle: ExecHandle | null;
  approvalId: string | null;
  notRun: { status: 'denied' | 'cancelled'; reason: string } | null;
}

/** What subscribers (WebSocket streams) see of every exec the API runs. */
export type ExecEvent =
  | { type: 'exec.start'; tenant: string; sandboxId: string; execId: string; background: boolean }
  | {
      type: 'exec.output';
      tenant: string;
      sandboxId: string;
      execId: string;
      stream: StreamName;
      data: Buffer;
    }
  | {
      type: 'exec.exit';
      tenant: string;
      sandboxId: string;
      execId: string;
      exitCode: number | null;
      signal: string | null;
      timedOut: boolean;
      interrupted: boolean;
      durationMs: number;
    }
  | {
      type: 'exec.not_run';
      tenant: string;
      sandboxId: string;
      execId: string;
      code: string;
      message: string;
    };

/** Finished background records older than this are forgotten (the audit log keeps the facts). */
const FINISHED_TTL_MS = 3_600_000;
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

export function newExecId(): string {
  const bytes = randomBytes(20);
  let id = 'ex-';
  for (let i = 0; i < 20; i++) id += BASE32[bytes[i]! & 31];
  return id;
}

/** A foreground exec waiting for a human approval (policy "ask"). */
export interface PendingApproval {
  approvalId: string;
  execId: string;
  /** When the approval expires (the exec is then not run). */
  expiresAt: string;
  /** Why the policy asked (the rule that matched). */
  policyReason: string;
}

export interface StreamCallbacks {
  onStart?: (execId: string) => void;
  /** Called once the exec waits for a human approval (policy "ask"), before it can start. */
  onApprovalPending?: (pending: PendingApproval) => void;
  onChunk?: (stream: StreamName, data: Buffer) => void;
  signal?: AbortSignal;
}

/**
 * Runs execs through the engine after the policy check, records background executions with
 * bounded logs, and audits start and end. All state is bounded: at most `maxExecRecords`
 * records (oldest finished evicted first), `maxLogBytesPerExec` per log,
 * `maxRunningPerSandbox` running background execs per sandbox, and `maxRunningPerTenant` /
 * `maxRunningPerKey` running commands (foreground and background) per tenant and key.
 */
export class ExecService {
  readonly #runtime: SandboxRuntime;
  readonly #audit: AuditLog;
  readonly #config: ExecConfig;
  readonly #policyFor: (sandboxId: string) => ExecPolicy | undefined;
  readonly #records = new Map<string, ExecRecord>();
  /** Cancels the approval wait of pending background execs. */
  readonly #cancels = new Map<string, AbortController>();
  readonly #approvals: ApprovalService | undefined;
  readonly #onEvent: (event: ExecEvent) => void;
  readonly #slots: ExecSlots;

  constructor(options: {
    runtime: SandboxRuntime;
    audit: AuditLog;
    config: ExecConfig;
    /** The policy that applies to a sandbox (operator layers plus its own), if any. */
    policyFor?: (sandboxId: string) => ExecPolicy | undefined;
    /** Human approvals for "ask"; without it, ask fails closed with 403 POLICY_ASK. */
    approvals?: ApprovalService;
    /** Sees every exec's start, output and exit (must not throw or block). */
    onEvent?: (event: ExecEvent) => void;
  }) {
    this.#runtime = options.runtime;
    this.#audit = options.audit;
    this.#config = options.config;
    this.#policyFor = options.policyFor ?? (() => undefined);
    this.#approvals = options.approvals;
    this.#onEvent = options.onEvent ?? (() => undefined);
    this.#slots = new ExecSlots({
      maxRunningPerTenant: options.config.maxRunningPerTenant,
      maxRunningPerKey: options.config.maxRunningPerKey,
      maxStreamsPerKey: options.config.maxStreamsPerKey,
    });
  }

  /**
   * Takes one of the caller's streamed-exec slots (throws 429 EXEC_LIMIT_REACHED when all are
   * open); call the returned function when the stream ends.
   */
  acquireStream(caller: Caller): () => void {
    return this.#slots.acquireStream(caller);
  }

  /** Commands of a tenant running now (foreground and background). */
  runningForTenant(tenant: string): number {
    return this.#slots.runningForTenant(tenant);
  }

  #emit(event: ExecEvent): void {
    try {
      this.#onEvent(event);
    } catch {
      // Streaming is best effort; the exec and its audit trail do not depend on it.
    }
  }

  /**
   * Waits for a human decision; resolves if approved, throws the denial (403 POLICY_DENIED with
   * the reason, also for expiry) or cancellation otherwise.
   */
  async #awaitApproval(
    caller: Caller,
    sandboxId: string,
    execId: string,
    text: string,
    cwd: string | undefined,
    policyReason: string,
    signal: AbortSignal | undefined,
    onPending?: (pending: PendingApproval) => void,
  ): Promise<void> {
    const approvals = this.#approvals!;
    const { view, outcome } = await approvals.request({
      tenant: caller.tenant,
      sandboxId,
      execId,
      keyId: caller.keyId,
      command: text,
      ...(cwd !== undefined ? { cwd } : {}),
      policyReason,
      ...(signal ? { signal } : {}),
    });
    onPending?.({ approvalId: view.id, execId, expiresAt: view.expiresAt, policyReason });
    const result = await outcome;
    if (result.status !== 'approved') {
      throw outcomeError(view.id, result, approvals.config.timeoutMs);
    }
  }

  get recordCount(): number {
    return this.#records.size;
  }

  /** Validates the body and checks it against the policy; returns the engine request and its text. */
  async #prepare(
    caller: Caller,
    sandboxId: string,
    body: ExecBody,
  ): Promise<{ request: ExecRequest; text: string; ask: string | null }> {
    const hasArgv = body.argv !== undefined;
    const hasCommand = body.command !== undefined;
    if (hasArgv === hasCommand) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'Give exactly one of "command" (a shell string) or "argv" (no shell).',
      );
    }
    if (hasArgv && body.argv!.length === 0) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        '"argv" must name a program: give at least one element.',
      );
    }
    if (hasCommand && body.command!.length === 0) {
      throw new PalisadeError('INVALID_ARGUMENT', '"command" must not be empty.');
    }
    const env = validateEnvSyntax(body.env, 'env');
    const text = hasArgv ? argvToShell(body.argv!) : body.command!;
    const policy = this.#policyFor(sandboxId);
    let ask: string | null = null;
    if (policy) {
      const decision = await policy.decide({
        tool: 'Bash',
        command: text,
        ...(body.cwd ? { cwd: body.cwd } : {}),
      });
      await this.#audit.append({
        type: 'policy.decision',
        tenant: caller.tenant,
        sandboxId,
        actor: caller.keyId,
        data: { tool: 'Bash', command: text, decision: decision.decision, reason: decision.reason },
      });
      if (decision.decision === 'deny') {
        throw new PalisadeError(
          'POLICY_DENIED',
          `The permission policy denies this command: ${decision.reason}`,
          {
            decision: 'deny',
            reason: decision.reason,
          },
        );
      }
      if (decision.decision === 'ask' && this.#approvals) ask = decision.reason;
      else if (decision.decision === 'ask') {
        throw new PalisadeError(
          'POLICY_ASK',
          `The permission policy requires human approval for this command (${decision.reason}); approvals are not available in this version, so it was not run.`,
          { decision: 'ask', reason: decision.reason },
        );
      }
    }
    const timeoutMs = Math.min(
      body.timeoutMs ?? this.#config.defaultTimeoutMs,
      this.#config.maxTimeoutMs,
    );
    const maxOutputBytes = Math.min(
      body.maxOutputBytes ?? this.#config.defaultMaxOutputBytes,
      this.#config.maxOutputBytes,
    );
    const request: ExecRequest = {
      ...(hasArgv ? { argv: body.argv! } : { command: body.command! }),
      ...(body.cwd !== undefined ? { cwd: body.cwd } : {}),
      ...(Object.keys(env).length > 0 ? { env } : {}),
      ...(body.stdin !== undefined ? { stdin: body.stdin } : {}),
      timeoutMs,
      maxOutputBytes,
    };
    return { request, text, ask };
  }

  async #auditStart(
    caller: Caller,
    sandboxId: string,
    execId: string,
    text: string,
    body: ExecBody,
    background: boolean,
  ) {
    await this.#audit.append({
      type: 'exec.start',
      tenant: caller.tenant,
      sandboxId,
      actor: caller.keyId,
      data: {
        execId,
        command: text,
        form: body.argv ? 'argv' : 'shell',
        cwd: body.cwd ?? null,
        envNames: Object.keys(body.env ?? {}),
        background,
      },
    });
  }

  #auditEnd(
    caller: Caller,
    sandboxId: string,
    execId: string,
    result: Omit<ExecResult, 'stdout' | 'stderr'>,
  ) {
    return this.#audit.append({
      type: 'exec.end',
      tenant: caller.tenant,
      sandboxId,
      actor: caller.keyId,
      data: {
        execId,
        exitCode: result.exitCode,
        signal: result.signal,
        timedOut: result.timedOut,
        interrupted: result.interrupted,
        durationMs: result.durationMs,
      },
    });
  }

  /** Runs to completion; chunks are passed to `onChunk` in order, capped like the result. */
  async runForeground(
    caller: Caller,
    sandboxId: string,
    body: ExecBody,
    callbacks: StreamCallbacks = {},
  ) {
    const { request, text, ask } = await this.#prepare(caller, sandboxId, body);
    const execId = newExecId();
    if (ask !== null) {
      await this.#awaitApproval(
        caller,
        sandboxId,
        execId,
        text,
        body.cwd,
        ask,
        callbacks.signal,
        callbacks.onApprovalPending,
      );
    }
    const cap = request.maxOutputBytes!;
    const sent = { stdout: 0, stderr: 0 };
    const forward = (stream: StreamName) => (chunk: Buffer) => {
      const room = cap - sent[stream];
      if (room <= 0) return;
      const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
      sent[stream] += part.length;
      this.#emit({
        type: 'exec.output',
        tenant: caller.tenant,
        sandboxId,
        execId,
        stream,
        data: part,
      });
      callbacks.onChunk?.(stream, part);
    };
    // Taken after the approval: a command waiting for a human holds no engine resources.
    const release = this.#slots.acquireRunning(caller);
    try {
      await this.#auditStart(caller, sandboxId, execId, text, body, false);
      let handle: ExecHandle;
      try {
        handle = await this.#runtime.exec(sandboxId, {
          ...request,
          onStdout: forward('stdout'),
          onStderr: forward('stderr'),
          ...(callbacks.signal ? { signal: callbacks.signal } : {}),
        });
      } catch (err) {
        await this.#audit.append({
          type: 'exec.start_failed',
          tenant: caller.tenant,
          sandboxId,
          actor: caller.keyId,
          data: { execId, code: (err as { code?: string }).code ?? 'INTERNAL' },
        });
        throw err;
      }
      this.#emit({
        type: 'exec.start',
        tenant: caller.tenant,
        sandboxId,
        execId,
        background: false,
      });
      callbacks.onStart?.(execId);
      const result = await handle.done;
      release();
      this.#emitExit(caller.tenant, sandboxId, execId, result);
      await this.#auditEnd(caller, sandboxId, execId, result);
      return { execId, result };
    } finally {
      release();
    }
  }

  async startBackground(caller: Caller, sandboxId: string, body: ExecBody): Promise<ExecView> {
    let running = 0;
    for (const r of this.#records.values())
      if (r.sandboxId === sandboxId && r.endedAt === null) running++;
    if (running >= this.#config.maxRunningPerSandbox) {
      throw new PalisadeError(
        'SANDBOX_LIMIT_REACHED',
        `This sandbox already runs ${running} background commands, the maximum; wait for one to finish or interrupt it.`,
      );
    }
    this.#makeRoom();
    const { request, text, ask } = await this.#prepare(caller, sandboxId, body);
    const execId = newExecId();
    const log = new ChunkLog(this.#config.maxLogBytesPerExec);
    const record: ExecRecord = {
      id: execId,
      sandboxId,
      tenant: caller.tenant,
      command: text.length > 1024 ? `${text.slice(0, 1024)}…` : text,
      startedAt: new Date(),
      endedAt: null,
      result: null,
      log,
      handle: null,
      approvalId: null,
      notRun: null,
    };
    const start = async () => {
      const release = this.#slots.acquireRunning(caller);
      try {
        await this.#auditStart(caller, sandboxId, execId, text, body, true);
        record.handle = await this.#runtime.exec(sandboxId, {
          ...request,
          // The log keeps the output; the engine's copy would only duplicate it in memory.
          maxOutputBytes: Math.min(request.maxOutputBytes!, this.#config.maxLogBytesPerExec),
          onStdout: (chunk) => {
            log.push('stdout', chunk);
            this.#emit({
              type: 'exec.output',
              tenant: caller.tenant,
              sandboxId,
              execId,
              stream: 'stdout',
              data: chunk,
            });
          },
          onStderr: (chunk) => {
            log.push('stderr', chunk);
            this.#emit({
              type: 'exec.output',
              tenant: caller.tenant,
              sandboxId,
              execId,
              stream: 'stderr',
              data: chunk,
            });
          },
        });
      } catch (err) {
        release();
        throw err;
      }
      record.startedAt = new Date();
      this.#emit({
        type: 'exec.start',
        tenant: caller.tenant,
        sandboxId,
        execId,
        background: true,
      });
      void record.handle.done.then(
        async (result) => {
          release();
          const { stdout: _o, stderr: _e, ...meta } = result;
          record.result = meta;
          record.endedAt = new Date();
          this.#emitExit(caller.tenant, sandboxId, execId, meta);
          await this.#auditEnd(caller, sandboxId, execId, meta).catch(() => undefined);
        },
        () => {
          release();
          record.endedAt = new Date();
        },
      );
    };
    if (ask === null) {
      await start();
      this.#records.set(execId, record);
      return toView(record);
    }
    // The exec is recorded as pending now and starts only once a human approves it.
    const approvals = this.#approvals!;
    const cancel = new AbortController();
    const { view, outcome } = await approvals.request({
      tenant: caller.tenant,
      sandboxId,
      execId,
      keyId: caller.keyId,
      command: text,
      ...(body.cwd !== undefined ? { cwd: body.cwd } : {}),
      policyReason: ask,
      signal: cancel.signal,
    });
    record.approvalId = view.id;
    this.#cancels.set(execId, cancel);
    this.#records.set(execId, record);
    void outcome
      .then(async (result) => {
        if (result.status !== 'approved') {
          throw outcomeError(view.id, result, approvals.config.timeoutMs);
        }
        await start();
      })
      .catch((err: unknown) => {
        const code = (err as { code?: string }).code ?? 'INTERNAL';
        const message = err instanceof Error ? err.message : 'failed';
        record.endedAt = new Date();
        record.notRun = {
          status: code === 'POLICY_DENIED' ? 'denied' : 'cancelled',
          reason: message,
        };
        this.#emit({
          type: 'exec.not_run',
          tenant: caller.tenant,
          sandboxId,
          execId,
          code,
          message,
        });
      })
      .finally(() => this.#cancels.delete(execId));
    return toView(record);
  }

  #emitExit(
    tenant: string,
    sandboxId: string,
    execId: string,
    r: Omit<ExecResult, 'stdout' | 'stderr'>,
  ): void {
    this.#emit({
      type: 'exec.exit',
      tenant,
      sandboxId,
      execId,
      exitCode: r.exitCode,
      signal: r.signal,
      timedOut: r.timedOut,
      interrupted: r.interrupted,
      durationMs: r.durationMs,
    });
  }

  /** Evicts the oldest finished record when full; refuses if every record is still running. */
  #makeRoom(): void {
    if (this.#records.size < this.#config.maxExecRecords) return;
    for (const [id, r] of this.#records) {
      if (r.endedAt !== null) {
        this.#records.delete(id);
        return;
      }
    }
    throw new PalisadeError(
      'SANDBOX_LIMIT_REACHED',
      'The server is tracking the maximum number of running background commands; wait for some to finish.',
    );
  }

  #find(tenant: string, sandboxId: string, execId: string): ExecRecord {
    const r = this.#records.get(execId);
    if (!r || r.sandboxId !== sandboxId || r.tenant !== tenant) {
      throw new PalisadeError(
        'EXEC_NOT_FOUND',
        `No background execution ${execId} in sandbox ${sandboxId}; finished executions are kept for a limited time.`,
      );
    }
    return r;
  }

  get(tenant: string, sandboxId: string, execId: string): ExecView {
    return toView(this.#find(tenant, sandboxId, execId));
  }

  list(tenant: string, sandboxId: string): ExecView[] {
    const out: ExecView[] = [];
    for (const r of this.#records.values())
      if (r.sandboxId === sandboxId && r.tenant === tenant) out.push(toView(r));
    return out;
  }

  logs(
    tenant: string,
    sandboxId: string,
    execId: string,
    cursor: number,
    maxBytes: number,
  ): LogRead & { view: ExecView } {
    const r = this.#find(tenant, sandboxId, execId);
    return { ...r.log.read(cursor, maxBytes), view: toView(r) };
  }

  interrupt(tenant: string, sandboxId: string, execId: string): ExecView {
    const r = this.#find(tenant, sandboxId, execId);
    if (r.endedAt === null && r.handle) r.handle.interrupt();
    else if (r.endedAt === null) this.#cancels.get(execId)?.abort();
    return toView(r);
  }

  /** Kills and forgets every record of a sandbox (on destroy or purge). */
  forgetSandbox(sandboxId: string): void {
    for (const [id, r] of this.#records) {
      if (r.sandboxId !== sandboxId) continue;
      if (r.endedAt === null && r.handle) void r.handle.kill().catch(() => undefined);
      this.#records.delete(id);
    }
    // Waiting foreground and background execs of this sandbox can never run now.
    this.#approvals?.cancelSandbox(sandboxId, 'the sandbox ended');
  }

  /** Drops finished records past their time to live. */
  sweep(now = Date.now()): void {
    for (const [id, r] of this.#records) {
      if (r.endedAt !== null && now - r.endedAt.getTime() > FINISHED_TTL_MS)
        this.#records.delete(id);
    }
  }
}

function toView(r: ExecRecord): ExecView {
  return {
    id: r.id,
    sandboxId: r.sandboxId,
    status: r.notRun
      ? r.notRun.status
      : r.endedAt === null
        ? r.handle
          ? 'running'
          : 'pending'
        : 'exited',
    approvalId: r.approvalId,
    notRunReason: r.notRun?.reason ?? null,
    command: r.command,
    startedAt: r.startedAt.toISOString(),
    endedAt: r.endedAt ? r.endedAt.toISOString() : null,
    exitCode: r.result?.exitCode ?? null,
    signal: r.result?.signal ?? null,
    timedOut: r.result?.timedOut ?? false,
    interrupted: r.result?.interrupted ?? false,
    durationMs: r.result?.durationMs ?? null,
    logBytesDropped: r.log.droppedBytes,
    truncated:
      r.log.droppedBytes > 0 || Boolean(r.result?.stdoutTruncated || r.result?.stderrTruncated),
  };
}
