import { randomBytes } from 'node:crypto';
import type { AuditLog } from '../audit/index.js';
import { PalisadeError } from '../errors/index.js';

export interface ApprovalsConfig {
  /** An approval not decided within this long is denied (expired). @default 5 min */
  timeoutMs: number;
  /** Pending approvals per tenant; more asks are refused with 403 QUOTA_EXCEEDED. @default 100 */
  maxPendingPerTenant: number;
  /** Pending approvals on the whole server. @default 1000 */
  maxPendingGlobal: number;
  /**
   * How long a decided approval's outcome (id, tenant, status, who) is remembered, only so that
   * a late or concurrent decision gets 409 CONFLICT naming the winner instead of 404. @default 60 s
   */
  decidedRetentionMs: number;
  /** Most decided outcomes remembered (oldest forgotten first). @default 1000 */
  maxDecidedRetained: number;
  /**
   * MCP over HTTP (/mcp): how long a tool call whose client sent a progress token waits for a
   * human, sending `notifications/progress`, before it returns a pending result with the
   * approval id instead. 1 = never wait (always the pending result). @default 5 min
   */
  mcpWaitMs: number;
  /** MCP: interval of `notifications/progress` while a tool call waits or runs. @default 5 s */
  mcpProgressIntervalMs: number;
}

export const DEFAULT_APPROVALS_CONFIG: ApprovalsConfig = {
  timeoutMs: 5 * 60_000,
  maxPendingPerTenant: 100,
  maxPendingGlobal: 1000,
  decidedRetentionMs: 60_000,
  maxDecidedRetained: 1000,
  mcpWaitMs: 5 * 60_000,
  mcpProgressIntervalMs: 5_000,
};

export type ApprovalStatus = 'pending' | 'approved' | 'denied' | 'expired' | 'cancelled';

export interface ApprovalView {
  id: string;
  sandboxId: string;
  /** The waiting exec; null for a file action. */
  execId: string | null;
  /** The policy tool asked about: `Bash` for execs; `Read`, `Write`, `Edit`, `LS`, `Glob` for files. */
  tool: string;
  /** What will run or happen: the command, or a file action such as `Write /workspace/a.txt`. */
  command: string;
  /** The sandbox path a file action is about; null for execs. */
  path: string | null;
  cwd: string | null;
  /** Why the policy asked (the rule that matched). */
  policyReason: string;
  /** API key id that ran the command. */
  requestedBy: string;
  createdAt: string;
  expiresAt: string;
  status: ApprovalStatus;
  decidedBy: string | null;
  decisionReason: string | null;
  decidedAt: string | null;
}

/** What the waiting exec learns. */
export interface ApprovalOutcome {
  status: Exclude<ApprovalStatus, 'pending'>;
  decidedBy: string | null;
  reason: string | null;
}

export interface ApprovalEvent {
  type: 'approval.pending' | 'approval.resolved';
  tenant: string;
  approval: ApprovalView;
}

export interface ApprovalRequest {
  tenant: string;
  sandboxId: string;
  /** The waiting exec (exec approvals). */
  execId?: string;
  keyId: string;
  /** The command, or a one-line description of the file action. */
  command: string;
  /** @default 'Bash' */
  tool?: string;
  /** The sandbox path of a file action. */
  path?: string;
  cwd?: string;
  policyReason: string;
  /** Aborting cancels the approval (client gone, exec interrupted). */
  signal?: AbortSignal;
}

interface Pending {
  view: ApprovalView;
  tenant: string;
  resolve: (outcome: ApprovalOutcome) => void;
  timer: NodeJS.Timeout;
  detachSignal: () => void;
}

interface Decided {
  tenant: string;
  status: Exclude<ApprovalStatus, 'pending'>;
  decidedBy: string | null;
  at: number;
}

const APPROVAL_ID_RE = /^ap-[a-z2-7]{20}$/;
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
const MAX_REASON_CHARS = 1024;
const MAX_SHOWN_CHARS = 4096;

const clip = (text: string): string =>
  text.length > MAX_SHOWN_CHARS ? `${text.slice(0, MAX_SHOWN_CHARS)}…` : text;

function newApprovalId(): string {
  const bytes = randomBytes(20);
  let id = 'ap-';
  for (let i = 0; i < 20; i++) id += BASE32[bytes[i]! & 31];
  return id;
}

const notFound = (id: string) =>
  new PalisadeError(
    'NOT_FOUND',
    `No pending approval ${id.slice(0, 40)} for your tenant. List pending approvals with GET /v1/approvals.`,
  );

/**
 * Human approvals for actions the permission policy marks "ask". All state is in memory and
 * bounded: pending approvals per tenant and globally; each has a timer and is removed the moment
 * it resolves (approved, denied, expired or cancelled). Exactly one resolution wins: the first
 * one removes the entry synchronously, so every later attempt sees a decided outcome (409). The
 * audit log, not memory, is the lasting record.
 */
export class ApprovalService {
  readonly #audit: AuditLog;
  readonly #config: ApprovalsConfig;
  readonly #pending = new Map<string, Pending>();
  readonly #pendingPerTenant = new Map<string, number>();
  readonly #decided = new Map<string, Decided>();
  readonly #listeners = new Set<(event: ApprovalEvent) => void>();

  constructor(options: { audit: AuditLog; config: ApprovalsConfig }) {
    this.#audit = options.audit;
    this.#config = options.config;
  }

  get config(): Readonly<ApprovalsConfig> {
    return this.#config;
  }

  /** Pending approvals and remembered decided outcomes (after evicting expired ones). */
  sizes(): { pending: number; decided: number; tenants: number; listeners: number } {
    this.sweep();
    return {
      pending: this.#pending.size,
      decided: this.#decided.size,
      tenants: this.#pendingPerTenant.size,
      listeners: this.#listeners.size,
    };
  }

  /** Announces new and resolved approvals (the SSE feed and WebSocket streams). */
  subscribe(listener: (event: ApprovalEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #emit(event: ApprovalEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event);
      } catch {
        // A broken subscriber must not stop the decision or the other subscribers.
      }
    }
  }

  /**
   * Registers a pending approval and returns its view and the outcome promise (never rejects).
   * Throws QUOTA_EXCEEDED when the tenant or the server has too many pending approvals.
   */
  async request(
    input: ApprovalRequest,
  ): Promise<{ view: ApprovalView; outcome: Promise<ApprovalOutcome> }> {
    if (input.signal?.aborted) {
      throw new PalisadeError('CONFLICT', 'The request was cancelled before approval was asked.');
    }
    const perTenant = this.#pendingPerTenant.get(input.tenant) ?? 0;
    if (perTenant >= this.#config.maxPendingPerTenant) {
      throw new PalisadeError(
        'QUOTA_EXCEEDED',
        `Your tenant already has ${perTenant} commands waiting for approval, the maximum; approve or deny some (GET /v1/approvals) and retry.`,
      );
    }
    if (this.#pending.size >= this.#config.maxPendingGlobal) {
      throw new PalisadeError(
        'QUOTA_EXCEEDED',
        'The server has the maximum number of commands waiting for approval; retry after some are decided.',
      );
    }
    const now = Date.now();
    const view: ApprovalView = {
      id: newApprovalId(),
      sandboxId: input.sandboxId,
      execId: input.execId ?? null,
      tool: input.tool ?? 'Bash',
      command: clip(input.command),
      path: input.path === undefined ? null : clip(input.path),
      cwd: input.cwd ?? null,
      policyReason: input.policyReason,
      requestedBy: input.keyId,
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + this.#config.timeoutMs).toISOString(),
      status: 'pending',
      decidedBy: null,
      decisionReason: null,
      decidedAt: null,
    };
    let resolve!: (outcome: ApprovalOutcome) => void;
    const outcome = new Promise<ApprovalOutcome>((r) => (resolve = r));
    const timer = setTimeout(() => {
      this.#resolve(view.id, 'expired', null, `not decided within ${this.#timeoutText()}`);
    }, this.#config.timeoutMs);
    timer.unref();
    const onAbort = () =>
      this.#resolve(
        view.id,
        'cancelled',
        null,
        view.execId === null
          ? 'the request was cancelled (client disconnected)'
          : 'the exec was cancelled',
      );
    input.signal?.addEventListener('abort', onAbort, { once: true });
    this.#pending.set(view.id, {
      view,
      tenant: input.tenant,
      resolve,
      timer,
      detachSignal: () => input.signal?.removeEventListener('abort', onAbort),
    });
    this.#pendingPerTenant.set(input.tenant, perTenant + 1);
    await this.#audit
      .append({
        type: 'approval.request',
        tenant: input.tenant,
        sandboxId: input.sandboxId,
        actor: input.keyId,
        data: {
          approvalId: view.id,
          execId: view.execId,
          tool: view.tool,
          command: input.command,
          ...(input.path !== undefined ? { path: input.path } : {}),
          cwd: view.cwd,
          policyReason: input.policyReason,
          expiresAt: view.expiresAt,
        },
      })
      .catch((err: unknown) => {
        // Fail closed: an approval that cannot be recorded is not offered to anyone.
        this.#resolve(view.id, 'cancelled', null, 'the audit log could not record it');
        throw err;
      });
    if (this.#pending.has(view.id)) {
      this.#emit({ type: 'approval.pending', tenant: input.tenant, approval: { ...view } });
    }
    return { view: { ...view }, outcome };
  }

  #timeoutText(): string {
    const s = this.#config.timeoutMs / 1000;
    return s >= 1 ? `${Math.round(s)} s` : `${this.#config.timeoutMs} ms`;
  }

  /**
   * The one place an approval leaves the pending state. Synchronous up to the audit append, so
   * of concurrent resolutions exactly one finds the entry; it returns undefined for the others.
   */
  #resolve(
    id: string,
    status: Exclude<ApprovalStatus, 'pending'>,
    decidedBy: string | null,
    reason: string | null,
  ): { view: ApprovalView; audited: Promise<unknown> } | undefined {
    const entry = this.#pending.get(id);
    if (!entry) return undefined;
    this.#pending.delete(id);
    clearTimeout(entry.timer);
    entry.detachSignal();
    const left = (this.#pendingPerTenant.get(entry.tenant) ?? 1) - 1;
    if (left <= 0) this.#pendingPerTenant.delete(entry.tenant);
    else this.#pendingPerTenant.set(entry.tenant, left);
    const now = Date.now();
    this.#remember(id, { tenant: entry.tenant, status, decidedBy, at: now });
    const view: ApprovalView = {
      ...entry.view,
      status,
      decidedBy,
      decisionReason: reason,
      decidedAt: new Date(now).toISOString(),
    };
    entry.resolve({ status, decidedBy, reason });
    this.#emit({ type: 'approval.resolved', tenant: entry.tenant, approval: view });
    const audited = this.#audit
      .append({
        type: `approval.${status}`,
        tenant: entry.tenant,
        sandboxId: view.sandboxId,
        actor: decidedBy ?? 'system',
        data: {
          approvalId: id,
          execId: view.execId,
          tool: view.tool,
          ...(view.path !== null ? { path: view.path } : {}),
          reason,
        },
      })
      .catch(() => undefined);
    return { view, audited };
  }

  #remember(id: string, decided: Decided): void {
    this.#decided.set(id, decided);
    while (this.#decided.size > this.#config.maxDecidedRetained) {
      const oldest = this.#decided.keys().next();
      if (oldest.done) break;
      this.#decided.delete(oldest.value);
    }
  }

  /** Forgets decided outcomes past their retention. */
  sweep(now = Date.now()): void {
    for (const [id, d] of this.#decided) {
      if (now - d.at < this.#config.decidedRetentionMs) break;
      this.#decided.delete(id);
    }
  }

  list(tenant: string): ApprovalView[] {
    this.sweep();
    const out: ApprovalView[] = [];
    for (const p of this.#pending.values()) if (p.tenant === tenant) out.push({ ...p.view });
    return out;
  }

  get(tenant: string, id: string): ApprovalView {
    const p = APPROVAL_ID_RE.test(id) ? this.#pending.get(id) : undefined;
    if (!p || p.tenant !== tenant) throw notFound(id);
    return { ...p.view };
  }

  /**
   * Approve or deny. 404 for an unknown id or another tenant's; 409 CONFLICT when it was already
   * decided, expired or cancelled; 403 when a key tries to approve its own request.
   */
  async decide(
    decider: { keyId: string; tenant: string },
    id: string,
    decision: 'approve' | 'deny',
    reason?: string,
  ): Promise<ApprovalView> {
    this.sweep();
    const entry = this.#pending.get(id);
    if (!entry || entry.tenant !== decider.tenant) {
      const decided = this.#decided.get(id);
      if (decided && decided.tenant === decider.tenant) {
        const by = decided.decidedBy ? ` by key ${decided.decidedBy}` : '';
        throw new PalisadeError(
          'CONFLICT',
          `Approval ${id} was already ${decided.status}${by}; your ${decision} had no effect.`,
          { approvalId: id, status: decided.status, decidedBy: decided.decidedBy },
        );
      }
      throw notFound(id);
    }
    if (decision === 'approve' && entry.view.requestedBy === decider.keyId) {
      throw new PalisadeError(
        'FORBIDDEN',
        'A key cannot approve a command it asked to run itself; another key with the approvals:write (or admin) scope must decide.',
        { approvalId: id },
      );
    }
    const text = reason === undefined ? null : reason.slice(0, MAX_REASON_CHARS);
    const resolved = this.#resolve(
      id,
      decision === 'approve' ? 'approved' : 'denied',
      decider.keyId,
      text,
    );
    if (!resolved) throw notFound(id);
    await resolved.audited;
    return resolved.view;
  }

  /** Resolves every pending approval of a sandbox as cancelled (sandbox destroyed or ended). */
  cancelSandbox(sandboxId: string, why: string): number {
    let n = 0;
    for (const [id, p] of [...this.#pending]) {
      if (p.view.sandboxId !== sandboxId) continue;
      if (this.#resolve(id, 'cancelled', null, why)) n++;
    }
    return n;
  }

  /** Cancels one approval (e.g. its background exec was interrupted). */
  cancel(id: string, why: string): boolean {
    return this.#resolve(id, 'cancelled', null, why) !== undefined;
  }

  /** Cancels everything (server shutdown). */
  close(): void {
    for (const id of [...this.#pending.keys()])
      this.#resolve(id, 'cancelled', null, 'server shut down');
    this.#listeners.clear();
  }
}

/** The error a waiting exec gets for an outcome other than approved. */
export function outcomeError(
  approvalId: string,
  outcome: ApprovalOutcome,
  timeoutMs: number,
  what: 'command' | 'file action' = 'command',
): PalisadeError {
  const notDone = what === 'command' ? 'It was not run.' : 'Nothing was changed or read.';
  const details = {
    approvalId,
    decision: 'deny',
    outcome: outcome.status,
    ...(outcome.reason !== null ? { reason: outcome.reason } : {}),
    ...(outcome.decidedBy !== null ? { decidedBy: outcome.decidedBy } : {}),
  };
  if (outcome.status === 'denied') {
    return new PalisadeError(
      'POLICY_DENIED',
      `A human denied this ${what} (approval ${approvalId})${outcome.reason ? `: ${outcome.reason}` : ''}. ${notDone}`,
      details,
    );
  }
  if (outcome.status === 'expired') {
    return new PalisadeError(
      'POLICY_DENIED',
      `No one approved this ${what} within ${Math.max(1, Math.round(timeoutMs / 1000))} s (approval ${approvalId} expired), so ${what === 'command' ? 'it was not run' : 'nothing was done'}. Ask an approver to watch GET /v1/approvals/stream, or retry.`,
      details,
    );
  }
  return new PalisadeError(
    'CONFLICT',
    `The ${what} was not ${what === 'command' ? 'run' : 'done'}: its approval ${approvalId} was cancelled (${outcome.reason ?? 'cancelled'}).`,
    details,
  );
}
