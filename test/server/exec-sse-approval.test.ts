/**
 * A streamed foreground exec (Accept: text/event-stream) whose policy asks a human: the stream
 * announces the pending approval at once, then runs the command once approved, or ends with an
 * `error` event on denial, expiry or cancellation. Real server, real sandboxes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PalisadeClient, PolicyDeniedError } from '../../src/client/index.js';
import { parsePolicyObject } from '../../src/policy/index.js';
import {
  approvalParties,
  decideApproval,
  startTestServer,
  waitForPendingApproval,
  type TestServer,
} from './helpers.js';

const APPROVAL_TIMEOUT_MS = 2500;

interface SseEvent {
  event: string;
  data: Record<string, unknown>;
}

/** An open event stream: read events one at a time, in order. */
class EventReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #decoder = new TextDecoder();
  #buffer = '';
  readonly seen: SseEvent[] = [];

  constructor(body: ReadableStream<Uint8Array>) {
    this.#reader = body.getReader();
  }

  /** The next event, or undefined once the stream ended. */
  async next(): Promise<SseEvent | undefined> {
    for (;;) {
      const end = this.#buffer.indexOf('\n\n');
      if (end >= 0) {
        const block = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        const lines = block.split('\n').filter((l) => !l.startsWith(':'));
        if (lines.length === 0) continue;
        const name = lines.find((l) => l.startsWith('event: '))?.slice(7) ?? 'message';
        const data = lines.find((l) => l.startsWith('data: '))?.slice(6) ?? '{}';
        const e = { event: name, data: JSON.parse(data) as Record<string, unknown> };
        this.seen.push(e);
        return e;
      }
      const { value, done } = await this.#reader.read();
      if (done) return undefined;
      this.#buffer += this.#decoder.decode(value, { stream: true });
    }
  }

  async rest(): Promise<SseEvent[]> {
    const out: SseEvent[] = [];
    for (let e = await this.next(); e !== undefined; e = await this.next()) out.push(e);
    return out;
  }

  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => undefined);
  }
}

describe('streamed exec with an ask policy (real server, real sandboxes)', () => {
  let s: TestServer;
  let sandbox: string;
  let agent: string;
  let approver: string;

  before(async () => {
    const layer = parsePolicyObject(
      { permissions: { default: 'allow', ask: ['Bash(echo:*)', 'Bash(touch:*)'] } },
      'test:operator',
      'operator',
    );
    s = await startTestServer({
      policyLayers: [layer],
      config: { approvals: { timeoutMs: APPROVAL_TIMEOUT_MS } },
    });
    ({ agent, approver, sandbox } = await approvalParties(s));
  });
  after(async () => {
    await s.close();
  });

  async function streamExec(command: string, signal?: AbortSignal) {
    const res = await fetch(`${s.url}/v1/sandboxes/${sandbox}/exec`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${agent}`,
        'content-type': 'application/json',
        accept: 'text/event-stream',
      },
      body: JSON.stringify({ command }),
      ...(signal ? { signal } : {}),
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
    return new EventReader(res.body!);
  }

  it('announces the pending approval at once, then start, output and exit once approved', async () => {
    const stream = await streamExec('echo sse-approved');
    const pending = await stream.next();
    assert.equal(pending?.event, 'pending');
    const { approvalId, execId, expiresAt, policyReason } = pending.data;
    assert.match(String(approvalId), /^ap-[a-z2-7]{20}$/);
    assert.match(String(execId), /^ex-[a-z2-7]{20}$/);
    assert.ok(Date.parse(String(expiresAt)) > Date.now());
    assert.match(String(policyReason), /echo/);
    // Nothing has run yet: the approval is still pending.
    const listed = await s.req('GET', '/v1/approvals', { key: approver });
    const waiting = (listed.json.items as Array<{ id: string; execId: string }>).find(
      (a) => a.id === approvalId,
    );
    assert.ok(waiting, 'the announced approval is listed as pending');
    assert.equal(waiting.execId, execId);
    const ok = await s.req('POST', `/v1/approvals/${String(approvalId)}/approve`, {
      key: approver,
      body: {},
    });
    assert.equal(ok.status, 200, ok.text);
    const events = await stream.rest();
    assert.deepEqual(
      events.map((e) => e.event),
      ['start', 'stdout', 'exit'],
    );
    assert.equal(events[0]!.data.execId, execId);
    assert.equal(events[1]!.data.data, 'sse-approved\n');
    assert.equal(events[2]!.data.exitCode, 0);
    assert.equal(events[2]!.data.execId, execId);
  });

  it('a denial ends the stream with an error event and the command never runs', async () => {
    const stream = await streamExec('touch /workspace/denied');
    const pending = await stream.next();
    assert.equal(pending?.event, 'pending');
    const no = await s.req('POST', `/v1/approvals/${String(pending.data.approvalId)}/deny`, {
      key: approver,
      body: { reason: 'not now' },
    });
    assert.equal(no.status, 200, no.text);
    const events = await stream.rest();
    assert.deepEqual(
      events.map((e) => e.event),
      ['error'],
    );
    const err = events[0]!.data as { code: string; message: string; details: { outcome: string } };
    assert.equal(err.code, 'POLICY_DENIED');
    assert.equal(err.details.outcome, 'denied');
    assert.match(err.message, /not now/);
    const ls = await s.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: agent,
      body: { command: 'ls /workspace' },
    });
    assert.equal(ls.json.stdout, '', 'the denied command never ran');
  });

  it('an approval no one decides expires: error event with outcome expired', async () => {
    const stream = await streamExec('echo nobody-decides');
    const pending = await stream.next();
    assert.equal(pending?.event, 'pending');
    const started = Date.now();
    const events = await stream.rest();
    assert.ok(Date.now() - started >= APPROVAL_TIMEOUT_MS - 1000);
    assert.deepEqual(
      events.map((e) => e.event),
      ['error'],
    );
    assert.equal(events[0]!.data.code, 'POLICY_DENIED');
    assert.equal((events[0]!.data.details as { outcome: string }).outcome, 'expired');
  });

  it('closing the stream while it waits cancels the approval', async () => {
    const ctl = new AbortController();
    const stream = await streamExec('echo abandoned', ctl.signal);
    const pending = await stream.next();
    assert.equal(pending?.event, 'pending');
    const id = String(pending.data.approvalId);
    ctl.abort();
    await stream.cancel();
    let cancelled: unknown;
    for (let i = 0; i < 200 && cancelled === undefined; i++) {
      const audit = await s.req('GET', '/v1/audit?type=approval.cancelled&limit=100', {
        key: s.adminKey,
      });
      cancelled = (audit.json.items as Array<{ data: Record<string, unknown> }>).find((r) =>
        JSON.stringify(r.data).includes(id),
      );
      if (cancelled === undefined) await sleep(25);
    }
    assert.ok(cancelled, 'the approval was cancelled (audited) when the stream closed');
    assert.equal(s.cp.app.approvals.sizes().pending, 0);
    assert.equal(s.cp.app.execs.runningForTenant('default'), 0);
  });

  it('the SDK (streamed run) ignores the pending event: approved it returns the output, denied it throws PolicyDeniedError', async () => {
    const client = new PalisadeClient({ baseUrl: s.url, apiKey: agent });
    const box = client.sandbox(sandbox);
    const decide = async (command: string, verdict: 'approve' | 'deny') => {
      const found = await waitForPendingApproval(s, approver, (a) => a.command === command);
      const d = await decideApproval(s, found.id, verdict, approver);
      assert.equal(d.status, 200, d.text);
    };
    const chunks: string[] = [];
    const approved = box.commands.run('echo sdk-approved', {
      onStdout: (text) => chunks.push(text),
    });
    await decide('echo sdk-approved', 'approve');
    const result = await approved;
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout, 'sdk-approved\n');
    assert.equal(chunks.join(''), 'sdk-approved\n');
    // Settled into a value at once: the denial may arrive before anyone awaits it.
    const denied = box.commands.run('echo sdk-denied', { onStdout: () => undefined }).then(
      () => undefined,
      (err: unknown) => err,
    );
    await decide('echo sdk-denied', 'deny');
    const err = await denied;
    assert.ok(err instanceof PolicyDeniedError, String(err));
    assert.equal(err.code, 'POLICY_DENIED');
  });

  it('without an ask, the stream still starts with start (no pending event)', async () => {
    const res = await s.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: agent,
      body: { command: 'printf plain' },
      headers: { accept: 'text/event-stream' },
    });
    assert.equal(res.status, 200, res.text);
    assert.match(res.text, /^event: start\n/);
    assert.doesNotMatch(res.text, /event: pending/);
  });
});
