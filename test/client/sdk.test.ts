import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  AbortError,
  AuthenticationError,
  ConflictError,
  InvalidArgumentError,
  InvalidRequestError,
  NotFoundError,
  PalisadeApiError,
  PalisadeClient,
  PermissionDeniedError,
  PolicyDeniedError,
  Sandbox,
  TimeoutError,
} from '../../src/client/index.js';
import { startTestServer, type TestServer } from '../server/helpers.js';

const MiB = 1024 * 1024;

describe('SDK against a real server and engine', () => {
  let s: TestServer;
  let client: PalisadeClient;
  let shared: Sandbox;

  before(async () => {
    s = await startTestServer({
      config: { quotas: { maxLiveSandboxes: 8 } },
      // No test here sends traffic through the gateway; refuse any upstream connect anyway.
      egress: { connectGuard: () => false },
    });
    client = new PalisadeClient({ baseUrl: s.url, apiKey: s.adminKey });
    shared = await Sandbox.create({ labels: { suite: 'shared' } }, client);
  });
  after(async () => {
    await s.close();
  });

  it('create, connect, list, getInfo, setTimeout, pause, resume and kill', async () => {
    const a = await Sandbox.create(
      {
        labels: { suite: 'life', n: '1' },
        env: { GREETING: 'hi' },
        limits: { memoryBytes: 256 * MiB, cpus: 0.5 },
        timeoutMs: 600_000,
      },
      client,
    );
    assert.match(a.id, /^sb-[a-z2-7]{20}$/);
    assert.equal(a.info?.state, 'running');
    assert.deepEqual(a.info?.labels, { suite: 'life', n: '1' });
    assert.equal(a.info?.limits.memoryBytes, 256 * MiB);
    assert.equal((await a.commands.run('echo $GREETING')).stdout, 'hi\n');

    // Connect with plain options (a new client) rather than the shared one.
    const again = await Sandbox.connect(a.id, { baseUrl: s.url, apiKey: s.adminKey });
    assert.equal(again.id, a.id);
    assert.deepEqual(again.info?.labels, a.info?.labels);

    const b = await client.createSandbox({ labels: { suite: 'life', n: '2' } });
    const both = await Sandbox.list({ labels: { suite: 'life' } }, client);
    assert.deepEqual(both.items.map((i) => i.id).sort(), [a.id, b.id].sort());
    const onlyB = await client.listSandboxes({ labels: { suite: 'life', n: '2' } });
    assert.deepEqual(
      onlyB.items.map((i) => i.id),
      [b.id],
    );
    const page1 = await client.listSandboxes({ labels: { suite: 'life' }, limit: 1 });
    assert.equal(page1.items.length, 1);
    assert.ok(page1.nextCursor);
    const page2 = await client.listSandboxes({
      labels: { suite: 'life' },
      limit: 1,
      cursor: page1.nextCursor,
    });
    assert.equal(page2.items.length, 1);
    assert.notEqual(page2.items[0]!.id, page1.items[0]!.id);
    const all: string[] = [];
    for await (const info of client.iterateSandboxes({ labelSelector: 'suite=life', limit: 1 }))
      all.push(info.id);
    assert.deepEqual(all.sort(), [a.id, b.id].sort());

    const before = Date.now();
    const renewed = await a.setTimeout(120_000);
    const expires = Date.parse(renewed.expiresAt ?? '');
    assert.ok(Math.abs(expires - (before + 120_000)) < 10_000, renewed.expiresAt ?? 'null');

    assert.equal((await a.pause()).state, 'paused');
    assert.equal((await a.getInfo()).state, 'paused');
    const paused = await client.listSandboxes({ state: 'paused', labels: { suite: 'life' } });
    assert.deepEqual(
      paused.items.map((i) => i.id),
      [a.id],
    );
    assert.equal((await a.resume()).state, 'running');
    assert.equal((await a.commands.run(['echo', 'back'])).stdout, 'back\n');

    await a.kill();
    assert.equal(a.info?.state, 'terminated');
    assert.equal((await a.getInfo()).state, 'terminated');
    await assert.rejects(a.commands.run('true'), (err: unknown) => {
      assert.ok(err instanceof ConflictError);
      assert.equal(err.code, 'SANDBOX_NOT_RUNNING');
      return true;
    });

    await b.kill({ purge: true });
    await assert.rejects(Sandbox.connect(b.id, client), NotFoundError);
  });

  it('reads PALISADE_URL / PALISADE_API_KEY by default and validates its options', async () => {
    const fromEnv = new PalisadeClient({
      env: { PALISADE_URL: `${s.url}/`, PALISADE_API_KEY: s.adminKey },
    });
    assert.equal(fromEnv.baseUrl, s.url);
    assert.equal((await fromEnv.whoami()).tenant, 'default');
    assert.throws(() => new PalisadeClient({ env: {} }), InvalidArgumentError);
    assert.throws(
      () => new PalisadeClient({ baseUrl: 'http://10.1.2.3:7070', apiKey: 'psk_x' }),
      /clear text/,
    );
    assert.ok(new PalisadeClient({ baseUrl: 'https://10.1.2.3', apiKey: 'psk_x', env: {} }));
    assert.throws(
      () => new PalisadeClient({ baseUrl: 'http://u:p@127.0.0.1:1', apiKey: 'k' }),
      InvalidArgumentError,
    );
    assert.throws(() => client.sandbox('not-an-id'), InvalidArgumentError);
  });

  it('client.request reaches other routes with the same auth and typed errors', async () => {
    const who = await client.request<{ tenant: string }>({ method: 'GET', path: '/v1/whoami' });
    assert.equal(who.tenant, 'default');
    const audit = await client.request<{ items: unknown[] }>({
      method: 'GET',
      path: '/v1/audit',
      query: { type: 'sandbox.create', limit: 1 },
    });
    assert.equal(audit.items.length, 1);
    await assert.rejects(client.request({ method: 'GET', path: '/v1/nope' }), NotFoundError);
    await assert.rejects(
      client.request({ method: 'GET', path: 'http://elsewhere/v1/x' }),
      InvalidArgumentError,
    );
    await assert.rejects(
      client.request({ method: 'GET', path: '/v1/audit?limit=1' }),
      InvalidArgumentError,
    );
  });

  it('commands.run: shell string and argv, cwd, env, stdin, exit status, exact bytes', async () => {
    const sh = await shared.commands.run('echo out; echo err >&2; exit 3');
    assert.equal(sh.exitCode, 3);
    assert.equal(sh.stdout, 'out\n');
    assert.equal(sh.stderr, 'err\n');
    assert.match(sh.execId, /^ex-/);
    assert.equal(sh.timedOut, false);
    const argv = await shared.commands.run(['printf', '%s|', 'a b', '$(id)']);
    assert.equal(argv.stdout, 'a b|$(id)|');
    const ctx = await shared.commands.run('pwd; echo "$X"; cat', {
      cwd: '/tmp',
      env: { X: 'x-value' },
      stdin: 'from stdin',
    });
    assert.equal(ctx.stdout, '/tmp\nx-value\nfrom stdin');
    const bin = await shared.commands.run("printf '\\377\\000\\376'");
    assert.deepEqual([...bin.stdoutBytes], [0xff, 0x00, 0xfe]);
    const timed = await shared.commands.run('sleep 5', { timeoutMs: 300 });
    assert.equal(timed.timedOut, true);
    const capped = await shared.commands.run('head -c 5000 /dev/zero', { maxOutputBytes: 100 });
    assert.equal(capped.stdoutBytes.byteLength, 100);
    assert.equal(capped.stdoutTruncated, true);
  });

  it('streaming callbacks receive all output in order, identical to the JSON result', async () => {
    const command =
      'for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; sleep 0.05; done; printf "\\303\\251\\377"; exit 2';
    const json = await shared.commands.run(command);
    const events: string[] = [];
    const outBytes: Uint8Array[] = [];
    let outText = '';
    let errText = '';
    const streamed = await shared.commands.run(command, {
      onStdout: (text, bytes) => {
        outText += text;
        outBytes.push(bytes);
        if (text.length > 0) events.push(`stdout:${text}`);
      },
      onStderr: (text) => {
        errText += text;
      },
    });
    assert.equal(streamed.exitCode, 2);
    assert.equal(json.exitCode, 2);
    assert.deepEqual(Buffer.concat(outBytes), Buffer.from(json.stdoutBytes));
    assert.deepEqual(streamed.stdoutBytes, json.stdoutBytes);
    assert.deepEqual(streamed.stderrBytes, json.stderrBytes);
    assert.equal(outText, json.stdout);
    assert.equal(errText, json.stderr);
    assert.equal(errText, 'err1\nerr2\nerr3\nerr4\nerr5\n');
    assert.ok(events.length >= 2, `expected several chunks, got ${events.length}`);
    const order = [...outText.matchAll(/out(\d)/g)].map((m) => m[1]);
    assert.deepEqual(order, ['1', '2', '3', '4', '5']);
  });

  it('background commands: a handle with logs, wait and kill', async () => {
    const seen: string[] = [];
    const handle = await shared.commands.run(
      'for i in 1 2 3; do echo line$i; sleep 0.1; done; echo done >&2; exit 4',
      { background: true, onStdout: (text) => seen.push(text) },
    );
    assert.match(handle.id, /^ex-[a-z2-7]{20}$/);
    assert.equal(handle.started.status, 'running');
    assert.ok((await shared.commands.list()).some((e) => e.id === handle.id));
    const result = await handle.wait({ pollIntervalMs: 50 });
    assert.equal(result.exitCode, 4);
    assert.equal(result.stdout, 'line1\nline2\nline3\n');
    assert.equal(result.stderr, 'done\n');
    assert.equal(seen.join(''), result.stdout);
    const logs = await handle.logs({ cursor: '0' });
    assert.equal(logs.exec.status, 'exited');
    assert.equal(
      Buffer.concat(logs.chunks.filter((c) => c.stream === 'stdout').map((c) => c.data)).toString(),
      'line1\nline2\nline3\n',
    );
    const tail = await handle.logs({ cursor: logs.nextCursor });
    assert.equal(tail.chunks.length, 0);
    const reconnected = await shared.commands.connect(handle.id);
    assert.equal((await reconnected.info()).exitCode, 4);

    const sleeper = await shared.commands.run('sleep 30', { background: true });
    const started = Date.now();
    await sleeper.kill();
    const killed = await sleeper.wait({ pollIntervalMs: 50 });
    assert.equal(killed.interrupted, true);
    assert.ok(Date.now() - started < 10_000);
    await assert.rejects(shared.commands.connect('ex-aaaaaaaaaaaaaaaaaaaa'), NotFoundError);
  });

  it('an AbortSignal aborts the call and interrupts the command (JSON and streamed)', async () => {
    const abortAfter = (ms: number) => {
      const c = new AbortController();
      setTimeout(() => c.abort(), ms);
      return c.signal;
    };
    const started = Date.now();
    const [plain, streamed] = await Promise.allSettled([
      shared.commands.run('sleep 2; touch /workspace/abort-json', { signal: abortAfter(300) }),
      shared.commands.run('echo first; sleep 2; touch /workspace/abort-sse', {
        signal: abortAfter(300),
        onStdout: () => undefined,
      }),
    ]);
    assert.ok(Date.now() - started < 1500, 'abort must not wait for the command');
    for (const r of [plain, streamed]) {
      assert.equal(r.status, 'rejected');
      assert.ok((r as PromiseRejectedResult).reason instanceof AbortError);
    }
    const already = new AbortController();
    already.abort();
    await assert.rejects(shared.getInfo({ signal: already.signal }), AbortError);
    await new Promise((resolve) => setTimeout(resolve, 2500));
    const check = await shared.commands.run(
      'test -e /workspace/abort-json; echo $?; test -e /workspace/abort-sse; echo $?',
    );
    assert.equal(check.stdout, '1\n1\n', 'the aborted commands must have been interrupted');
  });

  it('a request that exceeds its time limit fails with TimeoutError', async () => {
    const started = Date.now();
    await assert.rejects(
      shared.commands.run('sleep 5', { requestTimeoutMs: 400 }),
      (err: unknown) => err instanceof TimeoutError && err.timeoutMs === 400,
    );
    assert.ok(Date.now() - started < 3000);
  });

  it('server errors map to typed exceptions carrying code, status and request id', async () => {
    const wrongKey = new PalisadeClient({ baseUrl: s.url, apiKey: 'psk_wrongwrongwrong_x' });
    await assert.rejects(wrongKey.listSandboxes(), (err: unknown) => {
      assert.ok(err instanceof AuthenticationError);
      assert.equal(err.status, 401);
      assert.equal(err.code, 'UNAUTHENTICATED');
      assert.match(err.requestId ?? '', /^req_/);
      return true;
    });
    await assert.rejects(client.connectSandbox('sb-aaaaaaaaaaaaaaaaaaaa'), (err: unknown) => {
      assert.ok(err instanceof NotFoundError && err instanceof PalisadeApiError);
      assert.equal(err.status, 404);
      assert.equal(err.code, 'SANDBOX_NOT_FOUND');
      assert.match(err.requestId ?? '', /^req_/);
      return true;
    });
    await assert.rejects(client.createSandbox({ labels: { 'bad key!': 'x' } }), (err: unknown) => {
      assert.ok(err instanceof InvalidRequestError);
      assert.equal(err.status, 400);
      return true;
    });
    const { key: readOnly } = await s.cp.app.keys.create({
      tenant: 'default',
      name: 'sdk-read-only',
      scopes: ['sandboxes:read'],
      expiresAt: null,
    });
    const ro = new PalisadeClient({ baseUrl: s.url, apiKey: readOnly });
    await assert.rejects(ro.createSandbox(), (err: unknown) => {
      assert.ok(err instanceof PermissionDeniedError);
      assert.equal(err.code, 'FORBIDDEN');
      return true;
    });
    const guarded = await client.createSandbox({
      policy: { permissions: { deny: ['Bash(curl:*)'] } },
    });
    await assert.rejects(guarded.commands.run('curl http://example.com'), (err: unknown) => {
      assert.ok(err instanceof PolicyDeniedError);
      assert.equal(err.code, 'POLICY_DENIED');
      assert.ok(err.message.length > 0);
      return true;
    });
    await assert.rejects(guarded.network.update({ allow: ['example.com'] }), ConflictError);
    await guarded.kill({ purge: true });
  });

  it('network.get and network.update read and replace the egress rules', async () => {
    const none = await shared.network.get();
    assert.equal(none.enabled, false);
    const sb = await Sandbox.create({ network: { allow: ['example.com'] } }, client);
    const got = await sb.network.get();
    assert.equal(got.enabled, true);
    assert.deepEqual(got.rules, { allow: ['example.com'], deny: [] });
    const updated = await sb.network.update({ allow: ['pypi.org'], deny: ['evil.pypi.org'] });
    assert.deepEqual(updated.rules, { allow: ['pypi.org'], deny: ['evil.pypi.org'] });
    assert.deepEqual((await sb.network.get()).rules, updated.rules);
    await assert.rejects(sb.network.update({ allow: ['not a rule'] }), InvalidRequestError);
    await sb.kill({ purge: true });
  });
});
