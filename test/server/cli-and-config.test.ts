import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { Writable } from 'node:stream';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { resolveConfig } from '../../src/server/index.js';
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
