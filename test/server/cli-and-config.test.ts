import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Writable } from 'node:stream';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SCOPES } from '../../src/auth/index.js';
import { opsConfigFromFlags, resolveConfig } from '../../src/server/index.js';
import { spawnServe } from '../helpers/serve.js';
import { request } from './helpers.js';
import { startTestServer, type TestServer } from './helpers.js';

const CLI = join(import.meta.dirname, 'cli-entry.ts');

function cli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (status) => resolve({ status, stdout, stderr }));
  });
}

describe('server configuration fails closed', () => {
  it('refuses plain HTTP on a non-loopback address unless TLS or a TLS proxy is stated', () => {
    assert.throws(
      () => resolveConfig({ dataDir: '/x', host: '0.0.0.0' }),
      /Refusing to serve plain HTTP on 0\.0\.0\.0/,
    );
    assert.throws(
      () => resolveConfig({ dataDir: '/x', host: '192.168.1.5' }),
      /--behind-tls-proxy/,
    );
    assert.equal(
      resolveConfig({ dataDir: '/x', host: '0.0.0.0', behindTlsProxy: true }).host,
      '0.0.0.0',
    );
    assert.equal(
      resolveConfig({ dataDir: '/x', host: '0.0.0.0', tls: { cert: 'c', key: 'k' } }).host,
      '0.0.0.0',
    );
    assert.equal(resolveConfig({ dataDir: '/x' }).host, '127.0.0.1');
  });

  it('refuses wildcard or malformed CORS origins', () => {
    assert.throws(() => resolveConfig({ dataDir: '/x', corsOrigins: ['*'] }), /never allowed/);
    assert.throws(
      () => resolveConfig({ dataDir: '/x', corsOrigins: ['https://a.example/path'] }),
      /Invalid CORS origin/,
    );
  });

  it('palisade serve refuses 0.0.0.0 without TLS and says how to fix it', async () => {
    const r = await cli([
      'serve',
      '--host',
      '0.0.0.0',
      '--port',
      '0',
      '--data-dir',
      '/tmp/palisade-never-created-x',
    ]);
    assert.equal(r.status, 3);
    assert.match(r.stderr, /--tls-cert|--behind-tls-proxy/);
  });
});

describe('circuit breaker and metrics settings', () => {
  it('the ops flags map to the server config, with bounds and clear errors', () => {
    assert.deepEqual(opsConfigFromFlags({}), {});
    assert.deepEqual(
      opsConfigFromFlags({
        'breaker-threshold': '5',
        'breaker-window': '2m',
        'metrics-access': 'loopback',
      }),
      { breakerThreshold: 5, breakerWindowMs: 120_000, metricsLoopback: true },
    );
    assert.deepEqual(opsConfigFromFlags({ 'metrics-access': 'key' }), { metricsLoopback: false });
    assert.equal(resolveConfig({ dataDir: '/x' }).metricsLoopback, false);
    const bad: Array<[Record<string, string>, RegExp]> = [
      [{ 'breaker-threshold': '0' }, /--breaker-threshold\) must be a whole number from 1 to 1000/],
      [{ 'breaker-threshold': '1001' }, /from 1 to 1000/],
      [{ 'breaker-threshold': '-3' }, /--breaker-threshold must be a whole number/],
      [{ 'breaker-threshold': '2.5' }, /--breaker-threshold must be a whole number/],
      [{ 'breaker-window': '500ms' }, /--breaker-window\) must be .* from 1000 \(1 s\)/],
      [{ 'breaker-window': '2h' }, /to 3600000 \(1 h\)/],
      [{ 'breaker-window': 'soon' }, /--breaker-window must be a duration from 1s to 1h/],
      [{ 'breaker-window': '0s' }, /--breaker-window must be a duration/],
      [{ 'metrics-access': 'public' }, /--metrics-access must be "key" .* or "loopback"/],
    ];
    for (const [flags, message] of bad) {
      assert.throws(
        () => opsConfigFromFlags(flags),
        (err: { code?: string; message?: string }) =>
          err.code === 'INVALID_ARGUMENT' && message.test(err.message ?? ''),
        JSON.stringify(flags),
      );
    }
    // The library config is checked the same way.
    assert.throws(() => resolveConfig({ dataDir: '/x', breakerThreshold: 0 }), /breakerThreshold/);
    assert.throws(() => resolveConfig({ dataDir: '/x', breakerWindowMs: 999 }), /breakerWindowMs/);
    assert.throws(
      // @ts-expect-error a wrong type from an untyped caller
      () => resolveConfig({ dataDir: '/x', metricsLoopback: 'yes' }),
      /metricsLoopback must be true or false/,
    );
  });

  it('palisade serve refuses bad ops flags before starting anything, and documents them', async () => {
    for (const [flag, value, message] of [
      ['--breaker-threshold', 'many', /--breaker-threshold must be a whole number/],
      ['--breaker-window', '10ms', /--breaker-window/],
      ['--metrics-access', 'everyone', /--metrics-access must be "key"/],
    ] as const) {
      const r = await cli([
        'serve',
        '--port',
        '0',
        '--data-dir',
        '/tmp/palisade-never-created-ops',
        flag,
        value,
      ]);
      assert.equal(r.status, 3, `${flag} ${value}: ${r.stderr}`);
      assert.match(r.stderr, message);
    }
    const help = await cli(['serve', '--help']);
    assert.equal(help.status, 0);
    for (const flag of ['--breaker-threshold N', '--breaker-window DURATION', '--metrics-access'])
      assert.ok(help.stdout.includes(flag), flag);
  });

  it('a real palisade serve applies --breaker-threshold, --breaker-window, --metrics-access and the exec limits', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'palisade-opsflags-'));
    chmodSync(dataDir, 0o711);
    const policy = join(dataDir, 'policy.json');
    writeFileSync(
      policy,
      JSON.stringify({ permissions: { default: 'allow', deny: ['Bash(rm:*)'] } }),
    );
    chmodSync(policy, 0o644);
    const uidStart = 1_795_000_000 + (process.pid % 5000) * 100;
    let child: ChildProcess | undefined;
    try {
      const served = await spawnServe({
        dataDir,
        logLevel: 'silent',
        engineUids: { start: uidStart, count: 100 },
        engineCgroup: `palisade-opsflags-${process.pid}`,
        args: [
          '--policy',
          policy,
          '--breaker-threshold',
          '2',
          '--breaker-window',
          '30s',
          '--metrics-access',
          'loopback',
          '--exec-max-running-per-key',
          '1',
        ],
        waitForAdminKey: true,
        onSpawn: (spawned) => (child = spawned),
      });
      const { url, adminKey } = served;
      assert.ok(url && adminKey, `serve did not start: ${JSON.stringify(served.output())}`);
      // loopback: /metrics without a key from 127.0.0.1.
      const metrics = await request(url, 'GET', '/metrics');
      assert.equal(metrics.status, 200, metrics.text);
      assert.match(metrics.text, /palisade_breaker_trips_total/);
      const created = await request(url, 'POST', '/v1/sandboxes', { key: adminKey, body: {} });
      assert.equal(created.status, 201, created.text);
      const id = created.json.id as string;
      // --exec-max-running-per-key 1: a second running command of the same key is refused.
      const first = await request(url, 'POST', `/v1/sandboxes/${id}/exec`, {
        key: adminKey,
        body: { command: 'sleep 30', background: true },
      });
      assert.equal(first.status, 202, first.text);
      const second = await request(url, 'POST', `/v1/sandboxes/${id}/exec`, {
        key: adminKey,
        body: { command: 'true' },
      });
      assert.equal(second.status, 429, second.text);
      assert.equal(second.json.code, 'EXEC_LIMIT_REACHED');
      assert.match(second.json.message, /maxRunningPerKey = 1/);
      const stopped = await request(
        url,
        'POST',
        `/v1/sandboxes/${id}/execs/${first.json.id as string}/interrupt`,
        { key: adminKey },
      );
      assert.ok(stopped.status < 300, stopped.text);
      for (let i = 0; i < 100; i++) {
        const st = await request(
          url,
          'GET',
          `/v1/sandboxes/${id}/execs/${first.json.id as string}`,
          {
            key: adminKey,
          },
        );
        if (st.json.status !== 'running') break;
        await sleep(50);
      }
      // Threshold 2: two denials are tolerated, the third freezes the sandbox.
      for (let i = 1; i <= 3; i++) {
        const denied = await request(url, 'POST', `/v1/sandboxes/${id}/exec`, {
          key: adminKey,
          body: { command: `rm -rf /workspace/x${i}` },
        });
        assert.equal(denied.status, 403, denied.text);
        assert.equal(denied.json.code, 'POLICY_DENIED');
        if (i === 2) {
          const view = await request(url, 'GET', `/v1/sandboxes/${id}`, { key: adminKey });
          assert.equal(view.json.state, 'running', 'froze before the threshold was passed');
        }
      }
      let view = await request(url, 'GET', `/v1/sandboxes/${id}`, { key: adminKey });
      for (let i = 0; i < 100 && view.json.state !== 'paused'; i++) {
        await sleep(50);
        view = await request(url, 'GET', `/v1/sandboxes/${id}`, { key: adminKey });
      }
      assert.equal(view.json.state, 'paused', view.text);
      assert.equal(view.json.flagged, true);
      assert.match(view.json.reason, /circuit breaker: 3 denials in 30 s/);
      const running = served.child;
      running.kill('SIGTERM');
      for (let i = 0; i < 300 && running.exitCode === null && running.signalCode === null; i++)
        await sleep(100);
      assert.equal(running.exitCode, 0, served.output().stderr);
    } finally {
      if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('palisade keys usage', () => {
  it('keys create --help lists every scope, generated from the scope list', async () => {
    for (const args of [
      ['keys', 'create', '--help'],
      ['keys', '--help'],
    ]) {
      const r = await cli(args);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /palisade keys create --name NAME/);
      for (const scope of SCOPES) {
        assert.match(r.stdout, new RegExp(`^  ${scope.replace(':', ':')}\\s+\\S`, 'm'), scope);
      }
    }
    assert.ok(SCOPES.includes('metrics:read') && SCOPES.includes('approvals:write'));
    // An unknown scope names the valid ones in the error.
    const bad = await cli([
      'keys',
      'create',
      '--name',
      'x',
      '--scope',
      'metrics:write',
      '--data-dir',
      '/tmp/palisade-never-created-keys',
    ]);
    assert.equal(bad.status, 3);
    assert.match(bad.stderr, /metrics:read/);
    assert.match(bad.stderr, /approvals:write/);
  });
});

describe('logs, retention and the CLI against a running server', () => {
  let s: TestServer;
  const lines: string[] = [];
  before(async () => {
    const logStream = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    s = await startTestServer({ config: { logLevel: 'info', logStream } });
  });
  after(async () => {
    await s.close();
  });

  it('logs never contain keys or env values', async () => {
    const created = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { env: { API_TOKEN: 'tok-very-secret-1' } },
    });
    await s.req('POST', `/v1/sandboxes/${created.json.id}/exec`, {
      key: s.adminKey,
      body: { command: 'false', env: { OTHER: 'tok-very-secret-2' } },
    });
    await s.req('GET', '/v1/whoami', { headers: { authorization: 'Bearer psk_wrong' } });
    const all = lines.join('');
    assert.ok(all.length > 0, 'expected request logs');
    assert.equal(all.includes(s.adminKey.slice(-43)), false);
    assert.equal(all.includes('tok-very-secret'), false);
    assert.equal(all.includes('psk_wrong'), false);
    await s.req('DELETE', `/v1/sandboxes/${created.json.id}`, { key: s.adminKey });
  });

  it('retention deletes ended sandboxes records; the audit chain keeps their events', async () => {
    const created = await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: {} });
    const id = created.json.id as string;
    await s.req('DELETE', `/v1/sandboxes/${id}`, { key: s.adminKey });
    const result = await s.cp.app.sandboxes.reap(0, Date.now() + 1000);
    assert.ok(result.purged >= 1);
    assert.equal((await s.req('GET', `/v1/sandboxes/${id}`, { key: s.adminKey })).status, 404);
    const events = await s.req('GET', `/v1/audit?sandboxId=${id}`, { key: s.adminKey });
    assert.deepEqual(
      events.json.items.map((e: { type: string }) => e.type),
      ['sandbox.create', 'sandbox.destroy', 'sandbox.retention_purge'],
    );
    assert.equal((await s.cp.app.audit.verify()).ok, true);
  });

  it('keys create/list/revoke on the data directory work beside the running server', async () => {
    const created = await cli([
      'keys',
      'create',
      '--name',
      'from-cli',
      '--tenant',
      'cli-t',
      '--scope',
      'sandboxes:read',
      '--scope',
      'sandboxes:write',
      '--scope',
      'sandboxes:exec',
      '--data-dir',
      s.dataDir,
    ]);
    assert.equal(created.status, 0, created.stderr);
    const key = /^API key: (psk_\S+)$/m.exec(created.stdout)?.[1];
    const id = /^id: ([a-z2-7]{16})/m.exec(created.stdout)?.[1];
    assert.ok(key && id);
    const who = await s.req('GET', '/v1/whoami', { key });
    assert.equal(who.json.tenant, 'cli-t');
    const list = await cli(['keys', 'list', '--data-dir', s.dataDir]);
    assert.match(list.stdout, new RegExp(`${id}\\s+cli-t\\s+active`));
    assert.equal(list.stdout.includes(key.slice(-43)), false);

    const env = { PALISADE_API_KEY: key, PALISADE_URL: s.url };
    const sb = await cli(['sandbox', 'create', '--label', 'from=cli'], env);
    assert.equal(sb.status, 0, sb.stderr);
    const sbId = sb.stdout.trim();
    assert.match(sbId, /^sb-[a-z2-7]{20}$/);
    const ls = await cli(['sandbox', 'ls', '--selector', 'from=cli'], env);
    assert.match(ls.stdout, new RegExp(sbId));
    const ex = await cli(
      ['sandbox', 'exec', sbId, '--', 'sh', '-c', 'echo out; echo err >&2; exit 7'],
      env,
    );
    assert.equal(ex.status, 7);
    assert.equal(ex.stdout, 'out\n');
    assert.match(ex.stderr, /err/);
    const streamed = await cli(
      ['sandbox', 'exec', sbId, '--stream', '--', 'sh', '-c', 'echo a; sleep 0.1; echo b'],
      env,
    );
    assert.equal(streamed.status, 0);
    assert.equal(streamed.stdout, 'a\nb\n');
    const rm = await cli(['sandbox', 'rm', sbId], env);
    assert.equal(rm.status, 0);

    const revoked = await cli(['keys', 'revoke', id, '--data-dir', s.dataDir]);
    assert.equal(revoked.status, 0);
    assert.equal((await s.req('GET', '/v1/whoami', { key })).status, 401);
    const denied = await cli(['sandbox', 'ls'], env);
    assert.equal(denied.status, 3);
    assert.match(denied.stderr, /revoked/);
    assert.equal((await s.cp.app.audit.verify()).ok, true);
  });
});
