/**
 * Kill switches: an admin names a set of sandboxes (all, a tenant, a label selector, one
 * sandbox); the matching live ones are destroyed at once and, until the kill is released, new
 * creates and execs that match are refused. Active kills live in the database so they survive
 * a restart, and are mirrored in memory (bounded by `maxActive`) for the per-request check.
 */
import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { AuditLog } from '../audit/index.js';
import { isValidTenant } from '../auth/index.js';
import { PalisadeError } from '../errors/index.js';
import type { Database, KillSwitchTable } from '../store/schema.js';
import { matchesSelector, parseLabelSelector } from './validate.js';

export type KillSelector =
  { all: true } | { tenant: string } | { labels: string } | { sandboxId: string };

export interface KillBody {
  all?: boolean;
  tenant?: string;
  labels?: string;
  sandboxId?: string;
  reason?: string;
}

export interface KillView {
  id: string;
  selector: KillSelector;
  reason: string;
  createdBy: string;
  createdAt: string;
}

/** What a kill is matched against: a live sandbox, or one about to be created. */
export interface KillTarget {
  id?: string;
  tenant: string;
  labels: Record<string, string>;
}

interface ActiveKill {
  view: KillView;
  matches: (target: KillTarget) => boolean;
}

const SANDBOX_ID_RE = /^sb-[a-z2-7]{20}$/;
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

function newKillId(): string {
  const bytes = randomBytes(20);
  let id = 'kill-';
  for (let i = 0; i < 20; i++) id += BASE32[bytes[i]! & 31];
  return id;
}

/** Checks the request body: exactly one selector, each well formed. */
export function parseKillSelector(body: KillBody): KillSelector {
  const given = (['all', 'tenant', 'labels', 'sandboxId'] as const).filter(
    (k) => body[k] !== undefined,
  );
  if (given.length !== 1) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'Give exactly one selector: {"all": true}, {"tenant": "T"}, {"labels": "key=value,..."} or {"sandboxId": "sb-..."}.',
    );
  }
  if (body.all !== undefined) {
    if (body.all !== true)
      throw new PalisadeError('INVALID_ARGUMENT', '"all" must be true to kill every sandbox.');
    return { all: true };
  }
  if (body.tenant !== undefined) {
    if (!isValidTenant(body.tenant))
      throw new PalisadeError('INVALID_ARGUMENT', `Invalid tenant ${JSON.stringify(body.tenant)}.`);
    return { tenant: body.tenant };
  }
  if (body.labels !== undefined) {
    // An empty selector matches every sandbox; killing everything must be said with all: true.
    if (parseLabelSelector(body.labels).length === 0) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'The label selector is empty; it would match every sandbox. Use {"all": true} to kill everything.',
      );
    }
    return { labels: body.labels.trim() };
  }
  if (!SANDBOX_ID_RE.test(body.sandboxId ?? '')) {
    throw new PalisadeError('INVALID_ARGUMENT', 'Invalid sandboxId: expected sb-<20 characters>.');
  }
  return { sandboxId: body.sandboxId! };
}

function describe(selector: KillSelector): string {
  if ('all' in selector) return 'all sandboxes';
  if ('tenant' in selector) return `tenant ${selector.tenant}`;
  if ('labels' in selector) return `labels ${selector.labels}`;
  return `sandbox ${selector.sandboxId}`;
}

/** Whether a sandbox (or a create) falls under the selector. */
export function selectorMatcher(selector: KillSelector): (target: KillTarget) => boolean {
  if ('all' in selector) return () => true;
  if ('tenant' in selector) return (t) => t.tenant === selector.tenant;
  if ('labels' in selector) {
    const requirements = parseLabelSelector(selector.labels);
    return (t) => matchesSelector(t.labels, requirements);
  }
  return (t) => t.id === selector.sandboxId;
}

function toActive(row: KillSwitchTable): ActiveKill {
  const selector = JSON.parse(row.selector) as KillSelector;
  return {
    view: {
      id: row.id,
      selector,
      reason: row.reason,
      createdBy: row.created_by,
      createdAt: row.created_at,
    },
    matches: selectorMatcher(selector),
  };
}

export class KillSwitch {
  readonly #db: Kysely<Database>;
  readonly #audit: AuditLog;
  readonly #maxActive: number;
  readonly #active = new Map<string, ActiveKill>();
  /** Loading the active kills from the database; every check waits for it (fail closed). */
  readonly #loaded: Promise<void>;
  /** Engage and release one at a time so the bound and the mirror stay exact. */
  #changes: Promise<unknown> = Promise.resolve();

  constructor(options: { db: Kysely<Database>; audit: AuditLog; maxActive?: number }) {
    this.#db = options.db;
    this.#audit = options.audit;
    this.#maxActive = options.maxActive ?? 1000;
    this.#loaded = this.#load();
    // A failed load surfaces through ready() and every check; do not leave it unhandled.
    this.#loaded.catch(() => undefined);
  }

  async #load(): Promise<void> {
    const rows = await this.#db
      .selectFrom('kill_switches')
      .selectAll()
      .where('released_at', 'is', null)
      .orderBy('created_at', 'asc')
      .execute();
    for (const row of rows) this.#active.set(row.id, toActive(row));
  }

  /** Resolves once the active kills are loaded; rejects if the database could not be read. */
  ready(): Promise<void> {
    return this.#loaded;
  }

  get activeCount(): number {
    return this.#active.size;
  }

  list(): KillView[] {
    return [...this.#active.values()].map((k) => k.view);
  }

  /** The first active kill matching the target, if any. */
  async match(target: KillTarget): Promise<KillView | undefined> {
    await this.#loaded;
    for (const kill of this.#active.values()) if (kill.matches(target)) return kill.view;
    return undefined;
  }

  /** Throws KILL_SWITCH_ACTIVE if an active kill matches the target. */
  async assertAllowed(target: KillTarget, action: 'create' | 'exec'): Promise<void> {
    const kill = await this.match(target);
    if (!kill) return;
    throw new PalisadeError(
      'KILL_SWITCH_ACTIVE',
      `Refused: kill switch ${kill.id} (${describe(kill.selector)}: ${kill.reason}) is active, so ${action === 'create' ? 'this sandbox cannot be created' : `sandbox ${target.id ?? ''} cannot be used`}. An admin can release it with DELETE /v1/kill/${kill.id}.`,
      { killId: kill.id, reason: kill.reason, selector: kill.selector },
    );
  }

  engage(actor: string, body: KillBody): Promise<KillView> {
    const run = this.#changes.then(() => this.#engage(actor, body));
    this.#changes = run.catch(() => undefined);
    return run;
  }

  async #engage(actor: string, body: KillBody): Promise<KillView> {
    await this.#loaded;
    const selector = parseKillSelector(body);
    if (this.#active.size >= this.#maxActive) {
      throw new PalisadeError(
        'CONFLICT',
        `${this.#active.size} kill switches are active, the maximum; release some (GET /v1/kill lists them) or use a broader selector.`,
      );
    }
    const row: KillSwitchTable = {
      id: newKillId(),
      selector: JSON.stringify(selector),
      reason: body.reason?.trim() || 'no reason given',
      created_by: actor,
      created_at: new Date().toISOString(),
      released_at: null,
      released_by: null,
    };
    // Durable first: once the record exists, a restart keeps refusing.
    await this.#db.insertInto('kill_switches').values(row).execute();
    const active = toActive(row);
    this.#active.set(row.id, active);
    await this.#audit.append({
      type: 'kill.engage',
      actor,
      data: { killId: row.id, selector, reason: row.reason },
    });
    return active.view;
  }

  release(actor: string, killId: string): Promise<KillView> {
    const run = this.#changes.then(() => this.#release(actor, killId));
    this.#changes = run.catch(() => undefined);
    return run;
  }

  async #release(actor: string, killId: string): Promise<KillView> {
    await this.#loaded;
    const active = this.#active.get(killId);
    if (!active) {
      throw new PalisadeError(
        'NOT_FOUND',
        `No active kill switch ${killId.slice(0, 64)}. GET /v1/kill lists the active ones.`,
      );
    }
    await this.#db
      .updateTable('kill_switches')
      .set({ released_at: new Date().toISOString(), released_by: actor })
      .where('id', '=', killId)
      .execute();
    this.#active.delete(killId);
    await this.#audit.append({
      type: 'kill.release',
      actor,
      data: { killId, selector: active.view.selector, reason: active.view.reason },
    });
    return active.view;
  }
}
