import assert from 'node:assert/strict';
import { lstatSync, statSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { createEgressGateway, PROXY_PORT } from '../../src/egress/index.js';
import type { EgressGateway, GatewayLimits } from '../../src/egress/index.js';
import { isPalisadeError } from '../../src/errors/index.js';
import type { EgressPolicy, IpAddress } from '../../src/policy/network/index.js';
import {
  captureClientHello,
  collectingSink,
  httpsOverTunnel,
  makeCertificate,
  mapResolver,
  openConnect,
  parseRawResponse,
  policy,
  proxyGet,
  rawExchange,
  readBytes,
  socks5Connect,
  startHttpServer,
  startHttpsServer,
  startTcpServer,
  tempDir,
  waitFor,
} from './helpers.js';

const OWNER =
  process.getuid?.() === 0
    ? { uid: 65534, gid: 65534 }
    : { uid: process.getuid?.() ?? 1000, gid: process.getgid?.() ?? 1000 };

interface Harness {
  gateway: EgressGateway;
  socket: string;
  sink: ReturnType<typeof collectingSink>;
  resolver: ReturnType<typeof mapResolver>;
  close(): Promise<void>;
}

/**
 * Safety net: tests must never send traffic off loopback, even if the gateway under test were
 * broken. Every attempted upstream address is recorded; anything off loopback is refused here
 * and fails the run in the final test.
 */
const offLoopbackAttempts: string[] = [];
function loopbackOnly(address: IpAddress): boolean {
  const ok = address.family === 4 ? address.bytes[0] === 127 : address.text === '::1';
  if (!ok) offLoopbackAttempts.push(address.text);
  return ok;
}

let counter = 0;
async function harness(
  egress: EgressPolicy,
  table: Record<string, string[] | string[][]> = {},
  limits: Partial<GatewayLimits> = {},
): Promise<Harness> {
  const dir = tempDir('pal-eg-');
  const sink = collectingSink();
  const resolver = mapResolver(table);
  const gateway = createEgressGateway({
    socketDir: dir.path,
    resolver,
    sink,
    limits,
    connectGuard: loopbackOnly,
  });
  const id = `sb${++counter}`;
  const network = await gateway.attach(id, egress, OWNER);
  const socket = network.bridges[0]?.hostSocket ?? '';
  return {
    gateway,
    socket,
    sink,
    resolver,
    close: async () => {
      await gateway.close();
      dir.remove();
    },
  };
}

const ID = (h: Harness): string => h.socket.split('/').at(-2) ?? '';

describe('egress gateway: attach and the bridge socket', () => {
  test('creates a 0600 socket owned by the sandbox user in a root:<sandbox gid> 0710 directory, and proxy env', async () => {
    const dir = tempDir('pal-eg-');
    const gateway = createEgressGateway({
      socketDir: `${dir.path}/sockets`,
      resolver: mapResolver({}),
    });
    try {
      const network = await gateway.attach('sandbox-a', policy([]), OWNER);
      assert.equal(network.bridges.length, 1);
      const bridge = network.bridges[0]!;
      assert.equal(bridge.port, PROXY_PORT);
      const info = lstatSync(bridge.hostSocket);
      assert.ok(info.isSocket());
      assert.equal(info.mode & 0o777, 0o600);
      assert.equal(info.uid, OWNER.uid);
      assert.equal(info.gid, OWNER.gid);
      assert.equal(
        statSync(`${dir.path}/sockets`).mode & 0o777,
        0o711,
        'shared directory: traverse only',
      );
      const sandboxDir = statSync(`${dir.path}/sockets/sandbox-a`);
      assert.equal(sandboxDir.mode & 0o777, 0o710);
      assert.equal(sandboxDir.uid, process.getuid?.());
      assert.equal(sandboxDir.gid, OWNER.gid);
      assert.equal(bridge.hostSocket, `${dir.path}/sockets/sandbox-a/proxy.sock`);
      for (const name of ['HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY', 'NO_PROXY']) {
        assert.ok(network.env?.[name], name);
        assert.equal(network.env?.[name.toLowerCase()], network.env?.[name]);
      }
      assert.equal(network.env?.HTTP_PROXY, `http://127.0.0.1:${PROXY_PORT}`);
      assert.equal(network.env?.ALL_PROXY, `socks5h://127.0.0.1:${PROXY_PORT}`);
      await assert.rejects(gateway.attach('sandbox-a', policy([]), OWNER), (e) =>
        isPalisadeError(e, 'CONFLICT'),
      );
      await gateway.detach('sandbox-a');
      assert.throws(() => lstatSync(bridge.hostSocket));
      assert.throws(
        () => lstatSync(`${dir.path}/sockets/sandbox-a`),
        'the per-sandbox directory is removed',
      );
      // Attach again after a crash left a stale socket behind: it is replaced.
      await gateway.attach('sandbox-a', policy([]), OWNER);
    } finally {
      await gateway.close();
      dir.remove();
    }
  });

  test('bad arguments are clear errors', async () => {
    const dir = tempDir('pal-eg-');
    const gateway = createEgressGateway({ socketDir: dir.path, resolver: mapResolver({}) });
    try {
      await assert.rejects(gateway.attach('../x', policy([]), OWNER), (e) =>
        isPalisadeError(e, 'INVALID_ARGUMENT'),
      );
      await assert.rejects(gateway.attach('ok', policy([]), { uid: 0, gid: 0 }), (e) =>
        isPalisadeError(e, 'INVALID_ARGUMENT'),
      );
      await assert.rejects(
        gateway.attach('ok', { allow: 'everything' } as unknown as EgressPolicy, OWNER),
        (e) => isPalisadeError(e, 'INVALID_POLICY'),
      );
      assert.throws(
        () => gateway.stats('missing'),
        (e) => isPalisadeError(e, 'SANDBOX_NOT_FOUND'),
      );
      assert.throws(
        () => createEgressGateway({ socketDir: 'relative' }),
        (e) => isPalisadeError(e, 'INVALID_ARGUMENT'),
      );
      assert.throws(
        () => createEgressGateway({ socketDir: dir.path, limits: { idleTimeoutMs: -1 } }),
        (e) => isPalisadeError(e, 'INVALID_LIMIT'),
      );
    } finally {
      await gateway.close();
      dir.remove();
    }
  });
});

describe('egress gateway: rules', () => {
  let upstream: Awaited<ReturnType<typeof startHttpServer>>;
  before(async () => {
    upstream = await startHttpServer();
  });
  after(async () => {
    await upstream.close();
  });

  test('an allowed domain is reached over plain HTTP and the event has the right fields', async () => {
    const h = await harness(policy([`a.test:${upstream.port}`, `127.0.0.1:${upstream.port}`]), {
      'a.test': ['127.0.0.1'],
    });
    try {
      const res = await proxyGet(h.socket, `http://a.test:${upstream.port}/hello?x=1`);
      assert.equal(res.status, 200);
      assert.equal(res.body, `hello from 127.0.0.1 /hello?x=1`);
      const seen = upstream.requests.at(-1)!;
      assert.equal(seen.url, '/hello?x=1', 'absolute-form is rewritten to origin-form');
      assert.equal(seen.headers.host, `a.test:${upstream.port}`);
      assert.equal(seen.headers.connection, 'close');
      const event = await waitFor(() => h.sink.events.at(-1));
      assert.equal(event.sandboxId, ID(h));
      assert.equal(event.protocol, 'http');
      assert.equal(event.host, 'a.test');
      assert.equal(event.port, upstream.port);
      assert.deepEqual(event.resolved, ['127.0.0.1']);
      assert.equal(event.address, '127.0.0.1');
      assert.equal(event.decision, 'allow');
      assert.equal(event.rule, `a.test:${upstream.port}`);
      assert.ok(event.bytesIn > 0 && event.bytesOut > 0);
      assert.ok(event.durationMs >= 0);
      assert.ok(!Number.isNaN(Date.parse(event.time)));
      assert.deepEqual(h.gateway.stats(ID(h)), {
        activeConnections: 0,
        bytesIn: event.bytesIn,
        bytesOut: event.bytesOut,
        denied: 0,
      });
    } finally {
      await h.close();
    }
  });

  test('a domain that no rule allows gets 403 with X-Palisade-Blocked and the upstream sees nothing', async () => {
    const h = await harness(policy([`a.test:${upstream.port}`, `127.0.0.1:${upstream.port}`]), {
      'b.test': ['127.0.0.1'],
    });
    try {
      const before = upstream.connections();
      const res = await proxyGet(h.socket, `http://b.test:${upstream.port}/`);
      assert.equal(res.status, 403);
      assert.match(String(res.headers['x-palisade-blocked']), /no allow rule matches b\.test/);
      assert.match(res.body, /Blocked by Palisade/);
      assert.equal(upstream.connections(), before);
      assert.equal(
        h.resolver.calls.get('b.test'),
        undefined,
        'a denied name is never even resolved',
      );
      const event = await waitFor(() => h.sink.events.at(-1));
      assert.equal(event.decision, 'deny');
      assert.equal(event.address, null);
      assert.equal(h.gateway.recentDenials(ID(h)).length, 1);
      assert.equal(h.gateway.stats(ID(h)).denied, 1);
    } finally {
      await h.close();
    }
  });

  test('deny beats allow, and *.a.test matches subdomains only, not a.test', async () => {
    const p = upstream.port;
    const h = await harness(policy([`*.a.test:${p}`, `127.0.0.1:${p}`], [`bad.a.test`]), {
      'x.a.test': ['127.0.0.1'],
      'bad.a.test': ['127.0.0.1'],
      'a.test': ['127.0.0.1'],
      'deep.x.a.test': ['127.0.0.1'],
    });
    try {
      assert.equal((await proxyGet(h.socket, `http://x.a.test:${p}/`)).status, 200);
      assert.equal((await proxyGet(h.socket, `http://deep.x.a.test:${p}/`)).status, 200);
      assert.equal(
        (await proxyGet(h.socket, `http://X.A.TEST.:${p}/`, { host: `x.a.test:${p}` })).status,
        200,
      );
      const bad = await proxyGet(h.socket, `http://bad.a.test:${p}/`);
      assert.equal(bad.status, 403);
      assert.match(String(bad.headers['x-palisade-blocked']), /denied by rule/);
      assert.equal((await proxyGet(h.socket, `http://a.test:${p}/`)).status, 403);
    } finally {
      await h.close();
    }
  });

  test('ports: a rule without ports allows only 80 and 443', async () => {
    const h = await harness(policy(['a.test', `127.0.0.0/8:${upstream.port}`]), {
      'a.test': ['127.0.0.1'],
    });
    try {
      const res = await proxyGet(h.socket, `http://a.test:${upstream.port}/`);
      assert.equal(res.status, 403);
      assert.match(String(res.headers['x-palisade-blocked']), new RegExp(`port ${upstream.port}`));
    } finally {
      await h.close();
    }
  });

  test('empty policy: nothing at all, not even loopback or allowed-looking names', async () => {
    const h = await harness(policy([]), { 'a.test': ['127.0.0.1'] });
    try {
      assert.equal((await proxyGet(h.socket, `http://a.test:${upstream.port}/`)).status, 403);
      assert.equal((await proxyGet(h.socket, `http://127.0.0.1:${upstream.port}/`)).status, 403);
      const tunnel = await openConnect(h.socket, `a.test:443`);
      assert.equal(tunnel.ok, false);
      const socks = await socks5Connect(h.socket, { domain: 'a.test', port: 443 });
      assert.equal(socks.reply, 0x02);
      socks.socket.destroy();
      assert.equal(h.resolver.calls.size, 0);
    } finally {
      await h.close();
    }
  });

  test('SSRF: special addresses are refused as literals in every spelling, even with an allow-anything rule', async () => {
    // '*' allows any public destination on 80/443; none of these may pass. The gateway never
    // connects for a refused destination, so no traffic leaves loopback even if one did pass
    // the rules and failed later.
    const h = await harness(policy(['*']));
    try {
      for (const target of [
        '169.254.169.254:80',
        '[::ffff:127.0.0.1]:80',
        '[::ffff:169.254.169.254]:80',
        '0x7f.1:80',
        '2130706433:443',
        '017700000001:80',
        '127.1:80',
        '[::1]:443',
        '[::]:80',
        '0.0.0.0:80',
        '10.0.0.1:443',
        '192.168.1.1:80',
        '100.64.0.1:80',
        '[fd00:ec2::254]:80',
        '[64:ff9b::7f00:1]:80',
      ]) {
        const result = await openConnect(h.socket, target);
        assert.equal(result.ok, false, target);
        if (!result.ok) {
          assert.equal(result.response.status, 403, target);
          assert.ok(result.response.headers['x-palisade-blocked'], target);
        }
      }
      const socks = await socks5Connect(h.socket, { ipv4: [169, 254, 169, 254], port: 80 });
      assert.equal(socks.reply, 0x02);
      socks.socket.destroy();
      const socks6 = await socks5Connect(h.socket, { ipv6: [...Array(15).fill(0), 1], port: 80 });
      assert.equal(socks6.reply, 0x02);
      socks6.socket.destroy();
      const res = await proxyGet(h.socket, 'http://169.254.169.254/latest/meta-data/');
      assert.equal(res.status, 403);
      await waitFor(() => h.sink.events.length >= 18);
      assert.ok(h.sink.events.every((e) => e.decision === 'deny' && e.address === null));
    } finally {
      await h.close();
    }
  });

  test('SSRF: names that resolve to private, loopback or metadata addresses are refused unless that CIDR is allowed', async () => {
    const p = upstream.port;
    const h = await harness(policy(['*.test', `*.test:${p}`]), {
      'loop.test': ['127.0.0.1'],
      'meta.test': ['169.254.169.254'],
      'lan.test': ['10.1.2.3'],
      'mapped.test': ['::ffff:127.0.0.1'],
      'v6loop.test': ['::1'],
      // Mixed answers: one public-looking, one private. The whole name is refused.
      'mixed.test': ['93.184.216.34', '127.0.0.1'],
    });
    try {
      for (const name of [
        'loop.test',
        'meta.test',
        'lan.test',
        'mapped.test',
        'v6loop.test',
        'mixed.test',
      ]) {
        const res = await proxyGet(h.socket, `http://${name}:${p}/`);
        assert.equal(res.status, 403, name);
        assert.match(
          String(res.headers['x-palisade-blocked']),
          new RegExp(`${name.replace('.', '\\.')} resolves to`),
          name,
        );
      }
      assert.equal(
        upstream.requests.filter((r) => r.headers.host?.startsWith('loop.test')).length,
        0,
      );
      await h.gateway.updatePolicy(ID(h), policy(['*.test', `*.test:${p}`, `127.0.0.1:${p}`]));
      assert.equal(
        (await proxyGet(h.socket, `http://loop.test:${p}/`)).status,
        200,
        'explicitly allowed CIDR passes',
      );
    } finally {
      await h.close();
    }
  });

  test('DNS rebinding: each connection resolves once and connects only to the address it vetted', async () => {
    // The first answer (127.0.0.1) is explicitly allowed; the second (127.0.0.2) is not. A
    // server on 127.0.0.2 proves the second answer is never used by the first connection.
    const rebound = await startHttpServer('127.0.0.2');
    const first = await startHttpServer('127.0.0.1');
    try {
      // Same port on both addresses is not guaranteed; the rule allows both ports, the CIDR
      // rule only 127.0.0.1.
      const ports = `${first.port},${rebound.port}`;
      const h = await harness(policy([`rebind.test:${ports}`, `127.0.0.1:${ports}`]), {
        'rebind.test': [['127.0.0.1'], ['127.0.0.2']],
      });
      try {
        const res = await proxyGet(h.socket, `http://rebind.test:${first.port}/`);
        assert.equal(res.status, 200);
        assert.equal(res.body, 'hello from 127.0.0.1 /');
        assert.equal(h.resolver.calls.get('rebind.test'), 1, 'resolved exactly once');
        assert.equal(rebound.connections(), 0, 'the rebinding answer was never used');
        const event = await waitFor(() => h.sink.events.at(-1));
        assert.deepEqual(event.resolved, ['127.0.0.1']);
        assert.equal(event.address, '127.0.0.1');
        // The next connection resolves again, gets the rebinding answer, and is refused.
        const second = await proxyGet(h.socket, `http://rebind.test:${rebound.port}/`);
        assert.equal(second.status, 403);
        assert.equal(h.resolver.calls.get('rebind.test'), 2);
        assert.equal(rebound.connections(), 0);
      } finally {
        await h.close();
      }
    } finally {
      await rebound.close();
      await first.close();
    }
  });

  test('Host header must match the absolute-form target; one request per connection', async () => {
    const p = upstream.port;
    const h = await harness(policy([`a.test:${p}`, `b.test:${p}`, `127.0.0.1:${p}`]), {
      'a.test': ['127.0.0.1'],
      'b.test': ['127.0.0.1'],
    });
    try {
      const mismatch = await proxyGet(h.socket, `http://a.test:${p}/`, { host: 'forbidden.test' });
      assert.equal(mismatch.status, 403);
      assert.match(
        String(mismatch.headers['x-palisade-blocked']),
        /Host header forbidden\.test does not match/,
      );
      const portMismatch = await proxyGet(h.socket, `http://a.test:${p}/`, { host: 'a.test' });
      assert.equal(portMismatch.status, 403);
      const noHost = parseRawResponse(
        await rawExchange(h.socket, `GET http://a.test:${p}/ HTTP/1.1\r\n\r\n`),
      );
      assert.equal(noHost.status, 403);
      const twoHosts = parseRawResponse(
        await rawExchange(
          h.socket,
          `GET http://a.test:${p}/ HTTP/1.1\r\nHost: a.test:${p}\r\nHost: evil.test\r\n\r\n`,
        ),
      );
      assert.equal(twoHosts.status, 403);
      // A pipelined second request for another host must not reach the first upstream.
      const before = upstream.requests.length;
      await rawExchange(
        h.socket,
        `GET http://a.test:${p}/one HTTP/1.1\r\nHost: a.test:${p}\r\n\r\nGET http://b.test:${p}/two HTTP/1.1\r\nHost: evil.test\r\n\r\n`,
      );
      await waitFor(() => upstream.requests.length > before);
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(
        upstream.requests.slice(before).map((r) => r.url),
        ['/one'],
      );
    } finally {
      await h.close();
    }
  });

  test('a plain-HTTP request body (Content-Length or chunked) is forwarded exactly, nothing after it; proxy credentials are not', async () => {
    const p = upstream.port;
    const h = await harness(policy([`a.test:${p}`, `127.0.0.1:${p}`]), { 'a.test': ['127.0.0.1'] });
    try {
      const body = 'x'.repeat(100_000);
      const raw = await rawExchange(
        h.socket,
        `POST http://a.test:${p}/upload HTTP/1.1\r\nHost: a.test:${p}\r\nProxy-Authorization: Basic c2VjcmV0\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      );
      assert.equal(parseRawResponse(raw).status, 200);
      const seen = upstream.requests.at(-1)!;
      assert.equal(seen.method, 'POST');
      assert.equal(seen.body.length, body.length);
      assert.equal(seen.headers['proxy-authorization'], undefined);
      // A chunked body is forwarded unchanged up to its last chunk; what follows is not.
      const chunkedBody = '5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n';
      const chunkedRaw = await rawExchange(
        h.socket,
        `POST http://a.test:${p}/chunked HTTP/1.1\r\nHost: a.test:${p}\r\nTransfer-Encoding: chunked\r\n\r\n${chunkedBody}GET http://a.test:${p}/smuggled HTTP/1.1\r\nHost: a.test:${p}\r\n\r\n`,
      );
      assert.equal(parseRawResponse(chunkedRaw).status, 200);
      assert.equal(upstream.requests.at(-1)!.body, 'hello world');
      await new Promise((r) => setTimeout(r, 50));
      assert.ok(!upstream.requests.some((r) => r.url === '/smuggled'));
      const before = upstream.requests.length;
      await rawExchange(
        h.socket,
        `POST http://a.test:${p}/bad HTTP/1.1\r\nHost: a.test:${p}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n`,
      );
      const cut = await waitFor(() =>
        h.sink.events.find((e) => /malformed chunked/.test(e.reason)),
      );
      assert.equal(cut.decision, 'deny');
      assert.equal(upstream.requests.length, before, 'the upstream never saw a complete request');
      const twoLengths = parseRawResponse(
        await rawExchange(
          h.socket,
          `POST http://a.test:${p}/ HTTP/1.1\r\nHost: a.test:${p}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab`,
        ),
      );
      assert.equal(twoLengths.status, 400, 'conflicting lengths (request smuggling) are refused');
    } finally {
      await h.close();
    }
  });

  test('malformed and unsupported requests get clear 4xx answers', async () => {
    const h = await harness(
      policy(['a.test']),
      { 'a.test': ['127.0.0.1'] },
      { maxHeaderBytes: 1024 },
    );
    try {
      const origin = parseRawResponse(
        await rawExchange(h.socket, 'GET / HTTP/1.1\r\nHost: a.test\r\n\r\n'),
      );
      assert.equal(origin.status, 400);
      assert.match(origin.body, /absolute http:\/\/ URL/);
      const big = parseRawResponse(
        await rawExchange(
          h.socket,
          `GET http://a.test/ HTTP/1.1\r\nX: ${'a'.repeat(2000)}\r\n\r\n`,
        ),
      );
      assert.equal(big.status, 431);
      const both = parseRawResponse(
        await rawExchange(
          h.socket,
          'POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n',
        ),
      );
      assert.equal(both.status, 400, 'TE + CL (smuggling shape) is refused');
      const gzip = parseRawResponse(
        await rawExchange(
          h.socket,
          'POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n',
        ),
      );
      assert.equal(gzip.status, 501);
      assert.equal(
        parseRawResponse(await rawExchange(h.socket, 'CONNECT a.test HTTP/1.1\r\n\r\n')).status,
        400,
      );
      assert.equal(parseRawResponse(await rawExchange(h.socket, 'GARBAGE\r\n\r\n')).status, 400);
      assert.equal(
        parseRawResponse(
          await rawExchange(h.socket, 'GET https://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n'),
        ).status,
        400,
      );
    } finally {
      await h.close();
    }
  });
});

describe('egress gateway: CONNECT and TLS', () => {
  let creds: { key: Buffer; cert: Buffer };
  let tlsServer: Awaited<ReturnType<typeof startHttpsServer>>;
  before(async () => {
    creds = makeCertificate(['secure.test', 'other.test']);
    tlsServer = await startHttpsServer(creds);
  });
  after(async () => {
    await tlsServer.close();
  });

  test('TLS through CONNECT with a matching SNI works end to end', async () => {
    const p = tlsServer.port;
    const h = await harness(policy([`secure.test:${p}`, `127.0.0.1:${p}`]), {
      'secure.test': ['127.0.0.1'],
    });
    try {
      const tunnel = await openConnect(h.socket, `secure.test:${p}`);
      assert.ok(tunnel.ok);
      const text = await httpsOverTunnel(tunnel.socket, 'secure.test', creds.cert);
      assert.match(text, /tls hello secure\.test/);
      const event = await waitFor(() => h.sink.events.at(-1));
      assert.equal(event.protocol, 'connect');
      assert.equal(event.decision, 'allow');
      assert.ok(event.bytesIn > 500 && event.bytesOut > 200);
    } finally {
      await h.close();
    }
  });

  test('SNI naming another host is refused and no byte reaches the upstream', async () => {
    const raw = await startTcpServer();
    const p = raw.port;
    const h = await harness(policy([`allowed.test:${p}`, `127.0.0.1:${p}`]), {
      'allowed.test': ['127.0.0.1'],
    });
    try {
      const tunnel = await openConnect(h.socket, `allowed.test:${p}`);
      assert.ok(tunnel.ok);
      const hello = await captureClientHello('forbidden.test');
      // Fragmented: the ClientHello arrives a few bytes at a time.
      for (let i = 0; i < hello.length; i += 50) {
        tunnel.socket.write(hello.subarray(i, i + 50));
        await new Promise((r) => setImmediate(r));
      }
      const reply = await readBytes(tunnel.socket, 1000);
      assert.ok(reply.ended);
      assert.equal(reply.data[0], 0x15, 'a TLS alert is sent before closing');
      await waitFor(() => h.sink.events.length >= 1);
      const event = h.sink.events.at(-1)!;
      assert.equal(event.decision, 'deny');
      assert.match(
        event.reason,
        /TLS server name forbidden\.test does not match the requested host allowed\.test/,
      );
      assert.equal(raw.received(), 0);
      assert.equal(event.bytesOut, 0);
    } finally {
      await h.close();
      await raw.close();
    }
  });

  test('a real TLS client fronting a forbidden name through an allowed one fails', async () => {
    const p = tlsServer.port;
    const before = tlsServer.handshakes();
    const h = await harness(policy([`secure.test:${p}`, `127.0.0.1:${p}`]), {
      'secure.test': ['127.0.0.1'],
    });
    try {
      const tunnel = await openConnect(h.socket, `secure.test:${p}`);
      assert.ok(tunnel.ok);
      await assert.rejects(httpsOverTunnel(tunnel.socket, 'other.test', creds.cert));
      assert.equal(tlsServer.handshakes(), before);
    } finally {
      await h.close();
    }
  });

  test('non-TLS CONNECT payload is forwarded as plain TCP, including server-first protocols', async () => {
    const banner = await startTcpServer({ banner: 'SSH-2.0-test\r\n' });
    const p = banner.port;
    const h = await harness(policy([`git.test:${p}`, `127.0.0.1:${p}`]), {
      'git.test': ['127.0.0.1'],
    });
    try {
      const tunnel = await openConnect(h.socket, `git.test:${p}`);
      assert.ok(tunnel.ok);
      const first = await readBytes(tunnel.socket, 14);
      assert.equal(first.data.toString(), 'SSH-2.0-test\r\n');
      tunnel.socket.write('ping');
      const echo = await readBytes(tunnel.socket, 4);
      assert.equal(echo.data.toString(), 'ping');
      tunnel.socket.destroy();
    } finally {
      await h.close();
      await banner.close();
    }
  });

  test('IP-literal CONNECT matches only IP/CIDR rules', async () => {
    const echo = await startTcpServer();
    const p = echo.port;
    const byName = await harness(policy([`localhost:${p}`]), { localhost: ['127.0.0.1'] });
    const byCidr = await harness(policy([`127.0.0.0/8:${p}`]));
    try {
      const refused = await openConnect(byName.socket, `127.0.0.1:${p}`);
      assert.equal(refused.ok, false);
      const allowed = await openConnect(byCidr.socket, `127.0.0.1:${p}`);
      assert.ok(allowed.ok);
      allowed.socket.destroy();
    } finally {
      await byName.close();
      await byCidr.close();
      await echo.close();
    }
  });
});

describe('egress gateway: SOCKS5', () => {
  test('socks5h CONNECT by name reaches an allowed host; refusals use the SOCKS5 codes', async () => {
    const echo = await startTcpServer();
    const p = echo.port;
    const h = await harness(
      policy([`s.test:${p}`, `nx.test:${p}`, `127.0.0.1:${p}`, `127.0.0.1:1`]),
      { 's.test': ['127.0.0.1'] },
    );
    try {
      const ok = await socks5Connect(h.socket, { domain: 's.test', port: p });
      assert.equal(ok.reply, 0x00);
      ok.socket.write('hello');
      assert.equal((await readBytes(ok.socket, 5)).data.toString(), 'hello');
      ok.socket.destroy();

      const denied = await socks5Connect(h.socket, { domain: 'denied.test', port: p });
      assert.equal(denied.reply, 0x02, 'not allowed by ruleset');
      const unresolvable = await socks5Connect(h.socket, { domain: 'nx.test', port: p });
      assert.equal(unresolvable.reply, 0x04, 'host unreachable');
      const refused = await socks5Connect(h.socket, { ipv4: [127, 0, 0, 1], port: 1 });
      assert.equal(refused.reply, 0x05, 'connection refused');
      const bind = await socks5Connect(h.socket, { domain: 's.test', port: p }, { command: 0x02 });
      assert.equal(bind.reply, 0x07, 'command not supported');
      const auth = await socks5Connect(
        h.socket,
        { domain: 's.test', port: p },
        { methods: [0x02] },
      );
      assert.equal(auth.methodReply, 0xff, 'no acceptable methods');
      for (const r of [denied, unresolvable, refused, bind, auth]) r.socket.destroy();
      await waitFor(() =>
        h.sink.events.some((e) => e.protocol === 'socks5' && e.decision === 'allow'),
      );
      const allowEvent = h.sink.events.find(
        (e) => e.protocol === 'socks5' && e.decision === 'allow',
      )!;
      assert.equal(allowEvent.host, 's.test');
      assert.equal(allowEvent.bytesOut, 5);
    } finally {
      await h.close();
      await echo.close();
    }
  });

  test('protocol edge cases: pipelined SOCKS5, byte-by-byte requests, IPv6 upstream, bad address type', async () => {
    const echo4 = await startTcpServer();
    let echo6: Awaited<ReturnType<typeof startTcpServer>> | undefined;
    try {
      echo6 = await startTcpServer({ host: '::1' });
    } catch {
      echo6 = undefined; // no IPv6 loopback on this host
    }
    const p = echo4.port;
    const rules = [`e.test:${p}`, `127.0.0.1:${p}`];
    if (echo6 !== undefined) rules.push(`[::1]:${echo6.port}`);
    const h = await harness(policy(rules), { 'e.test': ['127.0.0.1'] });
    try {
      // Greeting and request in one write, data right behind them.
      const name = Buffer.from('e.test');
      const pipelined = await new Promise<Buffer>((resolve) => {
        const socket = netConnect(h.socket);
        const chunks: Buffer[] = [];
        socket.on('data', (c: Buffer) => {
          chunks.push(c);
          if (Buffer.concat(chunks).length >= 2 + 10 + 4) {
            socket.destroy();
            resolve(Buffer.concat(chunks));
          }
        });
        socket.write(
          Buffer.concat([
            Buffer.from([5, 1, 0, 5, 1, 0, 3, name.length]),
            name,
            Buffer.from([p >> 8, p & 0xff]),
            Buffer.from('ping'),
          ]),
        );
      });
      assert.deepEqual([...pipelined.subarray(0, 4)], [5, 0, 5, 0]);
      assert.equal(pipelined.subarray(12).toString(), 'ping');

      // A CONNECT request arriving one byte at a time.
      const slow = netConnect(h.socket);
      const request = `CONNECT e.test:${p} HTTP/1.1\r\nHost: e.test:${p}\r\n\r\n`;
      for (const ch of request) {
        slow.write(ch);
        await new Promise((r) => setImmediate(r));
      }
      const answer = await readBytes(slow, 39);
      assert.match(answer.data.toString(), /^HTTP\/1\.1 200 /);
      slow.destroy();

      const badType = await new Promise<Buffer>((resolve) => {
        const socket = netConnect(h.socket);
        const chunks: Buffer[] = [];
        socket.on('data', (c: Buffer) => chunks.push(c));
        socket.on('close', () => resolve(Buffer.concat(chunks)));
        socket.write(Buffer.from([5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4, 0, 80]));
      });
      assert.equal(badType[3], 0x08, 'address type not supported');

      if (echo6 !== undefined) {
        const v6 = await openConnect(h.socket, `[::1]:${echo6.port}`);
        assert.ok(v6.ok);
        if (v6.ok) {
          v6.socket.write('six');
          assert.equal((await readBytes(v6.socket, 3)).data.toString(), 'six');
          v6.socket.destroy();
        }
      }
    } finally {
      await h.close();
      await echo4.close();
      await echo6?.close();
    }
  });

  test('SNI is checked through SOCKS5 too', async () => {
    const raw = await startTcpServer();
    const p = raw.port;
    const h = await harness(policy([`s.test:${p}`, `127.0.0.1:${p}`]), { 's.test': ['127.0.0.1'] });
    try {
      const conn = await socks5Connect(h.socket, { domain: 's.test', port: p });
      assert.equal(conn.reply, 0x00);
      conn.socket.write(await captureClientHello('evil.test'));
      const reply = await readBytes(conn.socket, 100);
      assert.ok(reply.ended);
      assert.equal(raw.received(), 0);
    } finally {
      await h.close();
      await raw.close();
    }
  });
});

describe('egress gateway: limits and policy changes', () => {
  test('the concurrent-connection limit refuses cleanly with 429 and recovers', async () => {
    const echo = await startTcpServer();
    const p = echo.port;
    const h = await harness(policy([`127.0.0.1:${p}`]), {}, { maxConnectionsPerSandbox: 2 });
    try {
      const a = await openConnect(h.socket, `127.0.0.1:${p}`);
      const b = await openConnect(h.socket, `127.0.0.1:${p}`);
      assert.ok(a.ok && b.ok);
      assert.equal(h.gateway.stats(ID(h)).activeConnections, 2);
      const c = await openConnect(h.socket, `127.0.0.1:${p}`);
      assert.equal(c.ok, false);
      if (!c.ok) {
        assert.equal(c.response.status, 429);
        assert.match(
          String(c.response.headers['x-palisade-blocked']),
          /connection limit reached \(2/,
        );
      }
      const socks = await socks5Connect(h.socket, { ipv4: [127, 0, 0, 1], port: p });
      assert.equal(socks.reply, 0x01);
      socks.socket.destroy();
      assert.equal(echo.connections(), 2);
      if (a.ok) a.socket.destroy();
      await waitFor(() => h.gateway.stats(ID(h)).activeConnections === 1);
      const d = await openConnect(h.socket, `127.0.0.1:${p}`);
      assert.ok(d.ok);
      if (d.ok) d.socket.destroy();
      if (b.ok) b.socket.destroy();
      await waitFor(
        () => h.sink.events.filter((e) => /connection limit/.test(e.reason)).length === 2,
      );
    } finally {
      await h.close();
      await echo.close();
    }
  });

  test('the download quota delivers exactly the quota, ends the stream cleanly, and refuses further connections', async () => {
    const source = await startTcpServer({ payload: Buffer.alloc(5000, 0x61) });
    const p = source.port;
    const h = await harness(policy([`127.0.0.1:${p}`]), {}, { maxBytesInPerSandbox: 1000 });
    try {
      const t = await openConnect(h.socket, `127.0.0.1:${p}`);
      assert.ok(t.ok);
      const got = await readBytes(t.socket, 5000);
      assert.equal(got.data.length, 1000);
      assert.ok(got.ended, 'the stream ended instead of hanging');
      const event = await waitFor(() => h.sink.events.at(-1));
      assert.equal(event.decision, 'deny');
      assert.match(event.reason, /byte quota exceeded \(download limit 1000 bytes\)/);
      assert.equal(event.bytesIn, 1000);
      assert.equal(h.gateway.stats(ID(h)).bytesIn, 1000);
      const next = await openConnect(h.socket, `127.0.0.1:${p}`);
      assert.equal(next.ok, false);
      if (!next.ok)
        assert.match(String(next.response.headers['x-palisade-blocked']), /quota exhausted/);
    } finally {
      await h.close();
      await source.close();
    }
  });

  test('the upload quota cuts the connection after exactly the quota', async () => {
    const sinkServer = await startTcpServer({ echo: false });
    const p = sinkServer.port;
    const h = await harness(policy([`127.0.0.1:${p}`]), {}, { maxBytesOutPerSandbox: 3000 });
    try {
      const t = await openConnect(h.socket, `127.0.0.1:${p}`);
      assert.ok(t.ok);
      t.socket.write(Buffer.alloc(10_000, 0x62));
      const done = await readBytes(t.socket, 1);
      assert.ok(done.ended);
      await waitFor(() => sinkServer.received() === 3000);
      const event = await waitFor(() => h.sink.events.at(-1));
      assert.match(event.reason, /upload limit 3000 bytes/);
      assert.equal(event.bytesOut, 3000);
    } finally {
      await h.close();
      await sinkServer.close();
    }
  });

  test('idle connections are closed and reported', async () => {
    const echo = await startTcpServer();
    const p = echo.port;
    const h = await harness(policy([`127.0.0.1:${p}`]), {}, { idleTimeoutMs: 150 });
    try {
      const t = await openConnect(h.socket, `127.0.0.1:${p}`);
      assert.ok(t.ok);
      const result = await readBytes(t.socket, 1, 2000);
      assert.ok(result.ended);
      const event = await waitFor(() => h.sink.events.at(-1));
      assert.equal(event.decision, 'allow');
      assert.match(event.reason, /closed: idle timeout/);
      // A client that connects and never sends a request is also cut off.
      const silent = await readBytes(netConnect(h.socket), 1, 2000);
      assert.ok(silent.ended);
    } finally {
      await h.close();
      await echo.close();
    }
  });

  test('connect timeout: a destination that never answers gets 504 within the limit', async () => {
    // A resolver that never answers stands in for a black-holed destination.
    const dir = tempDir('pal-eg-');
    const gateway = createEgressGateway({
      socketDir: dir.path,
      resolver: {
        resolve: (_host, signal) =>
          new Promise((_r, reject) =>
            signal?.addEventListener('abort', () => reject(new Error('aborted'))),
          ),
      },
      limits: { connectTimeoutMs: 200 },
    });
    try {
      const network = await gateway.attach('slow', policy(['slow.test']), OWNER);
      const started = Date.now();
      const res = await proxyGet(network.bridges[0]!.hostSocket, 'http://slow.test/');
      assert.equal(res.status, 502);
      assert.ok(Date.now() - started < 2000);
    } finally {
      await gateway.close();
      dir.remove();
    }
  });

  test('a policy change closes open connections to now-denied destinations and keeps the others', async () => {
    const echo = await startTcpServer();
    const p = echo.port;
    const h = await harness(policy([`keep.test:${p}`, `drop.test:${p}`, `127.0.0.1:${p}`]), {
      'keep.test': ['127.0.0.1'],
      'drop.test': ['127.0.0.1'],
    });
    try {
      const keep = await openConnect(h.socket, `keep.test:${p}`);
      const drop = await openConnect(h.socket, `drop.test:${p}`);
      assert.ok(keep.ok && drop.ok);
      if (!keep.ok || !drop.ok) return;
      const dropped = readBytes(drop.socket, 1, 3000);
      h.gateway.updatePolicy(ID(h), policy([`keep.test:${p}`, `127.0.0.1:${p}`]));
      assert.ok((await dropped).ended);
      keep.socket.write('still here');
      assert.equal((await readBytes(keep.socket, 10)).data.toString(), 'still here');
      const event = await waitFor(() => h.sink.events.find((e) => e.host === 'drop.test'));
      assert.equal(event.decision, 'deny');
      assert.match(event.reason, /^policy changed: no allow rule matches drop\.test/);
      assert.equal((await openConnect(h.socket, `drop.test:${p}`)).ok, false);
      keep.socket.destroy();
    } finally {
      await h.close();
      await echo.close();
    }
  });

  test('each sandbox gets its own socket and its own policy', async () => {
    const echo = await startTcpServer();
    const p = echo.port;
    const dir = tempDir('pal-eg-');
    const gateway = createEgressGateway({
      socketDir: dir.path,
      resolver: mapResolver({ 'a.test': ['127.0.0.1'] }),
      connectGuard: loopbackOnly,
    });
    try {
      const open = await gateway.attach('open', policy([`a.test:${p}`, `127.0.0.1:${p}`]), OWNER);
      const closed = await gateway.attach('closed', policy([]), OWNER);
      assert.notEqual(open.bridges[0]!.hostSocket, closed.bridges[0]!.hostSocket);
      const a = await openConnect(open.bridges[0]!.hostSocket, `a.test:${p}`);
      assert.ok(a.ok);
      if (a.ok) a.socket.destroy();
      assert.equal((await openConnect(closed.bridges[0]!.hostSocket, `a.test:${p}`)).ok, false);
      await waitFor(() => gateway.stats('closed').denied === 1);
      assert.equal(gateway.stats('open').denied, 0);
      await gateway.detach('closed');
      assert.equal(gateway.recentDenials('closed').length, 1, 'denials stay readable after detach');
    } finally {
      await gateway.close();
      dir.remove();
      await echo.close();
    }
  });

  test("the operator's connect guard vetoes a connection the policy allowed", async () => {
    const echo = await startTcpServer();
    const dir = tempDir('pal-eg-');
    const seen: string[] = [];
    const gateway = createEgressGateway({
      socketDir: dir.path,
      resolver: mapResolver({}),
      connectGuard: (address, port) => {
        seen.push(`${address.text}:${port}`);
        return false;
      },
    });
    try {
      const network = await gateway.attach('guarded', policy([`127.0.0.1:${echo.port}`]), OWNER);
      const result = await openConnect(network.bridges[0]!.hostSocket, `127.0.0.1:${echo.port}`);
      assert.equal(result.ok, false);
      if (!result.ok)
        assert.match(String(result.response.headers['x-palisade-blocked']), /connect guard/);
      assert.deepEqual(seen, [`127.0.0.1:${echo.port}`]);
      assert.equal(echo.connections(), 0);
    } finally {
      await gateway.close();
      dir.remove();
      await echo.close();
    }
  });

  test('detach closes open connections', async () => {
    const echo = await startTcpServer();
    const p = echo.port;
    const h = await harness(policy([`127.0.0.1:${p}`]));
    try {
      const t = await openConnect(h.socket, `127.0.0.1:${p}`);
      assert.ok(t.ok);
      if (!t.ok) return;
      const ended = readBytes(t.socket, 1, 3000);
      await h.gateway.detach(ID(h));
      assert.ok((await ended).ended);
    } finally {
      await h.close();
      await echo.close();
    }
  });
});

test('no test ever asked the gateway to connect off loopback (and the guard refused it if so)', () => {
  assert.deepEqual(offLoopbackAttempts, []);
});
