/**
 * `palisade kill --all|--tenant T|--label SEL|--sandbox ID [--reason R]`, `palisade kill ls`,
 * `palisade kill release ID`: a client of the kill switch API (admin keys only). The server
 * address comes from --url or PALISADE_URL; the key from PALISADE_API_KEY only (never a flag,
 * so it does not land in shell history or the process list).
 */
import { parseArgs } from 'node:util';
import { PalisadeClient } from '../client/index.js';
import { PalisadeError } from '../errors/index.js';
import { cliErrorFromSdk } from './sandbox.js';

export const KILL_USAGE = `Usage:
  palisade kill --all [--reason R]           destroy every sandbox; refuse every create and exec
  palisade kill --tenant T [--reason R]      the same for one tenant
  palisade kill --label SELECTOR [--reason R]  for sandboxes whose labels match (e.g. team=red)
  palisade kill --sandbox ID [--reason R]    for one sandbox
  palisade kill ls                           list active kill switches
  palisade kill release KILL_ID              release one: matching creates and execs work again

Needs an admin key. Environment: PALISADE_API_KEY (required), PALISADE_URL (default http://127.0.0.1:7070)
`;

/** Bounds what the CLI reads from the server (a kill listing is small). */
const MAX_RESPONSE_BYTES = 8 * 1024 * 1024;

interface KillView {
  id: string;
  selector: Record<string, unknown>;
  reason: string;
  createdBy: string;
  createdAt: string;
  killed?: string[];
  failed?: string[];
}

/** One API call through the SDK (auth, timeouts, safe retries, typed errors). */
async function call(
  base: string,
  key: string,
  method: 'GET' | 'POST' | 'DELETE',
  path: string,
  body?: unknown,
): Promise<unknown> {
  try {
    const client = new PalisadeClient({
      baseUrl: base,
      apiKey: key,
      // The CLI accepts any URL the operator gives it (the SDK's default refuses plain HTTP
      // to non-loopback hosts).
      allowInsecureHttp: true,
      maxResponseBytes: MAX_RESPONSE_BYTES,
    });
    return await client.request({ method, path, ...(body !== undefined ? { json: body } : {}) });
  } catch (err) {
    throw cliErrorFromSdk(err, base);
  }
}

function describeSelector(selector: Record<string, unknown>): string {
  if (selector.all === true) return 'all';
  if (typeof selector.tenant === 'string') return `tenant=${selector.tenant}`;
  if (typeof selector.labels === 'string') return `labels ${selector.labels}`;
  return `sandbox=${String(selector.sandboxId)}`;
}

export async function killCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        url: { type: 'string' },
        all: { type: 'boolean' },
        tenant: { type: 'string' },
        label: { type: 'string' },
        sandbox: { type: 'string' },
        reason: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new PalisadeError('INVALID_ARGUMENT', `${(err as Error).message}\n\n${KILL_USAGE}`);
  }
  const v = parsed.values;
  const [sub, ...rest] = parsed.positionals;
  if (v.help) {
    process.stdout.write(KILL_USAGE);
    return 0;
  }
  const key = process.env.PALISADE_API_KEY;
  if (!key)
    throw new PalisadeError(
      'UNAUTHENTICATED',
      'Set PALISADE_API_KEY to an admin API key (see palisade keys create).',
    );
  const base = (v.url ?? process.env.PALISADE_URL ?? 'http://127.0.0.1:7070').replace(/\/+$/, '');

  if (sub === 'ls' || sub === 'list') {
    const list = (await call(base, key, 'GET', '/v1/kill')) as { items: KillView[] };
    if (v.json) {
      process.stdout.write(JSON.stringify(list.items) + '\n');
      return 0;
    }
    process.stdout.write(
      'ID                          CREATED                   SELECTOR  REASON\n',
    );
    for (const k of list.items) {
      process.stdout.write(
        `${k.id}  ${k.createdAt.padEnd(24)}  ${describeSelector(k.selector)}  ${k.reason}\n`,
      );
    }
    return 0;
  }
  if (sub === 'release') {
    const id = rest[0];
    if (!id || !/^kill-[a-z2-7]{20}$/.test(id))
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `Give the kill id to release (kill-…; see palisade kill ls).\n\n${KILL_USAGE}`,
      );
    await call(base, key, 'DELETE', `/v1/kill/${id}`);
    process.stdout.write(`released ${id}\n`);
    return 0;
  }
  if (sub !== undefined)
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `Unknown kill subcommand '${sub}'.\n\n${KILL_USAGE}`,
    );

  const selectors = [
    v.all ? { all: true } : undefined,
    v.tenant !== undefined ? { tenant: v.tenant } : undefined,
    v.label !== undefined ? { labels: v.label } : undefined,
    v.sandbox !== undefined ? { sandboxId: v.sandbox } : undefined,
  ].filter((s) => s !== undefined);
  if (selectors.length !== 1)
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `Give exactly one of --all, --tenant, --label, --sandbox.\n\n${KILL_USAGE}`,
    );
  const kill = (await call(base, key, 'POST', '/v1/kill', {
    ...selectors[0],
    ...(v.reason !== undefined ? { reason: v.reason } : {}),
  })) as KillView;
  if (v.json) {
    process.stdout.write(JSON.stringify(kill) + '\n');
    return 0;
  }
  process.stdout.write(
    `kill switch ${kill.id} active (${describeSelector(kill.selector)}); destroyed ${kill.killed?.length ?? 0} sandboxes\n`,
  );
  for (const id of kill.killed ?? []) process.stdout.write(`  killed ${id}\n`);
  for (const id of kill.failed ?? [])
    process.stderr.write(`palisade: could not destroy ${id}; check the server log\n`);
  process.stdout.write(`release with: palisade kill release ${kill.id}\n`);
  return (kill.failed?.length ?? 0) > 0 ? 1 : 0;
}
