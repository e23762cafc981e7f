/**
 * `palisade demo` (what `npm start` runs): shows in one go what a sandbox looks like from the
 * inside — only its own processes, a non-root user, no host secrets, no network — using the
 * same path as `palisade run`.
 */
import { runCommand } from './run.js';

const SCRIPT = [
  'echo "== whoami: $(id)"',
  'echo "== processes visible inside the sandbox (the host has many more):"; ps aux',
  'echo "== /etc/shadow: $(cat /etc/shadow 2>&1 | head -c 80)"',
  'echo "== network interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " " | tr "\\n" " ")"',
  'echo "== reaching the internet: $(getent hosts example.com >/dev/null 2>&1 && echo RESOLVED || echo "no DNS, no route")"',
  'echo "== writing outside /workspace: $(touch /usr/x 2>&1)"',
  'echo "hello" > /workspace/hello.txt && echo "== /workspace is writable: $(cat /workspace/hello.txt)"',
].join('; ');

export async function demoCommand(_args: string[]): Promise<number> {
  process.stdout.write(
    'palisade demo: running a command in a fresh sandbox (palisade run --shell ...)\n\n',
  );
  return runCommand(['--timeout', '20s', '--shell', '--', SCRIPT]);
}
