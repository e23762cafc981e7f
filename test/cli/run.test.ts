import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

const BIN = new URL('../../bin/palisade.js', import.meta.url).pathname;
// Each CLI run gets its own data root so parallel test files never share one-shot slots.
const DATA = mkdtempSync(join(tmpdir(), 'palisade-cli-'));
chmodSync(DATA, 0o711);

function palisade(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    input,
    encoding: 'utf8',
    timeout: 60_000,
    env: { PATH: process.env.PATH, PALISADE_DATA_DIR: DATA },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('palisade run (the CLI entry point)', () => {
  it('001 #0 through palisade run: ps aux shows only the sandbox', () => {
    const r = palisade(['run', '--', 'ps', 'aux']);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.ok(lines.length <= 3, r.stdout);
    assert.match(lines[1]!, /^sandbox\s+1\s/);
  });

  it('exits with the command’s status and forwards piped stdin', () => {
    assert.equal(palisade(['run', '--', 'sh', '-c', 'exit 7']).status, 7);
    const r = palisade(['run', '--', 'tr', 'a-z', 'A-Z'], 'hello\n');
    assert.equal(r.stdout, 'HELLO\n');
  });

  it('timeout kills the whole tree and exits 124; a missing program exits 127', () => {
    const t0 = Date.now();
    const r = palisade(['run', '--timeout', '1s', '--', 'sh', '-c', 'sleep 100 & sleep 100']);
    assert.equal(r.status, 124);
    assert.match(r.stderr, /timed out/);
    assert.ok(Date.now() - t0 < 20_000);
    const nf = palisade(['run', '--', 'no-such-program']);
    assert.equal(nf.status, 127);
    assert.match(nf.stderr, /no such file or directory/);
  });

  it('limits and env flags are applied; bad flags are clear errors (exit 125)', () => {
    const r = palisade([
      'run',
      '--memory',
      '64m',
      '--pids',
      '32',
      '--env',
      'GREETING=hi there',
      '--shell',
      '--',
      'echo "$GREETING"; cat /proc/self/status | grep -c "^Pid"',
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^hi there\n/);
    for (const bad of [
      ['--memory', 'lots'],
      ['--pids', '-1'],
      ['--env', 'LD_PRELOAD=/x.so'],
      ['--env', 'NOEQUALS'],
      ['--timeout', 'soon'],
      ['--bogus'],
    ]) {
      const b = palisade(['run', ...bad, '--', 'true']);
      assert.equal(b.status, 125, `${bad.join(' ')} → ${b.status} ${b.stderr}`);
      assert.match(b.stderr, /^palisade run: /);
    }
  });

  it('--workspace binds a host directory (with --disk 0 where quotas are unsupported)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'palisade-ws-'));
    chmodSync(dir, 0o777);
    writeFileSync(join(dir, 'input.txt'), 'from the host\n');
    const r = palisade([
      'run',
      '--workspace',
      dir,
      '--disk',
      '0',
      '--',
      'cat',
      '/workspace/input.txt',
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'from the host\n');
  });
});

describe('palisade run with network flags (egress gateway)', () => {
  it('allows only what the flags allow and reports blocked connections after the command', async () => {
    const { createServer } = await import('node:http');
    let hits = 0;
    const server = createServer((_req, res) => {
      hits++;
      res.end('ok');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      const script = `curl -sS --noproxy "" -o /dev/null -w "%{http_code}\\n" http://127.0.0.1:${port}/; curl -sS --noproxy "" -o /dev/null -w "%{http_code}\\n" http://127.0.0.1:${port + 1}/; curl -sS -o /dev/null -w "%{http_code}\\n" http://blocked.example/`;
      const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>(
        (resolve) => {
          const child = spawn(
            process.execPath,
            [
              BIN,
              'run',
              '--allow-cidr',
              '127.0.0.1',
              '--allow-port',
              String(port),
              '--shell',
              '--',
              script,
            ],
            {
              env: { PATH: process.env.PATH, PALISADE_DATA_DIR: DATA },
            },
          );
          let stdout = '';
          let stderr = '';
          child.stdout.on('data', (c: Buffer) => (stdout += c));
          child.stderr.on('data', (c: Buffer) => (stderr += c));
          child.on('close', (status: number | null) => resolve({ status, stdout, stderr }));
        },
      );
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, '200\n403\n403\n');
      assert.equal(hits, 1);
      assert.match(r.stderr, /2 network connections blocked/);
      assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${port + 1}`));
      assert.match(r.stderr, /blocked\.example:80/);
    } finally {
      server.close();
    }
  });

  it('without network flags there is no network at all', () => {
    const r = palisade([
      'run',
      '--shell',
      '--',
      'env | grep -ci proxy; curl -sS -m 3 http://127.0.0.1:1/ 2>&1 >/dev/null; echo "rc=$?"',
    ]);
    assert.match(r.stdout, /^0\n/);
    assert.match(r.stdout, /rc=7/);
  });
});

describe('palisade doctor', () => {
  it('passes on this host and proves isolation with a live sandbox', () => {
    const r = palisade(['doctor']);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /\[PASS\] bubblewrap/);
    assert.match(r.stdout, /\[PASS\] sandbox smoke test/);
    assert.doesNotMatch(r.stdout, /\[FAIL\]/);
  });
});
