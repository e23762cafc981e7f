import type { Kysely } from 'kysely';
import type { AuditLog } from '../audit/index.js';
import { PalisadeError } from '../errors/index.js';
import type {
  ResourceLimits,
  SandboxInfo,
  SandboxRuntime,
  SandboxState,
} from '../sandbox/types.js';
import {
  createPolicyEngine,
  parseEgressPolicy,
  parsePolicyObject,
  type EgressPolicy,
  type PolicyLayer,
} from '../policy/index.js';
import type { Database, SandboxTable } from '../store/index.js';
import type { ExecPolicy } from './policy-hook.js';
import type { QuotaConfig } from './config.js';
import type { NetworkView, SandboxNetworks } from './network.js';
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
  /**
   * The sandbox's own policy layer: `permissions` (can only tighten the operator's) and
   * `network` (egress rules through the gateway, bounded by the operator's; absent = no network).
   */
  policy?: Record<string, unknown>;
}

/** Body of PUT /v1/sandboxes/{id}/network: the sandbox layer's egress rules. */
export interface NetworkRulesBody {
  allow?: string[];
  deny?: string[];
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
  /** Frozen by the circuit breaker; only an admin's resume clears it. */
  flagged: boolean;
}

/** Refuses creates and execs an active kill switch covers (see kill-switch.ts). */
export interface SandboxGuard {
  assertAllowed(
    target: { id?: string; tenant: string; labels: Record<string, string> },
    action: 'create' | 'exec',
  ): Promise<void>;
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
  readonly #operatorPolicy: { layers(): PolicyLayer[]; readonly generation: number } | undefined;
  /** Policy engines of live sandboxes that have their own layer; removed when they end. */
  readonly #policies = new Map<string, ExecPolicy>();
  /** The egress gateway's per-sandbox side; undefined when the server runs without a gateway. */
  readonly #networks: SandboxNetworks | undefined;
  readonly #guard: SandboxGuard | undefined;
  #writes: Promise<unknown> = Promise.resolve();
  /** Network rule changes, one at a time, so the stored rules always match the enforced ones. */
  #networkUpdates: Promise<unknown> = Promise.resolve();

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
    /** The reloadable operator policy: sandbox layers are rebuilt on it after each reload. */
    operatorPolicy?: { layers(): PolicyLayer[]; readonly generation: number };
    networks?: SandboxNetworks;
    guard?: SandboxGuard;
  }) {
    this.#guard = options.guard;
    this.#networks = options.networks;
    this.#policyLayers = options.policyLayers ?? [];
    this.#basePolicy = options.basePolicy;
    this.#operatorPolicy = options.operatorPolicy;
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
      await this.#networks?.release(info.id).catch(() => undefined);
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
    let network: EgressPolicy | undefined;
    if (body.policy !== undefined) {
      const source = `api:tenant/${caller.tenant}/sandbox`;
      // Validates both sections (unknown keys, rule syntax) before anything is created.
      const layer = parsePolicyObject(body.policy, source, 'sandbox');
      if (body.policy.network !== undefined) {
        if (!this.#networks) {
          throw new PalisadeError(
            'INVALID_POLICY',
            'This server runs without an egress gateway, so sandboxes cannot have network; remove "network" from the policy.',
          );
        }
        this.#networks.check(layer.network, 'network');
        network = layer.network;
      }
      // Only a permissions section makes execs policy-checked: a network-only policy must not
      // turn on the engine's default deny for every command.
      if (body.policy.permissions !== undefined || body.policy.network === undefined) {
        const permissionsOnly = parsePolicyObject(
          { permissions: body.policy.permissions ?? {} },
          source,
          'sandbox',
        );
        policy = await this.#sandboxPolicy(permissionsOnly);
      }
    }
    await this.#guard?.assertAllowed({ tenant: caller.tenant, labels }, 'create');
    const memory = body.limits?.memoryBytes ?? DEFAULT_MEMORY_BYTES;
    await this.#reserve(caller.tenant, memory);
    try {
      let info: SandboxInfo;
      try {
        info = await this.#runtime.create({
          labels,
          ...(Object.keys(env).length > 0 ? { env } : {}),
          ...(body.limits ? { limits: body.limits } : {}),
          ...(network && this.#networks
            ? { network: this.#networks.provider(caller.tenant, network) }
            : {}),
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
        flagged: 0,
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
      // A kill engaged while this create was in flight did not see the row: apply it now.
      try {
        await this.#guard?.assertAllowed({ id: info.id, tenant: caller.tenant, labels }, 'create');
      } catch (err) {
        const killId = (err as { details?: { killId?: unknown } }).details?.killId;
        await this.#destroy(row, `killed by kill switch ${String(killId)}`, 'system');
        throw err;
      }
      return toView(row);
    } finally {
      this.#release(caller.tenant, memory);
    }
  }

  /**
   * A sandbox's own layer on top of the operator's policy in force: rebuilt on the first
   * decision after an operator policy reload, so a reload reaches these sandboxes too.
   */
  async #sandboxPolicy(own: PolicyLayer): Promise<ExecPolicy> {
    const build = () =>
      createPolicyEngine({
        layers: [...(this.#operatorPolicy?.layers() ?? this.#policyLayers), own],
      });
    let generation = this.#operatorPolicy?.generation ?? 0;
    let engine = build();
    await engine;
    return {
      decide: async (action) => {
        const now = this.#operatorPolicy?.generation ?? 0;
        if (now !== generation) {
          generation = now;
          engine = build();
        }
        return (await engine).decide(action);
      },
    };
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
    await this.#guard?.assertAllowed(
      { id, tenant: row.tenant, labels: JSON.parse(row.labels) as Record<string, string> },
      'exec',
    );
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
      // The engine releases the network on destroy; this covers a sandbox it no longer knew.
      await this.#networks?.release(row.id).catch(() => undefined);
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

  /**
   * Resumes a paused sandbox. One the circuit breaker froze (flagged) needs an admin key, which
   * may resume it in any tenant; that clears the flag.
   */
  async resume(caller: Caller & { scopes?: readonly string[] }, id: string): Promise<SandboxView> {
    const admin = caller.scopes?.includes('admin') ?? false;
    const found = admin
      ? await this.#db.selectFrom('sandboxes').selectAll().where('id', '=', id).executeTakeFirst()
      : undefined;
    const row = found ?? (await this.#row(caller.tenant, id));
    if (row.flagged === 1 && !admin) {
      throw new PalisadeError(
        'FORBIDDEN',
        `Sandbox ${id} was frozen by the circuit breaker (${row.reason}); only an admin key can resume it, after a human has looked at it.`,
        { requiredScope: 'admin' },
      );
    }
    return this.#transition({ keyId: caller.keyId, tenant: row.tenant }, id, 'resume');
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
      .set({
        state,
        reason,
        updated_at: new Date().toISOString(),
        ...(action === 'resume' ? { flagged: 0 } : {}),
      })
      .where('id', '=', id)
      .execute();
    await this.#audit.append({
      type: `sandbox.${action}`,
      tenant: caller.tenant,
      sandboxId: id,
      actor: caller.keyId,
      ...(action === 'resume' && row.flagged === 1 ? { data: { clearedFlag: true } } : {}),
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

  /** The sandbox's egress rules (its own, the operator's, the enforced ones) and gateway stats. */
  async network(caller: Caller, id: string): Promise<NetworkView> {
    await this.#row(caller.tenant, id);
    if (this.#networks) return this.#networks.view(id);
    return {
      sandboxId: id,
      enabled: false,
      rules: null,
      operator: { allow: [], deny: [] },
      effective: null,
      stats: null,
      recentDenials: [],
    };
  }

  /**
   * Replaces the sandbox layer's egress rules, live: new connections follow them and open
   * connections to destinations they deny are closed by the gateway.
   */
  setNetwork(caller: Caller, id: string, body: NetworkRulesBody): Promise<NetworkView> {
    const run = this.#networkUpdates.then(() => this.#setNetwork(caller, id, body));
    this.#networkUpdates = run.catch(() => undefined);
    return run;
  }

  async #setNetwork(caller: Caller, id: string, body: NetworkRulesBody): Promise<NetworkView> {
    const row = await this.#row(caller.tenant, id);
    if (row.state === 'terminated' || row.state === 'failed') {
      throw new PalisadeError(
        'SANDBOX_NOT_RUNNING',
        `Sandbox ${id} is ${row.state}; its network rules cannot be changed.`,
      );
    }
    const rules = parseEgressPolicy(body, 'network');
    if (!this.#networks) {
      throw new PalisadeError(
        'CONFLICT',
        `Sandbox ${id} has no network: this server runs without an egress gateway.`,
      );
    }
    const previous = this.#networks.view(id).rules;
    // Awaited end to end: the answer (and the stored rules) follow only rules in force.
    await this.#networks.update(id, rules);
    const text = { allow: body.allow ?? [], deny: body.deny ?? [] };
    const stored = row.policy ? (JSON.parse(row.policy) as Record<string, unknown>) : {};
    await this.#db
      .updateTable('sandboxes')
      .set({
        policy: JSON.stringify({ ...stored, network: text }),
        updated_at: new Date().toISOString(),
      })
      .where('id', '=', id)
      .execute();
    await this.#audit.append({
      type: 'sandbox.network_update',
      tenant: caller.tenant,
      sandboxId: id,
      actor: caller.keyId,
      data: { previous, rules: text },
    });
    return this.#networks.view(id);
  }

  /**
   * Destroys every live sandbox (any tenant) that `match` selects; used by the kill switch.
   * Returns the ids destroyed; a sandbox that could not be destroyed is reported in `failed`.
   */
  async destroyMatching(
    match: (s: { id: string; tenant: string; labels: Record<string, string> }) => boolean,
    reason: string,
    actor: string,
  ): Promise<{ destroyed: string[]; failed: string[] }> {
    const rows = await this.#db
      .selectFrom('sandboxes')
      .selectAll()
      .where('state', 'in', LIVE_STATES)
      .execute();
    const selected = rows.filter((row) =>
      match({
        id: row.id,
        tenant: row.tenant,
        labels: JSON.parse(row.labels) as Record<string, string>,
      }),
    );
    const destroyed: string[] = [];
    const failed: string[] = [];
    // All at once: a kill switch must not wait for one sandbox's teardown before the next.
    await Promise.all(
      selected.map(async (row) => {
        try {
          await this.#destroy(row, reason, actor);
          destroyed.push(row.id);
        } catch {
          failed.push(row.id);
        }
      }),
    );
    return { destroyed, failed };
  }

  /**
   * Circuit breaker: freezes a running sandbox (engine pause), records the reason and flags
   * it for a human. No-op for a sandbox that is not running or already flagged.
   */
  async freeze(id: string, reason: string): Promise<boolean> {
    const row = await this.#db
      .selectFrom('sandboxes')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    if (!row || row.flagged === 1 || this.#runtime.get(id)?.state !== 'running') return false;
    await this.#runtime.pause(id);
    // Queued behind the engine's own state-change write, so its generic reason cannot win.
    const write = this.#writes.then(() =>
      this.#db
        .updateTable('sandboxes')
        .set({ state: 'paused', reason, flagged: 1, updated_at: new Date().toISOString() })
        .where('id', '=', id)
        .execute(),
    );
    this.#writes = write.catch(() => undefined);
    await write;
    await this.#audit.append({
      type: 'sandbox.flagged',
      tenant: row.tenant,
      sandboxId: id,
      actor: 'system',
      data: { reason },
    });
    return true;
  }

  /** Sandboxes by state and the number of live flagged ones (for /metrics). */
  async counts(): Promise<{ byState: Partial<Record<SandboxState, number>>; flagged: number }> {
    const rows = await this.#db
      .selectFrom('sandboxes')
      .select((eb) => ['state', eb.fn.countAll<number>().as('n')])
      .groupBy('state')
      .execute();
    const byState: Partial<Record<SandboxState, number>> = {};
    for (const r of rows) byState[r.state as SandboxState] = Number(r.n);
    const flagged = await this.#db
      .selectFrom('sandboxes')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('flagged', '=', 1)
      .where('state', 'in', LIVE_STATES)
      .executeTakeFirst();
    return { byState, flagged: Number(flagged?.n ?? 0) };
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
    flagged: row.flagged === 1,
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
