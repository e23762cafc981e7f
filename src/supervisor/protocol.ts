/**
 * The supervisor protocol: newline-delimited JSON frames over a local unix socket between the
 * unprivileged HTTP worker (client) and the root supervisor (server). The supervisor does not
 * trust the worker, so every request is checked against a strict schema here: exact keys, types,
 * sizes and id formats. Anything else is a protocol violation and the connection is closed.
 */
import { PalisadeError } from '../errors/index.js';
import type { EgressEvent } from '../egress/index.js';
import { SANDBOX_ID_PATTERN } from '../sandbox/index.js';

/** Largest frame either side accepts (one JSON line, without the newline). */
export const MAX_FRAME_BYTES = 1024 * 1024;
/** Stdin and output data are cut into pieces of at most this many bytes per frame. */
export const DATA_CHUNK_BYTES = 256 * 1024;

const MAX_ARGV = 4096;
const MAX_ARG_BYTES = 128 * 1024;
const MAX_COMMAND_BYTES = 256 * 1024;
const MAX_PATH_BYTES = 4096;
const MAX_MAP_ENTRIES = 256;
const MAX_MAP_KEY_BYTES = 256;
const MAX_MAP_VALUE_BYTES = 32 * 1024;
const MAX_REASON_BYTES = 1024;
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGKILL', 'SIGHUP', 'SIGQUIT'] as const;
const LIMIT_KEYS = ['memoryBytes', 'swapBytes', 'pids', 'cpus', 'diskBytes', 'tmpBytes'] as const;
/**
 * Egress rules per list in a netPolicy frame. The API allows 1000 per list in a sandbox layer;
 * the worker sends the enforced rules, whose deny list also carries the operator's denies.
 */
export const MAX_WIRE_EGRESS_RULES = 4000;
/** Longest egress rule text (the policy engine's own limit is 512 characters). */
const MAX_WIRE_EGRESS_RULE_BYTES = 1024;

export type SignalName = (typeof SIGNALS)[number];

export interface CreateOptionsWire {
  limits?: Partial<Record<(typeof LIMIT_KEYS)[number], number>>;
  env?: Record<string, string>;
  labels?: Record<string, string>;
  /**
   * true: attach the new sandbox to the supervisor's egress gateway. Until a netPolicy frame
   * sets its rules, its proxy refuses everything.
   */
  network?: true;
}

/** Egress rules as text; the supervisor parses them (parseEgressPolicy) and applies its bounds. */
export interface EgressRulesWire {
  allow: string[];
  deny: string[];
}

export interface ExecRequestWire {
  argv?: string[];
  command?: string;
  cwd?: string;
  env?: Record<string, string>;
  openStdin?: boolean;
  timeoutMs?: number;
  maxOutputBytes?: number;
}

/** Worker → supervisor. `id` is the worker's request number; exec control ops name an exec by the id of the request that started it. */
export type Request =
  | { t: 'create'; id: number; options: CreateOptionsWire }
  | { t: 'exec'; id: number; sandboxId: string; request: ExecRequestWire }
  | { t: 'stdin'; id: number; exec: number; data: string }
  | { t: 'closeStdin'; id: number; exec: number }
  | { t: 'signal'; id: number; exec: number; signal: SignalName }
  | { t: 'interrupt'; id: number; exec: number }
  | { t: 'kill'; id: number; exec: number }
  | { t: 'destroy'; id: number; sandboxId: string; reason?: string }
  | { t: 'pause'; id: number; sandboxId: string }
  | { t: 'resume'; id: number; sandboxId: string }
  | { t: 'stats'; id: number; sandboxId: string }
  | { t: 'netPolicy'; id: number; sandboxId: string; policy: EgressRulesWire }
  | { t: 'netDetach'; id: number; sandboxId: string }
  | { t: 'close'; id: number };

export interface SandboxInfoWire {
  id: string;
  backend: string;
  template: { kind: 'host' };
  state: string;
  reason: string;
  createdAt: string;
  limits: Record<string, number>;
  labels: Record<string, string>;
  hostUid: number;
  cgroupsEnforced: boolean;
}

export interface ExecResultWire {
  exitCode: number | null;
  signal: string | null;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  timedOut: boolean;
  interrupted: boolean;
  durationMs: number;
}

export interface EgressStatsWire {
  activeConnections: number;
  bytesIn: number;
  bytesOut: number;
  denied: number;
}

/** Supervisor → worker. */
export type Event =
  | { t: 'hello'; backend: string }
  | { t: 'res'; id: number; ok: true; value?: unknown }
  | { t: 'res'; id: number; ok: false; error: { code: string; message: string } }
  | { t: 'out'; exec: number; stream: 'stdout' | 'stderr'; data: string }
  | { t: 'done'; exec: number; result: ExecResultWire }
  /** The exec ended without a result (e.g. its sandbox was destroyed or its agent died). */
  | { t: 'execFailed'; exec: number; error: { code: string; message: string } }
  | { t: 'state'; info: SandboxInfoWire }
  | { t: 'removed'; sandboxId: string }
  /** One gateway decision, with the sandbox's gateway stats right after it. */
  | { t: 'egress'; event: EgressEvent; stats: EgressStatsWire | null }
  /** Gateway stats of a sandbox that changed without an event (e.g. a connection opened). */
  | { t: 'egressStats'; sandboxId: string; stats: EgressStatsWire }
  /** Gateway events not forwarded because the worker was not reading fast enough. */
  | { t: 'egressDropped'; count: number }
  | { t: 'protocolError'; message: string };

function violation(message: string): PalisadeError {
  return new PalisadeError('INVALID_ARGUMENT', `supervisor protocol: ${message}`);
}

type Obj = Record<string, unknown>;

function isObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Exactly these keys (required ones present, no others). */
function checkKeys(o: Obj, required: readonly string[], optional: readonly string[], what: string) {
  for (const k of Object.keys(o)) {
    if (!required.includes(k) && !optional.includes(k)) {
      throw violation(`${what}: unexpected field ${JSON.stringify(k.slice(0, 64))}`);
    }
  }
  for (const k of required) if (!(k in o)) throw violation(`${what}: missing field ${k}`);
}

function byteLength(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

function str(v: unknown, max: number, what: string): string {
  if (typeof v !== 'string') throw violation(`${what} must be a string`);
  if (byteLength(v) > max) throw violation(`${what} is longer than ${max} bytes`);
  if (v.includes('\0')) throw violation(`${what} contains a NUL byte`);
  return v;
}

function requestId(v: unknown, what = 'id'): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
    throw violation(`${what} must be a positive integer`);
  }
  return v;
}

function sandboxId(v: unknown): string {
  if (typeof v !== 'string' || !SANDBOX_ID_PATTERN.test(v)) {
    throw violation('sandboxId must look like sb- followed by 20 base32 characters');
  }
  return v;
}

function nonNegative(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
    throw violation(`${what} must be a non-negative number`);
  }
  return v;
}

function stringMap(v: unknown, what: string): Record<string, string> {
  if (!isObject(v)) throw violation(`${what} must be an object`);
  const entries = Object.entries(v);
  if (entries.length > MAX_MAP_ENTRIES)
    throw violation(`${what} has more than ${MAX_MAP_ENTRIES} entries`);
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [k, value] of entries) {
    str(k, MAX_MAP_KEY_BYTES, `${what} key`);
    out[k] = str(value, MAX_MAP_VALUE_BYTES, `${what}.${k.slice(0, 64)}`);
  }
  return { ...out };
}

function base64(v: unknown, what: string): string {
  if (typeof v !== 'string' || v.length > Math.ceil(DATA_CHUNK_BYTES / 3) * 4) {
    throw violation(`${what} must be base64 of at most ${DATA_CHUNK_BYTES} bytes`);
  }
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0) {
    throw violation(`${what} is not canonical base64`);
  }
  return v;
}

function createOptions(v: unknown): CreateOptionsWire {
  if (!isObject(v)) throw violation('options must be an object');
  checkKeys(v, [], ['limits', 'env', 'labels', 'network'], 'create options');
  const out: CreateOptionsWire = {};
  if (v.limits !== undefined) {
    if (!isObject(v.limits)) throw violation('options.limits must be an object');
    checkKeys(v.limits, [], LIMIT_KEYS, 'options.limits');
    const limits: Record<string, number> = {};
    for (const k of LIMIT_KEYS) {
      if (v.limits[k] !== undefined) limits[k] = nonNegative(v.limits[k], `options.limits.${k}`);
    }
    out.limits = limits;
  }
  if (v.env !== undefined) out.env = stringMap(v.env, 'options.env');
  if (v.labels !== undefined) out.labels = stringMap(v.labels, 'options.labels');
  if (v.network !== undefined) {
    if (v.network !== true) throw violation('options.network must be true when present');
    out.network = true;
  }
  return out;
}

function ruleList(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || v.length > MAX_WIRE_EGRESS_RULES) {
    throw violation(`${what} must be an array of at most ${MAX_WIRE_EGRESS_RULES} rule strings`);
  }
  return v.map((rule, i) => str(rule, MAX_WIRE_EGRESS_RULE_BYTES, `${what}[${i}]`));
}

function egressRules(v: unknown): EgressRulesWire {
  if (!isObject(v)) throw violation('policy must be an object');
  checkKeys(v, ['allow', 'deny'], [], 'policy');
  return { allow: ruleList(v.allow, 'policy.allow'), deny: ruleList(v.deny, 'policy.deny') };
}

function execRequest(v: unknown): ExecRequestWire {
  if (!isObject(v)) throw violation('request must be an object');
  checkKeys(
    v,
    [],
    ['argv', 'command', 'cwd', 'env', 'openStdin', 'timeoutMs', 'maxOutputBytes'],
    'exec request',
  );
  const out: ExecRequestWire = {};
  if ((v.argv === undefined) === (v.command === undefined)) {
    throw violation('exec request needs exactly one of argv and command');
  }
  if (v.argv !== undefined) {
    if (!Array.isArray(v.argv) || v.argv.length === 0 || v.argv.length > MAX_ARGV) {
      throw violation(`argv must be a non-empty array of at most ${MAX_ARGV} strings`);
    }
    out.argv = v.argv.map((a, i) => str(a, MAX_ARG_BYTES, `argv[${i}]`));
  }
  if (v.command !== undefined) out.command = str(v.command, MAX_COMMAND_BYTES, 'command');
  if (v.cwd !== undefined) out.cwd = str(v.cwd, MAX_PATH_BYTES, 'cwd');
  if (v.env !== undefined) out.env = stringMap(v.env, 'env');
  if (v.openStdin !== undefined) {
    if (typeof v.openStdin !== 'boolean') throw violation('openStdin must be a boolean');
    out.openStdin = v.openStdin;
  }
  if (v.timeoutMs !== undefined) out.timeoutMs = nonNegative(v.timeoutMs, 'timeoutMs');
  if (v.maxOutputBytes !== undefined) {
    out.maxOutputBytes = nonNegative(v.maxOutputBytes, 'maxOutputBytes');
  }
  return out;
}

/**
 * Parses and validates one frame from the worker. Throws a PalisadeError describing the first
 * violation; the caller closes the connection.
 */
export function parseRequest(line: string): Request {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    throw violation('frame is not valid JSON');
  }
  if (!isObject(raw)) throw violation('frame must be a JSON object');
  const t = raw.t;
  switch (t) {
    case 'create':
      checkKeys(raw, ['t', 'id', 'options'], [], t);
      return { t, id: requestId(raw.id), options: createOptions(raw.options) };
    case 'exec':
      checkKeys(raw, ['t', 'id', 'sandboxId', 'request'], [], t);
      return {
        t,
        id: requestId(raw.id),
        sandboxId: sandboxId(raw.sandboxId),
        request: execRequest(raw.request),
      };
    case 'stdin':
      checkKeys(raw, ['t', 'id', 'exec', 'data'], [], t);
      return {
        t,
        id: requestId(raw.id),
        exec: requestId(raw.exec, 'exec'),
        data: base64(raw.data, 'data'),
      };
    case 'closeStdin':
    case 'interrupt':
    case 'kill':
      checkKeys(raw, ['t', 'id', 'exec'], [], t);
      return { t, id: requestId(raw.id), exec: requestId(raw.exec, 'exec') };
    case 'signal': {
      checkKeys(raw, ['t', 'id', 'exec', 'signal'], [], t);
      const signal = raw.signal;
      if (typeof signal !== 'string' || !(SIGNALS as readonly string[]).includes(signal)) {
        throw violation(`signal must be one of ${SIGNALS.join(', ')}`);
      }
      return {
        t,
        id: requestId(raw.id),
        exec: requestId(raw.exec, 'exec'),
        signal: signal as SignalName,
      };
    }
    case 'destroy':
      checkKeys(raw, ['t', 'id', 'sandboxId'], ['reason'], t);
      return {
        t,
        id: requestId(raw.id),
        sandboxId: sandboxId(raw.sandboxId),
        ...(raw.reason !== undefined
          ? { reason: str(raw.reason, MAX_REASON_BYTES, 'reason') }
          : {}),
      };
    case 'netPolicy':
      checkKeys(raw, ['t', 'id', 'sandboxId', 'policy'], [], t);
      return {
        t,
        id: requestId(raw.id),
        sandboxId: sandboxId(raw.sandboxId),
        policy: egressRules(raw.policy),
      };
    case 'pause':
    case 'resume':
    case 'stats':
    case 'netDetach':
      checkKeys(raw, ['t', 'id', 'sandboxId'], [], t);
      return { t, id: requestId(raw.id), sandboxId: sandboxId(raw.sandboxId) };
    case 'close':
      checkKeys(raw, ['t', 'id'], [], t);
      return { t, id: requestId(raw.id) };
    default:
      throw violation(`unknown message type ${JSON.stringify(String(t).slice(0, 64))}`);
  }
}

/**
 * Splits a byte stream into lines, refusing any line longer than `maxBytes` (the connection is
 * then unusable: the caller closes it). Memory held is bounded by `maxBytes`.
 */
export class LineReader {
  readonly #maxBytes: number;
  #parts: Buffer[] = [];
  #size = 0;

  constructor(maxBytes = MAX_FRAME_BYTES) {
    this.#maxBytes = maxBytes;
  }

  /** Returns the complete lines in `chunk`; throws once a line exceeds the limit. */
  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl === -1) break;
      const piece = chunk.subarray(start, nl);
      if (this.#size + piece.length > this.#maxBytes) throw this.#tooLong();
      this.#parts.push(piece);
      lines.push(Buffer.concat(this.#parts).toString('utf8'));
      this.#parts = [];
      this.#size = 0;
      start = nl + 1;
    }
    const rest = chunk.subarray(start);
    if (this.#size + rest.length > this.#maxBytes) throw this.#tooLong();
    if (rest.length > 0) {
      this.#parts.push(Buffer.from(rest));
      this.#size += rest.length;
    }
    return lines;
  }

  #tooLong(): PalisadeError {
    return violation(`frame longer than ${this.#maxBytes} bytes`);
  }
}

export function encodeFrame(message: Request | Event): string {
  return `${JSON.stringify(message)}\n`;
}
