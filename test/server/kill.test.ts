import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startTestServer, type TestServer } from './helpers.js';

async function tenantKey(s: TestServer, tenant: string, scopes: string[]): Promise<string> {
  const r = await s.req('POST', '/v1/keys', {
    key: s.adminKey,
    body: { name: `${tenant}-key`, tenant, scopes },
  });
  assert.equal(r.status, 201, r.text);
  return r.json.key as string;
}

async function create(s: TestServer, key: string, labels: Record<string, string>) {
  const r = await s.req('POST', '/v1/sandboxes', { key, body: { labels } });
  return r;
}

async function stateOf(s: TestServer, key: string, id: string): Promise<string> {
  const r = await s.req('GET', `/v1/sandboxes/${id}`, { key });
  assert.equal(r.status, 200, r.text);
  return r.json.state as string;
}

const ALL_SCOPES = ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'];
const CLI = join(import.meta.dirname, 'cli-entry.ts');

function cli(
  args: string[],
  env: Record<string, string>,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'kill', ...args], {
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

describe('kill switch', () => {
  let s: TestServer;
  let acme: string;
  let beta: string;
  before(async () => {
    s = await startTestServer({ config: { quotas: { maxLiveSandboxes: 20 } } });
    acme = await tenantKey(s, 'acme', ALL_SCOPES);
    beta = await tenantKey(s, 'beta', ALL_SCOPES);
  });
  after(async () => {
    await s.close();
  });

  it('non-admin keys cannot engage, list or release kills', async () => {
    const post = await s.req('POST', '/v1/kill', { key: acme, body: { all: true } });
    assert.equal(post.status, 403);
    assert.equal(post.json.code, 'FORBIDDEN');
    const list = await s.req('GET', '/v1/kill', { key: acme });
    assert.equal(list.status, 403);
    const del = await s.req('DELETE', '/v1/kill/kill-aaaaaaaaaaaaaaaaaaaa', { key: acme });
    assert.equal(del.status, 403);
    const anon = await s.req('POST', '/v1/kill', { body: { all: true } });
    assert.equal(anon.status, 401);
    assert.equal((await s.req('GET', '/v1/kill', { key: s.adminKey })).json.items.length, 0);
  });

  it('rejects bad selectors with a clear error', async () => {
    for (const body of [
      {},
      { all: true, tenant: 'acme' },
      { all: false },
      { labels: '' },
      { labels: '   ' },
      { labels: 'bad key=1' },
      { tenant: 'Not A Tenant' },
      { sandboxId: 'nope' },
    ]) {
      const r = await s.req('POST', '/v1/kill', { key: s.adminKey, body });
      assert.equal(r.status, 400, `${JSON.stringify(body)} → ${r.text}`);
      assert.equal(r.json.code, 'INVALID_ARGUMENT');
    }
    assert.equal((await s.req('GET', '/v1/kill', { key: s.adminKey })).json.items.length, 0);
  });

  it('kill by label destroys only matching sandboxes and refuses matching creates and execs until released', async () => {
    const bad = (await create(s, acme, { team: 'red' })).json.id as string;
    const badOther = (await create(s, beta, { team: 'red', tier: 'x' })).json.id as string;
    const good = (await create(s, acme, { team: 'blue' })).json.id as string;
    const kill = await s.req('POST', '/v1/kill', {
      key: s.adminKey,
      body: { labels: 'team=red', reason: 'exfiltration suspected' },
    });
    assert.equal(kill.status, 201, kill.text);
    const killId = kill.json.id as string;
    assert.match(killId, /^kill-[a-z2-7]{20}$/);
    assert.deepEqual([...kill.json.killed].sort(), [bad, badOther].sort());
    assert.deepEqual(kill.json.failed, []);

    assert.equal(await stateOf(s, acme, bad), 'terminated');
    assert.equal(await stateOf(s, beta, badOther), 'terminated');
    const badView = await s.req('GET', `/v1/sandboxes/${bad}`, { key: acme });
    assert.equal(badView.json.reason, `killed by kill switch ${killId}`);
    assert.equal(s.engine.get(bad), undefined);
    // The other sandbox keeps running and can still exec.
    assert.equal(await stateOf(s, acme, good), 'running');
    const ok = await s.req('POST', `/v1/sandboxes/${good}/exec`, {
      key: acme,
      body: { command: 'echo alive' },
    });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.stdout, 'alive\n');

    // Creates and execs matching the kill are refused, naming the kill.
    const refused = await create(s, beta, { team: 'red' });
    assert.equal(refused.status, 403);
    assert.equal(refused.json.code, 'KILL_SWITCH_ACTIVE');
    assert.match(refused.json.message, new RegExp(killId));
    assert.match(refused.json.message, /exfiltration suspected/);
    assert.equal(refused.json.details.killId, killId);
    const exec = await s.req('POST', `/v1/sandboxes/${bad}/exec`, {
      key: acme,
      body: { command: 'true' },
    });
    assert.equal(exec.status, 403);
    assert.equal(exec.json.code, 'KILL_SWITCH_ACTIVE');
    // Non-matching creates still work.
    const blue = await create(s, beta, { team: 'blue' });
    assert.equal(blue.status, 201, blue.text);

    const list = await s.req('GET', '/v1/kill', { key: s.adminKey });
    assert.equal(list.status, 200);
    assert.deepEqual(
      list.json.items.map((k: { id: string }) => k.id),
      [killId],
    );
    assert.deepEqual(list.json.items[0].selector, { labels: 'team=red' });

    const release = await s.req('DELETE', `/v1/kill/${killId}`, { key: s.adminKey });
    assert.equal(release.status, 200, release.text);
    assert.equal(release.json.released, true);
    const again = await s.req('DELETE', `/v1/kill/${killId}`, { key: s.adminKey });
    assert.equal(again.status, 404);
    assert.equal((await s.req('GET', '/v1/kill', { key: s.adminKey })).json.items.length, 0);
    const restored = await create(s, beta, { team: 'red' });
    assert.equal(restored.status, 201, restored.text);
    const execNow = await s.req('POST', `/v1/sandboxes/${restored.json.id}/exec`, {
      key: beta,
      body: { command: 'echo back' },
    });
    assert.equal(execNow.json.stdout, 'back\n');

    // Both events are in the audit log with the admin as actor.
    const audit = await s.req('GET', '/v1/audit?limit=500', { key: s.adminKey });
    const types = audit.json.items.map((r: { type: string }) => r.type);
    const engage = audit.json.items.find((r: { type: string }) => r.type === 'kill.engage');
    assert.ok(engage, `no kill.engage in ${types.join(',')}`);
    assert.equal(engage.data.killId, killId);
    assert.equal(engage.data.reason, 'exfiltration suspected');
    assert.notEqual(engage.actor, 'system');
    assert.ok(
      audit.json.items.some(
        (r: { type: string; data: { killId?: string } }) =>
          r.type === 'kill.release' && r.data.killId === killId,
      ),
    );
    for (const [key, id] of [
      [acme, good],
      [beta, blue.json.id],
      [beta, restored.json.id],
    ] as const)
      assert.equal((await s.req('DELETE', `/v1/sandboxes/${id}`, { key })).status, 200);
  });

  it('a create racing a kill never leaves a matching sandbox running', async (t) => {
    const outcomes: string[] = [];
    for (let round = 0; round < 4; round++) {
      const label = { race: String(round) };
      const creating = create(s, acme, label);
      // Stagger the kill so some rounds land before, some during the engine's create.
      await new Promise((r) => setTimeout(r, round * 15));
      const kill = await s.req('POST', '/v1/kill', {
        key: s.adminKey,
        body: { labels: `race=${round}` },
      });
      assert.equal(kill.status, 201, kill.text);
      const created = await creating;
      if (created.status === 201) {
        // Either the kill saw it, or the create saw the kill after writing its record.
        const state = await stateOf(s, acme, created.json.id);
        outcomes.push(
          kill.json.killed.includes(created.json.id) ? 'killed' : 'created-then-killed',
        );
        assert.equal(state, 'terminated', `round ${round}: created sandbox left ${state}`);
      } else {
        assert.equal(created.status, 403, created.text);
        assert.equal(created.json.code, 'KILL_SWITCH_ACTIVE');
        assert.equal(created.json.details.killId, kill.json.id);
        // Refused up front, or created while the kill ran and destroyed by the re-check.
        const ended = await s.req('GET', `/v1/sandboxes?labelSelector=race=${round}`, {
          key: acme,
        });
        for (const sb of ended.json.items) {
          assert.equal(sb.state, 'terminated');
          assert.equal(sb.reason, `killed by kill switch ${kill.json.id}`);
        }
        outcomes.push(ended.json.items.length > 0 ? 'created-then-refused' : 'refused');
      }
      const live = await s.req('GET', `/v1/sandboxes?labelSelector=race=${round}&state=running`, {
        key: acme,
      });
      assert.deepEqual(live.json.items, []);
      assert.equal(
        (await s.req('DELETE', `/v1/kill/${kill.json.id}`, { key: s.adminKey })).status,
        200,
      );
    }
    t.diagnostic(`outcomes: ${outcomes.join(', ')}`);
  });

  it('kill by tenant and by sandbox id touch nothing else', async () => {
    const a = (await create(s, acme, {})).json.id as string;
    const b = (await create(s, beta, {})).json.id as string;
    const c = (await create(s, beta, {})).json.id as string;
    const byTenant = await s.req('POST', '/v1/kill', { key: s.adminKey, body: { tenant: 'acme' } });
    assert.deepEqual(byTenant.json.killed, [a]);
    assert.equal(await stateOf(s, beta, b), 'running');
    assert.equal((await create(s, acme, {})).json.code, 'KILL_SWITCH_ACTIVE');
    const byId = await s.req('POST', '/v1/kill', { key: s.adminKey, body: { sandboxId: b } });
    assert.deepEqual(byId.json.killed, [b]);
    assert.equal(await stateOf(s, beta, c), 'running');
    for (const k of [byTenant.json.id, byId.json.id])
      assert.equal((await s.req('DELETE', `/v1/kill/${k}`, { key: s.adminKey })).status, 200);
    assert.equal((await s.req('DELETE', `/v1/sandboxes/${c}`, { key: beta })).status, 200);
  });

  it('kill of all destroys every tenant’s sandboxes and refuses every create', async () => {
    const ids = [
      (await create(s, acme, { x: '1' })).json.id as string,
      (await create(s, beta, {})).json.id as string,
      (await create(s, s.adminKey, {})).json.id as string,
    ];
    const kill = await s.req('POST', '/v1/kill', { key: s.adminKey, body: { all: true } });
    assert.equal(kill.status, 201);
    assert.deepEqual([...kill.json.killed].sort(), [...ids].sort());
    for (const id of ids) assert.equal(s.engine.get(id), undefined);
    const r = await create(s, s.adminKey, {});
    assert.equal(r.json.code, 'KILL_SWITCH_ACTIVE');
    await s.req('DELETE', `/v1/kill/${kill.json.id}`, { key: s.adminKey });
  });
});

describe('palisade kill (CLI)', () => {
  let s: TestServer;
  before(async () => {
    s = await startTestServer();
  });
  after(async () => {
    await s.close();
  });

  it('engages, lists and releases through the API; refuses bad usage and non-admin keys', async () => {
    const env = { PALISADE_API_KEY: s.adminKey, PALISADE_URL: s.url };
    const id = (await create(s, s.adminKey, { from: 'cli' })).json.id as string;
    const engaged = await cli(['--label', 'from=cli', '--reason', 'cli test'], env);
    assert.equal(engaged.status, 0, engaged.stderr);
    const killId = /kill switch (kill-[a-z2-7]{20}) active/.exec(engaged.stdout)?.[1];
    assert.ok(killId, engaged.stdout);
    assert.match(engaged.stdout, new RegExp(`killed ${id}`));
    assert.equal(await stateOf(s, s.adminKey, id), 'terminated');
    const ls = await cli(['ls'], env);
    assert.equal(ls.status, 0, ls.stderr);
    assert.match(ls.stdout, new RegExp(`${killId}.*labels from=cli\\s+cli test`));
    const released = await cli(['release', killId], env);
    assert.equal(released.status, 0, released.stderr);
    assert.equal((await s.req('GET', '/v1/kill', { key: s.adminKey })).json.items.length, 0);

    const both = await cli(['--all', '--tenant', 'x'], env);
    assert.equal(both.status, 3);
    assert.match(both.stderr, /exactly one of --all, --tenant, --label, --sandbox/);
    const reader = await tenantKey(s, 'acme', ['sandboxes:read']);
    const forbidden = await cli(['--all'], { PALISADE_API_KEY: reader, PALISADE_URL: s.url });
    assert.equal(forbidden.status, 3);
    assert.match(forbidden.stderr, /FORBIDDEN/);
    assert.equal((await s.req('GET', '/v1/kill', { key: s.adminKey })).json.items.length, 0);
  });
});

describe('kill switch persistence', () => {
  let dataDir: string;
  before(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'palisade-kill-'));
    chmodSync(dataDir, 0o711);
  });
  after(() => rmSync(dataDir, { recursive: true, force: true }));

  it('an active kill survives a server restart; a released one does not come back', async () => {
    const first = await startTestServer({ dataDir });
    const admin = first.adminKey;
    let killId: string;
    let releasedId: string;
    try {
      killId = (
        await first.req('POST', '/v1/kill', {
          key: admin,
          body: { labels: 'env=prod', reason: 'incident 42' },
        })
      ).json.id;
      releasedId = (await first.req('POST', '/v1/kill', { key: admin, body: { tenant: 'zeta' } }))
        .json.id;
      await first.req('DELETE', `/v1/kill/${releasedId}`, { key: admin });
    } finally {
      await first.close();
    }
    const second = await startTestServer({ dataDir });
    try {
      const list = await second.req('GET', '/v1/kill', { key: admin });
      assert.deepEqual(
        list.json.items.map((k: { id: string }) => k.id),
        [killId],
      );
      const refused = await second.req('POST', '/v1/sandboxes', {
        key: admin,
        body: { labels: { env: 'prod' } },
      });
      assert.equal(refused.status, 403);
      assert.equal(refused.json.code, 'KILL_SWITCH_ACTIVE');
      assert.match(refused.json.message, /incident 42/);
      const allowed = await second.req('POST', '/v1/sandboxes', {
        key: admin,
        body: { labels: { env: 'dev' } },
      });
      assert.equal(allowed.status, 201, allowed.text);
    } finally {
      await second.close();
    }
  });
});
