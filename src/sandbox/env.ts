import { PalisadeError } from '../errors/index.js';

/** Environment every exec starts from; nothing of the host's environment is inherited. */
export const BASE_ENV: Readonly<Record<string, string>> = Object.freeze({
  PATH: '/usr/local/bin:/usr/bin:/bin',
  HOME: '/workspace',
  LANG: 'C.UTF-8',
  TERM: 'xterm',
});

export const ENV_LIMITS = Object.freeze({
  maxVariables: 256,
  maxNameBytes: 256,
  maxValueBytes: 32 * 1024,
  maxTotalBytes: 256 * 1024,
});

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Names that change how the dynamic loader, libc or a shell behaves before the program the
 * caller asked for runs. Rejected even though the sandbox confines the result: a caller
 * passing them is either confused or trying to subvert the command being run.
 */
const DANGEROUS_NAMES = new Set([
  'BASH_ENV',
  'ENV',
  'SHELLOPTS',
  'BASHOPTS',
  'PS4',
  'PROMPT_COMMAND',
  'IFS',
  'CDPATH',
  'GLOBIGNORE',
  'GCONV_PATH',
  'GLIBC_TUNABLES',
  'HOSTALIASES',
  'LOCALDOMAIN',
  'RES_OPTIONS',
  'NODE_OPTIONS',
  'PERL5OPT',
  'PERL5LIB',
  'RUBYOPT',
  'PYTHONSTARTUP',
  'PYTHONINSPECT',
  'JAVA_TOOL_OPTIONS',
  '_JAVA_OPTIONS',
]);
const DANGEROUS_PREFIXES = ['LD_', 'BASH_FUNC_', 'MALLOC_'];

function isDangerous(name: string): boolean {
  return DANGEROUS_NAMES.has(name) || DANGEROUS_PREFIXES.some((p) => name.startsWith(p));
}

/**
 * Validates caller-supplied environment variables. Throws INVALID_ENV naming the first bad
 * variable and what to change; never truncates or silently drops anything.
 */
export function validateEnv(env: unknown, what = 'env'): Record<string, string> {
  if (env === undefined || env === null) return {};
  if (typeof env !== 'object' || Array.isArray(env)) {
    throw new PalisadeError('INVALID_ENV', `${what} must be an object of NAME: value strings`);
  }
  const entries = Object.entries(env as Record<string, unknown>);
  if (entries.length > ENV_LIMITS.maxVariables) {
    throw new PalisadeError(
      'INVALID_ENV',
      `${what} has ${entries.length} variables; at most ${ENV_LIMITS.maxVariables} are allowed`,
    );
  }
  let total = 0;
  const out: Record<string, string> = {};
  for (const [name, value] of entries) {
    if (name.length > ENV_LIMITS.maxNameBytes || !NAME.test(name)) {
      throw new PalisadeError(
        'INVALID_ENV',
        `${what}: invalid variable name ${JSON.stringify(name.slice(0, 64))}; names must match [A-Za-z_][A-Za-z0-9_]* (at most ${ENV_LIMITS.maxNameBytes} characters)`,
        { name: name.slice(0, 64) },
      );
    }
    if (isDangerous(name)) {
      throw new PalisadeError(
        'INVALID_ENV',
        `${what}: ${name} is not allowed because it changes how programs are loaded or how the shell runs them; remove it`,
        { name },
      );
    }
    if (typeof value !== 'string') {
      throw new PalisadeError('INVALID_ENV', `${what}: the value of ${name} must be a string`, {
        name,
      });
    }
    if (/[\0\n\r]/.test(value)) {
      throw new PalisadeError(
        'INVALID_ENV',
        `${what}: the value of ${name} contains a NUL byte or a line break; remove it`,
        { name },
      );
    }
    const bytes = Buffer.byteLength(value);
    if (bytes > ENV_LIMITS.maxValueBytes) {
      throw new PalisadeError(
        'INVALID_ENV',
        `${what}: the value of ${name} is ${bytes} bytes; at most ${ENV_LIMITS.maxValueBytes} are allowed`,
        { name },
      );
    }
    total += bytes + name.length + 2;
    if (total > ENV_LIMITS.maxTotalBytes) {
      throw new PalisadeError(
        'INVALID_ENV',
        `${what} is larger than ${ENV_LIMITS.maxTotalBytes} bytes in total; pass less`,
      );
    }
    out[name] = value;
  }
  return out;
}

/** Later layers override earlier ones; every layer must already be validated. */
export function composeEnv(...layers: Array<Record<string, string> | undefined>): string[] {
  const merged: Record<string, string> = {};
  for (const layer of layers) if (layer) Object.assign(merged, layer);
  return Object.entries(merged).map(([k, v]) => `${k}=${v}`);
}
