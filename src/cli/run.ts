/**
 * `palisade run`: a one-shot sandbox, like `srt`, with the engine's full isolation. Exits with
 * the command's status; 124 on timeout (like timeout(1)), 125 when Palisade itself failed,
 * 126/127 when the command could not be started.
 */
import { parseArgs } from 'node:util';
import { isPalisadeError, PalisadeError } from '../errors/index.js';
import {
  parseDuration,
  parseSize,
  type CreateSandboxOptions,
  type ResourceLimits,
  type SandboxRuntime,
} from '../sandbox/index.js';
import { join } from 'node:path';
import {
  createEgressGateway,
  egressPolicyFromFlags,
  formatDenials,
  type EgressGateway,
} from '../egress/index.js';
import { startOneShotEngine } from './engine-config.js';

export const RUN_USAGE = `Usage: palisade run [options] -- CMD [ARGS...]

Runs CMD in a fresh sandbox (own user, pid, mount, ipc, uts, cgroup and network namespaces,
seccomp filter, kernel resource limits, no network) and exits with its status.

Options:
  --memory SIZE        memory limit (default 512m)
  --pids N             process/thread limit (default 256)
  --cpu N              CPU cores, fractions allowed (default 1)
  --disk SIZE          workspace disk quota (default 1g; 0 = none, only with --workspace)
  --timeout DURATION   kill the command's whole process tree after this (default 30s)
  --workspace DIR      use host directory DIR as /workspace (read-write)
  --env K=V            set an environment variable (repeatable)
  --max-output SIZE    stop relaying stdout/stderr after this many bytes each (default 64m)
  --shell              run CMD as one shell string with /bin/sh -c

Network (none unless allowed; traffic goes through Palisade's egress gateway):
  --allow-domain D     allow D (exact) or *.D (subdomains only), ports 80/443 (repeatable)
  --allow-cidr C       allow an IP address or CIDR, e.g. 10.0.0.0/8 (repeatable)
  --allow-port P       also allow port P for the allowed hosts (repeatable)
  Blocked connections are listed on stderr after the command exits.
`;

const EXIT_TIMEOUT = 124;
const EXIT_PALISADE = 125;

export interface RunOptions {
  limits: Partial<ResourceLimits>;
  timeoutMs: number;
  workspaceDir?: string;
  env: Record<string, string>;
  maxOutputBytes: number;
  argv: string[];
  shell: boolean;
  network: { allowDomains: string[]; allowCidrs: string[]; allowPorts: number[] };
}

export function parseRunArgs(args: string[]): RunOptions {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        memory: { type: 'string' },
        pids: { type: 'string' },
        cpu: { type: 'string' },
        disk: { type: 'string' },
        timeout: { type: 'string' },
        workspace: { type: 'string' },
        env: { type: 'string', multiple: true },
        'max-output': { type: 'string' },
        shell: { type: 'boolean' },
        'allow-domain': { type: 'string', multiple: true },
        'allow-cidr': { type: 'string', multiple: true },
        'allow-port': { type: 'string', multiple: true },
      },
    });
  } catch (err) {
    throw new PalisadeError('INVALID_ARGUMENT', `${(err as Error).message}\n\n${RUN_USAGE}`);
  }
  const v = parsed.values;
  if (parsed.positionals.length === 0)
    throw new PalisadeError('INVALID_ARGUMENT', `no command given\n\n${RUN_USAGE}`);
  const limits: Partial<ResourceLimits> = {};
  if (v.memory !== undefined) limits.memoryBytes = parseSize(v.memory, '--memory');
  if (v.disk !== undefined) limits.diskBytes = parseSize(v.disk, '--disk');
  if (v.pids !== undefined) {
    if (!/^\d+$/.test(v.pids))
      throw new PalisadeError('INVALID_LIMIT', '--pids must be a whole number');
    limits.pids = Number(v.pids);
  }
  if (v.cpu !== undefined) {
    if (!/^\d+(\.\d+)?$/.test(v.cpu))
      throw new PalisadeError('INVALID_LIMIT', '--cpu must be a number of cores, e.g. 1 or 0.5');
    limits.cpus = Number(v.cpu);
  }
  const env: Record<string, string> = {};
  for (const pair of v.env ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0)
      throw new PalisadeError(
        'INVALID_ENV',
        `--env expects NAME=VALUE, got ${JSON.stringify(pair)}`,
      );
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const shell = v.shell === true;
  if (shell && parsed.positionals.length !== 1)
    throw new PalisadeError('INVALID_ARGUMENT', '--shell takes exactly one command string');
  return {
    limits,
    timeoutMs: v.timeout === undefined ? 30_000 : parseDuration(v.timeout, '--timeout'),
    ...(v.workspace !== undefined ? { workspaceDir: v.workspace } : {}),
    env,
    maxOutputBytes:
      v['max-output'] === undefined ? 64 * 1024 * 1024 : parseSize(v['max-output'], '--max-output'),
    argv: parsed.positionals,
    shell,
    network: {
      allowDomains: v['allow-domain'] ?? [],
      allowCidrs: v['allow-cidr'] ?? [],
      allowPorts: (v['allow-port'] ?? []).map((p) => {
        if (!/^\d{1,5}$/.test(p))
          throw new PalisadeError('INVALID_ARGUMENT', `--allow-port ${p} is not a port number`);
        return Number(p);
      }),
    },
  };
}

export async function runCommand(args: string[]): Promise<number> {
  if (args[0] === '--help' || args[0] === '-h') {
    process.stdout.write(RUN_USAGE);
    return 0;
  }
  let options: RunOptions;
  try {
    options = parseRunArgs(args);
  } catch (err) {
    if (isPalisadeError(err)) {
      process.stderr.write(`palisade run: ${err.message}\n`);
      return EXIT_PALISADE;
    }
    throw err;
  }
  let engine: SandboxRuntime | undefined;
  let gateway: EgressGateway | undefined;
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const wantsNetwork =
      options.network.allowDomains.length + options.network.allowCidrs.length > 0;
    const policy = wantsNetwork ? egressPolicyFromFlags(options.network) : undefined;
    let dataDir: string;
    ({ engine, dataDir } = await startOneShotEngine());
    const create: CreateSandboxOptions = { limits: options.limits, env: options.env };
    if (policy) {
      const gw = createEgressGateway({ socketDir: join(dataDir, 'egress') });
      gateway = gw;
      create.network = async (sb) => {
        const net = await gw.attach(sb.id, policy, { uid: sb.hostUid, gid: sb.hostGid });
        return { ...net, release: () => gw.detach(sb.id) };
      };
    }
    if (options.workspaceDir !== undefined) create.workspaceDir = options.workspaceDir;
    const sandbox = await engine.create(create);
    const handle = await engine.exec(sandbox.id, {
      ...(options.shell ? { command: options.argv[0]! } : { argv: options.argv }),
      timeoutMs: options.timeoutMs,
      maxOutputBytes: options.maxOutputBytes,
      openStdin: !process.stdin.isTTY,
      onStdout: (c) => process.stdout.write(c),
      onStderr: (c) => process.stderr.write(c),
      signal: abort.signal,
    });
    if (!process.stdin.isTTY) {
      process.stdin.on('data', (chunk: Buffer) => {
        process.stdin.pause();
        handle.writeStdin(chunk).then(
          () => process.stdin.resume(),
          () => process.stdin.destroy(),
        );
      });
      process.stdin.on('end', () => handle.closeStdin());
      process.stdin.on('error', () => handle.closeStdin());
    }
    const result = await handle.done;
    process.stdin.destroy();
    if (gateway) {
      // A refusal's event is emitted when the gateway closes that connection, which can be
      // just after the command exited: destroy (which detaches the sandbox from the gateway
      // and closes its connections) and let those closes run before reporting.
      await engine.destroy(sandbox.id);
      await new Promise((r) => setTimeout(r, 50));
      const denials = formatDenials(gateway.recentDenials(sandbox.id));
      if (denials) process.stderr.write(`${denials}\n`);
    }
    if (result.stdoutTruncated || result.stderrTruncated) {
      process.stderr.write(
        `palisade run: output exceeded ${options.maxOutputBytes} bytes and was cut off\n`,
      );
    }
    if (result.timedOut) {
      process.stderr.write(
        `palisade run: the command timed out after ${options.timeoutMs} ms; its whole process tree was killed\n`,
      );
      return EXIT_TIMEOUT;
    }
    if (result.exitCode !== null) return result.exitCode;
    const signals: Record<string, number> = {
      SIGHUP: 1,
      SIGINT: 2,
      SIGQUIT: 3,
      SIGKILL: 9,
      SIGSEGV: 11,
      SIGPIPE: 13,
      SIGTERM: 15,
      SIGABRT: 6,
      SIGXCPU: 24,
    };
    return 128 + (signals[result.signal ?? ''] ?? 1);
  } catch (err) {
    process.stdin.destroy();
    if (isPalisadeError(err)) {
      process.stderr.write(`palisade run: ${err.message} [${err.code}]\n`);
      if (err.code === 'EXEC_START_FAILED') return err.details?.errno === 2 ? 127 : 126;
      return EXIT_PALISADE;
    }
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await engine?.close();
    await gateway?.close();
  }
}
