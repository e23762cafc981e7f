/**
 * Control-plane benchmark over HTTP on loopback with the real engine: create + first exec,
 * warm exec, a burst of 100 concurrent create + exec, and GET throughput. Prints a table.
 * The HTTP client runs in a separate process so it does not share the server's event loop.
 * Run: npm run bench:api   (needs root or the engine's requirements; see palisade doctor)
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSandboxRuntime } from '../src/sandbox/index.js';
import { startControlPlane } from '../src/server/index.js';

const UNLIMITED = { burst: 1e9, perSecond: 1e9 };
const LIMITS = { create: UNLIMITED, exec: UNLIMITED, write: UNLIMITED, read: UNLIMITED };
/** A small disk quota so 100 concurrent sandboxes fit the workspace pool. */
const SANDBOX = { limits: { diskBytes: 64 * 1024 * 1024 } };

function pct(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'palisade-bench-api-'));
  chmodSync(dataDir, 0o711);
  const runtime = await createSandboxRuntime({
    dataDir: join(dataDir, 'engine'),
    cgroupPrefix: `palisade-bench-api-${process.pid}`,
    uidRange: { start: 1_760_000_000 + (process.pid % 1000) * 1000, count: 1000 },
    workspacePoolBytes: 16 * 1024 ** 3,
  });
  const plane = await startControlPlane({
    runtime,
    config: {
      dataDir,
      port: 0,
      logLevel: 'silent',
      rateLimits: { perKey: LIMITS, global: LIMITS },
      quotas: { maxLiveSandboxes: 1000, maxTotalMemoryBytes: 1024 ** 5 },
    },
  });
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], {
      stdio: 'inherit',
      env: { ...process.env, PALISADE_BENCH_URL: plane.url, PALISADE_BENCH_KEY: plane.adminKey! },
    });
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    if (code !== 0) process.exitCode = 1;
  } finally {
    await plane.close();
    await runtime.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function measure(base: string, key: string): Promise<void> {
  const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
  const post = async (path: string, body: unknown) => {
    const res = await fetch(base + path, { method: 'POST', headers, body: JSON.stringify(body) });
    const json = (await res.json()) as Record<string, unknown>;
    if (!res.ok) throw new Error(`${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  const del = async (id: string) => {
    await (
      await fetch(`${base}/v1/sandboxes/${id}?purge=true`, {
        method: 'DELETE',
        headers: { authorization: headers.authorization },
      })
    ).text();
  };
  const createAndExec = async (): Promise<{ id: string; ms: number }> => {
    const t0 = performance.now();
    const sb = await post('/v1/sandboxes', SANDBOX);
    await post(`/v1/sandboxes/${String(sb.id)}/exec`, { argv: ['true'] });
    return { id: String(sb.id), ms: performance.now() - t0 };
  };

  const rows: [string, string, string][] = [];
  // Warm-up (JIT, first engine paths).
  for (let i = 0; i < 3; i++) await del((await createAndExec()).id);

  const cold: number[] = [];
  for (let i = 0; i < 30; i++) {
    const r = await createAndExec();
    cold.push(r.ms);
    await del(r.id);
  }
  rows.push(['create + first exec (true), p50', `${pct(cold, 50).toFixed(1)} ms`, '≤ 25 ms']);
  rows.push(['create + first exec (true), p95', `${pct(cold, 95).toFixed(1)} ms`, '']);

  const warmId = String((await post('/v1/sandboxes', SANDBOX)).id);
  const warm: number[] = [];
  for (let i = 0; i < 20; i++) await post(`/v1/sandboxes/${warmId}/exec`, { argv: ['true'] });
  for (let i = 0; i < 200; i++) {
    const t0 = performance.now();
    await post(`/v1/sandboxes/${warmId}/exec`, { argv: ['true'] });
    warm.push(performance.now() - t0);
  }
  rows.push(['exec in warm sandbox (true), p50', `${pct(warm, 50).toFixed(2)} ms`, '≤ 8 ms']);
  rows.push(['exec in warm sandbox (true), p95', `${pct(warm, 95).toFixed(2)} ms`, '']);

  const t0 = performance.now();
  const burst = await Promise.all(Array.from({ length: 100 }, () => createAndExec()));
  const burstTotal = performance.now() - t0;
  rows.push([
    'burst of 100 concurrent create + exec, total',
    `${burstTotal.toFixed(0)} ms`,
    '≤ 1500 ms',
  ]);
  rows.push([
    'burst of 100, per-request p95',
    `${pct(
      burst.map((b) => b.ms),
      95,
    ).toFixed(0)} ms`,
    '',
  ]);
  await Promise.all(burst.map((b) => del(b.id)));

  let count = 0;
  const until = performance.now() + 2000;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (performance.now() < until) {
        const res = await fetch(`${base}/v1/sandboxes/${warmId}`, {
          headers: { authorization: headers.authorization },
        });
        await res.text();
        if (res.ok) count++;
      }
    }),
  );
  rows.push(['GET /v1/sandboxes/{id}, 8 concurrent clients', `${Math.round(count / 2)} req/s`, '']);

  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.max(...rows.map((r) => r[1].length));
  console.log(`Palisade control plane over HTTP on loopback (${new Date().toISOString()})`);
  console.log(`${'measurement'.padEnd(w0)}  ${'result'.padStart(w1)}  target`);
  console.log(`${'-'.repeat(w0)}  ${'-'.repeat(w1)}  ------`);
  for (const [name, value, target] of rows)
    console.log(`${name.padEnd(w0)}  ${value.padStart(w1)}  ${target}`);
}

const clientUrl = process.env.PALISADE_BENCH_URL;
const clientKey = process.env.PALISADE_BENCH_KEY;
if (clientUrl && clientKey) await measure(clientUrl, clientKey);
else await main();
