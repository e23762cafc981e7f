import { spawn } from 'node:child_process';

export interface CommandResult {
  /** Exit status; null when the program could not be started or was killed. */
  status: number | null;
  stdout: string;
  stderr: string;
  /** Set when the program could not be started at all (e.g. ENOENT: not installed). */
  spawnError: NodeJS.ErrnoException | undefined;
}

const OUTPUT_CAP_BYTES = 64 * 1024;
const DEFAULT_TIMEOUT_MS = 60_000;

/**
 * Runs a host tool (mkfs.ext4, mount, umount, the quota helper) with a fixed, minimal
 * environment so the caller's environment cannot change its behaviour (PATH hijack, locale
 * that changes the messages we match), bounded output and a timeout.
 */
export function runCommand(
  program: string,
  args: readonly string[],
  options: { timeoutMs?: number } = {},
): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(program, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        LANG: 'C',
        LC_ALL: 'C',
      },
      timeout: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      killSignal: 'SIGKILL',
    });
    const stdout = boundedCollector();
    const stderr = boundedCollector();
    let spawnError: NodeJS.ErrnoException | undefined;
    child.stdout.on('data', stdout.push);
    child.stderr.on('data', stderr.push);
    child.on('error', (err: NodeJS.ErrnoException) => {
      spawnError = err;
    });
    child.on('close', (status) => {
      resolve({ status, stdout: stdout.text(), stderr: stderr.text(), spawnError });
    });
  });
}

function boundedCollector(): { push: (chunk: Buffer) => void; text: () => string } {
  const chunks: Buffer[] = [];
  let size = 0;
  return {
    push: (chunk: Buffer) => {
      if (size >= OUTPUT_CAP_BYTES) return;
      const room = OUTPUT_CAP_BYTES - size;
      const kept = chunk.length > room ? chunk.subarray(0, room) : chunk;
      chunks.push(kept);
      size += kept.length;
    },
    text: () => Buffer.concat(chunks).toString('utf8'),
  };
}

/** First non-empty line of a tool's stderr, for error messages. */
export function firstLine(text: string): string {
  const line = text
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l.length > 0);
  return (line ?? '').slice(0, 300);
}
