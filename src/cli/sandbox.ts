/**
 * `palisade sandbox create|ls|exec|rm`: a client of the HTTP API through the SDK (src/client).
 * The server address comes from --url or PALISADE_URL (default http://127.0.0.1:7070); the key from PALISADE_API_KEY only
 * (never a flag, so it does not land in shell history or the process list).
 */
import { parseArgs } from 'node:util';
import {
  CommandStreamError,
  ConnectionError,
  InvalidArgumentError,
  PalisadeApiError,
  PalisadeClient,
  PalisadeClientError,
  type SandboxState,
} from '../client/index.js';
import { PalisadeError, type ErrorCode } from '../errors/index.js';

export const SANDBOX_USAGE = `Usage:
  palisade sandbox create [--label K=V]... [--env K=V]... [--memory BYTES] [--timeout MS]
  palisade sandbox ls [--state STATE] [--selector SELECTOR]
  palisade sandbox exec ID [--stream] [--cwd DIR] [--env K=V]... [--timeout MS] -- CMD [ARGS...]
  palisade sandbox rm ID [--purge]

Environment: PALISADE_API_KEY (required), PALISADE_URL (default http://127.0.0.1:7070)
`;

function pairs(list: string[] | undefined, flag: string): Record<string, string> | undefined {
  if (!list || list.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const pair of list) {
    const eq = pair.indexOf('=');
    if (eq <= 0)
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `${flag} expects KEY=VALUE, got ${JSON.stringify(pair)}`,
      );
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

function intFlag(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value))
    throw new PalisadeError('INVALID_ARGUMENT', `${flag} must be a whole number`);
  return Number(value);
}

export async function sandboxCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  let parsed;
  try {
    parsed = parseSandboxArgs(rest);
  } catch (err) {
    throw new PalisadeError('INVALID_ARGUMENT', `${(err as Error).message}\n\n${SANDBOX_USAGE}`);
  }
  const v = parsed.values;
  if (!['create', 'ls', 'exec', 'rm'].includes(sub ?? '')) {
    process.stderr.write(SANDBOX_USAGE);
    return 3;
  }
  const key = process.env.PALISADE_API_KEY;
  if (!key)
    throw new PalisadeError(
      'UNAUTHENTICATED',
      'Set PALISADE_API_KEY to an API key (see palisade keys create).',
    );
  const base = (v.url ?? process.env.PALISADE_URL ?? 'http://127.0.0.1:7070').replace(/\/+$/, '');
  try {
    // The CLI has always accepted any URL the operator gives it; the SDK's default refuses
    // plain HTTP to non-loopback hosts, so keep the CLI's behaviour explicitly.
    const client = new PalisadeClient({ baseUrl: base, apiKey: key, allowInsecureHttp: true });
    return await runSubcommand(client, sub!, parsed.values, parsed.positionals);
  } catch (err) {
    throw cliErrorFromSdk(err, base);
  }
}

type Values = ReturnType<typeof parseSandboxArgs>['values'];

function parseSandboxArgs(rest: string[]) {
  return parseArgs({
    args: rest,
    strict: true,
    allowPositionals: true,
    options: {
      url: { type: 'string' },
      label: { type: 'string', multiple: true },
      env: { type: 'string', multiple: true },
      memory: { type: 'string' },
      timeout: { type: 'string' },
      state: { type: 'string' },
      selector: { type: 'string' },
      stream: { type: 'boolean' },
      cwd: { type: 'string' },
      shell: { type: 'boolean' },
      purge: { type: 'boolean' },
      json: { type: 'boolean' },
    },
  });
}

/** SDK errors become the PalisadeErrors (code, message with request id) the CLI has always printed. */
export function cliErrorFromSdk(err: unknown, base: string): unknown {
  if (err instanceof PalisadeApiError) {
    return new PalisadeError(
      err.code as ErrorCode,
      `${err.message}${err.requestId ? ` (request ${err.requestId})` : ''}`,
    );
  }
  if (err instanceof ConnectionError) {
    return new PalisadeError(
      'REQUIREMENT_MISSING',
      `Cannot reach the Palisade API at ${base}; is 'palisade serve' running? Set PALISADE_URL.`,
    );
  }
  if (err instanceof InvalidArgumentError)
    return new PalisadeError('INVALID_ARGUMENT', err.message);
  if (err instanceof PalisadeClientError) return new PalisadeError('INTERNAL', err.message);
  return err;
}

async function runSubcommand(
  client: PalisadeClient,
  sub: string,
  v: Values,
  positionals: string[],
): Promise<number> {
  if (sub === 'create') {
    const memory = intFlag(v.memory, '--memory');
    const timeoutMs = intFlag(v.timeout, '--timeout');
    const labels = pairs(v.label, '--label');
    const env = pairs(v.env, '--env');
    const sandbox = await client.createSandbox({
      ...(labels ? { labels } : {}),
      ...(env ? { env } : {}),
      ...(memory !== undefined ? { limits: { memoryBytes: memory } } : {}),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    });
    process.stdout.write(v.json ? JSON.stringify(sandbox.info) + '\n' : `${sandbox.id}\n`);
    return 0;
  }
  if (sub === 'ls') {
    process.stdout.write('ID                       STATE       EXPIRES                   LABELS\n');
    for await (const sb of client.iterateSandboxes({
      ...(v.state ? { state: v.state as SandboxState } : {}),
      ...(v.selector ? { labelSelector: v.selector } : {}),
    })) {
      const labels = Object.entries(sb.labels)
        .map(([k, val]) => `${k}=${val}`)
        .join(',');
      process.stdout.write(
        `${sb.id}  ${sb.state.padEnd(10)}  ${(sb.expiresAt ?? '-').padEnd(24)}  ${labels}\n`,
      );
    }
    return 0;
  }
  const id = positionals[0];
  if (!id) throw new PalisadeError('INVALID_ARGUMENT', `Give the sandbox id.\n\n${SANDBOX_USAGE}`);
  const sandbox = client.sandbox(id);
  if (sub === 'rm') {
    await sandbox.kill({ purge: v.purge === true });
    process.stdout.write(`removed ${id}\n`);
    return 0;
  }
  const argv = positionals.slice(1);
  if (argv.length === 0)
    throw new PalisadeError('INVALID_ARGUMENT', `Give the command after --.\n\n${SANDBOX_USAGE}`);
  const timeoutMs = intFlag(v.timeout, '--timeout');
  const env = pairs(v.env, '--env');
  const options = {
    ...(v.cwd ? { cwd: v.cwd } : {}),
    ...(env ? { env } : {}),
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
  };
  const cmd = v.shell ? argv.join(' ') : argv;
  if (!v.stream) {
    const r = await sandbox.commands.run(cmd, options);
    process.stdout.write(r.stdoutBytes);
    process.stderr.write(r.stderrBytes);
    if (r.truncated) process.stderr.write('palisade: output was truncated\n');
    return r.timedOut ? 124 : (r.exitCode ?? 125);
  }
  try {
    const r = await sandbox.commands.run(cmd, {
      ...options,
      onStdout: (_text, bytes) => {
        if (bytes.byteLength > 0) process.stdout.write(bytes);
      },
      onStderr: (_text, bytes) => {
        if (bytes.byteLength > 0) process.stderr.write(bytes);
      },
    });
    return r.timedOut ? 124 : (r.exitCode ?? 125);
  } catch (err) {
    // Once the stream is open, failures are reported on stderr and the status is 125.
    if (err instanceof CommandStreamError) {
      process.stderr.write(`palisade: ${err.message}\n`);
      return 125;
    }
    if (err instanceof ConnectionError) return 125;
    throw err;
  }
}
