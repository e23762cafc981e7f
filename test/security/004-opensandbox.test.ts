// Attack suite for seed 004 (OpenSandbox review): each finding tried against a real
// `palisade serve` (privilege-separated, as in production) over its real HTTP port.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createSandboxRuntime } from '../../src/sandbox/index.js';
import { buildApp, resolveConfig } from '../../src/server/index.js';
import { openStore } from '../../src/store/index.js';
import { requestFrom, serverEngineConfig, type RawRes } from '../server/helpers.js';
import { execIn, runCli, startPalisade, type Palisade } from './fixture.js';

const ALLOWED_ORIGIN = 'http://app.palisade-h6.test';

// Unauthenticated probes come from their own loopback address each, so the failed-auth
// throttle (10 failures per address per minute) never turns the 401 we assert into a 429.
let nextProbeAddress = 0;
function probeAddress(): string {
  const n = nextProbeAddress++;
  return `127.4.${Math.floor(n / 250) % 250}.${(n % 250) + 2}`;
}

function raw(
  baseUrl: string,
  method: string,
  path: string,
  options: { headers?: Record<string, string>; body?: string; localAddress?: string } = {},
): Promise<RawRes> {
  return requestFrom(baseUrl, options.localAddress ?? probeAddress(), method, path, {
    headers: {
      ...(options.body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...options.headers,
    },
    ...(options.body !== undefined ? { rawBody: options.body } : {}),
  });
}

/** A host TCP listener that counts the connections it receives. */
async function countingListener(): Promise<{ server: Server; port: number; count(): number }> {
  let connections = 0;
  const server = createServer((s) => {
    connections++;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    count: () => connections,
  };
}

interface OpenApiDoc {
  paths: Record<string, Record<string, { security?: unknown[] }>>;
}

describe('004 OpenSandbox findings against a real palisade serve', () => {
  let p: Palisade;
  let sandboxId: string;
  let doc: OpenApiDoc;

  before(async () => {
    p = await startPalisade({ args: ['--cors-origin', ALLOWED_ORIGIN] });
    sandboxId = await p.createSandbox({ labels: { suite: 'h6-004' } });
    const res = await p.req('GET', '/v1/openapi.json', { key: null });
    assert.equal(res.status, 200);
    doc = res.json as OpenApiDoc;
  });

  after(async () => {
    await p?.close();
  });

  /** Every documented operation with its path parameters filled with well-formed values. */
  function operations(): Array<{ method: string; path: string; template: string; open: boolean }> {
    const out: Array<{ method: string; path: string; template: string; open: boolean }> = [];
    for (const [template, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const path = template
          .replace('{id}', sandboxId)
          .replace('{execId}', 'ex-aaaaaaaaaaaaaaaaaaaa')
          .replace('{keyId}', 'aaaaaaaaaaaaaaaa')
          .replace('{killId}', 'kill-aaaaaaaaaaaaaaaaaaaa');
        const open = Array.isArray(op.security) && op.security.length === 0;
        out.push({ method: method.toUpperCase(), path, template, open });
      }
    }
    return out;
  }

  it('004 C-1: serve refuses every request without a key, there is no auth-less mode', async () => {
    const ops = operations();
    assert.ok(ops.length >= 30, `expected the full API, got ${ops.length} operations`);
    // Only liveness and the API description are public; everything else needs a key.
    const publicOps = ops
      .filter((o) => o.open)
      .map((o) => `${o.method} ${o.template}`)
      .sort();
    assert.deepEqual(publicOps, ['GET /healthz', 'GET /v1/openapi.json', 'GET /readyz'].sort());
    const guarded = ops.filter((o) => !o.open);
    const variants: Record<string, string>[] = [
      {},
      { authorization: 'Bearer ' },
      { authorization: 'Basic YTpi' },
    ];
    for (const headers of variants) {
      const answers = await Promise.all(
        guarded.map((op) =>
          raw(p.url, op.method, op.path, {
            headers,
            ...(op.method === 'POST' || op.method === 'PUT' ? { body: '{}' } : {}),
          }),
        ),
      );
      answers.forEach((res, i) => {
        const op = guarded[i]!;
        const what = `${op.method} ${op.template} ${JSON.stringify(headers)}`;
        assert.equal(res.status, 401, what);
        assert.equal(res.json?.code, 'UNAUTHENTICATED', what);
      });
    }
    // There is no flag that turns authentication off.
    const dataDir = mkdtempSync(join(tmpdir(), 'palisade-h6-noauth-'));
    try {
      for (const flag of ['--no-auth']) {
        const r = await runCli(['serve', flag, '--port', '0', '--data-dir', dataDir]);
        assert.equal(r.code, 3, `${flag}: ${r.stdout} ${r.stderr}`);
        assert.match(r.stderr, /Unknown option/);
        assert.doesNotMatch(r.stdout, /listening on/);
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
    // The legitimate path: the admin key printed at first start works.
    const ok = await p.req('GET', `/v1/sandboxes/${sandboxId}`);
    assert.equal(ok.status, 200);
    assert.equal(ok.json.id, sandboxId);
  });

  it("004 C-2: CORS allows only configured exact origins, never with credentials, and '*' is refused at start", async () => {
    const foreign = 'https://evil.example';
    const preflight = await p.req('OPTIONS', '/v1/sandboxes', {
      key: null,
      headers: {
        origin: foreign,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization',
      },
    });
    assert.equal(preflight.headers.get('access-control-allow-origin'), null);
    assert.equal(preflight.headers.get('access-control-allow-credentials'), null);
    assert.equal(preflight.headers.get('access-control-allow-methods'), null);
    const foreignGet = await p.req('GET', '/v1/sandboxes', { headers: { origin: foreign } });
    assert.equal(foreignGet.headers.get('access-control-allow-origin'), null);
    assert.equal(foreignGet.headers.get('access-control-allow-credentials'), null);
    const nullOrigin = await p.req('GET', '/v1/sandboxes', { headers: { origin: 'null' } });
    assert.equal(nullOrigin.headers.get('access-control-allow-origin'), null);
    // The configured origin is allowed, exactly, and still without credentials.
    const allowedPreflight = await p.req('OPTIONS', '/v1/sandboxes', {
      key: null,
      headers: { origin: ALLOWED_ORIGIN, 'access-control-request-method': 'POST' },
    });
    assert.equal(allowedPreflight.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
    assert.equal(allowedPreflight.headers.get('access-control-allow-credentials'), null);
    const allowed = await p.req('GET', '/v1/sandboxes', { headers: { origin: ALLOWED_ORIGIN } });
    assert.equal(allowed.status, 200);
    assert.equal(allowed.headers.get('access-control-allow-origin'), ALLOWED_ORIGIN);
    assert.equal(allowed.headers.get('access-control-allow-credentials'), null);
    // A wildcard origin is a configuration error, refused before anything listens.
    const dataDir = mkdtempSync(join(tmpdir(), 'palisade-h6-cors-'));
    try {
      const r = await runCli(['serve', '--cors-origin', '*', '--port', '0', '--data-dir', dataDir]);
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /'\*' is never allowed/);
      assert.doesNotMatch(r.stdout, /listening on|Admin API key/);
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('004 H-1: there is no proxy route into sandbox ports, and every /v1/sandboxes/{id}/… route refuses a missing key', async () => {
    const sandboxOps = operations().filter((o) => o.template.startsWith('/v1/sandboxes/{id}'));
    assert.ok(sandboxOps.length >= 20, `only ${sandboxOps.length} sandbox routes documented`);
    for (const op of sandboxOps) {
      assert.equal(op.open, false, `${op.method} ${op.template} is documented as public`);
      const res = await raw(p.url, op.method, op.path, {
        ...(op.method === 'POST' || op.method === 'PUT' ? { body: '{}' } : {}),
      });
      assert.equal(res.status, 401, `${op.method} ${op.template}`);
      assert.equal(res.json?.code, 'UNAUTHENTICATED');
    }
    // No route forwards traffic into a sandbox: not documented, and not served even with a key.
    for (const template of Object.keys(doc.paths)) {
      assert.doesNotMatch(template, /proxy|port|forward|tunnel|ingress/i);
    }
    for (const path of [
      `/v1/sandboxes/${sandboxId}/proxy/8080/`,
      `/v1/sandboxes/${sandboxId}/ports/8080`,
      `/sandboxes/${sandboxId}/proxy/8080/`,
      `/v1/sandboxes/${sandboxId}/forward?port=22`,
    ]) {
      for (const key of [p.adminKey, null]) {
        const res = await p.req('GET', path, { key });
        assert.equal(res.status, 404, `${path} (${key ? 'admin' : 'no key'})`);
        assert.equal(res.json.code, 'NOT_FOUND');
      }
    }
    // The legitimate way in is an authenticated exec.
    const ran = await execIn(p, sandboxId, 'echo inside');
    assert.equal(ran.status, 200);
    assert.equal(ran.json.stdout, 'inside\n');
  });

  it('004 H-1: a route that declares no access cannot be registered, so none can skip authentication', async () => {
    // The auth hook lets requests to routes without an access declaration through (that is
    // how unknown paths reach the 404 handler), so the guard sits at registration.
    const dir = mkdtempSync(join(tmpdir(), 'palisade-h6-routes-'));
    chmodSync(dir, 0o711);
    const engine = await createSandboxRuntime(serverEngineConfig(dir));
    const store = await openStore({ dataDir: dir });
    try {
      const app = buildApp({
        config: resolveConfig({ dataDir: dir, port: 0, logLevel: 'silent' }),
        store,
        runtime: engine,
      });
      assert.throws(
        () => app.fastify.get('/v1/sandboxes/:id/proxy/*', async () => ({ proxied: true })),
        /declares no access/,
      );
      // A route that declares its access registers and is authenticated like every other.
      app.fastify.get(
        '/v1/h6-declared',
        { config: { access: { scope: 'admin', category: 'read', summary: 'test route' } } },
        async () => ({ ok: true }),
      );
      const anonymous = await app.fastify.inject({ method: 'GET', url: '/v1/h6-declared' });
      assert.equal(anonymous.statusCode, 401);
      const proxied = await app.fastify.inject({ method: 'GET', url: '/v1/sandboxes/x/proxy/80' });
      assert.equal(proxied.statusCode, 404);
      await app.fastify.close();
    } finally {
      await store.close();
      await engine.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('004 H-2: a near-miss key fails exactly like garbage, and nothing in the sandbox listens for a token', async () => {
    const m = /^psk_([a-z2-7]{16})_([A-Za-z0-9_-]{43})$/.exec(p.adminKey);
    assert.ok(m, 'admin key shape');
    const [, id, secret] = m as unknown as [string, string, string];
    const flip = (s: string) => s.slice(0, -1) + (s.endsWith('A') ? 'B' : 'A');
    const attempts = [
      `psk_${id}_${flip(secret)}`, // right id, right length, one character off
      `psk_${id}_${secret.slice(0, 20)}`, // right id, wrong length
      `psk_${'a'.repeat(16)}_${secret}`, // unknown id, the real secret
      'garbage',
    ];
    const answers = new Set<string>();
    for (const key of attempts) {
      const res = await raw(p.url, 'GET', '/v1/sandboxes', {
        headers: { authorization: `Bearer ${key}` },
      });
      assert.equal(res.status, 401, key);
      answers.add(`${res.json.code}|${res.json.message}`);
      assert.doesNotMatch(res.text, new RegExp(id));
    }
    assert.equal(answers.size, 1, `different answers: ${[...answers].join(' / ')}`);
    // OpenSandbox's execd listened in the sandbox and compared a token; Palisade's in-sandbox
    // agent talks to the engine over an inherited pipe: there is no listening socket at all.
    const sockets = await execIn(
      p,
      sandboxId,
      'cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6; echo ---; cat /proc/net/unix',
    );
    assert.equal(sockets.status, 200);
    const [inet, unix] = (sockets.json.stdout as string).split('---\n') as [string, string];
    const rows = inet.split('\n').filter((l) => /^\s*\d+:/.test(l));
    assert.deepEqual(rows, [], 'a socket exists inside the sandbox');
    assert.deepEqual(unix.trim().split('\n').slice(1), [], 'a unix socket exists inside');
    const ok = await p.req('GET', '/v1/sandboxes');
    assert.equal(ok.status, 200);
  });

  it('004 H-3: the files API reaches only the sandbox’s own files, as the sandbox user', async () => {
    const hostDir = mkdtempSync(join(tmpdir(), 'palisade-h6-canary-'));
    const canary = join(hostDir, 'canary.txt');
    writeFileSync(canary, 'host secret');
    try {
      const files = (path: string) =>
        `/v1/sandboxes/${sandboxId}/files?path=${encodeURIComponent(path)}`;
      for (const path of ['/etc/shadow', '../../../../etc/shadow', '/root/.ssh/id_rsa', canary]) {
        const res = await p.req('GET', files(path));
        assert.equal(res.status, 404, `${path}: ${res.text}`);
        assert.doesNotMatch(res.text, /host secret|root:/);
      }
      const del = await p.req('DELETE', files(canary));
      assert.equal(del.status, 404);
      assert.equal(readFileSync(canary, 'utf8'), 'host secret');
      // System directories are read-only for the API as for the sandbox user.
      const sys = await p.req('PUT', files('/usr/bin/evil'), {
        rawBody: 'x',
        headers: { 'content-type': 'application/octet-stream' },
      });
      assert.equal(sys.status, 403, sys.text);
      const up = await p.req('PUT', files('../../../../tmp/escape.txt'), {
        rawBody: 'x',
        headers: { 'content-type': 'application/octet-stream' },
      });
      assert.ok(up.status < 300, up.text);
      assert.equal(existsSync('/tmp/escape.txt'), false, 'the write escaped to the host /tmp');
      // The legitimate path: write and read in the workspace; the file belongs to the sandbox
      // user inside and to the sandbox's unprivileged uid on the host, never root.
      const put = await p.req('PUT', files('/workspace/h3.txt'), {
        rawBody: 'mine',
        headers: { 'content-type': 'application/octet-stream' },
      });
      assert.ok(put.status < 300, put.text);
      const get = await p.req('GET', files('/workspace/h3.txt'));
      assert.equal(get.status, 200);
      assert.equal(get.text, 'mine');
      const owner = await execIn(p, sandboxId, 'stat -c %u /workspace/h3.txt /tmp/escape.txt');
      assert.equal(owner.json.stdout, '1000\n1000\n');
      // Moves cannot reach out either: onto a host path or into a system directory.
      const moveOut = await p.req('POST', `/v1/sandboxes/${sandboxId}/files/move`, {
        body: { from: '/workspace/h3.txt', to: canary, overwrite: true },
      });
      assert.ok(moveOut.status >= 400 && moveOut.status < 500, moveOut.text);
      const moveSys = await p.req('POST', `/v1/sandboxes/${sandboxId}/files/move`, {
        body: { from: '/workspace/h3.txt', to: '/usr/bin/h3' },
      });
      assert.ok(moveSys.status >= 400 && moveSys.status < 500, moveSys.text);
      assert.equal(readFileSync(canary, 'utf8'), 'host secret');
      assert.equal(existsSync('/usr/bin/h3'), false);
      // On the host the workspace file belongs to the sandbox's own unprivileged uid.
      const hostFile = join(
        p.dataDir,
        'engine',
        'workspaces',
        'mnt',
        sandboxId,
        'workspace',
        'h3.txt',
      );
      assert.ok(existsSync(hostFile), 'workspace layout changed; update the test');
      const uid = statSync(hostFile).uid;
      assert.ok(uid >= p.uidRange.start && uid < p.uidRange.start + p.uidRange.count, `${uid}`);
    } finally {
      rmSync(hostDir, { recursive: true, force: true });
    }
  });

  it('004 M-1: ids and label selectors from the URL are validated before any lookup', async () => {
    for (const bad of [
      "sb-aaaa'or'1'='1",
      'sb-AAAAAAAAAAAAAAAAAAAA',
      '..%2f..%2fetc',
      'sb-aaaaaaaaaaaaaaaaaaaa%00',
      `${sandboxId}x`,
    ]) {
      const res = await p.req('GET', `/v1/sandboxes/${encodeURIComponent(bad)}`);
      assert.equal(res.status, 400, `${bad}: ${res.status} ${res.text}`);
      assert.equal(res.json.code, 'INVALID_ARGUMENT');
      const exec = await p.req('POST', `/v1/sandboxes/${encodeURIComponent(bad)}/exec`, {
        body: { command: 'true' },
      });
      assert.equal(exec.status, 400, bad);
    }
    for (const selector of [
      "suite=h6-004' OR '1'='1",
      'suite=h6-004)|(a=*',
      'suite in (a,b)',
      'suite=h6-004;drop',
      'a'.repeat(300),
    ]) {
      const res = await p.req('GET', `/v1/sandboxes?labelSelector=${encodeURIComponent(selector)}`);
      assert.equal(res.status, 400, `${selector}: ${res.text}`);
      const kill = await p.req('POST', '/v1/kill', { body: { labels: selector } });
      assert.equal(kill.status, 400, `kill ${selector}: ${kill.text}`);
    }
    // Our sandbox is still alive (no kill matched it) and a well-formed selector finds exactly it.
    const good = await p.req(
      'GET',
      `/v1/sandboxes?labelSelector=${encodeURIComponent('suite=h6-004')}`,
    );
    assert.equal(good.status, 200);
    const ids = (good.json.items as Array<{ id: string; state: string }>).map((s) => s.id);
    assert.ok(ids.includes(sandboxId), JSON.stringify(good.json));
    const kills = await p.req('GET', '/v1/kill');
    assert.equal(kills.status, 200);
    assert.equal(JSON.stringify(kills.json).includes('h6-004'), false);
  });

  it('004 M-2: env names with = or newlines, NUL values and loader variables are refused; values cannot inject variables', async () => {
    for (const env of [
      { 'A=B': 'x' },
      { 'A\nB': 'x' },
      { '': 'x' },
      { GOOD: 'a\u0000b' },
      { GOOD: 'v\nINJECTED=1' },
      { LD_PRELOAD: '/tmp/x.so' },
      { BASH_ENV: '/tmp/x' },
    ]) {
      const exec = await p.req('POST', `/v1/sandboxes/${sandboxId}/exec`, {
        body: { command: 'true', env },
      });
      assert.equal(exec.status, 400, `${JSON.stringify(env)}: ${exec.text}`);
      assert.match(exec.json.code, /^INVALID_(ENV|ARGUMENT)$/);
      const create = await p.req('POST', '/v1/sandboxes', { body: { env } });
      assert.equal(create.status, 400, `create ${JSON.stringify(env)}: ${create.text}`);
    }
    // The legitimate path: a clean variable reaches the command, and nothing else was injected.
    const res = await p.req('POST', `/v1/sandboxes/${sandboxId}/exec`, {
      body: {
        command: 'printf "%s|" "$GOOD"; printenv INJECTED || echo no-injected',
        env: { GOOD: 'v=1 x' },
      },
    });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.stdout, 'v=1 x|no-injected\n');
  });

  it('004 M-3: a body over the limit is 413 before it is parsed; one under it works', async () => {
    const big = 'x'.repeat(1024 * 1024 + 10);
    const refused = await p.req('POST', `/v1/sandboxes/${sandboxId}/exec`, {
      body: { command: 'wc -c', stdin: big },
    });
    assert.equal(refused.status, 413);
    assert.equal(refused.json.code, 'PAYLOAD_TOO_LARGE');
    const refusedCreate = await p.req('POST', '/v1/sandboxes', {
      rawBody: `{"labels":{"a":"${big}"}}`,
      headers: { 'content-type': 'application/json' },
    });
    assert.equal(refusedCreate.status, 413);
    const ok = await p.req('POST', `/v1/sandboxes/${sandboxId}/exec`, {
      body: { command: 'wc -c', stdin: 'y'.repeat(512 * 1024) },
    });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.stdout.trim(), String(512 * 1024));
  });

  it('004 M-4: a burst from one key is rate-limited with Retry-After while other keys keep working', async () => {
    const { key } = await p.createKey({ name: 'h6-burst', scopes: ['sandboxes:read'] });
    let limited: { status: number; headers: Headers; json: any } | undefined; // eslint-disable-line @typescript-eslint/no-explicit-any
    let sent = 0;
    while (!limited && sent < 3000) {
      const batch = await Promise.all(
        Array.from({ length: 50 }, () => p.req('GET', '/v1/sandboxes?limit=1', { key })),
      );
      sent += batch.length;
      for (const r of batch) assert.ok(r.status === 200 || r.status === 429, `${r.status}`);
      limited = batch.find((r) => r.status === 429);
    }
    assert.ok(limited, `no 429 after ${sent} requests`);
    assert.equal(limited.json.code, 'RATE_LIMITED');
    assert.match(limited.headers.get('retry-after') ?? '', /^\d+$/);
    assert.ok(sent > 100, 'the limit must not bite ordinary use');
    // Another key (the admin's) is not affected by this key's bucket.
    const other = await p.req('GET', '/v1/sandboxes?limit=1');
    assert.equal(other.status, 200);
  });

  it('004 M-5: there is no image URI to probe registries with; sandboxes come only from the host’s fixed root', async () => {
    const registry = await countingListener();
    try {
      const target = `127.0.0.1:${registry.port}`;
      for (const body of [
        { image: `${target}/library/busybox:latest` },
        { imageUri: `http://${target}/v2/` },
        { template: `http://${target}/t` },
        { image: { uri: `${target}/x`, auth: { username: 'a', password: 'b' } } },
      ]) {
        const res = await p.req('POST', '/v1/sandboxes', { body });
        assert.equal(res.status, 400, `${JSON.stringify(body)}: ${res.text}`);
        assert.equal(res.json.code, 'INVALID_ARGUMENT');
        assert.doesNotMatch(res.text, new RegExp(String(registry.port)));
      }
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(registry.count(), 0, 'the server connected to the "registry"');
      const create = p.req('POST', '/v1/sandboxes', { body: { labels: { probe: 'none' } } });
      const created = await create;
      assert.equal(created.status, 201);
      const os = await execIn(p, created.json.id as string, 'test -x /usr/bin/python3 && echo ok');
      assert.equal(os.json.stdout, 'ok\n');
      await p.req('DELETE', `/v1/sandboxes/${created.json.id as string}?purge=true`);
    } finally {
      registry.server.close();
    }
  });

  let portSandbox = '';
  let port = 0;
  let hostListener: Awaited<ReturnType<typeof countingListener>> | undefined;

  it('004 M-6: a sandbox’s listening port is in its own namespace: no host port is allocated, two sandboxes use the same port', async () => {
    // The test itself holds the port on the host: a sandbox binding it proves no host allocation.
    hostListener = await countingListener();
    port = hostListener.port;
    portSandbox = await p.createSandbox({ labels: { suite: 'h6-ports' } });
    const serve = (who: string) =>
      `mkdir -p /tmp/www && echo ${who} > /tmp/www/who && cd /tmp/www && ` +
      `python3 -m http.server ${port} --bind 127.0.0.1 >/dev/null 2>&1 &`;
    const fetchOwn = `for i in $(seq 50); do curl -s --max-time 1 http://127.0.0.1:${port}/who && break; sleep 0.1; done`;
    const a = await p.req('POST', `/v1/sandboxes/${portSandbox}/exec`, {
      body: { command: `${serve('A').replace(/&$/, '')}`, background: true, timeoutMs: 120_000 },
    });
    assert.equal(a.status, 202, a.text);
    const b = await execIn(p, sandboxId, `${serve('B')} ${fetchOwn}`);
    assert.equal(b.status, 200, b.text);
    assert.equal(b.json.stdout, 'B\n', b.json.stderr);
    const fromA = await execIn(p, portSandbox, fetchOwn);
    assert.equal(fromA.json.stdout, 'A\n', fromA.json.stderr);
    assert.equal(hostListener.count(), 0, 'a sandbox reached the host port');
    // From the host, the port is ours, not a sandbox's.
    const res = await fetch(`http://127.0.0.1:${port}/who`).catch((e: Error) => e);
    assert.ok(res instanceof Error);
    assert.equal(hostListener.count(), 1);
  });

  it('004 D-1: agents have no implicit channel: one sandbox cannot reach a port another sandbox listens on', async () => {
    assert.ok(portSandbox && hostListener, 'runs after the M-6 test');
    // A (portSandbox) still serves on `port`; B's 127.0.0.1 is its own, and B has no other
    // interface through which it could reach A.
    const killB = await execIn(p, sandboxId, 'pkill -f http.server; sleep 0.2; echo done');
    assert.equal(killB.status, 200);
    const probe = await execIn(
      p,
      sandboxId,
      `curl -s --max-time 2 http://127.0.0.1:${port}/who; echo "exit=$?"; tail -n +3 /proc/net/dev | cut -d: -f1`,
    );
    assert.match(probe.json.stdout, /exit=[1-9]/);
    assert.doesNotMatch(probe.json.stdout, /^A$/m);
    assert.equal(
      probe.json.stdout
        .split('\n')
        .slice(1)
        .map((l: string) => l.trim())
        .filter(Boolean)
        .join(','),
      'lo',
    );
    const stillServing = await execIn(
      p,
      portSandbox,
      `curl -s --max-time 2 http://127.0.0.1:${port}/who`,
    );
    assert.equal(stillServing.json.stdout, 'A\n');
    await p.req('DELETE', `/v1/sandboxes/${portSandbox}?purge=true`);
    hostListener.server.close();
  });

  it('004 D-2: every connection through the egress gateway is recorded with sandbox, destination, decision and bytes', async () => {
    let served = 0;
    const upstream = createServer((s) => {
      served++;
      s.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok');
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const upstreamPort = (upstream.address() as AddressInfo).port;
    try {
      // Loopback is a special address: only an explicit IP rule allows it (the legitimate path
      // here, so the test's traffic stays on this host). 10.1.2.3 matches no rule: it is refused
      // before any connection is attempted.
      const id = await p.createSandbox({
        labels: { suite: 'h6-egress' },
        policy: { network: { allow: [`127.0.0.1:${upstreamPort}`] } },
      });
      const ran = await execIn(
        p,
        id,
        `curl --noproxy '' -s -m 5 -o /dev/null -w '%{http_code} ' http://127.0.0.1:${upstreamPort}/allowed; ` +
          `curl -s -m 5 -o /dev/null -w '%{http_code}' http://10.1.2.3:${upstreamPort}/denied`,
      );
      assert.equal(ran.status, 200, ran.text);
      assert.equal(ran.json.stdout, '200 403');
      assert.equal(served, 1);
      let records: Array<{ type: string; sandboxId: string; tenant: string; data: any }> = []; // eslint-disable-line @typescript-eslint/no-explicit-any
      for (let i = 0; i < 50 && records.length < 2; i++) {
        const audit = await p.req('GET', `/v1/audit?sandboxId=${id}&limit=100`);
        records = (audit.json.items as typeof records).filter((r) => r.type.startsWith('egress.'));
        if (records.length < 2) await new Promise((r) => setTimeout(r, 100));
      }
      const allow = records.find((r) => r.type === 'egress.allow');
      const deny = records.find((r) => r.type === 'egress.deny');
      assert.ok(allow && deny, JSON.stringify(records));
      assert.equal(allow.sandboxId, id);
      assert.equal(allow.tenant, 'default');
      assert.equal(allow.data.host, '127.0.0.1');
      assert.equal(allow.data.port, upstreamPort);
      assert.equal(allow.data.rule, `127.0.0.1:${upstreamPort}`);
      assert.ok(allow.data.bytesIn > 0 && allow.data.bytesOut > 0);
      assert.equal(deny.data.host, '10.1.2.3');
      assert.equal(deny.data.address, null);
      assert.match(deny.data.reason, /no allow rule matches/);
      await p.req('DELETE', `/v1/sandboxes/${id}?purge=true`);
    } finally {
      upstream.close();
    }
  });

  it('004 L-1: error responses carry a code, a message and a request id, never stack frames, paths or driver text', async () => {
    const probes: Array<[string, () => Promise<Awaited<ReturnType<Palisade['req']>>>]> = [
      [
        'truncated JSON',
        () =>
          p.req('POST', '/v1/sandboxes', {
            rawBody: '{"labels": {',
            headers: { 'content-type': 'application/json' },
          }),
      ],
      [
        'foreign content type',
        () =>
          p.req('POST', '/v1/sandboxes', { rawBody: 'x', headers: { 'content-type': 'text/xml' } }),
      ],
      ['missing sandbox', () => p.req('GET', '/v1/sandboxes/sb-aaaaaaaaaaaaaaaaaaaa')],
      ['broken percent-encoding', () => p.req('GET', '/v1/sandboxes/%E0%A4%A')],
      [
        'missing file',
        () =>
          p.req('GET', `/v1/sandboxes/${sandboxId}/files?path=${encodeURIComponent('/nope/x')}`),
      ],
      [
        'missing exec',
        () => p.req('GET', `/v1/sandboxes/${sandboxId}/execs/ex-aaaaaaaaaaaaaaaaaaaa`),
      ],
      [
        'cwd escape',
        () =>
          p.req('POST', `/v1/sandboxes/${sandboxId}/exec`, {
            body: { command: 'true', cwd: '/../..' },
          }),
      ],
      ['bad query', () => p.req('GET', '/v1/audit?limit=-1')],
      ['missing key id', () => p.req('DELETE', '/v1/keys/aaaaaaaaaaaaaaaa')],
      ['unknown route', () => p.req('GET', '/v1/nothing-here')],
    ];
    for (const [what, send] of probes) {
      const res = await send();
      assert.ok(res.status >= 400 && res.status < 500, `${what}: ${res.status} ${res.text}`);
      assert.deepEqual(
        Object.keys(res.json as object)
          .filter((k) => k !== 'details')
          .sort(),
        ['code', 'message', 'requestId'],
        `${what}: ${res.text}`,
      );
      assert.equal(res.json.requestId, res.headers.get('x-request-id'), what);
      assert.doesNotMatch(
        res.text,
        /\/work\/|node_modules|\.ts:\d|\bat [\w.<>]+ \(|SQLITE|sqlite|Kysely|ajv|TypeError|\/tmp\/palisade|engine\//,
        `${what}: ${res.text}`,
      );
    }
  });

  it('004 L-2: a newline in a label, command or URL does not forge a log or audit line', async () => {
    const marker = `FORGED${randomBytes(6).toString('hex')}`;
    const forged = `{"level":50,"msg":"${marker}"}`;
    const label = await p.req('POST', '/v1/sandboxes', {
      body: { labels: { team: `a\n${forged}` } },
    });
    assert.equal(label.status, 400);
    const url = await p.req('GET', `/v1/sandboxes/x${encodeURIComponent(`\n${forged}\r\n`)}`);
    assert.equal(url.status, 400);
    const command = `echo one\n${forged}\necho two`;
    const ran = await execIn(p, sandboxId, command);
    assert.equal(ran.status, 200);
    await new Promise((r) => setTimeout(r, 300));
    // Server log: the marker was logged (in the URL), but only inside a JSON string.
    const lines = p.output().stderr.split('\n');
    const withMarker = lines.filter((l) => l.includes(marker));
    assert.ok(withMarker.length > 0, 'the probe never reached the log, so the test proves nothing');
    for (const line of withMarker) {
      const entry = JSON.parse(line) as { msg?: string; level?: number };
      assert.notEqual(entry.msg, marker);
    }
    for (const line of lines.filter((l) => l.startsWith('{'))) JSON.parse(line);
    // Audit log: the command is one field of one record, byte for byte.
    const audit = await p.req('GET', `/v1/audit?sandboxId=${sandboxId}&type=exec.start&limit=500`);
    assert.equal(audit.status, 200, audit.text);
    const items = audit.json.items as Array<{ type: string; data: { command?: string } }>;
    assert.ok(items.some((i) => i.type === 'exec.start' && i.data.command === command));
    const exported = await runCli(['audit', 'export', '--data-dir', p.dataDir]);
    assert.equal(exported.code, 0, exported.stderr);
    const records = exported.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { data: unknown });
    assert.ok(records.some((r) => JSON.stringify(r.data).includes(marker)));
    assert.ok(records.every((r) => typeof r === 'object' && r !== null && !('msg' in r)));
  });

  it('004 L-3: a hostile file name is quoted and encoded in Content-Disposition', async () => {
    const name = 'a";b=c;\r\nX-Injected: 1%.sh';
    const put = await p.req(
      'PUT',
      `/v1/sandboxes/${sandboxId}/files?path=${encodeURIComponent(`/workspace/${name}`)}`,
      { rawBody: 'payload', headers: { 'content-type': 'application/octet-stream' } },
    );
    assert.ok(put.status < 300, put.text);
    const listed = await execIn(p, sandboxId, 'ls /workspace | grep -c "X-Injected"');
    assert.equal(listed.json.stdout, '1\n');
    const res = await p.req(
      'GET',
      `/v1/sandboxes/${sandboxId}/files?path=${encodeURIComponent(`/workspace/${name}`)}`,
    );
    assert.equal(res.status, 200, res.text);
    assert.equal(res.text, 'payload');
    assert.equal(res.headers.get('x-injected'), null);
    const cd = res.headers.get('content-disposition') ?? '';
    assert.match(
      cd,
      /^attachment; filename="[^"\\;%\r\n]*"; filename\*=UTF-8''[A-Za-z0-9%!#$&+.^_`|~-]+$/,
    );
    const encoded = /filename\*=UTF-8''(.+)$/.exec(cd)?.[1] ?? '';
    assert.equal(decodeURIComponent(encoded), name);
    assert.equal(res.headers.get('content-type'), 'application/octet-stream');
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
  });

  it('004 D-3: kill by label destroys matching sandboxes and blocks new ones until released; only admins may', async () => {
    const victim = await p.createSandbox({ labels: { fleet: 'h6-rogue' } });
    const { key: tenantKey } = await p.createKey({
      name: 'h6-tenant',
      scopes: ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'],
    });
    const denied = await p.req('POST', '/v1/kill', {
      key: tenantKey,
      body: { labels: 'fleet=h6-rogue' },
    });
    assert.equal(denied.status, 403);
    const kill = await p.req('POST', '/v1/kill', {
      body: { labels: 'fleet=h6-rogue', reason: 'h6 attack test' },
    });
    assert.equal(kill.status, 201, kill.text);
    assert.deepEqual(kill.json.killed, [victim]);
    const gone = await p.req('GET', `/v1/sandboxes/${victim}`);
    assert.notEqual(gone.json.state, 'running');
    const again = await p.req('POST', '/v1/sandboxes', { body: { labels: { fleet: 'h6-rogue' } } });
    assert.equal(again.status, 403);
    assert.equal(again.json.code, 'KILL_SWITCH_ACTIVE');
    // Everything else keeps working.
    const bystander = await execIn(p, sandboxId, 'echo alive');
    assert.equal(bystander.json.stdout, 'alive\n');
    const release = await p.req('DELETE', `/v1/kill/${kill.json.id as string}`);
    assert.ok(release.status < 300, release.text);
    const back = await p.req('POST', '/v1/sandboxes', { body: { labels: { fleet: 'h6-rogue' } } });
    assert.equal(back.status, 201);
    await p.req('DELETE', `/v1/sandboxes/${back.json.id as string}?purge=true`);
  });

  it('004 D-4: every action is one structured record in a hash chain that verifies', async () => {
    const failed = await raw(p.url, 'GET', '/v1/sandboxes', {
      headers: { authorization: 'Bearer nope' },
    });
    assert.equal(failed.status, 401);
    for (const type of [
      'key.create',
      'sandbox.create',
      'exec.start',
      'auth.failure',
      'kill.engage',
    ]) {
      const res = await p.req('GET', `/v1/audit?type=${type}&limit=5`);
      assert.equal(res.status, 200, res.text);
      const items = res.json.items as Array<Record<string, unknown>>;
      assert.ok(items.length > 0, `no ${type} record`);
      for (const item of items) {
        assert.equal(item.type, type);
        assert.deepEqual(Object.keys(item).sort(), [
          'actor',
          'data',
          'hash',
          'prevHash',
          'sandboxId',
          'seq',
          'tenant',
          'ts',
          'type',
        ]);
        assert.match(String(item.hash), /^[0-9a-f]{64}$/);
      }
    }
    const verify = await p.req('GET', '/v1/audit/verify');
    assert.equal(verify.status, 200, verify.text);
    assert.equal(verify.json.ok, true);
  });
});
