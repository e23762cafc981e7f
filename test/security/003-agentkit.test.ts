// Attack suite for seed 003 (AgentKit P2 review): each finding tried against a real
// `palisade serve` (privilege-separated, as in production) over its real HTTP port, plus the
// two controls built for it: safe configuration loading and policy hot-reload.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { WebSocket } from 'ws';
import { PalisadeClient, ServerError } from '../../src/client/index.js';
import { startFrontProxy } from '../client/helpers.js';
import { WsClient, type Res } from '../server/helpers.js';
import { execIn, startPalisade, type Palisade } from './fixture.js';

const CLI = join(import.meta.dirname, '..', 'server', 'cli-entry.ts');

const BASE_POLICY = `permissions:
  default: allow
  deny:
    - "Bash(rm:*)"
    - "Bash(kill -9:*)"
    - "Bash(kill -KILL:*)"
    - "Bash(format:*)"
  ask:
    - "Bash(printf approve-me:*)"
`;

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex');

// Failing probes come from their own loopback address each, so the failed-auth throttle never
// turns the 401 under test (or the next legitimate request from 127.0.0.1) into a 429.
let nextProbe = 0;
const probeAddress = () => `127.3.${Math.floor(nextProbe / 250) % 250}.${(nextProbe++ % 250) + 2}`;

/** WebSocket handshake outcome: the HTTP status of a refused upgrade, or 101. */
function wsHandshake(url: string, key: string | undefined): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace('http', 'ws')}/v1/ws`, {
      ...(key !== undefined ? { headers: { authorization: `Bearer ${key}` } } : {}),
      localAddress: key === undefined ? probeAddress() : '127.0.0.1',
    });
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('open', () => {
      resolve(101);
      ws.close();
    });
    ws.once('error', (err) => reject(err));
  });
}

async function eventually<T>(probe: () => Promise<T | undefined>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await sleep(50);
  }
}

describe('seed 003 (AgentKit): attacks against a real palisade serve', () => {
  let p: Palisade;
  let sandbox: string;
  let agent: string;
  let approver: string;
  let approver2: string;
  let policyPath: string;
  let scratch: string;

  before(async () => {
    p = await startPalisade({ policy: BASE_POLICY });
    policyPath = join(p.dataDir, 'operator-policy.yaml');
    scratch = mkdtempSync(join(tmpdir(), 'palisade-003-'));
    agent = (
      await p.createKey({
        name: 'agent',
        scopes: ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'],
      })
    ).key;
    approver = (await p.createKey({ name: 'human', scopes: ['approvals:write'] })).key;
    approver2 = (await p.createKey({ name: 'human2', scopes: ['approvals:write'] })).key;
    sandbox = await p.createSandbox({}, agent);
  });
  after(async () => {
    await p?.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  /** A request with a wrong credential, from its own loopback address. */
  async function refused(authorization: string | undefined): Promise<Res> {
    const url = new URL(p.url);
    return new Promise((resolve, reject) => {
      const req = httpRequest(
        {
          host: url.hostname,
          port: url.port,
          path: '/v1/sandboxes',
          headers: authorization !== undefined ? { authorization } : {},
          localAddress: probeAddress(),
          agent: false,
        },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              headers: new Headers(res.headers as Record<string, string>),
              text,
              json: text ? JSON.parse(text) : undefined,
            }),
          );
        },
      );
      req.on('error', reject);
      req.end();
    });
  }

  it('003 U1.1: key checks leak nothing: every wrong key, whatever its length or where it differs, is refused alike; the right key works', async () => {
    const [prefix, secret] = [
      agent.slice(0, agent.lastIndexOf('_')),
      agent.slice(agent.lastIndexOf('_') + 1),
    ];
    const flip = (c: string) => (c === 'A' ? 'B' : 'A');
    const wrong = [
      undefined,
      'Bearer ',
      `Bearer ${prefix}_${secret.slice(0, -1)}${flip(secret.at(-1)!)}`, // same length, last char
      `Bearer ${prefix}_${flip(secret[0]!)}${secret.slice(1)}`, // same length, first char
      `Bearer ${prefix}_${secret.slice(0, -5)}`, // shorter
      `Bearer ${agent}AAAA`, // longer
      `Bearer ${agent.toUpperCase()}`,
      `Basic ${Buffer.from(`x:${agent}`).toString('base64')}`,
    ];
    const bodies = new Set<string>();
    for (const authorization of wrong) {
      const r = await refused(authorization);
      assert.equal(r.status, 401, `${authorization}: ${r.text}`);
      bodies.add(`${r.json.code}|${r.json.message}`);
    }
    assert.equal(bodies.size, 1, [...bodies].join('\n'));
    const ok = await p.req('GET', '/v1/sandboxes', { key: agent });
    assert.equal(ok.status, 200, ok.text);
    assert.ok((ok.json.items as Array<{ id: string }>).some((s) => s.id === sandbox));
  });

  it('003 U1.2: one authentication for every transport: a revoked key fails on REST, WebSocket and MCP alike, a valid one works on all', async () => {
    const doomed = await p.createKey({
      name: 'doomed',
      scopes: ['sandboxes:read', 'sandboxes:exec'],
    });
    const mcpTools = async (key: string) => {
      const transport = new StreamableHTTPClientTransport(new URL('/mcp', p.url), {
        requestInit: { headers: { authorization: `Bearer ${key}` } },
      });
      const client = new Client({ name: 'palisade-003', version: '0.0.0' });
      try {
        await client.connect(transport);
        return (await client.listTools()).tools.map((t) => t.name);
      } finally {
        await client.close().catch(() => undefined);
      }
    };
    // Valid: all three transports accept the key.
    assert.equal((await p.req('GET', '/v1/sandboxes', { key: doomed.key })).status, 200);
    assert.equal(await wsHandshake(p.url, doomed.key), 101);
    assert.ok((await mcpTools(doomed.key)).includes('exec'));
    const revoke = await p.req('DELETE', `/v1/keys/${doomed.id}`);
    assert.ok(revoke.status === 200 || revoke.status === 204, revoke.text);
    // Revoked: all three refuse it on the next use.
    assert.equal((await refused(`Bearer ${doomed.key}`)).status, 401);
    assert.equal(await wsHandshake(p.url, doomed.key), 401);
    await assert.rejects(mcpTools(doomed.key), /UNAUTHENTICATED/);
  });

  it('003 U1.3: a WebSocket upgrade is authenticated before it is accepted: no 101 without a valid key', async () => {
    assert.equal(await wsHandshake(p.url, undefined), 401);
    const bad = `${agent.slice(0, -1)}${agent.endsWith('A') ? 'B' : 'A'}`;
    const ws = new WebSocket(`${p.url.replace('http', 'ws')}/v1/ws`, {
      headers: { authorization: `Bearer ${bad}` },
      localAddress: probeAddress(),
    });
    const status = await new Promise<number>((resolve, reject) => {
      ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.once('open', () => resolve(101));
      ws.once('error', reject);
    });
    ws.terminate();
    assert.equal(status, 401);
    assert.equal(await wsHandshake(p.url, agent), 101);
  });

  it('003 U2.1: shell rules match tokens, not substrings: rm, kill -9 and format are denied in every spelling, look-alikes run', async () => {
    const check = async (command: string) => {
      const r = await p.req('POST', `/v1/sandboxes/${sandbox}/policy/check`, {
        key: agent,
        body: { command },
      });
      assert.equal(r.status, 200, r.text);
      return r.json.decision as string;
    };
    const denied = [
      'rm -rf /workspace/keep',
      'rm\t/workspace/keep',
      '  rm    -r   /workspace/keep',
      'echo hi; rm /workspace/keep',
      'true && rm /workspace/keep',
      'echo $(rm /workspace/keep)',
      '/bin/rm /workspace/keep',
      'kill -9 1234',
      'kill -KILL 1234',
      'format C:',
    ];
    for (const command of denied) assert.equal(await check(command), 'deny', command);
    const allowed = [
      "echo 'performing rm operations'",
      'echo informatica',
      'kill -15 1234',
      'grep -r format /workspace',
    ];
    for (const command of allowed) assert.equal(await check(command), 'allow', command);
    // The real path: the denied command never runs, the look-alike does.
    assert.equal((await execIn(p, sandbox, 'touch /workspace/keep', agent)).status, 200);
    const rm = await execIn(p, sandbox, 'rm\t/workspace/keep', agent);
    assert.equal(rm.status, 403, rm.text);
    assert.equal(rm.json.code, 'POLICY_DENIED');
    const echo = await execIn(p, sandbox, "echo 'performing rm operations'; ls /workspace", agent);
    assert.equal(echo.status, 200, echo.text);
    assert.equal(echo.json.stdout, 'performing rm operations\nkeep\n');
  });

  it('003 U3.1: serve --environment-file and --config cannot set NODE_OPTIONS or other process variables; documented settings load', async () => {
    const marker = join(scratch, 'pwned');
    const evil = join(scratch, 'evil.cjs');
    writeFileSync(evil, `require('fs').writeFileSync(${JSON.stringify(marker)}, 'x')`);
    const serve = (args: string[]) =>
      new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(
          process.execPath,
          [
            '--import',
            'tsx',
            CLI,
            'serve',
            '--port',
            '0',
            '--data-dir',
            join(scratch, 'data'),
            ...args,
          ],
          { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } },
        );
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
        child.once('exit', (status) => {
          clearTimeout(timer);
          resolve({ status, stdout, stderr });
        });
      });
    const envFile = join(scratch, 'node-options.env');
    writeFileSync(envFile, `PALISADE_DATA_DIR=${scratch}\nNODE_OPTIONS=--require ${evil}\n`, {
      mode: 0o600,
    });
    // A config file is a map of serve options only: no env section, no internal flags.
    const config = join(scratch, 'serve.yaml');
    writeFileSync(config, `port: 0\nenv:\n  NODE_OPTIONS: --require ${evil}\n`, { mode: 0o600 });
    const loose = join(scratch, 'loose.env');
    writeFileSync(loose, 'PALISADE_URL=http://127.0.0.1:1\n');
    chmodSync(loose, 0o666);
    const [e, c, l] = await Promise.all([
      serve(['--environment-file', envFile]),
      serve(['--config', config]),
      serve(['--environment-file', loose]),
    ]);
    assert.equal(e.status, 3, `${e.stdout} ${e.stderr}`);
    assert.match(e.stderr, /node-options\.env:2: NODE_OPTIONS is not a Palisade setting/);
    assert.equal(c.status, 3, `${c.stdout} ${c.stderr}`);
    assert.match(c.stderr, /serve\.yaml:2: unknown key "env"; allowed keys are/);
    assert.equal(l.status, 3, `${l.stdout} ${l.stderr}`);
    assert.match(l.stderr, /writable by group or others.*chmod go-w/);
    for (const r of [e, c, l]) assert.doesNotMatch(r.stdout, /listening/);
    assert.equal(existsSync(marker), false, 'the injected NODE_OPTIONS never ran');
    // The legitimate path: a documented variable from an env file reaches the command.
    const good = join(scratch, 'good.env');
    writeFileSync(good, `PALISADE_DATA_DIR=${p.dataDir}\n`, { mode: 0o600 });
    const keys = spawnSync(
      process.execPath,
      ['--import', 'tsx', CLI, '--environment-file', good, 'keys', 'list'],
      { encoding: 'utf8', timeout: 30_000, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } },
    );
    assert.equal(keys.status, 0, keys.stderr);
    assert.match(keys.stdout, /\bhuman2\b/);
  });

  it('003 U3.2: the SDK retries 503 and 429 from the real server with capped, jittered exponential backoff; a POST is never retried', async () => {
    const front = await startFrontProxy(p.url);
    try {
      const client = (retries: number) =>
        new PalisadeClient({
          baseUrl: front.url,
          apiKey: agent,
          retries,
          retryBaseDelayMs: 100,
          retryMaxDelayMs: 400,
        });
      const ceilings = [100, 200, 400, 400];
      const gaps: number[] = [];
      for (let run = 0; run < 3; run++) {
        front.reset();
        const at: number[] = [];
        front.plan = (method, _path, nth) => {
          at.push(Date.now());
          return method === 'GET' && nth <= 4 ? { kind: 'status', status: 503 } : { kind: 'proxy' };
        };
        const info = await client(4).getSandboxInfo(sandbox);
        assert.equal(info.id, sandbox);
        assert.equal(at.length, 5, 'four 503s, then the real answer');
        for (let i = 0; i < 4; i++) {
          const gap = at[i + 1]! - at[i]!;
          assert.ok(
            gap <= ceilings[i]! + 200,
            `retry ${i + 1} waited ${gap} ms > ceiling ${ceilings[i]}`,
          );
          gaps.push(gap / ceilings[i]!);
        }
      }
      // Full jitter: the waits are spread below their ceilings, not fixed at them.
      assert.ok(
        gaps.some((g) => g < 0.8),
        `no jitter seen: ${gaps.join(', ')}`,
      );
      // A 429 with Retry-After is waited out, then the call succeeds.
      front.reset();
      front.plan = (method, _path, nth) =>
        method === 'GET' && nth === 1
          ? { kind: 'status', status: 429, retryAfter: '1' }
          : { kind: 'proxy' };
      const started = Date.now();
      assert.equal((await client(2).getSandboxInfo(sandbox)).id, sandbox);
      assert.ok(Date.now() - started >= 950);
      // Exec is not idempotent: one attempt, the 503 reaches the caller.
      front.reset();
      front.plan = () => ({ kind: 'status', status: 503 });
      const sb = client(4).sandbox(sandbox);
      await assert.rejects(sb.commands.run('echo once'), ServerError);
      assert.equal(front.count('POST', `/v1/sandboxes/${sandbox}/exec`), 1);
    } finally {
      await front.close();
    }
  });

  it('003 U4.1: concurrent execs, reads and destroys of one sandbox: every answer is clean, the final state consistent', async () => {
    const victim = await p.createSandbox({}, agent);
    const ops = [
      ...Array.from({ length: 6 }, (_, i) => execIn(p, victim, `echo c${i}`, agent)),
      ...Array.from({ length: 6 }, () => p.req('GET', `/v1/sandboxes/${victim}`, { key: agent })),
      p.req('DELETE', `/v1/sandboxes/${victim}`, { key: agent }),
      p.req('DELETE', `/v1/sandboxes/${victim}`, { key: agent }),
      ...Array.from({ length: 4 }, (_, i) => execIn(p, victim, `echo d${i}`, agent)),
    ];
    const results = await Promise.all(ops);
    for (const r of results) assert.ok(r.status < 500, `${r.status} ${r.text}`);
    const deletes = results.slice(12, 14).map((r) => r.status);
    assert.ok(deletes.includes(200) || deletes.includes(204), deletes.join(','));
    const final = await p.req('GET', `/v1/sandboxes/${victim}`, { key: agent });
    assert.equal(final.json.state, 'terminated', final.text);
    const late = await execIn(p, victim, 'echo after', agent);
    assert.equal(late.status, 409, late.text);
    // The other sandbox is untouched.
    assert.equal((await execIn(p, sandbox, 'echo fine', agent)).json.stdout, 'fine\n');
  });

  it('003 U4.4: WebSocket output is isolated per execution: each subscriber gets only the execution it subscribed to', async () => {
    const colleague = (
      await p.createKey({ name: 'colleague', scopes: ['sandboxes:read', 'sandboxes:exec'] })
    ).key;
    const outsider = (
      await p.createKey({ name: 'outsider', tenant: 'beta', scopes: ['sandboxes:read'] })
    ).key;
    const one = new WsClient(p.url, agent);
    const two = new WsClient(p.url, colleague);
    const three = new WsClient(p.url, outsider);
    await Promise.all([one.opened, two.opened, three.opened]);
    try {
      const start = async (tag: string) => {
        const r = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
          key: agent,
          body: { command: `sleep 1; for i in 1 2; do echo ${tag}-$i; done`, background: true },
        });
        assert.equal(r.status, 202, r.text);
        return r.json.id as string;
      };
      const [execOne, execTwo] = await Promise.all([start('one'), start('two')]);
      one.ws.send(JSON.stringify({ type: 'subscribe', execId: execOne }));
      two.ws.send(JSON.stringify({ type: 'subscribe', execId: execTwo }));
      // Another tenant's key cannot subscribe to either.
      three.ws.send(JSON.stringify({ type: 'subscribe', execId: execOne }));
      await one.waitFor((m) => m.type === 'exec.exit' && m.execId === execOne);
      await two.waitFor((m) => m.type === 'exec.exit' && m.execId === execTwo);
      await three.waitFor((m) => m.type === 'error');
      assert.equal(one.output(execOne), 'one-1\none-2\n');
      assert.equal(two.output(execTwo), 'two-1\ntwo-2\n');
      const seen = (c: WsClient) => [
        ...new Set(c.messages.map((m) => m.execId).filter((x) => x !== undefined)),
      ];
      assert.deepEqual(seen(one), [execOne]);
      assert.deepEqual(seen(two), [execTwo]);
      assert.ok(!three.messages.some((m) => m.type === 'exec.output'));
    } finally {
      for (const c of [one, two, three]) c.ws.terminate();
    }
  });

  it('003 U4.5: concurrent approve and deny of one pending exec: exactly one wins and the exec follows it', async () => {
    for (let round = 0; round < 3; round++) {
      const command = `printf approve-me ${round}`;
      const running = execIn(p, sandbox, command, agent);
      const pending = await eventually(async () => {
        const r = await p.req('GET', '/v1/approvals', { key: approver });
        return (r.json.items as Array<{ id: string; command: string }>).find(
          (a) => a.command === command,
        );
      });
      const [a, d] = await Promise.all([
        p.req('POST', `/v1/approvals/${pending.id}/approve`, { key: approver }),
        p.req('POST', `/v1/approvals/${pending.id}/deny`, {
          key: approver2,
          body: { reason: 'r' },
        }),
      ]);
      assert.deepEqual([a.status, d.status].sort(), [200, 409], `${a.text} ${d.text}`);
      const r = await running;
      if (a.status === 200) {
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.stdout, 'approve-me');
      } else {
        assert.equal(r.status, 403, r.text);
        assert.equal(r.json.code, 'POLICY_DENIED');
      }
    }
  });

  /** The policy file content in force, by the decision for `command`. */
  const decisionOf = async (command: string) => {
    const r = await p.req('POST', `/v1/sandboxes/${sandbox}/policy/check`, {
      key: agent,
      body: { command },
    });
    return r.json.decision as string;
  };
  const untilDecision = (command: string, decision: string) =>
    eventually(async () => ((await decisionOf(command)) === decision ? true : undefined));
  const reloadAudits = async (type: string) =>
    (await p.req('GET', `/v1/audit?type=${type}&limit=1000`)).json.items as Array<{
      data: Record<string, unknown>;
    }>;
  const restoreBase = async () => {
    writeFileSync(policyPath, BASE_POLICY);
    await untilDecision('hostname', 'allow');
    await untilDecision('uname', 'allow');
  };

  it('003 U6.1: a policy file rewritten in place applies to the next exec without a restart, audited with its hash', async () => {
    assert.equal((await execIn(p, sandbox, 'hostname', agent)).status, 200);
    // A sandbox with its own (tightening) layer gets the new operator rules too.
    const layered = await p.createSandbox(
      { policy: { permissions: { default: 'allow', deny: ['Bash(id:*)'] } } },
      agent,
    );
    assert.equal((await execIn(p, layered, 'hostname', agent)).status, 200);
    const changed = BASE_POLICY.replace(
      '    - "Bash(format:*)"\n',
      '    - "Bash(format:*)"\n    - "Bash(hostname:*)"\n',
    );
    writeFileSync(policyPath, changed);
    await untilDecision('hostname', 'deny');
    const r = await execIn(p, sandbox, 'hostname', agent);
    assert.equal(r.status, 403, r.text);
    assert.match(r.json.message, /Bash\(hostname:\*\)/);
    const layeredRun = await execIn(p, layered, 'hostname', agent);
    assert.equal(layeredRun.status, 403, layeredRun.text);
    assert.equal((await execIn(p, layered, 'id', agent)).status, 403);
    assert.equal((await execIn(p, layered, 'echo ok', agent)).json.stdout, 'ok\n');
    // Rules that did not change still apply; the reload is audited with the file's hash.
    assert.equal(await decisionOf('rm -rf /'), 'deny');
    const audits = await reloadAudits('policy.reload');
    assert.ok(
      audits.some((a) => a.data.sha256 === sha256(changed)),
      JSON.stringify(audits),
    );
    await restoreBase();
    assert.equal((await execIn(p, sandbox, 'hostname', agent)).status, 200);
    assert.equal((await execIn(p, layered, 'hostname', agent)).status, 200);
    await p.req('DELETE', `/v1/sandboxes/${layered}`, { key: agent });
  });

  it('003 U6.1: a policy file replaced by rename (as editors save) applies to the next exec', async () => {
    const changed = BASE_POLICY.replace('default: allow', 'default: allow\n  # renamed\n').replace(
      '    - "Bash(format:*)"\n',
      '    - "Bash(format:*)"\n    - "Bash(uname:*)"\n',
    );
    const tmp = join(p.dataDir, 'operator-policy.yaml.new');
    writeFileSync(tmp, changed, { mode: 0o644 });
    renameSync(tmp, policyPath);
    await untilDecision('uname', 'deny');
    const r = await execIn(p, sandbox, 'uname', agent);
    assert.equal(r.status, 403, r.text);
    assert.equal((await execIn(p, sandbox, 'hostname', agent)).status, 200);
    await restoreBase();
  });

  it('003 U6.1: an invalid policy file is refused: the old policy stays in force, the error is audited and in metrics', async () => {
    const metric = async () =>
      /^palisade_policy_reload_failing (\d)$/m.exec((await p.req('GET', '/metrics')).text)?.[1];
    assert.equal(
      await metric(),
      '0',
      JSON.stringify(await reloadAudits('policy.reload_failed')).slice(0, 2000),
    );
    const before = (await reloadAudits('policy.reload_failed')).length;
    writeFileSync(policyPath, 'permissions:\n  default: allow\n  dney: ["Bash(rm:*)"]\n');
    await eventually(async () => ((await metric()) === '1' ? true : undefined));
    const failed = await reloadAudits('policy.reload_failed');
    assert.equal(failed.length, before + 1);
    assert.match(String(failed.at(-1)?.data.error), /unknown key "dney"/);
    // The old policy (deny rm, allow the rest) still decides.
    const rm = await execIn(p, sandbox, 'rm -f /workspace/keep', agent);
    assert.equal(rm.status, 403, rm.text);
    assert.equal(
      (await execIn(p, sandbox, 'echo still-served', agent)).json.stdout,
      'still-served\n',
    );
    // A network section change is refused too (egress rules change only with a restart).
    writeFileSync(policyPath, `${BASE_POLICY}network:\n  allow: ["example.com"]\n`);
    await eventually(async () =>
      (await reloadAudits('policy.reload_failed')).length === before + 2 ? true : undefined,
    );
    assert.match(
      String((await reloadAudits('policy.reload_failed')).at(-1)?.data.error),
      /"network" section changed/,
    );
    // A policy file others could write is refused too: they would control the running policy.
    writeFileSync(policyPath, BASE_POLICY.replace('"Bash(rm:*)"', '"Bash(nothing:*)"'));
    chmodSync(policyPath, 0o666);
    await eventually(async () =>
      (await reloadAudits('policy.reload_failed')).length === before + 3 ? true : undefined,
    );
    assert.match(
      String((await reloadAudits('policy.reload_failed')).at(-1)?.data.error),
      /writable by group or others/,
    );
    assert.equal(await decisionOf('rm -f /workspace/keep'), 'deny');
    chmodSync(policyPath, 0o644);
    await restoreBase();
    await eventually(async () => ((await metric()) === '0' ? true : undefined));
  });

  it('003 U6.1: many rapid policy changes, in place and by rename: the final content always wins', async () => {
    const variant = (i: number, denied: string) =>
      BASE_POLICY.replace(
        '    - "Bash(format:*)"\n',
        `    - "Bash(format:*)"\n    - "Bash(${denied}:*)"\n    # change ${i}\n`,
      );
    let last = '';
    for (let i = 0; i < 60; i++) {
      last = variant(i, i % 2 === 0 ? 'hostname' : 'uname');
      if (i % 3 === 0) {
        const tmp = join(p.dataDir, `rapid-${i}.tmp`);
        writeFileSync(tmp, last, { mode: 0o644 });
        renameSync(tmp, policyPath);
      } else {
        writeFileSync(policyPath, last);
      }
      if (i % 10 === 0) await sleep(5);
    }
    // The last write (i = 59) denies uname and allows hostname.
    await untilDecision('uname', 'deny');
    await untilDecision('hostname', 'allow');
    await eventually(async () => {
      const audits = await reloadAudits('policy.reload');
      return audits.at(-1)?.data.sha256 === sha256(last) ? true : undefined;
    });
    await sleep(1500);
    assert.equal(await decisionOf('uname'), 'deny');
    assert.equal(await decisionOf('hostname'), 'allow');
    assert.equal(readFileSync(policyPath, 'utf8'), last);
    await restoreBase();
  });

  it('003 U6.1: SIGHUP re-reads the policy file and never stops the server', async () => {
    const logged = () => (p.output().stderr.match(/policy unchanged/g) ?? []).length;
    const beforeCount = logged();
    process.kill(p.pid, 'SIGHUP');
    await eventually(async () => (logged() > beforeCount ? true : undefined));
    assert.equal(p.child.exitCode, null);
    const r = await execIn(p, sandbox, 'echo alive', agent);
    assert.equal(r.json.stdout, 'alive\n');
    // The worker ignores a stray SIGHUP too (it cannot read the file; the supervisor does).
    if (p.workerPid !== undefined) process.kill(p.workerPid, 'SIGHUP');
    await sleep(300);
    assert.equal(
      (await execIn(p, sandbox, 'echo still-alive', agent)).json.stdout,
      'still-alive\n',
    );
  });

  it('003 U6.2: reload triggers racing each other (SIGHUP storm during writes) are serialized: the final content wins', async () => {
    let last = '';
    for (let i = 0; i < 30; i++) {
      last = BASE_POLICY.replace(
        '    - "Bash(format:*)"\n',
        `    - "Bash(format:*)"\n    - "Bash(${i % 2 === 0 ? 'uname' : 'hostname'}:*)"\n    # storm ${i}\n`,
      );
      writeFileSync(policyPath, last);
      process.kill(p.pid, 'SIGHUP');
      if (i % 5 === 0) await sleep(10);
    }
    // i = 29 denies hostname and allows uname.
    await untilDecision('hostname', 'deny');
    await untilDecision('uname', 'allow');
    await sleep(1000);
    assert.equal(await decisionOf('hostname'), 'deny');
    assert.equal(await decisionOf('uname'), 'allow');
    const audits = await reloadAudits('policy.reload');
    assert.equal(audits.at(-1)?.data.sha256, sha256(last));
    assert.equal(p.child.exitCode, null);
    await restoreBase();
  });

  it('003 U6.3: killing an exec that already ended is clean: no crash, the real exit status is kept', async () => {
    const bg = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: agent,
      body: { command: 'exit 7', background: true },
    });
    assert.equal(bg.status, 202, bg.text);
    const execId = bg.json.id as string;
    const ended = await eventually(async () => {
      const r = await p.req('GET', `/v1/sandboxes/${sandbox}/execs/${execId}`, { key: agent });
      return r.json.exitCode === 7 ? r : undefined;
    });
    assert.equal(ended.status, 200);
    const late = await p.req('POST', `/v1/sandboxes/${sandbox}/execs/${execId}/interrupt`, {
      key: agent,
    });
    assert.ok(late.status < 500, late.text);
    const after = await p.req('GET', `/v1/sandboxes/${sandbox}/execs/${execId}`, { key: agent });
    assert.equal(after.json.exitCode, 7, after.text);
    // A timeout that fires on a live command still kills it and says so.
    const slow = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: agent,
      body: { command: 'sleep 30', timeoutMs: 300 },
    });
    assert.equal(slow.status, 200, slow.text);
    assert.equal(slow.json.timedOut, true);
  });
});
