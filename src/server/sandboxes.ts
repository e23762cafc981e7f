import type { Kysely } from 'kysely';
import type { AuditLog } from '../audit/index.js';
import { PalisadeError } from '../errors/index.js';
import type {
  ResourceLimits,
  SandboxInfo,
  SandboxRuntime,
  SandboxState,
} from '../sandbox/types.js';
import { createPolicyEngine, parsePolicyObject, type PolicyLayer } from '../policy/index.js';
import type { Database, SandboxTable } from '../store/index.js';
import type { ExecPolicy } from './policy-hook.js';
import type { QuotaConfig } from './config.js';
import type { Caller, ExecService } from './executions.js';
import {
  matchesSelector,
  parseLabelSelector,
  validateEnvSyntax,
  validateLabels,
} from './validate.js';

export interface CreateSandboxBody {
  labels?: Record<string, string>;
  env?: Record<string, string>;
  limits?: Partial<ResourceLimits>;
  timeoutMs?: number;
  /** The sandbox's own permission policy layer ({permissions: …}); it can only tighten the operator's. */
  policy?: Record<string, unknown>;
}

export interface SandboxView {
  id: string;
  state: SandboxState;
  reason: string;
  labels: Record<string, string>;
  limits: Partial<ResourceLimits>;
  createdAt: string;
  updatedAt: string;
  expiresAt: string | null;
  endedAt: string | null;
  policy: Record<string, unknown> | null;
}

export interface ListFilter {
  state?: SandboxState;
  labelSelector?: string;
  limit?: number;
  cursor?: string;
}

const LIVE_STATES: SandboxState[] = ['pending', 'running', 'paused'];
const DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024;

const notFound = (id: string) =>
  new PalisadeError(
    'SANDBOX_NOT_FOUND',
    `No sandbox ${id}. List your sandboxes with GET /v1/sandboxes.`,
  );

/**
 * Sandbox lifecycle on top of the engine, with the durable record in the database: tenant
 * ownership (another tenant's sandbox is reported as not found), per-tenant quotas, expiry,
 * retention and reconciliation after a restart.
 */
export class SandboxService {
  readonly #runtime: SandboxRuntime;
  readonly #db: Kysely<Database>;
  readonly #audit: AuditLog;
  readonly #execs: ExecService;
  readonly #quotas: QuotaConfig;
  readonly #defaultTimeoutMs: number;
  readonly #maxTimeoutMs: number;
  /** Creates admitted but not yet recorded, per tenant, so concurrent creates cannot overshoot quotas. */
  readonly #reserved = new Map<string, { count: number; memory: number }>();
  /** Sandboxes this service is destroying, so the engine's state event is not audited twice. */
  readonly #destroying = new Set<string>();
  readonly #unsubscribe: () => void;
  readonly #policyLayers: PolicyLayer[];
  readonly #basePolicy: ExecPolicy | undefined;
  /** Policy engines of live sandboxes that have their own layer; removed when they end. */
  readonly #policies = new Map<string, ExecPolicy>();
  #writes: Promise<unknown> = Promise.resolve();

  constructor(options: {
    runtime: SandboxRuntime;
    db: Kysely<Database>;
    audit: AuditLog;
    execs: ExecService;
    quotas: QuotaConfig;
    defaultTimeoutMs: number;
    maxTimeoutMs: number;
    policyLayers?: PolicyLayer[];
    basePolicy?: ExecPolicy;
  }) {
    this.#policyLayers = options.policyLayers ?? [];
    this.#basePolicy = options.basePolicy;
    this.#runtime = options.runtime;
    this.#db = options.db;
    this.#audit = options.audit;
    this.#execs = options.execs;
    this.#quotas = options.quotas;
    this.#defaultTimeoutMs = options.defaultTimeoutMs;
    this.#maxTimeoutMs = options.maxTimeoutMs;
    this.#unsubscribe = this.#runtime.onStateChange((info) => {
      this.#writes = this.#writes.then(() => this.#onEngineState(info)).catch(() => undefined);
    });
  }

  /** The policy for execs in a sandbox: its own engine, else the operator's, else none. */
  policyFor(sandboxId: string): ExecPolicy | undefined {
    return this.#policies.get(sandboxId) ?? this.#basePolicy;
  }

  close(): void {
    this.#unsubscribe();
  }

  /** Waits for pending state-change writes (used on shutdown and by tests). */
  async settle(): Promise<void> {
    await this.#writes;
  }

  async #onEngineState(info: SandboxInfo): Promise<void> {
    const row = await this.#db
      .selectFrom('sandboxes')
      .selectAll()
      .where('id', '=', info.id)
      .executeTakeFirst();
    if (!row || (row.state === info.state && row.reason === info.reason)) return;
    if (row.state === 'terminated' || row.state === 'failed') return;
    const now = new Date().toISOString();
    const ended = info.state === 'terminated' || info.state === 'failed';
    await this.#db
      .updateTable('sandboxes')
      .set({
        state: info.state,
        reason: info.reason,
        updated_at: now,
        ...(ended ? { ended_at: now } : {}),
      })
      .where('id', '=', info.id)
      .execute();
    if (ended && !this.#destroying.has(info.id)) {
      this.#execs.forgetSandbox(info.id);
      this.#policies.delete(info.id);
      await this.#audit.append({
        type: 'sandbox.ended',
        tenant: row.tenant,
        sandboxId: info.id,
        actor: 'system',
        data: { state: info.state, reason: info.reason },
      });
    }
  }

  async create(caller: Caller, body: CreateSandboxBody): Promise<SandboxView> {
    const labels = validateLabels(body.labels);
    const env = validateEnvSyntax(body.env, 'env');
    const timeoutMs = body.timeoutMs ?? this.#defaultTimeoutMs;
    if (timeoutMs > this.#maxTimeoutMs) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `timeoutMs may be at most ${this.#maxTimeoutMs} ms.`,
      );
    }
    let policy: ExecPolicy | undefined;
    if (body.policy !== undefined) {
      if (body.policy.network !== undefined) {
        throw new PalisadeError(
          'INVALID_POLICY',
          'Network policies are not accepted by the API yet (the egress gateway is not connected), and sandboxes have no network; remove "network" from the policy.',
        );
      }
      const layer = parsePolicyObject(
        body.policy,
        `api:tenant/${caller.tenant}/sandbox`,
        'sandbox',
      );
      policy = await createPolicyEngine({ layers: [...this.#policyLayers, layer] });
    }
    const memory = body.limits?.memoryBytes ?? DEFAULT_MEMORY_BYTES;
    await this.#reserve(caller.tenant, memory);
    try {
      let info: SandboxInfo;
      try {
        info = await this.#runtime.create({
          labels,
          ...(Object.keys(env).length > 0 ? { env } : {}),
          ...(body.limits ? { limits: body.limits } : {}),
        });
      } catch (err) {
        await this.#audit.append({
          type: 'sandbox.create_failed',
          tenant: caller.tenant,
          actor: caller.keyId,
          data: { code: (err as { code?: string }).code ?? 'INTERNAL' },
        });
        throw err;
      }
      const now = new Date();
      const row: SandboxTable = {
        id: info.id,
        tenant: caller.tenant,
        state: info.state,
        reason: info.reason,
        labels: JSON.stringify(labels),
        limits: JSON.stringify(info.limits),
        memory_bytes: info.limits.memoryBytes,
        created_at: now.toISOString(),
        updated_at: now.toISOString(),
        expires_at: new Date(now.getTime() + timeoutMs).toISOString(),
        ended_at: null,
        policy: body.policy !== undefined ? JSON.stringify(body.policy) : null,
      };
      if (policy) this.#policies.set(info.id, policy);
      await this.#db.insertInto('sandboxes').values(row).execute();
      await this.#audit.append({
        type: 'sandbox.create',
        tenant: caller.tenant,
        sandboxId: info.id,
        actor: caller.keyId,
        data: {
          labels,
          limits: info.limits,
          envNames: Object.keys(env),
          expiresAt: row.expires_at,
          policy: body.policy ?? null,
        },
      });
      return toView(row);
    } finally {
      this.#release(caller.tenant, memory);
    }
  }

  async #reserve(tenant: string, memory: number): Promise<void> {
    const live = await this.#db
      .selectFrom('sandboxes')
      .select((eb) => [
        eb.fn.countAll<number>().as('n'),
        eb.fn.sum<number>('memory_bytes').as('mem'),
      ])
      .where('tenant', '=', tenant)
      .where('state', 'in', LIVE_STATES)
      .executeTakeFirst();
    const reserved = this.#reserved.get(tenant) ?? { count: 0, memory: 0 };
    const count = Number(live?.n ?? 0) + reserved.count;
    const used = Number(live?.mem ?? 0) + reserved.memory;
    if (count >= this.#quotas.maxLiveSandboxes) {
      throw new PalisadeError(
        'QUOTA_EXCEEDED',
        `Tenant quota reached: ${count} live sandboxes of ${this.#quotas.maxLiveSandboxes} allowed. Delete sandboxes you no longer need.`,
      );
    }
    if (used + memory > this.#quotas.maxTotalMemoryBytes) {
      throw new PalisadeError(
        'QUOTA_EXCEEDED',
        `Tenant memory quota reached: ${used} of ${this.#quotas.maxTotalMemoryBytes} bytes in use, ${memory} requested. Delete sandboxes or ask for less memory.`,
      );
    }
    this.#reserved.set(tenant, { count: reserved.count + 1, memory: reserved.memory + memory });
  }

  #release(tenant: string, memory: number): void {
    const r = this.#reserved.get(tenant);
    if (!r) return;
    if (r.count <= 1) this.#reserved.delete(tenant);
    else this.#reserved.set(tenant, { count: r.count - 1, memory: r.memory - memory });
  }

  async #row(tenant: string, id: string): Promise<SandboxTable> {
    const row = await this.#db
      .selectFrom('sandboxes')
      .selectAll()
      .where('id', '=', id)
      .where('tenant', '=', tenant)
      .executeTakeFirst();
    if (!row) throw notFound(id);
    return row;
  }

  async get(caller: Caller, id: string): Promise<SandboxView> {
    return toView(await this.#row(caller.tenant, id));
  }

  /** Throws unless the sandbox belongs to the caller's tenant and is running. */
  async assertRunning(caller: Caller, id: string): Promise<void> {
    const row = await this.#row(caller.tenant, id);
    const state = this.#runtime.get(id)?.state ?? row.state;
    if (state !== 'running') {
      throw new PalisadeError(
        'SANDBOX_NOT_RUNNING',
        `Sandbox ${id} is ${state}, not running${state === 'paused' ? '; resume it first' : ''}.`,
      );
    }
  }

  async list(
    caller: Caller,
    filter: ListFilter,
  ): Promise<{ items: SandboxView[]; nextCursor: string | null }> {
    const limit = Math.min(Math.max(filter.limit ?? 50, 1), 500);
    const selector = parseLabelSelector(filter.labelSelector ?? '');
    let after = filter.cursor !== undefined ? decodeCursor(filter.cursor) : undefined;
    const items: SandboxView[] = [];
    // Labels are JSON text, so the selector is applied here, page by page (dialect-neutral SQL).
    for (;;) {
      let q = this.#db.selectFrom('sandboxes').selectAll().where('tenant', '=', caller.tenant);
      if (filter.state !== undefined) q = q.where('state', '=', filter.state);
      if (after) {
        const [createdAt, id] = after;
        q = q.where((eb) =>
          eb.or([
            eb('created_at', '>', createdAt),
            eb.and([eb('created_at', '=', createdAt), eb('id', '>', id)]),
          ]),
        );
      }
      const page = await q.orderBy('created_at', 'asc').orderBy('id', 'asc').limit(200).execute();
      for (const row of page) {
        after = [row.created_at, row.id];
        const view = toView(row);
        if (!matchesSelector(view.labels, selector)) continue;
        items.push(view);
        if (items.length === limit) return { items, nextCursor: encodeCursor(after) };
      }
      if (page.length < 200) return { items, nextCursor: null };
    }
  }

  async destroy(caller: Caller, id: string, reason = 'destroyed by request'): Promise<SandboxView> {
    const row = await this.#row(caller.tenant, id);
    if (row.state === 'terminated' || row.state === 'failed') return toView(row);
    await this.#destroy(row, reason, caller.keyId);
    return toView(await this.#row(caller.tenant, id));
  }

  async #destroy(row: SandboxTable, reason: string, actor: string): Promise<void> {
    this.#destroying.add(row.id);
    try {
      this.#execs.forgetSandbox(row.id);
      this.#policies.delete(row.id);
      try {
        await this.#runtime.destroy(row.id, reason);
      } catch (err) {
        // The engine no longer knowing the sandbox is the outcome we want; anything else is real.
        if ((err as { code?: string }).code !== 'SANDBOX_NOT_FOUND') throw err;
      }
      const now = new Date().toISOString();
      await this.#db
        .updateTable('sandboxes')
        .set({ state: 'terminated', reason, updated_at: now, ended_at: now })
        .where('id', '=', row.id)
        .execute();
      await this.#audit.append({
        type: 'sandbox.destroy',
        tenant: row.tenant,
        sandboxId: row.id,
        actor,
        data: { reason },
      });
    } finally {
      this.#destroying.delete(row.id);
    }
  }

  /** Destroys if needed and deletes the sandbox's record and in-memory logs (the audit log keeps its events). */
  async purge(caller: Caller, id: string): Promise<void> {
    const row = await this.#row(caller.tenant, id);
    if (row.state !== 'terminated' && row.state !== 'failed')
      await this.#destroy(row, 'destroyed by request', caller.keyId);
    this.#execs.forgetSandbox(id);
    await this.#db.deleteFrom('sandboxes').where('id', '=', id).execute();
    await this.#audit.append({
      type: 'sandbox.purge',
      tenant: caller.tenant,
      sandboxId: id,
      actor: caller.keyId,
    });
  }

  async pause(caller: Caller, id: string): Promise<SandboxView> {
    return this.#transition(caller, id, 'pause');
  }

  async resume(caller: Caller, id: string): Promise<SandboxView> {
    return this.#transition(caller, id, 'resume');
  }

  async #transition(caller: Caller, id: string, action: 'pause' | 'resume'): Promise<SandboxView> {
    const row = await this.#row(caller.tenant, id);
    if (row.state === 'terminated' || row.state === 'failed') {
      throw new PalisadeError(
        'SANDBOX_NOT_RUNNING',
        `Sandbox ${id} is ${row.state}; it cannot be ${action}d.`,
      );
    }
    if (action === 'pause') await this.#runtime.pause(id);
    else await this.#runtime.resume(id);
    const info = this.#runtime.get(id);
    const state = info?.state ?? (action === 'pause' ? 'paused' : 'running');
    const reason = info?.reason ?? `${action}d by request`;
    await this.#db
      .updateTable('sandboxes')
      .set({ state, reason, updated_at: new Date().toISOString() })
      .where('id', '=', id)
      .execute();
    await this.#audit.append({
      type: `sandbox.${action}`,
      tenant: caller.tenant,
      sandboxId: id,
      actor: caller.keyId,
    });
    return toView(await this.#row(caller.tenant, id));
  }

  async renew(caller: Caller, id: string, timeoutMs: number): Promise<SandboxView> {
    const row = await this.#row(caller.tenant, id);
    if (row.state === 'terminated' || row.state === 'failed') {
      throw new PalisadeError(
        'SANDBOX_NOT_RUNNING',
        `Sandbox ${id} is ${row.state}; its expiry cannot be renewed.`,
      );
    }
    if (timeoutMs > this.#maxTimeoutMs) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `timeoutMs may be at most ${this.#maxTimeoutMs} ms.`,
      );
    }
    const expiresAt = new Date(Date.now() + timeoutMs).toISOString();
    await this.#db
      .updateTable('sandboxes')
      .set({ expires_at: expiresAt, updated_at: new Date().toISOString() })
      .where('id', '=', id)
      .execute();
    await this.#audit.append({
      type: 'sandbox.renew',
      tenant: caller.tenant,
      sandboxId: id,
      actor: caller.keyId,
      data: { expiresAt },
    });
    return toView(await this.#row(caller.tenant, id));
  }

  /** Graceful shutdown: destroys every live sandbox and records why. */
  async shutdown(reason = 'server shut down'): Promise<void> {
    const rows = await this.#db
      .selectFrom('sandboxes')
      .selectAll()
      .where('state', 'in', LIVE_STATES)
      .execute();
    for (const row of rows) {
      try {
        await this.#destroy(row, reason, 'system');
      } catch {
        // Left live in the database; reconcile() marks it lost on the next start.
      }
    }
  }

  /** Destroys expired sandboxes and deletes records past retention. */
  async reap(retentionMs: number, now = Date.now()): Promise<{ expired: number; purged: number }> {
    const nowIso = new Date(now).toISOString();
    const expired = await this.#db
      .selectFrom('sandboxes')
      .selectAll()
      .where('state', 'in', LIVE_STATES)
      .where('expires_at', '<=', nowIso)
      .limit(100)
      .execute();
    for (const row of expired) {
      try {
        await this.#destroy(row, 'expired (timeout reached)', 'system');
      } catch {
        // Retried on the next tick.
      }
    }
    const cutoff = new Date(now - retentionMs).toISOString();
    const old = await this.#db
      .selectFrom('sandboxes')
      .select(['id', 'tenant'])
      .where('state', 'in', ['terminated', 'failed'])
      .where('ended_at', '<=', cutoff)
      .limit(500)
      .execute();
    for (const row of old) {
      this.#execs.forgetSandbox(row.id);
      await this.#db.deleteFrom('sandboxes').where('id', '=', row.id).execute();
      await this.#audit.append({
        type: 'sandbox.retention_purge',
        tenant: row.tenant,
        sandboxId: row.id,
        actor: 'system',
      });
    }
    return { expired: expired.length, purged: old.length };
  }

  /**
   * After a restart the engine starts empty: every sandbox the database still calls live was
   * lost with the previous process. Ask the engine to clean up anything left of it, mark it
   * failed with the reason, and audit it.
   */
  async reconcile(): Promise<number> {
    const known = new Set(this.#runtime.list().map((s) => s.id));
    const rows = await this.#db
      .selectFrom('sandboxes')
      .selectAll()
      .where('state', 'in', LIVE_STATES)
      .execute();
    let lost = 0;
    for (const row of rows) {
      if (known.has(row.id)) continue;
      try {
        await this.#runtime.destroy(row.id, 'lost on server restart');
      } catch {
        // Unknown to the new engine: nothing of it is tracked any more.
      }
      const now = new Date().toISOString();
      const reason = 'lost: the server stopped while the sandbox was live';
      await this.#db
        .updateTable('sandboxes')
        .set({ state: 'failed', reason, updated_at: now, ended_at: now })
        .where('id', '=', row.id)
        .execute();
      await this.#audit.append({
        type: 'sandbox.lost',
        tenant: row.tenant,
        sandboxId: row.id,
        actor: 'system',
        data: { previousState: row.state, reason },
      });
      lost++;
    }
    return lost;
  }
}

function toView(row: SandboxTable): SandboxView {
  return {
    id: row.id,
    state: row.state as SandboxState,
    reason: row.reason,
    labels: JSON.parse(row.labels) as Record<string, string>,
    limits: JSON.parse(row.limits) as Partial<ResourceLimits>,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    expiresAt: row.expires_at,
    endedAt: row.ended_at,
    policy: row.policy ? (JSON.parse(row.policy) as Record<string, unknown>) : null,
  };
}

function encodeCursor(after: [string, string]): string {
  return Buffer.from(JSON.stringify(after)).toString('base64url');
}

function decodeCursor(cursor: string): [string, string] {
  try {
    const parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown;
    if (
      Array.isArray(parsed) &&
      parsed.length === 2 &&
      parsed.every((p) => typeof p === 'string')
    ) {
      return parsed as [string, string];
    }
  } catch {
    // fall through
  }
  throw new PalisadeError(
    'INVALID_ARGUMENT',
    'Invalid cursor: pass the nextCursor value from a previous list response.',
  );
}
