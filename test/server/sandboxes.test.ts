import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startTestServer, type TestServer } from './helpers.js';

interface SseEvent {
  event: string;
  data: Record<string, unknown>;
}

async function sse(
  url: string,
  key: string,
  id: string,
  body: unknown,
): Promise<{ status: number; headers: Headers; events: SseEvent[] }> {
  const res = await fetch(`${url}/v1/sandboxes/${id}/exec`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${key}`,
      'content-type': 'application/json',
      accept: 'text/event-stream',
    },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  const events = text
    .split('\n\n')
    .filter((b) => b.trim().length > 0)
    .map((block) => ({
      event: /^event: (.*)$/m.exec(block)?.[1] ?? '',
      data: JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? '{}') as Record<string, unknown>,
    }));
  return { status: res.status, headers: res.headers, events };
}

describe('sandboxes and exec over HTTP with the real engine', () => {
  let s: TestServer;
  let id: string;
  before(async () => {
    s = await startTestServer({ config: { quotas: { maxLiveSandboxes: 4 } } });
    const r = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { labels: { app: 'web', tier: 'front' } },
    });
    assert.equal(r.status, 201, r.text);
    id = r.json.id;
  });
  after(async () => {
    await s.close();
  });

  it('creates with the documented shape and runs a command', async () => {
    const got = await s.req('GET', `/v1/sandboxes/${id}`, { key: s.adminKey });
    assert.equal(got.json.state, 'running');
    assert.match(got.json.id, /^sb-[a-z2-7]{20}$/);
    const r = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'echo hello; echo oops >&2; exit 3' },
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.exitCode, 3);
    assert.equal(r.json.stdout, 'hello\n');
    assert.equal(r.json.stderr, 'oops\n');
    assert.equal(r.json.truncated, false);
    assert.equal(typeof r.json.durationMs, 'number');
    const argv = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { argv: ['printf', '%s|', 'a b', '$(id)'], env: { GREETING: 'hi' } },
    });
    assert.equal(argv.json.stdout, 'a b|$(id)|');
  });

  it('SSE streams the same bytes, in order, as the JSON result', async () => {
    const command =
      'for i in 1 2 3 4; do echo out$i; echo err$i >&2; sleep 0.05; done; printf "\\377\\376"';
    const json = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command, encoding: 'base64' },
    });
    const streamed = await sse(s.url, s.adminKey, id, { command, encoding: 'base64' });
    assert.equal(streamed.status, 200);
    assert.match(streamed.headers.get('content-type') ?? '', /text\/event-stream/);
    assert.ok(streamed.headers.get('x-content-type-options'));
    assert.ok(streamed.headers.get('x-request-id'));
    assert.equal(streamed.events[0]!.event, 'start');
    assert.equal(streamed.events.at(-1)!.event, 'exit');
    const join = (stream: string) =>
      Buffer.concat(
        streamed.events
          .filter((e) => e.event === stream)
          .map((e) => Buffer.from(String(e.data.data), 'base64')),
      );
    assert.deepEqual(join('stdout'), Buffer.from(json.json.stdout, 'base64'));
    assert.deepEqual(join('stderr'), Buffer.from(json.json.stderr, 'base64'));
    assert.equal(join('stdout').toString('latin1'), 'out1\nout2\nout3\nout4\n\xff\xfe');
    assert.ok(
      streamed.events.filter((e) => e.event === 'stdout').length >= 2,
      'output should arrive in several events',
    );
    assert.equal(streamed.events.at(-1)!.data.exitCode, 0);
  });

  it('SSE in utf8 mode does not split multi-byte characters', async () => {
    const streamed = await sse(s.url, s.adminKey, id, {
      command: 'printf "h\\303"; sleep 0.1; printf "\\251llo"',
    });
    const text = streamed.events
      .filter((e) => e.event === 'stdout')
      .map((e) => String(e.data.data))
      .join('');
    assert.equal(text, 'héllo');
  });

  it('large output is truncated and flagged, in the result and in the stream', async () => {
    const body = { command: 'head -c 300000 /dev/zero | tr "\\0" a', maxOutputBytes: 1000 };
    const r = await s.req('POST', `/v1/sandboxes/${id}/exec`, { key: s.adminKey, body });
    assert.equal(r.json.stdout.length, 1000);
    assert.equal(r.json.truncated, true);
    assert.equal(r.json.stdoutTruncated, true);
    const streamed = await sse(s.url, s.adminKey, id, body);
    const text = streamed.events
      .filter((e) => e.event === 'stdout')
      .map((e) => String(e.data.data))
      .join('');
    assert.equal(text.length, 1000);
    assert.equal(streamed.events.at(-1)!.data.truncated, true);
  });

  it('a client that disconnects from a stream interrupts its command', async () => {
    const abort = new AbortController();
    const res = await fetch(`${s.url}/v1/sandboxes/${id}/exec`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${s.adminKey}`,
        'content-type': 'application/json',
        accept: 'text/event-stream',
      },
      body: JSON.stringify({ command: 'echo go; sleep 60' }),
      signal: abort.signal,
    });
    const reader = res.body!.getReader();
    await reader.read();
    const t0 = Date.now();
    abort.abort();
    let end;
    for (let i = 0; i < 100; i++) {
      const ends = await s.req('GET', `/v1/audit?type=exec.end&sandboxId=${id}&limit=1000`, {
        key: s.adminKey,
      });
      end = ends.json.items.find((e: { data: { interrupted: boolean } }) => e.data.interrupted);
      if (end) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(end, 'the exec should end as interrupted');
    assert.ok(Date.now() - t0 < 10_000);
  });

  it('a timeout kills the command', async () => {
    const t0 = Date.now();
    const r = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'sleep 30', timeoutMs: 300 },
    });
    assert.equal(r.json.timedOut, true);
    assert.ok(Date.now() - t0 < 10_000);
  });

  it('background exec: logs from a cursor, status, then interrupt', async () => {
    const start = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'for i in 1 2 3 4 5; do echo line$i; sleep 0.05; done', background: true },
    });
    assert.equal(start.status, 202, start.text);
    const execId = start.json.id as string;
    assert.match(execId, /^ex-[a-z2-7]{20}$/);
    let cursor = '0';
    let text = '';
    for (let i = 0; i < 200; i++) {
      const logs = await s.req('GET', `/v1/sandboxes/${id}/execs/${execId}/logs?cursor=${cursor}`, {
        key: s.adminKey,
      });
      assert.equal(logs.status, 200, logs.text);
      text += logs.json.chunks.map((c: { data: string }) => c.data).join('');
      cursor = logs.json.nextCursor;
      if (logs.json.exec.status === 'exited' && logs.json.chunks.length === 0) break;
      await new Promise((r) => setTimeout(r, 30));
    }
    assert.equal(text, 'line1\nline2\nline3\nline4\nline5\n');
    const status = await s.req('GET', `/v1/sandboxes/${id}/execs/${execId}`, { key: s.adminKey });
    assert.equal(status.json.status, 'exited');
    assert.equal(status.json.exitCode, 0);

    const long = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'echo started; sleep 60', background: true },
    });
    const longId = long.json.id as string;
    const list = await s.req('GET', `/v1/sandboxes/${id}/execs`, { key: s.adminKey });
    assert.ok(
      list.json.items.some(
        (e: { id: string; status: string }) => e.id === longId && e.status === 'running',
      ),
    );
    const intr = await s.req('POST', `/v1/sandboxes/${id}/execs/${longId}/interrupt`, {
      key: s.adminKey,
    });
    assert.equal(intr.status, 200);
    let final;
    for (let i = 0; i < 100; i++) {
      final = await s.req('GET', `/v1/sandboxes/${id}/execs/${longId}`, { key: s.adminKey });
      if (final.json.status === 'exited') break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(final!.json.status, 'exited');
    assert.equal(final!.json.interrupted, true);
  });

  it('invalid ids, labels and env are 400 with a clear message', async () => {
    const cases: [string, string, unknown, RegExp][] = [
      ['GET', '/v1/sandboxes/not-an-id', undefined, /params\/id must match pattern/],
      ['GET', "/v1/sandboxes/sb-aaaa'or'1'='1", undefined, /params\/id/],
      ['GET', `/v1/sandboxes/${id}/execs/ex-bad`, undefined, /execId/],
      ['POST', '/v1/sandboxes', { labels: { 'bad key!': 'x' } }, /Invalid label key/],
      ['POST', '/v1/sandboxes', { labels: { ok: 'bad value!' } }, /Invalid value for label/],
      ['POST', '/v1/sandboxes', { env: { 'BAD=NAME': 'x' } }, /invalid variable name/],
      ['POST', '/v1/sandboxes', { env: { LD_PRELOAD: '/x.so' } }, /LD_PRELOAD/],
      [
        'POST',
        `/v1/sandboxes/${id}/exec`,
        { command: 'true', env: { 'A\nB': 'x' } },
        /invalid variable name/,
      ],
      ['POST', `/v1/sandboxes/${id}/exec`, { command: 'true', env: { A: 'x\u0000y' } }, /NUL/],
      ['POST', `/v1/sandboxes/${id}/exec`, { command: 'true', argv: ['true'] }, /exactly one/],
      ['GET', '/v1/sandboxes?labelSelector=a%3D%3D%3Db', undefined, /label selector/],
    ];
    for (const [method, path, body, message] of cases) {
      const r = await s.req(method, path, {
        key: s.adminKey,
        ...(body !== undefined ? { body } : {}),
      });
      assert.equal(r.status, 400, `${method} ${path} ${JSON.stringify(body)}: ${r.text}`);
      assert.match(r.json.message, message);
      assert.doesNotMatch(r.text, /\/work\/|\/tmp\/|at .*\.ts/);
    }
  });

  it('lists with state filter, label selector and pagination', async () => {
    const second = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { labels: { app: 'db' } },
    });
    assert.equal(second.status, 201);
    const web = await s.req('GET', '/v1/sandboxes?labelSelector=app%3Dweb', { key: s.adminKey });
    assert.deepEqual(
      web.json.items.map((x: { id: string }) => x.id),
      [id],
    );
    const notWeb = await s.req('GET', '/v1/sandboxes?labelSelector=app!%3Dweb,app', {
      key: s.adminKey,
    });
    assert.deepEqual(
      notWeb.json.items.map((x: { id: string }) => x.id),
      [second.json.id],
    );
    const page1 = await s.req('GET', '/v1/sandboxes?limit=1&state=running', { key: s.adminKey });
    assert.equal(page1.json.items.length, 1);
    assert.ok(page1.json.nextCursor);
    const page2 = await s.req(
      'GET',
      `/v1/sandboxes?limit=1&state=running&cursor=${page1.json.nextCursor}`,
      { key: s.adminKey },
    );
    assert.equal(page2.json.items.length, 1);
    assert.notEqual(page2.json.items[0].id, page1.json.items[0].id);
    const del = await s.req('DELETE', `/v1/sandboxes/${second.json.id}`, { key: s.adminKey });
    assert.equal(del.json.state, 'terminated');
    assert.equal(del.json.reason, 'destroyed by request');
    const terminated = await s.req('GET', '/v1/sandboxes?state=terminated', { key: s.adminKey });
    assert.ok(terminated.json.items.some((x: { id: string }) => x.id === second.json.id));
    const purge = await s.req('DELETE', `/v1/sandboxes/${second.json.id}?purge=true`, {
      key: s.adminKey,
    });
    assert.equal(purge.status, 204);
    assert.equal(
      (await s.req('GET', `/v1/sandboxes/${second.json.id}`, { key: s.adminKey })).status,
      404,
    );
  });

  it('pause refuses exec with a clear error; resume restores it', async () => {
    const p = await s.req('POST', `/v1/sandboxes/${id}/pause`, { key: s.adminKey });
    assert.equal(p.status, 200, p.text);
    assert.equal(p.json.state, 'paused');
    const refused = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'true' },
    });
    assert.equal(refused.status, 409);
    assert.match(refused.json.message, /paused/);
    const r = await s.req('POST', `/v1/sandboxes/${id}/resume`, { key: s.adminKey });
    assert.equal(r.json.state, 'running');
    const ok = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'echo back' },
    });
    assert.equal(ok.json.stdout, 'back\n');
  });

  it('per-tenant quota refuses creates beyond the limit', async () => {
    const created: string[] = [];
    let refused;
    for (let i = 0; i < 5; i++) {
      const r = await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: {} });
      if (r.status === 201) created.push(r.json.id);
      else {
        refused = r;
        break;
      }
    }
    assert.equal(refused?.status, 403);
    assert.equal(refused?.json.code, 'QUOTA_EXCEEDED');
    assert.match(refused?.json.message, /live sandboxes/);
    for (const c of created) await s.req('DELETE', `/v1/sandboxes/${c}`, { key: s.adminKey });
  });

  it('expired sandboxes are reaped; renew pushes expiry out', async () => {
    const r = await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: { timeoutMs: 1000 } });
    const short = r.json.id as string;
    const renewed = await s.req('POST', `/v1/sandboxes/${id}/timeout`, {
      key: s.adminKey,
      body: { timeoutMs: 600_000 },
    });
    assert.ok(Date.parse(renewed.json.expiresAt) > Date.now() + 500_000);
    let state = '';
    for (let i = 0; i < 60; i++) {
      const g = await s.req('GET', `/v1/sandboxes/${short}`, { key: s.adminKey });
      state = g.json.state;
      if (state === 'terminated') {
        assert.match(g.json.reason, /expired/);
        break;
      }
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(state, 'terminated');
    assert.notEqual(s.engine.get(short)?.state, 'running');
  });

  it('audits sandbox lifecycle and exec start/end without env values', async () => {
    await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'true', env: { SECRET_TOKEN: 'hunter2-value' } },
    });
    const starts = await s.req('GET', `/v1/audit?type=exec.start&sandboxId=${id}&limit=1000`, {
      key: s.adminKey,
    });
    assert.ok(starts.json.items.length > 3);
    const ends = await s.req('GET', `/v1/audit?type=exec.end&sandboxId=${id}&limit=1000`, {
      key: s.adminKey,
    });
    assert.ok(ends.json.items.length > 3);
    const all = await s.req('GET', '/v1/audit?limit=1000', { key: s.adminKey });
    assert.doesNotMatch(all.text, /hunter2-value/);
    assert.match(all.text, /SECRET_TOKEN/);
    for (const type of [
      'sandbox.create',
      'sandbox.destroy',
      'sandbox.pause',
      'sandbox.resume',
      'sandbox.purge',
    ]) {
      const r = await s.req('GET', `/v1/audit?type=${type}`, { key: s.adminKey });
      assert.ok(r.json.items.length > 0, `${type} not audited`);
    }
    const verify = await s.req('GET', '/v1/audit/verify', { key: s.adminKey });
    assert.equal(verify.json.ok, true);
  });
});
