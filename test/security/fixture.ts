// The attack suite's target: a real `palisade serve` process (privilege-separated when the
// tests run as root, as in production), reached only over its real HTTP port.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI_ENTRY, spawnServe } from '../helpers/serve.js';
import { request, type ReqOptions, type Res } from '../server/helpers.js';

export interface ServeOptions {
  /** Extra `palisade serve` arguments. */
  args?: string[];
  /** Run without privilege separation (`--single-process`). */
  singleProcess?: boolean;
  /** Operator policy file contents (YAML); passed as `--policy`. */
  policy?: string;
  /** Extra environment for the server process (on top of a minimal PATH/HOME). */
  env?: Record<string, string>;
  /** Milliseconds to wait for the server to come up. */
  startTimeoutMs?: number;
}

export interface Palisade {
  url: string;
  adminKey: string;
  dataDir: string;
  /** The pid of the process we spawned (the supervisor when split). */
  pid: number;
  /** The pid of the unprivileged HTTP worker, when split. */
  workerPid: number | undefined;
  /** Host uid range the engine gives to sandboxes. */
  uidRange: { start: number; count: number };
  child: ChildProcess;
  /** Everything the server wrote so far. */
  output(): { stdout: string; stderr: string };
  req(method: string, path: string, options?: ReqOptions): Promise<Res>;
  /** Mint an API key through the API (admin). */
  createKey(body: Record<string, unknown>): Promise<{ key: string; id: string }>;
  /** Create a sandbox as the admin (or `key`) and return its id. */
  createSandbox(body?: Record<string, unknown>, key?: string): Promise<string>;
  close(): Promise<void>;
}

let counter = 0;

export async function startPalisade(options: ServeOptions = {}): Promise<Palisade> {
  const n = counter++;
  const uidRange = {
    start: 1_810_000_000 + ((process.pid % 2000) * 8 + (n % 8)) * 1000,
    count: 1000,
  };
  const dataDir = mkdtempSync(join(tmpdir(), 'palisade-attack-'));
  chmodSync(dataDir, 0o711);
  const args: string[] = [];
  if (options.singleProcess) args.push('--single-process');
  if (options.policy !== undefined) {
    const policyFile = join(dataDir, 'operator-policy.yaml');
    writeFileSync(policyFile, options.policy, { mode: 0o644 });
    args.push('--policy', policyFile);
  }
  args.push(...(options.args ?? []));
  // A test file that dies (timeout, crash) must not leave its server running.
  let reap = () => {};
  const started = await spawnServe({
    dataDir,
    logLevel: 'info',
    engineUids: uidRange,
    engineCgroup: `palisade-attack-${process.pid}-${n}`,
    args,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/root', ...options.env },
    waitForAdminKey: true,
    waitForWorker: process.getuid?.() === 0 && !options.singleProcess,
    ...(options.startTimeoutMs !== undefined ? { startTimeoutMs: options.startTimeoutMs } : {}),
    onSpawn: (spawned) => {
      reap = () => spawned.kill('SIGTERM');
      process.once('exit', reap);
    },
  });
  const { child, exited, output } = started;
  const url = started.url;
  const adminKey = started.adminKey!;
  const req = (method: string, path: string, opts: ReqOptions = {}) =>
    request(url, method, path, { key: adminKey, ...opts });
  return {
    url,
    adminKey,
    dataDir,
    pid: child.pid!,
    workerPid: started.workerPid,
    uidRange,
    child,
    output,
    req,
    async createKey(body) {
      const res = await req('POST', '/v1/keys', { body });
      if (res.status !== 201) throw new Error(`key creation failed: ${res.status} ${res.text}`);
      return { key: res.json.key as string, id: res.json.id as string };
    },
    async createSandbox(body = {}, key) {
      const res = await req('POST', '/v1/sandboxes', { body, ...(key ? { key } : {}) });
      if (res.status !== 201) throw new Error(`sandbox creation failed: ${res.status} ${res.text}`);
      return res.json.id as string;
    },
    async close() {
      process.removeListener('exit', reap);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Run a shell command in a sandbox through the API; returns the parsed exec result. */
export async function execIn(
  p: Palisade,
  sandboxId: string,
  command: string,
  key?: string,
): Promise<Res> {
  return p.req('POST', `/v1/sandboxes/${sandboxId}/exec`, {
    body: { command },
    ...(key ? { key } : {}),
  });
}

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `command` to completion with a minimal environment (PATH, HOME=/root, plus `env`). */
export function runCommand(
  command: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/root', ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Run the `palisade` CLI (from source) to completion, as `runCommand` does. */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CommandResult> {
  return runCommand(process.execPath, ['--import', 'tsx', CLI_ENTRY, ...args], env);
}
