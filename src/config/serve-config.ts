/**
 * `palisade serve --config FILE`: the serve flags as a YAML or JSON file. The keys are the
 * flag names (`port`, `data-dir`, `cors-origin`, …), so every flag has a key and nothing else
 * does; unknown keys and wrong types are errors naming the file, the line and the key.
 * Flags given on the command line override the file.
 */
import { dirname, isAbsolute, resolve } from 'node:path';
import { LineCounter, isMap, isScalar, parseDocument, type Document } from 'yaml';
import { PalisadeError } from '../errors/index.js';
import { readOperatorFile } from './operator-file.js';

/** The shape of a node:util parseArgs option (only what the loader needs). */
export interface FlagSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
}

export type FlagValue = string | boolean | string[];
export type FlagValues = Record<string, FlagValue | undefined>;

export interface ServeConfigSchema {
  /** The command's flags (its parseArgs `options`). */
  flags: Readonly<Record<string, FlagSpec>>;
  /** Flags that have no config key (internal flags, --config itself, --help). */
  exclude: readonly string[];
  /** Keys whose relative values are paths, resolved against the config file's directory. */
  pathKeys: readonly string[];
}

export const MAX_CONFIG_BYTES = 256 * 1024;
const MAX_LIST_ENTRIES = 1000;
const MAX_VALUE_BYTES = 4096;

function configError(file: string, where: string, problem: string): never {
  throw new PalisadeError('INVALID_CONFIG', `${file}${where}: ${problem}`, { file });
}

/** The keys a config file may have. */
export function configKeys(schema: ServeConfigSchema): string[] {
  return Object.keys(schema.flags)
    .filter((k) => !schema.exclude.includes(k))
    .sort();
}

function checkString(value: string, file: string, where: string, key: string): string {
  if (Buffer.byteLength(value, 'utf8') > MAX_VALUE_BYTES)
    configError(file, where, `"${key}" is longer than ${MAX_VALUE_BYTES} bytes`);
  if (/[\u0000-\u001f\u007f]/.test(value))
    configError(file, where, `"${key}" contains a control character`);
  return value;
}

/** Parses config text (YAML or JSON) against the schema. `file` names it in errors. */
export function parseServeConfig(
  text: string,
  file: string,
  schema: ServeConfigSchema,
): Record<string, FlagValue> {
  const lineCounter = new LineCounter();
  let doc: Document;
  try {
    doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  } catch (err) {
    configError(file, '', `not valid YAML or JSON (${(err as Error).message.split('\n')[0]})`);
  }
  const firstError = doc.errors[0];
  if (firstError !== undefined) {
    const pos = lineCounter.linePos(firstError.pos[0]);
    configError(
      file,
      `:${pos.line}:${pos.col}`,
      `not valid YAML or JSON: ${firstError.message.split('\n')[0]}`,
    );
  }
  const contents = doc.contents;
  if (contents === null) return {};
  if (!isMap(contents)) configError(file, '', 'a configuration file must be a map of options');
  let js: Record<string, unknown>;
  try {
    js = doc.toJS({ maxAliasCount: 0 }) as Record<string, unknown>;
  } catch (err) {
    configError(file, '', `cannot be read: ${(err as Error).message.split('\n')[0]}`);
  }
  const allowed = configKeys(schema);
  const out: Record<string, FlagValue> = {};
  for (const pair of contents.items) {
    const keyNode = pair.key;
    const where =
      isScalar(keyNode) && keyNode.range ? `:${lineCounter.linePos(keyNode.range[0]).line}` : '';
    const key = isScalar(keyNode) ? keyNode.value : undefined;
    if (typeof key !== 'string') configError(file, where, 'every key must be a string');
    const spec = schema.flags[key];
    if (!spec || !allowed.includes(key)) {
      configError(
        file,
        where,
        `unknown key "${key.slice(0, 64)}"; allowed keys are ${allowed.join(', ')}`,
      );
    }
    const value: unknown = js[key];
    if (spec.type === 'boolean') {
      if (typeof value !== 'boolean') configError(file, where, `"${key}" must be true or false`);
      out[key] = value;
      continue;
    }
    const scalar = (v: unknown): string => {
      if (typeof v === 'string') return checkString(v, file, where, key);
      if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return String(v);
      return configError(
        file,
        where,
        `"${key}" must be a ${spec.multiple ? 'string or a list of strings' : 'string'}`,
      );
    };
    let result: string | string[];
    if (spec.multiple) {
      const list = Array.isArray(value) ? value : [value];
      if (list.length > MAX_LIST_ENTRIES)
        configError(file, where, `"${key}" has more than ${MAX_LIST_ENTRIES} entries`);
      result = list.map(scalar);
    } else {
      result = scalar(value);
    }
    if (schema.pathKeys.includes(key)) {
      const base = dirname(resolve(file));
      result = Array.isArray(result)
        ? result.map((p) => (isAbsolute(p) ? p : resolve(base, p)))
        : isAbsolute(result)
          ? result
          : resolve(base, result);
    }
    out[key] = result;
  }
  return out;
}

/** Reads (ownership, mode and size checked) and parses a serve configuration file. */
export function loadServeConfig(
  path: string,
  schema: ServeConfigSchema,
): Record<string, FlagValue> {
  const text = readOperatorFile(path, { what: 'configuration file', maxBytes: MAX_CONFIG_BYTES });
  return parseServeConfig(text, path, schema);
}

/** Command-line flags override the file, key by key (a list flag replaces the file's list). */
export function mergeFlagValues<T extends FlagValues>(fromFile: FlagValues, fromFlags: T): T {
  const merged: FlagValues = { ...fromFile };
  for (const [key, value] of Object.entries(fromFlags)) {
    if (value !== undefined) merged[key] = value;
  }
  return merged as T;
}

/** Turns values back into command-line flags (how a supervisor passes them to its worker). */
export function toFlagArgs(
  values: FlagValues,
  flags: Readonly<Record<string, FlagSpec>>,
): string[] {
  const args: string[] = [];
  for (const [key, value] of Object.entries(values)) {
    const spec = flags[key];
    if (!spec || value === undefined) continue;
    if (spec.type === 'boolean') {
      if (value === true) args.push(`--${key}`);
    } else if (Array.isArray(value)) {
      for (const v of value) args.push(`--${key}=${v}`);
    } else if (typeof value === 'string') {
      args.push(`--${key}=${value}`);
    }
  }
  return args;
}
