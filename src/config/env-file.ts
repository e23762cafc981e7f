/**
 * `--environment-file FILE`: dotenv syntax, but it may set only the documented PALISADE_* variables.
 * An env file that could set any name would let whoever writes it run code in Palisade
 * (NODE_OPTIONS=--require, LD_PRELOAD, PATH) — seed 003 U3. A refused name rejects the whole
 * file: nothing is set, and the error names the variable and the line.
 */
import { PalisadeError } from '../errors/index.js';
import { readOperatorFile } from './operator-file.js';

/** Every variable an env file may set, and what it means (docs/config.md). */
export const ENV_FILE_VARIABLES: Readonly<Record<string, string>> = Object.freeze({
  PALISADE_URL: 'server URL for the client commands and the SDK',
  PALISADE_API_KEY: 'API key for the client commands and the SDK',
  PALISADE_DATA_DIR: 'data directory of serve, keys and audit when --data-dir is not given',
});

export const MAX_ENV_FILE_BYTES = 64 * 1024;
export const MAX_ENV_VALUE_BYTES = 4096;
const NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
// C0 controls (NUL, newline, escape sequences…) and DEL never belong in these values.
const CONTROL_RE = /[\u0000-\u001f\u007f]/;

function refuse(source: string, line: number, problem: string, variable?: string): never {
  throw new PalisadeError('INVALID_CONFIG', `${source}:${line}: ${problem}`, {
    file: source,
    line,
    ...(variable !== undefined ? { variable } : {}),
  });
}

function unquote(raw: string, source: string, line: number): string {
  const first = raw[0];
  if (first === "'" || first === '"') {
    let value = '';
    let i = 1;
    for (; i < raw.length; i++) {
      const c = raw[i]!;
      if (c === first) break;
      if (c === '\\' && first === '"') {
        const next = raw[i + 1];
        if (next !== '"' && next !== '\\')
          refuse(source, line, 'only \\" and \\\\ escapes are supported inside double quotes');
        value += next;
        i++;
        continue;
      }
      value += c;
    }
    if (i >= raw.length) refuse(source, line, `unterminated ${first} quote (values are one line)`);
    const rest = raw.slice(i + 1).trim();
    if (rest !== '' && !rest.startsWith('#'))
      refuse(source, line, 'unexpected text after the closing quote');
    return value;
  }
  const comment = raw.search(/\s#/);
  return (comment >= 0 ? raw.slice(0, comment) : raw).trim();
}

function checkValue(name: string, value: string, source: string, line: number): void {
  if (Buffer.byteLength(value, 'utf8') > MAX_ENV_VALUE_BYTES)
    refuse(source, line, `${name} is longer than ${MAX_ENV_VALUE_BYTES} bytes`, name);
  if (CONTROL_RE.test(value))
    refuse(source, line, `${name} contains a control character (NUL, newline, …)`, name);
  if (value === '') refuse(source, line, `${name} is empty; remove the line instead`, name);
  if (name === 'PALISADE_URL' && !/^https?:\/\/[^\s]+$/.test(value))
    refuse(source, line, `${name} must be an http:// or https:// URL`, name);
  if (name === 'PALISADE_API_KEY' && /\s/.test(value))
    refuse(source, line, `${name} contains whitespace; check how it was copied`, name);
  if (name === 'PALISADE_DATA_DIR' && !value.startsWith('/'))
    refuse(source, line, `${name} must be an absolute path`, name);
}

/** Parses env-file text; throws INVALID_CONFIG naming `source`, the line and the variable. */
export function parseEnvFile(text: string, source: string): Record<string, string> {
  if (Buffer.byteLength(text, 'utf8') > MAX_ENV_FILE_BYTES)
    refuse(source, 0, `the env file is larger than ${MAX_ENV_FILE_BYTES} bytes`);
  const out: Record<string, string> = {};
  const lines = text.split(/\r?\n/);
  lines.forEach((rawLine, index) => {
    const line = index + 1;
    const trimmed = rawLine.trim();
    if (trimmed === '' || trimmed.startsWith('#')) return;
    const body = trimmed.startsWith('export ') ? trimmed.slice(7).trimStart() : trimmed;
    const eq = body.indexOf('=');
    if (eq <= 0) refuse(source, line, 'expected NAME=value');
    const name = body.slice(0, eq).trim();
    if (!NAME_RE.test(name))
      refuse(source, line, `${JSON.stringify(name.slice(0, 64))} is not a variable name`);
    if (!Object.hasOwn(ENV_FILE_VARIABLES, name)) {
      refuse(
        source,
        line,
        `${name} is not a Palisade setting and is never set from an env file; an env file may set only ${Object.keys(ENV_FILE_VARIABLES).join(', ')}. Remove the line (set other variables in the service manager, where they are visible).`,
        name,
      );
    }
    if (Object.hasOwn(out, name)) refuse(source, line, `${name} is set twice`, name);
    const value = unquote(body.slice(eq + 1).trim(), source, line);
    checkValue(name, value, source, line);
    out[name] = value;
  });
  return out;
}

/** Reads and validates an env file (ownership and mode checked, size bounded). */
export function loadEnvFile(path: string): Record<string, string> {
  const text = readOperatorFile(path, { what: 'env file', maxBytes: MAX_ENV_FILE_BYTES });
  return parseEnvFile(text, path);
}

/**
 * Loads `path` and sets its variables in `env`; a variable already set in `env` keeps its
 * value (the service manager's environment wins, as with dotenv). Returns the names set.
 * Nothing is set if any line is refused.
 */
export function applyEnvFile(
  path: string,
  env: Record<string, string | undefined> = process.env,
): string[] {
  const values = loadEnvFile(path);
  const set: string[] = [];
  for (const [name, value] of Object.entries(values)) {
    if (env[name] !== undefined) continue;
    env[name] = value;
    set.push(name);
  }
  return set;
}
