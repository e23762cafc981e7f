// Attack suite for seed 002 (agentiso review): each test attacks a real `palisade serve`
// (privilege-separated, as in production) over its HTTP port, WebSocket or MCP endpoint, with
// real sandboxes, and checks that the attack fails while the legitimate path keeps working.
//
// Failed authentications are throttled per client address (10 per minute), so every test that
// sends bad credentials does so from its own loopback source address (127.0.0.x): the attacks
// stay independent of each other and the throttle itself is not what makes them fail.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client as McpClient } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { WebSocket } from 'ws';
import {
  rawUpgrade as rawUpgradeRequest,
  requestFrom as requestFromAddress,
  type RawRes,
  type RequestFromOptions,
} from '../server/helpers.js';
import { execIn, startPalisade, type Palisade } from './fixture.js';

const ALLOWED_ORIGIN = 'https://app.example.com';
const EVIL_ORIGIN = 'https://evil.example.net';
const CLI = join(import.meta.dirname, '..', 'server', 'cli-entry.ts');

/** Source addresses 127.0.0.2 … 127.0.0.254, one per use, so failure throttling stays per test. */
function sourceAddresses(): () => string {
  let next = 2;
  return () => {
    if (next > 254) throw new Error('out of loopback source addresses');
    return `127.0.0.${next++}`;
  };
}

/** An HTTP request from a chosen loopback source address. */
const requestFrom = (
  p: Palisade,
  source: string,
  method: string,
  path: string,
  options: RequestFromOptions = {},
): Promise<RawRes> => requestFromAddress(p.url, source, method, path, options);

/** A raw WebSocket upgrade request; returns the status line's code and the response head. */
const rawUpgrade = (
  p: Palisade,
  source: string,
  headers: Record<string, string>,
  path = '/v1/ws',
) => rawUpgradeRequest(p.url, headers, { path, localAddress: source });

interface WsMsg {
  type: string;
  [key: string]: unknown;
}

/** A real ws client that records what it receives and how it was closed. */
class WsClient {
  readonly messages: WsMsg[] = [];
  readonly ws: WebSocket;
  readonly opened: Promise<void>;
  readonly closed: Promise<number>;

  constructor(p: Palisade, key: string, protocols?: string[]) {
    const url = `${p.url.replace('http', 'ws')}/v1/ws`;
    this.ws = protocols
      ? new WebSocket(url, protocols)
      : new WebSocket(url, { headers: { authorization: `Bearer ${key}` } });
    this.ws.on('message', (data) => this.messages.push(JSON.parse(String(data)) as WsMsg));
    this.closed = new Promise((resolve) => this.ws.on('close', (code) => resolve(code)));
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
    });
    // After the handshake, errors end in 'close' (whose code the tests check).
    this.ws.on('error', () => undefined);
  }

  async waitFor(pred: (m: WsMsg) => boolean, ms = 15_000): Promise<WsMsg> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.messages.find(pred);
      if (found) return found;
      if (Date.now() > deadline)
        throw new Error(`no matching message; got ${JSON.stringify(this.messages).slice(0, 1500)}`);
      await sleep(20);
    }
  }
}

/** Runs `palisade serve` with arguments that must be refused; returns its exit code and output. */
function serveRefusal(
  args: string[],
  /** Runs serve through `sh -c '<prelude> && exec "$@"'` inside a private mount namespace. */
  prelude?: string,
): Promise<{ code: number | null; output: string }> {
  const dataDir = mkdtempSync(join(tmpdir(), 'palisade-refuse-'));
  const serve = [
    process.execPath,
    '--import',
    'tsx',
    CLI,
    'serve',
    '--port',
    '0',
    '--data-dir',
    dataDir,
    ...args,
  ];
  const [command, ...argv] =
    prelude === undefined
      ? serve
      : [
          'unshare',
          '--mount',
          '--propagation',
          'private',
          'sh',
          '-c',
          `${prelude} && exec "$@"`,
          'sh',
          ...serve,
        ];
  return new Promise((resolve) => {
    const child = spawn(command!, argv, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH ?? '', HOME: '/root' },
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      rmSync(dataDir, { recursive: true, force: true });
      resolve({ code, output });
    });
  });
}

const SECURITY_HEADERS: Record<string, RegExp> = {
  'content-security-policy': /default-src 'none'.*frame-ancestors 'none'/,
  'x-content-type-options': /^nosniff$/,
  'x-frame-options': /^DENY$/,
  'referrer-policy': /^no-referrer$/,
  'cache-control': /no-store/,
};

function assertSecurityHeaders(headers: IncomingHttpHeaders | Headers, what: string): void {
  const get = (name: string) =>
    headers instanceof Headers ? headers.get(name) : (headers[name] as string | undefined);
  for (const [name, re] of Object.entries(SECURITY_HEADERS))
    assert.match(String(get(name)), re, `${what}: ${name}`);
  assert.equal(get('server') ?? undefined, undefined, `${what}: Server banner`);
  assert.equal(get('x-powered-by') ?? undefined, undefined, `${what}: X-Powered-By`);
}

/** The secret part of `psk_<id>_<secret>`; the secret is base64url, so it may contain `_` too. */
function secretOfKey(key: string): string {
  const secret = key.slice(key.indexOf('_', 'psk_'.length) + 1);
  assert.ok(secret.length >= 40, `not a Palisade key: ${key.slice(0, 12)}…`);
  return secret;
}

describe('seed 002 (agentiso): attacks on a real palisade serve', () => {
  let p: Palisade;
  const nextSource = sourceAddresses();
  let tenantKey: string;
  let sandbox: string;

  before(async () => {
    p = await startPalisade({ args: ['--cors-origin', ALLOWED_ORIGIN] });
    tenantKey = (
      await p.createKey({
        name: 'agent-a',
        tenant: 'team-a',
        scopes: ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'],
      })
    ).key;
    sandbox = await p.createSandbox({ labels: { seed: '002' } }, tenantKey);
  });

  after(async () => {
    await p?.close();
  });

  it('002 C-1: CORS answers only the configured origin, never with credentials; cross-site simple requests cannot act', async () => {
    const preflight = (origin: string) =>
      p.req('OPTIONS', '/v1/sandboxes', {
        key: null,
        headers: {
          origin,
          'access-control-request-method': 'POST',
          'access-control-request-headers': 'authorization, content-type',
        },
      });
    const evil = await preflight(EVIL_ORIGIN);
    assert.equal(evil.headers.get('access-control-allow-origin'), null);
    assert.equal(evil.headers.get('access-control-allow-methods'), null);
    assert.equal(evil.headers.get('access-control-allow-credentials'), null);
    const good = await preflight(ALLOWED_ORIGIN);
    assert.equal(good.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
    assert.match(String(good.headers.get('access-control-allow-headers')), /Authorization/i);
    assert.equal(good.headers.get('access-control-allow-credentials'), null);

    // Even with a stolen key, a foreign page's browser gets no permission to read the answer.
    const read = (origin: string) =>
      p.req('GET', '/v1/sandboxes', { key: tenantKey, headers: { origin } });
    const evilRead = await read(EVIL_ORIGIN);
    assert.equal(evilRead.status, 200);
    assert.equal(evilRead.headers.get('access-control-allow-origin'), null);
    const goodRead = await read(ALLOWED_ORIGIN);
    assert.equal(goodRead.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
    assert.match(String(goodRead.headers.get('vary')), /Origin/i);
    assert.equal(goodRead.headers.get('access-control-allow-credentials'), null);

    // 002 M-13 (CSRF): what a cross-site form can send without a preflight does nothing.
    const before = (await p.req('GET', '/v1/sandboxes', { key: tenantKey })).json.items.length;
    const formLike = await requestFrom(p, nextSource(), 'POST', '/v1/sandboxes', {
      rawBody: 'labels=x',
      headers: { 'content-type': 'application/x-www-form-urlencoded', origin: EVIL_ORIGIN },
    });
    assert.equal(formLike.status, 401, formLike.text);
    const textPlain = await p.req('POST', '/v1/sandboxes', {
      key: tenantKey,
      rawBody: '{}',
      headers: { 'content-type': 'text/plain', origin: EVIL_ORIGIN },
    });
    assert.equal(textPlain.status, 415, textPlain.text);
    const after = (await p.req('GET', '/v1/sandboxes', { key: tenantKey })).json.items.length;
    assert.equal(after, before, 'a cross-site request created a sandbox');
  });

  it('002 H-2: every response carries CSP, nosniff, frame DENY and no-referrer, and no server banner', async () => {
    assertSecurityHeaders((await p.req('GET', '/healthz', { key: null })).headers, '200 public');
    assertSecurityHeaders((await p.req('GET', '/v1/sandboxes')).headers, '200 authenticated');
    const unauth = await requestFrom(p, nextSource(), 'GET', '/v1/sandboxes');
    assert.equal(unauth.status, 401);
    assertSecurityHeaders(unauth.headers, '401');
    const missing = await p.req('GET', '/v1/no-such-route');
    assert.equal(missing.status, 404);
    assertSecurityHeaders(missing.headers, '404');
    const bad = await p.req('POST', '/v1/sandboxes', { body: { bogus: true } });
    assert.equal(bad.status, 400);
    assertSecurityHeaders(bad.headers, '400');
    const big = await p.req('POST', '/v1/sandboxes', {
      rawBody: JSON.stringify({ labels: { a: 'x'.repeat(2 * 1024 * 1024) } }),
      headers: { 'content-type': 'application/json' },
    });
    assert.equal(big.status, 413);
    assertSecurityHeaders(big.headers, '413');
    const preflight = await p.req('OPTIONS', '/v1/sandboxes', { headers: { origin: EVIL_ORIGIN } });
    assertSecurityHeaders(preflight.headers, 'OPTIONS');
    // A streamed exec (SSE) carries them too, and its body is never sniffed as HTML.
    const sse = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { command: 'echo "<script>alert(1)</script>"' },
      headers: { accept: 'text/event-stream' },
    });
    assert.equal(sse.status, 200, sse.text);
    assert.match(String(sse.headers.get('content-type')), /^text\/event-stream/);
    assertSecurityHeaders(sse.headers, 'SSE');
    assert.match(sse.text, /event: exit/);
    // 002 M-24: the JSON result of the same output is served as JSON, never as HTML.
    const json = await execIn(p, sandbox, 'echo "<script>alert(1)</script>"', tenantKey);
    assert.equal(json.status, 200, json.text);
    assert.match(String(json.headers.get('content-type')), /^application\/json/);
    assertSecurityHeaders(json.headers, 'exec JSON');
  });

  it('002 H-1: serve has no unauthenticated mode: every API route refuses a request without a valid key', async () => {
    const doc = (await p.req('GET', '/v1/openapi.json', { key: null })).json as {
      paths: Record<string, Record<string, { security?: unknown[] }>>;
    };
    const fill = (path: string) =>
      path
        .replace(/\{id\}/g, sandbox)
        .replace(/\{execId\}/g, `ex-${'a'.repeat(20)}`)
        .replace(/\{keyId\}/g, 'a'.repeat(16))
        .replace(/\{[A-Za-z]+\}/g, 'x');
    const publicPaths = new Set(['/healthz', '/readyz', '/v1/openapi.json']);
    const source = nextSource();
    const routes = Object.entries(doc.paths)
      .filter(([path]) => !publicPaths.has(path))
      .flatMap(([path, methods]) => Object.keys(methods).map((m) => [m.toUpperCase(), path]));
    assert.ok(routes.length >= 20, `only ${routes.length} routes listed`);
    // Each refusal from its own address: the failed-auth throttle must not be what answers.
    const answers = await Promise.all(
      routes.map(([method, path]) => requestFrom(p, nextSource(), method!, fill(path!))),
    );
    answers.forEach((noKey, i) => {
      const [method, path] = routes[i]!;
      assert.equal(noKey.status, 401, `${method} ${path} without a key: ${noKey.text}`);
      assert.equal(noKey.json.code, 'UNAUTHENTICATED', `${method} ${path}`);
    });
    // The legitimate path: the same client with a key is served.
    const ok = await requestFrom(p, source, 'GET', `/v1/sandboxes/${sandbox}`, { key: tenantKey });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.id, sandbox);
    // And the server refuses to listen on a non-loopback address without TLS.
    const refused = await serveRefusal(['--host', '0.0.0.0']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.output, /Refusing to serve plain HTTP on 0\.0\.0\.0/);
    assert.match(refused.output, /--tls-cert/);
    assert.doesNotMatch(refused.output, /listening on/);
  });

  it('002 H-3: a WebSocket upgrade needs a valid key before 101; the right key gets a working stream', async () => {
    const revoked = await p.createKey({
      name: 'revoked',
      tenant: 'team-a',
      scopes: ['sandboxes:read'],
    });
    assert.equal((await p.req('DELETE', `/v1/keys/${revoked.id}`)).status < 300, true);
    const wrong = `psk_${'a'.repeat(16)}_${'A'.repeat(43)}`;
    const cases: Array<[string, Record<string, string>, string?]> = [
      ['no credentials', {}],
      ['wrong key', { authorization: `Bearer ${wrong}` }],
      ['revoked key', { authorization: `Bearer ${revoked.key}` }],
      ['key in the query string is not a credential', {}, `/v1/ws?token=${tenantKey}`],
      ['wrong key as subprotocol', { 'sec-websocket-protocol': `palisade.v1, bearer.${wrong}` }],
    ];
    for (const [name, headers, path] of cases) {
      const r = await rawUpgrade(p, nextSource(), headers, path);
      r.socket.destroy();
      assert.equal(r.status, 401, `${name}: ${r.head}`);
      assert.doesNotMatch(r.head, /upgrade: websocket/i, name);
    }
    const foreign = await rawUpgrade(p, nextSource(), {
      authorization: `Bearer ${tenantKey}`,
      origin: EVIL_ORIGIN,
    });
    foreign.socket.destroy();
    assert.equal(foreign.status, 403, `cross-site WebSocket: ${foreign.head}`);

    // The legitimate path: header auth and browser-style subprotocol auth both stream output.
    for (const client of [
      new WsClient(p, tenantKey),
      new WsClient(p, '', ['palisade.v1', `bearer.${tenantKey}`]),
    ]) {
      await client.opened;
      client.ws.send(JSON.stringify({ type: 'subscribe', sandboxId: sandbox }));
      await client.waitFor((m) => m.type === 'subscribed');
      const run = await execIn(p, sandbox, 'echo ws-hello', tenantKey);
      assert.equal(run.status, 200, run.text);
      await client.waitFor(
        (m) =>
          m.type === 'exec.output' &&
          Buffer.from(String(m.data), 'base64').toString().includes('ws-hello'),
      );
      client.ws.terminate();
    }
  });

  it('002 H-5: a wrong secret for a real key id fails exactly like an unknown id or a malformed key', async () => {
    const real = await p.createKey({
      name: 'victim',
      tenant: 'team-a',
      scopes: ['sandboxes:read'],
    });
    const [, id, secret] = /^psk_([a-z2-7]+)_(.+)$/.exec(real.key) ?? [];
    assert.ok(id && secret, real.key);
    // Flip the last character only: a comparison that stops at the first difference would take
    // the longest here; the answer must be the same as for every other failure.
    const last = secret.at(-1) === 'A' ? 'B' : 'A';
    const attempts = [
      `psk_${id}_${secret.slice(0, -1)}${last}`,
      `psk_${id}_${secret.slice(0, -1)}`,
      `psk_${'b'.repeat(id.length)}_${secret}`,
      `psk_${id}_${secret}x`,
      'garbage',
    ];
    const source = nextSource();
    const answers = [];
    for (const key of attempts) {
      const r = await requestFrom(p, source, 'GET', '/v1/sandboxes', { key });
      answers.push({ status: r.status, code: r.json.code, message: r.json.message });
    }
    for (const a of answers) assert.deepEqual(a, answers[0]);
    assert.equal(answers[0]!.status, 401);
    assert.equal(answers[0]!.code, 'UNAUTHENTICATED');
    const ok = await requestFrom(p, source, 'GET', '/v1/sandboxes', { key: real.key });
    assert.equal(ok.status, 200, ok.text);
  });

  it('002 M-23: API keys carry a 256-bit random secret and are shown once, stored only as a hash', async () => {
    const a = await p.createKey({
      name: 'entropy-a',
      tenant: 'team-a',
      scopes: ['sandboxes:read'],
    });
    const b = await p.createKey({
      name: 'entropy-b',
      tenant: 'team-a',
      scopes: ['sandboxes:read'],
    });
    for (const k of [a.key, b.key, p.adminKey]) {
      const secret = /^psk_[a-z2-7]{16}_([A-Za-z0-9_-]+)$/.exec(k)?.[1];
      assert.ok(secret, k);
      assert.equal(Buffer.from(secret, 'base64url').length, 32, 'secret is 32 random bytes');
    }
    assert.notEqual(secretOfKey(a.key), secretOfKey(b.key));
    const listed = await p.req('GET', '/v1/keys');
    assert.equal(listed.status, 200);
    assert.ok(!listed.text.includes(secretOfKey(a.key)), 'the list shows a secret');
    assert.ok(listed.text.includes(a.id), 'the list shows the key id');
  });

  it('002 H-8/H-11: kernel limits hold through the API: a fork bomb and a memory bomb stay inside the sandbox', async () => {
    const small = await p.createSandbox(
      { limits: { pids: 32, memoryBytes: 64 * 1024 * 1024 } },
      tenantKey,
    );
    const view = await p.req('GET', `/v1/sandboxes/${small}`, { key: tenantKey });
    assert.equal(view.json.limits.pids, 32);
    // Forks until the kernel says no, counts, then cleans up after itself.
    const forkBomb = [
      'import os, signal, time',
      'kids = []',
      'for i in range(500):',
      '    try:',
      '        pid = os.fork()',
      '    except OSError:',
      '        break',
      '    if pid == 0:',
      '        time.sleep(60)',
      '        os._exit(0)',
      '    kids.append(pid)',
      'print("forked", len(kids), flush=True)',
      'for pid in kids:',
      '    os.kill(pid, signal.SIGKILL)',
      '    os.waitpid(pid, 0)',
    ].join('\n');
    const bomb = await p.req('POST', `/v1/sandboxes/${small}/exec`, {
      key: tenantKey,
      body: { argv: ['python3', '-c', forkBomb], timeoutMs: 20_000 },
    });
    assert.equal(bomb.status, 200, bomb.text);
    const count = Number(/forked (\d+)/.exec(bomb.json.stdout)?.[1]);
    assert.ok(count > 0 && count < 32, `processes forked in the sandbox: ${bomb.text}`);
    const memory = await p.req('POST', `/v1/sandboxes/${small}/exec`, {
      key: tenantKey,
      body: {
        command: 'python3 -c "b = bytearray(512 * 1024 * 1024); print(len(b))"',
        timeoutMs: 20_000,
      },
    });
    assert.equal(memory.status, 200, memory.text);
    assert.notEqual(
      memory.json.exitCode,
      0,
      `512 MiB allocated under a 64 MiB limit: ${memory.text}`,
    );
    assert.doesNotMatch(memory.json.stdout, /536870912/);
    // The sandbox (and the server) keep working for the legitimate next command.
    const alive = await execIn(p, small, 'echo alive', tenantKey);
    assert.equal(alive.status, 200, alive.text);
    assert.match(alive.json.stdout, /alive/);
    const health = await p.req('GET', '/healthz', { key: null });
    assert.equal(health.status, 200);
    assert.equal((await p.req('DELETE', `/v1/sandboxes/${small}`, { key: tenantKey })).status, 200);
  });

  it('002 H-8: with the cgroup controllers missing, palisade serve refuses to start and names each one with its fix', async () => {
    // A private mount namespace where /sys/fs/cgroup is an empty tmpfs: no controller at all.
    const refused = await serveRefusal(
      [
        // A uid range of its own (no other test helper uses 1830000000+), in case it did start.
        '--engine-uids',
        `${1_830_000_000 + (process.pid % 10_000) * 100}:50`,
        '--engine-cgroup',
        `palisade-h8-${process.pid}`,
      ],
      'mount -t tmpfs none /sys/fs/cgroup',
    );
    assert.notEqual(refused.code, 0, refused.output);
    assert.match(refused.output, /REQUIREMENT_MISSING/);
    for (const controller of ['memory', 'pids', 'cpu', 'freezer'])
      assert.match(
        refused.output,
        new RegExp(`cgroup controller ${controller}:.*fix: mount`),
        controller,
      );
    assert.doesNotMatch(refused.output, /listening on|Admin API key/);
    // The same host with its controllers serves (the server under attack here), with limits.
    const view = await p.req('GET', `/v1/sandboxes/${sandbox}`, { key: tenantKey });
    assert.equal(view.json.state, 'running');
  });

  it('002 H-9: a sandboxed process cannot make itself exempt from the OOM killer', async () => {
    const r = await execIn(
      p,
      sandbox,
      'cat /proc/self/oom_score_adj; (echo -1000 > /proc/self/oom_score_adj) 2>/dev/null && echo LOWERED || echo REFUSED; sh -c "echo 500 > /proc/self/oom_score_adj && cat /proc/self/oom_score_adj"',
      tenantKey,
    );
    assert.equal(r.status, 200, r.text);
    const [initial, verdict, raised] = String(r.json.stdout).trim().split('\n');
    assert.ok(Number(initial) >= 0, `initial oom_score_adj ${initial}`);
    assert.equal(verdict, 'REFUSED');
    assert.equal(raised, '500', 'raising (the harmless direction) still works');
  });

  it('002 H-10: concurrent creates by one tenant (several keys at once) never exceed its quota', async () => {
    const scopes = ['sandboxes:read', 'sandboxes:write'];
    const k1 = (await p.createKey({ name: 'q1', tenant: 'quota-t', scopes })).key;
    const k2 = (await p.createKey({ name: 'q2', tenant: 'quota-t', scopes })).key;
    const body = { limits: { memoryBytes: 64 * 1024 * 1024 }, labels: { q: 'race' } };
    const results = await Promise.all(
      Array.from({ length: 24 }, (_, i) =>
        p.req('POST', '/v1/sandboxes', { key: i % 2 ? k1 : k2, body }),
      ),
    );
    const created = results.filter((r) => r.status === 201).map((r) => r.json.id as string);
    const refused = results.filter((r) => r.status !== 201);
    assert.equal(created.length, 20, `created ${created.length}`);
    for (const r of refused) assert.equal(r.json.code, 'QUOTA_EXCEEDED', r.text);
    const live = await p.req('GET', '/v1/sandboxes?state=running&limit=100', { key: k1 });
    assert.equal(live.json.items.length, 20);
    // Freeing one slot lets exactly the next create through.
    assert.equal((await p.req('DELETE', `/v1/sandboxes/${created[0]}`, { key: k1 })).status, 200);
    const again = await p.req('POST', '/v1/sandboxes', { key: k2, body });
    assert.equal(again.status, 201, again.text);
    created[0] = again.json.id;
    await Promise.all(created.map((id) => p.req('DELETE', `/v1/sandboxes/${id}`, { key: k1 })));
  });

  it('002 M-1: a sandbox cannot reach host services: the API port on host loopback is unreachable from inside', async () => {
    const port = new URL(p.url).port;
    // From the host, the port answers (the legitimate path).
    assert.equal((await p.req('GET', '/healthz', { key: null })).status, 200);
    const r = await execIn(
      p,
      sandbox,
      `echo IF=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,); ` +
        `(exec 3<>/dev/tcp/127.0.0.1/${port}) 2>/dev/null && echo CONNECTED || echo REFUSED; ` +
        `curl -s -m 3 -o /dev/null -w '%{http_code}' http://127.0.0.1:${port}/healthz; echo " curl=$?"`,
      tenantKey,
    );
    assert.equal(r.status, 200, r.text);
    const lines = String(r.json.stdout).trim().split('\n');
    assert.equal(lines[0], 'IF=lo,', `interfaces: ${r.json.stdout}`);
    assert.ok(lines.includes('REFUSED'), r.json.stdout);
    assert.doesNotMatch(r.json.stdout, /CONNECTED|^200/m);
    assert.match(r.json.stdout, /curl=[1-9]/);
  });

  it('002 M-2: a server listening inside one sandbox is unreachable from another sandbox', async () => {
    const other = await p.createSandbox({}, tenantKey);
    const server = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: {
        command: 'cd /tmp && exec python3 -m http.server 18080 --bind 0.0.0.0',
        background: true,
        timeoutMs: 60_000,
      },
    });
    assert.equal(server.status, 202, server.text);
    // The owner reaches its own server (proves the listener is really up).
    let own = '';
    for (let i = 0; i < 50 && own !== '200'; i++) {
      await sleep(200);
      const r = await execIn(
        p,
        sandbox,
        "curl -s -m 2 -o /dev/null -w '%{http_code}' http://127.0.0.1:18080/",
        tenantKey,
      );
      own = String(r.json.stdout);
    }
    assert.equal(own, '200', 'the listener never came up inside its sandbox');
    const probe = await execIn(
      p,
      other,
      "curl -s -m 3 -o /dev/null -w '%{http_code}' http://127.0.0.1:18080/; echo \" curl=$?\"; grep -ci ':46A0 ' /proc/net/tcp || true",
      tenantKey,
    );
    assert.equal(probe.status, 200, probe.text);
    assert.match(probe.json.stdout, /^000 curl=[1-9]/, probe.json.stdout);
    assert.match(probe.json.stdout, /\n0\n?$/, 'the other sandbox sees no listener on 18080');
    await p.req('POST', `/v1/sandboxes/${sandbox}/execs/${server.json.id}/interrupt`, {
      key: tenantKey,
    });
    await p.req('DELETE', `/v1/sandboxes/${other}`, { key: tenantKey });
  });

  it('002 M-9/L-9: per-request env of foreground and background execs gets the same blocklist as sandbox env', async () => {
    const hostile: Array<Record<string, string>> = [
      { LD_PRELOAD: '/tmp/evil.so' },
      { BASH_ENV: '/tmp/evil.sh' },
      { NODE_OPTIONS: '--require /tmp/evil.js' },
      { 'BASH_FUNC_ls%%': '() { id; }' },
      { PYTHONSTARTUP: '/tmp/evil.py' },
      { GOOD: 'x\nEVIL=1' },
      { 'A=B': 'c' },
    ];
    for (const env of hostile) {
      const label = JSON.stringify(env);
      const fg = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
        key: tenantKey,
        body: { command: 'touch /tmp/ran-fg', env },
      });
      assert.equal(fg.status, 400, `foreground ${label}: ${fg.text}`);
      assert.match(fg.json.code, /INVALID_ENV|INVALID_ARGUMENT/);
      const bg = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
        key: tenantKey,
        body: { command: 'touch /tmp/ran-bg', env, background: true },
      });
      assert.equal(bg.status, 400, `background ${label}: ${bg.text}`);
      const create = await p.req('POST', '/v1/sandboxes', { key: tenantKey, body: { env } });
      assert.equal(create.status, 400, `create ${label}: ${create.text}`);
    }
    const ran = await execIn(
      p,
      sandbox,
      'ls /tmp/ran-fg /tmp/ran-bg 2>&1 | wc -l; ls /tmp',
      tenantKey,
    );
    assert.doesNotMatch(ran.json.stdout, /ran-/, 'a refused exec ran anyway');
    // The legitimate path: ordinary variables reach the command.
    const ok = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { command: 'echo "$GREETING $LD_PRELOAD"', env: { GREETING: 'hello' } },
    });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.stdout, 'hello \n');
  });

  it('002 M-10: exec output is capped per stream and flagged, in the JSON result and over SSE', async () => {
    const cmd =
      'head -c 3000000 /dev/zero | tr "\\0" a; head -c 3000000 /dev/zero | tr "\\0" b >&2';
    const r = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { command: cmd, maxOutputBytes: 1000 },
    });
    assert.equal(r.status, 200, r.text.slice(0, 300));
    assert.equal(r.json.stdout, 'a'.repeat(1000));
    assert.equal(r.json.stderr, 'b'.repeat(1000));
    assert.equal(r.json.stdoutTruncated, true);
    assert.equal(r.json.stderrTruncated, true);
    const sse = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { command: cmd, maxOutputBytes: 1000 },
      headers: { accept: 'text/event-stream' },
    });
    assert.equal(sse.status, 200);
    assert.ok(sse.text.length < 20_000, `SSE body of ${sse.text.length} bytes`);
    assert.match(sse.text, /event: exit/);
    // Asking for more than the server's maximum is refused, not silently granted.
    const tooMuch = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { command: 'true', maxOutputBytes: 1024 ** 3 },
    });
    assert.equal(tooMuch.status, 400, tooMuch.text);
    // Small output is complete and not flagged.
    const small = await execIn(p, sandbox, 'echo complete', tenantKey);
    assert.equal(small.json.stdout, 'complete\n');
    assert.equal(small.json.stdoutTruncated, false);
  });

  it('002 M-12: request bodies over the limit are 413 and WebSocket messages over the bound close the connection', async () => {
    const big = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { command: 'true', stdin: 'x'.repeat(2 * 1024 * 1024) },
    });
    assert.equal(big.status, 413, big.text.slice(0, 300));
    assert.equal(big.json.code, 'PAYLOAD_TOO_LARGE');
    const fits = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { command: 'wc -c', stdin: 'x'.repeat(512 * 1024) },
    });
    assert.equal(fits.status, 200, fits.text.slice(0, 300));
    assert.equal(fits.json.stdout.trim(), String(512 * 1024));

    const ws = new WsClient(p, tenantKey);
    await ws.opened;
    ws.ws.send(JSON.stringify({ type: 'subscribe', sandboxId: sandbox }));
    await ws.waitFor((m) => m.type === 'subscribed');
    ws.ws.send(
      JSON.stringify({ type: 'subscribe', sandboxId: sandbox, pad: 'x'.repeat(64 * 1024) }),
    );
    assert.equal(await ws.closed, 1009);
  });

  it('002 M-17: glob, rule and selector patterns are length-limited; a pathological glob finishes promptly', async () => {
    const search = (glob: string) =>
      p.req('POST', `/v1/sandboxes/${sandbox}/files/search`, {
        key: tenantKey,
        body: { path: '/workspace', glob },
      });
    const long = await search('*'.repeat(1025));
    assert.equal(long.status, 400, long.text);
    const longRule = await p.req('POST', '/v1/sandboxes', {
      key: tenantKey,
      body: { policy: { permissions: { deny: [`Bash(${'a'.repeat(2000)}:*)`] } } },
    });
    assert.equal(longRule.status, 400, longRule.text);
    assert.match(longRule.json.message, /1024|long/);
    const longSelector = await p.req('GET', `/v1/sandboxes?labelSelector=${'a'.repeat(2100)}`, {
      key: tenantKey,
    });
    assert.equal(longSelector.status, 400, longSelector.text);
    // A glob built to make backtracking matchers explode, against a name built to feed it.
    const setup = await execIn(
      p,
      sandbox,
      `mkdir -p /workspace/g && touch /workspace/g/${'a'.repeat(200)}`,
      tenantKey,
    );
    assert.equal(setup.status, 200, setup.text);
    const started = Date.now();
    const evil = await search(`g/${'*a'.repeat(60)}b`);
    const took = Date.now() - started;
    assert.equal(evil.status, 200, evil.text);
    assert.deepEqual(evil.json.matches, []);
    assert.ok(took < 10_000, `pathological glob took ${took} ms`);
    // The legitimate search still finds the file.
    const found = await search(`g/${'*a'.repeat(5)}`);
    assert.equal(found.status, 200, found.text);
    assert.equal(found.json.matches.length, 1);
  });

  it('002 M-15: WebSocket connections per key are limited before the upgrade; closing one frees a slot', async () => {
    const limited = (
      await p.createKey({ name: 'ws-limit', tenant: 'team-a', scopes: ['sandboxes:read'] })
    ).key;
    const open: WsClient[] = [];
    for (let i = 0; i < 8; i++) {
      const c = new WsClient(p, limited);
      await c.opened;
      open.push(c);
    }
    const ninth = await rawUpgrade(p, nextSource(), { authorization: `Bearer ${limited}` });
    ninth.socket.destroy();
    assert.equal(ninth.status, 429, ninth.head);
    assert.match(ninth.head, /retry-after/i);
    // Another key is not affected.
    const other = new WsClient(p, tenantKey);
    await other.opened;
    other.ws.terminate();
    open[0]!.ws.close();
    await open[0]!.closed;
    await sleep(100);
    const again = new WsClient(p, limited);
    await again.opened;
    for (const c of [...open, again]) c.ws.terminate();
  });

  it('002 L-7: no API key or host secret reaches a sandbox', async () => {
    const r = await execIn(
      p,
      sandbox,
      'env; cat /proc/1/environ 2>/dev/null | tr "\\0" "\\n"; ls -a / /workspace /tmp; grep -rl psk_ /etc /workspace /tmp 2>/dev/null; echo end',
      tenantKey,
    );
    assert.equal(r.status, 200, r.text);
    assert.match(r.json.stdout, /end\n$/);
    for (const secret of [p.adminKey, tenantKey, 'psk_', p.dataDir])
      assert.ok(!String(r.json.stdout).includes(secret), `${secret.slice(0, 8)}… visible inside`);
  });

  it('002 M-20: there is no root login inside a sandbox: no root password, no setuid way up', async () => {
    const r = await execIn(
      p,
      sandbox,
      'id -u; grep "^root:" /etc/passwd; ls /etc/shadow 2>&1; (echo agentiso | su -c id root) 2>&1 | head -1; grep NoNewPrivs /proc/self/status',
      tenantKey,
    );
    assert.equal(r.status, 200, r.text);
    const out = String(r.json.stdout);
    assert.match(out, /^1000\n/);
    assert.doesNotMatch(out, /^root:[^:x*!]+:/m, 'root has a password hash in /etc/passwd');
    assert.match(out, /shadow'?: No such file/);
    assert.doesNotMatch(out, /uid=0/);
    assert.match(out, /NoNewPrivs:\s*1/);
  });

  it('002 M-6: the server log never contains API keys (valid, wrong, revoked, WebSocket, MCP) or env values', async () => {
    const envSecret = `envsecret${randomBytes(8).toString('hex')}`;
    const guessed = `psk_${'c'.repeat(16)}_${randomBytes(32).toString('base64url')}`;
    const leaked = await p.createKey({
      name: 'leak-check',
      tenant: 'team-a',
      scopes: ['sandboxes:read', 'sandboxes:exec'],
    });
    await requestFrom(p, nextSource(), 'GET', '/v1/sandboxes', { key: guessed });
    await p.req('GET', '/v1/sandboxes', { key: leaked.key });
    // Keys where they do not belong (query string, path) are refused, and not logged either.
    const inQuery = await p.req('GET', `/v1/sandboxes?token=${tenantKey}&api_key=${tenantKey}`, {
      key: leaked.key,
    });
    assert.equal(inQuery.status, 400, inQuery.text);
    assert.equal((await p.req('GET', `/v1/${tenantKey}`, { key: leaked.key })).status, 404);
    await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: leaked.key,
      body: { command: 'true', env: { TOKEN: envSecret }, stdin: envSecret },
    });
    await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: leaked.key,
      body: { command: 'true', env: { LD_PRELOAD: envSecret } },
    });
    const viaProtocol = await rawUpgrade(p, nextSource(), {
      'sec-websocket-protocol': `palisade.v1, bearer.${guessed}`,
    });
    viaProtocol.socket.destroy();
    const transport = new StreamableHTTPClientTransport(new URL('/mcp', p.url), {
      requestInit: { headers: { authorization: `Bearer ${leaked.key}` } },
    });
    const mcp = new McpClient({ name: 'attack-002', version: '0.0.0' });
    await mcp.connect(transport);
    const tools = await mcp.listTools();
    assert.ok(tools.tools.length > 0);
    await mcp.close();
    await p.req('DELETE', `/v1/keys/${leaked.id}`);
    await p.req('GET', '/v1/sandboxes', { key: leaked.key });
    await sleep(500);
    const log = p.output().stderr;
    // The log is really there and records these requests (else this test could not fail).
    assert.match(log, /"reqId":"req_/);
    assert.ok(log.split('\n').length > 50, 'server log is nearly empty');
    const secretOf = secretOfKey;
    const masked = (line: string) =>
      line.replace(/psk_[A-Za-z0-9]+_[A-Za-z0-9_-]{6}/g, (m) => `${m.slice(0, 22)}…`);
    for (const [what, secret] of [
      ['admin key', secretOf(p.adminKey)],
      ['tenant key', secretOf(tenantKey)],
      ['revoked key', secretOf(leaked.key)],
      ['guessed key', secretOf(guessed)],
      ['env value', envSecret],
    ] as const) {
      const line = log.split('\n').find((l) => l.includes(secret));
      assert.equal(
        line,
        undefined,
        `${what} in the server log: ${masked(line ?? '').slice(0, 400)}`,
      );
    }
    assert.ok(!log.includes(secretOf(leaked.key).slice(0, 8)), 'a key prefix in the server log');
  });

  it('002 L-16: errors never echo internals (paths, stack frames, SQL); hostile names come back quoted and bounded', async () => {
    const source = nextSource();
    const probes: Array<[string, string, RequestFromOptions]> = [
      ['GET', `/v1/sandboxes/${'<script>alert(1)</script>'.repeat(20)}`, { key: tenantKey }],
      ['GET', "/v1/sandboxes/sb-aaaa'or'1'='1", { key: tenantKey }],
      [
        'POST',
        '/v1/sandboxes',
        { key: tenantKey, rawBody: '{"labels":', headers: { 'content-type': 'application/json' } },
      ],
      ['POST', '/v1/sandboxes', { key: tenantKey, body: { labels: { '../../etc': 'x' } } }],
      [
        'POST',
        `/v1/sandboxes/${sandbox}/exec`,
        { key: tenantKey, body: { command: 'true', cwd: '/../../etc' } },
      ],
      [
        'POST',
        `/v1/sandboxes/${sandbox}/exec`,
        { key: tenantKey, body: { argv: ['/no/such/program'] } },
      ],
      ['GET', `/v1/sandboxes/${sandbox}/files?path=/etc/shadow`, { key: tenantKey }],
      ['GET', `/v1/sandboxes/${sandbox}/files?path=%ff%00`, { key: tenantKey }],
      ['GET', '/v1/audit?limit=abc', { key: tenantKey }],
      ['GET', `/v1/sandboxes?cursor=${'A'.repeat(100)}`, { key: tenantKey }],
      ['DELETE', `/v1/keys/${'z'.repeat(16)}`, {}],
    ];
    for (const [method, path, opts] of probes) {
      const r = await requestFrom(p, source, method, path, opts);
      const what = `${method} ${path.slice(0, 60)}`;
      assert.ok(r.status < 500, `${what}: ${r.status} ${r.text}`);
      if (r.status >= 400) {
        assert.deepEqual(
          Object.keys(r.json).filter(
            (k) => !['code', 'message', 'requestId', 'details'].includes(k),
          ),
          [],
          what,
        );
        assert.match(String(r.headers['content-type']), /^application\/json/, what);
      }
      for (const leak of [
        p.dataDir,
        '/work/',
        'node_modules',
        'SQLITE',
        'sqlite',
        '    at ',
        '.ts:',
        'Kysely',
        'fastify',
      ])
        assert.ok(!r.text.includes(leak), `${what} leaks ${JSON.stringify(leak)}: ${r.text}`);
      assert.ok(r.text.length < 4096, `${what}: ${r.text.length} bytes of error`);
    }
    // Another tenant's sandbox answers exactly like a missing one (no existence oracle).
    const otherKey = (
      await p.createKey({ name: 'other', tenant: 'team-b', scopes: ['sandboxes:read'] })
    ).key;
    const theirs = await requestFrom(p, source, 'GET', `/v1/sandboxes/${sandbox}`, {
      key: otherKey,
    });
    const none = await requestFrom(p, source, 'GET', `/v1/sandboxes/sb-${'a'.repeat(20)}`, {
      key: otherKey,
    });
    assert.equal(theirs.status, 404);
    assert.equal(theirs.json.code, none.json.code);
    assert.equal(
      theirs.json.message.replace(sandbox, 'ID'),
      none.json.message.replace(`sb-${'a'.repeat(20)}`, 'ID'),
    );
    // The owner still reads it.
    const mine = await requestFrom(p, source, 'GET', `/v1/sandboxes/${sandbox}`, {
      key: tenantKey,
    });
    assert.equal(mine.status, 200);
  });

  it('002 L-10: a request that would encode past the engine channel bound fails alone with 413; the server and its sandboxes keep running', async () => {
    const bystander = await p.createSandbox({}, tenantKey);
    // Largest body the API accepts (1 MiB), made of argv: once wrapped for the supervisor it is
    // larger than the supervisor's frame bound, which would otherwise drop the whole worker.
    const item = 'x'.repeat(131_000);
    const argv = ['true', ...Array.from({ length: 8 }, () => item), ''];
    const room = 1024 * 1024 - 8 - Buffer.byteLength(JSON.stringify({ argv }));
    argv[argv.length - 1] = 'y'.repeat(room);
    assert.ok(Buffer.byteLength(JSON.stringify({ argv })) <= 1024 * 1024);
    const big = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { argv },
    });
    assert.equal(big.status, 413, big.text.slice(0, 300));
    assert.equal(big.json.code, 'PAYLOAD_TOO_LARGE');
    const edit = await p.req('POST', `/v1/sandboxes/${sandbox}/files/edit`, {
      key: tenantKey,
      body: {
        path: '/workspace/none.txt',
        oldText: 'a'.repeat(520_000),
        newText: 'b'.repeat(520_000),
      },
    });
    assert.ok(
      edit.status === 413 || edit.status === 404,
      `edit: ${edit.status} ${edit.text.slice(0, 300)}`,
    );
    // Everyone else is unaffected: the server answers and both sandboxes still run commands.
    assert.equal((await p.req('GET', '/healthz', { key: null })).status, 200);
    for (const id of [sandbox, bystander]) {
      const r = await execIn(p, id, 'echo still-here', tenantKey);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.json.stdout, 'still-here\n');
    }
    // A large argv below the bound still runs.
    const fits = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { argv: ['sh', '-c', 'echo ${#1}', 'sh', item] },
    });
    assert.equal(fits.status, 200, fits.text.slice(0, 300));
    assert.equal(fits.json.stdout, `${item.length}\n`);
    await p.req('DELETE', `/v1/sandboxes/${bystander}`, { key: tenantKey });
  });

  it('002 L-5: sandboxed code cannot reach or stop the engine-agent channel (pid 1)', async () => {
    const r = await execIn(
      p,
      sandbox,
      'ls /proc/1/fd >/dev/null 2>&1 && echo FD-OPEN || echo FD-CLOSED; ' +
        'head -c 1 /proc/1/mem >/dev/null 2>&1 && echo MEM-OPEN || echo MEM-CLOSED; ' +
        'kill -KILL 1 2>/dev/null; kill -TERM 1 2>/dev/null; sleep 0.2; echo after-kill',
      tenantKey,
    );
    assert.equal(r.status, 200, r.text);
    assert.match(r.json.stdout, /FD-CLOSED\nMEM-CLOSED\nafter-kill\n/);
    // The agent survived: the next command runs normally.
    const next = await execIn(p, sandbox, 'echo agent-alive', tenantKey);
    assert.equal(next.status, 200, next.text);
    assert.equal(next.json.stdout, 'agent-alive\n');
  });

  it('002 M-16: output cut inside a multi-byte character is still a well-formed answer (utf8 and exact base64)', async () => {
    const cmd = "for i in $(seq 1 3000); do printf '\\303\\251'; done";
    const text = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { command: cmd, maxOutputBytes: 1001 },
    });
    assert.equal(text.status, 200, text.text.slice(0, 300));
    assert.equal(text.json.stdoutTruncated, true);
    assert.ok(String(text.json.stdout).startsWith('é'.repeat(500)));
    assert.ok(Buffer.byteLength(text.json.stdout) <= 1003, 'more than the cap came back');
    const raw = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: tenantKey,
      body: { command: cmd, maxOutputBytes: 1001, encoding: 'base64' },
    });
    assert.equal(raw.status, 200, raw.text.slice(0, 300));
    const bytes = Buffer.from(raw.json.stdout, 'base64');
    assert.equal(bytes.length, 1001);
    assert.deepEqual(bytes.subarray(0, 4), Buffer.from('éé'));
  });

  it('002 M-18: names used as identifiers (tenants, labels, key names, selectors) are validated before use', async () => {
    const bad: Array<[string, string, unknown]> = [
      ['POST', '/v1/keys', { name: 'x', tenant: '../other', scopes: ['sandboxes:read'] }],
      ['POST', '/v1/keys', { name: 'x', tenant: 'Team A', scopes: ['sandboxes:read'] }],
      ['POST', '/v1/keys', { name: 'line\nbreak', scopes: ['sandboxes:read'] }],
      ['POST', '/v1/sandboxes', { labels: { 'role/../x': 'a' } }],
      ['POST', '/v1/sandboxes', { labels: { role: 'a b;rm -rf' } }],
    ];
    for (const [method, path, body] of bad) {
      const r = await p.req(method, path, { body });
      assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.text}`);
    }
    const selector = await p.req(
      'GET',
      `/v1/sandboxes?labelSelector=${encodeURIComponent("seed=002' OR 1=1")}`,
      {
        key: tenantKey,
      },
    );
    assert.equal(selector.status, 400, selector.text);
    // Well-formed names work.
    const ok = await p.req('GET', '/v1/sandboxes?labelSelector=seed%3D002', { key: tenantKey });
    assert.equal(ok.status, 200, ok.text);
    assert.deepEqual(
      ok.json.items.map((i: { id: string }) => i.id),
      [sandbox],
    );
  });

  it('002 M-4: egress rules are parsed into typed names, addresses and ranges; anything else is refused', async () => {
    for (const rule of [
      '10.0.0.1; flush ruleset',
      '10.0.0.0/33',
      'exa mple.com',
      '1.2.3.4:99999',
      '"; drop',
    ]) {
      const r = await p.req('POST', '/v1/sandboxes', {
        key: tenantKey,
        body: { policy: { network: { allow: [rule] } } },
      });
      assert.equal(r.status, 400, `${rule}: ${r.text}`);
      assert.match(r.json.code, /INVALID_POLICY|INVALID_ARGUMENT/);
    }
    const ok = await p.req('POST', '/v1/sandboxes', {
      key: tenantKey,
      body: { policy: { network: { allow: ['example.com', '10.0.0.0/8:5432'] } } },
    });
    assert.equal(ok.status, 201, ok.text);
    const view = await p.req('GET', `/v1/sandboxes/${ok.json.id}/network`, { key: tenantKey });
    assert.equal(view.status, 200, view.text);
    // 002 L-4: no resolver inside even with network on; names are resolved by the gateway only.
    const dns = await execIn(
      p,
      ok.json.id,
      'python3 -c "import socket; socket.getaddrinfo(\'exfil-0123.example.com\', 80)" 2>/dev/null && echo RESOLVED || echo NO-DNS; ls /etc/resolv.conf 2>&1 | head -1',
      tenantKey,
    );
    assert.equal(dns.status, 200, dns.text);
    assert.match(dns.json.stdout, /^NO-DNS\n/);
    await p.req('DELETE', `/v1/sandboxes/${ok.json.id}`, { key: tenantKey });
  });

  it('002 L-14: argv is quoted by one function for the policy check: metacharacters in arguments neither hide a command nor invent one', async () => {
    const guarded = await p.createSandbox(
      { policy: { permissions: { default: 'allow', deny: ['Bash(rm:*)'] } } },
      tenantKey,
    );
    await execIn(p, guarded, 'touch /workspace/keep', tenantKey);
    // The real command is rm: denied, however the arguments are dressed.
    for (const argv of [
      ['rm', '-f', '/workspace/keep'],
      ['rm', "x'; echo 'harmless"],
      ['rm', '$(echo)', '/workspace/keep'],
    ]) {
      const r = await p.req('POST', `/v1/sandboxes/${guarded}/exec`, {
        key: tenantKey,
        body: { argv },
      });
      assert.equal(r.status, 403, `${JSON.stringify(argv)}: ${r.text}`);
      assert.equal(r.json.code, 'POLICY_DENIED');
    }
    // An argument that merely contains "; rm …" is data: allowed, and printed literally.
    const text = "a'; rm -f /workspace/keep; echo '";
    const echo = await p.req('POST', `/v1/sandboxes/${guarded}/exec`, {
      key: tenantKey,
      body: { argv: ['echo', text] },
    });
    assert.equal(echo.status, 200, echo.text);
    assert.equal(echo.json.stdout, `${text}\n`);
    const kept = await execIn(p, guarded, 'ls /workspace/keep', tenantKey);
    assert.equal(kept.json.stdout, '/workspace/keep\n');
    await p.req('DELETE', `/v1/sandboxes/${guarded}`, { key: tenantKey });
  });

  // Last: it empties the server-wide create bucket.
  it('002 M-21: rate limits are global: many fresh keys together hit the server-wide bucket', async () => {
    const fresh = await p.createKey({
      name: 'fresh',
      tenant: 'fresh',
      scopes: ['sandboxes:write'],
    });
    const keys = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        p.createKey({ name: `burst-${i}`, tenant: `burst-${i}`, scopes: ['sandboxes:write'] }),
      ),
    );
    // Each key stays within its own burst (20); together they are far over the global one (100).
    const results = await Promise.all(
      keys.flatMap(({ key }) =>
        Array.from({ length: 20 }, () =>
          p.req('POST', '/v1/sandboxes', { key, body: { notAField: true } }),
        ),
      ),
    );
    const limited = results.filter((r) => r.status === 429);
    const served = results.filter((r) => r.status === 400);
    assert.equal(limited.length + served.length, results.length);
    assert.ok(limited.length >= 20, `only ${limited.length} of ${results.length} were limited`);
    for (const r of limited) {
      assert.equal(r.json.code, 'RATE_LIMITED');
      assert.match(r.json.message, /whole server/);
      assert.ok(Number(r.headers.get('retry-after')) >= 1);
    }
    // A key that never sent a create before is limited too: the bucket is not per key or session.
    const freshLimited = (
      await Promise.all(
        Array.from({ length: 15 }, () =>
          p.req('POST', '/v1/sandboxes', { key: fresh.key, body: { notAField: true } }),
        ),
      )
    ).filter((r) => r.status === 429);
    assert.ok(freshLimited.length >= 5, `only ${freshLimited.length} of 15 limited`);
    const first = freshLimited[0]!;
    assert.match(first.json.message, /whole server/);
    // Other categories are separate buckets: reads still work.
    assert.equal((await p.req('GET', '/v1/sandboxes', { key: tenantKey })).status, 200);
    // After the advertised wait, the legitimate create goes through.
    await sleep(Number(first.headers.get('retry-after')) * 1000 + 200);
    const later = await p.req('POST', '/v1/sandboxes', { key: fresh.key, body: {} });
    assert.equal(later.status, 201, later.text);
    await p.req('DELETE', `/v1/sandboxes/${later.json.id}`, { key: fresh.key });
  });
});
