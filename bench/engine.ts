/**
 * Engine benchmark (npm run bench:engine): prints a markdown table and writes it to
 * bench/results/engine.md. Not a test: it measures, it does not assert.
 *
 *  1. raw `bwrap … true` with the same namespaces and filesystem layout (the floor)
 *  2. engine create + exec `true` + destroy
 *  3. exec `true` in a warm sandbox
 *  4. host memory per idle sandbox with N idle sandboxes alive at once
 */
import { spawn } from 'node:child_process';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSandboxRuntime, type SandboxInfo } from '../src/sandbox/index.js';
import { filesystemArgs, namespaceArgs, writeSyntheticEtc } from '../src/sandbox/bwrap/layout.js';
import { defaultHelperPath } from '../src/sandbox/bwrap/requirements.js';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 100);
const IDLE_SANDBOXES = Number(process.env.BENCH_IDLE ?? 200);

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}
function summary(samples: number[]): { p50: number; p95: number } {
  const s = [...samples].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p95: percentile(s, 95) };
}
const fmt = (n: number) => n.toFixed(2);

async function rawBwrap(dir: string): Promise<number[]> {
  const etc = join(dir, 'etc');
  writeSyntheticEtc(etc);
  const ws = join(dir, 'ws');
  mkdirSync(ws, { mode: 0o777 });
  const args = [
    ...namespaceArgs(),
    ...filesystemArgs({
      syntheticEtc: etc,
      workspace: ws,
      agentBinary: defaultHelperPath(),
      tmpBytes: 64 << 20,
      mounts: [],
      bridgeSockets: [],
    }),
    '--',
    '/usr/bin/true',
  ];
  const samples: number[] = [];
  for (let i = 0; i < ITERATIONS + 5; i++) {
    const t0 = performance.now();
    await new Promise<void>((resolve, reject) => {
      const p = spawn('/usr/bin/bwrap', args, {
        uid: 1_500_000_000,
        gid: 1_500_000_000,
        stdio: 'ignore',
      });
      p.once('exit', (code) =>
        code === 0 ? resolve() : reject(new Error(`bwrap exited ${code}`)),
      );
    });
    if (i >= 5) samples.push(performance.now() - t0);
  }
  return samples;
}

function rssOfUid(uid: number): { rssKiB: number; pssKiB: number; processes: number } {
  let rssKiB = 0;
  let pssKiB = 0;
  let processes = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = readFileSync(`/proc/${entry}/status`, 'utf8');
      const m = /^Uid:\s+(\d+)/m.exec(status);
      if (!m || Number(m[1]) !== uid) continue;
      processes++;
      rssKiB += Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
      const rollup = readFileSync(`/proc/${entry}/smaps_rollup`, 'utf8');
      pssKiB += Number(/^Pss:\s+(\d+)/m.exec(rollup)?.[1] ?? 0);
    } catch {
      // gone
    }
  }
  return { rssKiB, pssKiB, processes };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'palisade-bench-'));
  chmodSync(dir, 0o711);
  process.stderr.write(`raw bwrap x${ITERATIONS}\n`);
  const floor = summary(await rawBwrap(dir));

  const engine = await createSandboxRuntime({
    dataDir: join(dir, 'engine'),
    cgroupPrefix: `palisade-bench-${process.pid}`,
    uidRange: { start: 1_500_001_000, count: IDLE_SANDBOXES + 10 },
    maxSandboxes: IDLE_SANDBOXES + 10,
  });
  try {
    process.stderr.write(`create+exec+destroy x${ITERATIONS}\n`);
    const cycle: number[] = [];
    const createOnly: number[] = [];
    const destroyOnly: number[] = [];
    for (let i = 0; i < ITERATIONS + 5; i++) {
      const t0 = performance.now();
      const sb = await engine.create();
      const t1 = performance.now();
      const r = await engine.run(sb.id, { argv: ['true'] });
      if (r.exitCode !== 0) throw new Error('true failed');
      const t2 = performance.now();
      await engine.destroy(sb.id);
      const t3 = performance.now();
      if (i >= 5) {
        cycle.push(t3 - t0);
        createOnly.push(t1 - t0);
        destroyOnly.push(t3 - t2);
      }
    }
    process.stderr.write(`warm exec x${ITERATIONS * 5}\n`);
    const warmSb = await engine.create();
    const warm: number[] = [];
    for (let i = 0; i < ITERATIONS * 5 + 20; i++) {
      const t0 = performance.now();
      await engine.run(warmSb.id, { argv: ['true'] });
      if (i >= 20) warm.push(performance.now() - t0);
    }
    await engine.destroy(warmSb.id);

    process.stderr.write(`${IDLE_SANDBOXES} idle sandboxes\n`);
    const idle: SandboxInfo[] = [];
    const tIdle = performance.now();
    // 256 MiB workspaces: quotas are never overcommitted and the pool budget is 64 GiB.
    for (let i = 0; i < IDLE_SANDBOXES; i++)
      idle.push(await engine.create({ limits: { diskBytes: 256 * 1024 * 1024 } }));
    const idleCreateMs = performance.now() - tIdle;
    await new Promise((r) => setTimeout(r, 500));
    let rss = 0;
    let pss = 0;
    let procs = 0;
    for (const sb of idle) {
      const m = rssOfUid(sb.hostUid);
      rss += m.rssKiB;
      pss += m.pssKiB;
      procs += m.processes;
    }
    const alive = (
      await Promise.all(
        idle.map((sb) => engine.run(sb.id, { argv: ['true'] }).then((r) => r.exitCode === 0)),
      )
    ).filter(Boolean).length;
    await Promise.all(idle.map((sb) => engine.destroy(sb.id)));

    const c = summary(cycle);
    const cr = summary(createOnly);
    const de = summary(destroyOnly);
    const w = summary(warm);
    const rows = [
      `| (1) raw \`bwrap … true\`, same namespaces and mounts (floor) | ${fmt(floor.p50)} ms | ${fmt(floor.p95)} ms | — |`,
      `| (2) engine create + exec \`true\` + destroy | ${fmt(c.p50)} ms | ${fmt(c.p95)} ms | ≤ 1.5× (1) = ${fmt(floor.p50 * 1.5)} ms; ratio ${fmt(c.p50 / floor.p50)}× |`,
      `|   of which create | ${fmt(cr.p50)} ms | ${fmt(cr.p95)} ms | |`,
      `|   of which destroy | ${fmt(de.p50)} ms | ${fmt(de.p95)} ms | |`,
      `| (3) exec \`true\` in a warm sandbox | ${fmt(w.p50)} ms | ${fmt(w.p95)} ms | p50 ≤ 5 ms |`,
      `| (4) host RSS per idle sandbox (${IDLE_SANDBOXES} alive, ${procs / IDLE_SANDBOXES} host processes each) | ${fmt(rss / IDLE_SANDBOXES / 1024)} MiB | — | ≤ 2 MiB |`,
      `|   PSS per idle sandbox (shared pages divided) | ${fmt(pss / IDLE_SANDBOXES / 1024)} MiB | — | |`,
      `|   ${IDLE_SANDBOXES} sandboxes alive and answering | ${alive}/${IDLE_SANDBOXES} | — | all |`,
      `|   time to create ${IDLE_SANDBOXES} sandboxes one after another | ${fmt(idleCreateMs)} ms | — | |`,
    ];
    const table = [
      `Engine benchmark — ${new Date().toISOString()} — ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Linux ${release()}, Node ${process.version}, ${ITERATIONS} iterations`,
      '',
      '| measurement | p50 | p95 | target |',
      '|---|---|---|---|',
      ...rows,
      '',
    ].join('\n');
    process.stdout.write(table + '\n');
    mkdirSync(new URL('./results/', import.meta.url), { recursive: true });
    writeFileSync(new URL('./results/engine.md', import.meta.url), table);
  } finally {
    await engine.close();
  }
}

await main();
