/**
 * A minimal classic-BPF assembler for seccomp filters: enough instructions to load fields of
 * `struct seccomp_data`, compare them, and return a verdict. Jumps name labels; the assembler
 * resolves them to the 8-bit relative offsets classic BPF uses and refuses any it cannot encode,
 * so a growing rule table can never silently produce a wrong program.
 */
import { PalisadeError } from '../../errors/index.js';

/** Opcodes (linux/bpf_common.h). */
export const BPF_LD_W_ABS = 0x20; // BPF_LD | BPF_W | BPF_ABS
export const BPF_JMP_JEQ_K = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
export const BPF_JMP_JSET_K = 0x45; // BPF_JMP | BPF_JSET | BPF_K
export const BPF_RET_K = 0x06; // BPF_RET | BPF_K

/** Return values (linux/seccomp.h). */
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;

/** Offsets into `struct seccomp_data` { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; }. */
export const SECCOMP_DATA_NR = 0;
export const SECCOMP_DATA_ARCH = 4;
/**
 * Offset of the low 32 bits of args[index]. Both supported architectures are little-endian,
 * so the low half comes first and the high half is at +4.
 */
export function seccompArgLowOffset(index: number): number {
  if (!Number.isInteger(index) || index < 0 || index > 5) {
    throw new PalisadeError('INTERNAL', `seccomp argument index ${index} is out of range 0..5`);
  }
  return 16 + 8 * index;
}

/** Kernel limit on filter length (BPF_MAXINSNS). */
export const BPF_MAX_INSNS = 4096;
export const SOCK_FILTER_SIZE = 8;

/** A jump target: a label name, or null for "the next instruction". */
export type JumpTarget = string | null;

export type BpfInsn =
  | { op: 'label'; name: string }
  | { op: 'ld'; offset: number }
  | { op: 'jeq' | 'jset'; k: number; jt: JumpTarget; jf: JumpTarget }
  | { op: 'ret'; k: number };

function u32(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new PalisadeError('INTERNAL', `seccomp ${what} ${value} is not an unsigned 32-bit value`);
  }
  return value;
}

/** Encodes the instructions as an array of little-endian `struct sock_filter`. */
export function assembleBpf(insns: readonly BpfInsn[]): Buffer {
  const labelIndex = new Map<string, number>();
  let count = 0;
  for (const insn of insns) {
    if (insn.op === 'label') {
      if (labelIndex.has(insn.name))
        throw new PalisadeError('INTERNAL', `seccomp label "${insn.name}" defined twice`);
      labelIndex.set(insn.name, count);
    } else {
      count += 1;
    }
  }
  if (count === 0 || count > BPF_MAX_INSNS) {
    throw new PalisadeError(
      'INTERNAL',
      `seccomp program has ${count} instructions; must be 1..${BPF_MAX_INSNS}`,
    );
  }

  const out = Buffer.alloc(count * SOCK_FILTER_SIZE);
  let index = 0;
  const jumpOffset = (target: JumpTarget): number => {
    if (target === null) return 0;
    const to = labelIndex.get(target);
    if (to === undefined)
      throw new PalisadeError('INTERNAL', `seccomp label "${target}" is not defined`);
    const offset = to - (index + 1);
    // Classic BPF only jumps forward, by at most 255 instructions.
    if (offset < 0 || offset > 255) {
      throw new PalisadeError(
        'INTERNAL',
        `seccomp jump to "${target}" needs offset ${offset}; must be 0..255`,
      );
    }
    return offset;
  };
  const write = (code: number, jt: number, jf: number, k: number): void => {
    const at = index * SOCK_FILTER_SIZE;
    out.writeUInt16LE(code, at);
    out.writeUInt8(jt, at + 2);
    out.writeUInt8(jf, at + 3);
    out.writeUInt32LE(k, at + 4);
    index += 1;
  };

  for (const insn of insns) {
    switch (insn.op) {
      case 'label':
        break;
      case 'ld':
        write(BPF_LD_W_ABS, 0, 0, u32(insn.offset, 'load offset'));
        break;
      case 'jeq':
      case 'jset':
        write(
          insn.op === 'jeq' ? BPF_JMP_JEQ_K : BPF_JMP_JSET_K,
          jumpOffset(insn.jt),
          jumpOffset(insn.jf),
          u32(insn.k, 'constant'),
        );
        break;
      case 'ret':
        write(BPF_RET_K, 0, 0, u32(insn.k, 'return value'));
        break;
    }
  }
  // The final instruction must return, or the kernel rejects the filter.
  const last = insns.filter((i) => i.op !== 'label').at(-1);
  if (last?.op !== 'ret')
    throw new PalisadeError('INTERNAL', 'seccomp program must end with a return');
  return out;
}
