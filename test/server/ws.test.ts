import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parsePolicyObject } from '../../src/policy/index.js';
import { DEFAULT_WS_CONFIG, MAX_TRACKED_EXECS, StreamHub } from '../../src/server/ws.js';
import {
  rawUpgrade as rawUpgradeRequest,
  startTestServer,
  WsClient,
  type TestServer,
} from './helpers.js';

const ALLOWED_ORIGIN = 'https://app.example.com';
const MAX_BUFFERED = 256 * 1024;
const PER_KEY = 3;

/** Sends a raw HTTP upgrade request and returns the status code and raw response head. */
const rawUpgrade = (url: string, headers: Record<string, string>, path = '/v1/ws') =>
  rawUpgradeRequest(url, headers, { path });

/** A masked client text frame (clients must mask). */
function clientFrame(text: string): Buffer {
  const payload = Buffer.from(text);
  assert.ok(payload.length < 126);
  const mask = randomBytes(4);
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

describe('WebSocket streams (real server, real sandboxes)', () => {
  let s: TestServer;
  let keyA: string;
  let keyA2: string;
  let keyB: string;
  let sbA: string;
  let sbB: string;
  before(async () => {
    const layer = parsePolicyObject(
      { permissions: { default: 'allow', ask: ['Bash(printf:*)'] } },
      'test:operator',
      'operator',
    );
    s = await startTestServer({
      policyLayers: [layer],
      config: {
        corsOrigins: [ALLOWED_ORIGIN],
        authThrottle: { maxFailures: 1000 },
        ws: {
          maxConnectionsPerKey: PER_KEY,
          maxBufferedBytes: MAX_BUFFERED,
          stallTimeoutMs: 1000,
          // Long, so the stalled-reader test proves the queue bound, not the ping timeout.
          pingIntervalMs: 60_000,
        },
      },
    });
    const keys = s.cp.app.keys;
    const a = await keys.create({
      tenant: 'alpha',
      name: 'a',
      scopes: ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'],
    });
    keyA = a.key;

    keyA2 = (
      await keys.create({
        tenant: 'alpha',
        name: 'a2',
        scopes: ['sandboxes:read', 'sandboxes:exec'],
      })
    ).key;
    keyB = (
      await keys.create({
        tenant: 'beta',
        name: 'b',
        scopes: ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'],
      })
    ).key;
    sbA = (await s.req('POST', '/v1/sandboxes', { key: keyA, body: {} })).json.id;
    sbB = (await s.req('POST', '/v1/sandboxes', { key: keyB, body: {} })).json.id;
    assert.match(sbA, /^sb-/);
    assert.match(sbB, /^sb-/);
  });
  after(async () => {
    await s.close();
  });

  it('no 101 without valid credentials, a permitted Origin and the read scope', async () => {
    const revoked = await s.cp.app.keys.create({
      tenant: 'alpha',
      name: 'revoked',
      scopes: ['sandboxes:read'],
    });
    await s.cp.app.keys.revoke(revoked.info.id);
    const metricsOnly = await s.cp.app.keys.create({
      tenant: 'alpha',
      name: 'metrics',
      scopes: ['metrics:read'],
    });
    const restricted = await s.cp.app.keys.create({
      tenant: 'alpha',
      name: 'one-sandbox',
      scopes: ['sandboxes:read'],
      sandboxId: sbA,
    });
    const wrong = `psk_${'a'.repeat(16)}_${'A'.repeat(43)}`;
    const cases: Array<[string, Record<string, string>, number, string?]> = [
      ['missing credentials', {}, 401],
      ['wrong key', { authorization: `Bearer ${wrong}` }, 401],
      ['garbage', { authorization: 'Bearer nope' }, 401],
      ['revoked key', { authorization: `Bearer ${revoked.key}` }, 401],
      ['missing scope', { authorization: `Bearer ${metricsOnly.key}` }, 403],
      ['key restricted to one sandbox', { authorization: `Bearer ${restricted.key}` }, 403],
      [
        'wrong Origin',
        { authorization: `Bearer ${keyA}`, origin: 'https://evil.example.com' },
        403,
      ],
      ['null Origin', { authorization: `Bearer ${keyA}`, origin: 'null' }, 403],
      ['token protocol without palisade.v1', { 'sec-websocket-protocol': `bearer.${keyA}` }, 400],
      ['wrong token protocol', { 'sec-websocket-protocol': `palisade.v1, bearer.${wrong}` }, 401],
      ['other path', { authorization: `Bearer ${keyA}` }, 404, '/v1/sandboxes'],
    ];
    for (const [name, headers, expected, path] of cases) {
      const r = await rawUpgrade(s.url, headers, path);
      r.socket.destroy();
      assert.equal(r.status, expected, `${name}: ${r.head}`);
      assert.notEqual(r.status, 101, name);
      assert.match(r.head, /x-frame-options: DENY/i, name);
    }
    // The same credentials succeed: header, browser subprotocol, allowed Origin.
    const ok = await rawUpgrade(s.url, { authorization: `Bearer ${keyA}` });
    ok.socket.destroy();
    assert.equal(ok.status, 101, ok.head);
    const proto = await rawUpgrade(s.url, {
      'sec-websocket-protocol': `palisade.v1, bearer.${keyA}`,
      origin: ALLOWED_ORIGIN,
    });
    proto.socket.destroy();
    assert.equal(proto.status, 101, proto.head);
    assert.match(proto.head, /sec-websocket-protocol: palisade\.v1\r?$/im);
    assert.doesNotMatch(proto.head, /bearer\./);
    // A plain GET (no upgrade) is a clear 400, not a hang.
    const plain = await s.req('GET', '/v1/ws', { key: keyA });
    assert.equal(plain.status, 400);
    assert.match(plain.json.message, /WebSocket upgrades/);
    await sleep(100);
  });

  it("a client never receives another tenant's or another execution's messages", async () => {
    const sandboxSub = new WsClient(s.url, keyA);
    const execSub = new WsClient(s.url, keyA2);
    const tenantB = new WsClient(s.url, keyB);
    await Promise.all([sandboxSub.opened, execSub.opened, tenantB.opened]);
    sandboxSub.send({ type: 'subscribe', sandboxId: sbA });
    await sandboxSub.waitFor((m) => m.type === 'subscribed' && m.sandboxId === sbA);
    // Another tenant's sandbox is not found, exactly like a missing one.
    tenantB.send({ type: 'subscribe', sandboxId: sbA });
    const refused = await tenantB.waitFor((m) => m.type === 'error');
    assert.equal(refused.code, 'SANDBOX_NOT_FOUND');
    tenantB.send({ type: 'subscribe', sandboxId: sbB });
    await tenantB.waitFor((m) => m.type === 'subscribed' && m.sandboxId === sbB);

    const bg = await s.req('POST', `/v1/sandboxes/${sbA}/exec`, {
      key: keyA,
      body: { command: 'sleep 1; echo exec-one', background: true },
    });
    assert.equal(bg.status, 202, bg.text);
    const execOne = bg.json.id as string;
    execSub.send({ type: 'subscribe', execId: execOne });
    await execSub.waitFor((m) => m.type === 'subscribed');
    // Tenant B knows the exec id: the subscription itself is refused, exactly like a missing id.
    tenantB.send({ type: 'subscribe', execId: execOne });
    const refusedExec = await tenantB.waitFor((m) => m.type === 'error' && m.ref === execOne);
    assert.equal(refusedExec.code, 'EXEC_NOT_FOUND');
    assert.match(String(refusedExec.message), /No pending or running execution/);
    const missing = `ex-${'a'.repeat(20)}`;
    tenantB.send({ type: 'subscribe', execId: missing });
    const refusedMissing = await tenantB.waitFor((m) => m.type === 'error' && m.ref === missing);
    assert.equal(refusedMissing.code, 'EXEC_NOT_FOUND');
    assert.equal(refusedMissing.message, String(refusedExec.message).replace(execOne, missing));

    const fgA = await s.req('POST', `/v1/sandboxes/${sbA}/exec`, {
      key: keyA,
      body: { command: 'echo exec-two' },
    });
    assert.equal(fgA.status, 200);
    const fgB = await s.req('POST', `/v1/sandboxes/${sbB}/exec`, {
      key: keyB,
      body: { command: 'echo beta-out' },
    });
    assert.equal(fgB.status, 200);
    await sandboxSub.waitFor((m) => m.type === 'exec.exit' && m.execId === execOne);
    await execSub.waitFor((m) => m.type === 'exec.exit' && m.execId === execOne);
    await tenantB.waitFor((m) => m.type === 'exec.exit' && m.execId === fgB.json.execId);

    assert.equal(sandboxSub.output(execOne), 'exec-one\n');
    assert.equal(sandboxSub.output(fgA.json.execId), 'exec-two\n');
    assert.equal(execSub.output(execOne), 'exec-one\n');
    assert.equal(tenantB.output(fgB.json.execId), 'beta-out\n');
    const execIdsSeen = (c: WsClient) =>
      new Set(c.messages.filter((m) => typeof m.execId === 'string').map((m) => m.execId));
    assert.deepEqual([...execIdsSeen(execSub)], [execOne]);
    assert.ok(!execIdsSeen(execSub).has(fgA.json.execId));
    assert.ok(!execIdsSeen(tenantB).has(fgA.json.execId));
    assert.ok(
      tenantB.messages.every((m) => m.execId !== execOne),
      'tenant B received output of tenant A',
    );
    // (Only the refusals of its own subscribe requests name sbA or execOne.)
    const tenantBEvents = JSON.stringify(tenantB.messages.filter((m) => m.type !== 'error'));
    assert.ok(!tenantBEvents.includes(sbA));
    assert.ok(!tenantBEvents.includes(execOne));
    // An ended exec frees its subscriptions; subscribing to it now is refused (logs are on HTTP).
    execSub.send({ type: 'subscribe', execId: execOne });
    const ended = await execSub.waitFor((m) => m.type === 'error' && m.ref === execOne);
    assert.equal(ended.code, 'EXEC_NOT_FOUND');
    assert.ok(!JSON.stringify(sandboxSub.messages).includes(sbB));

    // Approvals of a subscribed sandbox are announced; sandbox state changes too.
    const asked = await s.req('POST', `/v1/sandboxes/${sbA}/exec`, {
      key: keyA,
      body: { command: 'printf asked', background: true },
    });
    const announced = await sandboxSub.waitFor((m) => m.type === 'approval.pending');
    assert.equal((announced.approval as { id: string }).id, asked.json.approvalId);
    s.cp.app.approvals.cancel(asked.json.approvalId, 'test');
    await sandboxSub.waitFor((m) => m.type === 'approval.resolved');
    assert.ok(!tenantB.messages.some((m) => m.type.startsWith('approval')));
    const paused = await s.req('POST', `/v1/sandboxes/${sbA}/pause`, { key: keyA });
    assert.equal(paused.status, 200, paused.text);
    await sandboxSub.waitFor((m) => m.type === 'sandbox.state' && m.state === 'paused');
    await s.req('POST', `/v1/sandboxes/${sbA}/resume`, { key: keyA });
    await sandboxSub.waitFor((m) => m.type === 'sandbox.state' && m.state === 'running');
    assert.ok(!tenantB.messages.some((m) => m.type === 'sandbox.state'));
    for (const c of [sandboxSub, execSub, tenantB]) c.close();
  });

  it('two clients on two executions each get only their own; routing is by subscription', async () => {
    const one = new WsClient(s.url, keyA);
    const two = new WsClient(s.url, keyA2);
    await Promise.all([one.opened, two.opened]);
    const hub = s.cp.app.streams;
    const subsBefore = hub.stats().subscriptions;
    const start = async (tag: string) => {
      // The sleep leaves time to subscribe before any output is produced.
      const r = await s.req('POST', `/v1/sandboxes/${sbA}/exec`, {
        key: keyA,
        body: { command: `sleep 1; for i in 1 2 3; do echo ${tag}-$i; done`, background: true },
      });
      assert.equal(r.status, 202, r.text);
      return r.json.id as string;
    };
    const [execOne, execTwo] = await Promise.all([start('one'), start('two')]);
    one.send({ type: 'subscribe', execId: execOne });
    two.send({ type: 'subscribe', execId: execTwo });
    await one.waitFor((m) => m.type === 'subscribed' && m.execId === execOne);
    await two.waitFor((m) => m.type === 'subscribed' && m.execId === execTwo);
    assert.equal(hub.stats().subscriptions, subsBefore + 2);
    assert.ok(hub.stats().trackedExecs >= 2);
    await one.waitFor((m) => m.type === 'exec.exit' && m.execId === execOne);
    await two.waitFor((m) => m.type === 'exec.exit' && m.execId === execTwo);
    assert.equal(one.output(execOne), 'one-1\none-2\none-3\n');
    assert.equal(two.output(execTwo), 'two-1\ntwo-2\ntwo-3\n');
    const seen = (c: WsClient) =>
      new Set(c.messages.filter((m) => typeof m.execId === 'string').map((m) => m.execId));
    assert.deepEqual([...seen(one)], [execOne]);
    assert.deepEqual([...seen(two)], [execTwo]);
    // The exits released both subscriptions and the hub no longer tracks the ended execs.
    for (let i = 0; i < 50 && hub.stats().subscriptions > subsBefore; i++) await sleep(20);
    assert.equal(hub.stats().subscriptions, subsBefore);
    assert.equal(hub.execOwner(execOne), undefined);
    assert.equal(hub.execOwner(execTwo), undefined);
    one.close();
    two.close();
  });

  it('an exec waiting for approval can be subscribed to by id and reports not_run', async () => {
    const c = new WsClient(s.url, keyA2);
    await c.opened;
    const asked = await s.req('POST', `/v1/sandboxes/${sbA}/exec`, {
      key: keyA,
      body: { command: 'printf pending', background: true },
    });
    assert.equal(asked.status, 202, asked.text);
    const execId = asked.json.id as string;
    c.send({ type: 'subscribe', execId });
    await c.waitFor((m) => m.type === 'subscribed' && m.execId === execId);
    s.cp.app.approvals.cancel(asked.json.approvalId, 'test');
    await c.waitFor((m) => m.type === 'approval.resolved');
    await c.waitFor((m) => m.type === 'exec.not_run' && m.execId === execId);
    c.close();
  });

  it('bad messages get a clear error and the connection stays usable', async () => {
    const c = new WsClient(s.url, keyA);
    await c.opened;
    c.ws.send('not json');
    c.send({ type: 'subscribe' });
    c.send({ type: 'subscribe', sandboxId: "sb-aaaa'or'1'='1" });
    c.send({ type: 'subscribe', sandboxId: sbA, extra: 1 });
    c.send([1, 2]);
    c.send({ type: 'ping' });
    await c.waitFor((m) => m.type === 'pong');
    const errors = c.messages.filter((m) => m.type === 'error');
    assert.equal(errors.length, 5);
    for (const e of errors) assert.equal(e.code, 'INVALID_ARGUMENT');
    // An oversized message closes the connection (1009), it is never buffered.
    c.ws.send('x'.repeat(10_000));
    await c.waitFor(() => c.closeCode !== null || false, 5000).catch(() => undefined);
    await sleep(200);
    assert.equal(c.closeCode, 1009);
  });

  it('a revoked key loses its open connection on its next subscribe', async () => {
    const k = await s.cp.app.keys.create({
      tenant: 'alpha',
      name: 'soon',
      scopes: ['sandboxes:read'],
    });
    const c = new WsClient(s.url, k.key);
    await c.opened;
    await s.cp.app.keys.revoke(k.info.id);
    c.send({ type: 'subscribe', sandboxId: sbA });
    for (let i = 0; i < 100 && c.closeCode === null; i++) await sleep(20);
    assert.equal(c.closeCode, 4401);
  });

  it('connections per key are limited; closing one frees a slot', async () => {
    await sleep(200);
    const before = s.cp.app.streams.stats().connections;
    const open: WsClient[] = [];
    for (let i = 0; i < PER_KEY; i++) {
      const c = new WsClient(s.url, keyA);
      await c.opened;
      open.push(c);
    }
    const over = await rawUpgrade(s.url, { authorization: `Bearer ${keyA}` });
    over.socket.destroy();
    assert.equal(over.status, 429, over.head);
    assert.match(over.head, /retry-after: \d+/i);
    // Another key of the same tenant is unaffected.
    const other = new WsClient(s.url, keyA2);
    await other.opened;
    other.close();
    open.pop()!.close();
    for (let i = 0; i < 100 && s.cp.app.streams.stats().connections > before + PER_KEY - 1; i++)
      await sleep(20);
    const again = new WsClient(s.url, keyA);
    await again.opened;
    again.close();
    for (const c of open) c.close();
    for (let i = 0; i < 100 && s.cp.app.streams.stats().connections > before; i++) await sleep(20);
    assert.equal(s.cp.app.streams.stats().connections, before);
  });

  it('a reader that falls behind and catches up gets a dropped marker with the count', async () => {
    const upgrade = await rawUpgrade(s.url, { authorization: `Bearer ${keyA}` });
    assert.equal(upgrade.status, 101);
    const socket = upgrade.socket;
    socket.on('error', () => undefined);
    let tail = '';
    let marker: string | undefined;
    socket.on('data', (d: Buffer) => {
      // Server frames are unmasked: the JSON text is in the byte stream as is.
      const text = tail + d.toString('latin1');
      const m = /\{"type":"dropped","messages":(\d+)\}/.exec(text);
      if (m) marker ??= m[1];
      tail = text.slice(-64);
    });
    socket.write(clientFrame(JSON.stringify({ type: 'subscribe', sandboxId: sbA })));
    await sleep(300);
    socket.pause();
    const hub = s.cp.app.streams;
    const dropsBefore = hub.stats().droppedMessages;
    // Output is capped at 4 MiB per exec, so several run at once to outgrow the kernel buffers.
    const flood = Promise.all(
      [1, 2, 3, 4, 5].map(() =>
        s.req('POST', `/v1/sandboxes/${sbA}/exec`, {
          key: keyA,
          body: {
            command: 'for i in $(seq 1 64); do head -c 65536 /dev/urandom; sleep 0.02; done',
            maxOutputBytes: 4 * 1024 * 1024,
            timeoutMs: 60_000,
          },
        }),
      ),
    );
    for (let i = 0; i < 1000 && hub.stats().droppedMessages === dropsBefore; i++) await sleep(5);
    assert.ok(hub.stats().droppedMessages > dropsBefore, 'the reader never fell behind');
    socket.resume();
    await flood;
    for (let i = 0; i < 250 && marker === undefined; i++) await sleep(20);
    assert.ok(marker !== undefined, 'no dropped marker received');
    assert.ok(Number(marker) >= 1);
    socket.destroy();
  });

  it('a stalled reader does not grow server memory without bound: drops, then disconnect', async () => {
    const upgrade = await rawUpgrade(s.url, { authorization: `Bearer ${keyA}` });
    assert.equal(upgrade.status, 101);
    const socket = upgrade.socket;
    let closed = false;
    socket.on('close', () => {
      closed = true;
    });
    socket.on('error', () => undefined);
    socket.write(clientFrame(JSON.stringify({ type: 'subscribe', sandboxId: sbA })));
    await sleep(300);
    // Stop reading: the kernel buffers fill, then the server's queue for this socket would grow.
    socket.pause();
    const stats = s.cp.app.streams;
    const dropsBefore = stats.stats().droppedMessages;
    let maxSeen = 0;
    const sampler = setInterval(() => {
      maxSeen = Math.max(maxSeen, stats.stats().maxBufferedBytes);
    }, 10);
    const flood = [];
    for (let i = 0; i < 6; i++) {
      flood.push(
        s.req('POST', `/v1/sandboxes/${sbA}/exec`, {
          key: keyA,
          body: {
            command: 'head -c 3000000 /dev/urandom',
            maxOutputBytes: 4 * 1024 * 1024,
            encoding: 'base64',
          },
        }),
      );
    }
    const results = await Promise.all(flood);
    for (const r of results) assert.equal(r.status, 200, r.text.slice(0, 300));
    for (let i = 0; i < 250 && stats.stats().connections > 0; i++) await sleep(20);
    clearInterval(sampler);
    const after = stats.stats();
    // ~18 MB of base64 JSON was produced for this subscriber; the server kept at most the bound
    // plus one message queued for it (a message is one engine chunk, at most 64 KiB raw).
    assert.ok(maxSeen <= MAX_BUFFERED + 128 * 1024, `queued up to ${maxSeen} bytes`);
    assert.ok(maxSeen > MAX_BUFFERED / 2, `the queue never filled (${maxSeen}): test too weak`);
    assert.ok(after.droppedMessages > dropsBefore, 'expected dropped messages');
    assert.equal(after.connections, 0, 'expected the stalled reader to be disconnected');
    assert.ok(after.slowDisconnects >= 1);
    // The client sees the connection end once it reads again.
    socket.resume();
    for (let i = 0; i < 250 && !closed; i++) await sleep(20);
    assert.ok(closed);
    socket.destroy();
  });
});

describe('WebSocket keepalive and subscription bounds (real server)', () => {
  const PING_MS = 300;
  let s: TestServer;
  let key: string;
  let sb: string;
  before(async () => {
    s = await startTestServer({
      config: { ws: { pingIntervalMs: PING_MS, maxConnectionsPerKey: 2 } },
    });
    key = (
      await s.cp.app.keys.create({
        tenant: 'alpha',
        name: 'ka',
        scopes: ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'],
      })
    ).key;
    sb = (await s.req('POST', '/v1/sandboxes', { key, body: {} })).json.id;
  });
  after(async () => {
    await s.close();
  });

  it('a client that stops answering pings is disconnected and its state freed', async () => {
    const hub = s.cp.app.streams;
    assert.equal(hub.stats().connections, 0);
    // A client that answers pings (ws does by default) outlives several ping intervals.
    const healthy = new WsClient(s.url, key);
    await healthy.opened;
    healthy.send({ type: 'subscribe', sandboxId: sb });
    await healthy.waitFor((m) => m.type === 'subscribed');
    // A raw socket that never reads frames never answers a ping.
    const silent = await rawUpgrade(s.url, { authorization: `Bearer ${key}` });
    assert.equal(silent.status, 101);
    let closed = false;
    silent.socket.on('error', () => undefined);
    silent.socket.on('close', () => {
      closed = true;
    });
    silent.socket.write(clientFrame(JSON.stringify({ type: 'subscribe', sandboxId: sb })));
    for (let i = 0; i < 100 && hub.stats().subscriptions < 2; i++) await sleep(10);
    assert.equal(hub.stats().subscriptions, 2);
    assert.equal(hub.stats().connections, 2);
    const slowBefore = hub.stats().slowDisconnects;
    const started = Date.now();
    // Both slots of this key are taken: a third connection is refused until one is freed.
    const third = await rawUpgrade(s.url, { authorization: `Bearer ${key}` });
    third.socket.destroy();
    assert.equal(third.status, 429);
    for (let i = 0; i < 200 && hub.stats().connections > 1; i++) await sleep(10);
    const elapsed = Date.now() - started;
    assert.equal(hub.stats().connections, 1, 'the silent client was not disconnected');
    // Disconnected after missing one ping: between one and two intervals (plus scheduling slack).
    assert.ok(elapsed <= 2 * PING_MS + 500, `took ${elapsed} ms`);
    assert.equal(hub.stats().slowDisconnects, slowBefore + 1);
    assert.equal(hub.stats().subscriptions, 1, "the silent client's subscription was not freed");
    for (let i = 0; i < 100 && !closed; i++) await sleep(10);
    assert.ok(closed, 'the server did not close the TCP connection');
    // Its per-key slot is free again.
    const again = new WsClient(s.url, key);
    await again.opened;
    again.close();
    // The healthy client is still there after several intervals and still gets events.
    await sleep(3 * PING_MS);
    assert.equal(healthy.closeCode, null);
    await s.req('POST', `/v1/sandboxes/${sb}/exec`, { key, body: { command: 'echo alive' } });
    const exit = await healthy.waitFor((m) => m.type === 'exec.exit');
    assert.equal(healthy.output(String(exit.execId)), 'alive\n');
    healthy.close();
    for (let i = 0; i < 100 && hub.stats().connections > 0; i++) await sleep(10);
    assert.deepEqual(
      { connections: hub.stats().connections, subscriptions: hub.stats().subscriptions },
      { connections: 0, subscriptions: 0 },
    );
  });
});

describe('WebSocket subscription bounds', () => {
  it('subscriptions per connection are limited; an ended exec frees its slot', async () => {
    const s = await startTestServer({ config: { ws: { maxSubscriptions: 2 } } });
    try {
      const key = (
        await s.cp.app.keys.create({
          tenant: 'alpha',
          name: 'bounds',
          scopes: ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'],
        })
      ).key;
      const sb = (await s.req('POST', '/v1/sandboxes', { key, body: {} })).json.id as string;
      const c = new WsClient(s.url, key);
      await c.opened;
      c.send({ type: 'subscribe', sandboxId: sb });
      await c.waitFor((m) => m.type === 'subscribed' && m.sandboxId === sb);
      const bg = async (command: string) => {
        const r = await s.req('POST', `/v1/sandboxes/${sb}/exec`, {
          key,
          body: { command, background: true },
        });
        assert.equal(r.status, 202, r.text);
        return r.json.id as string;
      };
      const short = await bg('sleep 0.5');
      const long = await bg('sleep 30');
      c.send({ type: 'subscribe', execId: short });
      await c.waitFor((m) => m.type === 'subscribed' && m.execId === short);
      // Two subscriptions held: a third is refused with the limit named.
      c.send({ type: 'subscribe', execId: long });
      const full = await c.waitFor((m) => m.type === 'error' && m.ref === long);
      assert.equal(full.code, 'INVALID_ARGUMENT');
      assert.match(String(full.message), /At most 2 subscriptions per connection/);
      // The short exec ends: its subscription is released, so the slot is free again.
      await c.waitFor((m) => m.type === 'exec.exit' && m.execId === short);
      for (let i = 0; i < 50 && s.cp.app.streams.stats().subscriptions > 1; i++) await sleep(20);
      assert.equal(s.cp.app.streams.stats().subscriptions, 1);
      c.send({ type: 'subscribe', execId: long });
      await c.waitFor((m) => m.type === 'subscribed' && m.execId === long);
      // Unsubscribing frees a slot too.
      c.send({ type: 'unsubscribe', sandboxId: sb });
      await c.waitFor((m) => m.type === 'unsubscribed' && m.sandboxId === sb);
      assert.equal(s.cp.app.streams.stats().subscriptions, 1);
      await s.req('POST', `/v1/sandboxes/${sb}/execs/${long}/interrupt`, { key });
      await c.waitFor((m) => m.type === 'exec.exit' && m.execId === long);
      c.close();
    } finally {
      await s.close();
    }
  });

  it("the hub's tracking of live execs is bounded and forgets ended and denied ones", () => {
    const hub = new StreamHub(DEFAULT_WS_CONFIG);
    const id = (n: number) => `ex-${String(n).padStart(20, '0')}`;
    const start = (n: number) =>
      hub.publishExec({
        type: 'exec.start',
        tenant: 't',
        sandboxId: 'sb-aaaaaaaaaaaaaaaaaaaa',
        execId: id(n),
        background: true,
      });
    for (let n = 0; n <= MAX_TRACKED_EXECS; n++) start(n);
    assert.equal(hub.stats().trackedExecs, MAX_TRACKED_EXECS);
    // The oldest went first; the newest is there.
    assert.equal(hub.execOwner(id(0)), undefined);
    assert.deepEqual(hub.execOwner(id(MAX_TRACKED_EXECS)), {
      tenant: 't',
      sandboxId: 'sb-aaaaaaaaaaaaaaaaaaaa',
    });
    hub.publishExec({
      type: 'exec.exit',
      tenant: 't',
      sandboxId: 'sb-aaaaaaaaaaaaaaaaaaaa',
      execId: id(MAX_TRACKED_EXECS),
      exitCode: 0,
      signal: null,
      timedOut: false,
      interrupted: false,
      durationMs: 1,
    });
    assert.equal(hub.execOwner(id(MAX_TRACKED_EXECS)), undefined);
    assert.equal(hub.stats().trackedExecs, MAX_TRACKED_EXECS - 1);

    // An exec waiting for approval is tracked; a denial (which a foreground exec never follows
    // with exec.not_run) forgets it.
    const approval = {
      id: 'ap-1',
      sandboxId: 'sb-bbbbbbbbbbbbbbbbbbbb',
      execId: 'ex-bbbbbbbbbbbbbbbbbbbb',
      tool: 'Bash',
      command: 'git push',
      path: null,
      cwd: null,
      policyReason: 'ask',
      requestedBy: 'k',
      createdAt: new Date().toISOString(),
      expiresAt: new Date().toISOString(),
      status: 'pending' as const,
      decidedBy: null,
      decisionReason: null,
      decidedAt: null,
    };
    hub.publishApproval({ type: 'approval.pending', tenant: 'u', approval });
    assert.deepEqual(hub.execOwner(approval.execId), {
      tenant: 'u',
      sandboxId: approval.sandboxId,
    });
    hub.publishApproval({
      type: 'approval.resolved',
      tenant: 'u',
      approval: { ...approval, status: 'denied' },
    });
    assert.equal(hub.execOwner(approval.execId), undefined);
  });
});
