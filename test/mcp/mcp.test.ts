import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MCP_TOOLS } from '../../src/auth/index.js';
import { parsePolicyObject } from '../../src/policy/index.js';
import { startTestServer, type TestServer } from '../server/helpers.js';
import { httpSession, sandboxIdIn, stdioSession, type McpSession } from './helpers.js';

/** The end-to-end session both transports must support. */
async function endToEnd(mcp: McpSession): Promise<void> {
  const names = await mcp.toolNames();
  assert.deepEqual([...names].sort(), [...MCP_TOOLS].sort());

  const created = await mcp.call('sandbox_create', { labels: { via: 'mcp' } });
  assert.equal(created.isError, false, created.text);
  const id = sandboxIdIn(created.text);
  try {
    const listed = await mcp.call('sandbox_list', {});
    assert.match(listed.text, new RegExp(id));

    const wrote = await mcp.call('file_write', {
      sandboxId: id,
      path: '/workspace/hello.txt',
      content: 'hello palisade\n',
    });
    assert.equal(wrote.isError, false, wrote.text);
    assert.match(wrote.text, /Wrote 15 bytes/);

    const ran = await mcp.call('exec', { sandboxId: id, command: 'cat /workspace/hello.txt' });
    assert.equal(ran.isError, false, ran.text);
    assert.match(ran.text, /^exit code 0/);
    assert.match(ran.text, /--- stdout ---\nhello palisade\n/);

    const edited = await mcp.call('file_edit', {
      sandboxId: id,
      path: 'hello.txt',
      oldText: 'palisade',
      newText: 'mcp',
    });
    assert.equal(edited.isError, false, edited.text);
    assert.match(edited.text, /Replaced 1 occurrence/);

    const again = await mcp.call('exec', { sandboxId: id, command: 'cat hello.txt; exit 3' });
    assert.match(again.text, /^exit code 3/);
    assert.match(again.text, /hello mcp/);

    const read = await mcp.call('file_read', { sandboxId: id, path: '/workspace/hello.txt' });
    assert.equal(read.text, 'hello mcp\n');

    const found = await mcp.call('file_search', {
      sandboxId: id,
      path: '/workspace',
      glob: '*.txt',
    });
    assert.equal(found.isError, false, found.text);
    assert.match(found.text, /hello\.txt/);

    const listing = await mcp.call('file_list', { sandboxId: id, path: '/workspace' });
    assert.match(listing.text, /file\s+\d+\s+10\s+hello\.txt/);

    const denied = await mcp.call('exec', { sandboxId: id, command: 'ps aux' });
    assert.equal(denied.isError, true);
    assert.match(denied.text, /Denied by the permission policy/);
    assert.match(denied.text, /Bash\(ps:\*\)/);

    const checked = await mcp.call('policy_check', { sandboxId: id, command: 'ps aux' });
    assert.equal(checked.isError, false, checked.text);
    assert.match(checked.text, /decision: deny/);
    assert.match(checked.text, /Bash\(ps:\*\)/);
    const allowed = await mcp.call('policy_check', { sandboxId: id, command: 'ls -la' });
    assert.match(allowed.text, /decision: allow/);

    const bad = await mcp.call('file_read', { sandboxId: id, path: '/workspace/missing' });
    assert.equal(bad.isError, true);
    assert.match(bad.text, /FILE_NOT_FOUND/);

    const badArgs = await mcp.call('exec', { sandboxId: id, command: 'true', bogus: 1 });
    assert.equal(badArgs.isError, true);
    assert.match(badArgs.text, /INVALID_ARGUMENT: arguments\.bogus is not a known argument/);
  } finally {
    const destroyed = await mcp.call('sandbox_destroy', { sandboxId: id });
    assert.equal(destroyed.isError, false, destroyed.text);
    assert.match(destroyed.text, /Destroyed sandbox/);
  }
  const info = await mcp.call('sandbox_info', { sandboxId: id });
  assert.match(info.text, /"state": "terminated"/);
}

describe('MCP server (real server, real sandboxes, official SDK client)', () => {
  let s: TestServer;
  before(async () => {
    const operator = parsePolicyObject(
      { permissions: { default: 'allow', deny: ['Bash(ps:*)'] } },
      'test:operator',
      'operator',
    );
    s = await startTestServer({ policyLayers: [operator] });
  });
  after(async () => {
    await s.close();
  });

  it('stdio (`palisade mcp`): lists every tool and runs create, write, exec, edit, search, deny, destroy', async () => {
    const mcp = await stdioSession(s.url, s.adminKey);
    try {
      await endToEnd(mcp);
      assert.match(mcp.stderr(), /palisade mcp: connected to http:\/\/127\.0\.0\.1/);
      assert.doesNotMatch(mcp.stderr(), /psk_/);
    } finally {
      await mcp.close();
    }
  });

  it('Streamable HTTP (/mcp): the same session, every tool call audited', async () => {
    const mcp = await httpSession(s.url, s.adminKey);
    try {
      await endToEnd(mcp);
    } finally {
      await mcp.close();
    }
    const audit = await s.req('GET', '/v1/audit?type=mcp.tool&limit=500', { key: s.adminKey });
    assert.equal(audit.status, 200, audit.text);
    const events = (
      audit.json.items as { type: string; data: { tool: string; ok: boolean } }[]
    ).filter((e) => e.type === 'mcp.tool');
    assert.ok(events.some((e) => e.data.tool === 'exec' && e.data.ok === false));
    assert.ok(events.some((e) => e.data.tool === 'sandbox_create' && e.data.ok === true));
  });

  it('reports truncated exec output to the model', async () => {
    const mcp = await httpSession(s.url, s.adminKey);
    let id: string | undefined;
    try {
      id = sandboxIdIn((await mcp.call('sandbox_create', {})).text);
      const r = await mcp.call('exec', {
        sandboxId: id,
        command: "head -c 100000 /dev/zero | tr '\\0' a; echo err >&2",
      });
      assert.equal(r.isError, false, r.text);
      const short = r.text.slice(-400);
      assert.ok(
        /\[stdout truncated: showing the first 65536 of more than \d+ bytes/.test(r.text),
        short,
      );
      assert.ok(r.text.length < 70_000, `result is ${r.text.length} chars`);
      assert.ok(/--- stderr ---\nerr\n/.test(r.text), short);
      assert.ok(!r.text.includes('stderr truncated'), short);

      await mcp.call('exec', { sandboxId: id, command: 'head -c 100000 /dev/zero > big.bin' });
      const read = await mcp.call('file_read', { sandboxId: id, path: 'big.bin' });
      assert.match(
        read.text,
        /^\[bytes 0-65536 of 100000; call file_read with offset 65536 for more\]/,
      );
      assert.match(read.text, /\[binary content, base64\]/);
      const rest = await mcp.call('file_read', { sandboxId: id, path: 'big.bin', offset: 65536 });
      assert.match(rest.text, /^\[bytes 65536-100000 of 100000\]/);
    } finally {
      if (id) await mcp.call('sandbox_destroy', { sandboxId: id });
      await mcp.close();
    }
  });

  it('background exec: start, poll with a cursor, kill', async () => {
    const mcp = await httpSession(s.url, s.adminKey);
    let id: string | undefined;
    try {
      id = sandboxIdIn((await mcp.call('sandbox_create', {})).text);
      const started = await mcp.call('exec_background', {
        sandboxId: id,
        command: 'echo first; sleep 30',
      });
      assert.equal(started.isError, false, started.text);
      const execId = /ex-[a-z2-7]{20}/.exec(started.text)?.[0];
      assert.ok(execId, started.text);
      let polled = '';
      for (let i = 0; i < 80 && !polled.includes('first'); i++) {
        polled = (await mcp.call('exec_poll', { sandboxId: id, execId })).text;
        if (!polled.includes('first')) await new Promise((r) => setTimeout(r, 100));
      }
      assert.match(polled, /^running; cursor \d+/);
      assert.match(polled, /--- stdout ---\nfirst\n/);
      const killed = await mcp.call('exec_kill', { sandboxId: id, execId });
      assert.equal(killed.isError, false, killed.text);
      let final = '';
      for (let i = 0; i < 80 && !final.startsWith('exited'); i++) {
        final = (await mcp.call('exec_poll', { sandboxId: id, execId })).text;
        if (!final.startsWith('exited')) await new Promise((r) => setTimeout(r, 100));
      }
      assert.match(final, /^exited: .*\(interrupted\)/);
    } finally {
      if (id) await mcp.call('sandbox_destroy', { sandboxId: id });
      await mcp.close();
    }
  });

  it('/mcp refuses a missing or wrong key with 401 and malformed MCP with 400, in the API error shape', async () => {
    const init = {
      jsonrpc: '2.0',
      id: 1,
      method: 'initialize',
      params: {
        protocolVersion: '2025-03-26',
        capabilities: {},
        clientInfo: { name: 'x', version: '1' },
      },
    };
    const headers = { accept: 'application/json, text/event-stream' };
    const none = await s.req('POST', '/mcp', { body: init, headers });
    assert.equal(none.status, 401);
    assert.equal(none.json.code, 'UNAUTHENTICATED');
    assert.equal(none.json.requestId, none.headers.get('x-request-id'));
    const wrong = await s.req('POST', '/mcp', {
      body: init,
      headers,
      key: 'psk_aaaaaaaaaaaaaaaa_' + 'A'.repeat(43),
    });
    assert.equal(wrong.status, 401);

    const ok = await s.req('POST', '/mcp', { body: init, headers, key: s.adminKey });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.result.serverInfo.name, 'palisade');
    assert.equal(ok.headers.get('mcp-session-id'), null, 'stateless: no session id is issued');
    assert.equal(ok.headers.get('x-frame-options'), 'DENY');

    const noAccept = await s.req('POST', '/mcp', { body: init, key: s.adminKey });
    assert.equal(noAccept.status, 400);
    assert.equal(noAccept.json.code, 'INVALID_ARGUMENT');
    const notRpc = await s.req('POST', '/mcp', { body: { hello: 1 }, headers, key: s.adminKey });
    assert.equal(notRpc.status, 400);
    assert.match(notRpc.json.message, /JSON-RPC/);
    const twoInits = await s.req('POST', '/mcp', {
      body: [init, { ...init, id: 2 }],
      headers,
      key: s.adminKey,
    });
    assert.equal(twoInits.status, 400);
    assert.equal(twoInits.json.code, 'INVALID_ARGUMENT');
    const get = await s.req('GET', '/mcp', { key: s.adminKey });
    assert.equal(get.status, 405);
    assert.equal(get.headers.get('allow'), 'POST');
  });

  it('a caller-supplied Mcp-Session-Id changes nothing: identity comes from the key', async () => {
    const headers = {
      accept: 'application/json, text/event-stream',
      'mcp-session-id': 'someone-elses-session',
    };
    const call = await s.req('POST', '/mcp', {
      body: { jsonrpc: '2.0', id: 7, method: 'tools/list' },
      headers,
    });
    assert.equal(call.status, 401, 'no key: refused whatever the session id');
    const viewer = (
      await s.cp.app.keys.create({ tenant: 'default', name: 'viewer', scopes: ['sandboxes:read'] })
    ).key;
    const listed = await s.req('POST', '/mcp', {
      body: { jsonrpc: '2.0', id: 7, method: 'tools/list' },
      headers,
      key: viewer,
    });
    assert.equal(listed.status, 200, listed.text);
    const names = (listed.json.result.tools as { name: string }[]).map((t) => t.name);
    assert.ok(names.includes('file_read'));
    assert.ok(!names.includes('exec'), 'a read-only key does not see exec');
    assert.ok(!names.includes('sandbox_create'));
  });
});
