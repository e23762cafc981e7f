import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isPalisadeError } from '../../src/errors/index.js';
import {
  createSandboxFiles,
  createSandboxRuntime,
  type SandboxRuntime,
} from '../../src/sandbox/index.js';
import {
  connectRemoteRuntime,
  MAX_FRAME_BYTES,
  startSupervisor,
  type Supervisor,
} from '../../src/supervisor/index.js';
import { serverEngineConfig } from '../server/helpers.js';

interface RawResult {
  frames: Array<Record<string, unknown>>;
  closed: boolean;
}

/** Sends `payload` on a fresh connection and collects frames until the supervisor closes it (or `waitMs`). */
function rawExchange(
  socketPath: string,
  payload: string | Buffer,
  waitMs = 3000,
): Promise<RawResult> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    let text = '';
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const frames = text
        .split('\n')
        .filter((l) => l.length > 0)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      resolve({ frames, closed });
    };
    const timer = setTimeout(() => finish(false), waitMs);
    socket.on('data', (d: Buffer) => (text += d.toString()));
    socket.on('error', () => finish(true));
    socket.on('close', () => finish(true));
    socket.on('connect', () => socket.write(payload));
  });
}

describe('supervisor', () => {
  let dir: string;
  let engine: SandboxRuntime;
  let supervisor: Supervisor;
  const socketPath = () => supervisor.socketPath;
  const violations: string[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'palisade-sup-'));
    chmodSync(dir, 0o711);
    engine = await createSandboxRuntime(serverEngineConfig(dir));
    supervisor = await startSupervisor({
      runtime: engine,
      socketPath: join(dir, 'supervisor', 'supervisor.sock'),
      owner: { uid: 65534, gid: 65534 },
      limits: { maxConnections: 4, maxInFlight: 4, maxExecStreams: 3 },
      onViolation: (m) => violations.push(m),
    });
  });

  after(async () => {
    await supervisor.close();
    await engine.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the socket is 0600 in a 0700 directory, both owned by the worker user', () => {
    const sock = statSync(socketPath());
    assert.ok(sock.isSocket());
    assert.equal(sock.mode & 0o777, 0o600);
    assert.equal(sock.uid, 65534);
    assert.equal(sock.gid, 65534);
    const parent = statSync(join(dir, 'supervisor'));
    assert.equal(parent.mode & 0o777, 0o700);
    assert.equal(parent.uid, 65534);
  });

  const malformed: Array<[string, string | Buffer, RegExp]> = [
    ['bad JSON', '{"t":"create",\n', /not valid JSON/],
    ['unknown type', '{"t":"shell","id":1,"command":"sh"}\n', /unknown message type/],
    ['extra field', '{"t":"close","id":1,"asRoot":true}\n', /unexpected field "asRoot"/],
    [
      'create with a host mount',
      '{"t":"create","id":1,"options":{"mounts":[{"source":"/"}]}}\n',
      /unexpected field "mounts"/,
    ],
    ['bad request id', '{"t":"close","id":-3}\n', /positive integer/],
    [
      'bad sandbox id',
      '{"t":"destroy","id":1,"sandboxId":"../../../etc"}\n',
      /sandboxId must look like/,
    ],
    [
      'argv with NUL',
      `${JSON.stringify({ t: 'exec', id: 1, sandboxId: 'sb-abcdefghijklmnopqrst', request: { argv: ['/bin/sh', '-c\u0000id'] } })}\n`,
      /NUL/,
    ],
    ['oversize frame', Buffer.alloc(MAX_FRAME_BYTES + 10, 0x20), /frame longer than/],
  ];
  for (const [name, payload, pattern] of malformed) {
    it(`rejects ${name}: protocol error, connection closed, supervisor keeps serving`, async () => {
      const before = supervisor.violations;
      const result = await rawExchange(socketPath(), payload);
      assert.equal(result.closed, true, 'the supervisor must close the connection');
      assert.ok(result.frames.some((f) => f.t === 'hello'));
      const last = result.frames.at(-1);
      assert.equal(last?.t, 'protocolError');
      assert.match(String(last?.message), pattern);
      assert.equal(supervisor.violations, before + 1);
      // Still alive and answering.
      const next = await rawExchange(
        socketPath(),
        '{"t":"stats","id":1,"sandboxId":"sb-abcdefghijklmnopqrst"}\n',
        1500,
      );
      const res = next.frames.find((f) => f.t === 'res');
      assert.equal(res?.ok, false);
      assert.equal((res?.error as { code: string }).code, 'SANDBOX_NOT_FOUND');
    });
  }

  it('a duplicate in-flight request id is a violation', async () => {
    const line = '{"t":"stats","id":7,"sandboxId":"sb-abcdefghijklmnopqrst"}\n';
    const result = await rawExchange(socketPath(), line + line);
    // Both lines arrive in one read, so the first is still in flight when the second is parsed.
    assert.equal(result.closed, true);
    const last = result.frames.at(-1);
    assert.equal(last?.t, 'protocolError');
    assert.match(String(last?.message), /request id 7 is already in flight/);
  });

  it('refuses requests beyond the in-flight and exec-stream limits, without closing', async () => {
    const remote = await connectRemoteRuntime({ socketPath: socketPath() });
    try {
      const info = await remote.create({});
      // Sent in one burst: the supervisor reads them together, so only four can be in flight.
      const results = await Promise.allSettled(
        Array.from({ length: 12 }, () => remote.stats(info.id)),
      );
      const refused = results.filter(
        (r) => r.status === 'rejected' && isPalisadeError(r.reason, 'QUOTA_EXCEEDED'),
      );
      assert.ok(refused.length >= 1, 'some requests must be refused at the limit');
      assert.ok(results.some((r) => r.status === 'fulfilled'));
      const handles = [];
      for (let i = 0; i < 3; i++) handles.push(await remote.exec(info.id, { command: 'sleep 30' }));
      // The supervisor's QUOTA_EXCEEDED reaches callers as a 429-class limit that says the
      // bound is shared by every tenant.
      await assert.rejects(
        remote.exec(info.id, { command: 'true' }),
        (e: unknown) =>
          isPalisadeError(e, 'EXEC_LIMIT_REACHED') &&
          /all tenants together/.test(e.message) &&
          /more than 3 commands running/.test(e.message),
      );
      for (const h of handles) await h.kill();
      await Promise.all(handles.map((h) => h.done));
      // Room again once they ended.
      assert.equal((await remote.run(info.id, { command: 'echo ok' })).stdout.toString(), 'ok\n');
      await remote.destroy(info.id);
    } finally {
      remote.disconnect();
    }
  });

  it('create, streaming exec with large stdin, files, pause/resume, stats and destroy work through a RemoteRuntime', async () => {
    const remote = await connectRemoteRuntime({ socketPath: socketPath() });
    try {
      assert.equal(remote.backend, engine.backend);
      const states: string[] = [];
      remote.onStateChange((i) => states.push(i.state));
      const info = await remote.create({ labels: { team: 'a' } });
      assert.equal(remote.get(info.id)?.state, 'running');
      assert.ok(remote.list().some((s) => s.id === info.id));
      assert.ok(info.createdAt instanceof Date);
      const chunks: Buffer[] = [];
      const big = Buffer.alloc(3 * 1024 * 1024 + 17, 0x41);
      big[0] = 0;
      big[big.length - 1] = 0xff;
      const result = await remote.run(info.id, {
        argv: ['/bin/sh', '-c', 'sha256sum; echo err >&2; exit 3'],
        stdin: big,
        onStdout: (c) => chunks.push(c),
      });
      assert.equal(result.exitCode, 3);
      const { createHash } = await import('node:crypto');
      const expected = createHash('sha256').update(big).digest('hex');
      assert.match(result.stdout.toString(), new RegExp(`^${expected}`));
      assert.equal(Buffer.concat(chunks).toString(), result.stdout.toString());
      assert.equal(result.stderr.toString(), 'err\n');

      // Binary output larger than one frame comes back intact.
      const out = await remote.run(info.id, {
        command: 'head -c 2000000 /dev/zero | tr "\\0" "\\377"',
        maxOutputBytes: 4 * 1024 * 1024,
      });
      assert.equal(out.stdout.length, 2_000_000);
      assert.ok(out.stdout.every((b) => b === 0xff));

      // Streaming stdin and interrupt.
      const handle = await remote.exec(info.id, { argv: ['cat'], openStdin: true });
      await handle.writeStdin('line\n');
      handle.closeStdin();
      assert.equal((await handle.done).stdout.toString(), 'line\n');
      const sleeper = await remote.exec(info.id, { command: 'sleep 30' });
      sleeper.interrupt();
      const interrupted = await sleeper.done;
      assert.equal(interrupted.interrupted, true);

      // The kernel-confined files layer runs on top of exec, unchanged.
      const files = createSandboxFiles(remote);
      await files.write(info.id, '/workspace/x.bin', Buffer.from([0, 1, 2, 255]));
      assert.deepEqual([...(await files.read(info.id, '/workspace/x.bin'))], [0, 1, 2, 255]);

      await remote.pause(info.id);
      assert.equal(remote.get(info.id)?.state, 'paused');
      await remote.resume(info.id);
      const stats = await remote.stats(info.id);
      assert.ok(stats.memoryLimitBytes > 0);
      await remote.destroy(info.id);
      assert.equal(remote.get(info.id), undefined, 'destroyed sandboxes leave the mirror');
      assert.equal(engine.get(info.id), undefined);
      assert.ok(states.includes('paused') && states.includes('terminated'));
    } finally {
      remote.disconnect();
    }
  });

  it('engine errors come back as the same PalisadeError codes', async () => {
    const remote = await connectRemoteRuntime({ socketPath: socketPath() });
    try {
      await assert.rejects(remote.destroy('sb-abcdefghijklmnopqrst'), (e: unknown) =>
        isPalisadeError(e, 'SANDBOX_NOT_FOUND'),
      );
      const info = await remote.create({});
      await assert.rejects(
        remote.run(info.id, { argv: ['true'], env: { LD_PRELOAD: '/x' } }),
        (e: unknown) => isPalisadeError(e, 'INVALID_ENV'),
      );
      await remote.destroy(info.id);
    } finally {
      remote.disconnect();
    }
  });

  it('ready-made bridges, network without a gateway, mounts and host workspaces are refused through the supervisor with a clear error', async () => {
    const remote = await connectRemoteRuntime({ socketPath: socketPath() });
    try {
      await assert.rejects(
        remote.create({ network: { bridges: [{ port: 3128, hostSocket: '/etc/passwd' }] } }),
        (e: unknown) =>
          isPalisadeError(e, 'INVALID_ARGUMENT') && /Ready-made network bridges/.test(e.message),
      );
      // This supervisor was started without the egress option.
      await assert.rejects(
        remote.create({ network: async () => ({ bridges: [] }) }),
        (e: unknown) => isPalisadeError(e, 'REQUIREMENT_MISSING') && /egress/.test(e.message),
      );
      assert.deepEqual(engine.list(), [], 'nothing was created');
      await assert.rejects(remote.create({ mounts: [{ source: '/' }] }), (e: unknown) =>
        isPalisadeError(e, 'INVALID_ARGUMENT'),
      );
      await assert.rejects(remote.create({ workspaceDir: '/etc' }), (e: unknown) =>
        isPalisadeError(e, 'INVALID_ARGUMENT'),
      );
    } finally {
      remote.disconnect();
    }
  });

  it('commands of a connection that drops are killed; other connections are unaffected', async () => {
    const remote = await connectRemoteRuntime({ socketPath: socketPath() });
    const keeper = await connectRemoteRuntime({ socketPath: socketPath() });
    try {
      const info = await remote.create({});
      await remote.exec(info.id, { command: 'sleep 60 & echo $! > /tmp/pid; wait' });
      const other = await keeper.exec(info.id, { command: 'sleep 60' });
      // A connection made later learns about existing sandboxes before its hello.
      const late = await connectRemoteRuntime({ socketPath: socketPath() });
      assert.equal(late.get(info.id)?.state, 'running');
      late.disconnect();
      await new Promise((r) => setTimeout(r, 300));
      remote.disconnect();
      assert.equal(await remote.disconnected, 'disconnected by the worker');
      await assert.rejects(remote.stats(info.id), /supervisor is not reachable/);
      const deadline = Date.now() + 5000;
      let alive = true;
      while (alive && Date.now() < deadline) {
        const check = await keeper.run(info.id, {
          command: 'kill -0 $(cat /tmp/pid) 2>/dev/null && echo alive || echo gone',
        });
        alive = check.stdout.toString().trim() === 'alive';
        if (alive) await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(alive, false, "the dropped connection's command must be killed");
      const still = await keeper.run(info.id, { command: 'pgrep -x sleep | wc -l' });
      assert.equal(
        still.stdout.toString().trim(),
        '1',
        "the other connection's command keeps running",
      );
      await other.kill();
      await keeper.destroy(info.id);
    } finally {
      remote.disconnect();
      keeper.disconnect();
    }
  });

  it('close() destroys every sandbox through the supervisor', async () => {
    const separateDir = mkdtempSync(join(tmpdir(), 'palisade-sup-close-'));
    chmodSync(separateDir, 0o711);
    const ownEngine = await createSandboxRuntime(serverEngineConfig(separateDir));
    const own = await startSupervisor({
      runtime: ownEngine,
      socketPath: join(separateDir, 's', 'sock'),
    });
    try {
      const remote = await connectRemoteRuntime({ socketPath: own.socketPath });
      const info = await remote.create({});
      await remote.close();
      assert.equal(ownEngine.get(info.id), undefined);
      assert.deepEqual(ownEngine.list(), []);
    } finally {
      await own.close();
      await ownEngine.close();
      rmSync(separateDir, { recursive: true, force: true });
    }
  });

  it('a worker that stops reading is disconnected once the queue bound is hit, and its command killed', async () => {
    const separateDir = mkdtempSync(join(tmpdir(), 'palisade-sup-slow-'));
    chmodSync(separateDir, 0o711);
    const ownEngine = await createSandboxRuntime(serverEngineConfig(separateDir));
    const own = await startSupervisor({
      runtime: ownEngine,
      socketPath: join(separateDir, 's', 'sock'),
      limits: { maxBufferedBytes: 1024 * 1024 },
    });
    try {
      const info = await ownEngine.create({});
      const socket = connect(own.socketPath);
      await new Promise((r) => socket.once('connect', r));
      socket.on('error', () => undefined);
      socket.pause(); // never reads
      socket.write(
        `${JSON.stringify({ t: 'exec', id: 1, sandboxId: info.id, request: { command: 'cat /dev/zero', maxOutputBytes: 64 * 1024 * 1024, timeoutMs: 60_000 } })}\n`,
      );
      const deadline = Date.now() + 20_000;
      while (own.violations === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(own.violations, 1, 'the stalled connection must be cut');
      assert.equal(own.connections, 0);
      socket.destroy();
      // The command it started is killed, not left running.
      let running = '1';
      const killDeadline = Date.now() + 5000;
      while (running !== '0' && Date.now() < killDeadline) {
        const check = await ownEngine.run(info.id, { command: 'pgrep -x cat | wc -l' });
        running = check.stdout.toString().trim();
        if (running !== '0') await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(running, '0');
      await ownEngine.destroy(info.id);
    } finally {
      await own.close();
      await ownEngine.close();
      rmSync(separateDir, { recursive: true, force: true });
    }
  });

  it('a second connection beyond the connection limit is refused and closed', async () => {
    const separateDir = mkdtempSync(join(tmpdir(), 'palisade-sup-conn-'));
    chmodSync(separateDir, 0o711);
    const ownEngine = await createSandboxRuntime(serverEngineConfig(separateDir));
    const own = await startSupervisor({
      runtime: ownEngine,
      socketPath: join(separateDir, 's', 'sock'),
    });
    try {
      const first = await connectRemoteRuntime({ socketPath: own.socketPath });
      const second = await rawExchange(own.socketPath, '');
      assert.equal(second.closed, true);
      assert.match(String(second.frames[0]?.message), /already connected/);
      assert.equal(own.connections, 1);
      first.disconnect();
    } finally {
      await own.close();
      await ownEngine.close();
      rmSync(separateDir, { recursive: true, force: true });
    }
  });
});
