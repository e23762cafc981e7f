/**
 * Sandbox network when palisade serve is privilege-separated: the egress gateway runs in the
 * root supervisor and the unprivileged worker drives it over the supervisor socket. Real
 * engine, real gateway, real supervisor (in-process and as a spawned `palisade serve`).
 * Traffic stays on loopback: upstreams listen on the host's 127.0.0.1 and only 127.0.0.1 rules
 * are ever allowed; the in-process gateway also has a loopback-only connect guard.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuditLog } from '../../src/audit/index.js';

import { isPalisadeError } from '../../src/errors/index.js';
import { parseEgressPolicy, parsePolicyObject } from '../../src/policy/index.js';
import { createSandboxRuntime, type SandboxRuntime } from '../../src/sandbox/index.js';
import { EgressAuditSink, SandboxNetworks, startControlPlane } from '../../src/server/index.js';
import { openStore } from '../../src/store/index.js';
import {
  connectRemoteRuntime,
  startSupervisor,
  type Supervisor,
} from '../../src/supervisor/index.js';
import { spawnServe } from '../helpers/serve.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { request, serverEngineConfig, type Res } from '../server/helpers.js';

const isRoot = process.getuid?.() === 0;

async function waitFor<T>(
  check: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<T> {
  const start = Date.now();
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

type Frame = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** A hand-driven supervisor connection: sends exact frames (even ones the real worker never would). */
class RawClient {
  readonly frames: Frame[] = [];
  readonly socket: Socket;
  #text = '';
  #nextId = 1;
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#text += d.toString();
      const lines = this.#text.split('\n');
      this.#text = lines.pop() ?? '';
      for (const line of lines) if (line.length > 0) this.frames.push(JSON.parse(line) as Frame);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => (this.closed = true));
  }

  static async open(path: string): Promise<RawClient> {
    const client = new RawClient(connect(path));
    await waitFor(() => client.frames.some((f) => f.t === 'hello'), 5000, 'hello');
    return client;
  }

  async call(body: Frame): Promise<Frame> {
    const id = this.#nextId++;
    this.socket.write(`${JSON.stringify({ ...body, id })}\n`);
    return waitFor(
      () => this.frames.find((f) => f.t === 'res' && f.id === id),
      60_000,
      `answer to ${String(body.t)}`,
    );
  }

  close(): void {
    this.socket.destroy();
  }
}

/** One HTTP request through a sandbox's proxy socket, straight from the host (as root). */
function viaProxy(proxySocket: string, target: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(proxySocket);
    let out = '';
    s.on('data', (d: Buffer) => (out += d.toString()));
    s.on('error', reject);
    s.on('close', () => resolve(out));
    s.on('connect', () => {
      const url = new URL(target);
      s.write(`GET ${target} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\n\r\n`);
    });
  });
}

describe('egress gateway in the supervisor (in-process)', { skip: !isRoot && 'needs root' }, () => {
  let dir: string;
  let engine: SandboxRuntime;
  let supervisor: Supervisor;
  let up: Upstream;
  let denied: Upstream;
  const egressDir = () => join(dir, 'egress');

  before(async () => {
    up = await startUpstream();
    denied = await startUpstream();
    dir = mkdtempSync(join(tmpdir(), 'palisade-supnet-'));
    chmodSync(dir, 0o711);
    engine = await createSandboxRuntime(serverEngineConfig(dir));
    // The operator allows loopback (any port) and denies one loopback port outright.
    const operator = parsePolicyObject(
      { network: { allow: ['127.0.0.0/8:1-65535'], deny: [`127.0.0.1:${denied.port}`] } },
      'operator.json',
      'operator',
    );
    supervisor = await startSupervisor({
      runtime: engine,
      socketPath: join(dir, 'supervisor', 'supervisor.sock'),
      limits: { maxConnections: 4, maxEgressBufferedBytes: 64 * 1024, egressStatsIntervalMs: 200 },
      egress: {
        socketDir: egressDir(),
        upperLayers: [operator],
        connectGuard: (address) => address.family === 4 && address.bytes[0] === 127,
      },
    });
  });

  after(async () => {
    await supervisor.close();
    await engine.close();
    await up.close();
    await denied.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('attaches at create with everything refused; netPolicy is re-parsed and bounded by the operator layer in the supervisor; netDetach removes the socket', async () => {
    const client = await RawClient.open(supervisor.socketPath);
    try {
      const created = await client.call({ t: 'create', options: { network: true } });
      assert.equal(created.ok, true, JSON.stringify(created));
      const id = created.value.id as string;
      const hostUid = created.value.hostUid as number;
      const sandboxDir = join(egressDir(), id);
      const proxySocket = join(sandboxDir, 'proxy.sock');
      const dirStat = statSync(sandboxDir);
      assert.equal(dirStat.mode & 0o777, 0o710);
      assert.equal(dirStat.uid, 0);
      const sockStat = statSync(proxySocket);
      assert.equal(sockStat.uid, hostUid, 'the proxy socket belongs to the sandbox uid');
      assert.equal(sockStat.mode & 0o777, 0o600);

      // Before any rules arrive: attached, and everything is refused.
      const early = await viaProxy(proxySocket, `http://127.0.0.1:${up.port}/early`);
      assert.match(early, /^HTTP\/1\.1 403/);
      assert.deepEqual(up.hits, []);

      // The worker "forgets" the operator's deny: the supervisor adds it back.
      const set = await client.call({
        t: 'netPolicy',
        sandboxId: id,
        policy: { allow: [`127.0.0.1:${up.port}`, `127.0.0.1:${denied.port}`], deny: [] },
      });
      assert.equal(set.ok, true, JSON.stringify(set));
      const ok = await viaProxy(proxySocket, `http://127.0.0.1:${up.port}/allowed`);
      assert.match(ok, /^HTTP\/1\.1 200/);
      assert.match(ok, /upstream \/allowed$/);
      const refused = await viaProxy(proxySocket, `http://127.0.0.1:${denied.port}/x`);
      assert.match(refused, /^HTTP\/1\.1 403/);
      assert.deepEqual(denied.hits, [], 'the operator deny holds whatever the worker sends');

      // Gateway decisions come back as egress frames with the stats after them.
      const deny = await waitFor(() =>
        client.frames.find(
          (f) => f.t === 'egress' && f.event.sandboxId === id && f.event.port === denied.port,
        ),
      );
      assert.equal(deny.event.decision, 'deny');
      assert.ok(deny.stats.denied >= 2);
      const allow = await waitFor(() =>
        client.frames.find(
          (f) => f.t === 'egress' && f.event.decision === 'allow' && f.event.port === up.port,
        ),
      );
      assert.ok(allow.event.bytesIn > 0);

      // Outside the operator's bounds, not a rule, not this sandbox's: refused, connection kept.
      const outside = await client.call({
        t: 'netPolicy',
        sandboxId: id,
        policy: { allow: ['10.0.0.1:5432'], deny: [] },
      });
      assert.equal(outside.ok, false);
      assert.equal(outside.error.code, 'INVALID_POLICY');
      assert.match(outside.error.message, /outside what the operator policy allows/);
      const garbage = await client.call({
        t: 'netPolicy',
        sandboxId: id,
        policy: { allow: ['http://exa mple.com/'], deny: [] },
      });
      assert.equal(garbage.ok, false);
      assert.equal(garbage.error.code, 'INVALID_POLICY');
      // The refused updates changed nothing.
      assert.match(
        await viaProxy(proxySocket, `http://127.0.0.1:${up.port}/still`),
        /^HTTP\/1\.1 200/,
      );

      const plain = await client.call({ t: 'create', options: {} });
      const plainId = plain.value.id as string;
      const noNet = await client.call({
        t: 'netPolicy',
        sandboxId: plainId,
        policy: { allow: [`127.0.0.1:${up.port}`], deny: [] },
      });
      assert.equal(noNet.ok, false);
      assert.equal(noNet.error.code, 'CONFLICT');
      assert.equal(existsSync(join(egressDir(), plainId)), false);
      const ghost = await client.call({
        t: 'netPolicy',
        sandboxId: 'sb-aaaaaaaaaaaaaaaaaaaa',
        policy: { allow: [], deny: [] },
      });
      assert.equal(ghost.ok, false);
      assert.equal(ghost.error.code, 'SANDBOX_NOT_FOUND');
      assert.equal(client.closed, false, 'refusals are answers, not violations');

      const detached = await client.call({ t: 'netDetach', sandboxId: id });
      assert.equal(detached.ok, true);
      assert.equal(existsSync(sandboxDir), false, 'detach removes the sandbox socket directory');
      const again = await client.call({
        t: 'netPolicy',
        sandboxId: id,
        policy: { allow: [`127.0.0.1:${up.port}`], deny: [] },
      });
      assert.equal(again.error.code, 'CONFLICT', 'a detached sandbox cannot be re-attached');
      assert.equal((await client.call({ t: 'destroy', sandboxId: id })).ok, true);
      assert.equal((await client.call({ t: 'destroy', sandboxId: plainId })).ok, true);
    } finally {
      client.close();
    }
  });

  it('destroy detaches: the sandbox socket directory is gone', async () => {
    const client = await RawClient.open(supervisor.socketPath);
    try {
      const created = await client.call({ t: 'create', options: { network: true } });
      const id = created.value.id as string;
      assert.ok(existsSync(join(egressDir(), id, 'proxy.sock')));
      assert.equal((await client.call({ t: 'destroy', sandboxId: id })).ok, true);
      assert.equal(existsSync(join(egressDir(), id)), false);
      assert.equal((await client.call({ t: 'netDetach', sandboxId: id })).ok, true, 'idempotent');
    } finally {
      client.close();
    }
  });

  it('worker side: RemoteRuntime + its gateway + SandboxNetworks + the audit sink work as in one process (audit, mirrored stats and denials, drops); a refused live update is an error and the previous rules stay in force; refused initial rules destroy the sandbox', async () => {
    const remote = await connectRemoteRuntime({ socketPath: supervisor.socketPath });
    const storeDir = mkdtempSync(join(tmpdir(), 'palisade-supnet-store-'));
    const store = await openStore({ dataDir: storeDir });
    try {
      const audit = new AuditLog(store.db);
      const auditSink = new EgressAuditSink({ audit, tenantOf: () => 'acme' });
      const gateway = remote.createEgressGateway({
        sink: auditSink,
        onDropped: (count) => auditSink.recordDropped(count),
      });
      assert.throws(() => remote.createEgressGateway({ sink: auditSink }), /already/);
      const networks = new SandboxNetworks({ gateway, upperLayers: [] });
      const rules = parseEgressPolicy({ allow: [`127.0.0.1:${up.port}`] });
      const info = await remote.create({ network: networks.provider('acme', rules) });
      assert.ok(networks.has(info.id));
      const ok = await remote.run(info.id, {
        command: `curl -sS --noproxy '' http://127.0.0.1:${up.port}/worker`,
        timeoutMs: 20_000,
      });
      assert.equal(ok.stdout.toString(), 'upstream /worker', ok.stderr.toString());
      const refused = await remote.run(info.id, {
        command: `curl -sS -D - -o /dev/null --noproxy '' http://127.0.0.1:${denied.port}/no`,
        timeoutMs: 20_000,
      });
      assert.match(refused.stdout.toString(), /^HTTP\/1\.1 403/);
      const view = await waitFor(() => {
        const v = networks.view(info.id);
        return v.stats !== null && v.stats.denied >= 1 && v.stats.bytesIn > 0 ? v : undefined;
      });
      assert.equal(view.enabled, true);
      assert.ok(view.recentDenials.some((d) => d.port === denied.port));
      // Stats of a connection still open arrive without any event (egressStats frames).
      const slow = remote.run(info.id, {
        command: `curl -sS --noproxy '' http://127.0.0.1:${up.port}/slow`,
        timeoutMs: 20_000,
      });
      await waitFor(
        () => (networks.view(info.id).stats?.activeConnections ?? 0) >= 1,
        5000,
        'the open connection in the mirrored stats',
      );
      assert.equal((await slow).stdout.toString(), 'upstream /slow');
      // Supervisor-side drops reach the audit log as a counted marker.
      auditSink.recordDropped(7);
      await waitFor(async () => {
        await auditSink.flush();
        return (await audit.query({ type: 'egress.deny' })).length >= 1;
      });
      const markers = await audit.query({ type: 'egress.dropped' });
      assert.equal(markers.length, 1);
      assert.equal(markers[0]!.data.count, 7);
      const deny = (await audit.query({ type: 'egress.deny' }))[0]!;
      assert.equal(deny.tenant, 'acme');
      assert.equal(deny.data.port, denied.port);

      // A live update the supervisor refuses (outside the operator's bounds, which this worker
      // does not know about) is an error for the caller, and the previous rules stay in force
      // and shown: the supervisor checks everything before it changes anything.
      const refusedUpdates: string[] = [];
      const strict = await connectRemoteRuntime({ socketPath: supervisor.socketPath });
      try {
        const strictGateway = strict.createEgressGateway({
          sink: { emit: () => undefined },
          onUpdateFailed: (id) => refusedUpdates.push(id),
        });
        const strictNetworks = new SandboxNetworks({ gateway: strictGateway, upperLayers: [] });
        const other = await strict.create({ network: strictNetworks.provider('acme', rules) });
        assert.ok(existsSync(join(egressDir(), other.id, 'proxy.sock')));
        // Rules too large for one frame are refused in the worker, before they could end the
        // supervisor connection as an oversize frame; the sandbox keeps its rules.
        const longRule = (i: number) =>
          `${'a'.repeat(60)}.${'b'.repeat(60)}.${'c'.repeat(60)}.r${i}.test:${Array.from({ length: 60 }, (_, p) => p + 1).join(',')}`;
        const big = parseEgressPolicy({
          deny: Array.from({ length: 1000 }, (_, i) => longRule(i)),
        });
        const huge = { allow: big.deny, deny: [...big.deny, ...big.deny] };
        await assert.rejects(
          async () => strictGateway.updatePolicy(other.id, huge),
          (e: unknown) => isPalisadeError(e, 'INVALID_POLICY') && /bytes/.test(e.message),
        );
        assert.ok((await strict.stats(other.id)).pids >= 0, 'the connection is alive');
        await assert.rejects(
          strictNetworks.update(other.id, parseEgressPolicy({ allow: ['10.0.0.1:5432'] })),
          (e: unknown) =>
            isPalisadeError(e, 'INVALID_POLICY') &&
            /previous rules stay in force/.test(e.message) &&
            /outside what the operator policy allows/.test(e.message),
        );
        assert.deepEqual(refusedUpdates, [other.id], 'the refusal is also reported to the hook');
        assert.deepEqual(strictNetworks.view(other.id).rules?.allow, [`127.0.0.1:${up.port}`]);
        assert.ok(existsSync(join(egressDir(), other.id, 'proxy.sock')), 'still attached');
        const kept = await strict.run(other.id, {
          command: `curl -sS --max-time 5 --noproxy '' http://127.0.0.1:${up.port}/after`,
          timeoutMs: 20_000,
        });
        assert.equal(kept.stdout.toString(), 'upstream /after', 'the previous rules still work');
        // An accepted update is in force when update() resolves, and only then shown.
        await strictNetworks.update(other.id, parseEgressPolicy({ allow: [] }));
        assert.deepEqual(strictNetworks.view(other.id).rules?.allow, []);
        const refusedNow = await strict.run(other.id, {
          command: `curl -sS -D - -o /dev/null --noproxy '' http://127.0.0.1:${up.port}/now-refused`,
          timeoutMs: 20_000,
        });
        assert.match(refusedNow.stdout.toString(), /^HTTP\/1\.1 403/);
        await strict.destroy(other.id);
      } finally {
        strict.disconnect();
      }

      // Destroy: the supervisor detaches; the worker's entry is released on 'removed'.
      await remote.destroy(info.id);
      assert.equal(existsSync(join(egressDir(), info.id)), false);
      await waitFor(() => !networks.has(info.id), 5000, 'the network entry to be released');
      assert.equal(networks.view(info.id).stats?.activeConnections, 0, 'final stats are kept');

      // Initial rules the supervisor refuses (outside the operator's bounds): no sandbox is left.
      const before = engine.list().length;
      await assert.rejects(
        remote.create({
          network: networks.provider('acme', parseEgressPolicy({ allow: ['10.0.0.1:5432'] })),
        }),
        (e: unknown) => isPalisadeError(e, 'INVALID_POLICY'),
      );
      await waitFor(() => engine.list().length === before, 5000, 'the refused sandbox to go');
    } finally {
      remote.disconnect();
      await store.close();
      rmSync(storeDir, { recursive: true, force: true });
    }
  });

  it('PUT …/network through a control plane on the supervisor is confirmed: a refusal is an error, and GET and the gateway keep the previous rules', async () => {
    const remote = await connectRemoteRuntime({ socketPath: supervisor.socketPath });
    const dataDir = mkdtempSync(join(tmpdir(), 'palisade-supnet-cp-'));
    chmodSync(dataDir, 0o711);
    // The worker has no operator layer while the supervisor has one: as if the two disagreed
    // about the operator policy (e.g. mid-reload). Only the supervisor can refuse.
    const cp = await startControlPlane({
      runtime: remote,
      egress: { createGateway: (hooks) => remote.createEgressGateway(hooks) },
      config: { dataDir, host: '127.0.0.1', port: 0, logLevel: 'silent' },
    });
    const api = (method: string, path: string, body?: unknown) =>
      request(cp.url, method, path, {
        key: cp.adminKey ?? '',
        ...(body !== undefined ? { body } : {}),
      });
    const curl = async (id: string, path: string) => {
      const r = await api('POST', `/v1/sandboxes/${id}/exec`, {
        command: `curl -sS -D - -o /dev/null --max-time 5 --noproxy '' http://127.0.0.1:${up.port}${path}`,
        timeoutMs: 20_000,
      });
      assert.equal(r.status, 200, r.text);
      return String(r.json.stdout);
    };
    try {
      const created = await api('POST', '/v1/sandboxes', {
        policy: { network: { allow: [`127.0.0.1:${up.port}`] } },
      });
      assert.equal(created.status, 201, created.text);
      const id = created.json.id as string;
      assert.match(await curl(id, '/before'), /^HTTP\/1\.1 200/);

      const refused = await api('PUT', `/v1/sandboxes/${id}/network`, {
        allow: ['10.0.0.1:5432'],
      });
      assert.equal(refused.status, 400, refused.text);
      assert.equal(refused.json.code, 'INVALID_POLICY');
      assert.match(refused.json.message, /previous rules stay in force/);
      assert.match(refused.json.message, /outside what the operator policy allows/);
      assert.equal(refused.json.details.previousRulesInForce, true);
      const shown = await api('GET', `/v1/sandboxes/${id}/network`);
      assert.equal(shown.status, 200, shown.text);
      assert.equal(shown.json.enabled, true);
      assert.deepEqual(shown.json.rules.allow, [`127.0.0.1:${up.port}`]);
      assert.deepEqual(shown.json.effective.allow, [`127.0.0.1:${up.port}`]);
      assert.ok(existsSync(join(egressDir(), id, 'proxy.sock')), 'the network stays attached');
      assert.match(await curl(id, '/after-refusal'), /^HTTP\/1\.1 200/, 'previous rules in force');
      const updates = await api('GET', `/v1/audit?type=sandbox.network_update&sandboxId=${id}`);
      assert.equal(updates.json.items.length, 0, 'a refused update is not recorded as made');
      const sandbox = await api('GET', `/v1/sandboxes/${id}`);
      assert.equal(sandbox.status, 200);

      // An accepted update answers only once the supervisor has it in force.
      const accepted = await api('PUT', `/v1/sandboxes/${id}/network`, { allow: [] });
      assert.equal(accepted.status, 200, accepted.text);
      assert.deepEqual(accepted.json.rules.allow, []);
      assert.match(await curl(id, '/after-update'), /^HTTP\/1\.1 403/);
      assert.equal(up.hits.includes('/after-update'), false);
      const recorded = await api('GET', `/v1/audit?type=sandbox.network_update&sandboxId=${id}`);
      assert.equal(recorded.json.items.length, 1);
    } finally {
      await cp.close();
      remote.disconnect();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('a flood of gateway events towards a worker that does not read is dropped and counted, never queued without bound', async () => {
    const client = await RawClient.open(supervisor.socketPath);
    try {
      const created = await client.call({ t: 'create', options: { network: true } });
      const id = created.value.id as string;
      const proxySocket = join(egressDir(), id, 'proxy.sock');
      const droppedBefore = supervisor.egressDropped;
      client.socket.pause(); // the "worker" stops reading
      // Every request is refused (no rules) and produces one event of about 1 KiB.
      const total = 3000;
      const longHost = `${'a'.repeat(60)}.${'b'.repeat(60)}.${'c'.repeat(60)}.test`;
      let next = 0;
      const worker = async () => {
        while (next < total) {
          next++;
          await viaProxy(proxySocket, `http://${longHost}/${'p'.repeat(200)}`);
        }
      };
      await Promise.all(Array.from({ length: 16 }, worker));
      assert.ok(
        supervisor.egressDropped > droppedBefore,
        'events were dropped while the worker was not reading',
      );
      assert.equal(client.closed, false, 'the connection is kept (dropping, not disconnecting)');
      client.socket.resume();
      // Every event is accounted for: delivered, or counted in an egressDropped frame.
      const accounted = () => {
        const delivered = client.frames.filter(
          (f) => f.t === 'egress' && f.event.sandboxId === id,
        ).length;
        const reported = client.frames
          .filter((f) => f.t === 'egressDropped')
          .reduce((n, f) => n + (f.count as number), 0);
        return { delivered, reported };
      };
      await waitFor(
        () => {
          const { delivered, reported } = accounted();
          return delivered + reported === total;
        },
        20_000,
        'every event delivered or reported',
      );
      // (The last events are emitted as the gateway closes its side, just after the client's.)
      assert.equal(accounted().reported, supervisor.egressDropped - droppedBefore);
      assert.equal((await client.call({ t: 'destroy', sandboxId: id })).ok, true);
    } finally {
      client.close();
    }
  });
});

interface Served {
  child: ChildProcess;
  url: string;
  adminKey: string;
  exited: Promise<number | null>;
}

const UID_START = 1_760_000_000 + (process.pid % 5000) * 100;

async function serve(dataDir: string, extra: string[]): Promise<Served> {
  const served = await spawnServe({
    dataDir,
    logLevel: 'silent',
    engineUids: { start: UID_START, count: 100 },
    engineCgroup: `palisade-supnet-${process.pid}`,
    args: extra,
    waitForAdminKey: true,
    waitForWorker: true,
  });
  return {
    child: served.child,
    url: served.url,
    adminKey: served.adminKey!,
    exited: served.exited,
  };
}

describe(
  'palisade serve as root: sandbox network through the supervisor',
  { skip: !isRoot && 'needs root' },
  () => {
    let dataDir: string;
    let served: Served;
    let up: Upstream;
    let other: Upstream;
    let operatorDenied: Upstream;

    before(async () => {
      up = await startUpstream();
      other = await startUpstream();
      operatorDenied = await startUpstream();
      dataDir = mkdtempSync(join(tmpdir(), 'palisade-splitnet-'));
      chmodSync(dataDir, 0o711);
      const policyFile = join(dataDir, 'operator-policy.json');
      writeFileSync(
        policyFile,
        JSON.stringify({
          permissions: { default: 'allow' },
          network: { deny: [`127.0.0.1:${operatorDenied.port}`] },
        }),
        { mode: 0o600 },
      );
      served = await serve(dataDir, ['--policy', policyFile]);
    });

    after(async () => {
      if (served?.child.exitCode === null) {
        served.child.kill('SIGTERM');
        const timer = setTimeout(() => served.child.kill('SIGKILL'), 30_000);
        await served.exited;
        clearTimeout(timer);
      }
      await up.close();
      await other.close();
      await operatorDenied.close();
      rmSync(dataDir, { recursive: true, force: true });
    });

    const api = (method: string, path: string, body?: unknown): Promise<Res> =>
      request(served.url, method, path, {
        key: served.adminKey,
        ...(body !== undefined ? { body } : {}),
      });

    async function sh(id: string, command: string) {
      const r = await api('POST', `/v1/sandboxes/${id}/exec`, { command, timeoutMs: 20_000 });
      assert.equal(r.status, 200, r.text);
      return r.json as { exitCode: number; stdout: string; stderr: string };
    }

    it('allowed target reached through the proxy, refusal audited, live update, operator deny, destroy detaches', async () => {
      const created = await api('POST', '/v1/sandboxes', {
        policy: {
          network: { allow: [`127.0.0.1:${up.port}`, `127.0.0.1:${operatorDenied.port}`] },
        },
      });
      assert.equal(created.status, 201, created.text);
      const id = created.json.id as string;

      // NO_PROXY lists 127.0.0.1, so override it: the request must go through the proxy.
      const ok = await sh(id, `curl -sS --noproxy '' http://127.0.0.1:${up.port}/hello`);
      assert.equal(ok.exitCode, 0, ok.stderr);
      assert.equal(ok.stdout, 'upstream /hello');
      // The sandbox has no route of its own: ignoring the proxy fails.
      const direct = await sh(
        id,
        `curl -sS --max-time 3 --noproxy '*' http://127.0.0.1:${up.port}/direct`,
      );
      assert.notEqual(direct.exitCode, 0);
      assert.equal(up.hits.includes('/direct'), false);

      const refused = await sh(
        id,
        `curl -sS -D - -o /dev/null --noproxy '' http://127.0.0.1:${other.port}/no`,
      );
      assert.match(refused.stdout, /^HTTP\/1\.1 403/);
      assert.match(refused.stdout, /X-Palisade-Blocked: /i);
      // The operator's deny (from --policy, read by the supervisor) wins over the sandbox's allow.
      const operatorRefused = await sh(
        id,
        `curl -sS -D - -o /dev/null --noproxy '' http://127.0.0.1:${operatorDenied.port}/no`,
      );
      assert.match(operatorRefused.stdout, /^HTTP\/1\.1 403/);
      assert.deepEqual(other.hits, []);
      assert.deepEqual(operatorDenied.hits, []);

      const audited = await waitFor(async () => {
        const r = await api('GET', `/v1/audit?type=egress.deny&sandboxId=${id}&limit=100`);
        assert.equal(r.status, 200, r.text);
        return r.json.items.find((x: { data: { port: number } }) => x.data.port === other.port);
      });
      assert.equal(audited.data.host, '127.0.0.1');
      assert.equal(audited.tenant, 'default');
      const allowAudit = await api('GET', `/v1/audit?type=egress.allow&sandboxId=${id}&limit=100`);
      assert.ok(
        allowAudit.json.items.some((x: { data: { port: number } }) => x.data.port === up.port),
      );

      // GET shows the same view as single-process mode: rules, operator rules, stats, denials.
      const view = await waitFor(async () => {
        const r = await api('GET', `/v1/sandboxes/${id}/network`);
        assert.equal(r.status, 200, r.text);
        return r.json.stats?.denied >= 2 ? r.json : undefined;
      });
      assert.equal(view.enabled, true);
      assert.deepEqual(view.rules.allow, [
        `127.0.0.1:${up.port}`,
        `127.0.0.1:${operatorDenied.port}`,
      ]);
      assert.deepEqual(view.operator.deny, [`127.0.0.1:${operatorDenied.port}`]);
      assert.ok(view.stats.bytesIn > 0);
      assert.ok(view.recentDenials.some((d: { port: number }) => d.port === other.port));

      // A live update through the API reaches the supervisor's gateway before the next exec.
      const put = await api('PUT', `/v1/sandboxes/${id}/network`, {
        allow: [`127.0.0.1:${other.port}`],
      });
      assert.equal(put.status, 200, put.text);
      const now = await sh(id, `curl -sS --noproxy '' http://127.0.0.1:${other.port}/now`);
      assert.equal(now.exitCode, 0, now.stderr);
      assert.equal(now.stdout, 'upstream /now');
      const dropped = await sh(
        id,
        `curl -sS -D - -o /dev/null --noproxy '' http://127.0.0.1:${up.port}/gone`,
      );
      assert.match(dropped.stdout, /^HTTP\/1\.1 403/);
      assert.equal(up.hits.includes('/gone'), false);

      // Bounds checked by the worker (as in single-process mode) and again by the supervisor.
      const bad = await api('PUT', `/v1/sandboxes/${id}/network`, { allow: ['no such rule!'] });
      assert.equal(bad.status, 400);

      const sandboxDir = join(dataDir, 'egress', id);
      assert.ok(existsSync(join(sandboxDir, 'proxy.sock')));
      assert.equal(statSync(join(dataDir, 'egress')).uid, 0, 'the gateway directory is root-owned');
      const removed = await api('DELETE', `/v1/sandboxes/${id}`);
      assert.equal(removed.status, 200, removed.text);
      await waitFor(() => !existsSync(sandboxDir), 5000, 'the socket directory to go');
    });

    it('a sandbox without a network section has no network, and PUT cannot add one', async () => {
      const created = await api('POST', '/v1/sandboxes', {});
      assert.equal(created.status, 201, created.text);
      const id = created.json.id as string;
      const env = await sh(id, 'env | grep -ic proxy; true');
      assert.equal(env.stdout.trim(), '0');
      const put = await api('PUT', `/v1/sandboxes/${id}/network`, {
        allow: [`127.0.0.1:${up.port}`],
      });
      assert.equal(put.status, 409);
      assert.equal(existsSync(join(dataDir, 'egress', id)), false);
      assert.equal((await api('DELETE', `/v1/sandboxes/${id}`)).status, 200);
    });
  },
);
