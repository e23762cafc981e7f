import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  AbortError,
  ConnectionError,
  PalisadeClient,
  RateLimitError,
  Sandbox,
  ServerError,
  TimeoutError,
  type ClientOptions,
} from '../../src/client/index.js';
import { startTestServer, type TestServer } from '../server/helpers.js';
import { closedPort, startFrontProxy, type FrontProxy } from './helpers.js';

describe('retries happen only where safe (real server behind a real front proxy)', () => {
  let s: TestServer;
  let front: FrontProxy;
  let direct: PalisadeClient;
  let viaFront: (extra?: ClientOptions) => PalisadeClient;
  let sandbox: Sandbox;

  before(async () => {
    s = await startTestServer({ egress: { connectGuard: () => false } });
    front = await startFrontProxy(s.url);
    direct = new PalisadeClient({ baseUrl: s.url, apiKey: s.adminKey });
    viaFront = (extra = {}) =>
      new PalisadeClient({
        baseUrl: front.url,
        apiKey: s.adminKey,
        retries: 3,
        retryBaseDelayMs: 10,
        retryMaxDelayMs: 50,
        ...extra,
      });
    sandbox = await direct.createSandbox({ network: { allow: ['example.com'] } });
  });
  after(async () => {
    await front.close();
    await s.close();
  });

  const reset = () => front.reset();

  it('a GET is retried on 503 and then succeeds', async () => {
    reset();
    front.plan = (method, _path, nth) =>
      method === 'GET' && nth <= 2 ? { kind: 'status', status: 503 } : { kind: 'proxy' };
    const info = await viaFront().getSandboxInfo(sandbox.id);
    assert.equal(info.id, sandbox.id);
    assert.equal(front.count('GET', `/v1/sandboxes/${sandbox.id}`), 3);
  });

  it('POST create and POST exec are NOT retried on 503, even when the server already acted', async () => {
    reset();
    front.plan = (method, path) =>
      method === 'POST' && (path === '/v1/sandboxes' || path.endsWith('/exec'))
        ? { kind: 'forwardThen503' }
        : { kind: 'proxy' };
    const client = viaFront();
    await assert.rejects(
      client.createSandbox({ labels: { probe: 'no-retry' } }),
      (err: unknown) => {
        assert.ok(err instanceof ServerError);
        assert.equal(err.status, 503);
        assert.equal(err.attempts, 1);
        return true;
      },
    );
    assert.equal(front.count('POST', '/v1/sandboxes'), 1);
    const created = await direct.listSandboxes({ labels: { probe: 'no-retry' } });
    assert.equal(created.items.length, 1, 'exactly one sandbox: a retry would have made two');
    await direct.sandbox(created.items[0]!.id).kill({ purge: true });

    await assert.rejects(
      client.sandbox(sandbox.id).commands.run('echo once >> /workspace/runs'),
      ServerError,
    );
    assert.equal(front.count('POST', `/v1/sandboxes/${sandbox.id}/exec`), 1);
    assert.equal((await sandbox.commands.run('cat /workspace/runs')).stdout, 'once\n');
    await assert.rejects(
      client.sandbox(sandbox.id).commands.run('true', { onStdout: () => undefined }),
      ServerError,
    );
    assert.equal(front.count('POST', `/v1/sandboxes/${sandbox.id}/exec`), 2);
  });

  it('PUT and DELETE are idempotent and retried on 503', async () => {
    reset();
    front.plan = (method, _path, nth) =>
      (method === 'PUT' || method === 'DELETE') && nth === 1
        ? { kind: 'status', status: 503 }
        : { kind: 'proxy' };
    const client = viaFront();
    const updated = await client.sandbox(sandbox.id).network.update({ allow: ['pypi.org'] });
    assert.deepEqual(updated.rules?.allow, ['pypi.org']);
    assert.equal(front.count('PUT', `/v1/sandboxes/${sandbox.id}/network`), 2);
    const victim = await direct.createSandbox();
    await client.sandbox(victim.id).kill();
    assert.equal(front.count('DELETE', `/v1/sandboxes/${victim.id}`), 2);
    assert.equal((await victim.getInfo()).state, 'terminated');
  });

  it('honours Retry-After, and gives up at once when it is longer than maxRetryAfterMs', async () => {
    reset();
    front.plan = (method, _path, nth) =>
      method === 'GET' && nth === 1
        ? { kind: 'status', status: 429, retryAfter: '1' }
        : { kind: 'proxy' };
    const started = Date.now();
    await viaFront().getSandboxInfo(sandbox.id);
    const waited = Date.now() - started;
    assert.ok(waited >= 950, `waited only ${waited} ms`);
    assert.equal(front.count('GET', `/v1/sandboxes/${sandbox.id}`), 2);

    reset();
    front.plan = () => ({ kind: 'status', status: 429, retryAfter: '120' });
    await assert.rejects(
      viaFront({ maxRetryAfterMs: 5000 }).getSandboxInfo(sandbox.id),
      (err: unknown) => {
        assert.ok(err instanceof RateLimitError);
        assert.equal(err.retryAfterMs, 120_000);
        assert.equal(err.requestId, 'req_front_1');
        return true;
      },
    );
    assert.equal(front.seen.length, 1);
  });

  it('stops after `retries` retries with exponential, jittered, capped backoff', async () => {
    reset();
    front.plan = () => ({ kind: 'status', status: 503 });
    const started = Date.now();
    await assert.rejects(
      viaFront({ retries: 4, retryBaseDelayMs: 100, retryMaxDelayMs: 150 }).getSandboxInfo(
        sandbox.id,
      ),
      (err: unknown) => err instanceof ServerError && err.attempts === 5,
    );
    assert.equal(front.seen.length, 5);
    // Ceilings 100, 150, 150, 150 ms: full jitter waits at most their sum.
    assert.ok(Date.now() - started < 550 + 1000);
    reset();
    front.plan = () => ({ kind: 'status', status: 503 });
    await assert.rejects(viaFront({ retries: 0 }).getSandboxInfo(sandbox.id), ServerError);
    assert.equal(front.seen.length, 1);
  });

  it('does not retry other errors (502 with a non-JSON body) and still types them', async () => {
    reset();
    front.plan = () => ({ kind: 'status', status: 502, body: '<html>bad gateway</html>' });
    await assert.rejects(viaFront().getSandboxInfo(sandbox.id), (err: unknown) => {
      assert.ok(err instanceof ServerError);
      assert.equal(err.status, 502);
      assert.equal(err.code, 'INTERNAL');
      assert.equal(err.requestId, 'req_front_1');
      return true;
    });
    assert.equal(front.seen.length, 1);
  });

  it('a stalled GET times out (TimeoutError) and is not retried', async () => {
    reset();
    front.plan = () => ({ kind: 'delay', ms: 3000 });
    const started = Date.now();
    await assert.rejects(
      viaFront({ timeoutMs: 300 }).getSandboxInfo(sandbox.id),
      (err: unknown) => err instanceof TimeoutError && err.code === 'TIMEOUT',
    );
    assert.ok(Date.now() - started < 2000);
    assert.equal(front.seen.length, 1);
  });

  it('aborting during a backoff wait rejects at once with AbortError', async () => {
    reset();
    front.plan = () => ({ kind: 'status', status: 503, retryAfter: '10' });
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 200);
    const started = Date.now();
    await assert.rejects(
      viaFront().getSandboxInfo(sandbox.id, { signal: controller.signal }),
      AbortError,
    );
    assert.ok(Date.now() - started < 2000);
    assert.equal(front.seen.length, 1);
  });

  it('connection refused: a GET is retried, a POST is not', async () => {
    const port = await closedPort();
    let calls = 0;
    const counting: typeof fetch = (input, init) => {
      calls++;
      return fetch(input, init);
    };
    const client = new PalisadeClient({
      baseUrl: `http://127.0.0.1:${port}`,
      apiKey: s.adminKey,
      retries: 2,
      retryBaseDelayMs: 10,
      fetch: counting,
    });
    await assert.rejects(client.listSandboxes(), (err: unknown) => {
      assert.ok(err instanceof ConnectionError);
      assert.equal(err.attempts, 3);
      assert.match(err.message, /ECONNREFUSED/);
      return true;
    });
    assert.equal(calls, 3);
    calls = 0;
    await assert.rejects(client.createSandbox(), (err: unknown) => {
      assert.ok(err instanceof ConnectionError);
      assert.equal(err.attempts, 1);
      return true;
    });
    assert.equal(calls, 1);
  });
});

describe("the real server's rate limit (429 with Retry-After)", () => {
  let s: TestServer;
  before(async () => {
    const relaxed = { burst: 100, perSecond: 100 };
    s = await startTestServer({
      config: {
        rateLimits: {
          perKey: {
            create: relaxed,
            exec: relaxed,
            write: relaxed,
            read: { burst: 1, perSecond: 1 },
          },
        },
      },
    });
  });
  after(async () => {
    await s.close();
  });

  it('maps to RateLimitError with retryAfterMs, and an idempotent call waits it out', async () => {
    const noRetry = new PalisadeClient({ baseUrl: s.url, apiKey: s.adminKey, retries: 0 });
    await noRetry.whoami();
    await assert.rejects(noRetry.whoami(), (err: unknown) => {
      assert.ok(err instanceof RateLimitError);
      assert.equal(err.status, 429);
      assert.equal(err.code, 'RATE_LIMITED');
      assert.ok((err.retryAfterMs ?? 0) >= 1000, String(err.retryAfterMs));
      assert.match(err.requestId ?? '', /^req_/);
      return true;
    });
    const patient = new PalisadeClient({ baseUrl: s.url, apiKey: s.adminKey, retries: 2 });
    const started = Date.now();
    assert.equal((await patient.whoami()).tenant, 'default');
    assert.ok(Date.now() - started >= 900);
  });
});
