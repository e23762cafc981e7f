import { PalisadeError } from '../errors/index.js';
import type { ResourceLimits } from './types.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

export const DEFAULT_LIMITS: Readonly<ResourceLimits> = Object.freeze({
  memoryBytes: 512 * MiB,
  swapBytes: 0,
  pids: 256,
  cpus: 1,
  diskBytes: 1 * GiB,
  tmpBytes: 64 * MiB,
});

/** The largest limits a caller may ask for unless the operator configures otherwise. */
export const DEFAULT_MAX_LIMITS: Readonly<ResourceLimits> = Object.freeze({
  memoryBytes: 16 * GiB,
  swapBytes: 16 * GiB,
  pids: 32768,
  cpus: 64,
  diskBytes: 1024 * GiB,
  tmpBytes: 4 * GiB,
});

const MINIMUMS: Readonly<ResourceLimits> = Object.freeze({
  memoryBytes: 16 * MiB,
  swapBytes: 0,
  pids: 8,
  cpus: 0.01,
  diskBytes: 0, // 0 = no quota, allowed only for a caller-supplied workspace directory
  tmpBytes: 1 * MiB,
});

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: MiB,
  mb: MiB,
  mib: MiB,
  g: GiB,
  gb: GiB,
  gib: GiB,
  t: 1024 * GiB,
  tb: 1024 * GiB,
  tib: 1024 * GiB,
};

/** "512m", "1.5g", "1048576" → bytes (binary units). */
export function parseSize(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new PalisadeError(
      'INVALID_LIMIT',
      `${what}: cannot read size ${JSON.stringify(text)}; use a number with an optional unit like 512m or 2g`,
    );
  }
  const value = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(value))
    throw new PalisadeError('INVALID_LIMIT', `${what}: ${text} is too large`);
  return value;
}

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  '': 1000,
  m: 60_000,
  h: 3_600_000,
};

/** "30s", "500ms", "2m", "1h", "10" (seconds) → milliseconds. */
export function parseDuration(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|)\s*$/.exec(text);
  if (!m)
    throw new PalisadeError(
      'INVALID_LIMIT',
      `${what}: cannot read duration ${JSON.stringify(text)}; use e.g. 30s, 500ms, 2m`,
    );
  const value = Math.round(Number(m[1]) * DURATION_UNITS[m[2]!]!);
  if (!Number.isSafeInteger(value) || value <= 0)
    throw new PalisadeError('INVALID_LIMIT', `${what}: ${text} must be positive`);
  return value;
}

/** Fills in defaults and rejects anything non-numeric, below the minimum or above the operator's maximum. */
export function resolveLimits(
  requested: Partial<ResourceLimits> | undefined,
  defaults: Readonly<ResourceLimits> = DEFAULT_LIMITS,
  max: Readonly<ResourceLimits> = DEFAULT_MAX_LIMITS,
): ResourceLimits {
  const out = { ...defaults };
  if (requested !== undefined && (typeof requested !== 'object' || requested === null)) {
    throw new PalisadeError('INVALID_LIMIT', 'limits must be an object');
  }
  for (const [key, value] of Object.entries(requested ?? {})) {
    if (!(key in DEFAULT_LIMITS)) {
      throw new PalisadeError(
        'INVALID_LIMIT',
        `unknown limit ${JSON.stringify(key)}; known limits: ${Object.keys(DEFAULT_LIMITS).join(', ')}`,
      );
    }
    if (value === undefined) continue;
    const k = key as keyof ResourceLimits;
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw new PalisadeError('INVALID_LIMIT', `limit ${k} must be a finite number`);
    }
    if (k !== 'cpus' && !Number.isInteger(value)) {
      throw new PalisadeError('INVALID_LIMIT', `limit ${k} must be a whole number`);
    }
    if (value < MINIMUMS[k] || value > max[k]) {
      throw new PalisadeError(
        'INVALID_LIMIT',
        `limit ${k}=${value} is outside the allowed range ${MINIMUMS[k]}..${max[k]}`,
        { limit: k },
      );
    }
    out[k] = value;
  }
  return out;
}
