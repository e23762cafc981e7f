import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, chmodSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isPalisadeError } from '../../src/errors/index.js';
import {
  createSandboxRuntime,
  type SandboxInfo,
  type SandboxRuntime,
} from '../../src/sandbox/index.js';
import {
  cgroupDirsFor,
  hostPidsOfUid,
  mountsUnder,
  startTestEngine,
  testEngineConfig,
  waitFor,
} from './helpers.js';

describe('sandbox lifecycle and cleanup', () => {
  let engine: SandboxRuntime;
  let config: Awaited<ReturnType<typeof startTestEngine>>['config'];

  before(async () => {
    ({ engine, config } = await startTestEngine('life'));
  });
  after(async () => engine?.close());

  it('destroy leaves no process, cgroup or mount behind', async () => {
    const sb = await engine.create();
    await engine.exec(sb.id, {
      command: 'sleep 1000 & setsid sleep 1000 & sleep 1000',
      timeoutMs: 60_000,
    });
    // exec resolves once the shell runs; its background children follow a moment later.
    assert.ok(
      await waitFor(() => hostPidsOfUid(sb.hostUid).length >= 5, 10_000),
      'bwrap, agent, sh and the sleeps run',
    );
    assert.ok(cgroupDirsFor(config.cgroupPrefix!, sb.id).length > 0, 'the sandbox had cgroups');
    const states: string[] = [];
    const off = engine.onStateChange((i) => i.id === sb.id && states.push(i.state));
    await engine.destroy(sb.id);
    off();
    assert.deepEqual(states, ['terminated']);
    assert.deepEqual(hostPidsOfUid(sb.hostUid), []);
    assert.deepEqual(cgroupDirsFor(config.cgroupPrefix!, sb.id), []);
    assert.deepEqual(
      mountsUnder(config.dataDir).filter((l) => l.includes(sb.id)),
      [],
    );
    assert.equal(engine.get(sb.id), undefined);
    await assert.rejects(engine.run(sb.id, { argv: ['true'] }), (e) =>
      isPalisadeError(e, 'SANDBOX_NOT_FOUND'),
    );
    await assert.rejects(engine.destroy(sb.id), (e) => isPalisadeError(e, 'SANDBOX_NOT_FOUND'));
  });

  it('a running exec ends with a clear error when its sandbox is destroyed', async () => {
    const sb = await engine.create();
    const h = await engine.exec(sb.id, { argv: ['sleep', '100'] });
    await engine.destroy(sb.id);
    await assert.rejects(h.done, (e) => isPalisadeError(e, 'SANDBOX_NOT_RUNNING'));
  });

  it('each sandbox has its own distinct host uid and cannot see another', async () => {
    const [a, b] = await Promise.all([engine.create(), engine.create()]);
    assert.notEqual(a!.hostUid, b!.hostUid);
    await engine.run(a!.id, { command: 'echo secret-a > /workspace/a.txt' });
    const r = await engine.run(b!.id, { command: 'ls /workspace; ps aux | wc -l' });
    assert.doesNotMatch(r.stdout.toString(), /a\.txt/);
    await Promise.all([engine.destroy(a!.id), engine.destroy(b!.id)]);
  });

  it('pause freezes every process and resume continues them', async () => {
    const sb = await engine.create();
    await engine.exec(sb.id, {
      command: 'i=0; while :; do i=$((i+1)); echo $i > /workspace/count; sleep 0.02; done',
      timeoutMs: 60_000,
    });
    await new Promise((r) => setTimeout(r, 200));
    await engine.pause(sb.id);
    assert.equal(engine.get(sb.id)!.state, 'paused');
    await assert.rejects(engine.run(sb.id, { argv: ['true'] }), (e) =>
      isPalisadeError(e, 'SANDBOX_NOT_RUNNING'),
    );
    const { readFileSync } = await import('node:fs');
    const stats = await engine.stats(sb.id);
    assert.ok(stats.pids >= 2);
    // Read the counter from the host side through the pool mount (the sandbox is frozen).
    const countFile = join(findWorkspace(config.dataDir, sb.id), 'count');
    const c1 = readFileSync(countFile, 'utf8');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(readFileSync(countFile, 'utf8'), c1, 'no progress while paused');
    await engine.resume(sb.id);
    assert.equal(engine.get(sb.id)!.state, 'running');
    assert.ok(
      await waitFor(() => readFileSync(countFile, 'utf8') !== c1, 3000),
      'progress after resume',
    );
    await engine.destroy(sb.id);
  });

  it('stats reports memory, pids, cpu and disk', async () => {
    const sb = await engine.create({ limits: { memoryBytes: 128 * 1024 * 1024 } });
    await engine.run(sb.id, { command: 'head -c 3000000 /dev/urandom > /workspace/blob' });
    const s = await engine.stats(sb.id);
    assert.equal(s.memoryLimitBytes, 128 * 1024 * 1024);
    assert.ok(s.memoryBytes > 0);
    assert.ok(s.pids >= 1);
    assert.ok(s.cpuUsageNs > 0);
    assert.ok(s.diskBytes !== null && s.diskBytes >= 3_000_000, String(s.diskBytes));
    assert.equal(
      engine.list().some((i) => i.id === sb.id && i.state === 'running' && i.cgroupsEnforced),
      true,
    );
    await engine.destroy(sb.id);
  });

  it('closing the engine removes its cgroup prefix directories', async () => {
    const cfg = testEngineConfig('prefix');
    const e = await createSandboxRuntime(cfg);
    const sb = await e.create();
    await e.close();
    assert.deepEqual(cgroupDirsFor(cfg.cgroupPrefix!, sb.id), []);
    const { readdirSync } = await import('node:fs');
    for (const h of readdirSync('/sys/fs/cgroup')) {
      assert.equal(existsSync(join('/sys/fs/cgroup', h, cfg.cgroupPrefix!)), false, h);
    }
  });

  it('a second engine cannot take the same data directory', async () => {
    await assert.rejects(createSandboxRuntime(config), (e) => isPalisadeError(e, 'CONFLICT'));
  });
});

describe('fail closed', () => {
  it('001 #1-#2: with bubblewrap unavailable the engine refuses to start and nothing runs', async () => {
    const config = testEngineConfig('nobwrap', { bwrapPath: '/nonexistent/bwrap' });
    await assert.rejects(
      createSandboxRuntime(config),
      (e) =>
        isPalisadeError(e, 'REQUIREMENT_MISSING') &&
        /bubblewrap/.test(e.message) &&
        /apt-get install bubblewrap/.test(e.message),
    );
    assert.equal(existsSync(join(config.dataDir, 'engine.lock')), false);
  });

  it('with the native helper missing the engine refuses to start', async () => {
    const config = testEngineConfig('nohelper', { helperPath: '/nonexistent/palisade-sandbox' });
    await assert.rejects(
      createSandboxRuntime(config),
      (e) => isPalisadeError(e, 'REQUIREMENT_MISSING') && /npm run setup/.test(e.message),
    );
  });

  it('with the cgroup controllers missing the engine refuses to start (limits are never silently dropped)', async () => {
    const root = mkdtempSync(join(tmpdir(), 'palisade-nocgroup-'));
    const config = testEngineConfig('nocg', { cgroupRoot: root });
    await assert.rejects(
      createSandboxRuntime(config),
      (e) => isPalisadeError(e, 'REQUIREMENT_MISSING') && /cgroup/.test(e.message),
    );
  });

  it('the operator can relax the cgroup requirement explicitly; the relaxation is visible', async () => {
    const root = mkdtempSync(join(tmpdir(), 'palisade-nocgroup-'));
    const engine = await createSandboxRuntime(
      testEngineConfig('relaxed', { cgroupRoot: root, cgroups: 'optional' }),
    );
    try {
      const sb = await engine.create();
      assert.equal(sb.cgroupsEnforced, false);
      const r = await engine.run(sb.id, { command: 'sleep 100 & sleep 100', timeoutMs: 300 });
      assert.equal(r.timedOut, true, 'timeouts still kill (the process group)');
      await assert.rejects(
        engine.pause(sb.id),
        (e) => isPalisadeError(e, 'REQUIREMENT_MISSING') && /freezer/.test(e.message),
      );
      const pids = hostPidsOfUid(sb.hostUid);
      await engine.destroy(sb.id);
      assert.deepEqual(hostPidsOfUid(sb.hostUid), [], `left: ${pids}`);
    } finally {
      await engine.close();
    }
  });

  it('rejects a uid range that could include root or ordinary users', async () => {
    const config = testEngineConfig('baduid', { uidRange: { start: 0, count: 10 } });
    await assert.rejects(createSandboxRuntime(config), (e) =>
      isPalisadeError(e, 'INVALID_ARGUMENT'),
    );
  });
});

describe('crash recovery', () => {
  it('leftovers of a killed engine are reaped by the next engine start', async () => {
    const config = testEngineConfig('crash');
    const script = join(config.dataDir, 'crash-child.mts');
    writeFileSync(
      script,
      `import { createSandboxRuntime } from ${JSON.stringify(new URL('../../src/sandbox/index.ts', import.meta.url).pathname)};
const engine = await createSandboxRuntime(${JSON.stringify(config)});
const sb = await engine.create();
await engine.exec(sb.id, { command: 'sleep 1000 & sleep 1000', timeoutMs: 600000 });
process.stdout.write('READY ' + sb.id + ' ' + sb.hostUid + '\\n');
setInterval(() => {}, 1000);
`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const line = await new Promise<string>((resolve, reject) => {
      let buf = '';
      child.stdout.on('data', (c) => {
        buf += c;
        if (buf.includes('\n')) resolve(buf.trim());
      });
      child.once('exit', (code) => reject(new Error(`child exited ${code}`)));
    });
    const [, id, uidText] = line.split(' ');
    const hostUid = Number(uidText);
    assert.ok(hostPidsOfUid(hostUid).length >= 3);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    // The sandbox dies with its engine (die-with-parent); what stays behind is state on disk and in cgroupfs.
    assert.ok(
      await waitFor(() => hostPidsOfUid(hostUid).length === 0, 5000),
      'sandbox processes died with the engine',
    );
    assert.ok(
      cgroupDirsFor(config.cgroupPrefix!, id!).length > 0,
      'cgroups were left behind by the crash',
    );
    const engine = await createSandboxRuntime(config);
    try {
      assert.deepEqual(cgroupDirsFor(config.cgroupPrefix!, id!), []);
      assert.deepEqual(
        mountsUnder(config.dataDir).filter((l) => l.includes(id!)),
        [],
      );
      assert.deepEqual(hostPidsOfUid(hostUid), []);
      const sb: SandboxInfo = await engine.create();
      assert.equal((await engine.run(sb.id, { argv: ['true'] })).exitCode, 0);
    } finally {
      await engine.close();
    }
  });
});

function findWorkspace(dataDir: string, id: string): string {
  const line = mountsUnder(dataDir).find((l) => l.includes(id));
  assert.ok(line, 'workspace mount');
  // The sandbox's /workspace is the `workspace` directory inside the mounted image.
  return join(line.split(' ')[4]!, 'workspace');
}

describe('extra mounts from the operator allowlist (001 #9, #15)', () => {
  it('mounts only allowlisted paths, read-only unless allowed, and resolves symlinks before checking', async () => {
    const base = mkdtempSync(join(tmpdir(), 'palisade-mounts-'));
    chmodSync(base, 0o755);
    const skills = join(base, 'skills');
    const scratch = join(base, 'scratch');
    const secret = join(base, 'secret');
    for (const d of [skills, scratch, secret]) {
      mkdirSync(d, { mode: 0o755 });
      chmodSync(d, 0o777);
    }
    writeFileSync(join(skills, 'skill.md'), 'a shared skill\n');
    writeFileSync(join(secret, 'key'), 'host secret\n');
    symlinkSync(secret, join(skills, 'escape'));
    const engine = await createSandboxRuntime(
      testEngineConfig('mounts', {
        allowedMounts: [
          { source: skills, target: '/skills' },
          { source: scratch, target: '/mnt/scratch', writable: true },
        ],
      }),
    );
    try {
      const sb = await engine.create({
        mounts: [{ source: skills }, { source: scratch, writable: true }],
      });
      const r = await engine.run(sb.id, {
        command:
          'cat /skills/skill.md; touch /skills/new 2>/dev/null && echo WROTE-SKILLS; touch /mnt/scratch/ok && echo scratch-ok; cat /skills/escape/key 2>/dev/null || echo no-escape',
      });
      assert.equal(r.stdout.toString(), 'a shared skill\nscratch-ok\nno-escape\n');
      await assert.rejects(
        engine.create({ mounts: [{ source: skills, writable: true }] }),
        (e) => isPalisadeError(e, 'INVALID_PATH') && /read-only/.test(e.message),
      );
      await assert.rejects(
        engine.create({ mounts: [{ source: join(skills, 'escape') }] }),
        (e) => isPalisadeError(e, 'INVALID_PATH') && /allowedMounts/.test(e.message),
      );
      await assert.rejects(engine.create({ mounts: [{ source: secret }] }), (e) =>
        isPalisadeError(e, 'INVALID_PATH'),
      );
      await assert.rejects(
        engine.create({ mounts: [{ source: skills, target: '/etc' }] }),
        (e) => isPalisadeError(e, 'INVALID_PATH') && /system directory/.test(e.message),
      );
      await assert.rejects(
        engine.create({ mounts: [{ source: skills, target: '/usr/lib/x' }] }),
        (e) => isPalisadeError(e, 'INVALID_PATH'),
      );
    } finally {
      await engine.close();
    }
  });
});
