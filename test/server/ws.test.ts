import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocket } from 'ws';
import { parsePolicyObject } from '../../src/policy/index.js';
import { startTestServer, type TestServer } from './helpers.js';

const ALLOWED_ORIGIN = 'https://app.example.com';
const MAX_BUFFERED = 256 * 1024;
const PER_KEY = 3;

interface Msg {
  type: string;
  [key: string]: unknown;
}

/** A ws client that records every message it receives. */
class Client {
  readonly messages: Msg[] = [];
  readonly ws: WebSocket;
  readonly opened: Promise<void>;
  closeCode: number | null = null;

  constructor(url: string, key: string) {
    this.ws = new WebSocket(`${url.replace('http', 'ws')}/v1/ws`, {
      headers: { authorization: `Bearer ${key}` },
    });
    this.ws.on('message', (data) => this.messages.push(JSON.parse(String(data)) as Msg));
    this.ws.on('close', (code) => {
      this.closeCode = code;
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
    });
  }

  send(msg: unknown): void {
    this.ws.send(JSON.stringify(msg));
  }

  async waitFor(pred: (m: Msg) => boolean, ms = 15_000): Promise<Msg> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.messages.find(pred);
      if (found) return found;
      if (Date.now() > deadline)
        throw new Error(`no matching message; got ${JSON.stringify(this.messages).slice(0, 2000)}`);
      await sleep(20);
    }
  }

  output(execId: string): string {
    return this.messages
      .filter((m) => m.type === 'exec.output' && m.execId === execId)
      .map((m) => Buffer.from(String(m.data), 'base64').toString())
      .join('');
  }

  close(): void {
    this.ws.terminate();
  }
}

/** Sends a raw HTTP upgrade request and returns the status code and raw response head. */
function rawUpgrade(
  url: string,
  headers: Record<string, string>,
  path = '/v1/ws',
): Promise<{ status: number; head: string; socket: Socket }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let buf = '';
    socket.on('error', reject);
    socket.on('data', (d) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        socket.removeAllListeners('data');
        resolve({ status: Number(buf.split(' ')[1]), head: buf.slice(0, end), socket });
      }
    });
    const lines = [
      `GET ${path} HTTP/1.1`,
      `Host: ${hostname}:${port}`,
      'Upgrade: websocket',
      'Connection: Upgrade',
      `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
      'Sec-WebSocket-Version: 13',
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    ];
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  });
}

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
    const sandboxSub = new Client(s.url, keyA);
    const execSub = new Client(s.url, keyA2);
    const tenantB = new Client(s.url, keyB);
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
    // Tenant B knows the exec id, subscribes to it, and still must get nothing of it.
    tenantB.send({ type: 'subscribe', execId: execOne });
    await tenantB.waitFor((m) => m.type === 'subscribed' && m.execId === execOne);

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
    const execIdsSeen = (c: Client) =>
      new Set(c.messages.filter((m) => typeof m.execId === 'string').map((m) => m.execId));
    assert.deepEqual([...execIdsSeen(execSub)], [execOne]);
    assert.ok(!execIdsSeen(execSub).has(fgA.json.execId));
    assert.ok(!execIdsSeen(tenantB).has(fgA.json.execId));
    assert.ok(
      tenantB.messages.every((m) => m.execId !== execOne || m.type === 'subscribed'),
      'tenant B received output of tenant A',
    );
    // (Only the refusal of its own subscribe request names sbA.)
    assert.ok(!JSON.stringify(tenantB.messages.filter((m) => m.type !== 'error')).includes(sbA));
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

  it('bad messages get a clear error and the connection stays usable', async () => {
    const c = new Client(s.url, keyA);
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
    const c = new Client(s.url, k.key);
    await c.opened;
    await s.cp.app.keys.revoke(k.info.id);
    c.send({ type: 'subscribe', sandboxId: sbA });
    for (let i = 0; i < 100 && c.closeCode === null; i++) await sleep(20);
    assert.equal(c.closeCode, 4401);
  });

  it('connections per key are limited; closing one frees a slot', async () => {
    await sleep(200);
    const before = s.cp.app.streams.stats().connections;
    const open: Client[] = [];
    for (let i = 0; i < PER_KEY; i++) {
      const c = new Client(s.url, keyA);
      await c.opened;
      open.push(c);
    }
    const over = await rawUpgrade(s.url, { authorization: `Bearer ${keyA}` });
    over.socket.destroy();
    assert.equal(over.status, 429, over.head);
    assert.match(over.head, /retry-after: \d+/i);
    // Another key of the same tenant is unaffected.
    const other = new Client(s.url, keyA2);
    await other.opened;
    other.close();
    open.pop()!.close();
    for (let i = 0; i < 100 && s.cp.app.streams.stats().connections > before + PER_KEY - 1; i++)
      await sleep(20);
    const again = new Client(s.url, keyA);
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
