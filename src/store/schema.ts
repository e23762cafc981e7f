import type { Generated } from 'kysely';

/**
 * Table shapes. Timestamps are ISO-8601 UTC strings (sortable as text on every dialect);
 * structured columns are JSON text. Nothing here is SQLite-specific so the same schema can
 * target PostgreSQL later.
 */
export interface ApiKeyTable {
  id: string;
  tenant: string;
  name: string;
  /** JSON array of scope names. */
  scopes: string;
  /** Hex SHA-256 of the key's secret part. The key itself is never stored. */
  secret_hash: string;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
  last_used_at: string | null;
  /** The one sandbox this key may use, or null (added in 0004). */
  sandbox_id: string | null;
  /** JSON array of the MCP tools this key may use, or null for all (added in 0004). */
  tools: string | null;
}

export interface SandboxTable {
  id: string;
  tenant: string;
  state: string;
  reason: string;
  /** JSON object of labels. */
  labels: string;
  /** JSON object of resource limits as requested/applied. */
  limits: string;
  memory_bytes: number;
  created_at: string;
  updated_at: string;
  expires_at: string | null;
  ended_at: string | null;
  /** JSON of the sandbox's own permission policy layer, or null (added in 0002). */
  policy: string | null;
  /** 1 when the circuit breaker froze the sandbox and a human must look (added in 0003). */
  flagged: number;
}

/** Kill switches; active while released_at is null (added in 0003). */
export interface KillSwitchTable {
  id: string;
  /** JSON of the selector: {all: true} | {tenant} | {labels} | {sandboxId}. */
  selector: string;
  reason: string;
  created_by: string;
  created_at: string;
  released_at: string | null;
  released_by: string | null;
}

export interface AuditTable {
  seq: number;
  ts: string;
  type: string;
  tenant: string | null;
  sandbox_id: string | null;
  actor: string | null;
  /** JSON object with event-specific, non-secret data. */
  data: string;
  prev_hash: string;
  hash: string;
}

export interface MetaTable {
  key: string;
  value: string;
}

export interface Database {
  api_keys: ApiKeyTable;
  sandboxes: SandboxTable;
  audit_log: AuditTable;
  palisade_meta: MetaTable;
  kill_switches: KillSwitchTable;
}

export type { Generated };
