import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { lookupUser } from '../../src/supervisor/index.js';
import { listenerPid, pidsInUidRange as pidsInRange, statusOf } from '../helpers/processes.js';
import { spawnServe } from '../helpers/serve.js';
import { request } from '../server/helpers.js';

const UID_START = 1_780_000_000 + (process.pid % 5000) * 100;
const UID_COUNT = 100;
const isRoot = process.getuid?.() === 0;

const pidsInUidRange = () => pidsInRange(UID_START, UID_COUNT);

interface Served {
  child: ChildProcess;
  url: string;
  adminKey: string | undefined;
  workerPid: number;
  exited: Promise<number | null>;
}

async function serve(dataDir: string, extra: string[] = []): Promise<Served> {
  const served = await spawnServe({
    dataDir,
    logLevel: 'silent',
    engineUids: { start: UID_START, count: UID_COUNT },
    engineCgroup: `palisade-suptest-${process.pid}`,
    args: extra,
    waitForWorker: true,
  });
  return { ...served, workerPid: served.workerPid! };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    p,
    new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`${what} timed out`)), ms)),
  ]);
}

describe('palisade serve as root: privilege separation', { skip: !isRoot && 'needs root' }, () => {
  const children: ChildProcess[] = [];
  const dataDir = mkdtempSync(join(tmpdir(), 'palisade-split-'));
  chmodSync(dataDir, 0o711);
  after(() => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('HTTP runs unprivileged, the API works through the supervisor, and killing the worker stops everything', async () => {
    const served = await serve(dataDir);
    children.push(served.child);
    const key = served.adminKey!;
    assert.match(key, /^psk_/);
    const user = lookupUser('palisade');
    assert.ok(user, 'the palisade service user exists');

    // The process listening on the API port is the worker, and it is not root in any way.
    const port = Number(new URL(served.url).port);
    const listener = listenerPid(port);
    assert.equal(listener, served.workerPid, 'the worker owns the listening socket');
    const worker = statusOf(served.workerPid);
    assert.deepEqual(worker.uid, [user.uid, user.uid, user.uid, user.uid]);
    assert.deepEqual(worker.gid, [user.gid, user.gid, user.gid, user.gid]);
    assert.ok(!worker.groups.includes(0), `worker groups ${worker.groups.join(',')}`);
    assert.equal(BigInt(`0x${worker.capEff}`), 0n, 'the worker has no capabilities');
    assert.equal(statusOf(served.child.pid!).uid[0], 0, 'the supervisor stays root');

    // Data directory layout: the worker owns the database, root owns the engine.
    const dir = statSync(dataDir);
    assert.equal(dir.mode & 0o7777, 0o1731);
    assert.equal(dir.uid, 0);
    assert.equal(dir.gid, user.gid);
    const db = statSync(join(dataDir, 'palisade.db'));
    assert.equal(db.uid, user.uid);
    assert.equal(db.mode & 0o777, 0o600);
    const engineDir = statSync(join(dataDir, 'engine'));
    assert.equal(engineDir.uid, 0);
    const socketPath = join(dataDir, 'supervisor', 'supervisor.sock');
    const sock = statSync(socketPath);
    assert.ok(sock.isSocket());
    assert.equal(sock.mode & 0o777, 0o600);
    assert.equal(sock.uid, user.uid);
    assert.equal(statSync(join(dataDir, 'supervisor')).mode & 0o777, 0o700);

    // create + exec + files + destroy through the split.
    const created = await request(served.url, 'POST', '/v1/sandboxes', { key, body: {} });
    assert.equal(created.status, 201, created.text);
    const id = created.json.id as string;
    const ran = await request(served.url, 'POST', `/v1/sandboxes/${id}/exec`, {
      key,
      body: { command: 'echo hello; id -u' },
    });
    assert.equal(ran.status, 200, ran.text);
    assert.match(ran.json.stdout, /^hello\n\d+\n$/);
    const put = await request(served.url, 'PUT', `/v1/sandboxes/${id}/files?path=/workspace/f`, {
      key,
      rawBody: Buffer.from([1, 2, 3]),
      headers: { 'content-type': 'application/octet-stream' },
    });
    assert.equal(put.status, 201, put.text);

    // The supervisor socket is not reachable from inside a sandbox.
    const probe = await request(served.url, 'POST', `/v1/sandboxes/${id}/exec`, {
      key,
      body: {
        argv: [
          '/bin/sh',
          '-c',
          'test -e "$1" && echo socket-visible; test -e "$2" && echo datadir-visible; cat /proc/net/unix',
          'probe',
          socketPath,
          dataDir,
        ],
      },
    });
    assert.equal(probe.status, 200, probe.text);
    assert.doesNotMatch(probe.json.stdout, /socket-visible|datadir-visible/);
    assert.doesNotMatch(probe.json.stdout, /supervisor\.sock/);
    const unixLines = (probe.json.stdout as string)
      .split('\n')
      .slice(1)
      .filter((l) => l.trim());
    assert.ok(
      unixLines.every((l) => !l.includes(dataDir)),
      `no host unix socket is visible: ${unixLines.join(' | ')}`,
    );

    // Sandbox network through the supervisor's gateway: test/supervisor/network.test.ts.

    const removed = await request(served.url, 'DELETE', `/v1/sandboxes/${id}`, { key });
    assert.equal(removed.status, 200, removed.text);
    const again = await request(served.url, 'POST', '/v1/sandboxes', { key, body: {} });
    assert.equal(again.status, 201);
    const bg = await request(served.url, 'POST', `/v1/sandboxes/${again.json.id}/exec`, {
      key,
      body: { command: 'sleep 300', background: true },
    });
    assert.equal(bg.status, 202, bg.text);
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(pidsInUidRange().length > 0, 'the sandbox runs processes before the worker dies');

    // A dead worker takes the supervisor down cleanly: sandboxes destroyed, socket removed.
    process.kill(served.workerPid, 'SIGKILL');
    const code = await withTimeout(served.exited, 30_000, 'supervisor exit');
    assert.equal(code, 1);
    assert.deepEqual(pidsInUidRange(), [], 'no sandbox process survives the worker');
    assert.equal(existsSync(socketPath), false);
  });

  it('restarts on the same data directory, and SIGTERM stops worker and supervisor', async () => {
    const served = await serve(dataDir);
    children.push(served.child);
    assert.equal(served.adminKey, undefined, 'the admin key is printed only once');
    const workerExit = new Promise<void>((resolve) => {
      const poll = setInterval(() => {
        if (!existsSync(`/proc/${served.workerPid}`)) {
          clearInterval(poll);
          resolve();
        }
      }, 50);
    });
    served.child.kill('SIGTERM');
    assert.equal(await withTimeout(served.exited, 30_000, 'supervisor exit'), 0);
    await withTimeout(workerExit, 5000, 'worker exit');
  });

  it('a dead supervisor takes the worker down at once', async () => {
    const served = await serve(dataDir);
    children.push(served.child);
    served.child.kill('SIGKILL');
    await served.exited;
    const deadline = Date.now() + 10_000;
    while (existsSync(`/proc/${served.workerPid}`) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(existsSync(`/proc/${served.workerPid}`), false, 'the worker must exit');
    // The next start works and cleans up (the stale socket is replaced).
    const next = await serve(dataDir);
    children.push(next.child);
    next.child.kill('SIGTERM');
    assert.equal(await withTimeout(next.exited, 30_000, 'supervisor exit'), 0);
  });

  it('--single-process keeps one root process', async () => {
    const spawned = await spawnServe({
      dataDir,
      logLevel: 'silent',
      engineUids: { start: UID_START, count: UID_COUNT },
      engineCgroup: `palisade-suptest-${process.pid}`,
      args: ['--single-process'],
      onSpawn: (child) => children.push(child),
    });
    const single = { child: spawned.child, url: spawned.url, err: spawned.output().stderr };
    const listener = listenerPid(Number(new URL(single.url).port));
    assert.equal(listener, single.child.pid);
    assert.match(single.err, /--single-process: the HTTP server runs as root/);
    single.child.kill('SIGTERM');
    await new Promise((r) => single.child.once('exit', r));
  });
});
