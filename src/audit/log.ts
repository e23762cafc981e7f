import type { Kysely } from 'kysely';
import { PalisadeError } from '../errors/index.js';
import type { AuditTable, Database } from '../store/index.js';
import { GENESIS_HASH, recordHash } from './chain.js';

export interface AuditEvent {
  type: string;
  tenant?: string | null;
  sandboxId?: string | null;
  /** Who acted: an API key id, `system`, or `cli`. */
  actor?: string | null;
  /** Event-specific, non-secret data. Never put keys, tokens or env values here. */
  data?: Record<string, unknown>;
}

export interface AuditRecord {
  seq: number;
  ts: string;
  type: string;
  tenant: string | null;
  sandboxId: string | null;
  actor: string | null;
  data: Record<string, unknown>;
  prevHash: string;
  hash: string;
}

export interface AuditFilter {
  /** Inclusive lower bound on the timestamp (ISO-8601). */
  since?: string;
  /** Exclusive upper bound on the timestamp (ISO-8601). */
  until?: string;
  type?: string;
  tenant?: string;
  sandboxId?: string;
  /** Only records with seq greater than this (pagination cursor). */
  afterSeq?: number;
  /** At most this many records. @default 100, max 1000 */
  limit?: number;
}

export type VerifyResult =
  | { ok: true; count: number; headSeq: number; headHash: string }
  | { ok: false; count: number; firstBadSeq: number; problem: string };

/** Longest string kept in one audit data field; longer values are cut and marked. */
export const MAX_AUDIT_FIELD_CHARS = 4096;
const MAX_DATA_CHARS = 16384;
const MAX_APPEND_ATTEMPTS = 8;
const VERIFY_PAGE = 1000;

/**
 * The append-only, hash-chained audit log. Appends are serialised inside this object; a second
 * process appending at the same time (the CLI next to a server) collides on the primary key
 * and retries, so the chain never forks.
 */
export class AuditLog {
  readonly #db: Kysely<Database>;
  #tail: Promise<unknown> = Promise.resolve();
  #head: { seq: number; hash: string } | undefined;

  constructor(db: Kysely<Database>) {
    this.#db = db;
  }

  append(event: AuditEvent): Promise<AuditRecord> {
    const next = this.#tail.then(() => this.#appendWithRetry(event));
    this.#tail = next.catch(() => undefined);
    return next;
  }

  async #appendWithRetry(event: AuditEvent): Promise<AuditRecord> {
    const data = encodeData(event.data ?? {});
    let lastError: unknown;
    for (let attempt = 0; attempt < MAX_APPEND_ATTEMPTS; attempt++) {
      try {
        // The head is cached, so an append is one INSERT. If another process appended since,
        // the INSERT collides on the seq primary key and the head is re-read: the chain stays linear.
        if (!this.#head || attempt > 0) this.#head = await this.#readHead();
        const head = this.#head;
        const row: AuditTable = {
          seq: head.seq + 1,
          ts: new Date().toISOString(),
          type: event.type,
          tenant: event.tenant ?? null,
          sandbox_id: event.sandboxId ?? null,
          actor: event.actor ?? null,
          data,
          prev_hash: head.hash,
          hash: '',
        };
        row.hash = recordHash(toChainFields(row));
        await this.#db.insertInto('audit_log').values(row).execute();
        this.#head = { seq: row.seq, hash: row.hash };
        return fromRow(row);
      } catch (err) {
        lastError = err;
        this.#head = undefined;
        await new Promise((resolve) => setTimeout(resolve, 2 * attempt));
      }
    }
    throw new PalisadeError('INTERNAL', 'Could not append to the audit log.', undefined, {
      cause: lastError,
    });
  }

  async #readHead(): Promise<{ seq: number; hash: string }> {
    const head = await this.#db
      .selectFrom('audit_log')
      .select(['seq', 'hash'])
      .orderBy('seq', 'desc')
      .limit(1)
      .executeTakeFirst();
    return head ? { seq: Number(head.seq), hash: head.hash } : { seq: 0, hash: GENESIS_HASH };
  }

  async query(filter: AuditFilter = {}): Promise<AuditRecord[]> {
    const limit = Math.min(Math.max(filter.limit ?? 100, 1), 1000);
    let q = this.#db.selectFrom('audit_log').selectAll();
    if (filter.since !== undefined) q = q.where('ts', '>=', filter.since);
    if (filter.until !== undefined) q = q.where('ts', '<', filter.until);
    if (filter.type !== undefined) q = q.where('type', '=', filter.type);
    if (filter.tenant !== undefined) q = q.where('tenant', '=', filter.tenant);
    if (filter.sandboxId !== undefined) q = q.where('sandbox_id', '=', filter.sandboxId);
    if (filter.afterSeq !== undefined) q = q.where('seq', '>', filter.afterSeq);
    const rows = await q.orderBy('seq', 'asc').limit(limit).execute();
    return rows.map(fromRow);
  }

  /** Walks the whole chain in order and names the first record that does not fit. */
  async verify(): Promise<VerifyResult> {
    let expectedSeq = 1;
    let prevHash = GENESIS_HASH;
    let count = 0;
    for (;;) {
      const rows = await this.#db
        .selectFrom('audit_log')
        .selectAll()
        .where('seq', '>=', expectedSeq)
        .orderBy('seq', 'asc')
        .limit(VERIFY_PAGE)
        .execute();
      if (rows.length === 0) break;
      for (const row of rows) {
        const seq = Number(row.seq);
        if (seq !== expectedSeq) {
          return {
            ok: false,
            count,
            firstBadSeq: expectedSeq,
            problem: `record ${expectedSeq} is missing (next present record is ${seq})`,
          };
        }
        if (row.prev_hash !== prevHash) {
          return {
            ok: false,
            count,
            firstBadSeq: seq,
            problem: `record ${seq} does not link to record ${seq - 1} (deleted, inserted or reordered records)`,
          };
        }
        if (recordHash(toChainFields(row)) !== row.hash) {
          return {
            ok: false,
            count,
            firstBadSeq: seq,
            problem: `record ${seq} was modified (hash mismatch)`,
          };
        }
        prevHash = row.hash;
        expectedSeq = seq + 1;
        count++;
      }
    }
    return { ok: true, count, headSeq: expectedSeq - 1, headHash: prevHash };
  }

  /** Writes every record as one JSON line, in order; returns the number written. */
  async exportJsonl(write: (line: string) => void | Promise<void>): Promise<number> {
    let afterSeq = 0;
    let count = 0;
    for (;;) {
      const rows = await this.#db
        .selectFrom('audit_log')
        .selectAll()
        .where('seq', '>', afterSeq)
        .orderBy('seq', 'asc')
        .limit(VERIFY_PAGE)
        .execute();
      if (rows.length === 0) return count;
      for (const row of rows) {
        await write(JSON.stringify(fromRow(row)) + '\n');
        afterSeq = Number(row.seq);
        count++;
      }
    }
  }
}

function toChainFields(row: AuditTable) {
  return {
    seq: Number(row.seq),
    ts: row.ts,
    type: row.type,
    tenant: row.tenant,
    sandboxId: row.sandbox_id,
    actor: row.actor,
    data: row.data,
    prevHash: row.prev_hash,
  };
}

function fromRow(row: AuditTable): AuditRecord {
  let data: Record<string, unknown>;
  try {
    data = JSON.parse(row.data) as Record<string, unknown>;
  } catch {
    data = { unparseable: true };
  }
  return {
    seq: Number(row.seq),
    ts: row.ts,
    type: row.type,
    tenant: row.tenant,
    sandboxId: row.sandbox_id,
    actor: row.actor,
    data,
    prevHash: row.prev_hash,
    hash: row.hash,
  };
}

/** Bounds what one event can add to the log: long strings are cut, the whole is capped. */
function encodeData(data: Record<string, unknown>): string {
  const bounded = JSON.stringify(data, (_key, value: unknown) =>
    typeof value === 'string' && value.length > MAX_AUDIT_FIELD_CHARS
      ? `${value.slice(0, MAX_AUDIT_FIELD_CHARS)}…[cut ${value.length - MAX_AUDIT_FIELD_CHARS} chars]`
      : value,
  );
  return bounded.length <= MAX_DATA_CHARS
    ? bounded
    : JSON.stringify({ cut: true, prefix: bounded.slice(0, 1024) });
}
