/**
 * The seccomp filter every sandboxed process runs under. bubblewrap loads it with
 * `--seccomp FD` (raw `struct sock_filter` array, read until EOF) right before it execs the
 * sandbox's first program; the filter is inherited by every descendant and cannot be removed.
 *
 * Shape: a denylist. The kernel's namespaces are the main boundary; this filter takes away the
 * syscalls that are the usual kernel attack surface or that could weaken that boundary
 * (new namespaces, mounts, module loading, BPF, io_uring, ptrace, foreign ABIs). See
 * docs/security/seccomp.md for the threat each group answers and the test that proves it.
 */
import { PalisadeError } from '../../errors/index.js';
import {
  assembleBpf,
  seccompArgLowOffset,
  SECCOMP_DATA_ARCH,
  SECCOMP_DATA_NR,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
  type BpfInsn,
} from './seccomp-bpf.js';
import {
  AUDIT_ARCH,
  syscallNumber,
  X32_SYSCALL_BIT,
  type SeccompArch,
} from './seccomp-syscalls.js';

export type { SeccompArch } from './seccomp-syscalls.js';

export type SeccompAction = 'errno' | 'kill' | 'enosys';

export interface SeccompProgram {
  arch: SeccompArch;
  bytes: Buffer;
  /** human list of what is denied and how, for docs/doctor */
  denied: Array<{ syscall: string; action: SeccompAction; note?: string }>;
}

const EPERM = 1;
const ENOSYS = 38;
/** The kernel clamps SECCOMP_RET_ERRNO data to MAX_ERRNO. */
const MAX_ERRNO = 4095;

/** Namespace-creating clone flags (linux/sched.h). */
export const CLONE_NAMESPACE_FLAGS = {
  CLONE_NEWTIME: 0x00000080,
  CLONE_NEWNS: 0x00020000,
  CLONE_NEWCGROUP: 0x02000000,
  CLONE_NEWUTS: 0x04000000,
  CLONE_NEWIPC: 0x08000000,
  CLONE_NEWUSER: 0x10000000,
  CLONE_NEWPID: 0x20000000,
  CLONE_NEWNET: 0x40000000,
} as const;
const CLONE_NAMESPACE_MASK = Object.values(CLONE_NAMESPACE_FLAGS).reduce((a, b) => a | b, 0) >>> 0;

const TIOCSTI = 0x5412;
const TIOCLINUX = 0x541c;
const PER_LINUX = 0;
const PERSONALITY_QUERY = 0xffffffff;

/**
 * Argument checks compare only the low 32 bits, on purpose: every argument checked here is
 * declared 32-bit in the kernel (`unsigned int cmd` for ioctl, `unsigned int personality`,
 * and clone uses `lower_32_bits(clone_flags)`), so the kernel ignores the high half. Requiring
 * the high half to match too would let a caller slip e.g. 0x1_00005412 past an ioctl check
 * that the kernel then runs as TIOCSTI (the flatpak CVE-2019-10063 bug).
 */
type Rule =
  | { kind: 'deny'; syscall: string; action: SeccompAction; note?: string }
  /** Deny (errno) when (low32(arg) & mask) != 0. */
  | { kind: 'deny-if-any-bit'; syscall: string; arg: number; mask: number; note: string }
  /** Deny (errno) unless low32(arg) is one of `allowed`. */
  | { kind: 'allow-only-values'; syscall: string; arg: number; allowed: number[]; note: string }
  /** Deny (errno) when low32(arg) is one of `denied`. */
  | { kind: 'deny-values'; syscall: string; arg: number; denied: number[]; note: string };

const deny = (syscall: string, note?: string): Rule =>
  note === undefined
    ? { kind: 'deny', syscall, action: 'errno' }
    : { kind: 'deny', syscall, action: 'errno', note };

const RULES: readonly Rule[] = [
  // Reading or changing other processes' memory.
  deny('ptrace'),
  deny('process_vm_readv'),
  deny('process_vm_writev'),
  deny('pidfd_getfd', "steals another process's file descriptors (ptrace-level access)"),
  // Replacing or extending the kernel.
  deny('kexec_load'),
  deny('kexec_file_load'),
  deny('init_module'),
  deny('finit_module'),
  deny('delete_module'),
  // Large, frequently exploited kernel attack surface.
  deny('bpf'),
  deny('perf_event_open'),
  deny('userfaultfd', 'used to win kernel race conditions in exploits'),
  deny('io_uring_setup'),
  deny('io_uring_enter'),
  deny('io_uring_register'),
  // The kernel keyring is not namespaced.
  deny('keyctl'),
  deny('add_key'),
  deny('request_key'),
  // Mount table changes, old and new API.
  deny('mount'),
  deny('umount2'),
  deny('pivot_root'),
  deny('open_tree'),
  deny('open_tree_attr'),
  deny('move_mount'),
  deny('fsopen'),
  deny('fsconfig'),
  deny('fsmount'),
  deny('fspick'),
  deny('mount_setattr'),
  deny('swapon'),
  deny('swapoff'),
  deny('reboot'),
  // New or joined namespaces.
  deny('unshare'),
  deny('setns'),
  {
    kind: 'deny-if-any-bit',
    syscall: 'clone',
    arg: 0,
    mask: CLONE_NAMESPACE_MASK,
    note: 'only when flags include a CLONE_NEW* namespace flag; plain fork/thread creation is allowed',
  },
  {
    kind: 'deny',
    syscall: 'clone3',
    action: 'enosys',
    note: 'flags live in memory that seccomp cannot read; ENOSYS makes libc fall back to clone, which is checked',
  },
  // File handles bypass path-based access checks (the "shocker" escape).
  deny('open_by_handle_at'),
  deny('name_to_handle_at'),
  // Host-global state that namespaces do not cover.
  deny('acct'),
  deny('syslog', 'kernel log can leak kernel addresses'),
  deny('settimeofday'),
  deny('clock_settime'),
  deny('clock_adjtime'),
  deny('adjtimex'),
  deny('quotactl'),
  deny('quotactl_fd'),
  deny('lookup_dcookie'),
  deny('iopl', 'x86 only'),
  deny('ioperm', 'x86 only'),
  deny('vhangup'),
  deny('fanotify_init', 'filesystem-wide monitoring'),
  {
    kind: 'allow-only-values',
    syscall: 'personality',
    arg: 0,
    allowed: [PER_LINUX, PERSONALITY_QUERY],
    note: 'only PER_LINUX (0) and the 0xffffffff query are allowed; other personas change ABI and ASLR',
  },
  {
    kind: 'deny-values',
    syscall: 'ioctl',
    arg: 1,
    denied: [TIOCSTI, TIOCLINUX],
    note: 'only TIOCSTI and TIOCLINUX (inject input into a terminal); low 32 bits compared as the kernel does',
  },
];

export interface CompileOptions {
  /**
   * errno returned for 'errno' denials. EPERM in production; tests use a distinctive value to
   * prove the filter, not an ordinary permission check, refused the call.
   */
  denyErrno?: number;
}

const NODE_ARCH_TO_SECCOMP: Readonly<Record<string, SeccompArch>> = {
  x64: 'x86_64',
  arm64: 'aarch64',
};

/** Maps Node's `process.arch` to the seccomp architecture, or fails closed. */
export function nativeSeccompArch(nodeArch: string = process.arch): SeccompArch {
  const arch = NODE_ARCH_TO_SECCOMP[nodeArch];
  if (arch === undefined) {
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `No seccomp filter is available for CPU architecture "${nodeArch}"; Palisade sandboxes need x86_64 or aarch64.`,
      { arch: nodeArch },
    );
  }
  return arch;
}

export function buildSeccompProgram(arch?: SeccompArch): SeccompProgram {
  return compileSeccompProgram(arch ?? nativeSeccompArch());
}

/** Like buildSeccompProgram, with test-only knobs. The rules are always the same. */
export function compileSeccompProgram(
  arch: SeccompArch,
  options: CompileOptions = {},
): SeccompProgram {
  if (arch !== 'x86_64' && arch !== 'aarch64') {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `Unknown seccomp architecture "${String(arch)}"; use "x86_64" or "aarch64".`,
      { arch: String(arch) },
    );
  }
  const denyErrno = options.denyErrno ?? EPERM;
  if (!Number.isInteger(denyErrno) || denyErrno < 1 || denyErrno > MAX_ERRNO) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `denyErrno must be an integer in 1..${MAX_ERRNO}.`,
      { denyErrno },
    );
  }

  const denied: SeccompProgram['denied'] = [
    {
      syscall: 'non-native ABI',
      action: 'kill',
      note:
        arch === 'x86_64'
          ? 'seccomp_data.arch must be AUDIT_ARCH_X86_64; ia32 (int 0x80) kills the process'
          : 'seccomp_data.arch must be AUDIT_ARCH_AARCH64; the arm32 compat ABI kills the process',
    },
  ];
  const RETURN_LABEL: Record<SeccompAction, string> = {
    errno: 'ret_errno',
    kill: 'ret_kill',
    enosys: 'ret_enosys',
  };

  // Dispatch on the syscall number; rules that look at arguments jump to a block placed
  // after the dispatch (the accumulator is overwritten there, so each block ends in returns).
  const prologue: BpfInsn[] = [
    { op: 'ld', offset: SECCOMP_DATA_ARCH },
    { op: 'jeq', k: AUDIT_ARCH[arch], jt: null, jf: 'ret_kill' },
    { op: 'ld', offset: SECCOMP_DATA_NR },
  ];
  if (arch === 'x86_64') {
    prologue.push({ op: 'jset', k: X32_SYSCALL_BIT, jt: 'ret_kill', jf: null });
    denied.push({
      syscall: 'x32 ABI',
      action: 'kill',
      note: 'any syscall number with __X32_SYSCALL_BIT (0x40000000)',
    });
  }
  const dispatch: BpfInsn[] = [];
  const blocks: BpfInsn[] = [];
  const seen = new Set<string>();

  for (const rule of RULES) {
    if (seen.has(rule.syscall))
      throw new PalisadeError('INTERNAL', `seccomp rule for ${rule.syscall} is duplicated`);
    seen.add(rule.syscall);
    const nr = syscallNumber(rule.syscall, arch);
    if (nr === null) continue;

    if (rule.kind === 'deny') {
      dispatch.push({ op: 'jeq', k: nr, jt: RETURN_LABEL[rule.action], jf: null });
      denied.push(
        rule.note === undefined
          ? { syscall: rule.syscall, action: rule.action }
          : { syscall: rule.syscall, action: rule.action, note: rule.note },
      );
      continue;
    }

    const label = `args_${rule.syscall}`;
    dispatch.push({ op: 'jeq', k: nr, jt: label, jf: null });
    blocks.push({ op: 'label', name: label }, { op: 'ld', offset: seccompArgLowOffset(rule.arg) });
    switch (rule.kind) {
      case 'deny-if-any-bit':
        blocks.push({ op: 'jset', k: rule.mask, jt: 'ret_errno', jf: 'ret_allow' });
        break;
      case 'allow-only-values':
        for (const value of rule.allowed)
          blocks.push({ op: 'jeq', k: value, jt: 'ret_allow', jf: null });
        blocks.push({ op: 'ret', k: errnoReturn(denyErrno) });
        break;
      case 'deny-values':
        for (const value of rule.denied)
          blocks.push({ op: 'jeq', k: value, jt: 'ret_errno', jf: null });
        blocks.push({ op: 'ret', k: SECCOMP_RET_ALLOW });
        break;
    }
    denied.push({ syscall: rule.syscall, action: 'errno', note: rule.note });
  }

  const program: BpfInsn[] = [
    ...prologue,
    ...dispatch,
    { op: 'ret', k: SECCOMP_RET_ALLOW },
    ...blocks,
    { op: 'label', name: 'ret_kill' },
    { op: 'ret', k: SECCOMP_RET_KILL_PROCESS },
    { op: 'label', name: 'ret_errno' },
    { op: 'ret', k: errnoReturn(denyErrno) },
    { op: 'label', name: 'ret_enosys' },
    { op: 'ret', k: errnoReturn(ENOSYS) },
    { op: 'label', name: 'ret_allow' },
    { op: 'ret', k: SECCOMP_RET_ALLOW },
  ];
  return { arch, bytes: assembleBpf(program), denied };
}

function errnoReturn(errno: number): number {
  return (SECCOMP_RET_ERRNO | errno) >>> 0;
}
