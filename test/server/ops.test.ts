/**
 * Circuit breaker, readiness and metrics against a real server with real sandboxes (and, for
 * egress refusals, the real gateway; traffic never leaves loopback).
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DEFAULT_KEY_LIMITS } from '../../src/auth/index.js';
import { parsePolicyObject } from '../../src/policy/index.js';
import { CircuitBreaker } from '../../src/server/breaker.js';
import { resolveConfig } from '../../src/server/index.js';
import { isLoopbackPeer } from '../../src/server/routes-ops.js';
import { mapResolver } from '../egress/helpers.js';
import { startTestServer, type TestServer } from './helpers.js';

async function keyFor(s: TestServer, tenant: string, scopes: string[]): Promise<string> {
  const r = await s.req('POST', '/v1/keys', {
    key: s.adminKey,
    body: { name: `${tenant}-${scopes.join('-')}`, tenant, scopes },
  });
  assert.equal(r.status, 201, r.text);
  return r.json.key as string;
}

async function waitFor<T>(check: () => Promise<T | undefined | false>, timeoutMs = 10_000) {
  const start = Date.now();
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() - start > timeoutMs) throw new Error('timed out waiting for condition');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The value of one sample line (`name{labels} value`) in a Prometheus text page. */
function sample(page: string, series: string): number | undefined {
  const line = page.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

const SANDBOX_SCOPES = ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'];

describe('circuit breaker: policy denials', () => {
  let s: TestServer;
  let acme: string;
  before(async () => {
    const layer = parsePolicyObject(
      { permissions: { default: 'allow', deny: ['Bash(curl:*)', 'Read(//etc/**)'] } },
      'test:operator',
      'operator',
    );
    s = await startTestServer({ policyLayers: [layer], config: { breakerThreshold: 3 } });
    acme = await keyFor(s, 'acme', SANDBOX_SCOPES);
  });
  after(async () => {
    await s.close();
  });

  it('freezes and flags a sandbox past the threshold, leaves a well-behaved one alone; only an admin resume clears it', async () => {
    const bad = (await s.req('POST', '/v1/sandboxes', { key: acme, body: {} })).json.id as string;
    const good = (await s.req('POST', '/v1/sandboxes', { key: acme, body: {} })).json.id as string;
    const exec = (id: string, command: string) =>
      s.req('POST', `/v1/sandboxes/${id}/exec`, { key: acme, body: { command } });

    // Up to the threshold: denied, but nothing else happens.
    for (let i = 0; i < 3; i++) {
      const r = await exec(bad, 'curl http://127.0.0.1:9/');
      assert.equal(r.status, 403);
      assert.equal(r.json.code, 'POLICY_DENIED');
    }
    // The well-behaved sandbox: a few denials below the threshold and normal work.
    for (let i = 0; i < 2; i++) assert.equal((await exec(good, 'curl x')).status, 403);
    await new Promise((r) => setTimeout(r, 200));
    let view = await s.req('GET', `/v1/sandboxes/${bad}`, { key: acme });
    assert.equal(view.json.state, 'running');
    assert.equal(view.json.flagged, false);

    // One more (threshold + 1) trips the breaker.
    assert.equal((await exec(bad, 'curl http://127.0.0.1:9/')).status, 403);
    view = await waitFor(async () => {
      const r = await s.req('GET', `/v1/sandboxes/${bad}`, { key: acme });
      return r.json.flagged === true ? r : undefined;
    });
    assert.equal(view.json.state, 'paused');
    assert.equal(view.json.reason, 'circuit breaker: 4 denials in 60 s; needs a human');
    assert.equal(s.engine.get(bad)?.state, 'paused');
    const refused = await exec(bad, 'echo hi');
    assert.equal(refused.status, 409);
    assert.equal(refused.json.code, 'SANDBOX_NOT_RUNNING');

    const goodView = await s.req('GET', `/v1/sandboxes/${good}`, { key: acme });
    assert.equal(goodView.json.state, 'running');
    assert.equal(goodView.json.flagged, false);
    const fine = await exec(good, 'echo fine');
    assert.equal(fine.status, 200, fine.text);
    assert.equal(fine.json.stdout, 'fine\n');

    const audit = await s.req('GET', `/v1/audit?type=sandbox.flagged&sandboxId=${bad}`, {
      key: s.adminKey,
    });
    assert.equal(audit.json.items.length, 1);
    assert.equal(audit.json.items[0].tenant, 'acme');
    assert.match(audit.json.items[0].data.reason, /circuit breaker/);

    // The tenant cannot unfreeze it; an admin (another tenant) can, which clears the flag.
    const selfResume = await s.req('POST', `/v1/sandboxes/${bad}/resume`, { key: acme });
    assert.equal(selfResume.status, 403);
    assert.equal(selfResume.json.code, 'FORBIDDEN');
    assert.match(selfResume.json.message, /circuit breaker/);
    const adminResume = await s.req('POST', `/v1/sandboxes/${bad}/resume`, { key: s.adminKey });
    assert.equal(adminResume.status, 200, adminResume.text);
    assert.equal(adminResume.json.state, 'running');
    assert.equal(adminResume.json.flagged, false);
    const back = await exec(bad, 'echo back');
    assert.equal(back.json.stdout, 'back\n');
    const resumed = await s.req('GET', `/v1/audit?type=sandbox.resume&sandboxId=${bad}`, {
      key: s.adminKey,
    });
    assert.equal(resumed.json.items[0].data.clearedFlag, true);

    // Ordinary pause/resume by the tenant still works for unflagged sandboxes.
    assert.equal((await s.req('POST', `/v1/sandboxes/${good}/pause`, { key: acme })).status, 200);
    assert.equal((await s.req('POST', `/v1/sandboxes/${good}/resume`, { key: acme })).status, 200);
  });

  it('file-action policy denials count too', async () => {
    const id = (await s.req('POST', '/v1/sandboxes', { key: acme, body: {} })).json.id as string;
    for (let i = 0; i < 4; i++) {
      const r = await s.req('GET', `/v1/sandboxes/${id}/files?path=/etc/passwd`, { key: acme });
      assert.equal(r.status, 403, r.text);
      assert.equal(r.json.code, 'POLICY_DENIED');
    }
    const view = await waitFor(async () => {
      const r = await s.req('GET', `/v1/sandboxes/${id}`, { key: acme });
      return r.json.flagged === true ? r : undefined;
    });
    assert.equal(view.json.state, 'paused');
  });
});

describe('circuit breaker: egress refusals', () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer({
      config: { breakerThreshold: 3 },
      egress: {
        resolver: mapResolver({ 'other.test': ['127.0.0.1'] }),
        connectGuard: (address) => address.family === 4 && address.bytes[0] === 127,
      },
    });
  });
  after(async () => {
    await s.close();
  });

  it('a sandbox whose connections keep being refused by the gateway is frozen and flagged', async () => {
    const created = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { policy: { network: { allow: [] } } },
    });
    assert.equal(created.status, 201, created.text);
    const id = created.json.id as string;
    // In the background: the freeze stops the loop mid-way.
    const started = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: {
        command:
          'for i in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null --max-time 3 http://other.test:9/; done',
        background: true,
      },
    });
    assert.equal(started.status, 202, started.text);
    const view = await waitFor(async () => {
      const r = await s.req('GET', `/v1/sandboxes/${id}`, { key: s.adminKey });
      return r.json.flagged === true ? r : undefined;
    }, 20_000);
    assert.equal(view.json.state, 'paused');
    assert.match(view.json.reason, /^circuit breaker: 4 denials in 60 s; needs a human$/);
    const metrics = await s.req('GET', '/metrics', { key: s.adminKey });
    assert.ok((sample(metrics.text, 'palisade_egress_decisions_total{decision="deny"}') ?? 0) >= 4);
    assert.equal(sample(metrics.text, 'palisade_breaker_trips_total'), 1);
    assert.equal(sample(metrics.text, 'palisade_sandboxes_flagged'), 1);
  });
});

describe('circuit breaker bounds', () => {
  it('counts within a sliding window, trips once past the threshold, and bounds what it tracks', () => {
    let now = 0;
    const trips: Array<[string, number]> = [];
    const breaker = new CircuitBreaker({
      threshold: 2,
      windowMs: 60_000,
      maxTracked: 3,
      now: () => now,
      onTrip: (id, n) => trips.push([id, n]),
    });
    breaker.record('a', 'policy');
    now = 30_000;
    breaker.record('a', 'egress');
    now = 61_000; // the first refusal left the window
    breaker.record('a', 'policy');
    assert.deepEqual(trips, []);
    now = 62_000;
    breaker.record('a', 'policy');
    assert.deepEqual(trips, [['a', 3]]);
    assert.equal(breaker.tracked, 0);
    for (const id of ['b', 'c', 'd', 'e', 'f']) breaker.record(id, 'policy');
    assert.equal(breaker.tracked, 3);
    assert.throws(
      () => new CircuitBreaker({ threshold: 0, onTrip: () => undefined }),
      /positive integer/,
    );
    assert.throws(
      () => resolveConfig({ dataDir: '/tmp/x', breakerThreshold: 0 }),
      /breakerThreshold/,
    );
  });
});

describe('readiness and metrics', () => {
  let s: TestServer;
  let reader: string;
  let metricsKey: string;
  before(async () => {
    const layer = parsePolicyObject(
      { permissions: { default: 'allow', deny: ['Bash(rm:*)'] } },
      'test:operator',
      'operator',
    );
    s = await startTestServer({
      policyLayers: [layer],
      config: {
        rateLimits: { perKey: { ...DEFAULT_KEY_LIMITS, read: { burst: 4, perSecond: 0.01 } } },
      },
    });
    reader = await keyFor(s, 'acme', ['sandboxes:read']);
    metricsKey = await keyFor(s, 'ops', ['metrics:read']);
  });
  after(async () => {
    await s.close();
  });

  it('healthz and readyz answer without a key', async () => {
    const health = await s.req('GET', '/healthz');
    assert.equal(health.status, 200);
    const ready = await s.req('GET', '/readyz');
    assert.equal(ready.status, 200, ready.text);
    assert.equal(ready.json.ready, true);
    assert.deepEqual(ready.json.checks, {
      database: { ok: true },
      engine: { ok: true },
      killSwitches: { ok: true },
    });
  });

  it('metrics need metrics:read or admin; loopback alone is not enough by default', async () => {
    const anon = await s.req('GET', '/metrics');
    assert.equal(anon.status, 401);
    const wrong = await s.req('GET', '/metrics', { key: reader });
    assert.equal(wrong.status, 403);
    assert.equal(wrong.json.code, 'FORBIDDEN');
    const ok = await s.req('GET', '/metrics', { key: metricsKey });
    assert.equal(ok.status, 200, ok.text);
    assert.match(ok.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.equal((await s.req('GET', '/metrics', { key: s.adminKey })).status, 200);
  });

  it('metrics count sandboxes, execs, latency, policy decisions, rate-limit hits and kills', async () => {
    const id = (await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: {} })).json
      .id as string;
    const exec = (command: string, timeoutMs?: number) =>
      s.req('POST', `/v1/sandboxes/${id}/exec`, {
        key: s.adminKey,
        body: { command, ...(timeoutMs ? { timeoutMs } : {}) },
      });
    assert.equal((await exec('true')).status, 200);
    assert.equal((await exec('exit 3')).json.exitCode, 3);
    assert.equal((await exec('sleep 5', 200)).json.timedOut, true);
    assert.equal((await exec('rm -rf /workspace')).status, 403);
    // Exhaust the reader key's read bucket (burst 4; one read spent in the previous test).
    let limited = 0;
    for (let i = 0; i < 6; i++)
      if ((await s.req('GET', '/v1/sandboxes', { key: reader })).status === 429) limited++;
    assert.ok(limited >= 1);
    const kill = await s.req('POST', '/v1/kill', {
      key: s.adminKey,
      body: { labels: 'never=matches' },
    });
    assert.equal(kill.status, 201);

    const page = (await s.req('GET', '/metrics', { key: metricsKey })).text;
    assert.equal(sample(page, 'palisade_sandboxes{state="running"}'), 1);
    assert.equal(sample(page, 'palisade_sandboxes{state="failed"}'), 0);
    assert.equal(sample(page, 'palisade_execs_total{outcome="success"}'), 1);
    assert.equal(sample(page, 'palisade_execs_total{outcome="nonzero"}'), 1);
    assert.equal(sample(page, 'palisade_execs_total{outcome="timeout"}'), 1);
    assert.equal(sample(page, 'palisade_execs_total{outcome="denied"}'), 1);
    assert.equal(sample(page, 'palisade_exec_duration_seconds_count'), 3);
    assert.equal(sample(page, 'palisade_exec_duration_seconds_bucket{le="+Inf"}'), 3);
    assert.ok((sample(page, 'palisade_exec_duration_seconds_sum') ?? 0) >= 0.2);
    assert.equal(sample(page, 'palisade_policy_decisions_total{decision="allow"}'), 3);
    assert.equal(sample(page, 'palisade_policy_decisions_total{decision="deny"}'), 1);
    assert.equal(sample(page, 'palisade_rate_limit_hits_total{category="read"}'), limited);
    assert.equal(sample(page, 'palisade_kill_switches_active'), 1);
    assert.equal(sample(page, 'palisade_kill_switch_events_total{event="engage"}'), 1);
    // Every sample line is `name{labels} number`; no request data ever becomes a label.
    for (const line of page.split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      assert.match(line, /^palisade_[a-z_]+(\{[a-z]+="[A-Za-z0-9_.+]+"\})? -?[0-9.e+]+$/, line);
    }
    await s.req('DELETE', `/v1/kill/${kill.json.id}`, { key: s.adminKey });
    const after = (await s.req('GET', '/metrics', { key: metricsKey })).text;
    assert.equal(sample(after, 'palisade_kill_switches_active'), 0);
    await s.req('DELETE', `/v1/sandboxes/${id}`, { key: s.adminKey });
  });
});

describe('metrics from loopback and readiness failure', () => {
  it('metricsLoopback lets a loopback client read metrics without a key', async () => {
    const s = await startTestServer({ config: { metricsLoopback: true } });
    try {
      const r = await s.req('GET', '/metrics');
      assert.equal(r.status, 200, r.text);
      assert.match(r.text, /palisade_kill_switches_active 0/);
      // Other routes still need a key.
      assert.equal((await s.req('GET', '/v1/sandboxes')).status, 401);
    } finally {
      await s.close();
    }
    assert.equal(isLoopbackPeer('127.0.0.1'), true);
    assert.equal(isLoopbackPeer('::ffff:127.0.0.5'), true);
    assert.equal(isLoopbackPeer('::1'), true);
    assert.equal(isLoopbackPeer('10.0.0.1'), false);
    assert.equal(isLoopbackPeer('::ffff:10.0.0.1'), false);
    assert.equal(isLoopbackPeer(undefined), false);
  });

  it('readyz is 503 naming the database when the database is unusable', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'palisade-ready-'));
    chmodSync(dataDir, 0o711);
    const s = await startTestServer({ dataDir });
    try {
      await s.cp.store.close();
      const r = await s.req('GET', '/readyz');
      assert.equal(r.status, 503, r.text);
      assert.equal(r.json.ready, false);
      assert.equal(r.json.code, 'REQUIREMENT_MISSING');
      assert.equal(r.json.checks.database.ok, false);
      assert.equal(r.json.checks.engine.ok, true);
      assert.match(r.json.message, /database/);
      assert.equal(typeof r.json.requestId, 'string');
      assert.doesNotMatch(r.text, /sqlite|palisade\.db|\/tmp\//i);
    } finally {
      await s.close().catch(() => undefined);
      await s.engine.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
