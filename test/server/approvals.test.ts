import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parsePolicyObject } from '../../src/policy/index.js';
import {
  mintKey,
  startTestServer,
  waitFor,
  waitForPendingApproval,
  type Res,
  type TestServer,
} from './helpers.js';

const TIMEOUT_MS = 4000;
const RETENTION_MS = 1500;

describe('human approvals (real server, real sandboxes)', () => {
  let s: TestServer;
  let sandbox: string;
  let approver: string;
  let approver2: string;
  let execOnly: string;
  let otherTenantApprover: string;
  before(async () => {
    const layer = parsePolicyObject(
      { permissions: { default: 'allow', ask: ['Bash(echo:*)'], deny: ['Bash(rm:*)'] } },
      'test:operator',
      'operator',
    );
    s = await startTestServer({
      policyLayers: [layer],
      config: {
        approvals: {
          timeoutMs: TIMEOUT_MS,
          decidedRetentionMs: RETENTION_MS,
          maxPendingPerTenant: 4,
        },
      },
    });
    approver = await mintKey(s, 'human', ['approvals:write']);
    approver2 = await mintKey(s, 'human2', ['approvals:write']);
    execOnly = await mintKey(s, 'agent', ['sandboxes:exec', 'sandboxes:read', 'sandboxes:write']);
    otherTenantApprover = await mintKey(s, 'human', ['approvals:write', 'admin'], 'other');
    const r = await s.req('POST', '/v1/sandboxes', { key: execOnly, body: {} });
    assert.equal(r.status, 201, r.text);
    sandbox = r.json.id;
  });
  after(async () => {
    await s.close();
  });

  const exec = (body: unknown, key = execOnly, signal?: AbortSignal): Promise<Res> =>
    fetch(`${s.url}/v1/sandboxes/${sandbox}/exec`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      ...(signal ? { signal } : {}),
    }).then(async (res) => {
      const text = await res.text();
      return {
        status: res.status,
        headers: res.headers,
        text,
        json: text ? JSON.parse(text) : undefined,
      };
    });

  /** The pending approval for a command, once it appears in the list. */
  const pendingFor = (command: string) =>
    waitForPendingApproval(s, approver, (a) => a.command === command);

  it('an asked command waits; once approved it runs and returns its output', async () => {
    const running = exec({ command: 'echo approved-run' });
    const pending = await pendingFor('echo approved-run');
    assert.match(pending.id, /^ap-[a-z2-7]{20}$/);
    const listed = (await s.req('GET', '/v1/approvals', { key: approver })).json.items[0];
    assert.equal(listed.sandboxId, sandbox);
    assert.equal(listed.status, 'pending');
    assert.match(listed.execId, /^ex-/);
    const ok = await s.req('POST', `/v1/approvals/${pending.id}/approve`, {
      key: approver,
      body: { reason: 'looks fine' },
    });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.status, 'approved');
    const r = await running;
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.stdout, 'approved-run\n');
    assert.equal(r.json.execId, listed.execId);
    assert.equal(s.cp.app.approvals.sizes().pending, 0);
  });

  it('a denied command is 403 POLICY_DENIED with the reason and never runs', async () => {
    const running = exec({ command: 'echo denied-run > /workspace/denied' });
    const pending = await pendingFor('echo denied-run > /workspace/denied');
    const no = await s.req('POST', `/v1/approvals/${pending.id}/deny`, {
      key: approver,
      body: { reason: 'not today' },
    });
    assert.equal(no.status, 200, no.text);
    assert.equal(no.json.status, 'denied');
    assert.equal(no.json.decisionReason, 'not today');
    const r = await running;
    assert.equal(r.status, 403);
    assert.equal(r.json.code, 'POLICY_DENIED');
    assert.match(r.json.message, /denied.*not today/);
    assert.equal(r.json.details.outcome, 'denied');
    const ls = await exec({ command: 'ls /workspace' });
    assert.equal(ls.json.stdout, '');
  });

  it('concurrent approve and deny: exactly one wins, the other gets 409 CONFLICT', async () => {
    for (let round = 0; round < 4; round++) {
      const command = `echo race-${round}`;
      const running = exec({ command });
      const pending = await pendingFor(command);
      const [a, d] = await Promise.all([
        s.req('POST', `/v1/approvals/${pending.id}/approve`, { key: approver }),
        s.req('POST', `/v1/approvals/${pending.id}/deny`, {
          key: approver2,
          body: { reason: 'r' },
        }),
      ]);
      const statuses = [a.status, d.status].sort();
      assert.deepEqual(statuses, [200, 409], `${a.text} ${d.text}`);
      const loser = a.status === 409 ? a : d;
      assert.equal(loser.json.code, 'CONFLICT');
      assert.match(loser.json.message, /already (approved|denied) by key/);
      const r = await running;
      if (a.status === 200) {
        assert.equal(r.status, 200);
        assert.equal(r.json.stdout, `race-${round}\n`);
      } else {
        assert.equal(r.status, 403);
        assert.equal(r.json.code, 'POLICY_DENIED');
      }
    }
  });

  it('a key cannot approve its own command; scopes and tenants are enforced', async () => {
    const running = exec({ command: 'echo self' }, s.adminKey);
    const pending = await pendingFor('echo self');
    const self = await s.req('POST', `/v1/approvals/${pending.id}/approve`, { key: s.adminKey });
    assert.equal(self.status, 403);
    assert.equal(self.json.code, 'FORBIDDEN');
    const agent = await s.req('GET', '/v1/approvals', { key: execOnly });
    assert.equal(agent.status, 403);
    assert.match(agent.json.message, /approvals:write/);
    const agentApprove = await s.req('POST', `/v1/approvals/${pending.id}/approve`, {
      key: execOnly,
    });
    assert.equal(agentApprove.status, 403);
    const other = await s.req('GET', '/v1/approvals', { key: otherTenantApprover });
    assert.deepEqual(other.json.items, []);
    const otherApprove = await s.req('POST', `/v1/approvals/${pending.id}/approve`, {
      key: otherTenantApprover,
    });
    assert.equal(otherApprove.status, 404);
    assert.equal(otherApprove.json.code, 'NOT_FOUND');
    const deny = await s.req('POST', `/v1/approvals/${pending.id}/deny`, { key: s.adminKey });
    assert.equal(deny.status, 200);
    assert.equal((await running).status, 403);
    const bad = await s.req('POST', '/v1/approvals/ap-x/approve', { key: approver });
    assert.equal(bad.status, 400);
  });

  it('an approval not decided within its timeout is denied', async () => {
    const started = Date.now();
    const r = await exec({ command: 'echo nobody-home' });
    const took = Date.now() - started;
    assert.equal(r.status, 403);
    assert.equal(r.json.code, 'POLICY_DENIED');
    assert.equal(r.json.details.outcome, 'expired');
    assert.match(r.json.message, /No one approved/);
    assert.ok(took >= TIMEOUT_MS - 100, `returned after ${took} ms`);
    const late = await s.req('POST', `/v1/approvals/${r.json.details.approvalId}/approve`, {
      key: approver,
    });
    assert.equal(late.status, 409);
    assert.match(late.json.message, /already expired/);
  });

  it('cancelling the exec (client disconnect) resolves its approval', async () => {
    const abort = new AbortController();
    const running = exec({ command: 'echo walk-away' }, execOnly, abort.signal).catch(
      (err: unknown) => err,
    );
    const pending = await pendingFor('echo walk-away');
    abort.abort();
    await running;
    await waitFor(async () => (s.cp.app.approvals.sizes().pending === 0 ? true : undefined));
    const late = await s.req('POST', `/v1/approvals/${pending.id}/approve`, { key: approver });
    assert.equal(late.status, 409);
    assert.match(late.json.message, /already cancelled/);
  });

  it('background execs are created pending; interrupt and sandbox destroy cancel them', async () => {
    const bg = await exec({ command: 'echo bg-approved', background: true });
    assert.equal(bg.status, 202, bg.text);
    assert.equal(bg.json.status, 'pending');
    assert.match(bg.json.approvalId, /^ap-/);
    const ok = await s.req('POST', `/v1/approvals/${bg.json.approvalId}/approve`, {
      key: approver,
    });
    assert.equal(ok.status, 200);
    const done = await waitFor(async () => {
      const r = await s.req('GET', `/v1/sandboxes/${sandbox}/execs/${bg.json.id}`, {
        key: execOnly,
      });
      return r.json.status === 'exited' ? r.json : undefined;
    });
    assert.equal(done.exitCode, 0);
    const logs = await s.req('GET', `/v1/sandboxes/${sandbox}/execs/${bg.json.id}/logs`, {
      key: execOnly,
    });
    assert.equal(logs.json.chunks.map((c: { data: string }) => c.data).join(''), 'bg-approved\n');

    const denied = await exec({ command: 'echo bg-denied', background: true });
    await s.req('POST', `/v1/approvals/${denied.json.approvalId}/deny`, {
      key: approver,
      body: { reason: 'nope' },
    });
    const deniedView = await waitFor(async () => {
      const r = await s.req('GET', `/v1/sandboxes/${sandbox}/execs/${denied.json.id}`, {
        key: execOnly,
      });
      return r.json.status === 'denied' ? r.json : undefined;
    });
    assert.match(deniedView.notRunReason, /nope/);

    const interrupted = await exec({ command: 'echo bg-interrupted', background: true });
    const int = await s.req(
      'POST',
      `/v1/sandboxes/${sandbox}/execs/${interrupted.json.id}/interrupt`,
      { key: execOnly },
    );
    assert.equal(int.status, 200);
    const cancelled = await waitFor(async () => {
      const r = await s.req('GET', `/v1/sandboxes/${sandbox}/execs/${interrupted.json.id}`, {
        key: execOnly,
      });
      return r.json.status === 'cancelled' ? r.json : undefined;
    });
    assert.equal(cancelled.exitCode, null);

    // A second sandbox with a waiting foreground and a waiting background exec, then destroyed.
    const other = await s.req('POST', '/v1/sandboxes', { key: execOnly, body: {} });
    const fg = fetch(`${s.url}/v1/sandboxes/${other.json.id}/exec`, {
      method: 'POST',
      headers: { authorization: `Bearer ${execOnly}`, 'content-type': 'application/json' },
      body: JSON.stringify({ command: 'echo doomed' }),
    }).then(async (res) => ({ status: res.status, json: (await res.json()) as { code: string } }));
    await fetch(`${s.url}/v1/sandboxes/${other.json.id}/exec`, {
      method: 'POST',
      headers: { authorization: `Bearer ${execOnly}`, 'content-type': 'application/json' },
      body: JSON.stringify({ command: 'echo doomed-bg', background: true }),
    });
    await pendingFor('echo doomed');
    await pendingFor('echo doomed-bg');
    const del = await s.req('DELETE', `/v1/sandboxes/${other.json.id}`, { key: execOnly });
    assert.equal(del.status, 200);
    const fgResult = await fg;
    assert.equal(fgResult.status, 409);
    assert.equal(fgResult.json.code, 'CONFLICT');
    assert.equal(s.cp.app.approvals.list('default').length, 0);
  });

  it('pending approvals are bounded per tenant', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await exec({ command: `echo bound-${i}`, background: true });
      assert.equal(r.status, 202, r.text);
      ids.push(r.json.approvalId);
    }
    const over = await exec({ command: 'echo bound-over', background: true });
    assert.equal(over.status, 403);
    assert.equal(over.json.code, 'QUOTA_EXCEEDED');
    const fgOver = await exec({ command: 'echo bound-over-fg' });
    assert.equal(fgOver.status, 403);
    assert.equal(fgOver.json.code, 'QUOTA_EXCEEDED');
    for (const id of ids) {
      const r = await s.req('POST', `/v1/approvals/${id}/deny`, { key: approver });
      assert.equal(r.status, 200);
    }
  });

  it('the SSE feed lists pending approvals and announces new and resolved ones', async () => {
    const noAccept = await s.req('GET', '/v1/approvals/stream', { key: approver });
    assert.equal(noAccept.status, 400);
    const early = exec({ command: 'echo before-feed', background: true });
    await pendingFor('echo before-feed');
    const abort = new AbortController();
    const res = await fetch(`${s.url}/v1/approvals/stream`, {
      headers: { authorization: `Bearer ${approver}`, accept: 'text/event-stream' },
      signal: abort.signal,
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    assert.equal(res.headers.get('x-frame-options'), 'DENY');
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    const readUntil = async (re: RegExp) => {
      while (!re.test(text)) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`feed ended; got ${text}`);
        text += decoder.decode(value, { stream: true });
      }
    };
    await readUntil(/event: approval\.pending\ndata: .*before-feed/);
    const beforeId = (await early).json.approvalId as string;
    const foreign = await s.req('POST', '/v1/sandboxes', { key: otherTenantApprover, body: {} });
    const foreignAsk = await fetch(`${s.url}/v1/sandboxes/${foreign.json.id}/exec`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${otherTenantApprover}`,
        'content-type': 'application/json',
      },
      body: JSON.stringify({ command: 'echo other-tenant', background: true }),
    });
    assert.equal(foreignAsk.status, 202);
    const later = await exec({ command: 'echo during-feed', background: true });
    await readUntil(/event: approval\.pending\ndata: .*during-feed/);
    await s.req('POST', `/v1/approvals/${later.json.approvalId}/deny`, { key: approver });
    await s.req('POST', `/v1/approvals/${beforeId}/deny`, { key: approver });
    await readUntil(
      new RegExp(
        `event: approval\\.resolved\\ndata: [^\\n]*${later.json.approvalId}[^\\n]*"denied"`,
      ),
    );
    // Another tenant's approval (announced before ours) never appears on this feed.
    assert.doesNotMatch(text, /other-tenant/);
    const foreignPending = await s.req('GET', '/v1/approvals', { key: otherTenantApprover });
    assert.equal(foreignPending.json.items.length, 1);
    await s
      .req('POST', `/v1/approvals/${foreignPending.json.items[0].id}/deny`, {
        key: s.adminKey,
      })
      .then((r) => assert.equal(r.status, 404));
    const foreignDeny = await s.req(
      'POST',
      `/v1/approvals/${foreignPending.json.items[0].id}/deny`,
      {
        key: otherTenantApprover,
      },
    );
    assert.equal(foreignDeny.status, 200);
    abort.abort();
    await reader.cancel().catch(() => undefined);
  });

  it('decided, expired and cancelled approvals are all audited, and nothing is left in memory', async () => {
    const audit = await s.req('GET', '/v1/audit?limit=1000', { key: s.adminKey });
    const types = new Set((audit.json.items as Array<{ type: string }>).map((r) => r.type));
    for (const t of [
      'approval.request',
      'approval.approved',
      'approval.denied',
      'approval.expired',
      'approval.cancelled',
    ]) {
      assert.ok(types.has(t), `missing ${t}`);
    }
    await waitFor(async () => {
      const sizes = s.cp.app.approvals.sizes();
      return sizes.pending === 0 && sizes.listeners <= 1 && sizes.tenants === 0 ? true : undefined;
    });
    await sleep(RETENTION_MS + 100);
    const sizes = s.cp.app.approvals.sizes();
    assert.deepEqual(
      { pending: sizes.pending, decided: sizes.decided, tenants: sizes.tenants },
      { pending: 0, decided: 0, tenants: 0 },
    );
    // Only the WebSocket hub's own subscription remains (the SSE feed unsubscribed on close).
    assert.equal(sizes.listeners, 1);
  });
});
