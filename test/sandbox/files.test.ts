import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isPalisadeError, type ErrorCode } from '../../src/errors/index.js';
import {
  createSandboxFiles,
  type SandboxFiles,
  type SandboxInfo,
  type SandboxRuntime,
} from '../../src/sandbox/index.js';
import { startTestEngine } from './helpers.js';

async function rejectsWith(p: Promise<unknown>, code: ErrorCode, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isPalisadeError(err), `expected a PalisadeError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (message) assert.match(err.message, message);
    return true;
  });
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('sandbox files API (kernel-confined file operations)', () => {
  let engine: SandboxRuntime;
  let sb: SandboxInfo;
  let files: SandboxFiles;
  let hostDir: string;

  before(async () => {
    ({ engine } = await startTestEngine('files'));
    sb = await engine.create();
    files = createSandboxFiles(engine);
    hostDir = mkdtempSync(join(tmpdir(), 'palisade-files-host-'));
  });
  after(async () => {
    await engine?.close();
    if (hostDir) rmSync(hostDir, { recursive: true, force: true });
  });

  const sh = async (command: string): Promise<string> => {
    const r = await engine.run(sb.id, { command });
    assert.equal(r.exitCode, 0, r.stderr.toString());
    return r.stdout.toString();
  };

  it('write, read (ranges), stat: relative paths are under /workspace', async () => {
    assert.deepEqual(await files.write(sb.id, 'hello.txt', 'hello, world\n'), { size: 13 });
    assert.equal((await files.read(sb.id, '/workspace/hello.txt')).toString(), 'hello, world\n');
    assert.equal(
      (await files.read(sb.id, 'hello.txt', { offset: 7, length: 5 })).toString(),
      'world',
    );
    assert.equal((await files.read(sb.id, 'hello.txt', { offset: 100 })).length, 0);
    assert.equal(
      await sh('cat /workspace/hello.txt; stat -c %u /workspace/hello.txt'),
      'hello, world\n1000\n',
    );
    const st = await files.stat(sb.id, 'hello.txt');
    assert.equal(st.type, 'file');
    assert.equal(st.size, 13);
    assert.equal(st.mode, 0o644);
    assert.equal(st.uid, 1000);
    assert.ok(Math.abs(st.mtime.getTime() - Date.now()) < 60_000);
  });

  it('write replaces atomically, keeps the old mode, honours mode and createOnly', async () => {
    await files.write(sb.id, 'script.sh', '#!/bin/sh\necho one\n', { mode: 0o755 });
    assert.equal((await files.stat(sb.id, 'script.sh')).mode, 0o755);
    await files.write(sb.id, 'script.sh', '#!/bin/sh\necho two\n');
    assert.equal((await files.stat(sb.id, 'script.sh')).mode, 0o755);
    assert.equal(await sh('./script.sh'), 'two\n');
    await rejectsWith(
      files.write(sb.id, 'script.sh', 'x', { createOnly: true }),
      'FILE_EXISTS',
      /already exists/,
    );
    await files.write(sb.id, 'fresh.txt', 'new', { createOnly: true });
    assert.equal(await sh('ls -A /workspace | grep -c palisade-tmp || true'), '0\n');
  });

  it('list shows names, types, sizes; mkdir with and without parents', async () => {
    await files.mkdir(sb.id, 'tree/a/b', { parents: true });
    await files.mkdir(sb.id, 'tree/a/b', { parents: true }); // idempotent with parents
    await rejectsWith(files.mkdir(sb.id, 'tree/a/b'), 'FILE_EXISTS');
    await rejectsWith(files.mkdir(sb.id, 'nothere/x'), 'FILE_NOT_FOUND');
    await files.write(sb.id, 'tree/file.bin', Buffer.from([1, 2, 3]));
    await sh('ln -s a /workspace/tree/link');
    const { entries, truncated } = await files.list(sb.id, 'tree');
    assert.equal(truncated, false);
    assert.deepEqual(
      entries.map((e) => [e.name, e.type, e.type === 'file' ? e.size : -1]),
      [
        ['a', 'directory', -1],
        ['file.bin', 'file', 3],
        ['link', 'symlink', -1],
      ],
    );
    const link = await files.stat(sb.id, 'tree/link');
    assert.equal(link.type, 'symlink');
    assert.equal(link.target, 'a');
    await rejectsWith(files.list(sb.id, 'tree/file.bin'), 'FILE_NOT_A_DIRECTORY');
    const few = await files.list(sb.id, 'tree', { maxEntries: 2 });
    assert.equal(few.entries.length, 2);
    assert.equal(few.truncated, true);
  });

  it('move (no overwrite by default) and remove (recursive only when asked)', async () => {
    await files.write(sb.id, 'mv-a.txt', 'A');
    await files.write(sb.id, 'mv-b.txt', 'B');
    await rejectsWith(files.move(sb.id, 'mv-a.txt', 'mv-b.txt'), 'FILE_EXISTS', /overwrite: true/);
    await files.move(sb.id, 'mv-a.txt', 'mv-b.txt', { overwrite: true });
    assert.equal((await files.read(sb.id, 'mv-b.txt')).toString(), 'A');
    await rejectsWith(files.stat(sb.id, 'mv-a.txt'), 'FILE_NOT_FOUND');
    await files.mkdir(sb.id, 'rm/sub/deeper', { parents: true });
    await files.write(sb.id, 'rm/sub/deeper/f', 'x');
    await rejectsWith(files.remove(sb.id, 'rm'), 'FILE_DIRECTORY_NOT_EMPTY', /recursive: true/);
    await files.remove(sb.id, 'rm', { recursive: true });
    await rejectsWith(files.stat(sb.id, 'rm'), 'FILE_NOT_FOUND');
    await files.remove(sb.id, 'mv-b.txt');
    await rejectsWith(files.remove(sb.id, 'mv-b.txt'), 'FILE_NOT_FOUND');
  });

  it('recursive remove never follows a symlink into another directory', async () => {
    await sh(
      'mkdir -p /workspace/keep /workspace/victim && echo precious > /workspace/keep/f && ln -s /workspace/keep /workspace/victim/link && ln -s /workspace/keep/f /workspace/victim/flink',
    );
    await files.remove(sb.id, 'victim', { recursive: true });
    assert.equal(
      await sh('cat /workspace/keep/f; test -e /workspace/victim || echo gone'),
      'precious\ngone\n',
    );
  });

  it('recursive remove racing a directory/symlink swap never deletes outside the tree', async () => {
    await sh('mkdir -p /workspace/guarded && echo keep > /workspace/guarded/precious');
    // The racer swaps a real directory and a symlink to the guarded directory with
    // renameat2(RENAME_EXCHANGE), one syscall per swap (perl, since the shell is far too slow to
    // land a swap between two of the helper's syscalls), inside the tree the API removes.
    const renameat2 = process.arch === 'arm64' ? 276 : 316;
    const racer = await engine.exec(sb.id, {
      argv: [
        '/usr/bin/perl',
        '-e',
        `chdir "/workspace" or die; while (1) { mkdir "victim"; mkdir "victim/d"; open(my $f, ">", "victim/d/f"); close $f; symlink "/workspace/guarded", "victim/s"; my ($d, $s) = ("victim/d", "victim/s"); for (1..2000) { syscall(${renameat2}, -100, $d, -100, $s, 2); } }`,
      ],
      timeoutMs: 120_000,
    });
    let racerEnded = false;
    void racer.done.then(() => (racerEnded = true));
    try {
      let removed = 0;
      for (let i = 0; i < 80; i++) {
        try {
          await files.remove(sb.id, 'victim', { recursive: true });
          removed++;
        } catch (err) {
          assert.ok(isPalisadeError(err), String(err));
        }
      }
      assert.ok(removed > 0, 'some removals succeeded');
      assert.equal(racerEnded, false, 'the swapping loop ran for the whole test');
    } finally {
      await racer.kill();
    }
    assert.equal(await sh('cat /workspace/guarded/precious'), 'keep\n');
  });

  it('search by glob: "*" stays in one segment, "**" crosses them; results are bounded', async () => {
    await sh(
      'mkdir -p /workspace/proj/src/deep/er /workspace/proj/.hidden && cd /workspace/proj && touch top.ts src/a.ts src/b.js src/deep/c.ts src/deep/er/d.ts .hidden/e.ts',
    );
    const top = await files.search(sb.id, 'proj', '*.ts');
    assert.deepEqual(
      top.matches.map((m) => m.path),
      ['top.ts'],
    );
    const all = await files.search(sb.id, 'proj', '**/*.ts');
    assert.deepEqual(
      all.matches.map((m) => m.path),
      ['.hidden/e.ts', 'src/a.ts', 'src/deep/c.ts', 'src/deep/er/d.ts', 'top.ts'],
    );
    assert.equal(all.truncated, false);
    const inSrc = await files.search(sb.id, 'proj', 'src/*/*.ts');
    assert.deepEqual(
      inSrc.matches.map((m) => m.path),
      ['src/deep/c.ts'],
    );
    const bounded = await files.search(sb.id, 'proj', '**/*.ts', { maxResults: 2 });
    assert.equal(bounded.matches.length, 2);
    assert.equal(bounded.truncated, true);
    const shallow = await files.search(sb.id, 'proj', '**/*.ts', { maxDepth: 2 });
    assert.deepEqual(
      shallow.matches.map((m) => m.path),
      ['.hidden/e.ts', 'src/a.ts', 'top.ts'],
    );
    await rejectsWith(files.search(sb.id, 'proj', '/etc/*'), 'INVALID_ARGUMENT');
  });

  it('edit replaces an exact unique string, or fails clearly', async () => {
    await files.write(sb.id, 'code.py', 'def f():\n    return 1\n\ndef g():\n    return 1\n', {
      mode: 0o600,
    });
    await rejectsWith(
      files.edit(sb.id, 'code.py', 'return 2', 'return 3'),
      'EDIT_NO_MATCH',
      /does not occur/,
    );
    await assert.rejects(files.edit(sb.id, 'code.py', 'return 1', 'return 2'), (err: unknown) => {
      assert.ok(isPalisadeError(err, 'EDIT_NOT_UNIQUE'));
      assert.match(err.message, /occurs 2 times/);
      assert.equal(err.details?.occurrences, 2);
      return true;
    });
    assert.deepEqual(
      await files.edit(sb.id, 'code.py', 'def g():\n    return 1', 'def g():\n    return 2'),
      {
        replacements: 1,
      },
    );
    assert.deepEqual(await files.edit(sb.id, 'code.py', 'return', 'yield', { replaceAll: true }), {
      replacements: 2,
    });
    assert.equal(
      (await files.read(sb.id, 'code.py')).toString(),
      'def f():\n    yield 1\n\ndef g():\n    yield 2\n',
    );
    assert.equal((await files.stat(sb.id, 'code.py')).mode, 0o600);
    await rejectsWith(files.edit(sb.id, 'code.py', '', 'x'), 'INVALID_ARGUMENT');
    await rejectsWith(files.edit(sb.id, 'nope.py', 'a', 'b'), 'FILE_NOT_FOUND');
  });

  it('missing files give FILE_NOT_FOUND with a clear message', async () => {
    await rejectsWith(
      files.read(sb.id, 'does/not/exist.txt'),
      'FILE_NOT_FOUND',
      /"\/workspace\/does\/not\/exist.txt": no such file or directory/,
    );
    await rejectsWith(files.read(sb.id, '/workspace'), 'FILE_IS_A_DIRECTORY');
    await rejectsWith(files.read(sb.id, '/dev/zero'), 'INVALID_ARGUMENT', /not a regular file/);
    await rejectsWith(files.read('sb-aaaaaaaaaaaaaaaaaaaa', 'x'), 'SANDBOX_NOT_FOUND');
  });

  it("the kernel enforces the sandbox user's permissions; a paused sandbox refuses", async () => {
    await sh(
      'mkdir -p /workspace/locked && echo hidden > /workspace/locked/f && chmod 000 /workspace/locked',
    );
    await rejectsWith(files.list(sb.id, 'locked'), 'FILE_PERMISSION_DENIED', /not allowed/);
    await rejectsWith(files.read(sb.id, 'locked/f'), 'FILE_PERMISSION_DENIED');
    await rejectsWith(files.write(sb.id, 'locked/g', 'x'), 'FILE_PERMISSION_DENIED');
    await sh('chmod 700 /workspace/locked');
    await engine.pause(sb.id);
    try {
      await rejectsWith(files.read(sb.id, 'locked/f'), 'SANDBOX_NOT_RUNNING');
    } finally {
      await engine.resume(sb.id);
    }
    assert.equal((await files.read(sb.id, 'locked/f')).toString(), 'hidden\n');
  });

  it('bad paths are rejected before anything runs', async () => {
    await rejectsWith(files.read(sb.id, ''), 'INVALID_PATH');
    await rejectsWith(files.read(sb.id, 'a\0b'), 'INVALID_PATH', /NUL/);
    await rejectsWith(files.read(sb.id, 'x'.repeat(5000)), 'INVALID_PATH', /longer than/);
    await rejectsWith(files.read(sb.id, '\ud800'), 'INVALID_PATH');
    await rejectsWith(files.read(sb.id, 42 as unknown as string), 'INVALID_PATH');
    await rejectsWith(files.write(sb.id, 'm', 'x', { mode: 0o10000 }), 'INVALID_ARGUMENT');
    await rejectsWith(files.read(sb.id, 'hello.txt', { offset: -1 }), 'INVALID_ARGUMENT');
  });

  it('".." and absolute paths only reach the sandbox\'s own view', async () => {
    await rejectsWith(files.read(sb.id, '/etc/shadow'), 'FILE_NOT_FOUND');
    await rejectsWith(files.read(sb.id, '../../../../etc/shadow'), 'FILE_NOT_FOUND');
    const passwd = (await files.read(sb.id, '../etc/passwd')).toString();
    assert.match(passwd, /^sandbox:x:1000:1000:/m);
    assert.notEqual(passwd, readFileSync('/etc/passwd', 'utf8'));
    await rejectsWith(files.read(sb.id, '/work/main/package.json'), 'FILE_NOT_FOUND');
    await rejectsWith(
      files.write(sb.id, '/usr/bin/palisade-x', 'x'),
      'FILE_PERMISSION_DENIED',
      /read-only/,
    );
    await rejectsWith(files.write(sb.id, '/etc/evil', 'x'), 'FILE_PERMISSION_DENIED');
    await rejectsWith(files.write(sb.id, '/.palisade/files', 'x'), 'FILE_PERMISSION_DENIED');
    await rejectsWith(files.remove(sb.id, '/.palisade/agent'), 'FILE_PERMISSION_DENIED');
    // The sandbox's /tmp is private: a write there never lands in the host's /tmp.
    const hostName = join(hostDir, 'from-sandbox.txt');
    await rejectsWith(files.write(sb.id, hostName, 'x'), 'FILE_NOT_FOUND');
    await files.write(sb.id, '/tmp/escape-probe.txt', 'sandbox tmp');
    assert.equal(existsSync('/tmp/escape-probe.txt'), false);
    assert.equal(existsSync(hostName), false);
  });

  it('a symlink in the workspace pointing at a host file is resolved inside the sandbox, never on the host', async () => {
    const canary = join(hostDir, 'canary.txt');
    writeFileSync(canary, 'HOST-CANARY-1');
    const before = statSync(canary);
    await sh(`ln -s ${canary} /workspace/to-host; ln -s /work/main/package.json /workspace/to-pkg`);
    await rejectsWith(files.read(sb.id, 'to-host'), 'FILE_NOT_FOUND');
    await rejectsWith(files.read(sb.id, 'to-pkg'), 'FILE_NOT_FOUND');
    await rejectsWith(
      files.edit(sb.id, 'to-host', 'HOST', 'EVIL'),
      'INVALID_ARGUMENT',
      /symbolic link/,
    );
    // Writing replaces the link itself (atomic rename), it never writes through it.
    await files.write(sb.id, 'to-host', 'overwritten');
    assert.equal((await files.stat(sb.id, 'to-host')).type, 'file');
    await files.remove(sb.id, 'to-pkg');
    assert.equal(readFileSync(canary, 'utf8'), 'HOST-CANARY-1');
    assert.equal(statSync(canary).mtimeMs, before.mtimeMs);
    assert.ok(existsSync('/work/main/package.json'));
  });

  it('a directory/symlink swapped in a tight loop inside the sandbox never exposes a host file', async () => {
    const canaryDir = mkdtempSync(join(tmpdir(), 'palisade-files-canary-'));
    const canary = join(canaryDir, 'secret.txt');
    writeFileSync(canary, 'HOST-SECRET-CANARY');
    const before = statSync(canary);
    // Inside, the same path names the sandbox's private /tmp, which the sandbox fills itself.
    const racer = await engine.exec(sb.id, {
      command: `mkdir -p ${canaryDir} && echo sandbox-side > ${canary}; cd /workspace; while :; do rm -rf race; mkdir race; echo dir-side > race/secret.txt; rm -rf race; ln -s ${canaryDir} race; done`,
      timeoutMs: 120_000,
    });
    let racerEnded = false;
    void racer.done.then(() => (racerEnded = true));
    try {
      const seen = new Set<string>();
      for (let i = 0; i < 100; i++) {
        const ops = [
          files.read(sb.id, 'race/secret.txt').then((b) => b.toString()),
          files.write(sb.id, 'race/secret.txt', `api-write-${i}`).then(() => 'wrote'),
          files.list(sb.id, 'race').then((l) => l.entries.map((e) => e.name).join(',')),
          files.edit(sb.id, 'race/secret.txt', 'side', 'SIDE').then(() => 'edited'),
          files.remove(sb.id, 'race/secret.txt').then(() => 'removed'),
        ];
        for (const r of await Promise.allSettled(ops)) {
          if (r.status === 'fulfilled') seen.add(r.value);
          else assert.ok(isPalisadeError(r.reason), String(r.reason));
        }
      }
      for (const s of seen)
        assert.ok(!s.includes('HOST-SECRET-CANARY'), `host content leaked: ${s}`);
      assert.ok(
        seen.has('wrote') && [...seen].some((s) => s.includes('side') || s.includes('SIDE')),
      );
      assert.equal(racerEnded, false, 'the swapping loop ran for the whole test');
    } finally {
      await racer.kill();
    }
    assert.equal(readFileSync(canary, 'utf8'), 'HOST-SECRET-CANARY');
    assert.equal(statSync(canary).mtimeMs, before.mtimeMs);
    rmSync(canaryDir, { recursive: true, force: true });
  });

  it('large files round-trip intact (20 MiB, sha256), also streamed in chunks', async () => {
    const big = randomBytes(20 * 1024 * 1024);
    assert.deepEqual(await files.write(sb.id, 'big.bin', big), { size: big.length });
    assert.equal((await sh('sha256sum /workspace/big.bin')).split(' ')[0], sha256(big));
    const back = await files.read(sb.id, 'big.bin');
    assert.equal(back.length, big.length);
    assert.equal(sha256(back), sha256(big));
    const slice = await files.read(sb.id, 'big.bin', { offset: 5_000_000, length: 7_000_000 });
    assert.ok(slice.equals(big.subarray(5_000_000, 12_000_000)));
    let chunks = 0;
    const hash = createHash('sha256');
    for await (const c of files.readStream(sb.id, 'big.bin')) {
      chunks++;
      hash.update(c);
    }
    assert.equal(hash.digest('hex'), sha256(big));
    assert.equal(chunks, 5);
  });

  it('binary content and streamed writes are byte-exact', async () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await files.write(sb.id, 'bytes.bin', all);
    assert.ok((await files.read(sb.id, 'bytes.bin')).equals(all));
    async function* parts(): AsyncIterable<Uint8Array> {
      for (let i = 0; i < 40; i++) yield Buffer.alloc(100_000, i);
    }
    assert.deepEqual(await files.write(sb.id, 'streamed.bin', parts()), { size: 4_000_000 });
    const back = await files.read(sb.id, 'streamed.bin');
    assert.equal(back.length, 4_000_000);
    assert.equal(back[3_999_999], 39);
  });

  it('non-UTF-8 names are listed faithfully and addressable as bytes', async () => {
    await sh(
      `mkdir -p /workspace/names && cd /workspace/names && printf latin1 > "$(printf 'caf\\351')" && touch 'naïve' 'a b' -- '-dash'`,
    );
    const { entries } = await files.list(sb.id, 'names');
    const raw = entries.map((e) => e.rawName.toString('hex'));
    assert.deepEqual(
      raw,
      ['-dash', 'a b', Buffer.from([0x63, 0x61, 0x66, 0xe9]), 'naïve']
        .map((n) => Buffer.from(n).toString('hex'))
        .sort(),
    );
    const latin = entries.find((e) => e.rawName.equals(Buffer.from([0x63, 0x61, 0x66, 0xe9])));
    assert.ok(latin);
    assert.equal(latin.name, 'caf\ufffd');
    const path = Buffer.concat([Buffer.from('/workspace/names/'), latin.rawName]);
    assert.equal((await files.read(sb.id, path)).toString(), 'latin1');
    assert.equal((await files.read(sb.id, 'names/-dash')).length, 0);
  });

  it('read and write size limits are enforced before and during transfer', async () => {
    const small = createSandboxFiles(engine, {
      maxReadBytes: 1000,
      maxWriteBytes: 1000,
      readChunkBytes: 300,
    });
    await files.write(sb.id, 'limit.txt', 'k'.repeat(2000));
    await rejectsWith(small.read(sb.id, 'limit.txt'), 'FILE_TOO_LARGE', /limit of 1000 bytes/);
    await rejectsWith(small.read(sb.id, 'limit.txt', { length: 1001 }), 'FILE_TOO_LARGE');
    assert.equal((await small.read(sb.id, 'limit.txt', { offset: 1500 })).length, 500);
    assert.equal((await small.read(sb.id, 'limit.txt', { length: 1000 })).length, 1000);
    await rejectsWith(small.write(sb.id, 'limit.txt', 'x'.repeat(1001)), 'FILE_TOO_LARGE');
    async function* endless(): AsyncIterable<Uint8Array> {
      for (;;) yield Buffer.alloc(400, 0x7a);
    }
    await rejectsWith(small.write(sb.id, 'limit.txt', endless()), 'FILE_TOO_LARGE');
    // The old content is untouched and no temp file is left behind.
    assert.equal((await files.read(sb.id, 'limit.txt')).toString(), 'k'.repeat(2000));
    assert.equal(await sh('ls -A /workspace | grep -c palisade-tmp || true'), '0\n');
    await rejectsWith(
      createSandboxFiles(engine, { maxEditBytes: 100 }).edit(sb.id, 'limit.txt', 'k', 'j'),
      'FILE_TOO_LARGE',
    );
    assert.throws(() => createSandboxFiles(engine, { maxReadBytes: 0 }), /maxReadBytes/);
  });

  it('an aborted streamed write leaves the old file and no temp file', async () => {
    await files.write(sb.id, 'abort.txt', 'original');
    async function* failing(): AsyncIterable<Uint8Array> {
      yield Buffer.from('partial ');
      await new Promise((r) => setTimeout(r, 50));
      throw new Error('client went away');
    }
    await assert.rejects(files.write(sb.id, 'abort.txt', failing()), /client went away/);
    assert.equal((await files.read(sb.id, 'abort.txt')).toString(), 'original');
    assert.equal(await sh('ls -A /workspace | grep -c palisade-tmp || true'), '0\n');
  });

  it('a stream fails with FILE_CHANGED if the file is replaced between chunks', async () => {
    const chunked = createSandboxFiles(engine, { readChunkBytes: 1000 });
    await files.write(sb.id, 'changing.txt', 'a'.repeat(5000));
    const it = chunked.readStream(sb.id, 'changing.txt')[Symbol.asyncIterator]();
    const first = await it.next();
    assert.equal(first.value?.length, 1000);
    await files.write(sb.id, 'changing.txt', 'b'.repeat(5000));
    await rejectsWith(it.next(), 'FILE_CHANGED');
  });

  it('writes in a full workspace fail with FILE_NO_SPACE', async () => {
    const tiny = await engine.create({ limits: { diskBytes: 16 * 1024 * 1024 } });
    try {
      await rejectsWith(
        files.write(tiny.id, 'fill.bin', Buffer.alloc(40 * 1024 * 1024)),
        'FILE_NO_SPACE',
      );
      assert.equal(
        (
          await engine.run(tiny.id, { command: 'ls -A /workspace | grep -c palisade-tmp || true' })
        ).stdout.toString(),
        '0\n',
      );
    } finally {
      await engine.destroy(tiny.id);
    }
  });
});
