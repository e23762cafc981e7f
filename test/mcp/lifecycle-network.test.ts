/**
 * The MCP lifecycle, background-exec, network and policy tools through the official SDK Client
 * over Streamable HTTP, against a real server with real sandboxes and the real egress gateway.
 * Network traffic stays on loopback: test names resolve to 127.0.0.1 through the gateway's
 * injected resolver and a connect guard refuses anything else.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parsePolicyObject } from '../../src/policy/index.js';
import { mapResolver } from '../egress/helpers.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { startTestServer, type TestServer } from '../server/helpers.js';
import { httpSession, sandboxIdIn, type McpSession } from './helpers.js';

/** The exit code and stdout section of an `exec` tool result. */
function execResult(text: string): { exitCode: number; stdout: string } {
  const code = /^exit code (\d+)/.exec(text);
  assert.ok(code, `not an exec result: ${text}`);
  const stdout = /--- stdout ---\n([\s\S]*?)--- stderr ---\n/.exec(text)?.[1] ?? '';
  return { exitCode: Number(code[1]), stdout };
}

describe('MCP lifecycle, background exec, network and policy tools (Streamable HTTP)', () => {
  let s: TestServer;
  let up: Upstream;
  let mcp: McpSession;
  let id = '';

  before(async () => {
    up = await startUpstream();
    const operator = parsePolicyObject(
      {
        permissions: { default: 'allow', deny: ['Bash(ps:*)'], ask: ['Bash(git push:*)'] },
      },
      'test:operator',
      'operator',
    );
    s = await startTestServer({
      policyLayers: [operator],
      egress: {
        resolver: mapResolver({ 'first.test': ['127.0.0.1'], 'second.test': ['127.0.0.1'] }),
        connectGuard: (address: { family: number; bytes: Uint8Array }) =>
          address.family === 4 && address.bytes[0] === 127,
      },
    });
    mcp = await httpSession(s.url, s.adminKey);
    const created = await mcp.call('sandbox_create', {
      labels: { via: 'mcp-lifecycle' },
      // Loopback is reachable only through an allow rule naming it by IP; the names still decide.
      network: { allow: [`first.test:${up.port}`, `127.0.0.1:${up.port}`] },
    });
    assert.equal(created.isError, false, created.text);
    id = sandboxIdIn(created.text);
  });
  after(async () => {
    if (id) await mcp.call('sandbox_destroy', { sandboxId: id }).catch(() => undefined);
    await mcp.close();
    await s.close();
    await up.close();
  });

  it('sandbox_pause freezes the sandbox (execs are refused), sandbox_resume restores it', async () => {
    // A background ticker (a timestamp every 50 ms) shows when the sandbox's processes ran.
    const ticker = await mcp.call('exec_background', {
      sandboxId: id,
      command: 'while true; do date +%s%3N >> /workspace/ticks; sleep 0.05; done',
    });
    assert.equal(ticker.isError, false, ticker.text);
    const tickerId = /ex-[a-z2-7]{20}/.exec(ticker.text)![0];
    await sleep(300);

    const ticks = async () => {
      const r = execResult((await mcp.call('exec', { sandboxId: id, command: 'cat ticks' })).text);
      return r.stdout.trim().split('\n').map(Number);
    };
    assert.ok((await ticks()).length > 0, 'the ticker never ran');
    const paused = await mcp.call('sandbox_pause', { sandboxId: id });
    assert.equal(paused.isError, false, paused.text);
    assert.match(paused.text, /^Paused\./);
    assert.match(paused.text, /"state": "paused"/);
    const viaHttp = await s.req('GET', `/v1/sandboxes/${id}`, { key: s.adminKey });
    assert.equal(viaHttp.json.state, 'paused');

    // Documented: an exec on a paused sandbox is refused at once (409 SANDBOX_NOT_RUNNING).
    const refused = await mcp.call('exec', { sandboxId: id, command: 'echo hi' });
    assert.equal(refused.isError, true, refused.text);
    assert.match(refused.text, /^SANDBOX_NOT_RUNNING: /);
    const refusedBg = await mcp.call('exec_background', { sandboxId: id, command: 'echo hi' });
    assert.equal(refusedBg.isError, true, refusedBg.text);
    assert.match(refusedBg.text, /^SANDBOX_NOT_RUNNING: /);
    // Pausing twice is a clear error, not a crash.
    const again = await mcp.call('sandbox_pause', { sandboxId: id });
    assert.equal(again.isError, true, again.text);
    assert.match(again.text, /^SANDBOX_NOT_RUNNING: .* is paused/);

    // Files are refused too while paused.
    const read = await mcp.call('file_read', { sandboxId: id, path: '/workspace/ticks' });
    assert.equal(read.isError, true, read.text);
    assert.match(read.text, /^SANDBOX_NOT_RUNNING: .*resume it first/);
    // Stay paused for a second: the ticker must show a gap at least that long.
    await sleep(1000);

    const resumed = await mcp.call('sandbox_resume', { sandboxId: id });
    assert.equal(resumed.isError, false, resumed.text);
    assert.match(resumed.text, /^Resumed\./);
    assert.match(resumed.text, /"state": "running"/);
    assert.equal(
      (await s.req('GET', `/v1/sandboxes/${id}`, { key: s.adminKey })).json.state,
      'running',
    );
    const ran = await mcp.call('exec', { sandboxId: id, command: 'echo after-resume' });
    assert.equal(ran.isError, false, ran.text);
    assert.deepEqual(execResult(ran.text), { exitCode: 0, stdout: 'after-resume\n' });
    // The ticker stopped for the whole pause (one gap of at least the paused second; when
    // running it never pauses that long) and runs again after resume.
    const resumedAt = Date.now();
    await sleep(500);
    const seen = await ticks();
    let gap = 0;
    for (let i = 1; i < seen.length; i++) gap = Math.max(gap, seen[i]! - seen[i - 1]!);
    assert.ok(gap >= 900, `no pause visible in the ticks: largest gap ${gap} ms`);
    assert.ok(
      seen.at(-1)! >= resumedAt - 100,
      `the ticker did not run after resume: last tick ${seen.at(-1)}, resumed ${resumedAt}`,
    );
    const killed = await mcp.call('exec_kill', { sandboxId: id, execId: tickerId });
    assert.equal(killed.isError, false, killed.text);
  });

  it('exec_background + exec_poll reads output in order with a cursor; exec_kill stops it', async () => {
    const started = await mcp.call('exec_background', {
      sandboxId: id,
      command: 'for i in 1 2 3; do echo line$i; sleep 0.2; done; echo done >&2; sleep 60',
    });
    assert.equal(started.isError, false, started.text);
    assert.match(started.text, /^Started execution ex-[a-z2-7]{20} \(running\)/);
    const execId = /ex-[a-z2-7]{20}/.exec(started.text)![0];

    let cursor = '0';
    let stdout = '';
    let stderr = '';
    let last = '';
    for (let i = 0; i < 100 && !stderr.includes('done'); i++) {
      const poll = await mcp.call('exec_poll', { sandboxId: id, execId, cursor });
      assert.equal(poll.isError, false, poll.text);
      last = poll.text;
      assert.match(poll.text, /^running; cursor \d+\. Call exec_poll again with cursor "\d+"/);
      cursor = /cursor "(\d+)"/.exec(poll.text)![1]!;
      stdout += /--- stdout ---\n([\s\S]*?)--- stderr ---\n/.exec(poll.text)?.[1] ?? '';
      stderr += /--- stderr ---\n([\s\S]*)$/.exec(poll.text)?.[1] ?? '';
      await sleep(100);
    }
    assert.equal(stdout, 'line1\nline2\nline3\n', last);
    assert.match(stderr, /done/);

    const killed = await mcp.call('exec_kill', { sandboxId: id, execId });
    assert.equal(killed.isError, false, killed.text);
    assert.match(killed.text, new RegExp(`^Execution ${execId}: `));
    let final = '';
    for (let i = 0; i < 100; i++) {
      final = (await mcp.call('exec_poll', { sandboxId: id, execId, cursor })).text;
      if (final.startsWith('exited')) break;
      await sleep(100);
    }
    assert.match(final, /^exited: .*\(interrupted\)/);
    assert.match(final, /All output has been read\./);
    // The HTTP API agrees.
    const view = await s.req('GET', `/v1/sandboxes/${id}/execs/${execId}`, { key: s.adminKey });
    assert.equal(view.json.status, 'exited');
    assert.equal(view.json.interrupted, true);

    const unknown = await mcp.call('exec_poll', {
      sandboxId: id,
      execId: `ex-${'a'.repeat(20)}`,
    });
    assert.equal(unknown.isError, true);
    assert.match(unknown.text, /^EXEC_NOT_FOUND: /);
  });

  it('network_policy_get shows the rules; network_policy_set replaces them and takes effect', async () => {
    const curl = async (host: string, path: string) =>
      execResult(
        (
          await mcp.call('exec', {
            sandboxId: id,
            command: `curl -sS -o /dev/null -w '%{http_code}' http://${host}:${up.port}${path}`,
          })
        ).text,
      );
    const got = await mcp.call('network_policy_get', { sandboxId: id });
    assert.equal(got.isError, false, got.text);
    const view = JSON.parse(got.text) as { enabled: boolean; rules: { allow: string[] } };
    assert.equal(view.enabled, true);
    assert.deepEqual(view.rules.allow, [`first.test:${up.port}`, `127.0.0.1:${up.port}`]);

    const hits0 = up.hits.length;
    assert.deepEqual(await curl('first.test', '/one'), { exitCode: 0, stdout: '200\n' });
    assert.deepEqual(await curl('second.test', '/blocked'), { exitCode: 0, stdout: '403\n' });
    assert.deepEqual(up.hits.slice(hits0), ['/one']);

    const set = await mcp.call('network_policy_set', {
      sandboxId: id,
      allow: [`second.test:${up.port}`, `127.0.0.1:${up.port}`],
    });
    assert.equal(set.isError, false, set.text);
    assert.match(set.text, /^Egress rules replaced\./);
    // Visible through the HTTP API...
    const http = await s.req('GET', `/v1/sandboxes/${id}/network`, { key: s.adminKey });
    assert.equal(http.status, 200, http.text);
    assert.deepEqual(http.json.rules.allow, [`second.test:${up.port}`, `127.0.0.1:${up.port}`]);
    // ...and in force for new connections.
    const hits1 = up.hits.length;
    assert.deepEqual(await curl('second.test', '/two'), { exitCode: 0, stdout: '200\n' });
    assert.deepEqual(await curl('first.test', '/now-blocked'), { exitCode: 0, stdout: '403\n' });
    assert.deepEqual(up.hits.slice(hits1), ['/two']);
    const after = JSON.parse((await mcp.call('network_policy_get', { sandboxId: id })).text) as {
      rules: { allow: string[] };
      recentDenials: Array<{ host: string }>;
    };
    assert.deepEqual(after.rules.allow, [`second.test:${up.port}`, `127.0.0.1:${up.port}`]);
    assert.ok(after.recentDenials.some((d) => d.host === 'first.test'));

    const bad = await mcp.call('network_policy_set', { sandboxId: id, allow: ['not a rule!'] });
    assert.equal(bad.isError, true, bad.text);
    assert.match(bad.text, /^INVALID_[A-Z]+: /);
    const unchanged = await s.req('GET', `/v1/sandboxes/${id}/network`, { key: s.adminKey });
    assert.deepEqual(unchanged.json.rules.allow, [
      `second.test:${up.port}`,
      `127.0.0.1:${up.port}`,
    ]);
  });

  it('policy_check explains allow, deny and ask without running anything', async () => {
    const before = await s.req('GET', `/v1/sandboxes/${id}/execs`, { key: s.adminKey });
    const deny = await mcp.call('policy_check', { sandboxId: id, command: 'ps aux' });
    assert.equal(deny.isError, false, deny.text);
    assert.match(deny.text, /decision: deny/);
    assert.match(deny.text, /Bash\(ps:\*\)/);
    assert.match(deny.text, /exec would refuse it/);
    const ask = await mcp.call('policy_check', { sandboxId: id, command: 'git push origin main' });
    assert.match(ask.text, /decision: ask/);
    assert.match(ask.text, /Bash\(git push:\*\)/);
    const allow = await mcp.call('policy_check', {
      sandboxId: id,
      command: 'touch /workspace/should-not-exist',
    });
    assert.match(allow.text, /decision: allow/);
    assert.match(allow.text, /exec would run it/);
    // Nothing ran: no new execution and no file.
    const afterList = await s.req('GET', `/v1/sandboxes/${id}/execs`, { key: s.adminKey });
    assert.equal(afterList.json.items?.length, before.json.items?.length);
    const exists = await s.req(
      'GET',
      `/v1/sandboxes/${id}/files/stat?path=${encodeURIComponent('/workspace/should-not-exist')}`,
      { key: s.adminKey },
    );
    assert.equal(exists.status, 404);
    // And the real exec is refused with the same explanation.
    const denied = await mcp.call('exec', { sandboxId: id, command: 'ps aux' });
    assert.equal(denied.isError, true);
    assert.match(denied.text, /Denied by the permission policy: .*Bash\(ps:\*\)/);
  });
});
