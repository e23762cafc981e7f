import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  decideApproval,
  mintKey,
  startTestServer,
  waitFor,
  waitForPendingApproval,
  type ApprovalView,
  type Res,
  type TestServer,
} from './helpers.js';

const TIMEOUT_MS = 3000;
const MiB = 1024 * 1024;
const MAX_WRITE = 4 * MiB;
const q = (path: string): string => encodeURIComponent(path);

describe('file actions the policy asks about wait for a human approval (real server, real sandboxes)', () => {
  let s: TestServer;
  let sandbox: string;
  let agent: string;
  let approver: string;
  let approver2: string;

  before(async () => {
    s = await startTestServer({
      config: {
        approvals: { timeoutMs: TIMEOUT_MS, decidedRetentionMs: 1000 },
        files: { maxWriteBytes: MAX_WRITE },
      },
    });
    agent = await mintKey(s, 'agent', ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec']);
    approver = await mintKey(s, 'human', ['approvals:write']);
    approver2 = await mintKey(s, 'human2', ['approvals:write']);
    const r = await s.req('POST', '/v1/sandboxes', {
      key: agent,
      body: {
        policy: {
          permissions: {
            default: 'allow',
            ask: [
              'Read(//workspace/review/**)',
              'Write(//workspace/review/**)',
              'Edit(//workspace/review/**)',
              'LS(//workspace/review/**)',
              'Glob(//workspace/review/**)',
            ],
            deny: ['Write(//workspace/frozen/**)'],
          },
        },
      },
    });
    assert.equal(r.status, 201, r.text);
    sandbox = r.json.id;
    // Behind the API's back (the engine directly), so no approval is involved in the setup.
    const setup = await s.engine.run(sandbox, {
      command: 'mkdir -p /workspace/review /workspace/frozen && echo draft > /workspace/review/doc',
    });
    assert.equal(setup.exitCode, 0, setup.stderr.toString());
  });
  after(async () => {
    await s?.close();
  });

  const files = (suffix = '') => `/v1/sandboxes/${sandbox}/files${suffix}`;
  const call = (
    method: string,
    path: string,
    body?: string | Buffer | object,
    signal?: AbortSignal,
  ): Promise<Res> => {
    const raw = typeof body === 'string' || Buffer.isBuffer(body);
    return fetch(`${s.url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${agent}`,
        ...(body === undefined
          ? {}
          : { 'content-type': raw ? 'application/octet-stream' : 'application/json' }),
      },
      ...(body === undefined ? {} : { body: raw ? body : JSON.stringify(body) }),
      ...(signal ? { signal } : {}),
    }).then(async (res) => {
      const text = await res.text();
      let json: unknown;
      try {
        json = text ? JSON.parse(text) : undefined;
      } catch {
        json = undefined;
      }
      return { status: res.status, headers: res.headers, text, json };
    });
  };
  const inSandbox = async (command: string): Promise<string> => {
    const r = await s.engine.run(sandbox, { command });
    return r.stdout.toString();
  };
  /** The pending approval whose command contains `marker`. */
  const pendingFor = (marker: string) =>
    waitForPendingApproval(s, approver, (a) => a.command.includes(marker));
  const decide = (id: string, decision: 'approve' | 'deny', key = approver, reason?: string) =>
    decideApproval(s, id, decision, key, reason);

  it('approve: a PUT that asked waits, then writes the file and answers 201', async () => {
    const writing = call('PUT', files(`?path=${q('review/approved.txt')}`), 'approved body\n');
    const pending = await pendingFor('review/approved.txt');
    assert.equal(pending.tool, 'Write');
    assert.equal(pending.path, '/workspace/review/approved.txt');
    assert.equal(pending.execId, null);
    assert.equal(pending.sandboxId, sandbox);
    assert.match(pending.command, /^Write \/workspace\/review\/approved\.txt/);
    assert.match(pending.policyReason, /Write/);
    // Nothing happens before the decision.
    assert.equal(await inSandbox('ls /workspace/review'), 'doc\n');
    const ok = await decide(pending.id, 'approve', approver, 'fine');
    assert.equal(ok.status, 200, ok.text);
    const r = await writing;
    assert.equal(r.status, 201, r.text);
    assert.deepEqual(r.json, { path: '/workspace/review/approved.txt', size: 14 });
    assert.equal(await inSandbox('cat /workspace/review/approved.txt'), 'approved body\n');
    assert.equal(s.cp.app.approvals.sizes().pending, 0);
  });

  it('approve: a read that asked waits, then returns the bytes; the read is audited with the approval', async () => {
    const reading = call('GET', files(`?path=${q('/workspace/review/doc')}`));
    const pending = await pendingFor('Read /workspace/review/doc');
    assert.equal(pending.tool, 'Read');
    assert.equal((await decide(pending.id, 'approve')).status, 200);
    const r = await reading;
    assert.equal(r.status, 200, r.text);
    assert.equal(r.text, 'draft\n');
    const audit = await s.req('GET', `/v1/audit?type=file.read&sandboxId=${sandbox}`, {
      key: s.adminKey,
    });
    const entry = (audit.json.items as Array<{ data: Record<string, unknown> }>).find(
      (e) => e.data.approvalId === pending.id,
    );
    assert.ok(entry, audit.text);
    assert.equal(entry.data.path, '/workspace/review/doc');
  });

  it('deny: 403 POLICY_DENIED with the reason, and nothing is written', async () => {
    const writing = call('PUT', files(`?path=${q('review/denied.txt')}`), 'never');
    const pending = await pendingFor('review/denied.txt');
    const no = await decide(pending.id, 'deny', approver, 'not this file');
    assert.equal(no.status, 200, no.text);
    assert.equal(no.json.status, 'denied');
    const r = await writing;
    assert.equal(r.status, 403, r.text);
    const e = r.json as { code: string; message: string; details: Record<string, unknown> };
    assert.equal(e.code, 'POLICY_DENIED');
    assert.match(e.message, /A human denied this file action.*not this file/);
    assert.equal(e.details.outcome, 'denied');
    assert.equal(e.details.approvalId, pending.id);
    assert.equal(await inSandbox('ls /workspace/review'), 'approved.txt\ndoc\n');
  });

  it('timeout: an approval nobody decides is denied (expired) and nothing is done', async () => {
    const started = Date.now();
    const r = await call('POST', files('/mkdir'), { path: 'review/never' });
    assert.ok(Date.now() - started >= TIMEOUT_MS - 100, 'it waited for the timeout');
    assert.equal(r.status, 403, r.text);
    const e = r.json as { code: string; message: string; details: Record<string, unknown> };
    assert.equal(e.code, 'POLICY_DENIED');
    assert.equal(e.details.outcome, 'expired');
    assert.match(e.message, /No one approved this file action/);
    assert.equal(await inSandbox('test -e /workspace/review/never || echo absent'), 'absent\n');
  });

  it('concurrent approve and deny: exactly one wins and the file reflects the winner', async () => {
    for (let round = 0; round < 3; round++) {
      const name = `review/race-${round}`;
      const writing = call('PUT', files(`?path=${q(name)}`), `round ${round}`);
      const pending = await pendingFor(name);
      const [a, d] = await Promise.all([
        decide(pending.id, 'approve', approver),
        decide(pending.id, 'deny', approver2, 'r'),
      ]);
      assert.deepEqual([a.status, d.status].sort(), [200, 409], `${a.text} ${d.text}`);
      const loser = a.status === 409 ? a : d;
      assert.equal(loser.json.code, 'CONFLICT');
      const r = await writing;
      const exists = (await inSandbox(`test -e /workspace/${name} && echo yes || echo no`)).trim();
      if (a.status === 200) {
        assert.equal(r.status, 201, r.text);
        assert.equal(exists, 'yes');
      } else {
        assert.equal(r.status, 403, r.text);
        assert.equal(exists, 'no');
      }
    }
  });

  it('client abort: the approval is cancelled, nothing is left in memory and nothing is done', async () => {
    const abort = new AbortController();
    const writing = call(
      'POST',
      files('/edit'),
      { path: 'review/doc', oldText: 'draft', newText: 'walked-away' },
      abort.signal,
    ).catch((err: unknown) => err);
    const pending = await pendingFor('Edit /workspace/review/doc');
    assert.equal(pending.tool, 'Read', 'the first check that asked (Read, then Edit) is shown');
    assert.match(pending.policyReason, /Edit/);
    abort.abort();
    await writing;
    await waitFor(async () => (s.cp.app.approvals.sizes().pending === 0 ? true : undefined));
    const late = await decide(pending.id, 'approve');
    assert.equal(late.status, 409);
    assert.match(late.json.message, /already cancelled/);
    assert.equal(await inSandbox('cat /workspace/review/doc'), 'draft\n');
    const audit = await s.req('GET', `/v1/audit?type=approval.cancelled&sandboxId=${sandbox}`, {
      key: s.adminKey,
    });
    assert.ok(
      (audit.json.items as Array<{ data: Record<string, unknown> }>).some(
        (e) => e.data.approvalId === pending.id && e.data.path === '/workspace/review/doc',
      ),
      audit.text,
    );
  });

  it('edit, move, delete, list and search wait too; approved, each does its normal work', async () => {
    const editing = call('POST', files('/edit'), {
      path: 'review/doc',
      oldText: 'draft',
      newText: 'final',
    });
    await decide((await pendingFor('Edit /workspace/review/doc')).id, 'approve');
    const edited = await editing;
    assert.equal(edited.status, 200, edited.text);
    assert.equal(edited.json.replacements, 1);

    const moving = call('POST', files('/move'), { from: 'review/doc', to: 'review/doc2' });
    const move = await pendingFor('Move /workspace/review/doc to /workspace/review/doc2');
    await decide(move.id, 'approve');
    assert.equal((await moving).status, 200);

    const listing = call('GET', files(`/list?path=${q('review')}`));
    await decide((await pendingFor('List /workspace/review')).id, 'approve');
    const listed = await listing;
    assert.equal(listed.status, 200, listed.text);
    assert.ok(
      (listed.json.entries as Array<{ name: string }>).some((e) => e.name === 'doc2'),
      listed.text,
    );

    const searching = call('POST', files('/search'), { path: 'review', glob: '*' });
    const search = await pendingFor('Search /workspace/review');
    assert.equal(search.tool, 'Glob');
    await decide(search.id, 'approve');
    assert.equal((await searching).status, 200);

    const deleting = call('DELETE', files(`?path=${q('review/doc2')}`));
    await decide((await pendingFor('Delete /workspace/review/doc2')).id, 'approve');
    assert.equal((await deleting).status, 204);
    assert.equal(await inSandbox('test -e /workspace/review/doc2 || echo gone'), 'gone\n');

    // Allowed actions do not wait; denied ones are refused at once, never asked.
    assert.equal((await call('PUT', files(`?path=${q('free.txt')}`), 'x')).status, 201);
    const frozen = await call('PUT', files(`?path=${q('frozen/x')}`), 'x');
    assert.equal(frozen.status, 403);
    assert.equal(frozen.json && (frozen.json as { code: string }).code, 'POLICY_DENIED');
    assert.equal(s.cp.app.approvals.sizes().pending, 0);
  });

  it('the approvals feed announces a file approval with its tool and path', async () => {
    const abort = new AbortController();
    const feed = await fetch(`${s.url}/v1/approvals/stream`, {
      headers: { authorization: `Bearer ${approver}`, accept: 'text/event-stream' },
      signal: abort.signal,
    });
    assert.equal(feed.status, 200);
    const reader = feed.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    const readUntil = async (re: RegExp) => {
      while (!re.test(text)) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`feed ended: ${text}`);
        text += decoder.decode(value, { stream: true });
      }
    };
    const writing = call('PUT', files(`?path=${q('review/fed.txt')}`), 'fed');
    await readUntil(/event: approval\.pending\ndata: [^\n]*fed\.txt/);
    const line = /event: approval\.pending\ndata: ([^\n]*fed\.txt[^\n]*)/.exec(text)![1]!;
    const announced = JSON.parse(line) as ApprovalView;
    assert.equal(announced.tool, 'Write');
    assert.equal(announced.path, '/workspace/review/fed.txt');
    await decide(announced.id, 'deny');
    await readUntil(/event: approval\.resolved\ndata: [^\n]*fed\.txt[^\n]*"denied"/);
    assert.equal((await writing).status, 403);
    abort.abort();
    await reader.cancel().catch(() => undefined);
  });

  it('uploads: a body larger than the held part is written whole once approved; the size limit still applies', async () => {
    const big = randomBytes(3 * MiB);
    const writing = call('PUT', files(`?path=${q('review/big.bin')}`), big);
    const pending = await pendingFor('review/big.bin');
    assert.match(pending.command, new RegExp(`\\(${big.length} bytes\\)`));
    await sleep(200);
    assert.equal((await decide(pending.id, 'approve')).status, 200);
    const r = await writing;
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.size, big.length);
    const sum = await inSandbox('sha256sum /workspace/review/big.bin');
    const { createHash } = await import('node:crypto');
    assert.equal(sum.split(' ')[0], createHash('sha256').update(big).digest('hex'));

    // A declared length over the limit is refused before anyone is asked.
    const tooBig = await call(
      'PUT',
      files(`?path=${q('review/huge.bin')}`),
      randomBytes(MAX_WRITE + 1),
    );
    assert.equal(tooBig.status, 413, tooBig.text);
    assert.equal(s.cp.app.approvals.sizes().pending, 0);

    // A chunked body (no Content-Length) over the limit is cut by the write after approval.
    const chunked = new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpRequest(
        `${s.url}${files(`?path=${q('review/chunked.bin')}`)}`,
        {
          method: 'PUT',
          headers: {
            authorization: `Bearer ${agent}`,
            'content-type': 'application/octet-stream',
            'transfer-encoding': 'chunked',
          },
        },
        (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
          res.on('error', reject);
        },
      );
      req.on('error', () => undefined);
      let sent = 0;
      const pump = () => {
        while (sent < MAX_WRITE + 2 * MiB) {
          sent += 64 * 1024;
          if (!req.write(Buffer.alloc(64 * 1024, 7))) {
            req.once('drain', pump);
            return;
          }
        }
        req.end();
      };
      pump();
    });
    const chunkedPending = await pendingFor('review/chunked.bin');
    await decide(chunkedPending.id, 'approve');
    const c = await chunked;
    assert.equal(c.status, 413, c.body);
    assert.equal(
      await inSandbox('test -e /workspace/review/chunked.bin || echo absent'),
      'absent\n',
    );
  });

  it('decisions and actions are audited; afterwards nothing is left in memory', async () => {
    const audit = await s.req('GET', `/v1/audit?sandboxId=${sandbox}&limit=1000`, {
      key: s.adminKey,
    });
    const items = audit.json.items as Array<{ type: string; data: Record<string, unknown> }>;
    const asks = items.filter((e) => e.type === 'policy.decision' && e.data.decision === 'ask');
    assert.ok(asks.some((e) => e.data.tool === 'Write'));
    const requests = items.filter((e) => e.type === 'approval.request');
    assert.ok(requests.some((e) => e.data.tool === 'Write' && e.data.execId === null));
    for (const t of ['approval.approved', 'approval.denied', 'approval.expired']) {
      assert.ok(
        items.some((e) => e.type === t && typeof e.data.path === 'string'),
        `missing ${t}`,
      );
    }
    const writes = items.filter((e) => e.type === 'file.write' && e.data.ok === true);
    assert.ok(writes.some((e) => typeof e.data.approvalId === 'string'));
    await waitFor(async () => {
      const sizes = s.cp.app.approvals.sizes();
      return sizes.pending === 0 && sizes.tenants === 0 ? true : undefined;
    });
  });
});
