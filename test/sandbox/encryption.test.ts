// Workspace encryption at rest (fscrypt v2) with real sandboxes, real ext4 images and the real
// kernel keyring of each workspace filesystem. Needs root, like the engine.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { isPalisadeError } from '../../src/errors/index.js';
import {
  createSandboxRuntime,
  type EngineConfig,
  type SandboxInfo,
  type SandboxRuntime,
} from '../../src/sandbox/index.js';
import {
  defaultFscryptHelper,
  openWorkspacePool,
  readEncryptionStatus,
  removeDirectoryKey,
} from '../../src/sandbox/workspace/index.js';
import { startTestEngine, testEngineConfig } from './helpers.js';

const MIB = 1024 * 1024;
const helper = defaultFscryptHelper();
const repoRoot = resolve(import.meta.dirname, '../..');

function workspaceHostDir(config: EngineConfig, id: string): string {
  return join(config.dataDir, 'workspaces', 'mnt', id, 'workspace');
}

function imageFile(config: EngineConfig, id: string): string {
  return join(config.dataDir, 'workspaces', 'images', `${id}.img`);
}

/** Streams the raw image file from the host and reports whether `needle` occurs anywhere. */
function rawImageContains(image: string, needle: Buffer): boolean {
  const fd = openSync(image, 'r');
  try {
    const chunk = Buffer.alloc(4 * MIB + needle.length);
    let carry = 0;
    for (;;) {
      const n = readSync(fd, chunk, carry, chunk.length - carry, null);
      if (n === 0) return false;
      const filled = carry + n;
      if (chunk.subarray(0, filled).includes(needle)) return true;
      carry = Math.min(needle.length - 1, filled);
      chunk.copy(chunk, 0, filled - carry, filled);
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Has the sandbox write 1 MiB of a unique marker (and a file named after it), then flushes all
 * filesystems so the loop device has written everything to the image file.
 */
async function writeMarker(engine: SandboxRuntime, sb: SandboxInfo): Promise<Buffer> {
  const marker = `palisade-plaintext-marker-${randomBytes(12).toString('hex')}`;
  const r = await engine.run(sb.id, {
    command: `yes ${marker} | head -c 1048576 > /workspace/${marker}.txt && sync && wc -c < /workspace/${marker}.txt`,
  });
  assert.equal(r.exitCode, 0, r.stderr.toString());
  assert.equal(r.stdout.toString().trim(), '1048576');
  assert.equal(spawnSync('sync').status, 0);
  return Buffer.from(marker);
}

describe('workspace encryption (fscrypt) with real sandboxes', () => {
  let engine: SandboxRuntime;
  let config: EngineConfig;
  const keepMounts: string[] = [];

  before(async () => {
    ({ engine, config } = await startTestEngine('crypt', { warmWorkspaces: 1 }));
  });
  after(async () => {
    for (const m of keepMounts) spawnSync('umount', ['-l', m]);
    await engine?.close();
    rmSync(config.dataDir, { recursive: true, force: true });
  });

  test('a file written in the sandbox reads back inside; the host sees the workspace directory encrypted (v2, AES-256-XTS/CTS, key present)', async () => {
    // The engine's first default-size create takes the warm (prepared ahead) workspace.
    const sb = await engine.create();
    try {
      const r = await engine.run(sb.id, {
        command: 'echo inside-ok > /workspace/a.txt && cat /workspace/a.txt && ls -a /workspace',
      });
      assert.equal(r.exitCode, 0, r.stderr.toString());
      assert.equal(r.stdout.toString(), 'inside-ok\n.\n..\na.txt\n', 'no lost+found in view');
      const dir = workspaceHostDir(config, sb.id);
      const status = await readEncryptionStatus(helper, dir);
      assert.deepEqual(
        { ...status, identifier: undefined },
        {
          encrypted: true,
          version: 2,
          contents: 'AES-256-XTS',
          filenames: 'AES-256-CTS',
          identifier: undefined,
          keyStatus: 'present',
        },
      );
      const lsattr = spawnSync('lsattr', ['-d', dir], { encoding: 'utf8' });
      assert.equal(lsattr.status, 0, lsattr.stderr);
      assert.match(lsattr.stdout.split(' ')[0] ?? '', /E/, 'lsattr shows the Encrypted flag');
      // A second setup on the live (non-empty, already encrypted) workspace is refused and
      // leaves its key alone.
      const again = spawnSync(helper, ['setup', dir], { encoding: 'utf8' });
      assert.equal(again.status, 1, again.stderr);
      const same = await readEncryptionStatus(helper, dir);
      assert.ok(same.encrypted && status.encrypted && same.identifier === status.identifier);
      assert.equal(same.keyStatus, 'present');
    } finally {
      await engine.destroy(sb.id);
    }
  });

  test('each workspace has its own key', async () => {
    const a = await engine.create({ limits: { diskBytes: 32 * MIB } });
    const b = await engine.create({ limits: { diskBytes: 32 * MIB } });
    try {
      const sa = await readEncryptionStatus(helper, workspaceHostDir(config, a.id));
      const sb = await readEncryptionStatus(helper, workspaceHostDir(config, b.id));
      assert.ok(sa.encrypted && sb.encrypted);
      assert.match(sa.identifier, /^[0-9a-f]{32}$/);
      assert.notEqual(sa.identifier, sb.identifier);
    } finally {
      await engine.destroy(a.id);
      await engine.destroy(b.id);
    }
  });

  test('a 1 MiB plaintext marker written by the sandbox appears nowhere in the raw image bytes while it runs', async () => {
    const sb = await engine.create({ limits: { diskBytes: 64 * MIB } });
    try {
      const marker = await writeMarker(engine, sb);
      const image = imageFile(config, sb.id);
      assert.ok(statSync(image).blocks * 512 >= MIB, 'the data did reach the image file');
      assert.equal(rawImageContains(image, marker), false, 'marker found in the raw image');
      // The short file name would also be a giveaway; names are encrypted too.
      assert.equal(rawImageContains(image, marker.subarray(0, 40)), false);
      const inside = await engine.run(sb.id, { command: `head -c 64 /workspace/${marker}.txt` });
      assert.equal(inside.stdout.toString().slice(0, marker.length), marker.toString());
    } finally {
      await engine.destroy(sb.id);
    }
  });

  test('destroy removes the key before unmount: a surviving reference to the filesystem shows only ciphertext and no key', async () => {
    const sb = await engine.create({ limits: { diskBytes: 32 * MIB } });
    const r = await engine.run(sb.id, {
      command: 'echo top-secret > /workspace/plain-name.txt && mkdir /workspace/sub',
    });
    assert.equal(r.exitCode, 0, r.stderr.toString());
    const dir = workspaceHostDir(config, sb.id);
    // Keep the filesystem alive past destroy (like a lazily unmounted, still-busy workspace).
    const keep = mkdtempSync(join(tmpdir(), 'palisade-crypt-keep-'));
    assert.equal(spawnSync('mount', ['--bind', join(dir, '..'), keep]).status, 0);
    keepMounts.push(keep);
    const before = await readEncryptionStatus(helper, join(keep, 'workspace'));
    assert.ok(before.encrypted && before.keyStatus === 'present');
    await engine.destroy(sb.id);
    assert.equal(existsSync(imageFile(config, sb.id)), false, 'image deleted');
    const afterDestroy = await readEncryptionStatus(helper, join(keep, 'workspace'));
    assert.ok(afterDestroy.encrypted);
    assert.equal(afterDestroy.keyStatus, 'absent', 'no key left in the filesystem keyring');
    const names = spawnSync('ls', [join(keep, 'workspace')], { encoding: 'utf8' })
      .stdout.split('\n')
      .filter(Boolean);
    assert.equal(names.length, 2);
    assert.ok(!names.includes('plain-name.txt') && !names.includes('sub'), names.join(','));
    const file = names.map((n) => join(keep, 'workspace', n)).find((p) => statSync(p).isFile());
    assert.ok(file !== undefined);
    const cat = spawnSync('cat', [file], { encoding: 'utf8' });
    assert.notEqual(cat.status, 0);
    assert.match(cat.stderr, /Required key not available/);
    assert.equal(spawnSync('umount', [keep]).status, 0);
    keepMounts.splice(keepMounts.indexOf(keep), 1);
    rmSync(keep, { recursive: true, force: true });
  });

  test('removing the key of a running workspace makes the files unreadable from the host (crypto-shredding)', async () => {
    const sb = await engine.create({ limits: { diskBytes: 32 * MIB } });
    try {
      const r = await engine.run(sb.id, {
        command: 'mkdir /workspace/d && echo shred-me > /workspace/d/secret.txt',
      });
      assert.equal(r.exitCode, 0, r.stderr.toString());
      const dir = workspaceHostDir(config, sb.id);
      assert.equal(
        spawnSync('cat', [join(dir, 'd/secret.txt')], { encoding: 'utf8' }).stdout,
        'shred-me\n',
      );
      const removed = await removeDirectoryKey(helper, dir);
      assert.equal(removed.removed, true);
      // /workspace itself stays in use (it is the sandbox's bind mount and cwd), so the kernel
      // reports it busy and keeps that one directory's name key; everything below it that is
      // not open is locked at once: names are ciphertext, contents unreadable.
      assert.equal(removed.filesBusy, true);
      const status = await readEncryptionStatus(helper, dir);
      assert.ok(status.encrypted && status.keyStatus === 'incompletely-removed');
      const inner = spawnSync('ls', [join(dir, 'd')], { encoding: 'utf8' });
      assert.equal(inner.status, 0, inner.stderr);
      const names = inner.stdout.split('\n').filter(Boolean);
      assert.equal(names.length, 1);
      assert.notEqual(names[0], 'secret.txt', 'the file name is encrypted');
      const cat = spawnSync('cat', [join(dir, 'd', names[0]!)], { encoding: 'utf8' });
      assert.notEqual(cat.status, 0);
      assert.match(cat.stderr, /Required key not available/);
      assert.ok(!cat.stdout.includes('shred-me'));
    } finally {
      await engine.destroy(sb.id);
    }
  });
});

describe('unencrypted control (workspaceEncryption: off)', () => {
  let engine: SandboxRuntime;
  let config: EngineConfig;

  before(async () => {
    ({ engine, config } = await startTestEngine('plain', {
      warmWorkspaces: 0,
      workspaceEncryption: 'off',
    }));
  });
  after(async () => {
    await engine?.close();
    rmSync(config.dataDir, { recursive: true, force: true });
  });

  test('the same marker IS found in the raw image of an unencrypted workspace (the check can fail)', async () => {
    const sb = await engine.create({ limits: { diskBytes: 64 * MIB } });
    try {
      const status = await readEncryptionStatus(helper, workspaceHostDir(config, sb.id));
      assert.deepEqual(status, { encrypted: false });
      const marker = await writeMarker(engine, sb);
      assert.equal(rawImageContains(imageFile(config, sb.id), marker), true);
    } finally {
      await engine.destroy(sb.id);
    }
  });
});

describe('fail closed and helper CLI', () => {
  let dataDir: string;
  before(() => {
    const built = spawnSync('make', ['-s', '-C', join(repoRoot, 'native')], { encoding: 'utf8' });
    assert.equal(built.status, 0, built.stderr);
    dataDir = mkdtempSync(join(tmpdir(), 'palisade-crypt-fc-'));
  });
  after(() => rmSync(dataDir, { recursive: true, force: true }));

  test('required encryption without a usable helper or kernel support refuses to open the pool with REQUIREMENT_MISSING and the fix', async () => {
    await assert.rejects(
      openWorkspacePool({ dataDir, fscryptHelper: '/nonexistent/palisade-fscrypt' }),
      (err: unknown) => {
        assert.ok(isPalisadeError(err, 'REQUIREMENT_MISSING'), String(err));
        assert.match(err.message, /encryption/);
        assert.match(err.message, /CONFIG_FS_ENCRYPTION/);
        assert.match(err.message, /workspaceEncryption: 'off'/);
        return true;
      },
    );
    // A kernel that refuses fscrypt: the helper reports "unsupported" (exit 3) during the probe.
    const refusing = join(dataDir, 'refusing-helper');
    writeFileSync(
      refusing,
      '#!/bin/sh\necho "FS_IOC_ADD_ENCRYPTION_KEY: Operation not supported" >&2\nexit 3\n',
    );
    chmodSync(refusing, 0o755);
    await assert.rejects(
      openWorkspacePool({ dataDir, fscryptHelper: refusing }),
      (err: unknown) => {
        assert.ok(isPalisadeError(err, 'REQUIREMENT_MISSING'), String(err));
        assert.match(err.message, /Operation not supported/);
        assert.match(err.message, /workspaceEncryption: 'off'/);
        return true;
      },
    );
    // Nothing is left mounted by the failed probe.
    const mounts = spawnSync('cat', ['/proc/self/mountinfo'], { encoding: 'utf8' }).stdout;
    assert.ok(!mounts.includes(dataDir), 'probe cleaned up its mount');
    await assert.rejects(
      // @ts-expect-error deliberately invalid setting
      openWorkspacePool({ dataDir, encryption: 'maybe' }),
      (err: unknown) => isPalisadeError(err, 'INVALID_ARGUMENT'),
    );
    // 'off' needs no encryption support at all.
    const plain = await openWorkspacePool({
      dataDir,
      encryption: 'off',
      fscryptHelper: '/nonexistent/palisade-fscrypt',
    });
    assert.equal(plain.encryption, 'off');
    await plain.close();
  });

  test("reaping a crashed engine's leftovers removes each workspace key before unmounting (even when the new engine runs with encryption off)", async () => {
    const poolDir = mkdtempSync(join(tmpdir(), 'palisade-crypt-reap-'));
    const keep = mkdtempSync(join(tmpdir(), 'palisade-crypt-reapkeep-'));
    let kept = false;
    try {
      const crashed = await openWorkspacePool({ dataDir: poolDir, sizeBytes: 128 * MIB });
      const ws = await crashed.create(
        'sb-crashed',
        { uid: 3_970_001, gid: 3_970_001 },
        { bytes: 16 * MIB },
      );
      writeFileSync(join(ws, 'left.txt'), 'leftover\n');
      assert.equal(spawnSync('mount', ['--bind', join(ws, '..'), keep]).status, 0);
      kept = true;
      // The first pool is dropped without close(), like a crashed engine; the next one reaps.
      const next = await openWorkspacePool({
        dataDir: poolDir,
        sizeBytes: 128 * MIB,
        encryption: 'off',
      });
      assert.deepEqual(await next.reapLeftovers(new Set()), ['sb-crashed']);
      const status = await readEncryptionStatus(helper, join(keep, 'workspace'));
      assert.ok(status.encrypted);
      assert.equal(status.keyStatus, 'absent');
      const names = spawnSync('ls', [join(keep, 'workspace')], { encoding: 'utf8' }).stdout;
      assert.ok(!names.includes('left.txt') && names.trim().length > 0, names);
      await next.close();
    } finally {
      if (kept) spawnSync('umount', [keep]);
      rmSync(keep, { recursive: true, force: true });
      rmSync(poolDir, { recursive: true, force: true });
    }
  });

  test('an engine with an unknown workspaceEncryption value is refused', async () => {
    const bad = testEngineConfig('cryptbad', {
      // @ts-expect-error deliberately invalid setting
      workspaceEncryption: 'maybe',
    });
    try {
      await assert.rejects(
        createSandboxRuntime(bad),
        (err: unknown) => isPalisadeError(err, 'INVALID_ARGUMENT') && /'off'/.test(err.message),
      );
    } finally {
      rmSync(bad.dataDir, { recursive: true, force: true });
    }
  });

  test('helper: usage errors exit 2, a non-fscrypt filesystem exits 3, a plain directory reports unencrypted, symlinks are refused', () => {
    const usage = spawnSync(helper, ['setup'], { encoding: 'utf8' });
    assert.equal(usage.status, 2);
    const plainDir = join(dataDir, 'plain');
    mkdirSync(plainDir);
    // dataDir lives on the host's root filesystem, formatted without the encrypt feature.
    const unsupported = spawnSync(helper, ['setup', plainDir], { encoding: 'utf8' });
    assert.equal(unsupported.status, 3, unsupported.stderr);
    const status = spawnSync(helper, ['status', plainDir], { encoding: 'utf8' });
    assert.equal(status.status, 0);
    assert.deepEqual(JSON.parse(status.stdout), { encrypted: false });
    const link = join(dataDir, 'link');
    spawnSync('ln', ['-s', plainDir, link]);
    assert.equal(spawnSync(helper, ['status', link]).status, 1, 'symlinks are not followed');
  });
});
