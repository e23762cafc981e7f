import { randomBytes } from 'node:crypto';
import { PalisadeError } from '../errors/index.js';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';
export const SANDBOX_ID_PATTERN = /^sb-[a-z2-7]{20}$/;

/** 100 random bits in lowercase base32: unguessable, safe in paths, labels and URLs. */
export function newSandboxId(): string {
  const bytes = randomBytes(20);
  let out = 'sb-';
  for (let i = 0; i < 20; i++) out += ALPHABET[bytes[i]! & 31];
  return out;
}

export function assertSandboxId(id: unknown): asserts id is string {
  if (typeof id !== 'string' || !SANDBOX_ID_PATTERN.test(id)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `invalid sandbox id ${JSON.stringify(String(id).slice(0, 40))}; ids look like sb- followed by 20 characters a-z, 2-7`,
    );
  }
}
