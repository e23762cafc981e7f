// Attack suite for seed 001's hardening checklist: each item checked against a real
// `palisade serve` (privilege-separated, as in production) with an operator policy that
// blocks the commands the checklist names.
import assert from 'node:assert/strict';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuditLog } from '../../src/audit/index.js';
import { backupDatabase, openStore } from '../../src/store/index.js';
import { listenerPid, statusField } from '../helpers/processes.js';
import { CLI_ENTRY as CLI, spawnServe } from '../helpers/serve.js';
import { httpSession } from '../mcp/helpers.js';
import { execIn, runCli, runCommand, startPalisade, type Palisade } from './fixture.js';

const OPERATOR_POLICY = `
permissions:
  default: deny
  deny:
    - "Bash(sudo:*)"
    - "Bash(su:*)"
    - "Bash(curl:*)"
    - "Bash(wget:*)"
    - "Bash(nc:*)"
    - "Bash(ncat:*)"
    - "Bash(ps:*)"
  allow:
    - "Bash(*)"
    - "Read(./**)"
    - "Write(./**)"
    - "LS(./**)"
`;

/** `palisade serve` on an existing data directory; resolves once it listens. */
async function serveOn(
  dataDir: string,
  engine: { start: number; cgroup: string },
): Promise<{ url: string; stdout(): string; stop(): Promise<void> }> {
  const { child, url, exited, output } = await spawnServe({
    dataDir,
    engineUids: { start: engine.start, count: 100 },
    engineCgroup: engine.cgroup,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/root' },
  });
  return {
    url,
    stdout: () => output().stdout,
    async stop() {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

async function countingListener(): Promise<{ server: Server; port: number; count(): number }> {
  let connections = 0;
  const server = createServer((s) => {
    connections++;
    s.end('host-service\n');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port, count: () => connections };
}

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    const st = statSync(path, { throwIfNoEntry: false });
    if (!st) continue;
    if (st.isDirectory()) out.push(...filesUnder(path));
    else if (st.isFile()) out.push(path);
  }
  return out;
}

describe('001 hardening checklist against a real palisade serve', () => {
  let p: Palisade;
  let sandboxId: string;
  let hostService: Awaited<ReturnType<typeof countingListener>>;

  before(async () => {
    p = await startPalisade({ policy: OPERATOR_POLICY });
    sandboxId = await p.createSandbox({ labels: { suite: 'h6-001' } });
    hostService = await countingListener();
    // The shell analyser's first parses after start are its slowest (wasm warm-up); its 50 ms
    // deadline fails closed, so warm it before the assertions.
    for (let i = 0; i < 3; i++) await execIn(p, sandboxId, 'true && echo warm');
  });

  /** Puts a script into the sandbox's workspace through the files API. */
  async function upload(name: string, content: string): Promise<void> {
    const res = await p.req('PUT', `/v1/sandboxes/${sandboxId}/files?path=%2Fworkspace%2F${name}`, {
      rawBody: content,
      headers: { 'content-type': 'application/octet-stream' },
    });
    assert.ok(res.status < 300, res.text);
  }

  after(async () => {
    hostService?.server.close();
    await p?.close();
  });

  it('001 HC-1: a sandbox created over the API has no network: only lo, no route, no DNS, host services unreachable', async () => {
    await upload(
      'net.py',
      [
        'import socket, sys',
        'for host in ("127.0.0.1", "10.0.2.2"):',
        '    try:',
        `        socket.create_connection((host, ${hostService.port}), 2); print("CONNECTED", host)`,
        '    except OSError as e: print("refused", host, e)',
        'try: socket.getaddrinfo("example.com", 443); print("RESOLVED")',
        'except OSError as e: print("dns", e)',
        's = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)',
        'socket.create_connection(s.getsockname(), 2); print("OWN-LOOPBACK-OK")',
      ].join('\n'),
    );
    const res = await execIn(
      p,
      sandboxId,
      'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "; echo ---; tail -n +2 /proc/net/route; echo ---; python3 net.py',
    );
    assert.equal(res.status, 200, res.text);
    const [ifaces, routes, probes] = (res.json.stdout as string).split('---\n') as [
      string,
      string,
      string,
    ];
    assert.equal(ifaces.trim(), 'lo');
    assert.equal(routes.trim(), '');
    assert.doesNotMatch(probes, /CONNECTED/);
    assert.match(probes, /refused 127\.0\.0\.1 .*Connection refused/);
    assert.match(probes, /refused 10\.0\.2\.2 .*unreachable/i);
    assert.match(probes, /^dns /m);
    assert.doesNotMatch(probes, /RESOLVED/);
    assert.match(probes, /OWN-LOOPBACK-OK/);
    assert.equal(hostService.count(), 0, 'a sandbox reached a host service');
  });

  it('001 HC-2: sudo, curl, wget and nc are denied by the policy and never run; without it they still cannot escalate or reach out', async () => {
    const target = `http://127.0.0.1:${hostService.port}/`;
    for (const command of [
      'sudo id',
      `curl -s ${target}`,
      `/usr/bin/curl -s ${target}`,
      `env FOO=1 curl -s ${target}`,
      `wget -qO- ${target}`,
      `nc 127.0.0.1 ${hostService.port}`,
      `echo start && curl -s ${target} | sh`,
      `bash -c "curl -s ${target}"`,
    ]) {
      const res = await execIn(p, sandboxId, `${command}; touch /workspace/ran`);
      assert.equal(res.status, 403, `${command}: ${res.text}`);
      assert.equal(res.json.code, 'POLICY_DENIED', command);
    }
    const ran = await execIn(p, sandboxId, 'ls /workspace/ran 2>&1 || echo absent');
    assert.equal(ran.json.stdout.trim().endsWith('absent'), true, ran.text);
    // Defense in depth below the policy: the same tools, started from a script the policy
    // cannot see into, gain nothing (no setuid root, no network).
    await upload(
      'escalate.py',
      [
        'import os, urllib.request',
        'try: os.setuid(0); print("ROOT")',
        'except OSError as e: print("setuid", e)',
        'try:',
        `    urllib.request.urlopen("${target}", timeout=2); print("FETCHED")`,
        'except Exception as e: print("fetch", e)',
      ].join('\n'),
    );
    const underneath = await execIn(
      p,
      sandboxId,
      'python3 escalate.py; grep NoNewPrivs /proc/self/status; test -e /usr/bin/sudo && echo sudo-present || echo sudo-absent',
    );
    assert.equal(underneath.status, 200, underneath.text);
    assert.match(underneath.json.stdout, /^setuid .*(Operation not permitted|Invalid argument)/m);
    assert.doesNotMatch(underneath.json.stdout, /ROOT|FETCHED/);
    assert.match(underneath.json.stdout, /NoNewPrivs:\s+1/);
    assert.match(underneath.json.stdout, /sudo-absent/);
    assert.match(underneath.json.stdout, /^fetch .*refused/m);
    assert.equal(hostService.count(), 0);
    const ok = await execIn(p, sandboxId, 'echo allowed');
    assert.equal(ok.status, 200);
    assert.equal(ok.json.stdout, 'allowed\n');
  });

  it('001 HC-3: the process listening on the API port is not root and holds no capabilities', () => {
    const port = Number(new URL(p.url).port);
    const pid = listenerPid(port);
    assert.ok(pid, 'no process owns the API port');
    assert.equal(pid, p.workerPid, 'the listener is the unprivileged worker');
    for (const field of ['Uid', 'Gid']) {
      const ids: number[] = statusField(pid, field).split(/\s+/).map(Number);
      assert.equal(ids.length, 4);
      assert.ok(
        ids.every((id) => id !== 0),
        `${field} ${ids.join(' ')}`,
      );
    }
    assert.equal(statusField(pid, 'Groups').split(/\s+/).includes('0'), false);
    assert.match(statusField(pid, 'CapEff'), /^0+$/);
    assert.match(statusField(pid, 'CapPrm'), /^0+$/);
    // The supervisor that keeps root for the engine does not listen on the network.
    assert.equal(Number(statusField(p.pid, 'Uid').split(/\s+/)[0]), 0);
    assert.notEqual(p.pid, pid);
  });

  it('001 HC-5: API keys are stored only as hashes; no secret is anywhere in the data directory', async () => {
    const { key } = await p.createKey({ name: 'h6-secret-check', scopes: ['sandboxes:read'] });
    const works = await p.req('GET', '/v1/sandboxes', { key });
    assert.equal(works.status, 200);
    const secrets = [key, p.adminKey].map((k) => /^psk_[a-z2-7]{16}_(.+)$/.exec(k)?.[1] ?? '');
    assert.ok(secrets.every((s) => s.length === 43));
    // Database, WAL and shared memory included; workspace images are the sandboxes' own disks.
    const files = filesUnder(p.dataDir).filter((f) => !f.endsWith('.img') && !f.includes('/mnt/'));
    assert.ok(files.some((f) => f.endsWith('palisade.db')));
    for (const file of files) {
      let content: Buffer;
      try {
        content = readFileSync(file);
      } catch {
        continue; // sockets and similar
      }
      for (const secret of secrets) {
        assert.equal(content.includes(secret), false, `a key secret is in ${file}`);
      }
    }
    // The admin key was shown once, at first start, and is in no log line.
    assert.equal(p.output().stdout.split(p.adminKey).length - 1, 1);
    assert.equal(p.output().stderr.includes(secrets[1]!), false);
  });

  it('001 HC-7: server logs are JSON lines with the request id the client saw, ready for a log forwarder', async () => {
    const res = await p.req('GET', `/v1/sandboxes/${sandboxId}`);
    assert.equal(res.status, 200);
    const requestId = res.headers.get('x-request-id');
    assert.match(requestId ?? '', /^req_/);
    await new Promise((r) => setTimeout(r, 200));
    const lines = p
      .output()
      .stderr.split('\n')
      .filter((l) => l.startsWith('{'));
    assert.ok(lines.length > 5);
    const entries = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const e of entries) {
      assert.equal(typeof e.level, 'number');
      assert.equal(typeof e.time, 'number');
      assert.equal(typeof e.msg, 'string');
    }
    const mine = entries.filter((e) => e.reqId === requestId);
    assert.deepEqual(
      mine.map((e) => e.msg),
      ['incoming request', 'request completed'],
    );
    // The key the client sent is never in the log.
    assert.equal(
      lines.some((l) => l.includes(p.adminKey.slice('psk_'.length + 17))),
      false,
    );
  });

  it('001 HC-8: palisade backup takes a consistent online copy that verifies and holds the keys and audit log', async () => {
    const { id: keyId, key } = await p.createKey({
      name: 'h6-backup-probe',
      scopes: ['sandboxes:read'],
    });
    const out = mkdtempSync(join(tmpdir(), 'palisade-h6-backup-'));
    chmodSync(out, 0o711); // sandbox uids of the restored server must traverse it
    const target = join(out, 'copy');
    try {
      // Writes continue while the backup runs.
      const busy = Promise.all(
        Array.from({ length: 10 }, (_, i) => execIn(p, sandboxId, `echo ${i}`)),
      );
      const backup = await runCli(['backup', '--data-dir', p.dataDir, '--output', target]);
      await busy;
      assert.equal(backup.code, 0, backup.stdout + backup.stderr);
      assert.match(backup.stdout, /integrity OK; audit chain OK: \d+ records/);
      assert.equal(statSync(target).mode & 0o777, 0o700);
      assert.equal(statSync(join(target, 'palisade.db')).mode & 0o777, 0o600);
      // The copy is a usable database: the chain verifies and the new key is in it.
      const copy = await openStore({ dataDir: target, migrate: false });
      try {
        const chain = await new AuditLog(copy.db).verify();
        assert.equal(chain.ok, true);
        const row = await copy.db
          .selectFrom('api_keys')
          .select('name')
          .where('id', '=', keyId)
          .executeTakeFirst();
        assert.equal(row?.name, 'h6-backup-probe');
      } finally {
        await copy.close();
      }
      // A second backup never overwrites the first.
      await assert.rejects(backupDatabase(p.dataDir, target), /not empty/);
      // Restore as docs/backup.md says: a server started on a data directory holding the copy
      // serves the keys it had (and prints no new admin key).
      const restored = join(out, 'restored');
      mkdirSync(restored, { mode: 0o711 });
      copyFileSync(join(target, 'palisade.db'), join(restored, 'palisade.db'));
      const server = await serveOn(restored, {
        start: p.uidRange.start + 600,
        cgroup: `palisade-h6-restore-${process.pid}`,
      });
      try {
        assert.doesNotMatch(server.stdout(), /Admin API key/);
        const whoami = await fetch(`${server.url}/v1/whoami`, {
          headers: { authorization: `Bearer ${key}` },
        });
        assert.equal(whoami.status, 200);
      } finally {
        await server.stop();
      }
      // The live server was not disturbed.
      const still = await execIn(p, sandboxId, 'echo still');
      assert.equal(still.json.stdout, 'still\n');
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it('001 HC-9: deleting a sandbox removes its workspace from the host; purge removes its record', async () => {
    const id = await p.createSandbox({ labels: { suite: 'h6-retention' } });
    const put = await p.req('PUT', `/v1/sandboxes/${id}/files?path=%2Fworkspace%2Fsession.txt`, {
      rawBody: 'session data',
      headers: { 'content-type': 'application/octet-stream' },
    });
    assert.ok(put.status < 300, put.text);
    const read = await p.req('GET', `/v1/sandboxes/${id}/files?path=%2Fworkspace%2Fsession.txt`);
    assert.equal(read.text, 'session data');
    const workspaces = join(p.dataDir, 'engine', 'workspaces');
    const image = join(workspaces, 'images', `${id}.img`);
    const mount = join(workspaces, 'mnt', id);
    assert.ok(
      existsSync(image) && existsSync(mount),
      'workspace location changed; update the test',
    );
    const del = await p.req('DELETE', `/v1/sandboxes/${id}`);
    assert.ok(del.status < 300, del.text);
    assert.equal(existsSync(image), false, 'workspace image left behind');
    assert.equal(existsSync(mount), false, 'workspace mount left behind');
    const ended = await p.req('GET', `/v1/sandboxes/${id}`);
    assert.equal(ended.status, 200);
    assert.equal(ended.json.state, 'terminated');
    const purge = await p.req('DELETE', `/v1/sandboxes/${id}?purge=true`);
    assert.ok(purge.status < 300, purge.text);
    const gone = await p.req('GET', `/v1/sandboxes/${id}`);
    assert.equal(gone.status, 404);
    // The audit chain keeps what happened (without the contents).
    const audit = await p.req('GET', `/v1/audit?sandboxId=${id}&limit=100`);
    const types = (audit.json.items as Array<{ type: string }>).map((i) => i.type);
    assert.ok(types.includes('sandbox.create') && types.includes('sandbox.destroy'), types.join());
    assert.equal(JSON.stringify(audit.json).includes('session data'), false);
  });

  it('001 HC-10: the API cannot mount host folders into a sandbox', async () => {
    const shared = mkdtempSync(join(tmpdir(), 'palisade-h6-skills-'));
    try {
      for (const body of [
        { mounts: [{ source: shared, target: '/skills', writable: true }] },
        { workspaceDir: shared },
        { volumes: [`${shared}:/skills`] },
      ]) {
        const res = await p.req('POST', '/v1/sandboxes', { body });
        assert.equal(res.status, 400, `${JSON.stringify(body)}: ${res.text}`);
      }
      const inside = await execIn(p, sandboxId, 'ls /skills 2>&1; mount | grep -c palisade-h6');
      assert.match(inside.json.stdout, /No such file/);
    } finally {
      rmSync(shared, { recursive: true, force: true });
    }
  });

  it('001 HC-11: palisade doctor verifies the host requirements and a live sandbox', async () => {
    const r = await runCli(['doctor', '--json']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const report = JSON.parse(r.stdout) as {
      ok: boolean;
      checks: Array<{ name: string; ok: boolean }>;
    };
    assert.equal(report.ok, true);
    const smoke = report.checks.find((c) => c.name === 'sandbox smoke test');
    assert.ok(smoke?.ok, JSON.stringify(report.checks));
    assert.ok(report.checks.some((c) => /bubblewrap|bwrap/i.test(c.name) && c.ok));
  });

  it('001 HC-12: the dangerous-command policy is active on every entry point: exec, streamed, background and MCP', async () => {
    const plain = await execIn(p, sandboxId, 'ps aux');
    assert.equal(plain.status, 403);
    assert.equal(plain.json.code, 'POLICY_DENIED');
    assert.match(plain.json.message, /ps/);
    const streamed = await p.req('POST', `/v1/sandboxes/${sandboxId}/exec`, {
      body: { command: 'ps aux' },
      headers: { accept: 'text/event-stream' },
    });
    assert.equal(streamed.status, 403, streamed.text);
    assert.doesNotMatch(streamed.text, /PID/);
    const background = await p.req('POST', `/v1/sandboxes/${sandboxId}/exec`, {
      body: { command: 'ps aux', background: true },
    });
    assert.equal(background.status, 403, background.text);
    const mcp = await httpSession(p.url, p.adminKey);
    try {
      const denied = await mcp.call('exec', { sandboxId, command: 'ps aux' });
      assert.equal(denied.isError, true);
      assert.match(denied.text, /denied|POLICY_DENIED/i);
      assert.doesNotMatch(denied.text, /PID/);
      const allowed = await mcp.call('exec', { sandboxId, command: 'echo via-mcp' });
      assert.equal(allowed.isError, false, allowed.text);
      assert.match(allowed.text, /via-mcp/);
    } finally {
      await mcp.close();
    }
    const audit = await p.req(
      'GET',
      `/v1/audit?sandboxId=${sandboxId}&type=policy.decision&limit=500`,
    );
    assert.equal(audit.status, 200, audit.text);
    const denials = (
      audit.json.items as Array<{ data: { decision?: string; command?: string } }>
    ).filter((i) => i.data.decision === 'deny' && i.data.command === 'ps aux');
    assert.ok(denials.length >= 4, `only ${denials.length} audited denials of ps aux`);
  });

  it('001 HC-13: with bubblewrap broken palisade serve refuses to start and doctor fails, so nothing runs unsandboxed', async () => {
    // Only in a private mount namespace of the spawned command: an empty, non-executable file
    // covers /usr/bin/bwrap. The host (and every other test) keeps the real one.
    const scratch = mkdtempSync(join(tmpdir(), 'palisade-h6-nobwrap-'));
    const fake = join(scratch, 'bwrap');
    writeFileSync(fake, '', { mode: 0o644 });
    const dataDir = join(scratch, 'data');
    const hidden = (args: string[]) =>
      runCommand('unshare', [
        '--mount',
        '--propagation',
        'private',
        'sh',
        '-c',
        `mount --bind "$0" /usr/bin/bwrap && exec "$@"`,
        fake,
        process.execPath,
        '--import',
        'tsx',
        CLI,
        ...args,
      ]);
    try {
      const serve = await hidden([
        'serve',
        '--port',
        '0',
        '--data-dir',
        dataDir,
        '--engine-uids',
        `${p.uidRange.start + 500}:100`,
        '--engine-cgroup',
        `palisade-h6-nobwrap-${process.pid}`,
      ]);
      assert.notEqual(serve.code, 0, serve.stdout);
      assert.match(serve.stderr, /bubblewrap|bwrap/i);
      assert.doesNotMatch(serve.stdout + serve.stderr, /listening on/);
      const doctor = await hidden(['doctor', '--json']);
      assert.equal(doctor.code, 1, doctor.stdout + doctor.stderr);
      const report = JSON.parse(doctor.stdout) as {
        checks: Array<{ name: string; ok: boolean; fix?: string }>;
      };
      const bwrap = report.checks.find((c) => c.name === 'bubblewrap');
      assert.equal(bwrap?.ok, false);
      assert.match(bwrap?.fix ?? '', /apt-get install bubblewrap/);
      assert.equal(
        report.checks.some((c) => c.name === 'sandbox smoke test'),
        false,
      );
      assert.ok(existsSync('/usr/bin/bwrap') && statSync('/usr/bin/bwrap').size > 0);
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
    // With bubblewrap intact (the running server) commands run, sandboxed.
    const ok = await execIn(p, sandboxId, 'cat /proc/self/uid_map');
    assert.equal(ok.status, 200);
    assert.match(ok.json.stdout, /^\s*1000\s+\d+\s+1\s*$/);
  });
});
