import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parsePolicyObject } from '../../src/policy/index.js';
import { startTestServer, type TestServer } from './helpers.js';

describe('permission policy on exec', () => {
  let s: TestServer;
  let id: string;
  before(async () => {
    const layer = parsePolicyObject(
      { permissions: { default: 'allow', deny: ['Bash(rm:*)'], ask: ['Bash(curl:*)'] } },
      '/etc/palisade-private/operator/policy.yaml',
      'operator',
    );
    s = await startTestServer({
      policyLayers: [layer],
      config: { approvals: { timeoutMs: 1000 } },
    });
    const r = await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: {} });
    id = r.json.id;
  });
  after(async () => {
    await s.close();
  });

  it('a denied command is 403 with the explanation (naming the policy file, never its host path) and never runs', async () => {
    await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'touch /workspace/keep' },
    });
    const r = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'echo hi && rm -f /workspace/keep' },
    });
    assert.equal(r.status, 403);
    assert.equal(r.json.code, 'POLICY_DENIED');
    assert.match(r.json.message, /rm/);
    assert.match(r.json.message, /operator policy policy\.yaml/);
    assert.doesNotMatch(r.text, /palisade-private/);
    const argv = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { argv: ['rm', '-f', '/workspace/keep'] },
    });
    assert.equal(argv.status, 403);
    const still = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'ls /workspace' },
    });
    assert.equal(still.json.stdout, 'keep\n');
    const streamed = await fetch(`${s.url}/v1/sandboxes/${id}/exec`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${s.adminKey}`,
        'content-type': 'application/json',
        accept: 'text/event-stream',
      },
      body: JSON.stringify({ command: 'rm -rf /workspace' }),
    });
    assert.equal(streamed.status, 403);
  });

  it('ask waits for a human and fails closed when no one approves in time', async () => {
    const r = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'curl http://127.0.0.1/' },
    });
    assert.equal(r.status, 403);
    assert.equal(r.json.code, 'POLICY_DENIED');
    assert.equal(r.json.details.outcome, 'expired');
    assert.match(r.json.message, /approv/);
  });

  it('policy decisions are audited', async () => {
    const r = await s.req('GET', `/v1/audit?type=policy.decision&sandboxId=${id}&limit=100`, {
      key: s.adminKey,
    });
    const decisions = r.json.items.map((x: { data: { decision: string } }) => x.data.decision);
    assert.ok(decisions.includes('deny'));
    assert.ok(decisions.includes('allow'));
  });
});

describe('per-sandbox permission policy', () => {
  let s: TestServer;
  before(async () => {
    const layer = parsePolicyObject(
      { permissions: { default: 'allow', deny: ['Bash(rm:*)'] } },
      'test:operator',
      'operator',
    );
    s = await startTestServer({ policyLayers: [layer] });
  });
  after(async () => {
    await s.close();
  });

  it('a sandbox layer tightens the operator policy for that sandbox only', async () => {
    const strict = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { policy: { permissions: { deny: ['Bash(cat:*)'] } } },
    });
    assert.equal(strict.status, 201, strict.text);
    assert.deepEqual(strict.json.policy, { permissions: { deny: ['Bash(cat:*)'] } });
    const plain = await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: {} });
    const cat = { command: 'cat /etc/hostname' };
    const denied = await s.req('POST', `/v1/sandboxes/${strict.json.id}/exec`, {
      key: s.adminKey,
      body: cat,
    });
    assert.equal(denied.status, 403);
    assert.equal(denied.json.code, 'POLICY_DENIED');
    const allowed = await s.req('POST', `/v1/sandboxes/${plain.json.id}/exec`, {
      key: s.adminKey,
      body: cat,
    });
    assert.equal(allowed.status, 200);
    const opDeny = await s.req('POST', `/v1/sandboxes/${strict.json.id}/exec`, {
      key: s.adminKey,
      body: { command: 'rm -f x' },
    });
    assert.equal(opDeny.status, 403);
  });

  it('a sandbox layer cannot loosen an operator deny', async () => {
    const loose = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { policy: { permissions: { default: 'allow', allow: ['Bash(rm:*)'] } } },
    });
    assert.equal(loose.status, 201, loose.text);
    const r = await s.req('POST', `/v1/sandboxes/${loose.json.id}/exec`, {
      key: s.adminKey,
      body: { command: 'rm -f x' },
    });
    assert.equal(r.status, 403);
  });

  it('malformed permission and network policies are 400 with a clear message, and nothing is created', async () => {
    const before = await s.req('GET', '/v1/sandboxes', { key: s.adminKey });
    const bad = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { policy: { permissions: { deny: ['Bash(rm'] } } },
    });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.code, 'INVALID_POLICY');
    const net = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { policy: { network: { allow: ['exa mple.com'] } } },
    });
    assert.equal(net.status, 400);
    assert.equal(net.json.code, 'INVALID_POLICY');
    assert.match(net.json.message, /network\.allow\[0\]/);
    const extra = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: { policy: { rules: [] } },
    });
    assert.equal(extra.status, 400);
    const afterList = await s.req('GET', '/v1/sandboxes', { key: s.adminKey });
    assert.equal(afterList.json.items.length, before.json.items.length);
  });
});
