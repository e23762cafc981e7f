/**
 * Egress gateway benchmark (npm run bench:egress): prints a markdown table and writes it to
 * bench/results/egress.md. Not a test: it measures, it does not assert. Loopback only.
 *
 *  1. connection set-up: time from "start connecting" to the first echoed byte, direct TCP
 *     to 127.0.0.1 vs through the gateway's unix socket (CONNECT by IP, CONNECT by name with
 *     an in-memory resolver, SOCKS5 by name). p50 and p95 over interleaved runs.
 *  2. throughput: a 100 MB download, direct vs through a CONNECT tunnel (best of N).
 *
 * Three processes, as in production where the client (sandbox), the gateway and the upstream
 * never share an event loop: this one is the client; it starts one child running the upstream
 * servers and one running the gateway. What the in-sandbox side adds (the agent's TCP →
 * unix-socket hop) is not included here.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createEgressGateway } from '../src/egress/index.js';
import { parseEgressPolicy, parseIp } from '../src/policy/network/index.js';
import type { IpAddress } from '../src/policy/network/index.js';

const SETUP_ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 500);
const TRANSFER_BYTES = Number(process.env.BENCH_TRANSFER_BYTES ?? 100 * 1024 * 1024);
const TRANSFER_RUNS = Number(process.env.BENCH_TRANSFER_RUNS ?? 5);

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function listen(server: ReturnType<typeof createServer>): Promise<number> {
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)),
  );
}

function once(socket: Socket, event: string): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once(event, () => resolve());
    socket.once('error', reject);
  });
}

/** Reads until `done` says how many leading bytes form the answer; the rest goes back to the socket. */
function readUntil(socket: Socket, done: (buffer: Buffer) => number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buffer: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]);
      const used = done(buffer);
      if (used >= 0) {
        socket.off('data', onData);
        socket.pause();
        if (used < buffer.length) socket.unshift(buffer.subarray(used));
        resolve(buffer.subarray(0, used));
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.resume();
  });
}

async function echoRoundTrip(socket: Socket): Promise<void> {
  socket.write('x');
  await readUntil(socket, (b) => (b.length >= 1 ? 1 : -1));
}

async function connectViaGateway(path: string, authority: string): Promise<Socket> {
  const socket = connect(path);
  await once(socket, 'connect');
  socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  const head = await readUntil(socket, (b) => {
    const end = b.indexOf('\r\n\r\n');
    return end < 0 ? -1 : end + 4;
  });
  if (!head.toString('latin1').startsWith('HTTP/1.1 200'))
    throw new Error(`gateway refused: ${head.toString()}`);
  return socket;
}

async function connectViaSocks(path: string, host: string, port: number): Promise<Socket> {
  const socket = connect(path);
  await once(socket, 'connect');
  socket.write(Buffer.from([5, 1, 0]));
  await readUntil(socket, (b) => (b.length >= 2 ? 2 : -1));
  socket.write(
    Buffer.from([5, 1, 0, 3, host.length, ...Buffer.from(host), port >> 8, port & 0xff]),
  );
  const reply = await readUntil(socket, (b) => (b.length >= 10 ? 10 : -1));
  if (reply[1] !== 0) throw new Error(`socks refused: ${reply[1]}`);
  return socket;
}

async function timeIt(fn: () => Promise<Socket>): Promise<number> {
  const start = process.hrtime.bigint();
  const socket = await fn();
  await echoRoundTrip(socket);
  const elapsed = Number(process.hrtime.bigint() - start) / 1e6;
  socket.destroy();
  return elapsed;
}

async function download(open: () => Promise<Socket>): Promise<number> {
  const start = process.hrtime.bigint();
  const socket = await open();
  let received = 0;
  await new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
    });
    socket.once('end', () => resolve());
    socket.once('error', reject);
    socket.resume();
  });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  socket.destroy();
  if (received !== TRANSFER_BYTES)
    throw new Error(`received ${received} of ${TRANSFER_BYTES} bytes`);
  return TRANSFER_BYTES / seconds / (1024 * 1024);
}

/** Child: the upstream servers. Prints "echoPort sourcePort". */
async function runServers(): Promise<void> {
  const echo = createServer((socket) => {
    socket.on('data', (chunk: Buffer) => socket.write(chunk));
    socket.on('error', () => {});
  });
  const echoPort = await listen(echo);
  const block = Buffer.alloc(1024 * 1024, 0x61);
  const source = createServer((socket) => {
    socket.on('error', () => {});
    let left = TRANSFER_BYTES;
    const pump = (): void => {
      while (left > 0) {
        const piece = left >= block.length ? block : block.subarray(0, left);
        left -= piece.length;
        if (!socket.write(piece)) {
          socket.once('drain', pump);
          return;
        }
      }
      socket.end();
    };
    pump();
  });
  const sourcePort = await listen(source);
  process.stdout.write(`${echoPort} ${sourcePort}\n`);
}

/** Child: the gateway. Prints the proxy socket path. */
async function runGateway(echoPort: number, sourcePort: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'pal-bench-'));
  const table: Record<string, IpAddress[]> = {
    'echo.bench': [parseIp('127.0.0.1')!],
    'source.bench': [parseIp('127.0.0.1')!],
  };
  const gateway = createEgressGateway({
    socketDir: dir,
    resolver: { resolve: async (host) => table[host] ?? [] },
    limits: {
      maxConnectionsPerSandbox: 1024,
      maxBytesInPerSandbox: Number.MAX_SAFE_INTEGER,
      maxBytesOutPerSandbox: Number.MAX_SAFE_INTEGER,
    },
  });
  const policy = parseEgressPolicy(
    {
      allow: [
        `echo.bench:${echoPort}`,
        `source.bench:${sourcePort}`,
        `127.0.0.1:${echoPort},${sourcePort}`,
      ],
    },
    'bench',
  );
  const owner =
    process.getuid?.() === 0
      ? { uid: 65534, gid: 65534 }
      : { uid: process.getuid?.() ?? 1000, gid: process.getgid?.() ?? 1000 };
  const network = await gateway.attach('bench', policy, owner);
  process.stdout.write(`${network.bridges[0]!.hostSocket}\n`);
  const shutdown = async (): Promise<void> => {
    await gateway.close();
    rmSync(dir, { recursive: true, force: true });
    process.exit(0);
  };
  process.stdin.on('end', () => void shutdown());
  // Any line on stdin: report this process's CPU time so far (µs), for CPU cost per byte.
  process.stdin.on('data', () => {
    const usage = process.cpuUsage();
    process.stdout.write(`${usage.user + usage.system}\n`);
  });
  process.stdin.resume();
}

function startChild(args: string[]): Promise<{ child: ChildProcess; line: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...args], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const newline = out.indexOf('\n');
      if (newline >= 0) resolve({ child, line: out.slice(0, newline) });
    });
    child.once('exit', (code) =>
      reject(new Error(`benchmark child ${args[0]} exited with ${code}`)),
    );
  });
}

async function main(): Promise<void> {
  const servers = await startChild(['--servers']);
  const [echoPort, sourcePort] = servers.line.split(' ').map(Number) as [number, number];
  const gatewayChild = await startChild(['--gateway', String(echoPort), String(sourcePort)]);
  const path = gatewayChild.line;
  servers.child.removeAllListeners('exit');
  gatewayChild.child.removeAllListeners('exit');

  const direct = async (port: number): Promise<Socket> => {
    const socket = connect({ host: '127.0.0.1', port, noDelay: true });
    await once(socket, 'connect');
    return socket;
  };
  const variants: Array<[string, () => Promise<Socket>]> = [
    ['direct TCP 127.0.0.1', () => direct(echoPort)],
    ['gateway CONNECT 127.0.0.1 (by IP)', () => connectViaGateway(path, `127.0.0.1:${echoPort}`)],
    [
      'gateway CONNECT echo.bench (by name)',
      () => connectViaGateway(path, `echo.bench:${echoPort}`),
    ],
    ['gateway SOCKS5 echo.bench (by name)', () => connectViaSocks(path, 'echo.bench', echoPort)],
  ];
  const samples = new Map<string, number[]>(variants.map(([name]) => [name, []]));
  for (let i = 0; i < 50; i++) for (const [, fn] of variants) await timeIt(fn); // warm-up
  for (let i = 0; i < SETUP_ITERATIONS; i++) {
    for (const [name, fn] of variants) samples.get(name)!.push(await timeIt(fn));
  }

  const gatewayCpuMicros = async (): Promise<number> => {
    const child = gatewayChild.child;
    return new Promise((resolve) => {
      child.stdout!.once('data', (chunk: Buffer) => resolve(Number(chunk.toString().trim())));
      child.stdin!.write('cpu\n');
    });
  };
  let gatewayCpuTotal = 0;
  const throughput = new Map<string, number[]>([
    ['direct', []],
    ['gateway CONNECT', []],
  ]);
  for (let i = 0; i < TRANSFER_RUNS; i++) {
    throughput.get('direct')!.push(await download(() => direct(sourcePort)));
    const cpuBefore = await gatewayCpuMicros();
    throughput
      .get('gateway CONNECT')!
      .push(await download(() => connectViaGateway(path, `source.bench:${sourcePort}`)));
    gatewayCpuTotal += (await gatewayCpuMicros()) - cpuBefore;
  }

  gatewayChild.child.stdin!.end();
  servers.child.kill();
  const load = loadavg()[0]!.toFixed(1);

  const directSorted = [...samples.get('direct TCP 127.0.0.1')!].sort((a, b) => a - b);
  const directP50 = percentile(directSorted, 50);
  const lines: string[] = [];
  lines.push(`# Egress gateway benchmark`);
  lines.push('');
  lines.push(
    `Host: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Linux ${release()}, Node ${process.version}, load average ${load} during the run (shared machine). Loopback only; client, gateway and upstream in separate processes.`,
  );
  lines.push('');
  lines.push(
    `## Connection set-up to first echoed byte (${SETUP_ITERATIONS} interleaved runs each)`,
  );
  lines.push('');
  lines.push('| path | p50 (ms) | p95 (ms) | added at p50 (ms) |');
  lines.push('|---|---:|---:|---:|');
  for (const [name] of variants) {
    const sorted = [...samples.get(name)!].sort((a, b) => a - b);
    const p50 = percentile(sorted, 50);
    lines.push(
      `| ${name} | ${p50.toFixed(3)} | ${percentile(sorted, 95).toFixed(3)} | ${(p50 - directP50).toFixed(3)} |`,
    );
  }
  lines.push('');
  lines.push(
    `## Throughput, ${(TRANSFER_BYTES / (1024 * 1024)).toFixed(0)} MiB download (best of ${TRANSFER_RUNS})`,
  );
  lines.push('');
  lines.push('| path | MiB/s (best) | MiB/s (median) | % of direct (best) |');
  lines.push('|---|---:|---:|---:|');
  const directBest = Math.max(...throughput.get('direct')!);
  for (const [name, runs] of throughput) {
    const sorted = [...runs].sort((a, b) => a - b);
    const best = sorted.at(-1)!;
    lines.push(
      `| ${name} | ${best.toFixed(0)} | ${percentile(sorted, 50).toFixed(0)} | ${((best / directBest) * 100).toFixed(1)}% |`,
    );
  }
  lines.push('');
  const mib = TRANSFER_BYTES / (1024 * 1024);
  const cpuMsPerTransfer = gatewayCpuTotal / TRANSFER_RUNS / 1000;
  lines.push(
    `Gateway CPU time per ${mib.toFixed(0)} MiB relayed: ${cpuMsPerTransfer.toFixed(0)} ms ` +
      `(≈ ${(mib / (cpuMsPerTransfer / 1000)).toFixed(0)} MiB/s per fully available core).`,
  );
  lines.push('');
  lines.push('Targets (issue 4): ≤ 1 ms added at p50; ≥ 90% of direct throughput.');
  const text = lines.join('\n') + '\n';
  process.stdout.write(text);
  mkdirSync('bench/results', { recursive: true });
  writeFileSync('bench/results/egress.md', text);
}

const mode = process.argv[2];
const run =
  mode === '--servers'
    ? runServers()
    : mode === '--gateway'
      ? runGateway(Number(process.argv[3]), Number(process.argv[4]))
      : main();
run.catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
