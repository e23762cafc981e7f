// Attack suite for seed 001 (Agentum), network findings: the sandbox's only way out is the
// egress gateway, and the gateway refuses internal addresses however they are spelled. Every
// destination here is on loopback: the gateway refuses before connecting, and the one
// connection it makes is to a server this test runs on 127.0.0.1.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { execIn, startPalisade, type Palisade } from './fixture.js';

interface ExecResult {
  exitCode: number | null;
  stdout: string;
  stderr: string;
}

async function run(p: Palisade, id: string, command: string): Promise<ExecResult> {
  const r = await execIn(p, id, command);
  assert.equal(r.status, 200, `${command}: ${r.text}`);
  return r.json as ExecResult;
}

describe('001 Agentum: network findings against a real palisade serve', () => {
  let p: Palisade;
  let server: Server;
  let port = 0;
  const paths: string[] = [];

  before(async () => {
    server = createServer((req, res) => {
      paths.push(req.url ?? '');
      res.end('upstream');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as { port: number }).port;
    p = await startPalisade();
  });
  after(async () => {
    await p?.close();
    server?.closeAllConnections();
    await new Promise<void>((r) => server?.close(() => r()));
  });

  it('001 #4: network is opt-in: only what a sandbox’s rules allow leaves, through the gateway; everything else gets 403 or has no route', async () => {
    const off = await p.createSandbox();
    const none = await run(
      p,
      off,
      `curl -sS --max-time 3 http://127.0.0.1:${port}/off; echo "rc=$?"`,
    );
    assert.doesNotMatch(none.stdout, /rc=0|upstream/);
    const on = await p.createSandbox({ policy: { network: { allow: [`127.0.0.1:${port}`] } } });
    const env = await run(p, on, 'env | grep -i "^https\\?_proxy=" | wc -l');
    assert.notEqual(env.stdout.trim(), '0', 'proxy variables point at the gateway');
    const ok = await run(
      p,
      on,
      `curl -sS --noproxy '' --max-time 5 http://127.0.0.1:${port}/allowed`,
    );
    assert.equal(ok.stdout, 'upstream', ok.stderr);
    const other = await run(
      p,
      on,
      `curl -sS --noproxy '' --max-time 5 -o /dev/null -D - http://example.com:${port}/other`,
    );
    assert.match(other.stdout, /^HTTP\/1\.1 403/);
    assert.match(other.stdout, /X-Palisade-Blocked: no allow rule matches example\.com/i);
    // Ignoring the proxy does not help: the namespace has no route anywhere.
    const direct = await run(
      p,
      on,
      `curl -sS --noproxy '*' --max-time 3 http://127.0.0.1:${port}/direct; echo "rc=$?"`,
    );
    assert.doesNotMatch(direct.stdout, /rc=0|upstream/);
    assert.deepEqual(paths, ['/allowed']);
    paths.length = 0;
  });

  it('001 #4b: SSRF through the egress gateway: loopback in every spelling is refused even when any host is allowed, and only an explicit IP rule opens it', async () => {
    const id = await p.createSandbox({ policy: { network: { allow: [`*:${port}`] } } });
    const spellings = [
      `http://localhost:${port}/`,
      `http://127.0.0.1:${port}/`,
      `http://127.0.0.2:${port}/`,
      `http://[::1]:${port}/`,
      `http://2130706433:${port}/`,
      `http://0x7f.1:${port}/`,
      `http://[::ffff:127.0.0.1]:${port}/`,
    ];
    for (const url of spellings) {
      const r = await run(p, id, `curl -sS --noproxy '' --max-time 5 -o /dev/null -D - '${url}'`);
      assert.match(r.stdout, /^HTTP\/1\.1 403/, url);
      assert.match(r.stdout, /X-Palisade-Blocked: .*loopback/i, url);
    }
    // CONNECT (how HTTPS goes) and SOCKS5 with remote resolution are vetted the same way.
    const tunnel = await run(
      p,
      id,
      `curl -sS -p --noproxy '' --max-time 5 http://localhost:${port}/t; echo "rc=$?"`,
    );
    assert.doesNotMatch(tunnel.stdout, /rc=0|upstream/);
    assert.match(tunnel.stderr, /CONNECT tunnel failed, response 403/);
    const socks = await run(
      p,
      id,
      `echo "$ALL_PROXY"; curl -sS --noproxy "" --proxy "$ALL_PROXY" --max-time 5 http://localhost:${port}/s; echo "rc=$?"`,
    );
    assert.match(socks.stdout, /^socks5h:\/\//);
    assert.doesNotMatch(socks.stdout, /rc=0|upstream/);
    assert.match(socks.stderr, /SOCKS/);
    assert.deepEqual(paths, [], 'no request reached the host service');
    // Every refusal is visible to the operator.
    const view = await p.req('GET', `/v1/sandboxes/${id}/network`);
    assert.ok(view.json.stats.denied >= spellings.length, view.text);
    // The operator (or tenant) can open exactly one internal address, by IP.
    const put = await p.req('PUT', `/v1/sandboxes/${id}/network`, {
      body: { allow: [`127.0.0.1:${port}`] },
    });
    assert.equal(put.status, 200, put.text);
    const ok = await run(p, id, `curl -sS --noproxy '' --max-time 5 http://127.0.0.1:${port}/ok`);
    assert.equal(ok.stdout, 'upstream', ok.stderr);
    const still = await run(
      p,
      id,
      `curl -sS --noproxy '' --max-time 5 -o /dev/null -D - http://127.0.0.2:${port}/`,
    );
    assert.match(still.stdout, /^HTTP\/1\.1 403/);
    assert.deepEqual(paths, ['/ok']);
  });
});
