/**
 * `palisade sandbox create|ls|exec|rm`: a client of the HTTP API. The server address comes from
 * --url or PALISADE_URL (default http://127.0.0.1:7070); the key from PALISADE_API_KEY only
 * (never a flag, so it does not land in shell history or the process list).
 */
import { parseArgs } from 'node:util';
import { PalisadeError, type ErrorCode } from '../errors/index.js';

export const SANDBOX_USAGE = `Usage:
  palisade sandbox create [--label K=V]... [--env K=V]... [--memory BYTES] [--timeout MS]
  palisade sandbox ls [--state STATE] [--selector SELECTOR]
  palisade sandbox exec ID [--stream] [--cwd DIR] [--env K=V]... [--timeout MS] -- CMD [ARGS...]
  palisade sandbox rm ID [--purge]

Environment: PALISADE_API_KEY (required), PALISADE_URL (default http://127.0.0.1:7070)
`;

interface ApiErrorBody {
  code: ErrorCode;
  message: string;
  requestId?: string;
}

async function call(
  base: string,
  key: string,
  method: string,
  path: string,
  body?: unknown,
  accept?: string,
): Promise<Response> {
  const headers: Record<string, string> = { authorization: `Bearer ${key}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (accept) headers.accept = accept;
  let res: Response;
  try {
    res = await fetch(base + path, {
      method,
      headers,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
  } catch {
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `Cannot reach the Palisade API at ${base}; is 'palisade serve' running? Set PALISADE_URL.`,
    );
  }
  if (!res.ok) {
    let err: ApiErrorBody | undefined;
    try {
      err = (await res.json()) as ApiErrorBody;
    } catch {
      err = undefined;
    }
    throw new PalisadeError(
      err?.code ?? 'INTERNAL',
      `${err?.message ?? `HTTP ${res.status}`}${err?.requestId ? ` (request ${err.requestId})` : ''}`,
    );
  }
  return res;
}

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
    parsed = parseArgs({
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

  if (sub === 'create') {
    const memory = intFlag(v.memory, '--memory');
    const timeoutMs = intFlag(v.timeout, '--timeout');
    const body = {
      ...(pairs(v.label, '--label') ? { labels: pairs(v.label, '--label') } : {}),
      ...(pairs(v.env, '--env') ? { env: pairs(v.env, '--env') } : {}),
      ...(memory !== undefined ? { limits: { memoryBytes: memory } } : {}),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    };
    const res = await call(base, key, 'POST', '/v1/sandboxes', body);
    const sb = (await res.json()) as { id: string; state: string };
    process.stdout.write(v.json ? JSON.stringify(sb) + '\n' : `${sb.id}\n`);
    return 0;
  }
  if (sub === 'ls') {
    const q = new URLSearchParams();
    if (v.state) q.set('state', v.state);
    if (v.selector) q.set('labelSelector', v.selector);
    let cursor: string | null = null;
    process.stdout.write('ID                       STATE       EXPIRES                   LABELS\n');
    do {
      if (cursor) q.set('cursor', cursor);
      const res = await call(base, key, 'GET', `/v1/sandboxes?${q.toString()}`);
      const page = (await res.json()) as {
        items: {
          id: string;
          state: string;
          expiresAt: string | null;
          labels: Record<string, string>;
        }[];
        nextCursor: string | null;
      };
      for (const sb of page.items) {
        const labels = Object.entries(sb.labels)
          .map(([k, val]) => `${k}=${val}`)
          .join(',');
        process.stdout.write(
          `${sb.id}  ${sb.state.padEnd(10)}  ${(sb.expiresAt ?? '-').padEnd(24)}  ${labels}\n`,
        );
      }
      cursor = page.nextCursor;
    } while (cursor);
    return 0;
  }
  const id = parsed.positionals[0];
  if (!id) throw new PalisadeError('INVALID_ARGUMENT', `Give the sandbox id.\n\n${SANDBOX_USAGE}`);
  if (sub === 'rm') {
    await call(
      base,
      key,
      'DELETE',
      `/v1/sandboxes/${encodeURIComponent(id)}${v.purge ? '?purge=true' : ''}`,
    );
    process.stdout.write(`removed ${id}\n`);
    return 0;
  }
  const argv = parsed.positionals.slice(1);
  if (argv.length === 0)
    throw new PalisadeError('INVALID_ARGUMENT', `Give the command after --.\n\n${SANDBOX_USAGE}`);
  const timeoutMs = intFlag(v.timeout, '--timeout');
  const env = pairs(v.env, '--env');
  const body = {
    ...(v.shell ? { command: argv.join(' ') } : { argv }),
    ...(v.cwd ? { cwd: v.cwd } : {}),
    ...(env ? { env } : {}),
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    encoding: 'base64',
  };
  const path = `/v1/sandboxes/${encodeURIComponent(id)}/exec`;
  if (!v.stream) {
    const res = await call(base, key, 'POST', path, body);
    const r = (await res.json()) as {
      exitCode: number | null;
      stdout: string;
      stderr: string;
      timedOut: boolean;
      truncated: boolean;
    };
    process.stdout.write(Buffer.from(r.stdout, 'base64'));
    process.stderr.write(Buffer.from(r.stderr, 'base64'));
    if (r.truncated) process.stderr.write('palisade: output was truncated\n');
    return r.timedOut ? 124 : (r.exitCode ?? 125);
  }
  const res = await call(base, key, 'POST', path, body, 'text/event-stream');
  let exit = 125;
  let buffered = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffered += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const block = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const name = /^event: (.*)$/m.exec(block)?.[1];
      const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? 'null') as Record<
        string,
        unknown
      > | null;
      if (name === 'stdout') process.stdout.write(Buffer.from(String(data?.data ?? ''), 'base64'));
      else if (name === 'stderr')
        process.stderr.write(Buffer.from(String(data?.data ?? ''), 'base64'));
      else if (name === 'exit')
        exit = data?.timedOut ? 124 : typeof data?.exitCode === 'number' ? data.exitCode : 125;
      else if (name === 'error')
        process.stderr.write(`palisade: ${String(data?.message ?? 'stream error')}\n`);
    }
  }
  return exit;
}
