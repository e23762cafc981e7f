import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { SandboxInfo, SandboxRuntime } from '../../src/sandbox/index.js';
import { hostPidsOfUid, startTestEngine } from './helpers.js';

const SECRET = 'palisade-test-secret-' + Math.random().toString(36).slice(2);

describe('sandbox isolation (real bubblewrap sandboxes)', () => {
  let engine: SandboxRuntime;
  let sb: SandboxInfo;

  before(async () => {
    process.env.PALISADE_PLANTED_SECRET = SECRET;
    ({ engine } = await startTestEngine('iso'));
    sb = await engine.create();
  });
  after(async () => {
    delete process.env.PALISADE_PLANTED_SECRET;
    await engine?.close();
  });

  const sh = async (command: string) => {
    const r = await engine.run(sb.id, { command, timeoutMs: 10_000 });
    return { ...r, out: r.stdout.toString(), err: r.stderr.toString() };
  };

  it('001 #0: ps aux shows only the sandbox’s own processes', async () => {
    const r = await sh('ps aux');
    assert.equal(r.exitCode, 0, r.err);
    const lines = r.out.trim().split('\n').slice(1);
    // the agent (pid 1), the shell and ps itself
    assert.ok(lines.length <= 3, `expected at most 3 processes, saw:\n${r.out}`);
    assert.match(lines[0]!, /^sandbox\s+1\s/);
    assert.doesNotMatch(r.out, /node|systemd|init|sshd/);
    const pids = await sh('ls /proc | grep -c "^[0-9]"');
    assert.ok(Number(pids.out.trim()) <= 4, pids.out);
  });

  it('runs as the non-root sandbox user with a synthesised passwd', async () => {
    const r = await sh('id -u; id -g; id -un; getent passwd sandbox; cat /etc/group');
    const [uid, gid, name, pw] = r.out.split('\n');
    assert.equal(uid, '1000');
    assert.equal(gid, '1000');
    assert.equal(name, 'sandbox');
    assert.equal(pw, 'sandbox:x:1000:1000:Palisade sandbox:/workspace:/bin/sh');
    assert.doesNotMatch(r.out, /root:x:0:0:root:\/root/);
  });

  it('001 #3: host-side uid is the sandbox’s own unprivileged uid, never 0', async () => {
    assert.notEqual(sb.hostUid, 0);
    const handle = await engine.exec(sb.id, { argv: ['sleep', '5'] });
    const pids = hostPidsOfUid(sb.hostUid);
    assert.ok(pids.length >= 2, 'bwrap and the agent run as the sandbox uid on the host');
    for (const pid of pids) {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      const uids = /^Uid:\s+(.*)$/m.exec(status)![1]!.split(/\s+/).map(Number);
      assert.deepEqual(
        uids,
        [sb.hostUid, sb.hostUid, sb.hostUid, sb.hostUid],
        'real, effective, saved and fs uid',
      );
      assert.match(status, /^CapEff:\s+0+$/m);
      assert.match(status, /^NoNewPrivs:\s+1$/m);
    }
    // Seen from the host, the sandbox's uid 1000 maps to the sandbox's host uid (not 0).
    const sleeper = pids.find((p) =>
      readFileSync(`/proc/${p}/cmdline`, 'utf8').startsWith('sleep'),
    );
    assert.ok(sleeper);
    assert.match(
      readFileSync(`/proc/${sleeper}/uid_map`, 'utf8'),
      new RegExp(`^\\s*1000\\s+${sb.hostUid}\\s+1\\s*$`),
    );
    await handle.kill();
    await handle.done;
  });

  it('has no capabilities, no_new_privs and a seccomp filter inside', async () => {
    const r = await sh(
      'grep -E "^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):" /proc/self/status',
    );
    assert.match(r.out, /CapEff:\s+0000000000000000/);
    assert.match(r.out, /CapBnd:\s+0000000000000000/);
    assert.match(r.out, /CapPrm:\s+0000000000000000/);
    assert.match(r.out, /NoNewPrivs:\s+1/);
    assert.match(r.out, /Seccomp:\s+2/);
  });

  it('cannot create namespaces or mount (seccomp + no capabilities)', async () => {
    const r = await sh(
      'unshare -U true; echo "u=$?"; unshare -n true; echo "n=$?"; mount -t tmpfs x /tmp 2>/dev/null; echo "m=$?"',
    );
    assert.match(r.out, /u=[1-9]/);
    assert.match(r.out, /n=[1-9]/);
    assert.match(r.out, /m=[1-9]/);
  });

  it('host secrets are absent: /etc/shadow, ssh keys, /root, /home, /var, the project directory', async () => {
    const r = await sh(
      'for p in /etc/shadow /etc/gshadow /etc/ssh /etc/sudoers /root /home /var /work /work/main /etc/machine-id; do if [ -e "$p" ]; then echo "PRESENT $p"; fi; done; echo done',
    );
    assert.equal(r.out.trim(), 'done', r.out);
  });

  it('004 M-2: a secret in the engine’s environment does not reach the sandbox', async () => {
    const r = await sh('env; cat /proc/1/environ 2>/dev/null | tr "\\0" "\\n"');
    assert.ok(!r.out.includes(SECRET));
    const names = r.out
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => l.split('=')[0]);
    for (const n of names)
      assert.ok(
        ['PATH', 'HOME', 'LANG', 'TERM', 'PWD', 'SHLVL', '_'].includes(n!),
        `unexpected variable ${n}`,
      );
  });

  it('writes are only possible in /workspace and /tmp', async () => {
    const r = await sh(
      'for p in /usr/x /etc/x /x /bin/x /proc/x /.palisade/x; do touch "$p" 2>/dev/null && echo "WROTE $p"; done; touch /workspace/ok /tmp/ok && echo ok',
    );
    assert.equal(r.out.trim(), 'ok', r.out);
    const home = await sh('echo $HOME; pwd; stat -c "%u %a" /workspace');
    assert.equal(home.out, '/workspace\n/workspace\n1000 700\n');
  });

  it('001 #5: network is off: only lo, a host loopback server is unreachable, DNS fails', async () => {
    let connections = 0;
    const server: Server = createServer((s) => {
      connections++;
      s.end('hello');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      const r = await sh(
        `tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; curl -sS --max-time 3 http://127.0.0.1:${port}/ >/dev/null 2>&1; echo "curl=$?"; getent hosts example.com; echo "dns=$?"; cat /etc/resolv.conf 2>/dev/null | wc -l`,
      );
      assert.match(r.out, /^lo\n/);
      assert.doesNotMatch(r.out, /eth|ens|veth|wlan/);
      assert.match(r.out, /curl=[1-9]/);
      assert.match(r.out, /dns=[1-9]/);
      assert.equal(connections, 0, 'the host server must never see a connection');
    } finally {
      server.close();
    }
  });

  it('hostname and IPC are the sandbox’s own', async () => {
    const r = await sh('hostname; ipcs -m 2>/dev/null | grep -c "^0x" || true');
    assert.equal(r.out.split('\n')[0], 'palisade');
  });
});
