import { PalisadeError } from '../../errors/index.js';
import type { CgroupLimits } from './types.js';

const MiB = 1024 * 1024;
const TiB = 1024 * 1024 * MiB;

export const LIMIT_BOUNDS = {
  memoryBytes: { min: 4 * MiB, max: TiB },
  swapBytes: { min: 0, max: TiB },
  /** PID_MAX_LIMIT on 64-bit kernels */
  pids: { min: 1, max: 4_194_304 },
  /** 0.01 core is the kernel's 1 ms minimum quota per 100 ms period. */
  cpus: { min: 0.01, max: 1024 },
} as const;

/** CFS period used for every sandbox: 100 ms, the kernel default. */
export const CPU_PERIOD_US = 100_000;

const SANDBOX_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const PREFIX = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const EXEC_NAME = /^e[0-9]{1,10}$/;

function describe(value: unknown): string {
  if (typeof value === 'number') return String(value);
  if (typeof value === 'string') return `a string (${JSON.stringify(value.slice(0, 20))})`;
  return value === null ? 'null' : typeof value;
}

function checkNumber(
  name: keyof CgroupLimits,
  value: unknown,
  integer: boolean,
  hint: string,
): number {
  const { min, max } = LIMIT_BOUNDS[name];
  const ok =
    typeof value === 'number' &&
    Number.isFinite(value) &&
    (!integer || Number.isInteger(value)) &&
    value >= min &&
    value <= max;
  if (!ok) {
    throw new PalisadeError(
      'INVALID_LIMIT',
      `limits.${name} must be ${integer ? 'an integer' : 'a number'} between ${hint}; got ${describe(value)}`,
      { limit: name, min, max },
    );
  }
  return value as number;
}

/** Returns a clean copy of the limits or throws PalisadeError('INVALID_LIMIT'). */
export function validateLimits(limits: unknown): CgroupLimits {
  if (typeof limits !== 'object' || limits === null) {
    throw new PalisadeError(
      'INVALID_LIMIT',
      'limits must be an object with memoryBytes, swapBytes, pids and cpus',
    );
  }
  const l = limits as Record<string, unknown>;
  return {
    memoryBytes: checkNumber('memoryBytes', l.memoryBytes, true, '4 MiB and 1 TiB (in bytes)'),
    swapBytes: checkNumber('swapBytes', l.swapBytes, true, '0 and 1 TiB (in bytes)'),
    pids: checkNumber('pids', l.pids, true, '1 and 4194304'),
    cpus: checkNumber('cpus', l.cpus, false, '0.01 and 1024 (cores)'),
  };
}

export function isValidSandboxId(id: string): boolean {
  return SANDBOX_ID.test(id);
}

export function validateSandboxId(id: unknown): string {
  if (typeof id !== 'string' || !SANDBOX_ID.test(id)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'sandbox id for a cgroup must be 1-64 characters of letters, digits, "_" or "-", starting with a letter or digit',
    );
  }
  return id;
}

export function validatePrefix(prefix: unknown): string {
  if (typeof prefix !== 'string' || !PREFIX.test(prefix)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'cgroup prefix must be one path segment of 1-64 letters, digits, "_" or "-" (e.g. "palisade")',
    );
  }
  return prefix;
}

export function validateExecName(name: unknown): string {
  if (typeof name !== 'string' || !EXEC_NAME.test(name)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'exec group name must be "e" followed by 1-10 digits (e.g. "e12")',
    );
  }
  return name;
}

/** A delegate is the sandbox's own unprivileged host id: never root. */
export function validateDelegate(uid: unknown, gid: unknown): { uid: number; gid: number } {
  for (const [name, value] of [
    ['uid', uid],
    ['gid', gid],
  ] as const) {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 0xfffffffe) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `cgroup delegate ${name} must be an integer between 1 and 4294967294 (never 0/root); got ${describe(value)}`,
      );
    }
  }
  return { uid: uid as number, gid: gid as number };
}
