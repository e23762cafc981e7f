import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { startTestServer, type TestServer } from './helpers.js';

const HIGH = { burst: 1e6, perSecond: 1e6 };
const JSON_VALUE = fc.jsonValue({ maxDepth: 3 });
const SEGMENT = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.constantFrom(
    'sb-aaaaaaaaaaaaaaaaaaaa',
    'ex-aaaaaaaaaaaaaaaaaaaa',
    'aaaaaaaaaaaaaaaa',
    '..',
    '%00',
    '%2e%2e%2f',
    '__proto__',
  ),
);

describe('fuzz: random bodies, params and headers on every route', () => {
  let s: TestServer;
  let routes: { method: string; path: string }[];
  before(async () => {
    s = await startTestServer({
      config: {
        quotas: { maxLiveSandboxes: 2 },
        rateLimits: {
          perKey: { create: HIGH, exec: HIGH, write: HIGH, read: HIGH },
          global: { create: HIGH, exec: HIGH, write: HIGH, read: HIGH },
        },
        authThrottle: { maxFailures: 1e9 },
      },
    });
    const doc = await s.req('GET', '/v1/openapi.json');
    routes = [];
    for (const [path, ops] of Object.entries(
      doc.json.paths as Record<string, Record<string, unknown>>,
    )) {
      for (const method of Object.keys(ops)) routes.push({ method: method.toUpperCase(), path });
    }
    assert.ok(routes.length >= 15, `expected every route in OpenAPI, got ${routes.length}`);
  });
  after(async () => {
    await s.close();
  });

  function fill(path: string, segs: string[]): string {
    let i = 0;
    return path.replace(/\{[A-Za-z]+\}/g, () => encodeURIComponent(segs[i++ % segs.length] ?? ''));
  }

  it('never answers 5xx, always with the error shape and security headers', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.nat(),
        fc.array(SEGMENT, { minLength: 2, maxLength: 2 }),
        fc.oneof(
          JSON_VALUE,
          fc.record(
            {
              command: fc.string(),
              argv: fc.array(fc.string()),
              env: fc.dictionary(fc.string(), fc.string()),
              labels: fc.dictionary(fc.string(), fc.string()),
              timeoutMs: fc.integer(),
            },
            { requiredKeys: [] },
          ),
        ),
        fc.dictionary(
          fc.constantFrom('accept', 'origin', 'x-request-id', 'content-type', 'x-forwarded-for'),
          fc.string({ maxLength: 60 }).map((v) => v.replace(/[^\x20-\x7e]/g, '')),
        ),
        fc.constantFrom('admin', 'none', 'garbage'),
        fc.option(
          fc.string({ maxLength: 30 }).map((q) => q.replace(/[#]/g, '')),
          { nil: undefined },
        ),
        async (routeIndex, segs, body, headers, auth, query) => {
          const route = routes[routeIndex % routes.length]!;
          const path = fill(route.path, segs) + (query ? `?${query}` : '');
          const sendBody = route.method !== 'GET' && route.method !== 'DELETE';
          const h: Record<string, string> = { ...headers };
          if (auth === 'admin') h.authorization = `Bearer ${s.adminKey}`;
          if (auth === 'garbage') h.authorization = 'Bearer psk_zzzzzzzzzzzzzzzz_' + 'A'.repeat(43);
          if (sendBody)
            h['content-type'] =
              h['content-type'] && Math.random() < 0.2 ? h['content-type'] : 'application/json';
          let res: Response;
          try {
            res = await fetch(s.url + path, {
              method: route.method,
              headers: h,
              ...(sendBody ? { body: JSON.stringify(body) } : {}),
            });
          } catch (err) {
            // fetch itself refuses some URLs/headers before sending; that is not the server's doing.
            if (err instanceof TypeError) return;
            throw err;
          }
          const text = await res.text();
          assert.ok(res.status < 500, `${route.method} ${path} -> ${res.status} ${text}`);
          assert.ok(res.headers.get('x-request-id'));
          assert.equal(res.headers.get('x-frame-options'), 'DENY');
          if (res.status >= 400 && res.headers.get('content-type')?.includes('json')) {
            const parsed = JSON.parse(text) as { code: string; message: string; requestId: string };
            assert.equal(typeof parsed.code, 'string');
            assert.equal(typeof parsed.message, 'string');
            assert.equal(parsed.requestId, res.headers.get('x-request-id'));
            assert.doesNotMatch(text, /\/work\/|node_modules|SQLITE|at [A-Za-z.]+ \(/);
          }
        },
      ),
      { numRuns: 400 },
    );
    const health = await s.req('GET', '/healthz');
    assert.equal(health.status, 200);
  });
});
