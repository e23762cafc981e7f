/**
 * The gateway with the real sandbox engine: a command inside a sandbox reaches the network
 * only through its own proxy. Traffic stays on loopback: the upstream servers listen on the
 * host's 127.0.0.1 and the sandbox has only its own loopback.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createEgressGateway } from '../../src/egress/index.js';
import type { EgressGateway } from '../../src/egress/index.js';
import { createSandboxRuntime } from '../../src/sandbox/index.js';
import { testEngineConfig } from '../sandbox/helpers.js';
import type { SandboxInfo, SandboxRuntime } from '../../src/sandbox/index.js';
import {
  collectingSink,
  mapResolver,
  policy,
  startHttpServer,
  tempDir,
  waitFor,
} from './helpers.js';

describe('egress gateway with a real sandbox', () => {
  const socketDir = tempDir('pal-eg-s-');
  let engine: SandboxRuntime | undefined;
  let gateway: EgressGateway;
  let upstream: Awaited<ReturnType<typeof startHttpServer>>;
  const sink = collectingSink();
  let sandboxA: SandboxInfo;
  let sandboxB: SandboxInfo;
  let socketA = '';

  before(async () => {
    upstream = await startHttpServer();
    gateway = createEgressGateway({
      socketDir: socketDir.path,
      sink,
      // Safety net: nothing in this test may leave loopback.
      connectGuard: (address) => address.family === 4 && address.bytes[0] === 127,
      resolver: mapResolver({
        'allowed.test': ['127.0.0.1'],
        'denied.test': ['127.0.0.1'],
        'private.test': ['10.0.0.7'],
      }),
    });
    engine = await createSandboxRuntime(testEngineConfig('egress'));
    const p = upstream.port;
    // The engine calls the provider once the sandbox's id and host uid exist, before bwrap
    // (running as that uid) bind-mounts the socket the gateway creates for it.
    sandboxA = await engine.create({
      network: async (sb) => {
        const net = await gateway.attach(
          sb.id,
          policy([`allowed.test:${p}`, `private.test:${p}`, `127.0.0.1:${p}`]),
          {
            uid: sb.hostUid,
            gid: sb.hostGid,
          },
        );
        socketA = net.bridges[0]!.hostSocket;
        return { ...net, release: () => gateway.detach(sb.id) };
      },
    });
    sandboxB = await engine.create({
      network: async (sb) => {
        const net = await gateway.attach(sb.id, policy([]), { uid: sb.hostUid, gid: sb.hostGid });
        return { ...net, release: () => gateway.detach(sb.id) };
      },
    });
  });

  after(async () => {
    await engine?.close();
    await gateway.close();
    await upstream.close();
    socketDir.remove();
  });

  async function sh(
    id: string,
    command: string,
  ): Promise<{ code: number | null; out: string; err: string }> {
    const started = Date.now();
    const result = await engine!.run(id, { command, timeoutMs: 20_000 });
    if (process.env.EGRESS_TEST_TIMING) console.error(`${Date.now() - started} ms: ${command}`);
    return { code: result.exitCode, out: result.stdout.toString(), err: result.stderr.toString() };
  }

  test('curl through the proxy reaches an allowed server; a denied one gets 403 with the reason', async () => {
    const p = upstream.port;
    const ok = await sh(sandboxA.id, `curl -sS http://allowed.test:${p}/from-sandbox`);
    assert.equal(ok.code, 0, ok.err);
    assert.equal(ok.out, 'hello from 127.0.0.1 /from-sandbox');
    const denied = await sh(sandboxA.id, `curl -sS -D - -o /dev/null http://denied.test:${p}/`);
    assert.match(denied.out, /^HTTP\/1\.1 403/);
    assert.match(denied.out, /X-Palisade-Blocked: no allow rule matches denied\.test/i);
    const privateName = await sh(
      sandboxA.id,
      `curl -sS -D - -o /dev/null http://private.test:${p}/`,
    );
    assert.match(privateName.out, /X-Palisade-Blocked: private\.test resolves to 10\.0\.0\.7/i);
    // socks5h through ALL_PROXY: the name is resolved by the gateway.
    const socks = await sh(
      sandboxA.id,
      `curl -sS --proxy "$ALL_PROXY" http://allowed.test:${p}/socks`,
    );
    assert.equal(socks.code, 0, socks.err);
    assert.equal(socks.out, 'hello from 127.0.0.1 /socks');
    await waitFor(() =>
      sink.events.some(
        (e) => e.sandboxId === sandboxA.id && e.protocol === 'socks5' && e.decision === 'allow',
      ),
    );
  });

  test('a direct connection that ignores the proxy has no route, and the host loopback is not reachable', async () => {
    const before = upstream.connections();
    const external = await sh(
      sandboxA.id,
      `curl -sS --noproxy '*' --max-time 5 http://10.255.255.1/`,
    );
    assert.notEqual(external.code, 0);
    assert.match(external.err, /unreachable|Couldn't connect|Failed to connect/i);
    const hostLoopback = await sh(
      sandboxA.id,
      `curl -sS --noproxy '*' --max-time 5 http://127.0.0.1:${upstream.port}/`,
    );
    assert.notEqual(hostLoopback.code, 0, 'the sandbox loopback is its own, not the host');
    assert.equal(upstream.connections(), before);
  });

  test('DNS lookups fail inside the sandbox', async () => {
    const lookup = await sh(
      sandboxA.id,
      'getent hosts allowed.test || getent hosts example.com; echo "exit=$?"',
    );
    assert.match(lookup.out, /exit=2/);
    const curl = await sh(sandboxA.id, `curl -sS --noproxy '*' --max-time 5 http://example.com/`);
    assert.notEqual(curl.code, 0);
    assert.match(curl.err, /resolve/i);
  });

  test("another sandbox's proxy socket is unreachable, and its own proxy applies its own policy", async () => {
    const p = upstream.port;
    const probe = await sh(
      sandboxB.id,
      `test -e '${socketA}' && echo visible || echo absent; ls /.palisade/net`,
    );
    assert.match(probe.out, /^absent/);
    assert.equal(probe.out.split('\n')[1], '3128.sock');
    const viaOwnProxy = await sh(
      sandboxB.id,
      `curl -sS -D - -o /dev/null http://allowed.test:${p}/`,
    );
    assert.match(viaOwnProxy.out, /^HTTP\/1\.1 403/, 'sandbox B has an empty policy');
    const events = await waitFor(
      () => gateway.recentDenials(sandboxB.id).length >= 1 && gateway.recentDenials(sandboxB.id),
    );
    assert.ok(events.every((e) => e.sandboxId === sandboxB.id));
  });
});
