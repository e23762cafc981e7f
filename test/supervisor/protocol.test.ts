import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isPalisadeError } from '../../src/errors/index.js';
import { LineReader, MAX_FRAME_BYTES, parseRequest } from '../../src/supervisor/index.js';

const SB = 'sb-abcdefghijklmnopqrst';

function rejects(frame: unknown, pattern: RegExp): void {
  const line = typeof frame === 'string' ? frame : JSON.stringify(frame);
  assert.throws(
    () => parseRequest(line),
    (err: unknown) => isPalisadeError(err, 'INVALID_ARGUMENT') && pattern.test(err.message),
  );
}

describe('supervisor protocol validation', () => {
  it('accepts the well-formed requests the worker sends', () => {
    assert.deepEqual(parseRequest(JSON.stringify({ t: 'create', id: 1, options: {} })), {
      t: 'create',
      id: 1,
      options: {},
    });
    const exec = parseRequest(
      JSON.stringify({
        t: 'exec',
        id: 2,
        sandboxId: SB,
        request: { argv: ['echo', 'hi'], env: { A: 'b' }, openStdin: true, timeoutMs: 1000 },
      }),
    );
    assert.equal(exec.t, 'exec');
    assert.deepEqual(parseRequest(JSON.stringify({ t: 'stdin', id: 3, exec: 2, data: 'aGk=' })), {
      t: 'stdin',
      id: 3,
      exec: 2,
      data: 'aGk=',
    });
    assert.equal(
      parseRequest(JSON.stringify({ t: 'destroy', id: 4, sandboxId: SB, reason: 'x' })).t,
      'destroy',
    );
  });

  it('rejects bad JSON and non-objects', () => {
    rejects('{"t":', /not valid JSON/);
    rejects('[1,2]', /JSON object/);
    rejects('null', /JSON object/);
  });

  it('rejects unknown message types, including prototype names', () => {
    rejects({ t: 'spawnShell', id: 1 }, /unknown message type/);
    rejects({ t: '__proto__', id: 1 }, /unknown message type/);
    rejects({ id: 1 }, /unknown message type/);
  });

  it('rejects extra and missing fields at every level', () => {
    rejects({ t: 'close', id: 1, extra: true }, /unexpected field "extra"/);
    rejects(
      { t: 'create', id: 1, options: { mounts: [{ source: '/' }] } },
      /unexpected field "mounts"/,
    );
    rejects(
      { t: 'create', id: 1, options: { workspaceDir: '/etc' } },
      /unexpected field "workspaceDir"/,
    );
    rejects({ t: 'create', id: 1, options: { network: {} } }, /network must be true/);
    rejects({ t: 'create', id: 1, options: { network: false } }, /network must be true/);
    rejects(
      { t: 'create', id: 1, options: { limits: { memoryBytes: 1, gpu: 1 } } },
      /unexpected field "gpu"/,
    );
    rejects(
      { t: 'exec', id: 1, sandboxId: SB, request: { argv: ['a'], uid: 0 } },
      /unexpected field "uid"/,
    );
    rejects({ t: 'pause', id: 1 }, /missing field sandboxId/);
  });

  it('rejects bad request ids and sandbox ids', () => {
    rejects({ t: 'close', id: 0 }, /id must be a positive integer/);
    rejects({ t: 'close', id: -1 }, /id must be a positive integer/);
    rejects({ t: 'close', id: 1.5 }, /id must be a positive integer/);
    rejects({ t: 'close', id: '1' }, /id must be a positive integer/);
    rejects({ t: 'close', id: 2 ** 60 }, /id must be a positive integer/);
    rejects({ t: 'kill', id: 1, exec: 'x' }, /exec must be a positive integer/);
    rejects({ t: 'destroy', id: 1, sandboxId: '../../etc' }, /sandboxId must look like/);
    rejects({ t: 'stats', id: 1, sandboxId: `${SB}\n` }, /sandboxId must look like/);
    rejects({ t: 'stats', id: 1, sandboxId: SB.toUpperCase() }, /sandboxId must look like/);
  });

  it('rejects NUL bytes in argv, command, cwd, env and labels', () => {
    rejects(
      { t: 'exec', id: 1, sandboxId: SB, request: { argv: ['ls', 'a\0b'] } },
      /argv\[1\] contains a NUL/,
    );
    rejects(
      { t: 'exec', id: 1, sandboxId: SB, request: { command: 'ls\0' } },
      /command contains a NUL/,
    );
    rejects(
      { t: 'exec', id: 1, sandboxId: SB, request: { argv: ['ls'], cwd: '/\0' } },
      /cwd contains a NUL/,
    );
    rejects(
      { t: 'exec', id: 1, sandboxId: SB, request: { argv: ['ls'], env: { A: '\0' } } },
      /NUL/,
    );
    rejects({ t: 'create', id: 1, options: { labels: { 'a\0': 'b' } } }, /NUL/);
  });

  it('rejects wrong types and sizes', () => {
    rejects({ t: 'exec', id: 1, sandboxId: SB, request: {} }, /exactly one of argv and command/);
    rejects(
      { t: 'exec', id: 1, sandboxId: SB, request: { argv: ['a'], command: 'a' } },
      /exactly one/,
    );
    rejects({ t: 'exec', id: 1, sandboxId: SB, request: { argv: [] } }, /non-empty array/);
    rejects(
      { t: 'exec', id: 1, sandboxId: SB, request: { argv: [1] } },
      /argv\[0\] must be a string/,
    );
    rejects(
      { t: 'exec', id: 1, sandboxId: SB, request: { argv: ['a'], timeoutMs: -1 } },
      /non-negative/,
    );
    rejects(
      { t: 'exec', id: 1, sandboxId: SB, request: { argv: ['a'], openStdin: 'yes' } },
      /boolean/,
    );
    rejects({ t: 'signal', id: 1, exec: 1, signal: 'SIGSTOP' }, /signal must be one of/);
    rejects({ t: 'stdin', id: 1, exec: 1, data: 'not base64!' }, /base64/);
    rejects({ t: 'stdin', id: 1, exec: 1, data: 'A'.repeat(400_000) }, /at most/);
    const env: Record<string, string> = {};
    for (let i = 0; i < 300; i++) env[`K${i}`] = 'v';
    rejects({ t: 'create', id: 1, options: { env } }, /more than 256 entries/);
    rejects(
      { t: 'exec', id: 1, sandboxId: SB, request: { argv: Array(5000).fill('a') } },
      /at most 4096/,
    );
  });
});

describe('supervisor protocol: egress gateway messages', () => {
  const policy = { allow: ['example.com', '10.0.0.0/8:5432'], deny: ['evil.example.com'] };

  it('accepts create with network, netPolicy and netDetach', () => {
    assert.deepEqual(
      parseRequest(JSON.stringify({ t: 'create', id: 1, options: { network: true } })),
      {
        t: 'create',
        id: 1,
        options: { network: true },
      },
    );
    assert.deepEqual(
      parseRequest(JSON.stringify({ t: 'netPolicy', id: 2, sandboxId: SB, policy })),
      {
        t: 'netPolicy',
        id: 2,
        sandboxId: SB,
        policy,
      },
    );
    assert.deepEqual(
      parseRequest(
        JSON.stringify({ t: 'netPolicy', id: 3, sandboxId: SB, policy: { allow: [], deny: [] } }),
      ),
      { t: 'netPolicy', id: 3, sandboxId: SB, policy: { allow: [], deny: [] } },
    );
    assert.deepEqual(parseRequest(JSON.stringify({ t: 'netDetach', id: 4, sandboxId: SB })), {
      t: 'netDetach',
      id: 4,
      sandboxId: SB,
    });
  });

  it('rejects malformed netPolicy frames', () => {
    rejects({ t: 'netPolicy', id: 1, sandboxId: SB }, /missing field policy/);
    rejects({ t: 'netPolicy', id: 1, policy }, /missing field sandboxId/);
    rejects({ t: 'netPolicy', id: 1, sandboxId: '../x', policy }, /sandboxId must look like/);
    rejects({ t: 'netPolicy', id: 0, sandboxId: SB, policy }, /id must be a positive integer/);
    rejects(
      { t: 'netPolicy', id: 1, sandboxId: SB, policy, owner: { uid: 0 } },
      /unexpected field "owner"/,
    );
    rejects({ t: 'netPolicy', id: 1, sandboxId: SB, policy: null }, /policy must be an object/);
    rejects({ t: 'netPolicy', id: 1, sandboxId: SB, policy: ['a'] }, /policy must be an object/);
    rejects({ t: 'netPolicy', id: 1, sandboxId: SB, policy: { allow: [] } }, /missing field deny/);
    rejects(
      { t: 'netPolicy', id: 1, sandboxId: SB, policy: { ...policy, socketDir: '/' } },
      /unexpected field "socketDir"/,
    );
    rejects(
      { t: 'netPolicy', id: 1, sandboxId: SB, policy: { allow: 'example.com', deny: [] } },
      /policy.allow must be an array/,
    );
    rejects(
      { t: 'netPolicy', id: 1, sandboxId: SB, policy: { allow: [443], deny: [] } },
      /policy.allow\[0\] must be a string/,
    );
    rejects({ t: 'netPolicy', id: 1, sandboxId: SB, policy: { allow: ['a\0b'], deny: [] } }, /NUL/);
    rejects(
      { t: 'netPolicy', id: 1, sandboxId: SB, policy: { allow: ['x'.repeat(2000)], deny: [] } },
      /longer than 1024 bytes/,
    );
    rejects(
      {
        t: 'netPolicy',
        id: 1,
        sandboxId: SB,
        policy: { allow: [], deny: Array(4001).fill('a.test') },
      },
      /at most 4000/,
    );
  });

  it('rejects malformed netDetach frames', () => {
    rejects({ t: 'netDetach', id: 1 }, /missing field sandboxId/);
    rejects({ t: 'netDetach', id: 1, sandboxId: SB, force: true }, /unexpected field "force"/);
    rejects({ t: 'netDetach', id: 1, sandboxId: 7 }, /sandboxId must look like/);
  });

  it('the worker cannot send supervisor-to-worker egress events', () => {
    rejects({ t: 'egress', event: {}, stats: null }, /unknown message type/);
    rejects({ t: 'egressDropped', count: 1 }, /unknown message type/);
    rejects({ t: 'egressStats', sandboxId: SB, stats: {} }, /unknown message type/);
  });
});

describe('frame reader', () => {
  it('splits lines across chunks', () => {
    const reader = new LineReader(100);
    assert.deepEqual(reader.push(Buffer.from('{"a":1}\n{"b"')), ['{"a":1}']);
    assert.deepEqual(reader.push(Buffer.from(':2}\n\n')), ['{"b":2}', '']);
  });

  it('refuses a line longer than the limit without buffering it', () => {
    const reader = new LineReader(10);
    assert.throws(() => reader.push(Buffer.from('0123456789A')), /frame longer than 10 bytes/);
    const streaming = new LineReader(10);
    streaming.push(Buffer.from('01234'));
    assert.throws(() => streaming.push(Buffer.from('56789AB\n')), /frame longer than 10 bytes/);
  });

  it('has a 1 MiB default', () => {
    const reader = new LineReader();
    assert.throws(() => reader.push(Buffer.alloc(MAX_FRAME_BYTES + 1, 0x61)), /frame longer/);
  });
});
