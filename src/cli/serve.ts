/**
 * `palisade serve`: the authenticated HTTP API. Binds 127.0.0.1 unless TLS (or a TLS proxy in
 * front) is configured; prints the admin key once, on the first start of a data directory.
 */
import { chmodSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  applyEnvFile,
  loadServeConfig,
  mergeFlagValues,
  PolicyFileWatcher,
  readOperatorFile,
  sha256Hex,
  toFlagArgs,
} from '../config/index.js';
import { PalisadeError } from '../errors/index.js';
import { MAX_POLICY_BYTES, parsePolicy, type PolicyLayer } from '../policy/index.js';
import { createSandboxRuntime, type SandboxRuntime } from '../sandbox/index.js';
import {
  OPS_FLAG_OPTIONS,
  OPS_FLAGS_USAGE,
  opsConfigFromFlags,
  resolveConfig,
  startControlPlane,
  type ControlPlane,
  type ServerConfigInput,
} from '../server/index.js';
import {
  connectRemoteRuntime,
  DEFAULT_SERVICE_USER,
  dropPrivileges,
  ensureServiceUser,
  prepareSeparatedDataDir,
  readWorkerSecrets,
  sendWorkerMessage,
  spawnWorker,
  type WorkerMessage,
  startSupervisor,
  type ServiceUser,
} from '../supervisor/index.js';
import { DEFAULT_DATA_ROOT } from './engine-config.js';

export const SERVE_USAGE = `Usage: palisade serve [options]

Options:
  --config FILE          read these options from a YAML/JSON file (keys are the flag names;
                         flags given here override it); see docs/config.md
  --environment-file FILE  set PALISADE_* settings from a dotenv file (no other variable)
  --host HOST            address to bind (default 127.0.0.1; others need TLS or --behind-tls-proxy)
  --port PORT            port (default 7070; 0 picks a free one)
  --data-dir DIR         database and engine state (default ${DEFAULT_DATA_ROOT})
  --tls-cert FILE        PEM certificate chain (with --tls-key)
  --tls-key FILE         PEM private key
  --behind-tls-proxy     a TLS-terminating proxy is in front; allow plain HTTP on a non-loopback address
  --cors-origin ORIGIN   allow this exact browser origin (repeatable; default: CORS off)
  --policy FILE          permission policy (operator layer) checked before every exec
                         (reloaded when the file changes, and on SIGHUP)
  --body-limit BYTES     largest request body (default 1048576)
  --log-level LEVEL      trace|debug|info|warn|error|silent (default info; logs go to stderr)
  --engine-uids START:COUNT   host uid range for sandboxes (default 1900000000:100000); give each
                         server on one host its own range and --engine-cgroup
  --engine-cgroup NAME   cgroup directory name for this server's sandboxes (default palisade)
  --workspace-encryption required|off   encrypt sandbox workspaces at rest (default required:
                         serve refuses to start if the kernel cannot; off stores them in plaintext)
  --bwrap FILE           bubblewrap binary (default: bwrap from PATH or /usr/bin); serve refuses to
                         start if it is missing or broken, there is no unsandboxed fallback
  --service-user USER    unprivileged account (name, or UID:GID) the HTTP server runs as when
                         started as root (default ${DEFAULT_SERVICE_USER}; created if missing)
  --single-process       as root, do not split: the HTTP server then runs as root too (tests)
${OPS_FLAGS_USAGE}
Started as root, serve splits in two: a root supervisor runs the sandbox engine and the egress
gateway, and the HTTP server runs as --service-user, asking the supervisor over an owner-only
unix socket.
`;

/** Flags that have no configuration-file key. */
const NOT_IN_CONFIG = ['config', 'environment-file', 'worker-socket', 'worker-ids', 'help'];
/** Flags the supervisor never passes to the worker (what it may not read comes on stdin). */
const NOT_FOR_WORKER = [
  ...NOT_IN_CONFIG,
  'policy',
  'tls-cert',
  'tls-key',
  'service-user',
  'single-process',
];

export async function serveCommand(args: string[]): Promise<number> {
  let parsed;
  const flagOptions = {
    config: { type: 'string' },
    'environment-file': { type: 'string' },
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
    'workspace-encryption': { type: 'string' },
    bwrap: { type: 'string' },
    'single-process': { type: 'boolean' },
    'service-user': { type: 'string' },
    ...OPS_FLAG_OPTIONS,
    // Internal: set by the supervisor when it starts the HTTP worker.
    'worker-socket': { type: 'string' },
    'worker-ids': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  } as const;
  try {
    parsed = parseArgs({ args, strict: true, allowPositionals: false, options: flagOptions });
  } catch (err) {
    throw new PalisadeError('INVALID_ARGUMENT', `${(err as Error).message}\n\n${SERVE_USAGE}`);
  }
  // --environment-file first (it may set PALISADE_DATA_DIR), then --config; flags override the file.
  if (parsed.values['environment-file'] !== undefined)
    applyEnvFile(parsed.values['environment-file']);
  const v =
    parsed.values.config === undefined
      ? parsed.values
      : mergeFlagValues(
          loadServeConfig(parsed.values.config, {
            flags: flagOptions,
            exclude: NOT_IN_CONFIG,
            pathKeys: ['data-dir', 'tls-cert', 'tls-key', 'policy', 'bwrap'],
          }),
          parsed.values,
        );
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
  const dataDir = resolve(v['data-dir'] ?? process.env.PALISADE_DATA_DIR ?? DEFAULT_DATA_ROOT);
  const opsConfig = opsConfigFromFlags(v);
  const workerSocket = v['worker-socket'];
  if (workerSocket !== undefined) {
    return runWorker(workerSocket, v['worker-ids'], {
      host: v.host ?? '127.0.0.1',
      port,
      dataDir,
      behindTlsProxy: v['behind-tls-proxy'] ?? false,
      corsOrigins: v['cors-origin'] ?? [],
      ...(bodyLimit !== undefined ? { bodyLimitBytes: bodyLimit } : {}),
      logLevel: v['log-level'] ?? 'info',
      ...opsConfig,
    });
  }
  const policyText = v.policy !== undefined ? await readPolicyText(v.policy) : undefined;
  const policyLayers =
    v.policy !== undefined && policyText !== undefined
      ? [parsePolicy(policyText, v.policy, 'operator')]
      : [];
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
  const engineOptions = {
    ...(uidRange ? { uidRange } : {}),
    ...(v['engine-cgroup'] !== undefined ? { cgroupPrefix: v['engine-cgroup'] } : {}),
    // The engine validates the value (INVALID_ARGUMENT for anything but 'required' or 'off').
    ...(v['workspace-encryption'] !== undefined
      ? { workspaceEncryption: v['workspace-encryption'] as 'required' | 'off' }
      : {}),
    ...(v.bwrap !== undefined ? { bwrapPath: resolve(v.bwrap) } : {}),
  };
  const serverConfig: ServerConfigInput = {
    dataDir,
    host: v.host ?? '127.0.0.1',
    port,
    ...(tls ? { tls } : {}),
    behindTlsProxy: v['behind-tls-proxy'] ?? false,
    corsOrigins: v['cors-origin'] ?? [],
    ...(bodyLimit !== undefined ? { bodyLimitBytes: bodyLimit } : {}),
    logLevel: v['log-level'] ?? 'info',
    ...opsConfig,
  };
  const isRoot = process.getuid?.() === 0;
  if (isRoot && !v['single-process']) {
    // Refuse a bad configuration (e.g. plain HTTP on a public address) before splitting.
    resolveConfig(serverConfig);
    const user = ensureServiceUser(v['service-user'] ?? DEFAULT_SERVICE_USER);
    // The worker parses the same flags; what it may not be able to read (TLS key, policy) it
    // gets from the supervisor on its stdin.
    // The merged flags and configuration file, as explicit flags.
    const workerArgs = toFlagArgs(
      Object.fromEntries(Object.entries(v).filter(([k]) => !NOT_FOR_WORKER.includes(k))),
      flagOptions,
    );
    return runSupervised({
      dataDir,
      user,
      policyLayers,
      engineOptions,
      workerArgs,
      ...(policyText !== undefined && v.policy !== undefined
        ? { policyFile: { path: resolve(v.policy), source: v.policy, text: policyText } }
        : {}),
      secrets: {
        ...(tls ? { tls: { cert: tls.cert.toString('utf8'), key: tls.key.toString('utf8') } } : {}),
        ...(policyText !== undefined && v.policy !== undefined
          ? { policy: { text: policyText, source: v.policy } }
          : {}),
      },
    });
  }
  process.stderr.write(
    isRoot
      ? 'palisade serve: --single-process: the HTTP server runs as root (no privilege separation).\n'
      : 'palisade serve: not started as root, so no privilege separation: one process runs the HTTP server and the sandbox engine as the current user.\n',
  );
  const runtime = await createSandboxRuntime({
    dataDir: join(dataDir, 'engine'),
    ...engineOptions,
  });
  return serveUntilSignal(
    runtime,
    {
      runtime,
      policyLayers,
      ...(policyText !== undefined ? { operatorPolicyText: policyText } : {}),
      config: serverConfig,
    },
    undefined,
    (plane) =>
      policyText !== undefined && v.policy !== undefined
        ? watchPolicy(resolve(v.policy), v.policy, policyText, (input) => {
            void plane.reloadPolicy(input);
          })
        : undefined,
  );
}

/**
 * Watches the operator policy file; every change of content (or a read failure) reaches
 * `reload` — directly, or through the supervisor's channel to its worker.
 */
function watchPolicy(
  path: string,
  source: string,
  initialText: string,
  reload: (input: { source: string; text?: string; error?: string }) => void,
): PolicyFileWatcher {
  const watcher = new PolicyFileWatcher({
    path,
    initialSha256: sha256Hex(initialText),
    maxBytes: MAX_POLICY_BYTES,
    onChange: (event) =>
      reload(
        event.kind === 'content' ? { source, text: event.text } : { source, error: event.message },
      ),
  });
  watcher.start();
  return watcher;
}

async function readPolicyText(path: string): Promise<string> {
  // Ownership and mode checked: with hot-reload, whoever can write the file changes the
  // policy of the running server.
  try {
    return readOperatorFile(path, { what: 'policy file', maxBytes: MAX_POLICY_BYTES });
  } catch (err) {
    if (err instanceof PalisadeError) throw new PalisadeError('INVALID_POLICY', err.message);
    throw err;
  }
}

function waitForStopSignal(): Promise<string> {
  return new Promise((resolveStop) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      resolveStop(signal);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}

/** Starts the control plane on `runtime`, prints the key and URL, and runs until a signal. */
async function serveUntilSignal(
  runtime: SandboxRuntime,
  options: Parameters<typeof startControlPlane>[0],
  lost?: Promise<string>,
  onStarted?: (plane: ControlPlane) => PolicyFileWatcher | undefined,
): Promise<number> {
  let plane;
  try {
    plane = await startControlPlane(options);
  } catch (err) {
    await runtime.close();
    throw err;
  }
  // SIGHUP re-reads the policy file; it never stops the server (a worker just ignores it).
  const watcher = onStarted?.(plane);
  const onHangup = () => watcher?.reload();
  process.on('SIGHUP', onHangup);
  if (plane.adminKey) {
    process.stdout.write(`Admin API key: ${plane.adminKey}\n`);
    process.stdout.write('Store it now: it is shown only this once (only its hash is kept).\n');
  }
  process.stdout.write(`Palisade API listening on ${plane.url}\n`);
  const outcome = await Promise.race([
    waitForStopSignal(),
    ...(lost ? [lost.then((reason) => ({ lost: reason }))] : []),
  ]);
  if (typeof outcome !== 'string') {
    // The supervisor (and with it the engine) is gone: stop at once, like a crashed server; the
    // next start reconciles the database with the engine.
    // Exiting here (not returning) also drops the listening socket and the database handle,
    // which would otherwise keep the process alive.
    process.stderr.write(`palisade serve worker: supervisor lost (${outcome.lost}); exiting.\n`);
    process.exit(1);
  }
  watcher?.close();
  process.removeListener('SIGHUP', onHangup);
  await plane.close();
  await runtime.close();
  return 0;
}

/** The unprivileged HTTP worker: started by the supervisor with --worker-socket. */
async function runWorker(
  socketPath: string,
  ids: string | undefined,
  config: ServerConfigInput,
): Promise<number> {
  const m = ids !== undefined ? /^(\d+):(\d+)$/.exec(ids) : null;
  if (!m)
    throw new PalisadeError('INVALID_ARGUMENT', '--worker-socket needs --worker-ids UID:GID.');
  const user = { uid: Number(m[1]), gid: Number(m[2]) };
  if (user.uid === 0) {
    throw new PalisadeError('INVALID_ARGUMENT', 'The HTTP worker must not run as root.');
  }
  // The supervisor starts the worker as the service user already; if started as root anyway,
  // drop before opening anything.
  dropPrivileges(user);
  // Policy file changes come from the supervisor (this user may not read the file): apply each
  // once the server runs; until then only the latest matters.
  let plane: ControlPlane | undefined;
  let early: WorkerMessage | undefined;
  const secrets = await readWorkerSecrets(process.stdin, (message) => {
    if (plane) void plane.reloadPolicy(message);
    else early = message;
  });
  const runtime = await connectRemoteRuntime({ socketPath });
  const policyLayers = secrets.policy
    ? [parsePolicy(secrets.policy.text, secrets.policy.source, 'operator')]
    : [];
  return serveUntilSignal(
    runtime,
    {
      runtime,
      policyLayers,
      // The gateway runs in the supervisor (it needs root); the worker drives it.
      egress: {
        createGateway: (hooks) =>
          runtime.createEgressGateway({
            ...hooks,
            onUpdateFailed: (sandboxId, err) =>
              process.stderr.write(
                `palisade serve worker: the supervisor refused new network rules for ${sandboxId} (${(err as Error).message}); its previous rules stay in force.\n`,
              ),
          }),
      },
      ...(secrets.policy ? { operatorPolicyText: secrets.policy.text } : {}),
      config: { ...config, ...(secrets.tls ? { tls: secrets.tls } : {}) },
    },
    runtime.disconnected,
    (started) => {
      plane = started;
      if (early) void started.reloadPolicy(early);
      early = undefined;
      return undefined;
    },
  );
}

/** Root: runs the engine and the supervisor socket, starts the worker, and watches it. */
async function runSupervised(options: {
  dataDir: string;
  user: ServiceUser;
  policyLayers: PolicyLayer[];
  engineOptions: {
    uidRange?: { start: number; count: number };
    cgroupPrefix?: string;
    bwrapPath?: string;
  };
  workerArgs: string[];
  /** The operator policy file: watched here (root can read it), changes sent to the worker. */
  policyFile?: { path: string; source: string; text: string };
  secrets: Parameters<typeof spawnWorker>[0]['secrets'];
}): Promise<number> {
  const layout = prepareSeparatedDataDir(options.dataDir, options.user);
  const runtime = await createSandboxRuntime({
    dataDir: layout.engineDir,
    ...options.engineOptions,
  });
  let engineClosed: Promise<void> | undefined;
  const closeEngine = () => (engineClosed ??= runtime.close().catch(() => undefined));
  let workerGone = false;
  let supervisor;
  try {
    supervisor = await startSupervisor({
      runtime,
      socketPath: layout.socketPath,
      owner: { uid: options.user.uid, gid: options.user.gid },
      egress: { socketDir: layout.egressDir, upperLayers: options.policyLayers },
      onViolation: (message) =>
        process.stderr.write(`palisade supervisor: closed the worker connection: ${message}\n`),
    });
  } catch (err) {
    await closeEngine();
    throw err;
  }
  const worker = spawnWorker({
    user: options.user,
    args: [
      'serve',
      ...options.workerArgs,
      '--worker-socket',
      layout.socketPath,
      '--worker-ids',
      `${options.user.uid}:${options.user.gid}`,
    ],
    secrets: options.secrets,
  });
  process.stderr.write(
    `palisade serve: privilege separation: supervisor pid ${process.pid} (root) runs the engine; HTTP worker pid ${worker.pid ?? '?'} runs as ${options.user.name} (uid ${options.user.uid}).\n`,
  );
  const workerExit = new Promise<number>((resolveExit) => {
    worker.once('exit', (code, signal) => {
      workerGone = true;
      resolveExit(code ?? (signal ? 1 : 0));
    });
    worker.once('error', () => {
      workerGone = true;
      resolveExit(1);
    });
  });
  const policyFile = options.policyFile;
  const watcher = policyFile
    ? watchPolicy(policyFile.path, policyFile.source, policyFile.text, (input) =>
        sendWorkerMessage(worker, { type: 'policy', ...input }),
      )
    : undefined;
  const onHangup = () => watcher?.reload();
  process.on('SIGHUP', onHangup);
  const outcome = await Promise.race([waitForStopSignal(), workerExit.then((code) => ({ code }))]);
  watcher?.close();
  process.removeListener('SIGHUP', onHangup);
  let exitCode = 0;
  if (typeof outcome === 'string') {
    // Let the worker close its side first: it destroys the sandboxes through the API's shutdown.
    if (!workerGone) worker.kill('SIGTERM');
    const timer = setTimeout(() => {
      if (!workerGone) worker.kill('SIGKILL');
    }, 30_000);
    await workerExit;
    clearTimeout(timer);
  } else {
    process.stderr.write(
      `palisade serve: the HTTP worker exited (code ${outcome.code}); destroying every sandbox and stopping.\n`,
    );
    exitCode = outcome.code === 0 ? 0 : 1;
  }
  await supervisor.close();
  await closeEngine();
  return exitCode;
}
