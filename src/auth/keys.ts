import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Kysely } from 'kysely';
import { PalisadeError } from '../errors/index.js';
import type { ApiKeyTable, Database } from '../store/index.js';
import { isScope, isValidTenant, type Scope } from './scopes.js';
import { isMcpToolName, normaliseRestrictions, type McpToolName } from './restrictions.js';

/** Every key starts with this, so leaked keys are recognisable by secret scanners. */
export const KEY_PREFIX = 'psk_';
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
const KEY_ID_CHARS = 16;
/** 32 random bytes = 256 bits, base64url. */
const SECRET_CHARS = 43;
const KEY_RE = new RegExp(
  `^${KEY_PREFIX}([a-z2-7]{${KEY_ID_CHARS}})_([A-Za-z0-9_-]{${SECRET_CHARS}})$`,
);
const KEY_ID_RE = /^[a-z2-7]{16}$/;
/** Record last-used at most this often per key, so reads do not turn into writes. */
const LAST_USED_RESOLUTION_MS = 1000;
const MAX_NAME_CHARS = 128;
export const ADMIN_KEY_META = 'admin_key_created_at';

export interface ApiKeyInfo {
  id: string;
  tenant: string;
  name: string;
  scopes: Scope[];
  createdAt: string;
  expiresAt: string | null;
  revokedAt: string | null;
  lastUsedAt: string | null;
  /** The one sandbox this key may use (null: any of its tenant's). */
  sandboxId: string | null;
  /** The MCP tools this key may use (null: all its scopes allow). */
  tools: McpToolName[] | null;
}

/** The authenticated caller of a request. */
export interface Principal {
  keyId: string;
  tenant: string;
  scopes: Scope[];
  /** Set for a key restricted to one sandbox (enforced by the auth hook on every route). */
  sandboxId?: string;
  /** Set for a key restricted to some MCP tools (enforced by the auth hook and the MCP server). */
  tools?: McpToolName[];
}

export interface CreateKeyOptions {
  tenant: string;
  name: string;
  scopes: Scope[];
  expiresAt?: Date | null;
  /** Restrict the key to this sandbox (it must exist in the key's tenant). */
  sandboxId?: string | null;
  /** Restrict the key to these MCP tools (and the HTTP routes they need). */
  tools?: readonly string[] | null;
}

export function randomBase32(chars: number): string {
  const bytes = randomBytes(chars);
  let out = '';
  for (let i = 0; i < chars; i++) out += BASE32[bytes[i]! & 31];
  return out;
}

export function isValidKeyId(value: string): boolean {
  return KEY_ID_RE.test(value);
}

function digest(secret: string): Buffer {
  return createHash('sha256').update(secret, 'utf8').digest();
}

const unauthenticated = () =>
  new PalisadeError(
    'UNAUTHENTICATED',
    "Missing or invalid API key. Send 'Authorization: Bearer <key>' with a key from 'palisade keys create'.",
  );

/**
 * API keys at rest: only the SHA-256 of the secret part is stored (the secret has 256 bits of
 * randomness, so a slow password hash adds nothing). Lookup is by the non-secret key id; the
 * secret is compared with crypto.timingSafeEqual on two 32-byte digests, and an unknown id or a
 * malformed key is compared against a dummy digest, so every failure takes the same path.
 */
export class KeyStore {
  readonly #db: Kysely<Database>;
  readonly #dummyDigest = digest(randomBytes(32).toString('base64url'));

  constructor(db: Kysely<Database>) {
    this.#db = db;
  }

  async create(options: CreateKeyOptions): Promise<{ key: string; info: ApiKeyInfo }> {
    if (!isValidTenant(options.tenant)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'Invalid tenant: use 1-63 characters of a-z, 0-9 and -, starting with a letter or digit.',
      );
    }
    if (
      options.name.length === 0 ||
      options.name.length > MAX_NAME_CHARS ||
      /[\x00-\x1f\x7f]/.test(options.name)
    ) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `Invalid key name: use 1-${MAX_NAME_CHARS} printable characters.`,
      );
    }
    if (options.scopes.length === 0 || !options.scopes.every(isScope)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'Invalid scopes: give one or more of admin, sandboxes:read, sandboxes:write, sandboxes:exec, audit:read.',
      );
    }
    if (options.expiresAt && options.expiresAt.getTime() <= Date.now()) {
      throw new PalisadeError('INVALID_ARGUMENT', 'The expiry time must be in the future.');
    }
    const restrictions = normaliseRestrictions(
      {
        ...(options.sandboxId != null ? { sandboxId: options.sandboxId } : {}),
        ...(options.tools != null ? { tools: options.tools } : {}),
      },
      options.scopes,
    );
    if (restrictions.sandboxId !== undefined) {
      const sandbox = await this.#db
        .selectFrom('sandboxes')
        .select('id')
        .where('id', '=', restrictions.sandboxId)
        .where('tenant', '=', options.tenant)
        .executeTakeFirst();
      if (!sandbox) {
        throw new PalisadeError(
          'SANDBOX_NOT_FOUND',
          `No sandbox ${restrictions.sandboxId} in tenant '${options.tenant}'; restrict the key to an existing sandbox of its tenant.`,
        );
      }
    }
    const id = randomBase32(KEY_ID_CHARS);
    const secret = randomBytes(32).toString('base64url');
    const row: ApiKeyTable = {
      id,
      tenant: options.tenant,
      name: options.name,
      scopes: JSON.stringify([...new Set(options.scopes)]),
      secret_hash: digest(secret).toString('hex'),
      created_at: new Date().toISOString(),
      expires_at: options.expiresAt ? options.expiresAt.toISOString() : null,
      revoked_at: null,
      last_used_at: null,
      sandbox_id: restrictions.sandboxId ?? null,
      tools: restrictions.tools ? JSON.stringify(restrictions.tools) : null,
    };
    await this.#db.insertInto('api_keys').values(row).execute();
    return { key: `${KEY_PREFIX}${id}_${secret}`, info: toInfo(row) };
  }

  async list(filter: { tenant?: string } = {}): Promise<ApiKeyInfo[]> {
    let q = this.#db.selectFrom('api_keys').selectAll();
    if (filter.tenant !== undefined) q = q.where('tenant', '=', filter.tenant);
    const rows = await q.orderBy('created_at', 'asc').limit(10000).execute();
    return rows.map(toInfo);
  }

  async get(id: string): Promise<ApiKeyInfo | undefined> {
    if (!isValidKeyId(id)) return undefined;
    const row = await this.#db
      .selectFrom('api_keys')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    return row ? toInfo(row) : undefined;
  }

  /** Revokes a key; effective on that key's next request (every request reads the key row). */
  async revoke(id: string): Promise<ApiKeyInfo> {
    const existing = await this.get(id);
    if (!existing)
      throw new PalisadeError(
        'NOT_FOUND',
        `No API key with id '${id}'. List keys with 'palisade keys list'.`,
      );
    if (existing.revokedAt) return existing;
    const revokedAt = new Date().toISOString();
    await this.#db
      .updateTable('api_keys')
      .set({ revoked_at: revokedAt })
      .where('id', '=', id)
      .where('revoked_at', 'is', null)
      .execute();
    return { ...existing, revokedAt };
  }

  async count(): Promise<number> {
    const row = await this.#db
      .selectFrom('api_keys')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .executeTakeFirst();
    return Number(row?.n ?? 0);
  }

  /**
   * Creates the admin key on the first start of a data directory. Returns the key once, or
   * undefined if one was created before (even if it was since revoked: recover with
   * 'palisade keys create --admin' on the host).
   */
  async ensureAdminKey(): Promise<string | undefined> {
    return this.#db.transaction().execute(async (trx) => {
      const marker = await trx
        .selectFrom('palisade_meta')
        .select('value')
        .where('key', '=', ADMIN_KEY_META)
        .executeTakeFirst();
      if (marker) return undefined;
      const store = new KeyStore(trx);
      const { key } = await store.create({
        tenant: 'default',
        name: 'admin (first start)',
        scopes: ['admin'],
      });
      await trx
        .insertInto('palisade_meta')
        .values({ key: ADMIN_KEY_META, value: new Date().toISOString() })
        .execute();
      return key;
    });
  }

  /** Checks an Authorization header value; throws UNAUTHENTICATED for any failure. */
  async authenticate(authorization: string | undefined): Promise<Principal> {
    const presented = parseBearer(authorization);
    const match = presented === undefined ? null : KEY_RE.exec(presented);
    const keyId = match?.[1];
    const secret = match?.[2] ?? presented ?? '';
    const row = keyId
      ? await this.#db.selectFrom('api_keys').selectAll().where('id', '=', keyId).executeTakeFirst()
      : undefined;
    const expected = row ? Buffer.from(row.secret_hash, 'hex') : this.#dummyDigest;
    const actual = digest(secret);
    const secretMatches = expected.length === actual.length && timingSafeEqual(expected, actual);
    if (!row || !match || !secretMatches) throw unauthenticated();
    const now = Date.now();
    if (row.revoked_at !== null) {
      throw new PalisadeError(
        'UNAUTHENTICATED',
        'This API key has been revoked. Ask an administrator for a new key.',
      );
    }
    if (row.expires_at !== null && Date.parse(row.expires_at) <= now) {
      throw new PalisadeError(
        'UNAUTHENTICATED',
        'This API key has expired. Ask an administrator for a new key.',
      );
    }
    if (
      row.last_used_at === null ||
      now - Date.parse(row.last_used_at) >= LAST_USED_RESOLUTION_MS
    ) {
      await this.#db
        .updateTable('api_keys')
        .set({ last_used_at: new Date(now).toISOString() })
        .where('id', '=', row.id)
        .execute();
    }
    const principal: Principal = {
      keyId: row.id,
      tenant: row.tenant,
      scopes: parseScopes(row.scopes),
    };
    if (row.sandbox_id !== null) principal.sandboxId = row.sandbox_id;
    const tools = parseTools(row.tools);
    if (tools !== null) principal.tools = tools;
    return principal;
  }
}

function parseBearer(header: string | undefined): string | undefined {
  if (header === undefined || header.length > 512) return undefined;
  const m = /^Bearer ([\x21-\x7e]+)$/i.exec(header.trim());
  return m?.[1];
}

function parseScopes(json: string): Scope[] {
  try {
    const parsed = JSON.parse(json) as unknown;
    return Array.isArray(parsed)
      ? parsed.filter((s): s is Scope => typeof s === 'string' && isScope(s))
      : [];
  } catch {
    return [];
  }
}

/**
 * A stored tool list that does not parse yields an empty list (fail closed: no tools, no
 * routes), never "unrestricted".
 */
function parseTools(json: string | null): McpToolName[] | null {
  if (json === null) return null;
  try {
    const parsed = JSON.parse(json) as unknown;
    return Array.isArray(parsed)
      ? parsed.filter((t): t is McpToolName => typeof t === 'string' && isMcpToolName(t))
      : [];
  } catch {
    return [];
  }
}

function toInfo(row: ApiKeyTable): ApiKeyInfo {
  return {
    id: row.id,
    tenant: row.tenant,
    name: row.name,
    scopes: parseScopes(row.scopes),
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
    lastUsedAt: row.last_used_at,
    sandboxId: row.sandbox_id,
    tools: parseTools(row.tools),
  };
}
