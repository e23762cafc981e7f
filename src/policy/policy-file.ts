/**
 * Policy files (YAML or JSON — JSON is parsed as YAML 1.2, which also gives line numbers).
 * Shape:
 *   permissions: { default?, notUnderstood?, deny?: [rule], ask?: [rule], allow?: [rule] }
 *   network:     { allow?: [egress rule], deny?: [egress rule] }
 * Unknown keys are errors. Every error names the source, the line (when known) and the field.
 */
import { readFile, stat } from 'node:fs/promises';
import { LineCounter, parseDocument, isMap, isNode, isScalar, type Document } from 'yaml';
import { PalisadeError, isPalisadeError } from '../errors/index.js';
import { parseEgressPolicy } from './network/index.js';
import { compileRule, parseRule } from './rules.js';
import type { LayerName, Permissions, PermissionRule, PolicyLayer } from './types.js';

export const MAX_POLICY_BYTES = 1024 * 1024;
export const MAX_RULES_PER_LIST = 10_000;

const LAYERS: ReadonlySet<string> = new Set(['operator', 'tenant', 'sandbox']);
const TOP_KEYS = ['permissions', 'network'];
const PERMISSION_KEYS = ['default', 'notUnderstood', 'deny', 'ask', 'allow'];
const NETWORK_KEYS = ['allow', 'deny'];

/** `:line` for a value (or, with `key`, for that key inside the map at path); '' when unknown. */
type Locate = (path: ReadonlyArray<string | number>, key?: string) => string;

function fail(source: string, where: string, problem: string, cause?: unknown): never {
  throw new PalisadeError(
    'INVALID_POLICY',
    `${source}${where}: ${problem}`,
    { source },
    cause === undefined ? undefined : { cause },
  );
}

function checkLayer(layer: string): LayerName {
  if (!LAYERS.has(layer)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `unknown policy layer "${layer}"; use operator, tenant or sandbox`,
    );
  }
  return layer as LayerName;
}

/** Read and validate a policy file. */
export async function loadPolicyFile(
  path: string,
  layer: LayerName = 'sandbox',
): Promise<PolicyLayer> {
  checkLayer(layer);
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (err) {
    throw new PalisadeError(
      'INVALID_POLICY',
      `cannot read policy file ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}; check the path and permissions`,
    );
  }
  if (size > MAX_POLICY_BYTES) {
    throw new PalisadeError(
      'INVALID_POLICY',
      `${path}: policy file is ${size} bytes; the limit is ${MAX_POLICY_BYTES}`,
    );
  }
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new PalisadeError(
      'INVALID_POLICY',
      `cannot read policy file ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}; check the path and permissions`,
    );
  }
  return parsePolicy(text, path, layer);
}

/** Parse policy text (YAML or JSON). `source` names it in errors. */
export function parsePolicy(
  text: string,
  source: string,
  layer: LayerName = 'sandbox',
): PolicyLayer {
  checkLayer(layer);
  if (typeof text !== 'string')
    throw new PalisadeError('INVALID_POLICY', `${source}: policy text must be a string`);
  if (Buffer.byteLength(text, 'utf8') > MAX_POLICY_BYTES)
    fail(source, '', `policy is larger than ${MAX_POLICY_BYTES} bytes`);
  const lineCounter = new LineCounter();
  let doc: Document;
  try {
    doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  } catch (err) {
    fail(source, '', `not valid YAML or JSON (${(err as Error).message.split('\n')[0]})`);
  }
  const firstError = doc.errors[0];
  if (firstError !== undefined) {
    const pos = lineCounter.linePos(firstError.pos[0]);
    fail(
      source,
      `:${pos.line}:${pos.col}`,
      `not valid YAML or JSON: ${firstError.message.split('\n')[0]}`,
    );
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 0 });
  } catch (err) {
    fail(source, '', `cannot be read: ${(err as Error).message.split('\n')[0]}`);
  }
  const locate: Locate = (path, key) => {
    let node: unknown = path.length === 0 ? doc.contents : doc.getIn(path, true);
    if (key !== undefined && isMap(node)) {
      node = node.items.find((pair) => isScalar(pair.key) && pair.key.value === key)?.key;
    }
    if (isNode(node) && node.range) return `:${lineCounter.linePos(node.range[0]).line}`;
    return '';
  };
  return buildLayer(value, source, layer, locate);
}

/** Validate an already-parsed policy object (for API bodies). */
export function parsePolicyObject(
  value: unknown,
  source: string,
  layer: LayerName = 'sandbox',
): PolicyLayer {
  checkLayer(layer);
  return buildLayer(value, source, layer, () => '');
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function fieldName(path: ReadonlyArray<string | number>): string {
  return path
    .map((p) => (typeof p === 'number' ? `[${p}]` : `.${p}`))
    .join('')
    .replace(/^\./, '');
}

function checkKeys(
  obj: Record<string, unknown>,
  allowed: string[],
  path: string[],
  source: string,
  locate: Locate,
): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) {
      const where = path.length === 0 ? 'top level' : `"${fieldName(path)}"`;
      fail(
        source,
        locate(path, key),
        `unknown key "${key}" at ${where}; allowed keys are ${allowed.join(', ')}`,
      );
    }
  }
}

function buildLayer(value: unknown, source: string, layer: LayerName, locate: Locate): PolicyLayer {
  if (value === null || value === undefined) value = {};
  if (!isPlainObject(value))
    fail(source, locate([]), 'a policy must be an object with "permissions" and/or "network"');
  checkKeys(value, TOP_KEYS, [], source, locate);
  const permissions = buildPermissions(value['permissions'], source, locate);
  const networkValue = value['network'] ?? {};
  if (!isPlainObject(networkValue))
    fail(
      source,
      locate(['network']),
      '"network" must be an object with "allow" and/or "deny" lists',
    );
  checkKeys(networkValue, NETWORK_KEYS, ['network'], source, locate);
  for (const key of NETWORK_KEYS) {
    const list = networkValue[key];
    if (list === undefined) continue;
    if (!Array.isArray(list))
      fail(source, locate(['network', key]), `"network.${key}" must be a list of strings`);
    if (list.length > MAX_RULES_PER_LIST)
      fail(
        source,
        locate(['network', key]),
        `"network.${key}" has more than ${MAX_RULES_PER_LIST} entries`,
      );
  }
  let network;
  try {
    network = parseEgressPolicy({ allow: networkValue['allow'], deny: networkValue['deny'] });
  } catch (err) {
    if (!isPalisadeError(err)) throw err;
    // The network module names the entry as `allow[0]`; point at its line.
    const field =
      typeof err.details?.['field'] === 'string' ? (err.details['field'] as string) : '';
    const m = /^(allow|deny)\[(\d+)\]$/.exec(field);
    const where = m ? locate(['network', m[1] as string, Number(m[2])]) : locate(['network']);
    fail(source, where, `network.${err.message}`, err);
  }
  return { name: layer, source, permissions, network };
}

function buildPermissions(value: unknown, source: string, locate: Locate): Permissions {
  const out: Permissions = { default: null, notUnderstood: null, deny: [], ask: [], allow: [] };
  if (value === undefined || value === null) return out;
  if (!isPlainObject(value))
    fail(source, locate(['permissions']), '"permissions" must be an object');
  checkKeys(value, PERMISSION_KEYS, ['permissions'], source, locate);
  const def = value['default'];
  if (def !== undefined) {
    if (def !== 'allow' && def !== 'ask' && def !== 'deny') {
      fail(
        source,
        locate(['permissions', 'default']),
        '"permissions.default" must be "allow", "ask" or "deny"',
      );
    }
    out.default = def;
  }
  const nu = value['notUnderstood'];
  if (nu !== undefined) {
    if (nu !== 'ask' && nu !== 'deny') {
      fail(
        source,
        locate(['permissions', 'notUnderstood']),
        '"permissions.notUnderstood" must be "ask" or "deny" (never allow)',
      );
    }
    out.notUnderstood = nu;
  }
  for (const effect of ['deny', 'ask', 'allow'] as const) {
    const list = value[effect];
    if (list === undefined) continue;
    if (!Array.isArray(list))
      fail(
        source,
        locate(['permissions', effect]),
        `"permissions.${effect}" must be a list of rule strings`,
      );
    if (list.length > MAX_RULES_PER_LIST)
      fail(
        source,
        locate(['permissions', effect]),
        `"permissions.${effect}" has more than ${MAX_RULES_PER_LIST} rules`,
      );
    const rules: PermissionRule[] = [];
    list.forEach((item: unknown, index: number) => {
      try {
        const rule = parseRule(item, effect);
        compileRule(rule, '/workspace'); // validates tool-specific specifiers now, not at decision time
        rules.push(rule);
      } catch (err) {
        if (!isPalisadeError(err)) throw err;
        fail(
          source,
          locate(['permissions', effect, index]),
          `"permissions.${effect}[${index}]": ${err.message}`,
          err,
        );
      }
    });
    out[effect] = rules;
  }
  return out;
}
