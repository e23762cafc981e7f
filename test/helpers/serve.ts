// Spawn a real `palisade serve` (through tsx, from the source tree) and wait until it says it is
// up. Callers choose what "up" means: the URL always, plus the admin key and/or the HTTP worker
// pid when they need them. The higher-level fixture for the attack suites is
// `startPalisade` in test/security/fixture.ts, built on this.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

export const CLI_ENTRY = join(import.meta.dirname, '..', 'server', 'cli-entry.ts');

export interface SpawnServeOptions {
  dataDir: string;
  /** `--log-level`; omitted when undefined (the server's default). */
  logLevel?: string;
  /** `--engine-uids start:count`. */
  engineUids?: { start: number; count: number };
  /** `--engine-cgroup`. */
  engineCgroup?: string;
  /** Further `palisade serve` arguments. */
  args?: string[];
  /** The server's whole environment; when undefined it inherits this process's. */
  env?: NodeJS.ProcessEnv;
  /** Also wait for the `Admin API key:` line (printed on first start only). */
  waitForAdminKey?: boolean;
  /** Also wait for the `HTTP worker pid` line (privilege-separated mode only). */
  waitForWorker?: boolean;
  /** Milliseconds to wait for the server to come up (default 60 s). */
  startTimeoutMs?: number;
  /** Called with the child right after spawning, before it is up (e.g. to arrange reaping). */
  onSpawn?: (child: ChildProcess) => void;
}

export interface SpawnedServe {
  child: ChildProcess;
  url: string;
  /** Undefined when the data directory already had keys (no key is printed then). */
  adminKey: string | undefined;
  workerPid: number | undefined;
  /** Resolves with the exit code when the process exits. */
  exited: Promise<number | null>;
  /** Everything the server wrote so far. */
  output(): { stdout: string; stderr: string };
}

export async function spawnServe(options: SpawnServeOptions): Promise<SpawnedServe> {
  const args = ['--import', 'tsx', CLI_ENTRY, 'serve', '--port', '0'];
  args.push('--data-dir', options.dataDir);
  if (options.logLevel !== undefined) args.push('--log-level', options.logLevel);
  if (options.engineUids) {
    args.push('--engine-uids', `${options.engineUids.start}:${options.engineUids.count}`);
  }
  if (options.engineCgroup !== undefined) args.push('--engine-cgroup', options.engineCgroup);
  args.push(...(options.args ?? []));
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(options.env ? { env: options.env } : {}),
  });
  options.onSpawn?.(child);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let stdout = '';
  let stderr = '';
  const output = () => ({ stdout, stderr });
  const started = await new Promise<{ url: string; adminKey?: string; workerPid?: number }>(
    (resolve, reject) => {
      const timer = setTimeout(() => {
        // A server that never came up must not outlive the test that started it.
        child.kill('SIGKILL');
        reject(new Error(`palisade serve did not start: ${stdout} ${stderr}`));
      }, options.startTimeoutMs ?? 60_000);
      const check = () => {
        const url = /listening on (http:\/\/\S+)/.exec(stdout)?.[1];
        const adminKey = /^Admin API key: (\S+)$/m.exec(stdout)?.[1];
        const worker = /HTTP worker pid (\d+)/.exec(stderr)?.[1];
        if (!url) return;
        if (options.waitForAdminKey && !adminKey) return;
        if (options.waitForWorker && !worker) return;
        clearTimeout(timer);
        resolve({
          url,
          ...(adminKey ? { adminKey } : {}),
          ...(worker ? { workerPid: Number(worker) } : {}),
        });
      };
      child.stdout!.on('data', (d: Buffer) => {
        stdout += d.toString();
        check();
      });
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
        check();
      });
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`palisade serve exited ${code}: ${stdout} ${stderr}`));
      });
    },
  );
  return {
    child,
    url: started.url,
    adminKey: started.adminKey,
    workerPid: started.workerPid,
    exited,
    output,
  };
}
