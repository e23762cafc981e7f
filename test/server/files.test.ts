import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { resolveConfig } from '../../src/server/config.js';
import { contentDisposition, parseRange } from '../../src/server/routes-files.js';
import { startTestServer, type TestServer } from './helpers.js';

const MiB = 1024 * 1024;
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const q = (path: string): string => encodeURIComponent(path);

describe('files HTTP API (real server, real sandboxes)', () => {
  let s: TestServer;
  let id: string;
  let guarded: string;
  let readerKey: string;
  let otherKey: string;
  let hostDir: string;

  const files = (sandbox = id) => `/v1/sandboxes/${sandbox}/files`;
  const sh = async (command: string, sandbox = id): Promise<string> => {
    const r = await s.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
      key: s.adminKey,
      body: { command },
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.exitCode, 0, r.json.stderr);
    return r.json.stdout as string;
  };
  const put = (path: string, body: string | Buffer, key = s.adminKey, extra = '') =>
    s.req('PUT', `${files()}?path=${q(path)}${extra}`, {
      key,
      rawBody: body,
      headers: { 'content-type': 'application/octet-stream' },
    });
  const get = (path: string, headers: Record<string, string> = {}, sandbox = id) =>
    fetch(`${s.url}${files(sandbox)}?path=${q(path)}`, {
      headers: { authorization: `Bearer ${s.adminKey}`, ...headers },
    });
  const auditOf = async (type: string, sandbox = id) =>
    (
      await s.req('GET', `/v1/audit?type=${type}&sandboxId=${sandbox}&limit=1000`, {
        key: s.adminKey,
      })
    ).json.items as Array<{ data: Record<string, unknown>; actor: string; tenant: string }>;

  before(async () => {
    s = await startTestServer({
      config: {
        quotas: { maxLiveSandboxes: 4 },
        files: { maxReadBytes: 24 * MiB, maxWriteBytes: 24 * MiB },
      },
    });
    const a = await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: {} });
    assert.equal(a.status, 201, a.text);
    id = a.json.id;
    const b = await s.req('POST', '/v1/sandboxes', {
      key: s.adminKey,
      body: {
        policy: {
          permissions: {
            default: 'allow',
            deny: ['Read(//workspace/secrets/**)', 'Write(//workspace/frozen/**)'],
            ask: ['Edit(//workspace/review/**)'],
          },
        },
      },
    });
    assert.equal(b.status, 201, b.text);
    guarded = b.json.id;
    const reader = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: { name: 'reader', scopes: ['sandboxes:read'] },
    });
    assert.equal(reader.status, 201, reader.text);
    readerKey = reader.json.key;
    const other = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: {
        name: 'other',
        tenant: 'other',
        scopes: ['sandboxes:read', 'sandboxes:write', 'sandboxes:exec'],
      },
    });
    assert.equal(other.status, 201, other.text);
    otherKey = other.json.key;
    hostDir = mkdtempSync(join(tmpdir(), 'palisade-files-http-'));
  });
  after(async () => {
    await s?.close();
    if (hostDir) rmSync(hostDir, { recursive: true, force: true });
  });

  it('PUT writes the raw body (mode, createOnly), GET streams it back with its headers', async () => {
    const w = await put('/workspace/../workspace/./hello.txt', 'hello, world\n');
    assert.equal(w.status, 201, w.text);
    assert.deepEqual(w.json, { path: '/workspace/../workspace/./hello.txt', size: 13 });
    const r = await get('hello.txt');
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'hello, world\n');
    assert.equal(r.headers.get('content-type'), 'application/octet-stream');
    assert.equal(r.headers.get('content-length'), '13');
    assert.equal(r.headers.get('accept-ranges'), 'bytes');
    assert.equal(
      r.headers.get('content-disposition'),
      `attachment; filename="hello.txt"; filename*=UTF-8''hello.txt`,
    );
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
    const head = await fetch(`${s.url}${files()}?path=hello.txt`, {
      method: 'HEAD',
      headers: { authorization: `Bearer ${s.adminKey}` },
    });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), '13');

    const script = await put('run.sh', '#!/bin/sh\necho ran\n', s.adminKey, '&mode=0755');
    assert.equal(script.status, 201, script.text);
    assert.equal(await sh('/workspace/run.sh'), 'ran\n');
    const st = await s.req('GET', `${files()}/stat?path=run.sh`, { key: s.adminKey });
    assert.equal(st.status, 200, st.text);
    assert.equal(st.json.type, 'file');
    assert.equal(st.json.mode, 0o755);
    assert.equal(st.json.size, 19);
    assert.equal(st.json.path, '/workspace/run.sh');
    assert.ok(Math.abs(Date.parse(st.json.mtime) - Date.now()) < 60_000);
    const again = await put('run.sh', 'x', s.adminKey, '&createOnly=true');
    assert.equal(again.status, 409);
    assert.equal(again.json.code, 'FILE_EXISTS');
    assert.equal((await put('empty', '')).json.size, 0);
    const empty = await get('empty');
    assert.equal(empty.status, 200);
    assert.equal((await empty.arrayBuffer()).byteLength, 0);
    const badMode = await put('m', 'x', s.adminKey, '&mode=999');
    assert.equal(badMode.status, 400);
  });

  it('list, stat (symlink target), mkdir, move, delete, edit and search', async () => {
    const mk = await s.req('POST', `${files()}/mkdir`, {
      key: s.adminKey,
      body: { path: 'proj/src/lib', parents: true },
    });
    assert.equal(mk.status, 201, mk.text);
    assert.deepEqual(mk.json, { path: '/workspace/proj/src/lib' });
    const dup = await s.req('POST', `${files()}/mkdir`, {
      key: s.adminKey,
      body: { path: 'proj/src' },
    });
    assert.equal(dup.status, 409);
    assert.equal(dup.json.code, 'FILE_EXISTS');
    await put('proj/src/a.ts', 'export const a = 1;\n');
    await put('proj/src/lib/b.ts', 'export const b = 2;\nexport const c = 2;\n');
    await put('proj/README.md', '# proj\n');
    await sh('ln -s src/a.ts /workspace/proj/link');

    const list = await s.req('GET', `${files()}/list?path=proj`, { key: s.adminKey });
    assert.equal(list.status, 200, list.text);
    assert.equal(list.json.truncated, false);
    const byName = new Map(
      (list.json.entries as Array<{ name: string; type: string; size: number }>).map((e) => [
        e.name,
        e,
      ]),
    );
    assert.equal(byName.get('src')?.type, 'directory');
    assert.equal(byName.get('README.md')?.size, 7);
    assert.equal(byName.get('link')?.type, 'symlink');
    const first = list.json.entries[0];
    assert.deepEqual(Object.keys(first).sort(), [
      'mode',
      'mtime',
      'name',
      'nameBase64',
      'size',
      'type',
    ]);
    const link = await s.req('GET', `${files()}/stat?path=proj/link`, { key: s.adminKey });
    assert.equal(link.json.type, 'symlink');
    assert.equal(link.json.target, 'src/a.ts');
    const viaLink = await get('proj/link');
    assert.equal(viaLink.status, 200);
    assert.equal(await viaLink.text(), 'export const a = 1;\n');

    const search = await s.req('POST', `${files()}/search`, {
      key: s.adminKey,
      body: { path: 'proj', glob: '**/*.ts' },
    });
    assert.equal(search.status, 200, search.text);
    assert.deepEqual(
      search.json.matches.map((m: { path: string }) => m.path),
      ['src/a.ts', 'src/lib/b.ts'],
    );
    assert.equal(search.json.matches[0].type, 'file');
    assert.equal(Buffer.from(search.json.matches[0].pathBase64, 'base64').toString(), 'src/a.ts');
    const few = await s.req('POST', `${files()}/search`, {
      key: s.adminKey,
      body: { path: 'proj', glob: '**', maxResults: 1 },
    });
    assert.equal(few.json.matches.length, 1);
    assert.equal(few.json.truncated, true);

    const edit = await s.req('POST', `${files()}/edit`, {
      key: s.adminKey,
      body: { path: 'proj/src/a.ts', oldText: '= 1', newText: '= 42' },
    });
    assert.equal(edit.status, 200, edit.text);
    assert.deepEqual(edit.json, { replacements: 1 });
    assert.equal(await sh('cat /workspace/proj/src/a.ts'), 'export const a = 42;\n');
    const absent = await s.req('POST', `${files()}/edit`, {
      key: s.adminKey,
      body: { path: 'proj/src/a.ts', oldText: 'nope', newText: 'x' },
    });
    assert.equal(absent.status, 422);
    assert.equal(absent.json.code, 'EDIT_NO_MATCH');
    const twice = await s.req('POST', `${files()}/edit`, {
      key: s.adminKey,
      body: { path: 'proj/src/lib/b.ts', oldText: '= 2', newText: '= 3' },
    });
    assert.equal(twice.status, 422);
    assert.equal(twice.json.code, 'EDIT_NOT_UNIQUE');
    assert.match(twice.json.message, /2 times/);
    const all = await s.req('POST', `${files()}/edit`, {
      key: s.adminKey,
      body: { path: 'proj/src/lib/b.ts', oldText: '= 2', newText: '= 3', replaceAll: true },
    });
    assert.deepEqual(all.json, { replacements: 2 });

    const mv = await s.req('POST', `${files()}/move`, {
      key: s.adminKey,
      body: { from: 'proj/README.md', to: 'proj/src/a.ts' },
    });
    assert.equal(mv.status, 409);
    assert.equal(mv.json.code, 'FILE_EXISTS');
    assert.match(mv.json.message, /overwrite/);
    const mv2 = await s.req('POST', `${files()}/move`, {
      key: s.adminKey,
      body: { from: 'proj/README.md', to: 'proj/README.txt' },
    });
    assert.equal(mv2.status, 200, mv2.text);
    assert.deepEqual(mv2.json, {
      from: '/workspace/proj/README.md',
      to: '/workspace/proj/README.txt',
    });
    const mv3 = await s.req('POST', `${files()}/move`, {
      key: s.adminKey,
      body: { from: 'proj/README.txt', to: 'proj/src/a.ts', overwrite: true },
    });
    assert.equal(mv3.status, 200, mv3.text);
    assert.equal(await sh('cat /workspace/proj/src/a.ts'), '# proj\n');

    const notEmpty = await s.req('DELETE', `${files()}?path=proj`, { key: s.adminKey });
    assert.equal(notEmpty.status, 409);
    assert.equal(notEmpty.json.code, 'FILE_DIRECTORY_NOT_EMPTY');
    assert.match(notEmpty.json.message, /recursive/);
    const del = await s.req('DELETE', `${files()}?path=proj&recursive=true`, { key: s.adminKey });
    assert.equal(del.status, 204, del.text);
    const gone = await s.req('GET', `${files()}/stat?path=proj`, { key: s.adminKey });
    assert.equal(gone.status, 404);
  });

  it('missing files are 404 FILE_NOT_FOUND with a clear message; directories and bad paths are refused', async () => {
    const r = await get('does/not/exist.txt');
    assert.equal(r.status, 404);
    const body = (await r.json()) as { code: string; message: string; requestId: string };
    assert.equal(body.code, 'FILE_NOT_FOUND');
    assert.match(body.message, /"\/workspace\/does\/not\/exist.txt": no such file or directory/);
    assert.equal(body.requestId, r.headers.get('x-request-id'));
    for (const path of [`${files()}/list?path=nope`, `${files()}/stat?path=nope`]) {
      const x = await s.req('GET', path, { key: s.adminKey });
      assert.equal(x.status, 404, path);
      assert.equal(x.json.code, 'FILE_NOT_FOUND');
    }
    const del = await s.req('DELETE', `${files()}?path=nope`, { key: s.adminKey });
    assert.equal(del.status, 404);
    const dir = await get('/workspace');
    assert.equal(dir.status, 409);
    assert.equal(((await dir.json()) as { code: string }).code, 'FILE_IS_A_DIRECTORY');
    const nul = await s.req('GET', `${files()}?path=a%00b`, { key: s.adminKey });
    assert.equal(nul.status, 400);
    assert.equal(nul.json.code, 'INVALID_PATH');
    const badEscape = await s.req('GET', `${files()}/stat?path=%ZZ`, { key: s.adminKey });
    assert.equal(badEscape.status, 400);
    assert.equal(badEscape.json.code, 'INVALID_PATH');
    const missing = await s.req('GET', files(), { key: s.adminKey });
    assert.equal(missing.status, 400);
    const extra = await s.req('POST', `${files()}/mkdir`, {
      key: s.adminKey,
      body: { path: 'x', mode: 511 },
    });
    assert.equal(extra.status, 400);
    assert.equal(extra.json.code, 'INVALID_ARGUMENT');
  });

  it('".." and absolute paths reach only the sandbox\'s own view', async () => {
    for (const path of ['/etc/shadow', '../../../../etc/shadow', '/work/main/package.json']) {
      const r = await get(path);
      assert.equal(r.status, 404, path);
      await r.body?.cancel();
    }
    const passwd = await (await get('../etc/passwd')).text();
    assert.match(passwd, /^sandbox:x:1000:1000:/m);
    assert.notEqual(passwd, readFileSync('/etc/passwd', 'utf8'));
    const usr = await put('/usr/bin/palisade-x', 'x');
    assert.equal(usr.status, 403);
    assert.equal(usr.json.code, 'FILE_PERMISSION_DENIED');
    assert.match(usr.json.message, /read-only/);
    const hostName = join(hostDir, 'from-api.txt');
    const outside = await put(hostName, 'x');
    assert.equal(outside.status, 404);
    const dotdot = await put('../../../../tmp/escape-probe-http.txt', 'sandbox tmp');
    assert.equal(dotdot.status, 201, dotdot.text);
    assert.throws(() => statSync('/tmp/escape-probe-http.txt'));
    assert.throws(() => statSync(hostName));
  });

  it('a symlink in the workspace to a host file is never followed to the host', async () => {
    const canary = join(hostDir, 'canary.txt');
    writeFileSync(canary, 'HOST-CANARY');
    const before = statSync(canary);
    await sh(`ln -s ${canary} /workspace/to-host; ln -s /work/main/package.json /workspace/to-pkg`);
    for (const path of ['to-host', 'to-pkg']) {
      const r = await get(path);
      assert.equal(r.status, 404, path);
      assert.doesNotMatch(await r.text(), /HOST-CANARY|"name"/);
    }
    const edit = await s.req('POST', `${files()}/edit`, {
      key: s.adminKey,
      body: { path: 'to-host', oldText: 'HOST', newText: 'EVIL' },
    });
    assert.equal(edit.status, 400);
    const w = await put('to-host', 'replaced');
    assert.equal(w.status, 201, w.text);
    const st = await s.req('GET', `${files()}/stat?path=to-host`, { key: s.adminKey });
    assert.equal(st.json.type, 'file');
    const del = await s.req('DELETE', `${files()}?path=to-pkg`, { key: s.adminKey });
    assert.equal(del.status, 204);
    assert.equal(readFileSync(canary, 'utf8'), 'HOST-CANARY');
    assert.equal(statSync(canary).mtimeMs, before.mtimeMs);
    assert.ok(statSync('/work/main/package.json').isFile());
  });

  it('a directory/symlink swapped in a loop inside the sandbox never exposes a host file', async () => {
    const canaryDir = mkdtempSync(join(tmpdir(), 'palisade-files-http-canary-'));
    const canary = join(canaryDir, 'secret.txt');
    writeFileSync(canary, 'HOST-SECRET-CANARY');
    const before = statSync(canary);
    const racer = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: {
        command: `mkdir -p ${canaryDir} && echo sandbox-side > ${canary}; cd /workspace; while :; do rm -rf race; mkdir race; echo dir-side > race/secret.txt; rm -rf race; ln -s ${canaryDir} race; done`,
        background: true,
        timeoutMs: 120_000,
      },
    });
    assert.equal(racer.status, 202, racer.text);
    try {
      const seen: string[] = [];
      for (let i = 0; i < 30; i++) {
        const results = await Promise.all([
          // A download whose file is swapped mid-response is cut off (never completed short).
          get('race/secret.txt').then(
            async (r) => `${r.status}:${await r.text().catch(() => 'cut')}`,
          ),
          put('race/secret.txt', `api-${i}`).then((r) => `${r.status}:${r.text}`),
          s
            .req('GET', `${files()}/list?path=race`, { key: s.adminKey })
            .then((r) => `${r.status}:${r.text}`),
        ]);
        seen.push(...results);
      }
      for (const x of seen) {
        assert.ok(!x.includes('HOST-SECRET-CANARY'), `host content leaked: ${x}`);
        assert.ok(!x.startsWith('5'), `server error: ${x}`);
      }
    } finally {
      const execPath = `/v1/sandboxes/${id}/execs/${racer.json.id}`;
      const stop = await s.req('POST', `${execPath}/interrupt`, { key: s.adminKey });
      assert.equal(stop.status, 200, stop.text);
      // The racer must be gone before later tests (it would otherwise spin for up to 120 s).
      for (let i = 0; i < 100; i++) {
        if ((await s.req('GET', execPath, { key: s.adminKey })).json.status === 'exited') break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.equal((await s.req('GET', execPath, { key: s.adminKey })).json.status, 'exited');
    }
    assert.equal(readFileSync(canary, 'utf8'), 'HOST-SECRET-CANARY');
    assert.equal(statSync(canary).mtimeMs, before.mtimeMs);
    rmSync(canaryDir, { recursive: true, force: true });
  });

  it('20 MiB upload and download round-trip intact (sha256), binary content byte-exact', async () => {
    const big = randomBytes(20 * MiB);
    const w = await put('big.bin', big);
    assert.equal(w.status, 201, w.text);
    assert.equal(w.json.size, big.length);
    assert.equal((await sh('sha256sum /workspace/big.bin')).split(' ')[0], sha256(big));
    const r = await get('big.bin');
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-length'), String(big.length));
    const back = Buffer.from(await r.arrayBuffer());
    assert.equal(back.length, big.length);
    assert.equal(sha256(back), sha256(big));

    const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await put('all-bytes.bin', Buffer.concat([binary, Buffer.from(binary).reverse()]));
    const b = Buffer.from(await (await get('all-bytes.bin')).arrayBuffer());
    assert.equal(b.length, 512);
    assert.equal(b[0], 0);
    assert.equal(b[255], 255);
    assert.equal(b[256], 255);
    assert.equal(b[511], 0);
  });

  it('Range gives 206 with Content-Range; an invalid or unsatisfiable Range is 416', async () => {
    await put('range.txt', '0123456789');
    const cases: Array<[string, string, string]> = [
      ['bytes=2-5', '2345', 'bytes 2-5/10'],
      ['bytes=7-', '789', 'bytes 7-9/10'],
      ['bytes=-3', '789', 'bytes 7-9/10'],
      ['bytes=8-100', '89', 'bytes 8-9/10'],
      ['bytes=0-0', '0', 'bytes 0-0/10'],
    ];
    for (const [range, body, contentRange] of cases) {
      const r = await get('range.txt', { range });
      assert.equal(r.status, 206, range);
      assert.equal(await r.text(), body, range);
      assert.equal(r.headers.get('content-range'), contentRange, range);
      assert.equal(r.headers.get('content-length'), String(body.length), range);
    }
    for (const range of [
      'bytes=10-',
      'bytes=5-2',
      'bytes=0-1,4-5',
      'items=0-1',
      'bytes=-0',
      'bytes=x',
    ]) {
      const r = await get('range.txt', { range });
      assert.equal(r.status, 416, range);
      assert.equal(r.headers.get('content-range'), 'bytes */10', range);
      const e = (await r.json()) as { code: string; message: string };
      assert.equal(e.code, 'RANGE_NOT_SATISFIABLE');
      assert.match(e.message, /10 bytes/);
    }
    // Unit checks of the parser's edges.
    assert.deepEqual(parseRange('bytes=-20', 10), { start: 0, end: 9 });
    assert.throws(() => parseRange('bytes=0-', 0));
  });

  it('downloads larger than the limit are 413 unless asked for in ranges', async () => {
    await sh('head -c 26214400 /dev/zero > /workspace/huge.bin');
    const r = await get('huge.bin');
    assert.equal(r.status, 413);
    const e = (await r.json()) as { code: string; message: string };
    assert.equal(e.code, 'FILE_TOO_LARGE');
    assert.match(e.message, /Range/);
    const part = await get('huge.bin', { range: `bytes=${25 * MiB - 10}-` });
    assert.equal(part.status, 206);
    assert.equal((await part.arrayBuffer()).byteLength, 10);
    await s.req('DELETE', `${files()}?path=huge.bin`, { key: s.adminKey });
  });

  it('an upload over the limit is 413 and leaves nothing behind (declared and streamed)', async () => {
    const tooBig = Buffer.alloc(24 * MiB + 1, 0x61);
    const declared = await put('over.bin', tooBig);
    assert.equal(declared.status, 413, declared.text);
    assert.equal(declared.json.code, 'FILE_TOO_LARGE');
    assert.match(declared.json.message, /upload limit/);
    // Chunked, no Content-Length: the engine cuts the stream one byte past the limit.
    const chunk = Buffer.alloc(MiB, 0x62);
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= 25) controller.close();
        else {
          sent++;
          controller.enqueue(chunk);
        }
      },
    });
    const streamed = await fetch(`${s.url}${files()}?path=over.bin`, {
      method: 'PUT',
      headers: {
        authorization: `Bearer ${s.adminKey}`,
        'content-type': 'application/octet-stream',
      },
      body: stream,
      duplex: 'half',
    } as RequestInit);
    assert.equal(streamed.status, 413, await streamed.clone().text());
    assert.equal(((await streamed.json()) as { code: string }).code, 'FILE_TOO_LARGE');
    const list = await s.req('GET', `${files()}/list?path=/workspace`, { key: s.adminKey });
    const names = (list.json.entries as Array<{ name: string }>).map((x) => x.name);
    assert.ok(!names.includes('over.bin'), names.join(','));
    assert.ok(!names.some((n) => n.startsWith('.palisade-tmp')), names.join(','));
    // The server still answers on a fresh connection.
    assert.equal(
      (await s.req('GET', `${files()}/stat?path=hello.txt`, { key: s.adminKey })).status,
      200,
    );
  });

  it('non-UTF-8 names are listed via nameBase64 and addressable as percent-encoded bytes', async () => {
    await sh(`mkdir -p /workspace/names && printf latin > "/workspace/names/$(printf 'caf\\351')"`);
    const list = await s.req('GET', `${files()}/list?path=names`, { key: s.adminKey });
    assert.equal(list.status, 200, list.text);
    const entry = list.json.entries[0];
    assert.deepEqual(
      Buffer.from(entry.nameBase64, 'base64'),
      Buffer.from([0x63, 0x61, 0x66, 0xe9]),
    );
    assert.equal(entry.name, 'caf\ufffd');
    const r = await fetch(`${s.url}${files()}?path=names/caf%E9`, {
      headers: { authorization: `Bearer ${s.adminKey}` },
    });
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'latin');
    const w = await s.req('PUT', `${files()}?path=names/raw%FF%FE`, {
      key: s.adminKey,
      rawBody: 'bytes',
    });
    assert.equal(w.status, 201, w.text);
    assert.equal(await sh('cat /workspace/names/"$(printf \'raw\\377\\376\')"'), 'bytes');
    // A literal "%" in a name is %25, and stays distinct from an escape.
    await put('names/100%E9', 'percent');
    assert.equal(await sh('cat "/workspace/names/100%E9"'), 'percent');
    const audit = await auditOf('file.write');
    const raw = audit.find((a) => a.data.pathBase64 !== undefined);
    assert.ok(raw, 'a non-UTF-8 path is audited with its exact bytes');
    assert.deepEqual(
      Buffer.from(String(raw.data.pathBase64), 'base64'),
      Buffer.from('/workspace/names/raw\xff\xfe', 'latin1'),
    );
  });

  it('Content-Disposition quotes and encodes hostile file names (004 L-3)', async () => {
    const name = 'a"b;c\nd é\\%.txt';
    const w = await put(`dl/${name}`, 'x');
    assert.equal(w.status, 404, 'the parent directory does not exist yet');
    await s.req('POST', `${files()}/mkdir`, { key: s.adminKey, body: { path: 'dl' } });
    assert.equal((await put(`dl/${name}`, 'payload')).status, 201);
    const r = await get(`dl/${name}`);
    assert.equal(r.status, 200);
    const header = r.headers.get('content-disposition') ?? '';
    assert.equal(
      header,
      `attachment; filename="a_b_c_d ___.txt"; filename*=UTF-8''a%22b%3Bc%0Ad%20%C3%A9%5C%25.txt`,
    );
    const star = /filename\*=UTF-8''(.*)$/.exec(header)?.[1] ?? '';
    assert.equal(decodeURIComponent(star), name);
    assert.doesNotMatch(header, /[\r\n]/);
    assert.equal(await r.text(), 'payload');
    assert.equal(
      contentDisposition(Buffer.from('')),
      `attachment; filename="download"; filename*=UTF-8''`,
    );
  });

  it("another tenant's sandbox is 404 on every route; scopes are enforced", async () => {
    const routes: Array<[string, string, unknown?]> = [
      ['GET', `${files()}?path=hello.txt`],
      ['PUT', `${files()}?path=x`],
      ['DELETE', `${files()}?path=hello.txt`],
      ['GET', `${files()}/list?path=/workspace`],
      ['GET', `${files()}/stat?path=hello.txt`],
      ['POST', `${files()}/mkdir`, { path: 'z' }],
      ['POST', `${files()}/move`, { from: 'hello.txt', to: 'y' }],
      ['POST', `${files()}/edit`, { path: 'hello.txt', oldText: 'h', newText: 'H' }],
      ['POST', `${files()}/search`, { path: '/workspace', glob: '*' }],
    ];
    for (const [method, path, body] of routes) {
      const r = await s.req(method, path, {
        key: otherKey,
        ...(body !== undefined ? { body } : method === 'PUT' ? { rawBody: 'evil' } : {}),
      });
      assert.equal(r.status, 404, `${method} ${path}: ${r.text}`);
      assert.equal(r.json.code, 'SANDBOX_NOT_FOUND');
    }
    assert.equal(await sh('cat /workspace/hello.txt'), 'hello, world\n');
    // A read-only key reads but cannot change anything.
    const read = await s.req('GET', `${files()}/stat?path=hello.txt`, { key: readerKey });
    assert.equal(read.status, 200);
    for (const [method, path, body] of routes.filter(
      ([m, p]) => m !== 'GET' && !p.endsWith('/search'),
    )) {
      const r = await s.req(method, path, {
        key: readerKey,
        ...(body !== undefined ? { body } : method === 'PUT' ? { rawBody: 'evil' } : {}),
      });
      assert.equal(r.status, 403, `${method} ${path}`);
      assert.equal(r.json.code, 'FORBIDDEN');
      assert.match(r.json.message, /sandboxes:write/);
    }
    const anon = await s.req('GET', `${files()}?path=hello.txt`);
    assert.equal(anon.status, 401);
    const noRead = await s.req('POST', '/v1/keys', {
      key: s.adminKey,
      body: { name: 'exec-only', scopes: ['sandboxes:exec'] },
    });
    const denied = await s.req('GET', `${files()}?path=hello.txt`, { key: noRead.json.key });
    assert.equal(denied.status, 403);
    assert.match(denied.json.message, /sandboxes:read/);
  });

  it('the permission policy is checked for every file action: deny is 403 with the reason, ask waits for a human', async () => {
    const g = (path: string) => `/v1/sandboxes/${guarded}/files${path}`;
    // Set up behind the API's back (straight through the engine): the policy also checks execs.
    const setup = await s.engine.run(guarded, {
      command:
        'mkdir -p /workspace/secrets /workspace/frozen /workspace/review && echo TOPSECRET > /workspace/secrets/key && echo ok > /workspace/frozen/f && echo draft > /workspace/review/doc && ln -s secrets/key /workspace/alias',
    });
    assert.equal(setup.exitCode, 0, setup.stderr.toString());
    const read = await get('secrets/key', {}, guarded);
    assert.equal(read.status, 403);
    const e = (await read.json()) as { code: string; message: string };
    assert.equal(e.code, 'POLICY_DENIED');
    assert.match(e.message, /Read\(\/\/workspace\/secrets\/\*\*\)/);
    // "..", and a symlink pointing into the denied tree, are checked where they lead.
    for (const path of ['frozen/../secrets/key', 'alias']) {
      const r = await get(path, {}, guarded);
      assert.equal(r.status, 403, path);
      assert.doesNotMatch(await r.text(), /TOPSECRET/);
    }
    const stat = await s.req('GET', g('/stat?path=secrets/key'), { key: s.adminKey });
    assert.equal(stat.status, 403);
    const write = await s.req('PUT', g('?path=frozen/f'), { key: s.adminKey, rawBody: 'changed' });
    assert.equal(write.status, 403);
    assert.equal(write.json.code, 'POLICY_DENIED');
    const del = await s.req('DELETE', g('?path=frozen/f'), { key: s.adminKey });
    assert.equal(del.status, 403);
    const mv = await s.req('POST', g('/move'), {
      key: s.adminKey,
      body: { from: 'secrets/key', to: 'stolen' },
    });
    assert.equal(mv.status, 403);
    const oracle = await s.req('POST', g('/edit'), {
      key: s.adminKey,
      body: { path: 'secrets/key', oldText: 'TOP', newText: 'TOP' },
    });
    assert.equal(oracle.status, 403);
    // Ask waits for a human (test/server/file-approvals.test.ts covers it); denied here.
    const asking = s.req('POST', g('/edit'), {
      key: s.adminKey,
      body: { path: 'review/doc', oldText: 'draft', newText: 'final' },
    });
    const approver = await s.cp.app.keys.create({
      tenant: 'default',
      name: 'files-approver',
      scopes: ['approvals:write'],
    });
    let pending: Array<{ id: string; tool: string; path: string }> = [];
    for (let i = 0; i < 400 && pending.length === 0; i++) {
      pending = (await s.req('GET', '/v1/approvals', { key: approver.key })).json.items;
      if (pending.length === 0) await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(pending.length, 1);
    assert.equal(pending[0]!.path, '/workspace/review/doc');
    const no = await s.req('POST', `/v1/approvals/${pending[0]!.id}/deny`, {
      key: approver.key,
      body: { reason: 'keep the draft' },
    });
    assert.equal(no.status, 200, no.text);
    const ask = await asking;
    assert.equal(ask.status, 403);
    assert.equal(ask.json.code, 'POLICY_DENIED');
    assert.match(ask.json.message, /denied this file action.*keep the draft/);
    const search = await s.req('POST', g('/search'), {
      key: s.adminKey,
      body: { path: '/workspace', glob: '**' },
    });
    assert.equal(search.status, 200, search.text);
    const found = search.json.matches.map((m: { path: string }) => m.path);
    assert.ok(found.includes('frozen/f') && found.includes('review/doc'), found.join(','));
    assert.ok(!found.includes('secrets/key'), 'a denied file is left out of search results');
    // `secrets/**` covers the directory itself too (zero or more segments).
    assert.ok(!found.includes('secrets'), found.join(','));
    const after = await s.engine.run(guarded, {
      command: 'cat /workspace/secrets/key /workspace/frozen/f /workspace/review/doc',
    });
    assert.equal(after.stdout.toString(), 'TOPSECRET\nok\ndraft\n');
    // Allowed actions in the same sandbox still work.
    assert.equal(
      (await s.req('PUT', g('?path=free.txt'), { key: s.adminKey, rawBody: 'ok' })).status,
      201,
    );
    const decisions = (await auditOf('policy.decision', guarded)).map((a) => a.data);
    assert.ok(
      decisions.some(
        (d) => d.tool === 'Read' && d.decision === 'deny' && d.path === '/workspace/secrets/key',
      ),
    );
    assert.ok(decisions.some((d) => d.tool === 'Edit' && d.decision === 'ask'));
    assert.ok(decisions.some((d) => d.tool === 'Write' && d.decision === 'allow'));
  });

  it('every write, delete, move, mkdir and edit is audited with sandbox, tenant, path and size, never contents', async () => {
    const marker = `CONTENT-MARKER-${randomBytes(6).toString('hex')}`;
    await put('audited.txt', marker);
    await s.req('POST', `${files()}/edit`, {
      key: s.adminKey,
      body: { path: 'audited.txt', oldText: marker, newText: `${marker}-2` },
    });
    await s.req('POST', `${files()}/mkdir`, { key: s.adminKey, body: { path: 'adir' } });
    await s.req('POST', `${files()}/move`, {
      key: s.adminKey,
      body: { from: 'audited.txt', to: 'adir/audited.txt' },
    });
    await s.req('DELETE', `${files()}?path=adir&recursive=true`, { key: s.adminKey });
    const failed = await s.req('DELETE', `${files()}?path=no-such`, { key: s.adminKey });
    assert.equal(failed.status, 404);
    const whoami = await s.req('GET', '/v1/whoami', { key: s.adminKey });
    const writes = await auditOf('file.write');
    const w = writes.find((x) => x.data.path === '/workspace/audited.txt');
    assert.ok(w);
    assert.equal(w.data.size, marker.length);
    assert.equal(w.data.ok, true);
    assert.equal(w.tenant, whoami.json.tenant);
    assert.equal(w.actor, whoami.json.keyId);
    const edit = (await auditOf('file.edit')).find((x) => x.data.path === '/workspace/audited.txt');
    assert.equal(edit?.data.replacements, 1);
    assert.equal(edit?.data.oldBytes, marker.length);
    assert.ok((await auditOf('file.mkdir')).some((x) => x.data.path === '/workspace/adir'));
    assert.ok(
      (await auditOf('file.move')).some(
        (x) =>
          x.data.from === '/workspace/audited.txt' && x.data.to === '/workspace/adir/audited.txt',
      ),
    );
    const deletes = await auditOf('file.delete');
    assert.ok(deletes.some((x) => x.data.path === '/workspace/adir' && x.data.recursive === true));
    assert.ok(
      deletes.some(
        (x) => x.data.path === '/workspace/no-such' && x.data.error === 'FILE_NOT_FOUND',
      ),
    );
    const all = await s.req('GET', `/v1/audit?sandboxId=${id}&limit=1000`, { key: s.adminKey });
    assert.doesNotMatch(all.text, new RegExp(marker));
  });

  it('the OpenAPI document lists every files route with its media types', async () => {
    const doc = await s.req('GET', '/v1/openapi.json');
    const paths = doc.json.paths as Record<string, Record<string, Record<string, unknown>>>;
    const base = '/v1/sandboxes/{id}/files';
    assert.deepEqual(Object.keys(paths[base] ?? {}).sort(), ['delete', 'get', 'put']);
    for (const sub of ['list', 'stat']) assert.ok(paths[`${base}/${sub}`]?.get, sub);
    for (const sub of ['mkdir', 'move', 'edit', 'search'])
      assert.ok(paths[`${base}/${sub}`]?.post, sub);
    assert.ok(JSON.stringify(paths[base]?.put?.requestBody).includes('application/octet-stream'));
    assert.ok(JSON.stringify(paths[base]?.get?.responses).includes('application/octet-stream'));
    assert.equal(paths[base]?.put?.['x-palisade-scope'], 'sandboxes:write');
    assert.equal(paths[`${base}/search`]?.post?.['x-palisade-scope'], 'sandboxes:read');
  });

  it('a paused sandbox refuses file operations with 409', async () => {
    await s.req('POST', `/v1/sandboxes/${id}/pause`, { key: s.adminKey });
    try {
      const r = await get('hello.txt');
      assert.equal(r.status, 409);
      assert.equal(((await r.json()) as { code: string }).code, 'SANDBOX_NOT_RUNNING');
    } finally {
      await s.req('POST', `/v1/sandboxes/${id}/resume`, { key: s.adminKey });
    }
  });

  it('random paths, Range headers and bodies on a live sandbox never get a 5xx', async () => {
    await put('fuzz.txt', 'fuzz content');
    const pathArb = fc.oneof(
      fc
        .uint8Array({ minLength: 0, maxLength: 40 })
        .map((b) => Array.from(b, (x) => `%${x.toString(16).padStart(2, '0')}`).join('')),
      fc.string({ maxLength: 40 }).map((x) => encodeURIComponent(x)),
      fc.constantFrom('fuzz.txt', '..', '/', '/proc/self/mem', '/dev/zero', '%', '%2', 'a+b'),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('get', 'put', 'delete', 'list', 'stat', 'search', 'move', 'edit', 'mkdir'),
        pathArb,
        fc.option(
          fc.string({ maxLength: 30 }).map((r) => r.replace(/[^\x20-\x7e]/g, '')),
          {
            nil: undefined,
          },
        ),
        fc.string({ maxLength: 40 }),
        async (op, path, range, textArg) => {
          let res: { status: number; text: string };
          const key = s.adminKey;
          if (op === 'get' || op === 'list' || op === 'stat' || op === 'delete' || op === 'put') {
            const sub = op === 'list' || op === 'stat' ? `/${op}` : '';
            const method =
              op === 'get' || op === 'list' || op === 'stat' ? 'GET' : op.toUpperCase();
            const r = await fetch(`${s.url}${files()}${sub}?path=${path}`, {
              method,
              headers: {
                authorization: `Bearer ${key}`,
                ...(range !== undefined ? { range: `bytes=${range}` } : {}),
              },
              ...(method === 'PUT' ? { body: textArg } : {}),
            });
            res = { status: r.status, text: await r.text() };
          } else {
            let p: string;
            try {
              p = decodeURIComponent(path).replace(/\0/g, '');
            } catch {
              p = path;
            }
            const body =
              op === 'search'
                ? { path: p || '/', glob: textArg || '*' }
                : op === 'move'
                  ? { from: p || 'x', to: textArg || 'y' }
                  : op === 'edit'
                    ? { path: p || 'x', oldText: textArg || 'a', newText: 'b' }
                    : { path: p || 'x', parents: true };
            res = await s.req('POST', `${files()}/${op}`, { key, body });
          }
          assert.ok(res.status < 500, `${op} ${path} ${range ?? ''} -> ${res.status} ${res.text}`);
          assert.doesNotMatch(res.text, /node_modules|at [A-Za-z.]+ \(/);
        },
      ),
      { numRuns: 150 },
    );
  });

  it('file size limits are configurable and refused when not positive whole numbers', () => {
    const base = { dataDir: '/nonexistent' };
    assert.equal(resolveConfig(base).files.maxReadBytes, 64 * MiB);
    assert.equal(resolveConfig(base).files.maxWriteBytes, 64 * MiB);
    assert.equal(
      resolveConfig({ ...base, files: { maxWriteBytes: MiB } }).files.maxWriteBytes,
      MiB,
    );
    for (const files of [{ maxReadBytes: 0 }, { maxWriteBytes: 1.5 }, { maxListEntries: 50_001 }]) {
      assert.throws(() => resolveConfig({ ...base, files }), /files\.max/);
    }
  });
});
