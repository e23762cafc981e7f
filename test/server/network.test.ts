/**
 * Sandbox network through the control plane: a real server over HTTP, real sandboxes, the real
 * egress gateway. Traffic stays on loopback: the upstream listens on the host's 127.0.0.1, test
 * names resolve to it through the gateway's injected resolver, and a connect guard refuses any
 * non-loopback address as a safety net.
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuditLog } from '../../src/audit/index.js';
import type { EgressEvent } from '../../src/egress/index.js';
import { parseEgressRule, parsePolicyObject } from '../../src/policy/index.js';
import { EgressAuditSink, allowRuleCovered } from '../../src/server/index.js';
import { openStore } from '../../src/store/index.js';
import { mapResolver } from '../egress/helpers.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { startTestServer, type Res, type TestServer } from './helpers.js';

const egressOptions = () => ({
  resolver: mapResolver({
    'allowed.test': ['127.0.0.1'],
    'other.test': ['127.0.0.1'],
    'stream.test': ['127.0.0.1'],
    'blocked.test': ['127.0.0.1'],
  }),
  // Safety net: nothing in these tests may leave loopback.
  connectGuard: (address: { family: number; bytes: Uint8Array }) =>
    address.family === 4 && address.bytes[0] === 127,
});

async function sh(
  s: TestServer,
  id: string,
  command: string,
  key = s.adminKey,
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const r = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
    key,
    body: { command, timeoutMs: 20_000 },
  });
  assert.equal(r.status, 200, r.text);
  return r.json;
}

async function waitFor<T>(
  check: () => Promise<T | undefined | false>,
  timeoutMs = 8000,
): Promise<T> {
  const start = Date.now();
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() - start > timeoutMs) throw new Error('timed out waiting for condition');
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function auditOf(s: TestServer, query: string): Promise<Res> {
  const r = await s.req('GET', `/v1/audit?${query}`, { key: s.adminKey });
  assert.equal(r.status, 200, r.text);
  return r;
}

describe('sandbox network through the control plane', () => {
  let s: TestServer;
  let up: Upstream;
  let netId = '';
  let plainId = '';

  before(async () => {
    up = await startUpstream();
    s = await startTestServer({ egress: egressOptions() });
    const created = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: {
        policy: {
          network: {
            allow: [`allowed.test:${up.port}`, `stream.test:${up.port}`, `127.0.0.1:${up.port}`],
          },
        },
      },
    });
    assert.equal(created.status, 201, created.text);
    netId = created.json.id;
    const plain = await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: {} });
    assert.equal(plain.status, 201, plain.text);
    plainId = plain.json.id;
  });

  after(async () => {
    await s.close();
    await up.close();
  });

  it('rules from the create body reach a loopback server through the gateway; a denied destination gets the 403', async () => {
    const ok = await sh(s, netId, `curl -sS http://allowed.test:${up.port}/hello`);
    assert.equal(ok.exitCode, 0, ok.stderr);
    assert.equal(ok.stdout, 'upstream /hello');
    // An IP literal through the proxy (NO_PROXY lists 127.0.0.1, so override it).
    const literal = await sh(s, netId, `curl -sS --noproxy '' http://127.0.0.1:${up.port}/lit`);
    assert.equal(literal.exitCode, 0, literal.stderr);
    assert.equal(literal.stdout, 'upstream /lit');
    // socks5h through ALL_PROXY: the gateway resolves the name.
    const socks = await sh(
      s,
      netId,
      `curl -sS --proxy "$ALL_PROXY" http://allowed.test:${up.port}/socks`,
    );
    assert.equal(socks.exitCode, 0, socks.stderr);
    assert.equal(socks.stdout, 'upstream /socks');
    // A CONNECT tunnel (how HTTPS goes through the proxy).
    const tunnel = await sh(s, netId, `curl -sS -p http://allowed.test:${up.port}/tunnel`);
    assert.equal(tunnel.exitCode, 0, tunnel.stderr);
    assert.equal(tunnel.stdout, 'upstream /tunnel');
    const hitsBefore = up.hits.length;
    const denied = await sh(s, netId, `curl -sS -D - -o /dev/null http://other.test:${up.port}/no`);
    assert.match(denied.stdout, /^HTTP\/1\.1 403/);
    assert.match(denied.stdout, /X-Palisade-Blocked: no allow rule matches other\.test/i);
    const wrongPort = await sh(
      s,
      netId,
      `curl -sS -D - -o /dev/null http://allowed.test:${up.port === 65535 ? 1 : up.port + 1}/`,
    );
    assert.match(wrongPort.stdout, /^HTTP\/1\.1 403/);
    assert.equal(up.hits.length, hitsBefore, 'denied requests never reach the upstream');

    const view = await s.req('GET', `/v1/sandboxes/${netId}/network`, { key: s.adminKey });
    assert.equal(view.status, 200, view.text);
    assert.equal(view.json.enabled, true);
    assert.deepEqual(view.json.rules.allow, [
      `allowed.test:${up.port}`,
      `stream.test:${up.port}`,
      `127.0.0.1:${up.port}`,
    ]);
    assert.deepEqual(view.json.operator, { allow: [], deny: [] });
    assert.ok(view.json.stats.bytesIn > 0);
    assert.ok(view.json.stats.denied >= 2);
    assert.ok(view.json.recentDenials.some((d: EgressEvent) => d.host === 'other.test'));
    const sandbox = await s.req('GET', `/v1/sandboxes/${netId}`, { key: s.adminKey });
    assert.deepEqual(sandbox.json.policy.network.allow, view.json.rules.allow);
  });

  it('without a network section there is no proxy env and no network at all', async () => {
    const env = await sh(s, plainId, 'env | grep -ic proxy; true');
    assert.equal(env.stdout.trim(), '0');
    const direct = await sh(s, plainId, `curl -sS --max-time 3 http://127.0.0.1:${up.port}/`);
    assert.notEqual(direct.exitCode, 0);
    const viaName = await sh(s, plainId, `curl -sS --max-time 3 http://allowed.test:${up.port}/`);
    assert.notEqual(viaName.exitCode, 0);
    assert.match(viaName.stderr, /resolve/i);
    const view = await s.req('GET', `/v1/sandboxes/${plainId}/network`, { key: s.adminKey });
    assert.equal(view.status, 200);
    assert.equal(view.json.enabled, false);
    assert.equal(view.json.rules, null);
    assert.equal(view.json.stats, null);
    const put = await s.req('PUT', `/v1/sandboxes/${plainId}/network`, {
      key: s.adminKey,
      body: { allow: [`allowed.test:${up.port}`] },
    });
    assert.equal(put.status, 409);
    assert.equal(put.json.code, 'CONFLICT');
    assert.match(put.json.message, /created without a "network" section/);
  });

  it('PUT changes rules live: an open connection to a now-denied destination is closed, new connections follow the new rules', async () => {
    const bg = await s.req('POST', `/v1/sandboxes/${netId}/exec`, {
      key: s.adminKey,
      body: { command: `curl -sS -N http://stream.test:${up.port}/stream`, background: true },
    });
    assert.equal(bg.status, 202, bg.text);
    const execId = bg.json.id;
    // The stream is flowing through the gateway.
    await waitFor(async () => {
      const logs = await s.req('GET', `/v1/sandboxes/${netId}/execs/${execId}/logs`, {
        key: s.adminKey,
      });
      return logs.json.chunks.some((c: { data: string }) => c.data.includes('tick'));
    });
    const put = await s.req('PUT', `/v1/sandboxes/${netId}/network`, {
      key: s.adminKey,
      body: { allow: [`allowed.test:${up.port}`, `127.0.0.1:${up.port}`] },
    });
    assert.equal(put.status, 200, put.text);
    assert.deepEqual(put.json.rules.allow, [`allowed.test:${up.port}`, `127.0.0.1:${up.port}`]);
    // The gateway cut the stream, so curl ends on its own (it would run forever otherwise).
    const ended = await waitFor(async () => {
      const st = await s.req('GET', `/v1/sandboxes/${netId}/execs/${execId}`, {
        key: s.adminKey,
      });
      return st.json.status !== 'running' ? st.json : undefined;
    });
    assert.notEqual(ended.exitCode, 0);
    const fresh = await sh(s, netId, `curl -sS -D - -o /dev/null http://stream.test:${up.port}/x`);
    assert.match(fresh.stdout, /^HTTP\/1\.1 403/);
    const still = await sh(s, netId, `curl -sS http://allowed.test:${up.port}/still`);
    assert.equal(still.stdout, 'upstream /still');
    const cut = await waitFor(async () => {
      const r = await auditOf(s, `type=egress.deny&sandboxId=${netId}&limit=1000`);
      return r.json.items.find((x: { data: { reason: string } }) =>
        /policy changed/.test(x.data.reason),
      );
    });
    assert.equal(cut.data.host, 'stream.test');
    const change = await auditOf(s, `type=sandbox.network_update&sandboxId=${netId}`);
    assert.equal(change.json.items.length, 1);
    assert.deepEqual(change.json.items[0].data.rules.allow, put.json.rules.allow);
    assert.ok(change.json.items[0].data.previous.allow.includes(`stream.test:${up.port}`));
    // Tightening to nothing keeps the proxy but refuses everything.
    const none = await s.req('PUT', `/v1/sandboxes/${netId}/network`, {
      key: s.adminKey,
      body: {},
    });
    assert.equal(none.status, 200, none.text);
    const refused = await sh(
      s,
      netId,
      `curl -sS -D - -o /dev/null http://allowed.test:${up.port}/`,
    );
    assert.match(refused.stdout, /^HTTP\/1\.1 403/);
    const back = await s.req('PUT', `/v1/sandboxes/${netId}/network`, {
      key: s.adminKey,
      body: { allow: [`allowed.test:${up.port}`, `127.0.0.1:${up.port}`] },
    });
    assert.equal(back.status, 200);
  });

  it('every egress decision is in the audit log with sandbox, tenant, host, port, address, reason and bytes', async () => {
    await sh(s, netId, `curl -sS http://allowed.test:${up.port}/audited`);
    await sh(s, netId, `curl -sS -o /dev/null http://other.test:${up.port}/audited`);
    const allow = await waitFor(async () => {
      const r = await auditOf(s, `type=egress.allow&sandboxId=${netId}&limit=1000`);
      return r.json.items.find((x: { data: { host: string } }) => x.data.host === 'allowed.test');
    });
    assert.equal(allow.tenant, 'default');
    assert.equal(allow.sandboxId, netId);
    assert.equal(allow.data.port, up.port);
    assert.equal(allow.data.address, '127.0.0.1');
    assert.ok(allow.data.bytesIn > 0);
    assert.ok(allow.data.bytesOut > 0);
    assert.equal(typeof allow.data.reason, 'string');
    const deny = await waitFor(async () => {
      const r = await auditOf(s, `type=egress.deny&sandboxId=${netId}&limit=1000`);
      return r.json.items.find((x: { data: { host: string } }) => x.data.host === 'other.test');
    });
    assert.equal(deny.tenant, 'default');
    assert.equal(deny.data.address, null);
    assert.match(deny.data.reason, /no allow rule/);
    const verify = await s.req('GET', '/v1/audit/verify', { key: s.adminKey });
    assert.equal(verify.json.ok, true);
  });

  it("another tenant can neither read nor change a sandbox's network (404); scopes apply", async () => {
    const other = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: { name: 'other', tenant: 'other', scopes: ['sandboxes:read', 'sandboxes:write'] },
    });
    assert.equal(other.status, 201, other.text);
    const get = await s.req('GET', `/v1/sandboxes/${netId}/network`, { key: other.json.key });
    assert.equal(get.status, 404);
    assert.equal(get.json.code, 'SANDBOX_NOT_FOUND');
    const put = await s.req('PUT', `/v1/sandboxes/${netId}/network`, {
      key: other.json.key,
      body: { allow: ['*'] },
    });
    assert.equal(put.status, 404);
    const view = await s.req('GET', `/v1/sandboxes/${netId}/network`, { key: s.adminKey });
    assert.deepEqual(view.json.rules.allow, [`allowed.test:${up.port}`, `127.0.0.1:${up.port}`]);
    const reader = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: { name: 'reader', scopes: ['sandboxes:read'] },
    });
    const readOnly = await s.req('PUT', `/v1/sandboxes/${netId}/network`, {
      key: reader.json.key,
      body: { allow: ['*'] },
    });
    assert.equal(readOnly.status, 403);
    assert.equal(readOnly.json.code, 'FORBIDDEN');
    const canRead = await s.req('GET', `/v1/sandboxes/${netId}/network`, { key: reader.json.key });
    assert.equal(canRead.status, 200);
  });

  it('bad rules are 400 with a clear message, on create and on PUT, and change nothing', async () => {
    const before = await s.req('GET', '/v1/sandboxes', { key: s.adminKey });
    const cases: Array<[unknown, RegExp]> = [
      [{ allow: ['a.*.b'] }, /wildcard is allowed only as a whole leading label/],
      [{ allow: ['10.0.0.1/8'] }, /10\.0\.0\.0\/8/],
      [{ allow: ['example.com:99999'] }, /port/],
      [{ allow: 'example.com' }, /must be array|array/],
      [{ allow: [], rules: [] }, /additional properties|rules/],
    ];
    for (const [network, message] of cases) {
      const c = await s.req('POST', '/v1/sandboxes', {
        key: s.adminKey,
        body: { policy: { network } },
      });
      assert.equal(c.status, 400, `${JSON.stringify(network)}: ${c.text}`);
      assert.match(c.json.message, message);
      const p = await s.req('PUT', `/v1/sandboxes/${netId}/network`, {
        key: s.adminKey,
        body: network,
      });
      assert.equal(p.status, 400, `${JSON.stringify(network)}: ${p.text}`);
      assert.match(p.json.message, message);
    }
    const afterList = await s.req('GET', '/v1/sandboxes', { key: s.adminKey });
    assert.equal(afterList.json.items.length, before.json.items.length);
    const view = await s.req('GET', `/v1/sandboxes/${netId}/network`, { key: s.adminKey });
    assert.deepEqual(view.json.rules.allow, [`allowed.test:${up.port}`, `127.0.0.1:${up.port}`]);
  });

  it('the OpenAPI document describes both routes with strict schemas and scopes', async () => {
    const doc = await s.req('GET', '/v1/openapi.json');
    const path = doc.json.paths['/v1/sandboxes/{id}/network'];
    assert.equal(path.get['x-palisade-scope'], 'sandboxes:read');
    assert.equal(path.put['x-palisade-scope'], 'sandboxes:write');
    const body = path.put.requestBody.content['application/json'].schema;
    assert.equal(body.additionalProperties, false);
    assert.deepEqual(Object.keys(body.properties), ['allow', 'deny']);
    const create = doc.json.paths['/v1/sandboxes'].post.requestBody.content['application/json'];
    assert.equal(create.schema.properties.policy.properties.network.additionalProperties, false);
  });

  it('destroying a sandbox releases its proxy; its network view keeps the final stats', async () => {
    const c = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { policy: { network: { allow: [`allowed.test:${up.port}`, `127.0.0.1:${up.port}`] } } },
    });
    assert.equal(c.status, 201, c.text);
    await sh(s, c.json.id, `curl -sS http://allowed.test:${up.port}/last`);
    const del = await s.req('DELETE', `/v1/sandboxes/${c.json.id}`, { key: s.adminKey });
    assert.equal(del.status, 200);
    const view = await s.req('GET', `/v1/sandboxes/${c.json.id}/network`, { key: s.adminKey });
    assert.equal(view.json.enabled, false);
    assert.ok(view.json.stats.bytesIn > 0);
    const put = await s.req('PUT', `/v1/sandboxes/${c.json.id}/network`, {
      key: s.adminKey,
      body: { allow: [] },
    });
    assert.equal(put.status, 409);
    assert.equal(put.json.code, 'SANDBOX_NOT_RUNNING');
  });
});

describe('operator network rules bound sandbox rules', () => {
  let s: TestServer;
  let up: Upstream;

  before(async () => {
    up = await startUpstream();
    const operator = parsePolicyObject(
      {
        permissions: { default: 'allow' },
        network: {
          allow: [`*.test:${up.port}`, `127.0.0.0/8:${up.port}`],
          deny: ['blocked.test'],
        },
      },
      'test:operator',
      'operator',
    );
    s = await startTestServer({ egress: egressOptions(), policyLayers: [operator] });
  });

  after(async () => {
    await s.close();
    await up.close();
  });

  it('an operator deny beats a sandbox allow', async () => {
    const c = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: {
        policy: {
          network: {
            allow: [`blocked.test:${up.port}`, `allowed.test:${up.port}`, `127.0.0.1:${up.port}`],
          },
        },
      },
    });
    assert.equal(c.status, 201, c.text);
    const blocked = await sh(
      s,
      c.json.id,
      `curl -sS -D - -o /dev/null http://blocked.test:${up.port}/`,
    );
    assert.match(blocked.stdout, /^HTTP\/1\.1 403/);
    assert.match(blocked.stdout, /X-Palisade-Blocked: .*blocked\.test/i);
    const ok = await sh(s, c.json.id, `curl -sS http://allowed.test:${up.port}/op`);
    assert.equal(ok.stdout, 'upstream /op');
    // The operator's allows do not grant anything the sandbox did not ask for.
    const notAsked = await sh(
      s,
      c.json.id,
      `curl -sS -D - -o /dev/null http://other.test:${up.port}/`,
    );
    assert.match(notAsked.stdout, /^HTTP\/1\.1 403/);
    const view = await s.req('GET', `/v1/sandboxes/${c.json.id}/network`, { key: s.adminKey });
    assert.deepEqual(view.json.operator.deny, ['blocked.test']);
    assert.ok(view.json.effective.deny.includes('blocked.test'));
  });

  it('a sandbox may only allow what the operator allows (create and PUT)', async () => {
    for (const rule of [
      'example.com',
      `allowed.test:${up.port + 1}`,
      '10.0.0.0/8',
      `*:${up.port}`,
    ]) {
      const c = await s.req('POST', '/v1/sandboxes', {
        key: s.adminKey,
        body: { policy: { network: { allow: [rule] } } },
      });
      assert.equal(c.status, 400, `${rule}: ${c.text}`);
      assert.equal(c.json.code, 'INVALID_POLICY');
      assert.match(c.json.message, /outside what the operator policy allows/);
      assert.doesNotMatch(c.json.message, /test:operator/, 'the policy file path is not shown');
    }
    const c = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { policy: { network: { allow: [`allowed.test:${up.port}`] } } },
    });
    assert.equal(c.status, 201, c.text);
    const put = await s.req('PUT', `/v1/sandboxes/${c.json.id}/network`, {
      key: s.adminKey,
      body: { allow: ['example.com'] },
    });
    assert.equal(put.status, 400);
    assert.match(put.json.message, /outside what the operator policy allows/);
    const narrower = await s.req('PUT', `/v1/sandboxes/${c.json.id}/network`, {
      key: s.adminKey,
      body: { allow: [`*.sub.test:${up.port}`, `127.0.0.1:${up.port}`], deny: ['x.sub.test'] },
    });
    assert.equal(narrower.status, 200, narrower.text);
    assert.deepEqual(narrower.json.effective.deny, ['blocked.test', 'x.sub.test']);
  });
});

describe('allow-rule bounds (coverage)', () => {
  const rules = (...texts: string[]) => texts.map((t) => parseEgressRule(t));
  const covered = (rule: string, ...outer: string[]) =>
    allowRuleCovered(parseEgressRule(rule), rules(...outer));

  it('covers names by exact name, wildcard suffix or *, and ports by the union of covering rules', () => {
    assert.equal(covered('a.example.com', '*.example.com'), true);
    assert.equal(covered('example.com', '*.example.com'), false);
    assert.equal(covered('*.a.example.com', '*.example.com'), true);
    assert.equal(covered('*.example.com', 'a.example.com'), false);
    assert.equal(covered('example.com', 'example.com:80', 'example.com:443'), true);
    assert.equal(covered('example.com:8080', 'example.com'), false);
    assert.equal(covered('example.com:80-90', 'example.com:80-85', '*:86-90'), true);
    assert.equal(covered('anything.org', '*'), true);
    assert.equal(covered('*', '*.org'), false);
  });

  it('covers IPs and CIDRs only by containing IP/CIDR rules; * covers only a single public address', () => {
    assert.equal(covered('10.1.0.0/16:5432', '10.0.0.0/8:5432'), true);
    assert.equal(covered('10.0.0.0/8:5432', '10.1.0.0/16:5432'), false);
    assert.equal(covered('127.0.0.1', '*'), false);
    assert.equal(covered('10.0.0.0/8', '*'), false);
    assert.equal(covered('8.8.8.8', '*'), true);
    assert.equal(covered('[fc00::1]:443', '[fc00::/7]:443'), true);
    assert.equal(covered('[::1]', '127.0.0.0/8'), false);
  });
});

describe('egress audit sink (bounded)', () => {
  it('drops events past its bound with a counted marker instead of buffering without limit', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'palisade-egress-audit-'));
    const store = await openStore({ dataDir: dir });
    try {
      const audit = new AuditLog(store.db);
      const sink = new EgressAuditSink({ audit, tenantOf: () => 'acme', maxPending: 5 });
      const event = (n: number): EgressEvent => ({
        time: new Date().toISOString(),
        sandboxId: 'sb-aaaaaaaaaaaaaaaaaaaa',
        protocol: 'connect',
        host: `h${n}.test`,
        port: 443,
        resolved: ['192.0.2.1'],
        address: null,
        decision: 'deny',
        reason: 'no allow rule matches',
        rule: null,
        bytesIn: 0,
        bytesOut: 0,
        durationMs: 0,
      });
      for (let i = 0; i < 50; i++) sink.emit(event(i));
      assert.ok(sink.pending <= 6, `pending ${sink.pending}`);
      assert.equal(sink.droppedTotal, 45);
      await sink.flush();
      const denies = await audit.query({ type: 'egress.deny', limit: 1000 });
      assert.equal(denies.length, 5);
      assert.equal(denies[0]!.tenant, 'acme');
      assert.equal(denies[0]!.data.host, 'h0.test');
      const markers = await audit.query({ type: 'egress.dropped' });
      assert.equal(markers.length, 1);
      assert.equal(markers[0]!.data.count, 45);
      // With room again, later events are recorded.
      sink.emit(event(99));
      await sink.flush();
      assert.equal((await audit.query({ type: 'egress.deny', limit: 1000 })).length, 6);
      assert.equal((await audit.verify()).ok, true);
      assert.equal(sink.writeErrors, 0);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('egress sockets across restarts', () => {
  it('a stale proxy socket directory left by a killed server is removed at start', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'palisade-srv-'));
    chmodSync(dataDir, 0o711);
    const stale = join(dataDir, 'egress', 'sb-abcdefghijklmnopqrst');
    mkdirSync(stale, { recursive: true });
    writeFileSync(join(stale, 'proxy.sock'), '');
    const unrelated = join(dataDir, 'egress', 'keep-me');
    writeFileSync(unrelated, '');
    const s = await startTestServer({ dataDir, egress: egressOptions() });
    try {
      assert.equal(existsSync(stale), false);
      assert.equal(existsSync(unrelated), true, 'only per-sandbox directories are removed');
    } finally {
      await s.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
