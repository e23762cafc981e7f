import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';

import {
  buildSeccompProgram,
  compileSeccompProgram,
  CLONE_NAMESPACE_FLAGS,
  nativeSeccompArch,
  type SeccompArch,
  type SeccompProgram,
} from '../../src/sandbox/bwrap/seccomp.js';
import {
  AUDIT_ARCH,
  AUDIT_ARCH_ARM,
  AUDIT_ARCH_I386,
  SYSCALL_NUMBERS,
  syscallNumber,
} from '../../src/sandbox/bwrap/seccomp-syscalls.js';
import { isPalisadeError } from '../../src/errors/index.js';

const ARCHES: SeccompArch[] = ['x86_64', 'aarch64'];
const KILL = 0x80000000;
const ALLOW = 0x7fff0000;
const errnoRet = (e: number): number => (0x00050000 | e) >>> 0;
const EPERM = 1;
const ENOSYS = 38;
const MARKER_ERRNO = 3999;

// ---------------------------------------------------------------------------------------
// An independent classic-BPF interpreter (only the opcodes a seccomp filter needs), used to
// check the program's behaviour on both architectures without running on them.
// ---------------------------------------------------------------------------------------
interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

function decode(bytes: Buffer): Insn[] {
  const out: Insn[] = [];
  for (let at = 0; at < bytes.length; at += 8) {
    out.push({
      code: bytes.readUInt16LE(at),
      jt: bytes.readUInt8(at + 2),
      jf: bytes.readUInt8(at + 3),
      k: bytes.readUInt32LE(at + 4),
    });
  }
  return out;
}

function seccompData(nr: number, arch: number, args: bigint[] = []): Buffer {
  const data = Buffer.alloc(64);
  data.writeInt32LE(nr, 0);
  data.writeUInt32LE(arch, 4);
  args.forEach((a, i) => data.writeBigUInt64LE(BigInt.asUintN(64, a), 16 + 8 * i));
  return data;
}

function run(program: Buffer, data: Buffer): number {
  const insns = decode(program);
  let acc = 0;
  let pc = 0;
  for (let steps = 0; steps <= insns.length; steps++) {
    const insn = insns[pc];
    assert.ok(insn, `pc ${pc} ran off the end of the program`);
    switch (insn.code) {
      case 0x20: // LD W ABS
        assert.ok(insn.k % 4 === 0 && insn.k + 4 <= 64, `bad load offset ${insn.k}`);
        acc = data.readUInt32LE(insn.k);
        pc += 1;
        break;
      case 0x15: // JEQ K
        pc += 1 + (acc === insn.k ? insn.jt : insn.jf);
        break;
      case 0x45: // JSET K
        pc += 1 + ((acc & insn.k) >>> 0 !== 0 ? insn.jt : insn.jf);
        break;
      case 0x06: // RET K
        return insn.k;
      default:
        assert.fail(`unexpected opcode 0x${insn.code.toString(16)} at ${pc}`);
    }
  }
  assert.fail('program did not terminate');
}

function nr(name: string, arch: SeccompArch): number {
  const n = syscallNumber(name, arch);
  assert.ok(n !== null, `${name} has no number on ${arch}`);
  return n;
}

describe('seccomp program structure', () => {
  for (const arch of ARCHES) {
    it(`${arch}: is a whole number of sock_filter entries, well under the kernel limit`, () => {
      const { bytes } = buildSeccompProgram(arch);
      assert.equal(bytes.length % 8, 0);
      const count = bytes.length / 8;
      assert.ok(count > 10 && count < 256, `${count} instructions`);
    });

    it(`${arch}: every jump lands inside the program and it ends with a return`, () => {
      const insns = decode(buildSeccompProgram(arch).bytes);
      insns.forEach((insn, i) => {
        assert.ok(
          [0x20, 0x15, 0x45, 0x06].includes(insn.code),
          `opcode 0x${insn.code.toString(16)} at ${i}`,
        );
        if (insn.code === 0x15 || insn.code === 0x45) {
          assert.ok(i + 1 + insn.jt < insns.length, `jt out of range at ${i}`);
          assert.ok(i + 1 + insn.jf < insns.length, `jf out of range at ${i}`);
        } else {
          assert.equal(insn.jt, 0);
          assert.equal(insn.jf, 0);
        }
      });
      assert.equal(insns.at(-1)?.code, 0x06);
    });

    it(`${arch}: checks seccomp_data.arch first and kills on mismatch`, () => {
      const insns = decode(buildSeccompProgram(arch).bytes);
      assert.deepEqual(insns[0], { code: 0x20, jt: 0, jf: 0, k: 4 });
      const check = insns[1];
      assert.ok(check);
      assert.equal(check.code, 0x15);
      assert.equal(check.k, AUDIT_ARCH[arch]);
      assert.equal(check.jt, 0);
      assert.deepEqual(insns[2 + check.jf], { code: 0x06, jt: 0, jf: 0, k: KILL });
    });
  }

  it('defaults to the native architecture and rejects unknown ones with clear errors', () => {
    assert.equal(buildSeccompProgram().arch, nativeSeccompArch());
    assert.equal(nativeSeccompArch('x64'), 'x86_64');
    assert.equal(nativeSeccompArch('arm64'), 'aarch64');
    assert.throws(
      () => nativeSeccompArch('ia32'),
      (e) => isPalisadeError(e, 'REQUIREMENT_MISSING') && /x86_64 or aarch64/.test(e.message),
    );
    assert.throws(
      () => compileSeccompProgram('mips' as SeccompArch),
      (e) => isPalisadeError(e, 'INVALID_ARGUMENT'),
    );
    for (const bad of [0, -1, 4096, 1.5]) {
      assert.throws(
        () => compileSeccompProgram('x86_64', { denyErrno: bad }),
        (e) => isPalisadeError(e, 'INVALID_ARGUMENT'),
      );
    }
  });

  it('lists every denial for docs/doctor', () => {
    const x86 = buildSeccompProgram('x86_64').denied.map((d) => d.syscall);
    const arm = buildSeccompProgram('aarch64').denied.map((d) => d.syscall);
    for (const name of [
      'ptrace',
      'bpf',
      'mount',
      'unshare',
      'clone',
      'clone3',
      'io_uring_setup',
      'ioctl',
    ]) {
      assert.ok(x86.includes(name) && arm.includes(name), name);
    }
    assert.ok(x86.includes('x32 ABI') && x86.includes('iopl'));
    assert.ok(!arm.includes('x32 ABI') && !arm.includes('iopl') && !arm.includes('ioperm'));
  });
});

describe('seccomp syscall numbers match the kernel headers', () => {
  const parse = (path: string): Map<string, number> => {
    const map = new Map<string, number>();
    for (const m of readFileSync(path, 'utf8').matchAll(
      /^#define __NR(?:3264)?_(\w+)\s+(\d+)\s*$/gm,
    )) {
      if (m[1] !== undefined && m[2] !== undefined) map.set(m[1], Number(m[2]));
    }
    return map;
  };
  const headers: Record<SeccompArch, string> = {
    x86_64: '/usr/include/x86_64-linux-gnu/asm/unistd_64.h',
    aarch64: '/usr/include/asm-generic/unistd.h',
  };
  // Newer than the Debian 12 headers; verified against the running kernel instead.
  const notInHeaders = new Set(['open_tree_attr']);

  for (const arch of ARCHES) {
    it(`${arch} table agrees with ${headers[arch]}`, (t) => {
      if (!existsSync(headers[arch])) {
        t.skip(`${headers[arch]} not installed (apt-get install linux-libc-dev)`);
        return;
      }
      const table = parse(headers[arch]);
      for (const name of Object.keys(SYSCALL_NUMBERS)) {
        const ours = syscallNumber(name, arch);
        if (notInHeaders.has(name)) continue;
        if (ours === null) {
          assert.equal(table.get(name), undefined, `${name} exists on ${arch}`);
        } else {
          assert.equal(ours, table.get(name), `${name} on ${arch}`);
        }
      }
    });
  }
});

describe('seccomp program behaviour (BPF interpreter)', () => {
  for (const arch of ARCHES) {
    const program = buildSeccompProgram(arch);
    const native = AUDIT_ARCH[arch];
    const exec = (name: string, args: bigint[] = []): number =>
      run(program.bytes, seccompData(nr(name, arch), native, args));

    it(`${arch}: foreign ABIs are killed`, () => {
      const foreign = arch === 'x86_64' ? AUDIT_ARCH_I386 : AUDIT_ARCH_ARM;
      for (const n of [0, 1, 20, 39, 172]) {
        assert.equal(run(program.bytes, seccompData(n, foreign)), KILL);
        assert.equal(run(program.bytes, seccompData(n, 0)), KILL);
      }
      if (arch === 'x86_64') {
        for (const n of [0, 39, 512, 0x3fffffff]) {
          assert.equal(run(program.bytes, seccompData(0x40000000 | n, native)), KILL, `x32 ${n}`);
        }
      }
    });

    it(`${arch}: every unconditional denial returns its action`, () => {
      for (const d of program.denied) {
        const entry = SYSCALL_NUMBERS[d.syscall];
        if (entry === undefined || ['clone', 'personality', 'ioctl'].includes(d.syscall)) continue;
        const expected =
          d.action === 'enosys' ? errnoRet(ENOSYS) : d.action === 'kill' ? KILL : errnoRet(EPERM);
        assert.equal(exec(d.syscall, [0n, 0n]), expected, d.syscall);
      }
      assert.equal(exec('clone3'), errnoRet(ENOSYS));
    });

    it(`${arch}: clone is denied exactly when a namespace flag is in the low 32 bits`, () => {
      const SIGCHLD = 17n;
      assert.equal(exec('clone', [SIGCHLD]), ALLOW);
      assert.equal(exec('clone', [0x003d0f00n]), ALLOW); // glibc's pthread_create flags
      assert.equal(exec('clone', [0xffffffff00000000n | SIGCHLD]), ALLOW); // kernel ignores high half
      for (const [flag, value] of Object.entries(CLONE_NAMESPACE_FLAGS)) {
        assert.equal(exec('clone', [BigInt(value) | SIGCHLD]), errnoRet(EPERM), flag);
        assert.equal(
          exec('clone', [0xdead000000000000n | BigInt(value)]),
          errnoRet(EPERM),
          `${flag} + high bits`,
        );
      }
      fc.assert(
        fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (flags) => {
          const low = Number(flags & 0xffffffffn);
          const hasNs = Object.values(CLONE_NAMESPACE_FLAGS).some((f) => (low & f) !== 0);
          return exec('clone', [flags]) === (hasNs ? errnoRet(EPERM) : ALLOW);
        }),
      );
    });

    it(`${arch}: ioctl TIOCSTI/TIOCLINUX are denied whatever the high half holds`, () => {
      for (const cmd of [0x5412n, 0x541cn]) {
        assert.equal(exec('ioctl', [0n, cmd]), errnoRet(EPERM));
        assert.equal(exec('ioctl', [0n, (1n << 32n) | cmd]), errnoRet(EPERM));
        assert.equal(exec('ioctl', [0n, 0xffffffff00000000n | cmd]), errnoRet(EPERM));
      }
      assert.equal(exec('ioctl', [0n, 0x541bn]), ALLOW); // FIONREAD
      assert.equal(exec('ioctl', [0x5412n, 0x5401n]), ALLOW); // TCGETS; the fd is not the command
    });

    it(`${arch}: personality allows only PER_LINUX and the query`, () => {
      assert.equal(exec('personality', [0n]), ALLOW);
      assert.equal(exec('personality', [0xffffffffn]), ALLOW);
      assert.equal(exec('personality', [0x1_00000000n]), ALLOW); // the kernel sees 0
      for (const p of [8n, 0x0040000n, 0x0400000n, 1n])
        assert.equal(exec('personality', [p]), errnoRet(EPERM));
    });

    it(`${arch}: any syscall not on the list is allowed, whatever its arguments`, () => {
      const listed = new Set(
        Object.keys(SYSCALL_NUMBERS)
          .map((n) => syscallNumber(n, arch))
          .filter((n): n is number => n !== null),
      );
      fc.assert(
        fc.property(
          fc.integer({ min: 0, max: 1023 }),
          fc.array(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), { minLength: 6, maxLength: 6 }),
          (n, args) => listed.has(n) || run(program.bytes, seccompData(n, native, args)) === ALLOW,
        ),
      );
    });

    it(`${arch}: denyErrno changes only the errno of 'errno' denials`, () => {
      const marked = compileSeccompProgram(arch, { denyErrno: MARKER_ERRNO });
      assert.equal(marked.bytes.length, program.bytes.length);
      assert.equal(
        run(marked.bytes, seccompData(nr('ptrace', arch), native)),
        errnoRet(MARKER_ERRNO),
      );
      assert.equal(run(marked.bytes, seccompData(nr('clone3', arch), native)), errnoRet(ENOSYS));
    });
  }
});

// ---------------------------------------------------------------------------------------
// The real kernel: bubblewrap loads the program, a probe calls each denied syscall.
// ---------------------------------------------------------------------------------------
const BWRAP = '/usr/bin/bwrap';
const SANDBOX_UID = 1999000;
const FIXTURE = fileURLToPath(new URL('./fixtures/seccomp-probe.c', import.meta.url));
const onX86 = process.arch === 'x64';

describe('seccomp filter under bubblewrap (real kernel)', () => {
  let dir = '';
  let programPath = '';
  let markedPath = '';
  let program: SeccompProgram;

  before(() => {
    assert.ok(existsSync(BWRAP), `${BWRAP} is missing: apt-get install bubblewrap`);
    dir = mkdtempSync(join(tmpdir(), 'palisade-seccomp-'));
    chmodSync(dir, 0o755); // the sandbox runs as an unprivileged uid and must read the probe
    const gcc = spawnSync('gcc', ['-O0', '-Wall', '-pthread', '-o', join(dir, 'probe'), FIXTURE], {
      encoding: 'utf8',
    });
    assert.equal(
      gcc.status,
      0,
      `gcc failed (apt-get install gcc): ${gcc.error?.message ?? gcc.stderr}`,
    );
    program = buildSeccompProgram();
    programPath = join(dir, 'filter.bpf');
    writeFileSync(programPath, program.bytes);
    markedPath = join(dir, 'filter-marked.bpf');
    writeFileSync(
      markedPath,
      compileSeccompProgram(program.arch, { denyErrno: MARKER_ERRNO }).bytes,
    );
  });

  after(() => {
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  /** Runs argv in a bwrap sandbox as an unprivileged host uid, with `filter` (or none) loaded. */
  function sandboxed(
    argv: string[],
    filter: string | null = programPath,
  ): SpawnSyncReturns<string> {
    const fd = filter === null ? null : openSync(filter, 'r'); // fresh fd: bwrap reads to EOF
    try {
      const args = [
        '--unshare-all',
        '--unshare-user',
        '--uid',
        '1000',
        '--gid',
        '1000',
        '--die-with-parent',
        '--new-session',
        '--ro-bind',
        '/usr',
        '/usr',
        '--symlink',
        'usr/bin',
        '/bin',
        '--symlink',
        'usr/lib',
        '/lib',
        '--symlink',
        'usr/lib64',
        '/lib64',
        '--proc',
        '/proc',
        '--dev',
        '/dev',
        '--ro-bind',
        dir,
        '/probe',
        ...(fd === null ? [] : ['--seccomp', '3']),
        '--',
        ...argv,
      ];
      // As root, drop to an unprivileged uid like the engine does; otherwise we already are one.
      const identity = process.getuid?.() === 0 ? { uid: SANDBOX_UID, gid: SANDBOX_UID } : {};
      return spawnSync(BWRAP, args, {
        ...identity,
        env: { PATH: '/usr/bin:/bin', LANG: 'C' },
        stdio: ['pipe', 'pipe', 'pipe', fd ?? 'ignore'],
        encoding: 'utf8',
        timeout: 30_000,
      });
    } finally {
      if (fd !== null) closeSync(fd);
    }
  }

  function probeResults(filter: string | null): Map<string, number> {
    const r = sandboxed(['/probe/probe', 'denied'], filter);
    assert.equal(r.status, 0, `probe failed: ${r.stderr}`);
    const results = new Map<string, number>();
    for (const line of r.stdout.trim().split('\n')) {
      const [name, errno] = line.split(' ');
      assert.ok(name !== undefined && errno !== undefined, `bad probe line "${line}"`);
      results.set(name, Number(errno));
    }
    return results;
  }

  /** bwrap reports a child killed by a signal as 128+signo (or dies of it itself). */
  function assertKilledBySigsys(r: SpawnSyncReturns<string>, what: string): void {
    const SIGSYS = 31;
    assert.ok(
      r.status === 128 + SIGSYS || r.signal === 'SIGSYS',
      `${what}: status ${r.status} signal ${r.signal}`,
    );
    assert.doesNotMatch(r.stdout, /survived/, what);
  }

  it('every denied syscall fails with EPERM, and clone3 with ENOSYS', () => {
    const results = probeResults(programPath);
    const coveredBase = new Set([...results.keys()].map((k) => k.split(':')[0]));
    for (const d of program.denied) {
      if (d.syscall === 'non-native ABI' || d.syscall === 'x32 ABI') continue;
      assert.ok(coveredBase.has(d.syscall), `the probe does not exercise ${d.syscall}`);
    }
    for (const [name, errno] of results) {
      assert.equal(errno, name === 'clone3' ? ENOSYS : EPERM, `${name} returned errno ${errno}`);
    }
  });

  it('the refusals come from the filter, not from missing privileges (distinctive errno)', () => {
    const results = probeResults(markedPath);
    for (const [name, errno] of results) {
      assert.equal(
        errno,
        name === 'clone3' ? ENOSYS : MARKER_ERRNO,
        `${name} returned errno ${errno}`,
      );
    }
  });

  it('control: without the filter the probe sees the calls succeed or fail differently', () => {
    const results = probeResults(null);
    // These would pass silently if the filter were not loaded.
    assert.equal(results.get('unshare'), 0);
    assert.equal(results.get('process_vm_readv'), 0);
    assert.notEqual(results.get('clone3'), ENOSYS);
    assert.notEqual(results.get('ioctl:TIOCSTI'), EPERM);
  });

  it('ordinary work still functions: shell pipeline, fork, plain clone, threads', () => {
    const sh = sandboxed(['/bin/sh', '-c', 'echo hi | cat']);
    assert.equal(sh.status, 0, sh.stderr);
    assert.equal(sh.stdout, 'hi\n');
    const probe = sandboxed(['/probe/probe', 'allowed']);
    assert.equal(probe.status, 0, probe.stderr);
    const lines = probe.stdout.trim().split('\n');
    assert.deepEqual(
      lines.map((l) => l.split(' ')[0]),
      [
        'fork',
        'clone:plain',
        'pthread',
        'personality:query',
        'personality:PER_LINUX',
        'ioctl:FIONREAD',
        'getpid',
      ],
    );
    for (const line of lines) assert.match(line, / ok$/);
    const py = sandboxed([
      '/usr/bin/python3',
      '-c',
      'import threading; r=[]; t=threading.Thread(target=lambda: r.append(1)); t.start(); t.join(); print(r)',
    ]);
    assert.equal(py.status, 0, py.stderr);
    assert.equal(py.stdout, '[1]\n');
  });

  it('unshare -U and unshare -n fail', () => {
    for (const flag of ['-U', '-n']) {
      const r = sandboxed(['/usr/bin/unshare', flag, '/bin/true']);
      assert.notEqual(r.status, 0, `unshare ${flag} succeeded`);
      assert.match(r.stderr, /Operation not permitted/);
    }
  });

  it('/proc/self/status shows the filter (Seccomp: 2)', () => {
    const r = sandboxed(['/bin/sh', '-c', 'grep -E "^(Seccomp|NoNewPrivs):" /proc/self/status']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^Seccomp:\s+2$/m);
    assert.match(r.stdout, /^NoNewPrivs:\s+1$/m);
  });

  it('an ia32 syscall (int 0x80) kills the process', (t) => {
    if (!onX86) {
      t.skip('ia32 only exists on x86_64');
      return;
    }
    const control = sandboxed(['/probe/probe', 'ia32'], null);
    assert.match(
      control.stdout,
      /ia32 survived \d+/,
      'without the filter int 0x80 should work on this kernel',
    );
    assertKilledBySigsys(sandboxed(['/probe/probe', 'ia32']), 'ia32');
  });

  it('an x32 syscall number is refused by killing the process', (t) => {
    if (!onX86) {
      t.skip('x32 only exists on x86_64');
      return;
    }
    assertKilledBySigsys(sandboxed(['/probe/probe', 'x32']), 'x32');
  });

  it('the kernel accepts the other architecture’s program, whose arch check then kills', () => {
    const other: SeccompArch = program.arch === 'x86_64' ? 'aarch64' : 'x86_64';
    const path = join(dir, `filter-${other}.bpf`);
    writeFileSync(path, buildSeccompProgram(other).bytes);
    const r = sandboxed(['/bin/true'], path);
    // If the kernel rejected the program, bwrap would report an error and exit 1 instead.
    assertKilledBySigsys(r, `${other} program on ${program.arch}`);
  });
});
