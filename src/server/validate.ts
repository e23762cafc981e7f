import { PalisadeError } from '../errors/index.js';

export const SANDBOX_ID_RE = /^sb-[a-z2-7]{20}$/;
export const EXEC_ID_RE = /^ex-[a-z2-7]{20}$/;
export const MAX_LABELS = 32;
const LABEL_KEY_RE =
  /^([a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE_RE = /^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$/;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,255}$/;
const MAX_ENV_VARS = 256;
const MAX_ENV_VALUE_CHARS = 32 * 1024;
const MAX_ENV_TOTAL_CHARS = 256 * 1024;

export function assertSandboxId(id: string): void {
  if (!SANDBOX_ID_RE.test(id)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `Invalid sandbox id ${JSON.stringify(id.slice(0, 40))}: ids look like sb- followed by 20 characters a-z, 2-7.`,
    );
  }
}

export function assertExecId(id: string): void {
  if (!EXEC_ID_RE.test(id)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `Invalid execution id ${JSON.stringify(id.slice(0, 40))}: ids look like ex- followed by 20 characters a-z, 2-7.`,
    );
  }
}

/** Kubernetes-style label syntax so label selectors stay unambiguous. */
export function validateLabels(labels: Record<string, string> | undefined): Record<string, string> {
  if (labels === undefined) return {};
  const entries = Object.entries(labels);
  if (entries.length > MAX_LABELS) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `Too many labels (${entries.length}); at most ${MAX_LABELS} are allowed.`,
    );
  }
  for (const [key, value] of entries) {
    if (key.length > 253 || !LABEL_KEY_RE.test(key)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `Invalid label key ${JSON.stringify(key.slice(0, 64))}: use an optional dns-prefix/ and a name of 1-63 characters [A-Za-z0-9._-] that starts and ends alphanumeric.`,
      );
    }
    if (typeof value !== 'string' || !LABEL_VALUE_RE.test(value)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `Invalid value for label ${JSON.stringify(key)}: use 0-63 characters [A-Za-z0-9._-] that start and end alphanumeric.`,
      );
    }
  }
  return { ...labels };
}

/**
 * Syntax checks done before the engine (which also validates and rejects dangerous names):
 * names are identifiers, values carry no NUL, sizes are bounded.
 */
export function validateEnvSyntax(
  env: Record<string, string> | undefined,
  what = 'env',
): Record<string, string> {
  if (env === undefined) return {};
  const entries = Object.entries(env);
  if (entries.length > MAX_ENV_VARS) {
    throw new PalisadeError(
      'INVALID_ENV',
      `${what} has ${entries.length} variables; at most ${MAX_ENV_VARS} are allowed.`,
    );
  }
  let total = 0;
  for (const [name, value] of entries) {
    if (!ENV_NAME_RE.test(name)) {
      throw new PalisadeError(
        'INVALID_ENV',
        `${what}: invalid variable name ${JSON.stringify(name.slice(0, 64))}; names must match [A-Za-z_][A-Za-z0-9_]* (at most 256 characters).`,
      );
    }
    if (
      typeof value !== 'string' ||
      value.includes('\u0000') ||
      value.length > MAX_ENV_VALUE_CHARS
    ) {
      throw new PalisadeError(
        'INVALID_ENV',
        `${what}: the value of ${name} must be a string without NUL bytes, at most ${MAX_ENV_VALUE_CHARS} characters.`,
      );
    }
    total += name.length + value.length;
  }
  if (total > MAX_ENV_TOTAL_CHARS) {
    throw new PalisadeError(
      'INVALID_ENV',
      `${what} is too large; at most ${MAX_ENV_TOTAL_CHARS} characters in total.`,
    );
  }
  return { ...env };
}

export interface LabelRequirement {
  key: string;
  op: '=' | '!=' | 'exists';
  value?: string;
}

/** Parses `a=b,c!=d,e` (equality, inequality, existence). */
export function parseLabelSelector(selector: string): LabelRequirement[] {
  if (selector.trim() === '') return [];
  const out: LabelRequirement[] = [];
  for (const rawPart of selector.split(',')) {
    const part = rawPart.trim();
    const m = /^([^=!\s]+)\s*(!=|==|=)?\s*([^=!\s]*)$/.exec(part);
    const key = m?.[1];
    if (!m || key === undefined || !LABEL_KEY_RE.test(key)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `Invalid label selector part ${JSON.stringify(part.slice(0, 64))}: use key=value, key!=value or key, separated by commas.`,
      );
    }
    const op = m[2];
    const value = m[3] ?? '';
    if (op === undefined) {
      if (value !== '')
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          `Invalid label selector part ${JSON.stringify(part)}.`,
        );
      out.push({ key, op: 'exists' });
      continue;
    }
    if (!LABEL_VALUE_RE.test(value)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `Invalid label value in selector part ${JSON.stringify(part.slice(0, 64))}.`,
      );
    }
    out.push({ key, op: op === '!=' ? '!=' : '=', value });
  }
  return out;
}

export function matchesSelector(
  labels: Record<string, string>,
  requirements: LabelRequirement[],
): boolean {
  return requirements.every((r) => {
    const has = Object.prototype.hasOwnProperty.call(labels, r.key);
    if (r.op === 'exists') return has;
    if (r.op === '=') return has && labels[r.key] === r.value;
    return !has || labels[r.key] !== r.value;
  });
}
