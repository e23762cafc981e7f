/**
 * `palisade serve`: the authenticated HTTP API. Binds 127.0.0.1 unless TLS (or a TLS proxy in
 * front) is configured; prints the admin key once, on the first start of a data directory.
 */
import { chmodSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { PalisadeError } from '../errors/index.js';
import { loadPolicyFile } from '../policy/index.js';
import { createSandboxRuntime } from '../sandbox/index.js';
import { startControlPlane } from '../server/index.js';
import { DEFAULT_DATA_ROOT } from './engine-config.js';

export const SERVE_USAGE = `Usage: palisade serve [options]

Options:
  --host HOST            address to bind (default 127.0.0.1; others need TLS or --behind-tls-proxy)
  --port PORT            port (default 7070; 0 picks a free one)
  --data-dir DIR         database and engine state (default ${DEFAULT_DATA_ROOT})
  --tls-cert FILE        PEM certificate chain (with --tls-key)
  --tls-key FILE         PEM private key
  --behind-tls-proxy     a TLS-terminating proxy is in front; allow plain HTTP on a non-loopback address
  --cors-origin ORIGIN   allow this exact browser origin (repeatable; default: CORS off)
  --policy FILE          permission policy (operator layer) checked before every exec
  --body-limit BYTES     largest request body (default 1048576)
  --log-level LEVEL      trace|debug|info|warn|error|silent (default info; logs go to stderr)
  --engine-uids START:COUNT   host uid range for sandboxes (default 1900000000:100000); give each
                         server on one host its own range and --engine-cgroup
  --engine-cgroup NAME   cgroup directory name for this server's sandboxes (default palisade)
`;

export async function serveCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        host: { type: 'string' },
        port: { type: 'string' },
        'data-dir': { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'behind-tls-proxy': { type: 'boolean' },
        'cors-origin': { type: 'string', multiple: true },
        policy: { type: 'string' },
        'body-limit': { type: 'string' },
        'log-level': { type: 'string' },
        'engine-uids': { type: 'string' },
        'engine-cgroup': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new PalisadeError('INVALID_ARGUMENT', `${(err as Error).message}\n\n${SERVE_USAGE}`);
  }
  const v = parsed.values;
  if (v.help) {
    process.stdout.write(SERVE_USAGE);
    return 0;
  }
  if ((v['tls-cert'] === undefined) !== (v['tls-key'] === undefined)) {
    throw new PalisadeError('INVALID_ARGUMENT', 'Give both --tls-cert and --tls-key, or neither.');
  }
  const port = v.port === undefined ? 7070 : /^\d{1,5}$/.test(v.port) ? Number(v.port) : NaN;
  if (Number.isNaN(port))
    throw new PalisadeError('INVALID_ARGUMENT', '--port must be a number 0-65535.');
  const bodyLimit = v['body-limit'] === undefined ? undefined : Number(v['body-limit']);
  const dataDir = resolve(v['data-dir'] ?? DEFAULT_DATA_ROOT);
  const policyLayers = v.policy !== undefined ? [await loadPolicyFile(v.policy, 'operator')] : [];
  const readPem = (path: string, what: string) => {
    try {
      return readFileSync(path);
    } catch {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `Cannot read the TLS ${what} ${path}; check the path and permissions.`,
      );
    }
  };
  const tls =
    v['tls-cert'] !== undefined && v['tls-key'] !== undefined
      ? { cert: readPem(v['tls-cert'], 'certificate'), key: readPem(v['tls-key'], 'key') }
      : undefined;
  let uidRange: { start: number; count: number } | undefined;
  if (v['engine-uids'] !== undefined) {
    const m = /^(\d+):(\d+)$/.exec(v['engine-uids']);
    if (!m)
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        '--engine-uids expects START:COUNT, e.g. 1900000000:100000.',
      );
    uidRange = { start: Number(m[1]), count: Number(m[2]) };
  }
  // Traversable, not listable: sandbox uids must reach the engine's directory below it; the
  // database files in it are owner-only.
  try {
    mkdirSync(dataDir, { recursive: true, mode: 0o711 });
    chmodSync(dataDir, 0o711);
  } catch {
    throw new PalisadeError(
      'INVALID_PATH',
      `Cannot create or use the data directory ${dataDir}; choose another with --data-dir.`,
    );
  }
  const runtime = await createSandboxRuntime({
    dataDir: join(dataDir, 'engine'),
    ...(uidRange ? { uidRange } : {}),
    ...(v['engine-cgroup'] !== undefined ? { cgroupPrefix: v['engine-cgroup'] } : {}),
  });
  let plane;
  try {
    plane = await startControlPlane({
      runtime,
      policyLayers,
      config: {
        dataDir,
        host: v.host ?? '127.0.0.1',
        port,
        ...(tls ? { tls } : {}),
        behindTlsProxy: v['behind-tls-proxy'] ?? false,
        corsOrigins: v['cors-origin'] ?? [],
        ...(bodyLimit !== undefined ? { bodyLimitBytes: bodyLimit } : {}),
        logLevel: v['log-level'] ?? 'info',
      },
    });
  } catch (err) {
    await runtime.close();
    throw err;
  }
  if (plane.adminKey) {
    process.stdout.write(`Admin API key: ${plane.adminKey}\n`);
    process.stdout.write('Store it now: it is shown only this once (only its hash is kept).\n');
  }
  process.stdout.write(`Palisade API listening on ${plane.url}\n`);
  const started = plane;
  await new Promise<void>((resolveStop) => {
    let stopping = false;
    const stop = () => {
      if (stopping) return;
      stopping = true;
      resolveStop();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await started.close();
  await runtime.close();
  return 0;
}
