import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Progress } from '@modelcontextprotocol/sdk/types.js';
import { approvalOptionsFromEnv } from '../../src/mcp/index.js';
import { parsePolicyObject } from '../../src/policy/index.js';
import {
  approvalParties,
  decideApproval,
  startTestServer,
  waitFor as waitUntil,
  waitForPendingApproval,
  type TestServer,
} from '../server/helpers.js';
import { httpSession, stdioSession, type McpSession, type ToolOutcome } from './helpers.js';

const PROGRESS_MS = 200;
/** How long a test waits for an approval or a result to show up. */
const WAIT_MS = 15_000;
const waitFor = <T>(check: () => Promise<T | undefined>) => waitUntil(check, WAIT_MS);

/** Calls a tool with a progress token (the SDK adds one when onprogress is given). */
async function callWithProgress(
  mcp: McpSession,
  name: string,
  args: Record<string, unknown>,
  progress: Progress[],
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<ToolOutcome> {
  const r = await mcp.client.callTool({ name, arguments: args }, undefined, {
    onprogress: (p) => progress.push(p),
    resetTimeoutOnProgress: true,
    timeout: timeoutMs,
    ...(signal ? { signal } : {}),
  });
  const content = r.content as { type: string; text?: string }[];
  return { text: content.map((c) => c.text ?? '').join('\n'), isError: r.isError === true };
}

describe('MCP: policy "ask" waits for a human with progress, or answers with a pending id', () => {
  let s: TestServer;
  let agent: string;
  let approver: string;
  let sandbox: string;

  before(async () => {
    const operator = parsePolicyObject(
      {
        permissions: {
          default: 'allow',
          ask: ['Bash(echo:*)', 'Write(//workspace/review/**)'],
          deny: ['Bash(ps:*)'],
        },
      },
      'test:operator',
      'operator',
    );
    s = await startTestServer({
      policyLayers: [operator],
      config: { approvals: { timeoutMs: 20_000, mcpProgressIntervalMs: PROGRESS_MS } },
    });
    ({ agent, approver, sandbox } = await approvalParties(s));
  });
  after(async () => {
    await s?.close();
  });

  const pendingFor = (marker: string) =>
    waitForPendingApproval(s, approver, (a) => a.command.includes(marker), WAIT_MS);
  const decide = (id: string, decision: 'approve' | 'deny', reason?: string) =>
    decideApproval(s, id, decision, approver, reason);

  for (const transport of ['http', 'stdio'] as const) {
    const open = () =>
      transport === 'http'
        ? httpSession(s.url, agent)
        : // `palisade mcp` is a separate process: its progress interval comes from its environment.
          stdioSession(s.url, agent, { PALISADE_MCP_PROGRESS_INTERVAL_MS: String(PROGRESS_MS) });

    it(`${transport}: an asked exec waits with progress notifications; approved, it returns the output`, async () => {
      const mcp = await open();
      try {
        const progress: Progress[] = [];
        // A 1.5 s request timeout: only the progress notifications keep the call alive.
        const calling = callWithProgress(
          mcp,
          'exec',
          { sandboxId: sandbox, command: `echo approved-${transport}` },
          progress,
          1500,
        );
        const pending = await pendingFor(`echo approved-${transport}`);
        await sleep(2500);
        assert.ok(progress.length >= 3, `only ${progress.length} progress notifications`);
        assert.ok(
          progress.some((p) => p.message?.includes(pending.id) && /human/.test(p.message)),
          JSON.stringify(progress.slice(0, 3)),
        );
        const values = progress.map((p) => p.progress);
        assert.deepEqual(
          values,
          [...values].sort((a, b) => a - b),
          'progress only increases',
        );
        assert.equal((await decide(pending.id, 'approve', 'ok')).status, 200);
        const r = await calling;
        assert.equal(r.isError, false, r.text);
        assert.match(r.text, /^exit code 0, [\d.]+ ms \(after approval ap-/);
        assert.match(r.text, new RegExp(`--- stdout ---\\napproved-${transport}\\n`));
      } finally {
        await mcp.close();
      }
    });

    it(`${transport}: an asked exec that a human denies is an error result with the reason`, async () => {
      const mcp = await open();
      try {
        const calling = callWithProgress(
          mcp,
          'exec',
          { sandboxId: sandbox, command: `echo denied-${transport} > /workspace/denied` },
          [],
          5000,
        );
        const pending = await pendingFor(`echo denied-${transport}`);
        assert.equal((await decide(pending.id, 'deny', 'not on my watch')).status, 200);
        const r = await calling;
        assert.equal(r.isError, true, r.text);
        assert.match(r.text, /^Denied by a human approver: .*not on my watch/);
        const ls = await s.engine.run(sandbox, { command: 'ls /workspace' });
        assert.doesNotMatch(ls.stdout.toString(), /denied/);
      } finally {
        await mcp.close();
      }
    });

    it(`${transport}: without a progress token the call answers at once with a pending id; exec_poll follows it`, async () => {
      const mcp = await open();
      try {
        const started = Date.now();
        const r = await mcp.call('exec', {
          sandboxId: sandbox,
          command: `echo later-${transport}`,
        });
        assert.ok(Date.now() - started < 5000);
        assert.equal(r.isError, false, r.text);
        assert.match(r.text, /^PENDING APPROVAL: /);
        assert.match(r.text, /Do not run it again/);
        const approvalId = /ap-[a-z2-7]{20}/.exec(r.text)?.[0];
        const execId = /ex-[a-z2-7]{20}/.exec(r.text)?.[0];
        assert.ok(approvalId && execId, r.text);
        const before = await mcp.call('exec_poll', { sandboxId: sandbox, execId });
        assert.match(before.text, /^waiting for a human approval \(ap-/);
        assert.equal((await decide(approvalId, 'approve')).status, 200);
        const done = await waitFor(async () => {
          const p = await mcp.call('exec_poll', { sandboxId: sandbox, execId });
          return p.text.startsWith('exited') ? p : undefined;
        });
        assert.match(done.text, /^exited: exit code 0/);
        assert.match(done.text, new RegExp(`later-${transport}`));
      } finally {
        await mcp.close();
      }
    });
  }

  it('http: cancelling the MCP call interrupts the waiting exec and cancels its approval', async () => {
    const mcp = await httpSession(s.url, agent);
    try {
      const abort = new AbortController();
      const calling = callWithProgress(
        mcp,
        'exec',
        { sandboxId: sandbox, command: 'echo walk-away > /workspace/walked' },
        [],
        10_000,
        abort.signal,
      ).catch((err: unknown) => err);
      const pending = await pendingFor('echo walk-away');
      abort.abort();
      assert.ok((await calling) instanceof Error);
      await waitFor(async () => (s.cp.app.approvals.sizes().pending === 0 ? true : undefined));
      const late = await decide(pending.id, 'approve');
      assert.equal(late.status, 409, late.text);
      assert.match(late.json.message, /already cancelled/);
      const ls = await s.engine.run(sandbox, { command: 'ls /workspace' });
      assert.doesNotMatch(ls.stdout.toString(), /walked/);
    } finally {
      await mcp.close();
    }
  });

  it('http: a file write the policy asks about waits (with progress) and completes once approved', async () => {
    await s.engine.run(sandbox, { command: 'mkdir -p /workspace/review' });
    const mcp = await httpSession(s.url, agent);
    try {
      const progress: Progress[] = [];
      const calling = callWithProgress(
        mcp,
        'file_write',
        { sandboxId: sandbox, path: 'review/notes.md', content: 'approved notes\n' },
        progress,
        1500,
      );
      const pending = await pendingFor('review/notes.md');
      assert.equal(pending.tool, 'Write');
      assert.equal(pending.path, '/workspace/review/notes.md');
      await sleep(2000);
      assert.ok(progress.length >= 2, `only ${progress.length} progress notifications`);
      assert.equal((await decide(pending.id, 'approve')).status, 200);
      const r = await calling;
      assert.equal(r.isError, false, r.text);
      assert.match(r.text, /Wrote 15 bytes/);
      const cat = await s.engine.run(sandbox, { command: 'cat /workspace/review/notes.md' });
      assert.equal(cat.stdout.toString(), 'approved notes\n');
    } finally {
      await mcp.close();
    }
  });

  for (const [transport, withProgress] of [
    ['http', true],
    ['http', false],
    ['stdio', true],
  ] as const) {
    it(`${transport}: cancelling a file_write held for approval cancels the approval (${withProgress ? 'with' : 'without'} progress)`, async () => {
      await s.engine.run(sandbox, { command: 'mkdir -p /workspace/review' });
      const mcp =
        transport === 'http' ? await httpSession(s.url, agent) : await stdioSession(s.url, agent);
      try {
        const abort = new AbortController();
        const name = `review/cancelled-${transport}-${withProgress ? 'p' : 'n'}.md`;
        const args = { sandboxId: sandbox, path: name, content: 'never\n' };
        const calling = (
          withProgress
            ? callWithProgress(mcp, 'file_write', args, [], 10_000, abort.signal)
            : mcp.client.callTool({ name: 'file_write', arguments: args }, undefined, {
                signal: abort.signal,
              })
        ).catch((err: unknown) => err);
        const pending = await pendingFor(name);
        abort.abort();
        assert.ok((await calling) instanceof Error);
        await waitFor(async () => (s.cp.app.approvals.sizes().pending === 0 ? true : undefined));
        const late = await decide(pending.id, 'approve');
        assert.equal(late.status, 409, late.text);
        assert.match(late.json.message, /already cancelled/);
        const ls = await s.engine.run(sandbox, { command: 'ls /workspace/review' });
        assert.doesNotMatch(ls.stdout.toString(), /cancelled/);
        // The session still works after a cancelled call.
        const ok = await mcp.call('file_list', { sandboxId: sandbox, path: '/workspace' });
        assert.equal(ok.isError, false, ok.text);
      } finally {
        await mcp.close();
      }
    });
  }

  it('stdio: PALISADE_MCP_APPROVAL_WAIT_MS=0 answers with the pending id even with a progress token', async () => {
    const mcp = await stdioSession(s.url, agent, { PALISADE_MCP_APPROVAL_WAIT_MS: '0' });
    try {
      const r = await callWithProgress(
        mcp,
        'exec',
        { sandboxId: sandbox, command: 'echo configured-pending' },
        [],
        5000,
      );
      assert.match(r.text, /^PENDING APPROVAL: /);
      const approvalId = /ap-[a-z2-7]{20}/.exec(r.text)?.[0];
      assert.ok(approvalId);
      assert.equal((await decide(approvalId, 'deny', 'no')).status, 200);
      const execId = /ex-[a-z2-7]{20}/.exec(r.text)![0];
      const polled = await waitFor(async () => {
        const p = await mcp.call('exec_poll', { sandboxId: sandbox, execId });
        return p.text.startsWith('not run') ? p : undefined;
      });
      assert.match(polled.text, /^not run \(denied\): A human denied this command/);
    } finally {
      await mcp.close();
    }
  });

  it('policy_check explains what ask means; allowed and denied commands are unaffected', async () => {
    const mcp = await httpSession(s.url, agent);
    try {
      const checked = await mcp.call('policy_check', { sandboxId: sandbox, command: 'echo hi' });
      assert.match(checked.text, /decision: ask \(exec would hold it until a human approves it/);
      const allowed = await callWithProgress(
        mcp,
        'exec',
        { sandboxId: sandbox, command: 'printf plain' },
        [],
        5000,
      );
      assert.match(allowed.text, /^exit code 0, [\d.]+ ms\n--- stdout ---\nplain/);
      const denied = await mcp.call('exec', { sandboxId: sandbox, command: 'ps aux' });
      assert.equal(denied.isError, true);
      assert.match(denied.text, /^Denied by the permission policy:/);
      assert.equal(s.cp.app.approvals.sizes().pending, 0);
    } finally {
      await mcp.close();
    }
  });

  it('approval options from the environment are validated (fail closed)', () => {
    assert.deepEqual(approvalOptionsFromEnv({}), {});
    assert.deepEqual(
      approvalOptionsFromEnv({
        PALISADE_MCP_APPROVAL_WAIT_MS: '0',
        PALISADE_MCP_PROGRESS_INTERVAL_MS: '1000',
      }),
      { waitMs: 0, progressIntervalMs: 1000 },
    );
    assert.throws(
      () => approvalOptionsFromEnv({ PALISADE_MCP_APPROVAL_WAIT_MS: '-5' }),
      /PALISADE_MCP_APPROVAL_WAIT_MS must be a whole number/,
    );
    assert.throws(
      () => approvalOptionsFromEnv({ PALISADE_MCP_PROGRESS_INTERVAL_MS: '10' }),
      /from 100/,
    );
    // The real `palisade mcp` refuses to start with a clear message, no stack trace.
    const run = spawnSync(process.execPath, ['--import', 'tsx', 'test/mcp/cli-entry.ts', 'mcp'], {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        PALISADE_API_KEY: 'psk_unused',
        PALISADE_MCP_APPROVAL_WAIT_MS: 'soon',
      },
      input: '',
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.notEqual(run.status, 0);
    assert.match(run.stderr, /PALISADE_MCP_APPROVAL_WAIT_MS must be a whole number/);
    assert.doesNotMatch(run.stderr, /\n\s+at /);
  });
});

describe('MCP over /mcp: the wait budget (approvals.mcpWaitMs) is bounded by the server', () => {
  let s: TestServer;
  let agent: string;
  let approver: string;
  let sandbox: string;
  before(async () => {
    const operator = parsePolicyObject(
      { permissions: { default: 'allow', ask: ['Bash(echo:*)'] } },
      'test:operator',
      'operator',
    );
    s = await startTestServer({
      policyLayers: [operator],
      config: { approvals: { mcpWaitMs: 1500, mcpProgressIntervalMs: PROGRESS_MS } },
    });
    ({ agent, approver, sandbox } = await approvalParties(s));
  });
  after(async () => {
    await s?.close();
  });

  it('a call with a progress token waits mcpWaitMs, then answers with the pending id; exec_background says it waits', async () => {
    const mcp = await httpSession(s.url, agent);
    try {
      const progress: Progress[] = [];
      const started = Date.now();
      const r = await callWithProgress(
        mcp,
        'exec',
        { sandboxId: sandbox, command: 'echo budget' },
        progress,
        5000,
      );
      const waited = Date.now() - started;
      assert.ok(waited >= 1400 && waited < 5000, `waited ${waited} ms`);
      assert.ok(progress.length >= 2, `only ${progress.length} progress notifications`);
      assert.match(r.text, /^PENDING APPROVAL: /);
      const approvalId = /ap-[a-z2-7]{20}/.exec(r.text)![0];
      const listed = await s.req('GET', '/v1/approvals', { key: approver });
      assert.ok((listed.json.items as Array<{ id: string }>).some((a) => a.id === approvalId));
      const denied = await s.req('POST', `/v1/approvals/${approvalId}/deny`, {
        key: approver,
        body: { reason: 'later' },
      });
      assert.equal(denied.status, 200, denied.text);

      const bg = await mcp.call('exec_background', { sandboxId: sandbox, command: 'echo bg' });
      assert.equal(bg.isError, false, bg.text);
      assert.match(bg.text, /is waiting for a human approval \(ap-[a-z2-7]{20}\)/);
      const bgApproval = /ap-[a-z2-7]{20}/.exec(bg.text)![0];
      await s.req('POST', `/v1/approvals/${bgApproval}/deny`, { key: approver });
      assert.equal(s.cp.app.approvals.sizes().pending, 0);
    } finally {
      await mcp.close();
    }
  });
});
