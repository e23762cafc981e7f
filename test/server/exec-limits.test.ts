/**
 * Concurrency limits of the exec API against a real server and real sandboxes: running commands
 * per tenant and per key (foreground and background), and streamed execs per key. One tenant
 * at its limit must not stop another tenant's commands (002 M-15 / T-3).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { isPalisadeError } from '../../src/errors/index.js';
import { parsePolicyObject } from '../../src/policy/index.js';
import { resolveConfig } from '../../src/server/index.js';
import { startTestServer, type Res, type TestServer } from './helpers.js';

const SCOPES = ['sandboxes:exec', 'sandboxes:read', 'sandboxes:write'] as const;

describe('exec concurrency limits (real server, real sandboxes)', () => {
  let s: TestServer;
  let a1: string;
  let a2: string;
  let b1: string;
  let boxA: string;
  let boxB: string;

  before(async () => {
    s = await startTestServer({
      config: { exec: { maxRunningPerTenant: 3, maxRunningPerKey: 2, maxStreamsPerKey: 1 } },
    });
    const keys = s.cp.app.keys;
    a1 = (await keys.create({ tenant: 'acme', name: 'agent-1', scopes: [...SCOPES] })).key;
    a2 = (await keys.create({ tenant: 'acme', name: 'agent-2', scopes: [...SCOPES] })).key;
    b1 = (await keys.create({ tenant: 'beta', name: 'agent', scopes: [...SCOPES] })).key;
    const ra = await s.req('POST', '/v1/sandboxes', { key: a1, body: {} });
    assert.equal(ra.status, 201, ra.text);
    boxA = ra.json.id;
    const rb = await s.req('POST', '/v1/sandboxes', { key: b1, body: {} });
    assert.equal(rb.status, 201, rb.text);
    boxB = rb.json.id;
  });
  after(async () => {
    await s.close();
  });

  const exec = (key: string, box: string, body: Record<string, unknown>) =>
    s.req('POST', `/v1/sandboxes/${box}/exec`, { key, body });

  async function waitExited(key: string, box: string, execId: string): Promise<void> {
    for (let i = 0; i < 200; i++) {
      const r = await s.req('GET', `/v1/sandboxes/${box}/execs/${execId}`, { key });
      if (r.json.status === 'exited') return;
      await sleep(25);
    }
    assert.fail(`exec ${execId} did not end`);
  }

  function assertLimit(r: Res, limit: string): void {
    assert.equal(r.status, 429, r.text);
    assert.equal(r.json.code, 'EXEC_LIMIT_REACHED');
    assert.equal(r.json.details.limit, limit);
    assert.ok(r.json.message.includes(limit), r.json.message);
    assert.match(r.json.message, /[Ww]ait for one to (finish|end)/);
    assert.equal(r.headers.get('retry-after'), '1');
  }

  it('a key at its running limit is refused (background and foreground) with 429 naming the limit; its tenant at its limit too; another tenant is not affected', async () => {
    const started: Array<{ key: string; id: string }> = [];
    for (const key of [a1, a1, a2]) {
      const r = await exec(key, boxA, { command: 'sleep 30', background: true });
      assert.equal(r.status, 202, r.text);
      started.push({ key, id: r.json.id });
    }
    assert.equal(s.cp.app.execs.runningForTenant('acme'), 3);
    // a1 holds 2 (its key limit) and the tenant holds 3 (its limit): the tenant check names
    // the tenant limit first.
    assertLimit(
      await exec(a1, boxA, { command: 'true', background: true }),
      'exec.maxRunningPerTenant',
    );
    assertLimit(await exec(a2, boxA, { command: 'echo no' }), 'exec.maxRunningPerTenant');

    // The other tenant runs foreground and background commands as usual.
    const fg = await exec(b1, boxB, { command: 'echo beta-runs' });
    assert.equal(fg.status, 200, fg.text);
    assert.equal(fg.json.stdout, 'beta-runs\n');
    const bg = await exec(b1, boxB, { command: 'echo beta-bg', background: true });
    assert.equal(bg.status, 202, bg.text);
    await waitExited(b1, boxB, bg.json.id);

    // Free a2's slot: the tenant is below its limit, but a1 is still at its key limit.
    const a2Exec = started[2]!;
    await s.req('POST', `/v1/sandboxes/${boxA}/execs/${a2Exec.id}/interrupt`, { key: a2 });
    await waitExited(a2, boxA, a2Exec.id);
    assert.equal(s.cp.app.execs.runningForTenant('acme'), 2);
    assertLimit(await exec(a1, boxA, { command: 'echo no' }), 'exec.maxRunningPerKey');
    const a2Runs = await exec(a2, boxA, { command: 'echo a2-runs' });
    assert.equal(a2Runs.status, 200, a2Runs.text);

    for (const e of started.slice(0, 2)) {
      await s.req('POST', `/v1/sandboxes/${boxA}/execs/${e.id}/interrupt`, { key: e.key });
      await waitExited(e.key, boxA, e.id);
    }
    assert.equal(s.cp.app.execs.runningForTenant('acme'), 0, 'every slot is released');
    const again = await exec(a1, boxA, { command: 'echo a1-again' });
    assert.equal(again.status, 200, again.text);
    assert.equal(again.json.stdout, 'a1-again\n');
  });

  it('slots are released when a command cannot start, and refused commands are never run', async () => {
    for (let i = 0; i < 4; i++) {
      const r = await exec(a1, boxA, { argv: ['/no/such/program'] });
      assert.equal(r.status, 400, r.text);
      assert.equal(r.json.code, 'EXEC_START_FAILED');
    }
    assert.equal(s.cp.app.execs.runningForTenant('acme'), 0);
    // Fill a1's two slots with foreground commands, then a refused one must not run.
    const long1 = exec(a1, boxA, { command: 'sleep 1' });
    const long2 = exec(a1, boxA, { command: 'sleep 1' });
    for (let i = 0; i < 100 && s.cp.app.execs.runningForTenant('acme') < 2; i++) await sleep(20);
    assert.equal(s.cp.app.execs.runningForTenant('acme'), 2);
    assertLimit(
      await exec(a1, boxA, { command: 'touch /workspace/refused' }),
      'exec.maxRunningPerKey',
    );
    assert.equal((await long1).status, 200);
    assert.equal((await long2).status, 200);
    const ls = await exec(a1, boxA, { command: 'ls /workspace' });
    assert.equal(ls.json.stdout, '', 'the refused command never ran');
  });

  it('streamed execs are bounded per key; the slot returns when the stream ends', async () => {
    const ctl = new AbortController();
    const first = await fetch(`${s.url}/v1/sandboxes/${boxA}/exec`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${a1}`,
        'content-type': 'application/json',
        accept: 'text/event-stream',
      },
      body: JSON.stringify({ command: 'echo streaming; sleep 1' }),
      signal: ctl.signal,
    });
    assert.equal(first.status, 200);
    const second = await s.req('POST', `/v1/sandboxes/${boxA}/exec`, {
      key: a1,
      body: { command: 'echo second' },
      headers: { accept: 'text/event-stream' },
    });
    assertLimit(second, 'exec.maxStreamsPerKey');
    assert.match(second.json.message, /background: true/);
    // Another key (same tenant) has its own stream slot; plain JSON execs are not streams.
    const other = await s.req('POST', `/v1/sandboxes/${boxA}/exec`, {
      key: a2,
      body: { command: 'echo other-key' },
      headers: { accept: 'text/event-stream' },
    });
    assert.equal(other.status, 200, other.text);
    assert.match(other.text, /event: exit/);
    const plain = await exec(a1, boxA, { command: 'echo plain' });
    assert.equal(plain.status, 200, plain.text);
    const text = await first.text();
    assert.match(text, /event: start[\s\S]*streaming[\s\S]*event: exit/);
    const third = await s.req('POST', `/v1/sandboxes/${boxA}/exec`, {
      key: a1,
      body: { command: 'echo third' },
      headers: { accept: 'text/event-stream' },
    });
    assert.equal(third.status, 200, third.text);
    assert.match(third.text, /third/);
  });

  it('a streamed exec cut by the client releases its stream and running slots', async () => {
    const ctl = new AbortController();
    const res = await fetch(`${s.url}/v1/sandboxes/${boxA}/exec`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${a1}`,
        'content-type': 'application/json',
        accept: 'text/event-stream',
      },
      body: JSON.stringify({ command: 'echo cut-me; sleep 30' }),
      signal: ctl.signal,
    });
    const reader = res.body!.getReader();
    let seen = '';
    while (!seen.includes('cut-me')) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += new TextDecoder().decode(value);
    }
    ctl.abort();
    await reader.cancel().catch(() => undefined);
    for (let i = 0; i < 200 && s.cp.app.execs.runningForTenant('acme') > 0; i++) await sleep(25);
    assert.equal(s.cp.app.execs.runningForTenant('acme'), 0);
    const next = await s.req('POST', `/v1/sandboxes/${boxA}/exec`, {
      key: a1,
      body: { command: 'echo next' },
      headers: { accept: 'text/event-stream' },
    });
    assert.equal(next.status, 200, next.text);
  });

  it('the limits are validated at start', () => {
    for (const exec of [
      { maxRunningPerTenant: 0 },
      { maxRunningPerKey: 1.5 },
      { maxStreamsPerKey: -1 },
    ]) {
      assert.throws(
        () => resolveConfig({ dataDir: '/tmp', exec }),
        (e: unknown) => isPalisadeError(e, 'INVALID_ARGUMENT') && /exec\.max/.test(e.message),
      );
    }
    const defaults = resolveConfig({ dataDir: '/tmp' }).exec;
    assert.deepEqual(
      [defaults.maxRunningPerTenant, defaults.maxRunningPerKey, defaults.maxStreamsPerKey],
      [16, 12, 8],
    );
  });
});

describe('exec concurrency limits and approvals (real server, real sandboxes)', () => {
  let s: TestServer;
  let agent: string;
  let approver: string;
  let box: string;
  before(async () => {
    const layer = parsePolicyObject(
      { permissions: { default: 'allow', ask: ['Bash(echo:*)'] } },
      'test:operator',
      'operator',
    );
    s = await startTestServer({
      policyLayers: [layer],
      config: { exec: { maxRunningPerTenant: 1 } },
    });
    const keys = s.cp.app.keys;
    agent = (await keys.create({ tenant: 'acme', name: 'agent', scopes: [...SCOPES] })).key;
    approver = (await keys.create({ tenant: 'acme', name: 'human', scopes: ['approvals:write'] }))
      .key;
    const r = await s.req('POST', '/v1/sandboxes', { key: agent, body: {} });
    assert.equal(r.status, 201, r.text);
    box = r.json.id;
  });
  after(async () => {
    await s.close();
  });

  it('a command waiting for approval holds no slot; approved while the tenant is at its limit, it is cancelled with the limit as the reason and never runs', async () => {
    const asked = await s.req('POST', `/v1/sandboxes/${box}/exec`, {
      key: agent,
      body: { command: 'echo late > /workspace/late', background: true },
    });
    assert.equal(asked.status, 202, asked.text);
    assert.equal(asked.json.status, 'pending');
    assert.equal(s.cp.app.execs.runningForTenant('acme'), 0, 'waiting holds no slot');
    const busy = await s.req('POST', `/v1/sandboxes/${box}/exec`, {
      key: agent,
      body: { command: 'sleep 30', background: true },
    });
    assert.equal(busy.status, 202, busy.text);
    const ok = await s.req('POST', `/v1/approvals/${asked.json.approvalId}/approve`, {
      key: approver,
      body: {},
    });
    assert.equal(ok.status, 200, ok.text);
    let view: { status: string; notRunReason: string | null } | undefined;
    for (let i = 0; i < 200; i++) {
      view = (await s.req('GET', `/v1/sandboxes/${box}/execs/${asked.json.id}`, { key: agent }))
        .json;
      if (view?.status !== 'pending') break;
      await sleep(25);
    }
    assert.equal(view?.status, 'cancelled');
    assert.match(view?.notRunReason ?? '', /exec\.maxRunningPerTenant = 1/);
    await s.req('POST', `/v1/sandboxes/${box}/execs/${busy.json.id}/interrupt`, { key: agent });
    for (let i = 0; i < 200 && s.cp.app.execs.runningForTenant('acme') > 0; i++) await sleep(25);
    const ls = await s.req('POST', `/v1/sandboxes/${box}/exec`, {
      key: agent,
      body: { command: 'ls /workspace' },
    });
    assert.equal(ls.status, 200, ls.text);
    assert.equal(ls.json.stdout, '', 'the cancelled command never ran');
  });
});
