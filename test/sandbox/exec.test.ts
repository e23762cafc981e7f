import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { isPalisadeError } from '../../src/errors/index.js';
import type { SandboxInfo, SandboxRuntime } from '../../src/sandbox/index.js';
import { startTestEngine } from './helpers.js';

describe('exec in a long-lived sandbox', () => {
  let engine: SandboxRuntime;
  let sb: SandboxInfo;

  before(async () => {
    ({ engine } = await startTestEngine('exec'));
    sb = await engine.create({ env: { GREETING: 'hello from the sandbox env' } });
  });
  after(async () => engine?.close());

  it('argv form runs without a shell; shell form runs /bin/sh -c', async () => {
    const a = await engine.run(sb.id, { argv: ['echo', '$HOME', '*'] });
    assert.equal(a.stdout.toString(), '$HOME *\n');
    const s = await engine.run(sb.id, { command: 'echo $HOME; exit 3' });
    assert.equal(s.stdout.toString(), '/workspace\n');
    assert.equal(s.exitCode, 3);
    assert.equal(s.signal, null);
  });

  it('state persists across execs (files and background processes)', async () => {
    await engine.run(sb.id, { command: 'echo persisted > /workspace/state.txt' });
    const r = await engine.run(sb.id, { argv: ['cat', '/workspace/state.txt'] });
    assert.equal(r.stdout.toString(), 'persisted\n');
  });

  it('cwd, sandbox env and per-exec env', async () => {
    await engine.run(sb.id, { command: 'mkdir -p /workspace/sub' });
    const r = await engine.run(sb.id, {
      command: 'pwd; echo "$GREETING"; echo "$EXTRA"',
      cwd: 'sub',
      env: { EXTRA: 'x=y z' },
    });
    assert.equal(r.stdout.toString(), '/workspace/sub\nhello from the sandbox env\nx=y z\n');
    const r2 = await engine.run(sb.id, {
      command: 'echo "$GREETING"',
      env: { GREETING: 'overridden' },
    });
    assert.equal(r2.stdout.toString(), 'overridden\n');
  });

  it('stdin is delivered, also when larger than the agent window', async () => {
    const r = await engine.run(sb.id, { argv: ['wc', '-c'], stdin: 'abc' });
    assert.equal(r.stdout.toString().trim(), '3');
    const big = Buffer.alloc(3 * 1024 * 1024, 0x61);
    const r2 = await engine.run(sb.id, { argv: ['sha256sum'], stdin: big });
    const { createHash } = await import('node:crypto');
    assert.equal(
      r2.stdout.toString().split(' ')[0],
      createHash('sha256').update(big).digest('hex'),
    );
  });

  it('streaming stdin with openStdin, and stdout/stderr callbacks in order', async () => {
    const chunks: string[] = [];
    const h = await engine.exec(sb.id, {
      argv: ['cat'],
      openStdin: true,
      onStdout: (c) => chunks.push(c.toString()),
    });
    for (let i = 0; i < 5; i++) await h.writeStdin(`line ${i}\n`);
    h.closeStdin();
    const r = await h.done;
    assert.equal(r.exitCode, 0);
    assert.equal(chunks.join(''), 'line 0\nline 1\nline 2\nline 3\nline 4\n');
    assert.equal(r.stdout.toString(), chunks.join(''));
    const seq: string[] = [];
    const r2 = await engine.run(sb.id, {
      command: 'for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done',
      onStdout: (c) => seq.push('o:' + c.toString().trim()),
      onStderr: (c) => seq.push('e:' + c.toString().trim()),
    });
    assert.equal(r2.stdout.toString(), 'out1\nout2\nout3\n');
    assert.equal(r2.stderr.toString(), 'err1\nerr2\nerr3\n');
    assert.deepEqual(seq, ['o:out1', 'e:err1', 'o:out2', 'e:err2', 'o:out3', 'e:err3']);
  });

  it('binary output is byte-exact', async () => {
    const r = await engine.run(sb.id, { command: 'printf "\\000\\001\\377\\376"' });
    assert.deepEqual([...r.stdout], [0, 1, 255, 254]);
  });

  it('002 M-10: output is capped and truncation flagged', async () => {
    const r = await engine.run(sb.id, {
      command: 'head -c 5000000 /dev/zero',
      maxOutputBytes: 100_000,
    });
    assert.equal(r.stdout.length, 100_000);
    assert.equal(r.stdoutTruncated, true);
    assert.equal(r.stderrTruncated, false);
    const flood = await engine.run(sb.id, {
      command: 'yes flood',
      maxOutputBytes: 1000,
      timeoutMs: 1000,
    });
    assert.equal(flood.stdout.length, 1000);
    assert.equal(flood.stdoutTruncated, true);
    assert.equal(flood.timedOut, true);
  });

  it('003 U6: a timeout kills the whole process tree, grandchildren included', async () => {
    const t0 = Date.now();
    const r = await engine.run(sb.id, {
      command: 'sleep 1000 & sleep 1000 & (sleep 1000 &) ; sleep 1000',
      timeoutMs: 500,
    });
    assert.equal(r.timedOut, true);
    assert.equal(r.signal, 'SIGKILL');
    assert.ok(Date.now() - t0 < 5000);
    const ps = await engine.run(sb.id, { command: 'ps -eo comm | grep -c "^sleep$" || true' });
    assert.equal(ps.stdout.toString().trim(), '0', 'no sleep survived the timeout');
  });

  it('a double-forked daemon (setsid) is still killed by the exec’s cgroup', async () => {
    const h = await engine.exec(sb.id, {
      command: 'setsid sh -c "sleep 1000" & sleep 1000',
      timeoutMs: 60_000,
    });
    await new Promise((r) => setTimeout(r, 200));
    await h.kill();
    await h.done;
    const ps = await engine.run(sb.id, { command: 'ps -eo comm | grep -c "^sleep$" || true' });
    assert.equal(ps.stdout.toString().trim(), '0');
  });

  it('interrupt sends SIGINT; abort signals interrupt', async () => {
    const h = await engine.exec(sb.id, {
      command: 'trap "echo got-int; exit 130" INT; while :; do sleep 0.05; done',
    });
    await new Promise((r) => setTimeout(r, 150));
    h.interrupt();
    const r = await h.done;
    assert.equal(r.interrupted, true);
    assert.equal(r.stdout.toString(), 'got-int\n');
    assert.equal(r.exitCode, 130);
    const ac = new AbortController();
    const p = engine.run(sb.id, { argv: ['sleep', '30'], signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    const r2 = await p;
    assert.equal(r2.interrupted, true);
    assert.equal(r2.signal, 'SIGINT');
  });

  it('exit by signal is reported by name', async () => {
    const r = await engine.run(sb.id, { command: 'kill -TERM $$' });
    assert.equal(r.exitCode, null);
    assert.equal(r.signal, 'SIGTERM');
  });

  it('several execs run at once', async () => {
    const t0 = Date.now();
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) => engine.run(sb.id, { command: `sleep 0.3; echo ${i}` })),
    );
    assert.ok(Date.now() - t0 < 2500, 'they ran concurrently');
    results.forEach((r, i) => assert.equal(r.stdout.toString(), `${i}\n`));
  });

  it('a missing program or cwd is a clear start error', async () => {
    await assert.rejects(
      engine.exec(sb.id, { argv: ['no-such-program'] }),
      (e) => isPalisadeError(e, 'EXEC_START_FAILED') && /no such file/.test(e.message),
    );
    await assert.rejects(
      engine.exec(sb.id, { argv: ['true'], cwd: '/nonexistent' }),
      (e) => isPalisadeError(e, 'EXEC_START_FAILED') && /working directory/.test(e.message),
    );
    const ok = await engine.run(sb.id, { argv: ['true'] });
    assert.equal(ok.exitCode, 0, 'the sandbox still works');
  });

  it('bad input is refused before anything starts', async () => {
    const cases: Array<[Parameters<SandboxRuntime['exec']>[1], string]> = [
      [{ argv: ['true'], env: { 'BAD-NAME': 'x' } }, 'INVALID_ENV'],
      [{ argv: ['true'], env: { '1X': 'x' } }, 'INVALID_ENV'],
      [{ argv: ['true'], env: { X: 'a\nb' } }, 'INVALID_ENV'],
      [{ argv: ['true'], env: { X: 'a\0b' } }, 'INVALID_ENV'],
      [{ argv: ['true'], env: { LD_PRELOAD: '/tmp/x.so' } }, 'INVALID_ENV'],
      [{ argv: ['true'], env: { BASH_ENV: '/tmp/x' } }, 'INVALID_ENV'],
      [{ argv: ['true'], env: { BASH_FUNC_x: '() { :; }' } }, 'INVALID_ENV'],
      [{ argv: ['true'], env: { X: 'v'.repeat(40_000) } }, 'INVALID_ENV'],
      [{ argv: ['tr\0ue'] }, 'INVALID_ARGUMENT'],
      [{ argv: [] }, 'INVALID_ARGUMENT'],
      [{ argv: ['true'], command: 'true' }, 'INVALID_ARGUMENT'],
      [{}, 'INVALID_ARGUMENT'],
      [{ argv: ['true'], cwd: '../../etc' }, 'INVALID_PATH'],
      [{ argv: ['true'], cwd: '/workspace/../../..' }, 'INVALID_PATH'],
      [{ argv: ['true'], cwd: 'a\0b' }, 'INVALID_PATH'],
      [{ argv: ['true'], timeoutMs: 0 }, 'INVALID_LIMIT'],
      [{ argv: ['true'], timeoutMs: 1e12 }, 'INVALID_LIMIT'],
      [{ argv: ['true'], maxOutputBytes: -1 }, 'INVALID_LIMIT'],
    ];
    for (const [req, code] of cases) {
      await assert.rejects(
        engine.exec(sb.id, req),
        (e) => isPalisadeError(e) && e.code === code,
        JSON.stringify(req).slice(0, 100),
      );
    }
    await assert.rejects(engine.exec('sb-aaaaaaaaaaaaaaaaaaaa', { argv: ['true'] }), (e) =>
      isPalisadeError(e, 'SANDBOX_NOT_FOUND'),
    );
    await assert.rejects(engine.exec('../../etc', { argv: ['true'] }), (e) =>
      isPalisadeError(e, 'INVALID_ARGUMENT'),
    );
  });
});
