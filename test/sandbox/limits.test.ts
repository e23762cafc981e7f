import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { isPalisadeError } from '../../src/errors/index.js';
import type { SandboxRuntime } from '../../src/sandbox/index.js';
import { startTestEngine } from './helpers.js';

const MiB = 1024 * 1024;

describe('kernel-enforced resource limits (002 H-8/H-9/H-11)', () => {
  let engine: SandboxRuntime;

  before(async () => {
    ({ engine } = await startTestEngine('limits'));
  });
  after(async () => engine?.close());

  it('a fork bomb is stopped by the pids limit and the host stays responsive', async () => {
    const sb = await engine.create({ limits: { pids: 64 } });
    let worstLag = 0;
    let last = performance.now();
    const ticker = setInterval(() => {
      const now = performance.now();
      worstLag = Math.max(worstLag, now - last - 20);
      last = now;
    }, 20);
    const h = await engine.exec(sb.id, {
      command: 'f() { f | f & }; f; while :; do f; done',
      timeoutMs: 3000,
      maxOutputBytes: 65536,
    });
    const r = await h.done;
    const during = await engine.stats(sb.id);
    clearInterval(ticker);
    assert.ok(worstLag < 1000, `host event loop stalled for ${worstLag.toFixed(0)} ms`);
    assert.match(
      r.stderr.toString(),
      /fork|Resource temporarily unavailable/i,
      'forks failed at the pids limit',
    );
    assert.ok(during.pids <= 64, `pids ${during.pids}`);
    // The bomb's orphans live on in the exec's cgroup; killing the exec removes them all.
    await h.kill();
    const after = await engine.run(sb.id, {
      command: 'echo alive; ps -e | wc -l',
      timeoutMs: 5000,
    });
    assert.equal(
      after.stdout.toString().split('\n')[0],
      'alive',
      'after the tree is killed the sandbox is usable again',
    );
    assert.ok(
      Number(after.stdout.toString().split('\n')[1]) <= 5,
      'nothing of the bomb is left (header, agent, sh, ps, wc)',
    );
    await engine.destroy(sb.id);
  });

  it('a memory bomb is killed inside the sandbox only', async () => {
    const sb = await engine.create({ limits: { memoryBytes: 64 * MiB } });
    const r = await engine.run(sb.id, {
      argv: ['perl', '-e', '$x = "x" x (512*1024*1024); print "survived\\n"'],
      timeoutMs: 20_000,
    });
    assert.equal(
      r.signal,
      'SIGKILL',
      `expected an OOM kill, got ${r.exitCode}/${r.signal} ${r.stderr}`,
    );
    assert.equal(r.stdout.toString(), '');
    const again = await engine.run(sb.id, { argv: ['echo', 'agent survived'] });
    assert.equal(
      again.stdout.toString(),
      'agent survived\n',
      'the sandbox (and its agent) keep working',
    );
    const stats = await engine.stats(sb.id);
    assert.equal(stats.memoryLimitBytes, 64 * MiB);
    await engine.destroy(sb.id);
  });

  it('a disk fill stops at the workspace quota; /tmp is bounded too', async () => {
    const sb = await engine.create({ limits: { diskBytes: 16 * MiB, tmpBytes: 4 * MiB } });
    const r = await engine.run(sb.id, {
      command: 'dd if=/dev/zero of=/workspace/fill bs=1M count=64 2>&1; echo "rc=$?"',
      timeoutMs: 20_000,
    });
    const out = r.stdout.toString();
    assert.match(out, /Disk quota exceeded|No space left on device/);
    assert.match(out, /rc=1/);
    const size = await engine.run(sb.id, { command: 'stat -c %s /workspace/fill' });
    assert.ok(Number(size.stdout.toString()) <= 16 * MiB, size.stdout.toString());
    const stats = await engine.stats(sb.id);
    assert.ok(stats.diskLimitBytes !== null && stats.diskLimitBytes <= 16 * MiB);
    const t = await engine.run(sb.id, {
      command: 'dd if=/dev/zero of=/tmp/fill bs=1M count=16 2>&1; echo "rc=$?"',
    });
    assert.match(t.stdout.toString(), /No space left on device/);
    await engine.destroy(sb.id);
  });

  it('the CPU quota throttles a busy loop', async () => {
    const sb = await engine.create({ limits: { cpus: 0.2 } });
    const before = await engine.stats(sb.id);
    const wall = Date.now();
    await engine.run(sb.id, {
      command: 'timeout 1 sh -c "while :; do :; done"; true',
      timeoutMs: 10_000,
    });
    const elapsed = (Date.now() - wall) / 1000;
    const used = ((await engine.stats(sb.id)).cpuUsageNs - before.cpuUsageNs) / 1e9;
    assert.ok(used < elapsed * 0.45, `used ${used.toFixed(2)} s of CPU in ${elapsed.toFixed(2)} s`);
    await engine.destroy(sb.id);
  });

  it('absurd limits are refused with a clear error and nothing is created', async () => {
    const before = engine.list().length;
    const bad: Array<Record<string, unknown>> = [
      { memoryBytes: 1 },
      { memoryBytes: 1e15 },
      { pids: 0 },
      { pids: 1e9 },
      { cpus: -1 },
      { cpus: Number.NaN },
      { diskBytes: 1.5 },
      { swapBytes: '1g' },
      { nonsense: 1 },
    ];
    for (const limits of bad) {
      await assert.rejects(
        engine.create({ limits: limits as never }),
        (e) => isPalisadeError(e, 'INVALID_LIMIT') && e.message.length > 10,
        JSON.stringify(limits),
      );
    }
    await assert.rejects(engine.create({ env: { LD_PRELOAD: 'x' } }), (e) =>
      isPalisadeError(e, 'INVALID_ENV'),
    );
    await assert.rejects(engine.create({ labels: { 'Bad Key': 'v' } }), (e) =>
      isPalisadeError(e, 'INVALID_ARGUMENT'),
    );
    await assert.rejects(
      engine.create({ mounts: [{ source: '/etc' }] }),
      (e) => isPalisadeError(e, 'INVALID_PATH') && /allowedMounts/.test(e.message),
    );
    assert.equal(engine.list().length, before);
  });
});
