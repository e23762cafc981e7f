// Real cgroups, as root: every assertion below is about what the kernel actually does.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  rmdirSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isPalisadeError } from '../../src/errors/index.js';
import {
  createCgroupManager,
  detectCgroups,
  type CgroupLimits,
  type CgroupManager,
  type SandboxCgroup,
} from '../../src/sandbox/cgroups/index.js';
import { killSubtreeByFreezing, v2Freezer } from '../../src/sandbox/cgroups/killer.js';
import { makeGroupDir } from '../../src/sandbox/cgroups/common.js';
import { delegateV2Group, killV2Tree, V2SandboxCgroup } from '../../src/sandbox/cgroups/v2.js';

const ROOT = '/sys/fs/cgroup';
const UNIFIED = '/sys/fs/cgroup/unified';
const PREFIX = `palisade-test-${process.pid}`;
const MiB = 1024 * 1024;
/** An unprivileged uid no real account uses; stands in for the sandbox's host uid. */
const DELEGATE = {
  uid: 3_100_000 + (process.pid % 10_000),
  gid: 3_100_000 + (process.pid % 10_000),
};
const PYTHON = '/usr/bin/python3';
const LIMITS: CgroupLimits = { memoryBytes: 64 * MiB, swapBytes: 0, pids: 64, cpus: 0.5 };

const isRoot = process.getuid?.() === 0;
const v1Here = detectCgroups(ROOT).version === 'v1';
const unifiedHere = existsSync(join(UNIFIED, 'cgroup.procs'));

const children = new Set<ChildProcess>();

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function collect(child: ChildProcess): { exit: Promise<Exit>; output: () => string } {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<Exit>((resolve) =>
    child.on('close', (code, signal) => {
      children.delete(child);
      resolve({ code, signal, stdout, stderr });
    }),
  );
  return { exit, output: () => stdout };
}

/**
 * Starts `sh -c script` already inside the group: the shell blocks on `read` until its pid
 * has been written to every procs file, like the launcher that joins before exec.
 */
function startInGroup(
  procsFiles: string[],
  script: string,
  ids?: { uid: number; gid: number },
): { child: ChildProcess; exit: Promise<Exit>; output: () => string } {
  const child = spawn('/bin/sh', ['-c', `read _go; ${script}`], {
    stdio: ['pipe', 'pipe', 'pipe'],
    ...(ids ?? {}),
  });
  children.add(child);
  const collected = collect(child);
  for (const file of procsFiles) writeFileSync(file, String(child.pid));
  child.stdin?.write('\n');
  return { child, ...collected };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Output length once it has stopped growing for 250 ms (pipe data written before a freeze may
 * still be in flight on a loaded machine); fails if it never stops. */
async function settledLength(output: () => string): Promise<number> {
  const deadline = Date.now() + 10_000;
  let last = output().length;
  for (;;) {
    await sleep(250);
    const now = output().length;
    if (now === last) return now;
    if (Date.now() > deadline) assert.fail('output never stopped growing: the group is not frozen');
    last = now;
  }
}

function pidsIn(procsFile: string): number[] {
  if (!existsSync(procsFile)) return [];
  return readFileSync(procsFile, 'utf8').split('\n').filter(Boolean).map(Number);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function cat(path: string): string {
  return readFileSync(path, 'utf8').trim();
}

function expectCode(code: string): (err: unknown) => boolean {
  return (err) => {
    assert.ok(isPalisadeError(err), `expected PalisadeError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return true;
  };
}

const skipV1 =
  !isRoot || !v1Here
    ? 'needs root and cgroup v1 hierarchies (this suite targets the dev host)'
    : false;

describe('detectCgroups', () => {
  test('reports this host as usable v1 with every controller checked', { skip: skipV1 }, () => {
    const support = detectCgroups(ROOT);
    assert.equal(support.version, 'v1');
    assert.equal(support.usable, true, JSON.stringify(support.checks));
    for (const name of [
      'controller memory',
      'controller pids',
      'controller cpu',
      'controller freezer',
    ]) {
      const check = support.checks.find((c) => c.name === name);
      assert.ok(check?.ok, `${name}: ${JSON.stringify(check)}`);
    }
  });

  test('a missing root or a plain directory is "none", unusable, with a fix', () => {
    const plain = mkdtempSync(join(tmpdir(), 'palisade-nocg-'));
    try {
      for (const root of ['/nonexistent-cgroup-root', plain]) {
        const support = detectCgroups(root);
        assert.equal(support.version, 'none');
        assert.equal(support.usable, false);
        assert.ok(support.checks.some((c) => !c.ok && (c.fix ?? '').length > 0));
      }
    } finally {
      rmSync(plain, { recursive: true, force: true });
    }
  });

  test(
    "the hybrid host's controller-less unified hierarchy alone is unusable v2",
    { skip: !unifiedHere },
    () => {
      const support = detectCgroups(UNIFIED);
      assert.equal(support.version, 'v2');
      assert.equal(support.usable, false);
      const memory = support.checks.find((c) => c.name === 'controller memory');
      assert.equal(memory?.ok, false);
      assert.ok(memory?.fix);
    },
  );
});

describe('createCgroupManager fails closed', () => {
  test('no cgroups at the root → REQUIREMENT_MISSING naming the missing piece', () => {
    assert.throws(
      () => createCgroupManager({ root: '/nonexistent-cgroup-root', prefix: PREFIX }),
      (err) =>
        expectCode('REQUIREMENT_MISSING')(err) && /cgroup filesystem/.test((err as Error).message),
    );
  });

  test(
    'a v2 root without memory/pids/cpu → REQUIREMENT_MISSING naming the controllers',
    { skip: !unifiedHere },
    () => {
      assert.throws(
        () => createCgroupManager({ root: UNIFIED, prefix: PREFIX }),
        (err) =>
          expectCode('REQUIREMENT_MISSING')(err) &&
          /controller memory/.test((err as Error).message) &&
          /controller pids/.test((err as Error).message),
      );
      assert.equal(existsSync(join(UNIFIED, PREFIX)), false, 'nothing is created when failing');
    },
  );

  test('a prefix that is not one safe path segment → INVALID_ARGUMENT', () => {
    for (const prefix of ['', '../etc', 'a/b', '.hidden', 'x'.repeat(65)]) {
      assert.throws(
        () => createCgroupManager({ root: ROOT, prefix }),
        expectCode('INVALID_ARGUMENT'),
      );
    }
  });
});

describe('cgroup v1 sandbox groups (real kernel)', { skip: skipV1 }, () => {
  let manager: CgroupManager;
  const groups: SandboxCgroup[] = [];
  const create = (id: string, limits: CgroupLimits = LIMITS): SandboxCgroup => {
    const group = manager.create(id, limits, DELEGATE.uid, DELEGATE.gid);
    groups.push(group);
    return group;
  };
  const at = (controller: string, ...rest: string[]): string =>
    join(ROOT, controller, PREFIX, ...rest);

  before(() => {
    manager = createCgroupManager({ root: ROOT, prefix: PREFIX });
  });

  after(async () => {
    for (const child of children) child.kill('SIGKILL');
    for (const group of groups) await group.remove().catch(() => undefined);
    await manager.reapLeftovers(new Set()).catch(() => undefined);
    for (const controller of ['freezer', 'memory', 'pids', 'cpu', 'cpuacct']) {
      if (existsSync(at(controller))) rmdirSync(at(controller));
    }
  });

  test('create writes every limit and the files read back', () => {
    const group = create('limits', {
      memoryBytes: 96 * MiB,
      swapBytes: 16 * MiB,
      pids: 77,
      cpus: 1.5,
    });
    assert.equal(manager.version, 'v1');
    assert.equal(cat(at('memory', 'limits', 'memory.limit_in_bytes')), String(96 * MiB));
    assert.equal(cat(at('memory', 'limits', 'memory.memsw.limit_in_bytes')), String(112 * MiB));
    assert.match(cat(at('memory', 'limits', 'memory.oom_control')), /^oom_kill_disable 0$/m);
    assert.equal(cat(at('pids', 'limits', 'pids.max')), '77');
    assert.equal(cat(at('cpu', 'limits', 'cpu.cfs_period_us')), '100000');
    assert.equal(cat(at('cpu', 'limits', 'cpu.cfs_quota_us')), '150000');
    // freezer first: the launcher must be in the freezer group before anything else.
    assert.equal(group.procsFiles[0], at('freezer', 'limits', 'cgroup.procs'));
    assert.equal(group.procsFiles.length, 5);
    assert.deepEqual(group.delegatedDirs, [at('freezer', 'limits')]);
    // Only the delegated directory belongs to the sandbox uid; every limit file stays root's.
    assert.equal(statSync(at('freezer', 'limits')).uid, DELEGATE.uid);
    assert.equal(statSync(at('freezer', 'limits', 'freezer.state')).uid, 0);
    assert.equal(statSync(at('freezer', 'limits', 'cgroup.procs')).uid, 0);
    assert.equal(statSync(at('memory', 'limits')).uid, 0);
    assert.equal(statSync(at('memory', 'limits', 'memory.limit_in_bytes')).uid, 0);
  });

  test('invalid limits, ids and delegates are rejected and create nothing', () => {
    const bad: Array<Partial<Record<keyof CgroupLimits, unknown>>> = [
      { memoryBytes: 0 },
      { memoryBytes: -1 },
      { memoryBytes: 1e20 },
      { memoryBytes: Number.NaN },
      { memoryBytes: 1.5 * MiB * 10 + 0.5 },
      { memoryBytes: '64m' },
      { swapBytes: -1 },
      { pids: 0 },
      { pids: 2.5 },
      { pids: 1e9 },
      { cpus: 0 },
      { cpus: Infinity },
      { cpus: 5000 },
    ];
    for (const override of bad) {
      const limits = { ...LIMITS, ...override } as CgroupLimits;
      assert.throws(
        () => manager.create('badlimit', limits, DELEGATE.uid, DELEGATE.gid),
        (err) => {
          expectCode('INVALID_LIMIT')(err);
          assert.match((err as Error).message, /limits\.\w+ must be/);
          return true;
        },
      );
    }
    assert.throws(
      () => manager.create('badlimit', null as unknown as CgroupLimits, 5000, 5000),
      expectCode('INVALID_LIMIT'),
    );
    for (const id of ['', '../escape', 'a/b', '.x', 'x'.repeat(65)]) {
      assert.throws(
        () => manager.create(id, LIMITS, DELEGATE.uid, DELEGATE.gid),
        expectCode('INVALID_ARGUMENT'),
      );
    }
    for (const [uid, gid] of [
      [0, 5000],
      [5000, 0],
      [-1, 5000],
      [1.5, 5000],
    ] as const) {
      assert.throws(
        () => manager.create('baddelegate', LIMITS, uid, gid),
        expectCode('INVALID_ARGUMENT'),
      );
    }
    for (const controller of ['freezer', 'memory', 'pids', 'cpu']) {
      assert.equal(existsSync(at(controller, 'badlimit')), false);
      assert.equal(existsSync(at(controller, 'baddelegate')), false);
    }
  });

  test('creating the same id twice → CONFLICT, and the first group is untouched', () => {
    create('twice');
    assert.throws(
      () => manager.create('twice', LIMITS, DELEGATE.uid, DELEGATE.gid),
      expectCode('CONFLICT'),
    );
    assert.equal(cat(at('memory', 'twice', 'memory.limit_in_bytes')), String(LIMITS.memoryBytes));
  });

  test(
    'killAll kills a sleeper and a fork loop, race-free, and stats counted them',
    { timeout: 30_000 },
    async () => {
      const group = create('killall');
      const sleeper = startInGroup(group.procsFiles, 'exec sleep 1000');
      // Forks as fast as it can and keeps trying when the pids limit (64) says no.
      const forker = startInGroup(
        group.procsFiles,
        `exec ${PYTHON} -c '
import os, time
while True:
    try:
        if os.fork() == 0:
            time.sleep(1000)
            os._exit(0)
    except OSError:
        time.sleep(0.001)
'`,
      );
      await until(() => group.stats().pids >= 20, 10_000, 'the fork loop to fill the group');
      const before = group.stats();
      assert.ok(before.pids <= LIMITS.pids, `pids.current ${before.pids} within the limit`);
      assert.equal(before.memoryLimitBytes, LIMITS.memoryBytes);
      await group.killAll();
      const [s, f] = await Promise.all([sleeper.exit, forker.exit]);
      assert.equal(s.signal, 'SIGKILL');
      assert.equal(f.signal, 'SIGKILL');
      for (const file of group.procsFiles) assert.deepEqual(pidsIn(file), [], file);
      // pids.current drops as the killed tasks are reaped by their (re)parent.
      await until(() => group.stats().pids === 0, 5_000, 'pids.current to reach 0');
    },
  );

  test(
    'killAll also kills tasks the sandbox froze itself in a sub-group',
    { timeout: 30_000 },
    async () => {
      const group = create('selffrozen');
      const [delegated] = group.delegatedDirs as [string];
      const e1 = join(delegated, 'e1');
      const victim = startInGroup(
        group.procsFiles,
        `mkdir ${e1} && echo 0 > ${e1}/cgroup.procs && sleep 1000 & wait`,
        DELEGATE,
      );
      await until(() => pidsIn(join(e1, 'cgroup.procs')).length > 0, 5_000, 'e1 to be populated');
      writeFileSync(join(e1, 'freezer.state'), 'FROZEN');
      await until(() => cat(join(e1, 'freezer.state')) === 'FROZEN', 5_000, 'e1 frozen');
      await group.killAll();
      assert.equal((await victim.exit).signal, 'SIGKILL');
      assert.deepEqual(pidsIn(join(e1, 'cgroup.procs')), []);
    },
  );

  test(
    'delegation: the sandbox uid can make e1 and move itself in, but cannot touch limits',
    { timeout: 30_000 },
    async () => {
      const group = create('delegation');
      const [delegated] = group.delegatedDirs as [string];
      const e1 = join(delegated, 'e1');
      const memoryLimit = at('memory', 'delegation', 'memory.limit_in_bytes');
      const script = [
        `mkdir ${e1} && echo MKDIR_OK`,
        `echo 0 > ${e1}/cgroup.procs && echo MOVED_OK`,
        `grep -q ':freezer:/${PREFIX}/delegation/e1$' /proc/self/cgroup && echo IN_E1`,
        `(echo 1048576 > ${memoryLimit}) 2>/dev/null && echo LIMIT_WRITTEN`,
        `(echo 1 > ${at('pids', 'delegation', 'pids.max')}) 2>/dev/null && echo PIDS_WRITTEN`,
        `(echo FROZEN > ${delegated}/freezer.state) 2>/dev/null && echo STATE_WRITTEN`,
        `(echo 0 > ${delegated}/cgroup.procs) 2>/dev/null && echo MOVED_BACK`,
        `mkdir ${at('freezer', 'sibling')} 2>/dev/null && echo SIBLING_MADE`,
        `mkdir ${at('memory', 'delegation', 'm1')} 2>/dev/null && echo MEMCG_MADE`,
        'true',
      ].join('\n');
      const run = startInGroup(group.procsFiles, script, DELEGATE);
      const result = await run.exit;
      const said = result.stdout.split('\n');
      assert.ok(said.includes('MKDIR_OK'), result.stdout + result.stderr);
      assert.ok(said.includes('MOVED_OK'), result.stdout + result.stderr);
      assert.ok(said.includes('IN_E1'), result.stdout + result.stderr);
      for (const forbidden of [
        'LIMIT_WRITTEN',
        'PIDS_WRITTEN',
        'STATE_WRITTEN',
        'MOVED_BACK',
        'SIBLING_MADE',
        'MEMCG_MADE',
      ]) {
        assert.ok(!said.includes(forbidden), `${forbidden} must not happen: ${result.stdout}`);
      }
      assert.equal(cat(memoryLimit), String(LIMITS.memoryBytes));
      // Sub-groups a delegatee creates are its own.
      assert.equal(statSync(e1).uid, DELEGATE.uid);
      assert.equal(statSync(join(e1, 'cgroup.procs')).uid, DELEGATE.uid);
      group.removeExec('e1');
      assert.equal(existsSync(e1), false);
    },
  );

  test(
    'killExec kills the whole exec tree (with forks) and only that exec',
    { timeout: 30_000 },
    async () => {
      const group = create('killexec');
      const [delegated] = group.delegatedDirs as [string];
      const e7 = join(delegated, 'e7');
      const bystander = startInGroup(group.procsFiles, 'exec sleep 1000');
      const exec = startInGroup(
        group.procsFiles,
        `mkdir ${e7} && echo 0 > ${e7}/cgroup.procs && exec sh -c 'i=0; while [ $i -lt 40 ]; do sleep 1000 & i=$((i+1)); done; while :; do sleep 1000 & sleep 0.05; done'`,
        DELEGATE,
      );
      await until(() => group.execPids('e7').length >= 20, 10_000, 'the exec to fork');
      assert.ok(group.execPids('e7').every((pid) => alive(pid)));
      await group.killExec('e7');
      assert.equal((await exec.exit).signal, 'SIGKILL');
      assert.deepEqual(group.execPids('e7'), []);
      assert.equal(existsSync(e7), false, 'e7 is removed');
      assert.ok(alive(bystander.child.pid as number), 'a process outside the exec survives');
      await group.killExec('e7'); // already gone: tolerated
      assert.throws(() => group.execPids('../x'), expectCode('INVALID_ARGUMENT'));
      await assert.rejects(group.killExec('e1/../..'), expectCode('INVALID_ARGUMENT'));
      await group.killAll();
      assert.equal((await bystander.exit).signal, 'SIGKILL');
    },
  );

  test(
    'killExec holds even while a sandbox accomplice keeps thawing the exec group',
    { timeout: 30_000 },
    async () => {
      const group = create('accomplice');
      const [delegated] = group.delegatedDirs as [string];
      const e5 = join(delegated, 'e5');
      const exec = startInGroup(
        group.procsFiles,
        `mkdir ${e5} && echo 0 > ${e5}/cgroup.procs && exec sh -c 'while :; do sleep 1000 & sleep 0.02; done'`,
        DELEGATE,
      );
      await until(() => group.execPids('e5').length >= 5, 10_000, 'the exec to fork');
      // Same uid, outside e5: tries to undo the freeze the kill relies on, as fast as it can.
      const accomplice = startInGroup(
        group.procsFiles,
        `while :; do echo THAWED > ${e5}/freezer.state; done 2>/dev/null`,
        DELEGATE,
      );
      await sleep(50);
      await group.killExec('e5');
      assert.equal((await exec.exit).signal, 'SIGKILL');
      assert.deepEqual(group.execPids('e5'), []);
      assert.ok(alive(accomplice.child.pid as number), 'the accomplice is not part of the exec');
      await group.killAll();
      assert.equal((await accomplice.exit).signal, 'SIGKILL');
    },
  );

  test(
    'killExec in a paused sandbox kills the exec and leaves the sandbox paused',
    { timeout: 30_000 },
    async () => {
      const group = create('pausedkill');
      const [delegated] = group.delegatedDirs as [string];
      const e2 = join(delegated, 'e2');
      const bystander = startInGroup(
        group.procsFiles,
        'i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done',
      );
      const exec = startInGroup(
        group.procsFiles,
        `mkdir ${e2} && echo 0 > ${e2}/cgroup.procs && sleep 1000 & sleep 1000 & wait`,
        DELEGATE,
      );
      await until(() => group.execPids('e2').length >= 1, 5_000, 'e2 populated');
      await group.freeze();
      await group.killExec('e2');
      assert.deepEqual(group.execPids('e2'), []);
      assert.equal(existsSync(e2), false);
      assert.equal(cat(at('freezer', 'pausedkill', 'freezer.state')), 'FROZEN', 'still paused');
      const frozenAt = await settledLength(bystander.output);
      await sleep(300);
      assert.equal(bystander.output().length, frozenAt, 'the bystander stays frozen');
      await group.remove();
      assert.equal((await bystander.exit).signal, 'SIGKILL');
      assert.equal((await exec.exit).signal, 'SIGKILL');
    },
  );

  test(
    'killAll also catches a task that joined every hierarchy except the freezer',
    { timeout: 30_000 },
    async () => {
      const group = create('stray');
      // A launcher that broke the freezer-first order: this task is not in the freezer group.
      const stray = startInGroup(group.procsFiles.slice(1), 'exec sleep 1000');
      await until(() => pidsIn(group.procsFiles[1] as string).length === 1, 5_000, 'the stray');
      assert.deepEqual(pidsIn(group.procsFiles[0] as string), []);
      await group.killAll();
      assert.equal((await stray.exit).signal, 'SIGKILL');
      for (const file of group.procsFiles) assert.deepEqual(pidsIn(file), [], file);
    },
  );

  test('freeze stops a counting process and thaw resumes it', { timeout: 30_000 }, async () => {
    const group = create('freeze');
    const counter = startInGroup(
      group.procsFiles,
      'i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done',
    );
    await until(() => counter.output().length > 0, 5_000, 'the counter to start');
    await group.freeze();
    assert.equal(cat(at('freezer', 'freeze', 'freezer.state')), 'FROZEN');
    const frozenAt = await settledLength(counter.output);
    await sleep(400);
    assert.equal(counter.output().length, frozenAt, 'no output while frozen');
    await group.thaw();
    assert.equal(cat(at('freezer', 'freeze', 'freezer.state')), 'THAWED');
    await until(() => counter.output().length > frozenAt, 5_000, 'output after thaw');
    await group.remove();
    assert.equal((await counter.exit).signal, 'SIGKILL');
    await assert.rejects(group.freeze(), expectCode('SANDBOX_NOT_RUNNING'));
    assert.throws(() => group.stats(), expectCode('SANDBOX_NOT_RUNNING'));
  });

  test('the pids limit makes fork fail inside the group', { timeout: 30_000 }, async () => {
    const group = create('pidlimit', { ...LIMITS, pids: 8 });
    const forker = startInGroup(
      group.procsFiles,
      `exec ${PYTHON} -c '
import os, time
ok, err = 0, None
for _ in range(50):
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        os.closerange(0, 3)
        time.sleep(30)
        os._exit(0)
    ok += 1
print(ok, err, flush=True)
'`,
    );
    const result = await forker.exit;
    const [forked, errno] = result.stdout.trim().split(' ');
    assert.equal(errno, '11', `fork must fail with EAGAIN: ${result.stdout}${result.stderr}`);
    assert.ok(Number(forked) <= 7, `at most 7 children next to python: ${forked}`);
    assert.ok(group.stats().pids <= 8);
    await group.remove();
  });

  test(
    'the memory limit OOM-kills the hog inside the group only',
    { timeout: 60_000 },
    async () => {
      const group = create('oom', { ...LIMITS, memoryBytes: 32 * MiB });
      const hostSleeper = spawn('sleep', ['1000'], { stdio: 'ignore' });
      children.add(hostSleeper);
      const groupSleeper = startInGroup(group.procsFiles, 'exec sleep 1000');
      const hog = startInGroup(
        group.procsFiles,
        `exec ${PYTHON} -c '
chunks = []
for _ in range(400):
    chunks.append(b"x" * (1 << 20))
print("survived", flush=True)
'`,
      );
      const result = await hog.exit;
      assert.equal(
        result.signal,
        'SIGKILL',
        `the hog must be OOM-killed: ${result.stdout}${result.stderr}`,
      );
      assert.ok(group.stats().oomKills >= 1, 'the kernel counted the OOM kill in this group');
      assert.ok(
        alive(groupSleeper.child.pid as number),
        'a small process in the same group survives',
      );
      assert.ok(alive(hostSleeper.pid as number), 'a host process survives');
      assert.ok(alive(process.pid));
      hostSleeper.kill('SIGKILL');
      await group.remove();
      assert.equal((await groupSleeper.exit).signal, 'SIGKILL');
    },
  );

  test('stats report memory, pids and CPU use', { timeout: 30_000 }, async () => {
    const group = create('stats');
    const busy = startInGroup(
      group.procsFiles,
      'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exec sleep 1000',
    );
    await until(() => group.stats().cpuUsageNs > 50_000_000, 20_000, 'CPU time to accrue');
    const stats = group.stats();
    assert.equal(stats.pids, 1);
    assert.ok(stats.memoryBytes > 0);
    assert.equal(stats.memoryLimitBytes, LIMITS.memoryBytes);
    assert.equal(stats.oomKills, 0);
    await group.remove();
    assert.equal((await busy.exit).signal, 'SIGKILL');
  });

  test(
    'remove kills everything and leaves no group in any hierarchy',
    { timeout: 30_000 },
    async () => {
      const group = create('removeme');
      const [delegated] = group.delegatedDirs as [string];
      const e3 = join(delegated, 'e3');
      const proc = startInGroup(
        group.procsFiles,
        `mkdir ${e3} && echo 0 > ${e3}/cgroup.procs && sleep 1000 & sleep 1000`,
        DELEGATE,
      );
      await until(() => pidsIn(join(e3, 'cgroup.procs')).length > 0, 5_000, 'e3 populated');
      await group.remove();
      assert.equal((await proc.exit).signal, 'SIGKILL');
      for (const controller of ['freezer', 'memory', 'pids', 'cpu', 'cpuacct']) {
        assert.equal(existsSync(at(controller, 'removeme')), false, controller);
      }
      await group.remove(); // idempotent
    },
  );

  test(
    'reapLeftovers removes what a crashed manager left and keeps live ids',
    { timeout: 30_000 },
    async () => {
      const crashed = createCgroupManager({ root: ROOT, prefix: PREFIX });
      const orphanGroup = crashed.create('orphan', LIMITS, DELEGATE.uid, DELEGATE.gid);
      const orphan = startInGroup(orphanGroup.procsFiles, 'sleep 1000 & sleep 1000');
      const kept = create('kept');
      // The crashed manager and its handle are simply dropped; a new engine starts.
      const restarted = createCgroupManager({ root: ROOT, prefix: PREFIX });
      const live = new Set(groups.filter((g) => existsSync(at('freezer', g.id))).map((g) => g.id));
      const reaped = await restarted.reapLeftovers(live);
      assert.deepEqual(reaped, ['orphan']);
      assert.equal((await orphan.exit).signal, 'SIGKILL');
      for (const controller of ['freezer', 'memory', 'pids', 'cpu', 'cpuacct']) {
        assert.equal(existsSync(at(controller, 'orphan')), false, controller);
        assert.equal(existsSync(at(controller, kept.id)), true, controller);
      }
      assert.deepEqual(await restarted.reapLeftovers(live), []);
    },
  );
});

const skipV2 =
  !isRoot || !unifiedHere ? 'needs root and a cgroup2 mount at /sys/fs/cgroup/unified' : false;

// The hybrid host's unified hierarchy has no controllers, but cgroup.procs, cgroup.kill,
// cgroup.freeze and delegation work there, so the v2 kill/freeze/delegation paths run for real.
describe(
  'cgroup v2 kill, freeze and delegation paths (controller-less unified hierarchy)',
  { skip: skipV2 },
  () => {
    const prefixDir = join(UNIFIED, PREFIX);
    const made: V2SandboxCgroup[] = [];
    const makeGroup = (id: string): V2SandboxCgroup => {
      const dir = join(prefixDir, id);
      makeGroupDir(dir, id);
      delegateV2Group(dir, id, DELEGATE.uid, DELEGATE.gid);
      const group = new V2SandboxCgroup(id, dir);
      made.push(group);
      return group;
    };

    before(() => mkdirSync(prefixDir, { recursive: true }));
    after(async () => {
      for (const child of children) child.kill('SIGKILL');
      for (const group of made) await group.remove().catch(() => undefined);
      if (existsSync(prefixDir)) rmdirSync(prefixDir);
    });

    test(
      'delegation: dir and cgroup.procs belong to the sandbox uid; depth and count are capped',
      { timeout: 30_000 },
      async () => {
        const group = makeGroup('v2deleg');
        const [dir] = group.delegatedDirs as [string];
        assert.equal(statSync(dir).uid, DELEGATE.uid);
        assert.equal(statSync(join(dir, 'cgroup.procs')).uid, DELEGATE.uid);
        for (const rootOwned of [
          'cgroup.subtree_control',
          'cgroup.max.descendants',
          'cgroup.max.depth',
          'cgroup.kill',
          'cgroup.freeze',
        ]) {
          assert.equal(statSync(join(dir, rootOwned)).uid, 0, rootOwned);
        }
        const e1 = join(dir, 'e1');
        const script = [
          `mkdir ${e1} && echo MKDIR_OK`,
          `echo 0 > ${e1}/cgroup.procs && echo MOVED_OK`,
          `echo 0 > ${dir}/cgroup.procs && echo MOVED_BACK_OK`,
          `(echo max > ${dir}/cgroup.max.descendants) 2>/dev/null && echo DESCENDANTS_WRITTEN`,
          `(echo 1 > ${dir}/cgroup.freeze) 2>/dev/null && echo FREEZE_WRITTEN`,
          `mkdir ${e1}/deeper 2>/dev/null && echo DEEPER_MADE`,
          `mkdir ${prefixDir}/sibling 2>/dev/null && echo SIBLING_MADE`,
          'true',
        ].join('\n');
        const result = await startInGroup(group.procsFiles, script, DELEGATE).exit;
        const said = result.stdout.split('\n');
        for (const ok of ['MKDIR_OK', 'MOVED_OK', 'MOVED_BACK_OK'])
          assert.ok(said.includes(ok), `${ok}: ${result.stdout}${result.stderr}`);
        for (const no of ['DESCENDANTS_WRITTEN', 'FREEZE_WRITTEN', 'DEEPER_MADE', 'SIBLING_MADE']) {
          assert.ok(!said.includes(no), `${no} must not happen: ${result.stdout}`);
        }
        assert.equal(statSync(e1).uid, DELEGATE.uid, 'sub-groups a delegatee creates are its own');
        group.removeExec('e1');
        assert.equal(existsSync(e1), false);
      },
    );

    test(
      'killExec (cgroup.kill) kills a forking exec and only it',
      { timeout: 30_000 },
      async () => {
        const group = makeGroup('v2exec');
        const [dir] = group.delegatedDirs as [string];
        const e2 = join(dir, 'e2');
        const bystander = startInGroup(group.procsFiles, 'exec sleep 1000');
        const exec = startInGroup(
          group.procsFiles,
          `mkdir ${e2} && echo 0 > ${e2}/cgroup.procs && exec sh -c 'i=0; while [ $i -lt 200 ]; do sleep 1000 & i=$((i+1)); done; while :; do sleep 1000 & sleep 0.05; done'`,
          DELEGATE,
        );
        await until(() => group.execPids('e2').length >= 20, 10_000, 'the exec to fork');
        await group.killExec('e2');
        assert.equal((await exec.exit).signal, 'SIGKILL');
        assert.equal(existsSync(e2), false);
        assert.ok(alive(bystander.child.pid as number));
        await group.killAll();
        assert.equal((await bystander.exit).signal, 'SIGKILL');
        assert.equal(cat(join(dir, 'cgroup.events')).includes('populated 0'), true);
      },
    );

    test(
      'freeze stops a counting process and thaw resumes it (cgroup.freeze)',
      { timeout: 30_000 },
      async () => {
        const group = makeGroup('v2freeze');
        const counter = startInGroup(
          group.procsFiles,
          'i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done',
        );
        await until(() => counter.output().length > 0, 5_000, 'the counter to start');
        await group.freeze();
        const frozenAt = await settledLength(counter.output);
        await sleep(400);
        assert.equal(counter.output().length, frozenAt);
        await group.thaw();
        await until(() => counter.output().length > frozenAt, 5_000, 'output after thaw');
        // killing works on a frozen group too
        await group.freeze();
        await group.remove();
        assert.equal((await counter.exit).signal, 'SIGKILL');
      },
    );

    test(
      'the freeze-and-kill fallback (kernels without cgroup.kill) empties a forking group',
      { timeout: 30_000 },
      async () => {
        const group = makeGroup('v2fallback');
        const [dir] = group.delegatedDirs as [string];
        const forker = startInGroup(
          group.procsFiles,
          'i=0; while [ $i -lt 300 ]; do sleep 1000 & i=$((i+1)); done; wait',
        );
        await until(() => pidsIn(join(dir, 'cgroup.procs')).length >= 50, 10_000, 'forks');
        await killSubtreeByFreezing(dir, v2Freezer, 'test group');
        assert.equal((await forker.exit).signal, 'SIGKILL');
        assert.deepEqual(pidsIn(join(dir, 'cgroup.procs')), []);
        await killV2Tree(join(dir, 'e404'), 'missing'); // gone already: tolerated
      },
    );
  },
);
