/**
 * Cost of workspace encryption at rest: 30 sandbox create + exec + destroy cycles with
 * `workspaceEncryption: 'off'` and with 'required' (no warm workspaces, so every create pays for
 * mkfs, mount and, when encrypting, key + policy), then the pool alone (create + remove).
 * Prints a table. Run: node --import tsx bench/workspace-encryption.ts   (root, like the engine)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSandboxRuntime } from '../src/sandbox/index.js';
import { openWorkspacePool, type WorkspaceEncryption } from '../src/sandbox/workspace/index.js';

const CYCLES = 30;
const DISK_BYTES = 256 * 1024 * 1024;

function stats(values: number[]): { p50: number; p95: number; mean: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (p: number) =>
    sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? NaN;
  return { p50: at(0.5), p95: at(0.95), mean: values.reduce((a, b) => a + b, 0) / values.length };
}

async function engineCycles(mode: WorkspaceEncryption): Promise<Record<string, number[]>> {
  const dataDir = mkdtempSync(join(tmpdir(), `palisade-bench-crypt-${mode}-`));
  const engine = await createSandboxRuntime({
    dataDir,
    cgroupPrefix: `palisade-bench-crypt-${process.pid}`,
    uidRange: { start: 1_700_000_000, count: 100 },
    warmWorkspaces: 0,
    workspaceEncryption: mode,
  });
  const times: Record<string, number[]> = { create: [], exec: [], destroy: [], total: [] };
  try {
    for (let i = 0; i < CYCLES; i++) {
      const t0 = performance.now();
      const sb = await engine.create({ limits: { diskBytes: DISK_BYTES } });
      const t1 = performance.now();
      const r = await engine.run(sb.id, { command: 'echo x > /workspace/f && cat /workspace/f' });
      if (r.exitCode !== 0) throw new Error(`exec failed: ${r.stderr.toString()}`);
      const t2 = performance.now();
      await engine.destroy(sb.id);
      const t3 = performance.now();
      times.create!.push(t1 - t0);
      times.exec!.push(t2 - t1);
      times.destroy!.push(t3 - t2);
      times.total!.push(t3 - t0);
    }
  } finally {
    await engine.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
  return times;
}

async function poolCycles(mode: WorkspaceEncryption): Promise<Record<string, number[]>> {
  const dataDir = mkdtempSync(join(tmpdir(), `palisade-bench-cpool-${mode}-`));
  const pool = await openWorkspacePool({ dataDir, sizeBytes: 4 * DISK_BYTES, encryption: mode });
  const times: Record<string, number[]> = { create: [], remove: [] };
  try {
    for (let i = 0; i < CYCLES; i++) {
      const owner = { uid: 3_950_000 + i, gid: 3_950_000 + i };
      const t0 = performance.now();
      await pool.create(`bench-${i}`, owner, { bytes: DISK_BYTES });
      const t1 = performance.now();
      await pool.remove(`bench-${i}`, owner);
      const t2 = performance.now();
      times.create!.push(t1 - t0);
      times.remove!.push(t2 - t1);
    }
  } finally {
    await pool.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
  return times;
}

async function main(): Promise<void> {
  const rows: string[] = [];
  for (const [scope, run] of [
    ['engine', engineCycles],
    ['pool', poolCycles],
  ] as const) {
    for (const mode of ['off', 'required'] as const) {
      const times = await run(mode);
      for (const [op, values] of Object.entries(times)) {
        const s = stats(values);
        rows.push(
          `| ${scope.padEnd(6)} | ${mode.padEnd(8)} | ${op.padEnd(7)} | ${s.p50.toFixed(1).padStart(6)} | ${s.p95.toFixed(1).padStart(6)} | ${s.mean.toFixed(1).padStart(6)} |`,
        );
      }
    }
  }
  console.log(
    `${CYCLES} cycles each, ${DISK_BYTES / 1024 / 1024} MiB workspaces, no warm workspaces`,
  );
  console.log('| scope  | encrypt  | op      | p50 ms | p95 ms | mean   |');
  console.log('| ------ | -------- | ------- | ------ | ------ | ------ |');
  for (const row of rows) console.log(row);
}

await main();
