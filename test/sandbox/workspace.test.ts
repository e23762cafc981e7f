// Real loop devices, real ext4, real kernel enforcement: needs root (like the engine).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { isPalisadeError, type ErrorCode } from '../../src/errors/index.js';
import {
  applyDirectoryQuota,
  checkDirectoryQuotaSupport,
  defaultQuotaHelper,
  openWorkspacePool,
  type WorkspacePool,
} from '../../src/sandbox/workspace/index.js';

const MIB = 1024 * 1024;
const repoRoot = resolve(import.meta.dirname, '../..');
// Uids far from anything the engine allocates, so a parallel engine test cannot collide.
const UID_A = 3_900_101;
const UID_B = 3_900_102;
const UID_C = 3_900_103;

function mountsUnder(prefix: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4] ?? '')
    .filter((mountPoint) => mountPoint === prefix || mountPoint.startsWith(prefix + '/'));
}

function mountLine(path: string): string | undefined {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((line) => line.split(' ')[4] === path);
}

function runAs(
  uid: number,
  cwd: string,
  script: string,
): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('/bin/sh', ['-c', script], {
    uid,
    gid: uid,
    cwd,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function rejectsWith(
  promise: Promise<unknown>,
  code: ErrorCode,
  message?: RegExp,
): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(isPalisadeError(err, code), `expected PalisadeError ${code}, got ${String(err)}`);
    if (message !== undefined) assert.match(err.message, message);
    return true;
  });
}

describe('workspace pool (loop-mounted ext4 image per workspace)', () => {
  let dataDir: string;
  let pool: WorkspacePool;
  let outsideTarget: string;

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'palisade-ws-test-'));
    outsideTarget = join(dataDir, 'outside-secret.txt');
    writeFileSync(outsideTarget, 'host file that must survive\n');
    pool = await openWorkspacePool({ dataDir, sizeBytes: 256 * MIB });
  });

  after(async () => {
    await pool.close();
    for (const mountPoint of mountsUnder(dataDir).reverse())
      spawnSync('umount', ['-l', mountPoint]);
    rmSync(dataDir, { recursive: true, force: true });
  });

  test('create makes a mounted workspace owned by the uid, mode 0700, nodev and nosuid', async () => {
    const path = await pool.create('sb-owner', { uid: UID_A, gid: UID_A }, { bytes: 32 * MIB });
    assert.equal(path, join(pool.mountPoint, 'sb-owner', 'workspace'));
    // The filesystem root is root's and only traversable; the workspace is a directory in it.
    const root = lstatSync(dirname(path));
    assert.equal(root.uid, 0);
    assert.equal(root.mode & 0o7777, 0o711);
    const st = lstatSync(path);
    assert.ok(st.isDirectory());
    assert.equal(st.uid, UID_A);
    assert.equal(st.gid, UID_A);
    assert.equal(st.mode & 0o7777, 0o700);
    // Its own filesystem, not a directory of the host's.
    assert.notEqual(st.dev, lstatSync(pool.mountPoint).dev);
    const line = mountLine(dirname(path));
    assert.ok(line !== undefined, 'workspace is mounted');
    assert.match(line, / - ext4 \/dev\/loop\d+ /);
    const options = line.split(' ')[5] ?? '';
    assert.match(options, /(^|,)nodev(,|$)/);
    assert.match(options, /(^|,)nosuid(,|$)/);
    assert.ok(!existsSync(join(path, 'lost+found')));
    assert.ok(!existsSync(join(dirname(path), 'lost+found')));
    // Image sits in the root-only image directory.
    const imageDir = join(dataDir, 'workspaces', 'images');
    assert.equal(lstatSync(imageDir).mode & 0o777, 0o700);
    assert.equal(lstatSync(join(imageDir, 'sb-owner.img')).mode & 0o777, 0o600);
    await pool.remove('sb-owner', { uid: UID_A });
  });

  test('a process of the sandbox uid cannot write past the quota; usage stops at the limit; the host image stays within the quota', async () => {
    const quota = 32 * MIB;
    const path = await pool.create('sb-fill', { uid: UID_A, gid: UID_A }, { bytes: quota });
    const fill = runAs(UID_A, path, 'dd if=/dev/zero of=big bs=1M count=64 2>&1; echo "status=$?"');
    assert.match(fill.stdout, /No space left on device/);
    assert.match(fill.stdout, /status=[1-9]/);
    const usage = await pool.usage({ uid: UID_A });
    assert.ok(usage.limitBytes <= quota, `limit ${usage.limitBytes} <= quota ${quota}`);
    assert.ok(usage.limitBytes >= quota * 0.75, `limit ${usage.limitBytes} is most of the quota`);
    assert.ok(usage.usedBytes <= usage.limitBytes);
    // ext4 refuses a write once it cannot reserve room for the data plus its metadata, so the
    // last 1 MiB dd block may be refused a little before the very last byte.
    assert.ok(
      usage.usedBytes >= usage.limitBytes - 2 * MIB,
      `usage ${usage.usedBytes} reached the limit ${usage.limitBytes}`,
    );
    const image = lstatSync(join(dataDir, 'workspaces', 'images', 'sb-fill.img'));
    assert.ok(image.blocks * 512 <= quota, 'the host-side image never grows past the quota');
    // Smaller writes may use the last sliver, then the limit holds for them too.
    const again = runAs(
      UID_A,
      path,
      'dd if=/dev/zero of=more bs=4k count=1024 2>&1; echo "status=$?"',
    );
    assert.match(again.stdout, /No space left on device/);
    assert.match(again.stdout, /status=[1-9]/);
    const full = await pool.usage({ uid: UID_A });
    assert.ok(full.usedBytes <= full.limitBytes);
    assert.ok(
      full.usedBytes >= full.limitBytes - 256 * 1024,
      `usage ${full.usedBytes} at the limit ${full.limitBytes}`,
    );
    assert.ok(
      lstatSync(join(dataDir, 'workspaces', 'images', 'sb-fill.img')).blocks * 512 <= quota,
    );
  });

  test('another workspace in the same pool is unaffected by a full neighbour, and cannot be entered by it', async () => {
    const other = await pool.create('sb-other', { uid: UID_B, gid: UID_B }, { bytes: 32 * MIB });
    const write = runAs(
      UID_B,
      other,
      'dd if=/dev/zero of=ok bs=1M count=8 2>/dev/null && echo wrote',
    );
    assert.equal(write.stdout.trim(), 'wrote');
    const usage = await pool.usage({ uid: UID_B });
    assert.ok(usage.usedBytes >= 8 * MIB && usage.usedBytes < 9 * MIB, `usage ${usage.usedBytes}`);
    const snoop = runAs(
      UID_A,
      '/',
      `ls ${join(pool.mountPoint, 'sb-other')} ${other} 2>&1; echo "status=$?"`,
    );
    assert.match(snoop.stdout, /Permission denied[^]*Permission denied/);
  });

  test('the inode limit is enforced by the kernel', async () => {
    const path = await pool.create(
      'sb-inodes',
      { uid: UID_C, gid: UID_C },
      { bytes: 16 * MIB, inodes: 64 },
    );
    const spam = runAs(
      UID_C,
      path,
      'i=0; while [ $i -lt 500 ] && touch f$i 2>/dev/null; do i=$((i+1)); done; echo $i',
    );
    const created = Number(spam.stdout.trim());
    try {
      assert.ok(
        created > 0 && created <= 64,
        `created ${created} files with a 64-inode limit: ${JSON.stringify(spam)}`,
      );
    } finally {
      await pool.remove('sb-inodes', { uid: UID_C });
    }
  });

  test('remove deletes the workspace, its mount and image; a symlink pointing outside is not followed', async () => {
    const path = await pool.create('sb-remove', { uid: UID_C, gid: UID_C }, { bytes: 16 * MIB });
    const setup = runAs(
      UID_C,
      path,
      `mkdir -p d/e && echo x > d/e/f && ln -s ${outsideTarget} link && ln -s / rootlink && echo ok`,
    );
    assert.equal(setup.stdout.trim(), 'ok');
    await rejectsWith(pool.remove('sb-remove', { uid: UID_A }), 'CONFLICT');
    await pool.remove('sb-remove', { uid: UID_C });
    assert.equal(existsSync(dirname(path)), false);
    assert.equal(mountLine(dirname(path)), undefined);
    assert.equal(existsSync(join(dataDir, 'workspaces', 'images', 'sb-remove.img')), false);
    assert.equal(readFileSync(outsideTarget, 'utf8'), 'host file that must survive\n');
    // Removing again is a no-op (destroy is idempotent).
    await pool.remove('sb-remove', { uid: UID_C });
    await rejectsWith(pool.usage({ uid: UID_C }), 'SANDBOX_NOT_FOUND');
  });

  test('duplicate ids and duplicate owners are refused', async () => {
    await rejectsWith(
      pool.create('sb-fill', { uid: 3_900_199, gid: 3_900_199 }, { bytes: 16 * MIB }),
      'CONFLICT',
    );
    await rejectsWith(
      pool.create('sb-dup-uid', { uid: UID_A, gid: UID_A }, { bytes: 16 * MIB }),
      'CONFLICT',
      /uid/,
    );
    assert.equal(
      existsSync(join(pool.mountPoint, 'sb-dup-uid')),
      false,
      'a refused create leaves nothing behind',
    );
  });

  test('the pool budget bounds the sum of quotas', async () => {
    // 256 MiB budget; sb-fill and sb-other hold 64 MiB.
    await rejectsWith(
      pool.create('sb-huge', { uid: UID_C, gid: UID_C }, { bytes: 200 * MIB }),
      'SANDBOX_LIMIT_REACHED',
      /budget/,
    );
    assert.equal(existsSync(join(dataDir, 'workspaces', 'images', 'sb-huge.img')), false);
    const fits = await pool.create('sb-fits', { uid: UID_C, gid: UID_C }, { bytes: 192 * MIB });
    assert.ok(existsSync(fits));
    await pool.remove('sb-fits', { uid: UID_C });
  });

  test('concurrent creates format in parallel but never overcommit the budget', async () => {
    // 256 MiB budget, 64 MiB held by sb-fill and sb-other: room for exactly six 32 MiB workspaces.
    const ids = Array.from({ length: 7 }, (_, i) => `sb-par${i}`);
    const results = await Promise.allSettled(
      ids.map((id, i) =>
        pool.create(id, { uid: UID_C + 100 + i, gid: UID_C + 100 + i }, { bytes: 32 * MIB }),
      ),
    );
    const made = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected');
    assert.equal(made.length, 6);
    assert.equal(refused.length, 1);
    for (const r of refused)
      assert.ok(isPalisadeError((r as PromiseRejectedResult).reason, 'SANDBOX_LIMIT_REACHED'));
    for (const [i, r] of results.entries()) {
      if (r.status === 'fulfilled') await pool.remove(ids[i]!, { uid: UID_C + 100 + i });
    }
    const dup = await Promise.allSettled([
      pool.create('sb-dup1', { uid: UID_C + 200, gid: UID_C + 200 }, { bytes: 16 * MIB }),
      pool.create('sb-dup2', { uid: UID_C + 200, gid: UID_C + 200 }, { bytes: 16 * MIB }),
    ]);
    assert.equal(
      dup.filter((r) => r.status === 'fulfilled').length,
      1,
      'one owner, one workspace, even when concurrent',
    );
    for (const [i, r] of dup.entries()) {
      if (r.status === 'fulfilled') await pool.remove(`sb-dup${i + 1}`, { uid: UID_C + 200 });
    }
  });

  test('bad ids, owners and quotas are rejected with clear errors and nothing is created', async () => {
    const owner = { uid: UID_C, gid: UID_C };
    for (const id of [
      '',
      '../escape',
      'a/b',
      'UPPER',
      '.',
      '..',
      'a'.repeat(65),
      'sb x',
      'sb\0x',
    ]) {
      await assert.rejects(
        () => pool.create(id, owner, { bytes: 16 * MIB }),
        (err: unknown) => isPalisadeError(err, 'INVALID_ARGUMENT'),
        `id ${JSON.stringify(id)}`,
      );
      await assert.rejects(
        () => pool.remove(id, owner),
        (err: unknown) => isPalisadeError(err, 'INVALID_ARGUMENT'),
      );
    }
    await rejectsWith(
      pool.create('sb-root', { uid: 0, gid: 0 }, { bytes: 16 * MIB }),
      'INVALID_ARGUMENT',
      /uid/,
    );
    await rejectsWith(
      pool.create('sb-neg', { uid: -5, gid: 5 }, { bytes: 16 * MIB }),
      'INVALID_ARGUMENT',
    );
    await rejectsWith(pool.create('sb-tiny', owner, { bytes: 1024 }), 'INVALID_LIMIT', /16 MiB/);
    await rejectsWith(pool.create('sb-nan', owner, { bytes: Number.NaN }), 'INVALID_LIMIT');
    await rejectsWith(
      pool.create('sb-inf', owner, { bytes: Number.POSITIVE_INFINITY }),
      'INVALID_LIMIT',
    );
    await rejectsWith(
      pool.create('sb-inodes2', owner, { bytes: 16 * MIB, inodes: 10_000_000 }),
      'INVALID_LIMIT',
    );
    await rejectsWith(pool.usage({ uid: 0 }), 'INVALID_ARGUMENT');
    await rejectsWith(openWorkspacePool({ dataDir: 'relative/dir' }), 'INVALID_PATH');
    await rejectsWith(openWorkspacePool({ dataDir, sizeBytes: -1 }), 'INVALID_LIMIT');
    await rejectsWith(
      openWorkspacePool({ dataDir: join(outsideTarget, 'sub') }),
      'INVALID_PATH',
      /writable/,
    );
    // Node's own recursive mkdir would spin forever here; the pool must fail cleanly.
    await rejectsWith(
      openWorkspacePool({ dataDir: '/proc/palisade-no-such-dir' }),
      'INVALID_PATH',
      /writable/,
    );
    const names = spawnSync('ls', [pool.mountPoint], { encoding: 'utf8' })
      .stdout.split('\n')
      .filter(Boolean)
      .sort();
    assert.deepEqual(names, ['sb-fill', 'sb-other']);
  });

  test('a pool directory replaced by a symlink is refused', async () => {
    const evilData = mkdtempSync(join(tmpdir(), 'palisade-ws-evil-'));
    try {
      mkdirSync(join(evilData, 'elsewhere'));
      symlinkSync(join(evilData, 'elsewhere'), join(evilData, 'workspaces'));
      await rejectsWith(openWorkspacePool({ dataDir: evilData }), 'INVALID_PATH', /symlink/);
    } finally {
      rmSync(evilData, { recursive: true, force: true });
    }
  });

  test('reopening after a crash reuses the mounts, remounts after a reboot, and reapLeftovers removes unknown workspaces', async () => {
    const keepMount = join(pool.mountPoint, 'sb-other');
    const keepPath = join(keepMount, 'workspace');
    // Simulated crash: the first pool object is simply dropped; a new one opens the same dir.
    const reopened = await openWorkspacePool({ dataDir, sizeBytes: 256 * MIB });
    assert.equal(reopened.mountPoint, pool.mountPoint);
    assert.equal(mountsUnder(keepMount).length, 1, 'reused, not mounted twice');
    assert.ok(existsSync(join(keepPath, 'ok')), 'the key stays with the still-mounted filesystem');
    // Simulated reboot: the mount (and with it the in-kernel key) is gone, the image is still there.
    assert.equal(spawnSync('umount', [keepMount]).status, 0);
    const afterReboot = await openWorkspacePool({ dataDir, sizeBytes: 256 * MIB });
    assert.equal(mountsUnder(keepMount).length, 1, 'remounted');
    assert.equal(lstatSync(keepPath).uid, UID_B);
    // The key died with the mount: the remounted workspace holds only ciphertext names.
    const names = spawnSync('ls', [keepPath], { encoding: 'utf8' }).stdout.split('\n');
    assert.equal(names.includes('ok'), false, 'no plaintext name after the key is gone');
    assert.equal(names.filter(Boolean).length, 1, 'the file is still there, encrypted');
    // Stray directory without an image, and a name the pool never makes (left alone).
    mkdirSync(join(afterReboot.mountPoint, 'sb-stray'));
    mkdirSync(join(afterReboot.mountPoint, 'Not_Ours'));
    const removed = await afterReboot.reapLeftovers(new Set(['sb-other']));
    assert.deepEqual(removed, ['sb-fill', 'sb-stray']);
    assert.equal(existsSync(join(afterReboot.mountPoint, 'sb-fill')), false);
    assert.equal(existsSync(join(dataDir, 'workspaces', 'images', 'sb-fill.img')), false);
    assert.equal(mountsUnder(keepMount).length, 1, 'kept workspace untouched');
    rmSync(join(afterReboot.mountPoint, 'Not_Ours'), { recursive: true });
    await reopened.close();
    await afterReboot.close();
  });

  test('close unmounts every workspace and detaches its loop device', async () => {
    const reopened = await openWorkspacePool({ dataDir, sizeBytes: 256 * MIB });
    assert.equal(mountsUnder(reopened.mountPoint).length, 1);
    await reopened.close();
    assert.deepEqual(mountsUnder(reopened.mountPoint), []);
    const image = join(dataDir, 'workspaces', 'images', 'sb-other.img');
    // Auto-clear may run just after umount returns; give the kernel a moment.
    let loops = '';
    for (let attempt = 0; attempt < 20; attempt++) {
      loops = spawnSync('losetup', ['-j', image], { encoding: 'utf8' }).stdout.trim();
      if (loops === '') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(loops, '', 'no loop device still attached to the image');
    await rejectsWith(
      reopened.create('sb-late', { uid: UID_C, gid: UID_C }, { bytes: 16 * MIB }),
      'CONFLICT',
      /closed/,
    );
  });
});

describe('project quota on a caller-supplied directory (palisade-quota helper)', () => {
  const helper = defaultQuotaHelper();
  let dir: string;

  before(() => {
    const built = spawnSync('make', ['-s', '-C', join(repoRoot, 'native')], { encoding: 'utf8' });
    assert.equal(built.status, 0, built.stderr);
    dir = mkdtempSync(join(tmpdir(), 'palisade-ws-dirq-'));
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  test('the helper is found at native/build/palisade-quota', () => {
    assert.equal(helper, join(repoRoot, 'native', 'build', 'palisade-quota'));
    assert.ok(existsSync(helper));
  });

  test('a filesystem without project quotas is reported unsupported with the fix', async () => {
    const support = await checkDirectoryQuotaSupport(dir);
    assert.equal(support.supported, false);
    assert.match(support.reason, /prjquota|project quota/);
    await rejectsWith(
      applyDirectoryQuota(dir, 4_000_000, 64 * MIB),
      'REQUIREMENT_MISSING',
      /diskBytes to 0/,
    );
  });

  test('missing paths, symlinks and bad arguments are refused', async () => {
    assert.equal((await checkDirectoryQuotaSupport(join(dir, 'nope'))).supported, false);
    symlinkSync('/', join(dir, 'link'));
    const viaLink = await checkDirectoryQuotaSupport(join(dir, 'link'));
    assert.equal(viaLink.supported, false);
    assert.match(viaLink.reason, /symlink/);
    assert.equal((await checkDirectoryQuotaSupport('relative')).supported, false);
    await rejectsWith(applyDirectoryQuota(dir, 0, 64 * MIB), 'INVALID_ARGUMENT');
    await rejectsWith(applyDirectoryQuota(dir, 5, 1), 'INVALID_LIMIT');
    const missingHelper = await checkDirectoryQuotaSupport(dir, join(dir, 'no-such-helper'));
    assert.equal(missingHelper.supported, false);
  });

  test('helper CLI: usage errors exit 2, unsupported filesystems exit 3, symlinked dirs are not followed', () => {
    const noArgs = spawnSync(helper, [], { encoding: 'utf8' });
    assert.equal(noArgs.status, 2);
    assert.match(noArgs.stderr, /usage: palisade-quota set/);
    const projZero = spawnSync(helper, ['set', dir, '/dev/null', '0', '1048576', '10'], {
      encoding: 'utf8',
    });
    assert.equal(projZero.status, 2);
    assert.match(projZero.stderr, /projid/);
    const badBytes = spawnSync(helper, ['set', dir, '/dev/null', '7', '12abc', '10'], {
      encoding: 'utf8',
    });
    assert.equal(badBytes.status, 2);
    const hostDev = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' - ')[1]?.split(' ')[1] ?? '')
      .find((source) => source.startsWith('/dev/'));
    assert.ok(hostDev !== undefined);
    const get = spawnSync(helper, ['get', hostDev, '0'], { encoding: 'utf8' });
    assert.equal(get.status, 3, get.stderr);
    assert.match(get.stderr, /not enabled|quota/);
    const viaLink = spawnSync(helper, ['set', join(dir, 'link'), hostDev, '7', '1048576', '10'], {
      encoding: 'utf8',
    });
    assert.equal(viaLink.status, 1);
    assert.match(viaLink.stderr, /cannot open directory/);
  });
});
