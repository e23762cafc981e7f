/**
 * The host side of privilege separation: the unprivileged service user, the data directory
 * layout that lets that user keep the database while only root can touch the engine's state,
 * dropping privileges, and starting and watching the HTTP worker.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  rmSync,
  type Stats,
} from 'node:fs';
import { join } from 'node:path';
import { PalisadeError } from '../errors/index.js';

export interface ServiceUser {
  /** The account name, or `UID:GID` when given numerically. */
  name: string;
  uid: number;
  gid: number;
}

export const DEFAULT_SERVICE_USER = 'palisade';
const USER_NAME_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
const NUMERIC_RE = /^(\d{1,10}):(\d{1,10})$/;

/** Looks an account up in /etc/passwd (the only user database useradd writes to). */
export function lookupUser(name: string): ServiceUser | undefined {
  let passwd: string;
  try {
    passwd = readFileSync('/etc/passwd', 'utf8');
  } catch {
    return undefined;
  }
  for (const line of passwd.split('\n')) {
    const fields = line.split(':');
    if (fields[0] === name && fields.length >= 4) {
      const uid = Number(fields[2]);
      const gid = Number(fields[3]);
      if (Number.isSafeInteger(uid) && Number.isSafeInteger(gid)) return { name, uid, gid };
    }
  }
  return undefined;
}

function refuseRoot(user: ServiceUser): ServiceUser {
  if (user.uid === 0 || user.gid === 0) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `The service user ${user.name} has uid or gid 0; the HTTP worker must run unprivileged. Choose another --service-user.`,
    );
  }
  return user;
}

/**
 * Resolves `spec` (an account name, or `UID:GID`) to a non-root identity, creating the account
 * as a system user without home or login shell if a name is given and it does not exist yet.
 */
export function ensureServiceUser(spec: string = DEFAULT_SERVICE_USER): ServiceUser {
  const numeric = NUMERIC_RE.exec(spec);
  if (numeric) {
    return refuseRoot({ name: spec, uid: Number(numeric[1]), gid: Number(numeric[2]) });
  }
  if (!USER_NAME_RE.test(spec)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `--service-user ${JSON.stringify(spec.slice(0, 64))} is neither an account name nor UID:GID.`,
    );
  }
  const existing = lookupUser(spec);
  if (existing) return refuseRoot(existing);
  const created = spawnSync(
    'useradd',
    ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', spec],
    { encoding: 'utf8', timeout: 30_000 },
  );
  const user = lookupUser(spec);
  if (created.status !== 0 || !user) {
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `Cannot create the service user ${spec} for the HTTP worker (useradd: ${(created.stderr ?? created.error?.message ?? '').trim().slice(0, 200) || 'failed'}). Create it yourself (useradd --system --no-create-home --shell /usr/sbin/nologin ${spec}), give an existing one with --service-user, or run with --single-process.`,
    );
  }
  return refuseRoot(user);
}

export interface SeparatedLayout {
  dataDir: string;
  engineDir: string;
  /** The supervisor's egress gateway sockets, one 0710 directory per sandbox. */
  egressDir: string;
  socketPath: string;
}

/** Database files the worker must own. */
const STORE_FILES = ['palisade.db', 'palisade.db-wal', 'palisade.db-shm'];

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

/**
 * Prepares the data directory for a root supervisor and an unprivileged worker:
 * - the directory itself is root:<worker group>, mode 1731: the worker may create its database
 *   files there but not list it, and the sticky bit stops it from renaming or removing anything
 *   it does not own (the engine directory in particular);
 * - the database files are owned by the worker, mode 0600;
 * - the engine directory is root-owned (0711: sandbox uids traverse it to their workspaces);
 * - the egress directory (the supervisor's gateway sockets) is recreated root-owned 0711 before
 *   the worker starts, so the worker can never create or squat it; stale sockets go with it.
 */
export function prepareSeparatedDataDir(dataDir: string, user: ServiceUser): SeparatedLayout {
  try {
    mkdirSync(dataDir, { recursive: true, mode: 0o711 });
    const st = lstatSync(dataDir);
    if (!st.isDirectory()) throw new Error('not a directory');
    chownSync(dataDir, 0, user.gid);
    chmodSync(dataDir, 0o1731);
    for (const name of STORE_FILES) {
      const path = join(dataDir, name);
      const file = lstatOrUndefined(path);
      if (!file) continue;
      if (!file.isFile()) throw new Error(`${name} is not a regular file`);
      chownSync(path, user.uid, user.gid);
      chmodSync(path, 0o600);
    }
    const engineDir = join(dataDir, 'engine');
    mkdirSync(engineDir, { recursive: true, mode: 0o711 });
    const engine = lstatSync(engineDir);
    if (!engine.isDirectory()) throw new Error('engine is not a directory');
    chownSync(engineDir, 0, 0);
    chmodSync(engineDir, 0o711);
    const egressDir = join(dataDir, 'egress');
    rmSync(egressDir, { recursive: true, force: true });
    mkdirSync(egressDir, { mode: 0o711 });
    chownSync(egressDir, 0, 0);
    chmodSync(egressDir, 0o711);
    return {
      dataDir,
      engineDir,
      egressDir,
      socketPath: join(dataDir, 'supervisor', 'supervisor.sock'),
    };
  } catch (err) {
    throw new PalisadeError(
      'INVALID_PATH',
      `Cannot prepare the data directory ${dataDir} for privilege separation (${(err as Error).message}); fix it, choose another --data-dir, or run with --single-process.`,
    );
  }
}

/**
 * Becomes `user` for good: supplementary groups cleared, then gid, then uid (the order matters:
 * after setuid the others are no longer permitted). Verifies that root cannot be regained.
 */
export function dropPrivileges(user: { uid: number; gid: number }): void {
  if (!process.setuid || !process.setgid || !process.setgroups || !process.getuid) {
    throw new PalisadeError('REQUIREMENT_MISSING', 'This platform cannot drop privileges.');
  }
  if (process.getuid() === 0) {
    process.setgroups([user.gid]);
    process.setgid(user.gid);
    process.setuid(user.uid);
  }
  let regained = false;
  try {
    process.setuid(0);
    regained = true;
  } catch {
    // expected
  }
  if (regained || process.getuid() !== user.uid || process.getgid?.() !== user.gid) {
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `The HTTP worker could not drop privileges to uid ${user.uid}; refusing to serve.`,
    );
  }
}

export interface WorkerSecrets {
  /** PEM certificate chain and key (read by root; the worker may not be able to read the files). */
  tls?: { cert: string; key: string };
  /** Operator policy text and its source name (for error messages). */
  policy?: { text: string; source: string };
}

/** Largest secrets document the worker reads from its stdin. */
export const MAX_WORKER_SECRETS_BYTES = 8 * 1024 * 1024;

/**
 * Starts the worker as `user` (the kernel switches identity before the worker's first
 * instruction). `args` are the CLI arguments for it; secrets go through its stdin.
 */
export function spawnWorker(options: {
  user: ServiceUser;
  args: string[];
  secrets: WorkerSecrets;
}): ChildProcess {
  const entry = process.argv[1];
  if (entry === undefined) {
    throw new PalisadeError(
      'INTERNAL',
      'Cannot find the CLI entry point to start the HTTP worker.',
    );
  }
  const child = spawn(process.execPath, [...process.execArgv, entry, ...options.args], {
    uid: options.user.uid,
    gid: options.user.gid,
    stdio: ['pipe', 'inherit', 'inherit'],
    env: workerEnvironment(),
  });
  child.stdin?.on('error', () => undefined);
  // One JSON line; stdin then stays open for later messages (policy reloads). JSON.stringify
  // never emits a raw newline, so lines frame the messages.
  child.stdin?.write(`${JSON.stringify(options.secrets)}\n`);
  return child;
}

/** A message the supervisor sends the running worker after the secrets. */
export type WorkerMessage =
  /** The operator policy file changed (text) or could not be read (error): the worker reloads. */
  { type: 'policy'; source: string; text?: string; error?: string };

/** Sends `message` to the worker started by spawnWorker (ignored once it is gone). */
export function sendWorkerMessage(worker: ChildProcess, message: WorkerMessage): void {
  if (!worker.stdin || worker.stdin.destroyed) return;
  worker.stdin.write(`${JSON.stringify(message)}\n`);
}

function parseWorkerMessage(line: string): WorkerMessage | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const m = parsed as Record<string, unknown>;
  if (m.type !== 'policy' || typeof m.source !== 'string') return undefined;
  if (typeof m.text === 'string') return { type: 'policy', source: m.source, text: m.text };
  if (typeof m.error === 'string') return { type: 'policy', source: m.source, error: m.error };
  return undefined;
}

/** Only what Node needs: root's environment may hold secrets the worker has no business with. */
function workerEnvironment(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { HOME: '/' };
  for (const name of ['PATH', 'LANG', 'LC_ALL', 'TZ', 'NODE_ENV', 'NODE_OPTIONS']) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  return env;
}

/**
 * Reads the secrets document the supervisor wrote to stdin: its first line (or everything, if
 * the stream ends without a newline). Every later line is a WorkerMessage, passed to
 * `onMessage`; without `onMessage` reading stops after the secrets. Lines are bounded.
 * The stream does not keep the process alive.
 */
export async function readWorkerSecrets(
  stream: NodeJS.ReadableStream = process.stdin,
  onMessage?: (message: WorkerMessage) => void,
): Promise<WorkerSecrets> {
  const text = await new Promise<string>((resolveText, reject) => {
    let pending = Buffer.alloc(0);
    let secretsText: string | undefined;
    const stop = () => {
      stream.removeListener('data', onData);
      stream.removeListener('end', onEnd);
      stream.removeListener('error', onError);
      stream.pause();
    };
    const onData = (chunk: Buffer | string) => {
      pending = Buffer.concat([pending, typeof chunk === 'string' ? Buffer.from(chunk) : chunk]);
      let newline = pending.indexOf(10);
      while (newline >= 0) {
        const line = pending.subarray(0, newline).toString('utf8');
        pending = pending.subarray(newline + 1);
        if (secretsText === undefined) {
          secretsText = line;
          resolveText(line);
          // From here on the stream must not keep the worker alive (the supervisor keeps it open).
          (stream as { unref?: () => void }).unref?.();
          if (!onMessage) return stop();
        } else {
          const message = parseWorkerMessage(line);
          if (message) onMessage?.(message);
        }
        newline = pending.indexOf(10);
      }
      if (pending.length > MAX_WORKER_SECRETS_BYTES) {
        // A line this long is not from the supervisor: drop it (and the secrets, if first).
        pending = Buffer.alloc(0);
        if (secretsText === undefined) {
          stop();
          reject(new PalisadeError('PAYLOAD_TOO_LARGE', 'The worker configuration is too large.'));
        }
      }
    };
    const onEnd = () => {
      stop();
      if (secretsText === undefined) resolveText(pending.toString('utf8'));
    };
    const onError = (err: Error) => {
      stop();
      if (secretsText === undefined) reject(err);
    };
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('error', onError);
  });
  const parsed: unknown = text.length === 0 ? {} : JSON.parse(text);
  const secrets: WorkerSecrets = {};
  if (typeof parsed === 'object' && parsed !== null) {
    const p = parsed as Record<string, unknown>;
    const tls = p.tls as Record<string, unknown> | undefined;
    if (tls && typeof tls.cert === 'string' && typeof tls.key === 'string') {
      secrets.tls = { cert: tls.cert, key: tls.key };
    }
    const policy = p.policy as Record<string, unknown> | undefined;
    if (policy && typeof policy.text === 'string' && typeof policy.source === 'string') {
      secrets.policy = { text: policy.text, source: policy.source };
    }
  }
  return secrets;
}
