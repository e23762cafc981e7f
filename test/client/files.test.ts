import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  ConflictError,
  InvalidArgumentError,
  InvalidRequestError,
  NotFoundError,
  PalisadeApiError,
  PalisadeClient,
  PayloadTooLargeError,
  type Sandbox,
} from '../../src/client/index.js';
import { startTestServer, type TestServer } from '../server/helpers.js';

describe('sandbox.files against the real files routes', () => {
  let s: TestServer;
  let sb: Sandbox;

  before(async () => {
    s = await startTestServer({
      config: { files: { maxWriteBytes: 64 * 1024 } },
      egress: { connectGuard: () => false },
    });
    const client = new PalisadeClient({ baseUrl: s.url, apiKey: s.adminKey });
    sb = await client.createSandbox();
  });
  after(async () => {
    await s.close();
  });

  it('write, read, readText, ranges and exact bytes', async () => {
    const written = await sb.files.write('/workspace/hello.txt', 'hello, wörld\n');
    assert.equal(written.size, Buffer.byteLength('hello, wörld\n'));
    assert.equal(await sb.files.readText('/workspace/hello.txt'), 'hello, wörld\n');
    const bytes = Uint8Array.from([0, 1, 2, 0xff, 0xfe, 10, 13, 0x80]);
    await sb.files.write('/workspace/bin', bytes);
    assert.deepEqual(await sb.files.read('/workspace/bin'), bytes);
    assert.deepEqual(
      await sb.files.read('/workspace/bin', { offset: 3, length: 2 }),
      bytes.subarray(3, 5),
    );
    assert.deepEqual(await sb.files.read('/workspace/bin', { offset: 6 }), bytes.subarray(6));
    assert.deepEqual(await sb.files.read('/workspace/bin', { length: 2 }), bytes.subarray(0, 2));
    assert.equal((await sb.files.read('/workspace/bin', { length: 0 })).byteLength, 0);
    await assert.rejects(
      sb.files.read('/workspace/bin', { offset: 100 }),
      (err: unknown) => err instanceof PalisadeApiError && err.status === 416,
    );
    // The command sees exactly what the SDK wrote.
    const seen = await sb.commands.run('od -An -tx1 /workspace/bin');
    assert.equal(seen.stdout.replace(/\s+/g, ' ').trim(), '00 01 02 ff fe 0a 0d 80');
    await assert.rejects(sb.files.read(''), InvalidArgumentError);
  });

  it('mode, createOnly, stat, exists, list and mkdir', async () => {
    await sb.files.write('/workspace/secret', 'x', { mode: 0o600 });
    const st = await sb.files.stat('/workspace/secret');
    assert.equal(st.type, 'file');
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(st.size, 1);
    await assert.rejects(
      sb.files.write('/workspace/secret', 'y', { createOnly: true }),
      (err: unknown) => err instanceof ConflictError && err.code === 'FILE_EXISTS',
    );
    assert.equal(await sb.files.readText('/workspace/secret'), 'x');
    await sb.files.mkdir('/workspace/a/b/c', { parents: true });
    assert.equal((await sb.files.stat('/workspace/a/b')).type, 'directory');
    await sb.files.write('/workspace/a/one.txt', '1');
    const listing = await sb.files.list('/workspace/a');
    assert.equal(listing.truncated, false);
    assert.deepEqual(listing.entries.map((e) => `${e.name}:${e.type}`).sort(), [
      'b:directory',
      'one.txt:file',
    ]);
    assert.equal(
      Buffer.from(listing.entries[0]!.nameBase64, 'base64').toString(),
      listing.entries[0]!.name,
    );
    assert.equal(await sb.files.exists('/workspace/a/one.txt'), true);
    assert.equal(await sb.files.exists('/workspace/a/none'), false);
    await assert.rejects(
      sb.files.mkdir('/workspace/a/b'),
      (err: unknown) => err instanceof ConflictError && err.code === 'FILE_EXISTS',
    );
  });

  it('move, edit, search and remove', async () => {
    await sb.files.write('/workspace/m1', 'one');
    await sb.files.write('/workspace/m2', 'two');
    await assert.rejects(sb.files.move('/workspace/m1', '/workspace/m2'), ConflictError);
    await sb.files.move('/workspace/m1', '/workspace/m2', { overwrite: true });
    assert.equal(await sb.files.exists('/workspace/m1'), false);
    assert.equal(await sb.files.readText('/workspace/m2'), 'one');
    await sb.files.move('/workspace/m2', '/workspace/m3');
    assert.equal(await sb.files.readText('/workspace/m3'), 'one');

    await sb.files.write('/workspace/e.txt', 'a b a c a');
    assert.deepEqual(await sb.files.edit('/workspace/e.txt', 'b', 'B'), { replacements: 1 });
    await assert.rejects(
      sb.files.edit('/workspace/e.txt', 'zzz', 'y'),
      (err: unknown) =>
        err instanceof InvalidRequestError && err.code === 'EDIT_NO_MATCH' && err.status === 422,
    );
    await assert.rejects(
      sb.files.edit('/workspace/e.txt', 'a', 'y'),
      (err: unknown) => err instanceof InvalidRequestError && err.code === 'EDIT_NOT_UNIQUE',
    );
    assert.deepEqual(await sb.files.edit('/workspace/e.txt', 'a', 'y', { replaceAll: true }), {
      replacements: 3,
    });
    assert.equal(await sb.files.readText('/workspace/e.txt'), 'y B y c y');

    await sb.files.mkdir('/workspace/src/lib', { parents: true });
    await sb.files.write('/workspace/src/a.ts', '');
    await sb.files.write('/workspace/src/lib/b.ts', '');
    await sb.files.write('/workspace/src/lib/c.js', '');
    const found = await sb.files.search('/workspace/src', '**/*.ts');
    assert.deepEqual(found.matches.map((m) => m.path).sort(), ['a.ts', 'lib/b.ts']);
    assert.equal(found.truncated, false);
    const one = await sb.files.search('/workspace/src', '**/*', { maxResults: 1 });
    assert.equal(one.matches.length, 1);
    assert.equal(one.truncated, true);

    await sb.files.remove('/workspace/m3');
    assert.equal(await sb.files.exists('/workspace/m3'), false);
    await assert.rejects(sb.files.remove('/workspace/src'), ConflictError);
    await sb.files.remove('/workspace/src', { recursive: true });
    assert.equal(await sb.files.exists('/workspace/src'), false);
  });

  it('byte paths reach names that are not valid UTF-8, and listings return the raw names', async () => {
    const dir = Buffer.from('/workspace/raw');
    const latin1 = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // "café" in Latin-1: not UTF-8
    // Bytes that URL encoding treats specially must arrive as themselves.
    const tricky = Buffer.from('a+b c%2F&x=1?#.txt');
    const join = (...parts: Uint8Array[]) =>
      Buffer.concat(parts.flatMap((p, i) => (i === 0 ? [p] : [Buffer.from('/'), p])));
    await sb.files.mkdir(dir);
    const written = await sb.files.write(join(dir, latin1), 'latin1 content');
    assert.equal(written.size, 14);
    await sb.files.write(join(dir, tricky), new Uint8Array([1, 2, 3]));
    assert.equal(await sb.files.readText(join(dir, latin1)), 'latin1 content');
    assert.deepEqual(await sb.files.read(join(dir, tricky)), new Uint8Array([1, 2, 3]));
    // Not the same as the lossy text form of the name: that file does not exist.
    assert.equal(await sb.files.exists(`/workspace/raw/caf\uFFFD`), false);
    assert.equal((await sb.files.stat(join(dir, latin1))).type, 'file');
    assert.equal(await sb.files.exists(join(dir, latin1)), true);

    // The sandbox's own view: exactly these two names, byte for byte.
    const ls = await sb.commands.run(
      'cd /workspace/raw && for f in *; do printf %s "$f" | od -An -v -w4096 -tx1; done',
    );
    const names = ls.stdout
      .trim()
      .split('\n')
      .map((l) => Buffer.from(l.trim().replace(/\s+/g, ''), 'hex'));
    assert.deepEqual(
      names.map((n) => n.toString('hex')).sort(),
      [latin1.toString('hex'), tricky.toString('hex')].sort(),
    );

    const listing = await sb.files.list(dir);
    const raw = listing.entries.map((e) => Buffer.from(e.nameBytes).toString('hex')).sort();
    assert.deepEqual(raw, [latin1.toString('hex'), tricky.toString('hex')].sort());
    for (const e of listing.entries) assert.ok(e.nameBytes instanceof Uint8Array);
    // A listed name passed back as bytes reaches the same file.
    const entry = listing.entries.find((e) => Buffer.from(e.nameBytes).equals(latin1))!;
    assert.equal(await sb.files.readText(join(dir, entry.nameBytes)), 'latin1 content');

    const found = await sb.files.search('/workspace/raw', '*');
    assert.deepEqual(
      found.matches.map((m) => Buffer.from(m.pathBytes).toString('hex')).sort(),
      [latin1.toString('hex'), tricky.toString('hex')].sort(),
    );

    // JSON routes carry text: a byte path that is not UTF-8 is refused before any request.
    await assert.rejects(sb.files.mkdir(join(dir, latin1, Buffer.from('sub'))), (err: unknown) => {
      assert.ok(err instanceof InvalidArgumentError);
      assert.match(err.message, /valid UTF-8/);
      return true;
    });
    await assert.rejects(sb.files.move(join(dir, latin1), '/workspace/x'), InvalidArgumentError);
    // ...while a UTF-8 byte path works there too.
    await sb.files.mkdir(Buffer.from('/workspace/raw/sub dir'));
    assert.equal((await sb.files.stat('/workspace/raw/sub dir')).type, 'directory');
    await assert.rejects(sb.files.read(new Uint8Array(0)), InvalidArgumentError);
    await assert.rejects(sb.files.read(Buffer.from([0x2f, 0, 0x61])), InvalidArgumentError);

    await sb.files.remove(join(dir, latin1));
    assert.equal(await sb.files.exists(join(dir, latin1)), false);
    assert.equal(await sb.files.exists(join(dir, tricky)), true);
    await sb.files.remove(dir, { recursive: true });
  });

  it('errors: missing file, bad path, too large', async () => {
    await assert.rejects(sb.files.read('/workspace/missing'), (err: unknown) => {
      assert.ok(err instanceof NotFoundError);
      assert.equal(err.code, 'FILE_NOT_FOUND');
      assert.match(err.requestId ?? '', /^req_/);
      return true;
    });
    // Relative paths are relative to /workspace; an over-long one is refused by the server.
    await assert.rejects(
      sb.files.readText(`/workspace/${'x'.repeat(5000)}`),
      (err: unknown) => err instanceof InvalidRequestError && err.status === 400,
    );
    await assert.rejects(
      sb.files.write('/workspace/big', new Uint8Array(64 * 1024 + 1)),
      (err: unknown) => err instanceof PayloadTooLargeError && err.status === 413,
    );
    assert.equal(await sb.files.exists('/workspace/big'), false);
  });
});
