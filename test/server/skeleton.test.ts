import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startTestServer, type TestServer } from './helpers.js';

const SECURITY_HEADERS = [
  'content-security-policy',
  'x-content-type-options',
  'x-frame-options',
  'referrer-policy',
];

describe('server skeleton: secure defaults', () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({
      config: { bodyLimitBytes: 4096, corsOrigins: ['https://app.example.com'] },
    });
  });
  after(async () => {
    await s.close();
  });

  it('prints an admin key of the documented shape on first start', () => {
    assert.match(s.adminKey, /^psk_[a-z2-7]{16}_[A-Za-z0-9_-]{43}$/);
  });

  it('binds loopback by default', () => {
    assert.match(s.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('security headers, X-Request-ID and no banner on success, 401, 404, 400 and 413 responses', async () => {
    const responses = [
      await s.req('GET', '/healthz'),
      await s.req('GET', '/v1/sandboxes'),
      await s.req('GET', '/v1/nope', { key: s.adminKey }),
      await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: { bogus: 1 } }),
      await s.req('POST', '/v1/sandboxes', {
        key: s.adminKey,
        body: { labels: { a: 'x'.repeat(5000) } },
      }),
    ];
    assert.deepEqual(
      responses.map((r) => r.status),
      [200, 401, 404, 400, 413],
    );
    for (const r of responses) {
      for (const h of SECURITY_HEADERS) assert.ok(r.headers.get(h), `${h} missing on ${r.status}`);
      assert.equal(r.headers.get('x-frame-options'), 'DENY');
      assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
      assert.match(r.headers.get('x-request-id') ?? '', /^req_[A-Za-z0-9_-]{16}$/);
      assert.equal(r.headers.get('server'), null);
      assert.equal(r.headers.get('x-powered-by'), null);
      if (r.status >= 400) {
        assert.deepEqual(Object.keys(r.json).sort().slice(0, 3), ['code', 'message', 'requestId']);
        assert.equal(r.json.requestId, r.headers.get('x-request-id'));
      }
    }
    assert.equal(responses[4]!.json.code, 'PAYLOAD_TOO_LARGE');
  });

  it('ignores a client-supplied X-Request-ID', async () => {
    const r = await s.req('GET', '/healthz', { headers: { 'x-request-id': 'client-chosen-id' } });
    assert.notEqual(r.headers.get('x-request-id'), 'client-chosen-id');
  });

  it('unknown body properties are rejected, not silently dropped', async () => {
    const r = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: { name: 'x', scopes: ['admin'], extra: true },
    });
    assert.equal(r.status, 400);
    assert.equal(r.json.code, 'INVALID_ARGUMENT');
    assert.match(r.json.message, /additional properties/);
  });

  it('invalid JSON is a clear 400 without parser internals', async () => {
    const r = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      rawBody: '{"name": ',
      headers: { 'content-type': 'application/json' },
    });
    assert.equal(r.status, 400);
    assert.equal(r.json.message, 'The request body is not valid JSON.');
  });

  it('non-JSON content types are refused with 415', async () => {
    const r = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      rawBody: 'hello',
      headers: { 'content-type': 'text/plain' },
    });
    assert.equal(r.status, 415);
    assert.ok(r.headers.get('x-request-id'));
  });

  it('CORS: a foreign origin gets no Access-Control-Allow-Origin; the allowlisted one does, never with credentials', async () => {
    const foreign = await s.req('GET', '/v1/whoami', {
      key: s.adminKey,
      headers: { origin: 'https://evil.example' },
    });
    assert.equal(foreign.headers.get('access-control-allow-origin'), null);
    const preflightForeign = await s.req('OPTIONS', '/v1/sandboxes', {
      headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' },
    });
    assert.equal(preflightForeign.headers.get('access-control-allow-origin'), null);
    const allowed = await s.req('GET', '/v1/whoami', {
      key: s.adminKey,
      headers: { origin: 'https://app.example.com' },
    });
    assert.equal(allowed.headers.get('access-control-allow-origin'), 'https://app.example.com');
    assert.equal(allowed.headers.get('access-control-allow-credentials'), null);
    const preflight = await s.req('OPTIONS', '/v1/sandboxes', {
      headers: { origin: 'https://app.example.com', 'access-control-request-method': 'POST' },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get('access-control-allow-origin'), 'https://app.example.com');
  });

  it('every route refuses unknown body properties and unknown query parameters', async () => {
    const r = await s.req('GET', '/v1/openapi.json');
    const closed = (schema: unknown): boolean => {
      if (!schema || typeof schema !== 'object') return true;
      const o = schema as {
        type?: string;
        properties?: Record<string, unknown>;
        additionalProperties?: unknown;
      };
      if (o.type === 'object' && o.properties !== undefined && o.additionalProperties !== false)
        return false;
      return Object.values(o.properties ?? {}).every(closed);
    };
    let checked = 0;
    for (const [path, ops] of Object.entries(
      r.json.paths as Record<
        string,
        Record<string, { requestBody?: { content: Record<string, { schema: unknown }> } }>
      >,
    )) {
      for (const [method, op] of Object.entries(ops)) {
        const body = op.requestBody?.content['application/json']?.schema;
        if (body !== undefined) {
          assert.ok(closed(body), `${method} ${path} body schema allows unknown properties`);
          checked++;
        }
      }
    }
    assert.ok(checked >= 4, `expected body schemas on the write routes, found ${checked}`);
    // Unknown query parameters are refused on every route (the query schemas are closed too).
    for (const [path, ops] of Object.entries(
      r.json.paths as Record<string, Record<string, unknown>>,
    )) {
      for (const method of Object.keys(ops)) {
        const url = path
          .replace('{id}', 'sb-aaaaaaaaaaaaaaaaaaaa')
          .replace('{execId}', 'ex-aaaaaaaaaaaaaaaaaaaa')
          .replace('{keyId}', 'aaaaaaaaaaaaaaaa');
        const res = await s.req(method.toUpperCase(), `${url}?bogus=1`, { key: s.adminKey });
        assert.equal(res.status, 400, `${method} ${path}?bogus=1 -> ${res.status}`);
      }
    }
  });

  it('serves an OpenAPI document generated from the route schemas', async () => {
    const r = await s.req('GET', '/v1/openapi.json');
    assert.equal(r.status, 200);
    assert.equal(r.json.openapi, '3.1.0');
    const paths = Object.keys(r.json.paths);
    for (const p of [
      '/v1/sandboxes',
      '/v1/sandboxes/{id}',
      '/v1/sandboxes/{id}/exec',
      '/v1/keys',
      '/v1/audit',
    ]) {
      assert.ok(paths.includes(p), `${p} missing from OpenAPI`);
    }
    const create = r.json.paths['/v1/sandboxes'].post;
    assert.equal(create.requestBody.content['application/json'].schema.additionalProperties, false);
  });
});
