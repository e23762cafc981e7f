import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { READ_ONLY_TOOLS } from '../../src/auth/index.js';
import { startTestServer, type TestServer } from '../server/helpers.js';
import { httpSession, stdioSession, type McpSession } from './helpers.js';

const AGENT_SCOPES = ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'];

describe('scoped keys: one sandbox, some tools (real server, official SDK client)', () => {
  let s: TestServer;
  let mine: string;
  let other: string;
  let scoped: string;
  before(async () => {
    s = await startTestServer();
    const create = async () => {
      const r = await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: {} });
      assert.equal(r.status, 201, r.text);
      return r.json.id as string;
    };
    mine = await create();
    other = await create();
    const r = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: { name: 'agent', scopes: AGENT_SCOPES, sandboxId: mine, tools: ['file_read', 'exec'] },
    });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.sandboxId, mine);
    assert.deepEqual(r.json.tools, ['exec', 'file_read']);
    scoped = r.json.key as string;
  });
  after(async () => {
    await s.close();
  });

  async function checkSession(mcp: McpSession): Promise<void> {
    assert.deepEqual(await mcp.toolNames(), ['exec', 'file_read']);
    const create = await mcp.call('sandbox_create', {});
    assert.equal(create.isError, true);
    assert.match(
      create.text,
      /FORBIDDEN: the tool 'sandbox_create' is not available to this API key/,
    );
    const write = await mcp.call('file_write', { sandboxId: mine, path: 'x', content: 'x' });
    assert.equal(write.isError, true);
    assert.match(write.text, /not available/);

    const own = await mcp.call('exec', { command: 'echo in-my-sandbox' });
    assert.equal(own.isError, false, own.text);
    assert.match(own.text, /in-my-sandbox/);
    const explicit = await mcp.call('exec', { sandboxId: mine, command: 'true' });
    assert.equal(explicit.isError, false, explicit.text);

    const foreign = await mcp.call('exec', { sandboxId: other, command: 'echo escaped' });
    assert.equal(foreign.isError, true);
    assert.match(foreign.text, /SANDBOX_NOT_FOUND/);
    assert.doesNotMatch(foreign.text, /escaped/);
    const foreignRead = await mcp.call('file_read', { sandboxId: other, path: '/etc/hostname' });
    assert.equal(foreignRead.isError, true);
    assert.match(foreignRead.text, /SANDBOX_NOT_FOUND/);
  }

  it('over Streamable HTTP: only its tools are listed; others and other sandboxes are refused', async () => {
    const mcp = await httpSession(s.url, scoped);
    try {
      await checkSession(mcp);
    } finally {
      await mcp.close();
    }
  });

  it('over stdio: the same restrictions, learned from the server (whoami), not from flags', async () => {
    const mcp = await stdioSession(s.url, scoped);
    try {
      await checkSession(mcp);
      assert.match(mcp.stderr(), new RegExp(`sandbox ${mine}, tools exec,file_read`));
    } finally {
      await mcp.close();
    }
  });

  it('the HTTP API enforces the same restrictions when the agent calls it directly', async () => {
    const key = scoped;
    assert.equal((await s.req('GET', `/v1/sandboxes/${other}`, { key })).status, 404);
    const foreignExec = await s.req('POST', `/v1/sandboxes/${other}/exec`, {
      key,
      body: { command: 'true' },
    });
    assert.equal(foreignExec.status, 404);
    assert.equal(foreignExec.json.code, 'SANDBOX_NOT_FOUND');
    const create = await s.req('POST', '/v1/sandboxes', { key, body: {} });
    assert.equal(create.status, 403);
    assert.equal(create.json.code, 'FORBIDDEN');
    assert.equal((await s.req('GET', '/v1/sandboxes', { key })).status, 403);
    assert.equal((await s.req('GET', '/v1/audit', { key })).status, 403);
    // file_write is not among its tools, so its route is closed even on its own sandbox.
    const put = await s.req('PUT', `/v1/sandboxes/${mine}/files?path=a.txt`, {
      key,
      rawBody: 'x',
      headers: { 'content-type': 'application/octet-stream' },
    });
    assert.equal(put.status, 403);
    assert.match(put.json.message, /restricted to the MCP tools exec, file_read/);
    assert.equal((await s.req('DELETE', `/v1/sandboxes/${mine}`, { key })).status, 403);
    // Its own routes work.
    const exec = await s.req('POST', `/v1/sandboxes/${mine}/exec`, {
      key,
      body: { command: 'true' },
    });
    assert.equal(exec.status, 200, exec.text);
    const who = await s.req('GET', '/v1/whoami', { key });
    assert.equal(who.json.sandboxId, mine);
    assert.deepEqual(who.json.tools, ['exec', 'file_read']);
  });

  it('a sandbox-only key (all tools) cannot create sandboxes or see others; sandbox_list shows its own', async () => {
    const r = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: { name: 'one-sandbox', scopes: AGENT_SCOPES, sandboxId: mine },
    });
    assert.equal(r.status, 201, r.text);
    const key = r.json.key as string;
    assert.equal((await s.req('POST', '/v1/sandboxes', { key, body: {} })).status, 403);
    assert.equal(
      (await s.req('GET', `/v1/sandboxes/${other}/files/list?path=/`, { key })).status,
      404,
    );
    const mcp = await httpSession(s.url, key);
    try {
      const names = await mcp.toolNames();
      assert.ok(
        names.includes('sandbox_create'),
        'listed (the scopes allow it) but the server refuses it',
      );
      const created = await mcp.call('sandbox_create', {});
      assert.equal(created.isError, true);
      assert.match(created.text, /FORBIDDEN: This API key is restricted to sandbox/);
      const list = await mcp.call('sandbox_list', {});
      assert.match(list.text, new RegExp(mine));
      assert.doesNotMatch(list.text, new RegExp(other));
    } finally {
      await mcp.close();
    }
  });

  it('a read-only key lists only tools that change nothing', async () => {
    const r = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: {
        name: 'ro',
        scopes: ['sandboxes:read'],
        sandboxId: mine,
        tools: [...READ_ONLY_TOOLS],
      },
    });
    assert.equal(r.status, 201, r.text);
    const mcp = await httpSession(s.url, r.json.key as string);
    try {
      const names = await mcp.toolNames();
      assert.deepEqual([...names].sort(), [...READ_ONLY_TOOLS].sort());
      const tools = (await mcp.client.listTools()).tools;
      assert.ok(tools.every((t) => t.annotations?.readOnlyHint === true));
      const info = tools.find((t) => t.name === 'sandbox_info');
      assert.ok(
        !(info?.inputSchema.required ?? []).includes('sandboxId'),
        'sandboxId defaults to its sandbox',
      );
      const ran = await mcp.call('exec', { command: 'true' });
      assert.equal(ran.isError, true);
      const files = await mcp.call('file_list', { path: '/workspace' });
      assert.equal(files.isError, false, files.text);
    } finally {
      await mcp.close();
    }
  });

  it('a stored tool list that does not parse means no tools, never unrestricted', async () => {
    const r = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: { name: 'corrupt', scopes: AGENT_SCOPES, tools: ['exec'] },
    });
    assert.equal(r.status, 201, r.text);
    await s.cp.store.db
      .updateTable('api_keys')
      .set({ tools: '{not json' })
      .where('id', '=', r.json.id as string)
      .execute();
    const key = r.json.key as string;
    const exec = await s.req('POST', `/v1/sandboxes/${mine}/exec`, {
      key,
      body: { command: 'true' },
    });
    assert.equal(exec.status, 403);
    assert.deepEqual((await s.req('GET', '/v1/whoami', { key })).json.tools, []);
    const mcp = await httpSession(s.url, key);
    try {
      assert.deepEqual(await mcp.toolNames(), []);
    } finally {
      await mcp.close();
    }
  });

  it('key creation refuses admin+restriction, unknown tools and sandboxes it cannot see', async () => {
    const post = (body: Record<string, unknown>) =>
      s.req('POST', '/v1/keys', { key: s.adminKey, body });
    const admin = await post({ name: 'x', scopes: ['admin'], sandboxId: mine });
    assert.equal(admin.status, 400);
    assert.match(admin.json.message, /cannot have the admin scope/);
    const unknownTool = await post({ name: 'x', scopes: AGENT_SCOPES, tools: ['rm_rf'] });
    assert.equal(unknownTool.status, 400);
    const missing = await post({
      name: 'x',
      scopes: AGENT_SCOPES,
      sandboxId: 'sb-aaaaaaaaaaaaaaaaaaaa',
    });
    assert.equal(missing.status, 404);
    const otherTenant = await post({
      name: 'x',
      tenant: 'other',
      scopes: AGENT_SCOPES,
      sandboxId: mine,
    });
    assert.equal(otherTenant.status, 404, 'a sandbox of another tenant is not found');
    const listed = await s.req('GET', '/v1/keys', { key: s.adminKey });
    const agent = (listed.json.items as { name: string; sandboxId: string | null }[]).find(
      (k) => k.name === 'agent',
    );
    assert.equal(agent?.sandboxId, mine);
  });
});
