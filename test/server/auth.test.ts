import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startTestServer, type TestServer } from './helpers.js';

describe('authentication, scopes and tenants', () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({ config: { authThrottle: { maxFailures: 1000 } } });
  });
  after(async () => {
    await s.close();
  });

  async function createKey(body: Record<string, unknown>): Promise<{ key: string; id: string }> {
    const r = await s.req('POST', '/v1/keys', { key: s.adminKey, body });
    assert.equal(r.status, 201, r.text);
    return { key: r.json.key, id: r.json.id };
  }

  it('missing, malformed, wrong and wrong-length keys are all 401 with the same code and message', async () => {
    const right = s.adminKey;
    const wrongSameLength = right.slice(0, -4) + (right.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    const unknownId = 'psk_aaaaaaaaaaaaaaaa_' + right.slice(-43);
    const cases = [
      undefined,
      'Bearer',
      'Basic dXNlcjpwYXNz',
      `Bearer ${wrongSameLength}`,
      `Bearer ${right}x`,
      `Bearer ${right.slice(0, 10)}`,
      `Bearer ${unknownId}`,
      `Bearer ${'x'.repeat(600)}`,
    ];
    const bodies = new Set<string>();
    for (const authorization of cases) {
      const r = await s.req('GET', '/v1/whoami', {
        headers: authorization ? { authorization } : {},
      });
      assert.equal(r.status, 401, String(authorization));
      assert.equal(r.json.code, 'UNAUTHENTICATED');
      bodies.add(r.json.message);
    }
    assert.equal(bodies.size, 1, 'every kind of bad key must fail the same way');
    const ok = await s.req('GET', '/v1/whoami', { key: right });
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.json.scopes, ['admin']);
  });

  it('revocation takes effect on the next request', async () => {
    const { key, id } = await createKey({ name: 'to-revoke', scopes: ['sandboxes:read'] });
    assert.equal((await s.req('GET', '/v1/sandboxes', { key })).status, 200);
    const r = await s.req('DELETE', `/v1/keys/${id}`, { key: s.adminKey });
    assert.equal(r.status, 200);
    assert.ok(r.json.revokedAt);
    const after = await s.req('GET', '/v1/sandboxes', { key });
    assert.equal(after.status, 401);
    assert.match(after.json.message, /revoked/);
  });

  it('an expired key is refused', async () => {
    const { key, id } = await createKey({
      name: 'expiring',
      scopes: ['sandboxes:read'],
      expiresAt: '2999-01-01T00:00:00Z',
    });
    assert.equal((await s.req('GET', '/v1/sandboxes', { key })).status, 200);
    await s.cp.store.db
      .updateTable('api_keys')
      .set({ expires_at: new Date(Date.now() - 1000).toISOString() })
      .where('id', '=', id)
      .execute();
    const r = await s.req('GET', '/v1/sandboxes', { key });
    assert.equal(r.status, 401);
    assert.match(r.json.message, /expired/);
  });

  it('an expiry in the past is rejected at creation', async () => {
    const r = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: { name: 'x', scopes: ['admin'], expiresAt: '2001-01-01T00:00:00Z' },
    });
    assert.equal(r.status, 400);
  });

  it('a key without the needed scope gets 403 naming the scope', async () => {
    const { key } = await createKey({ name: 'reader', scopes: ['sandboxes:read'] });
    const r = await s.req('POST', '/v1/sandboxes', { key, body: {} });
    assert.equal(r.status, 403);
    assert.equal(r.json.code, 'FORBIDDEN');
    assert.match(r.json.message, /sandboxes:write/);
    const keys = await s.req('GET', '/v1/keys', { key });
    assert.equal(keys.status, 403);
  });

  it("another tenant's sandbox is 404, exactly like a missing one", async () => {
    const a = await createKey({
      name: 'a',
      tenant: 'alpha',
      scopes: ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'],
    });
    const b = await createKey({
      name: 'b',
      tenant: 'beta',
      scopes: ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'],
    });
    const created = await s.req('POST', '/v1/sandboxes', { key: a.key, body: {} });
    assert.equal(created.status, 201, created.text);
    const id = created.json.id as string;
    const missing = await s.req('GET', '/v1/sandboxes/sb-aaaaaaaaaaaaaaaaaaaa', { key: b.key });
    for (const [method, path, body] of [
      ['GET', `/v1/sandboxes/${id}`, undefined],
      ['DELETE', `/v1/sandboxes/${id}`, undefined],
      ['POST', `/v1/sandboxes/${id}/exec`, { command: 'true' }],
      ['POST', `/v1/sandboxes/${id}/pause`, undefined],
    ] as const) {
      const r = await s.req(method, path, { key: b.key, ...(body ? { body } : {}) });
      assert.equal(r.status, 404, `${method} ${path}`);
      assert.equal(r.json.code, missing.json.code);
    }
    const list = await s.req('GET', '/v1/sandboxes', { key: b.key });
    assert.equal(list.json.items.length, 0);
    const own = await s.req('GET', `/v1/sandboxes/${id}`, { key: a.key });
    assert.equal(own.status, 200);
    assert.equal(own.json.state, 'running');
    assert.equal((await s.req('DELETE', `/v1/sandboxes/${id}`, { key: a.key })).status, 200);
  });

  it('stores only hashes: no key appears in the database files', async () => {
    const { key } = await createKey({ name: 'secret-check', scopes: ['sandboxes:read'] });
    await s.req('GET', '/v1/whoami', { key });
    const secret = key.slice(-43);
    for (const name of readdirSync(s.dataDir)) {
      if (!name.startsWith('palisade.db')) continue;
      const bytes = readFileSync(join(s.dataDir, name));
      assert.equal(bytes.includes(secret), false, `secret found in ${name}`);
      assert.equal(bytes.includes(s.adminKey.slice(-43)), false, `admin secret found in ${name}`);
    }
  });

  it('records last-used time', async () => {
    const { key, id } = await createKey({ name: 'usage', scopes: ['sandboxes:read'] });
    const before = await s.req('GET', '/v1/keys', { key: s.adminKey });
    assert.equal(before.json.items.find((k: { id: string }) => k.id === id).lastUsedAt, null);
    await s.req('GET', '/v1/sandboxes', { key });
    const afterList = await s.req('GET', '/v1/keys', { key: s.adminKey });
    const entry = afterList.json.items.find((k: { id: string }) => k.id === id);
    assert.ok(entry.lastUsedAt);
    assert.equal('secret_hash' in entry || 'secretHash' in entry || 'key' in entry, false);
  });

  it('audits authentication failures and key changes', async () => {
    const r = await s.req('GET', '/v1/audit?type=auth.failure', { key: s.adminKey });
    assert.equal(r.status, 200);
    assert.ok(r.json.items.length > 0);
    const revokes = await s.req('GET', '/v1/audit?type=key.revoke', { key: s.adminKey });
    assert.ok(revokes.json.items.length > 0);
  });
});

describe('throttling and rate limits', () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({
      config: {
        authThrottle: { maxFailures: 5, windowMs: 60_000 },
        rateLimits: {
          perKey: {
            create: { burst: 2, perSecond: 0.1 },
            exec: { burst: 5, perSecond: 1 },
            write: { burst: 5, perSecond: 1 },
            read: { burst: 10, perSecond: 1 },
          },
        },
      },
    });
  });
  after(async () => {
    await s.close();
  });

  it('a burst of reads gets 429 with Retry-After', async () => {
    const { json } = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: { name: 'burst', scopes: ['sandboxes:read'] },
    });
    const statuses: number[] = [];
    let retryAfter: string | null = null;
    for (let i = 0; i < 15; i++) {
      const r = await s.req('GET', '/v1/sandboxes', { key: json.key });
      statuses.push(r.status);
      if (r.status === 429) {
        retryAfter = r.headers.get('retry-after');
        assert.equal(r.json.code, 'RATE_LIMITED');
      }
    }
    assert.ok(statuses.includes(429), statuses.join(','));
    assert.match(retryAfter ?? '', /^\d+$/);
  });

  it('repeated failed authentication from one client is throttled, even with a valid key afterwards', async () => {
    for (let i = 0; i < 5; i++) {
      const r = await s.req('GET', '/v1/whoami', { headers: { authorization: 'Bearer nope' } });
      assert.equal(r.status, 401);
    }
    const blocked = await s.req('GET', '/v1/whoami', { key: s.adminKey });
    assert.equal(blocked.status, 429);
    assert.match(blocked.headers.get('retry-after') ?? '', /^\d+$/);
    assert.ok(s.cp.app.authThrottle.trackedClients >= 1);
  });
});
