/**
 * Syscall numbers for the syscalls the filter names, per architecture.
 *
 * x86_64: arch/x86/entry/syscalls/syscall_64.tbl (checked against
 * /usr/include/x86_64-linux-gnu/asm/unistd_64.h). aarch64 uses the generic table
 * (include/uapi/asm-generic/unistd.h, scripts/syscall.tbl). `null` means the syscall does
 * not exist on that architecture (e.g. aarch64 has no iopl/ioperm); rules for it are skipped.
 * open_tree_attr (Linux 6.15) is newer than the Debian 12 headers; 467 on both, verified
 * against a 6.18 kernel (returns EFAULT, not ENOSYS, for bad arguments).
 */
import { PalisadeError } from '../../errors/index.js';

export type SeccompArch = 'x86_64' | 'aarch64';

export const AUDIT_ARCH: Readonly<Record<SeccompArch, number>> = {
  x86_64: 0xc000003e, // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
  aarch64: 0xc00000b7, // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
};

/** Foreign ABIs the arch check rejects, for documentation and tests. */
export const AUDIT_ARCH_I386 = 0x40000003;
export const AUDIT_ARCH_ARM = 0x40000028;

/** x86_64: syscalls entered through the x32 ABI carry this bit in their number. */
export const X32_SYSCALL_BIT = 0x40000000;

export const SYSCALL_NUMBERS: Readonly<
  Record<string, Readonly<Record<SeccompArch, number | null>>>
> = {
  ptrace: { x86_64: 101, aarch64: 117 },
  process_vm_readv: { x86_64: 310, aarch64: 270 },
  process_vm_writev: { x86_64: 311, aarch64: 271 },
  pidfd_getfd: { x86_64: 438, aarch64: 438 },
  kexec_load: { x86_64: 246, aarch64: 104 },
  kexec_file_load: { x86_64: 320, aarch64: 294 },
  init_module: { x86_64: 175, aarch64: 105 },
  finit_module: { x86_64: 313, aarch64: 273 },
  delete_module: { x86_64: 176, aarch64: 106 },
  bpf: { x86_64: 321, aarch64: 280 },
  perf_event_open: { x86_64: 298, aarch64: 241 },
  userfaultfd: { x86_64: 323, aarch64: 282 },
  keyctl: { x86_64: 250, aarch64: 219 },
  add_key: { x86_64: 248, aarch64: 217 },
  request_key: { x86_64: 249, aarch64: 218 },
  mount: { x86_64: 165, aarch64: 40 },
  umount2: { x86_64: 166, aarch64: 39 },
  pivot_root: { x86_64: 155, aarch64: 41 },
  open_tree: { x86_64: 428, aarch64: 428 },
  move_mount: { x86_64: 429, aarch64: 429 },
  fsopen: { x86_64: 430, aarch64: 430 },
  fsconfig: { x86_64: 431, aarch64: 431 },
  fsmount: { x86_64: 432, aarch64: 432 },
  fspick: { x86_64: 433, aarch64: 433 },
  mount_setattr: { x86_64: 442, aarch64: 442 },
  open_tree_attr: { x86_64: 467, aarch64: 467 },
  swapon: { x86_64: 167, aarch64: 224 },
  swapoff: { x86_64: 168, aarch64: 225 },
  reboot: { x86_64: 169, aarch64: 142 },
  io_uring_setup: { x86_64: 425, aarch64: 425 },
  io_uring_enter: { x86_64: 426, aarch64: 426 },
  io_uring_register: { x86_64: 427, aarch64: 427 },
  unshare: { x86_64: 272, aarch64: 97 },
  setns: { x86_64: 308, aarch64: 268 },
  clone: { x86_64: 56, aarch64: 220 },
  clone3: { x86_64: 435, aarch64: 435 },
  open_by_handle_at: { x86_64: 304, aarch64: 265 },
  name_to_handle_at: { x86_64: 303, aarch64: 264 },
  acct: { x86_64: 163, aarch64: 89 },
  syslog: { x86_64: 103, aarch64: 116 },
  settimeofday: { x86_64: 164, aarch64: 170 },
  clock_settime: { x86_64: 227, aarch64: 112 },
  clock_adjtime: { x86_64: 305, aarch64: 266 },
  adjtimex: { x86_64: 159, aarch64: 171 },
  quotactl: { x86_64: 179, aarch64: 60 },
  quotactl_fd: { x86_64: 443, aarch64: 443 },
  lookup_dcookie: { x86_64: 212, aarch64: 18 },
  iopl: { x86_64: 172, aarch64: null },
  ioperm: { x86_64: 173, aarch64: null },
  vhangup: { x86_64: 153, aarch64: 58 },
  fanotify_init: { x86_64: 300, aarch64: 262 },
  personality: { x86_64: 135, aarch64: 92 },
  ioctl: { x86_64: 16, aarch64: 29 },
};

/** The number of `name` on `arch`; null if the syscall does not exist there. */
export function syscallNumber(name: string, arch: SeccompArch): number | null {
  const entry = SYSCALL_NUMBERS[name];
  if (entry === undefined) {
    throw new PalisadeError(
      'INTERNAL',
      `seccomp: syscall "${name}" is missing from the number table`,
    );
  }
  return entry[arch];
}
