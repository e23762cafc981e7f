// Policy-engine benchmark: decisions per second and per-decision latency on a realistic
// corpus of agent shell commands. Prints a markdown table and writes bench/results/policy.md.
// Run: npm run bench:policy   (one Node process = one core)
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { ShellParser } from '../src/policy/shell/index.js';
import {
  createPolicyEngine,
  parsePolicyObject,
  type Action,
  type PolicyEngine,
} from '../src/policy/index.js';

const TEMPLATES = [
  'git status --short && git diff --stat HEAD~1 -- src/{name}/*.ts',
  'npm run test -- --grep "{name}" 2>&1 | tail -n 40',
  'grep -rn "TODO" src/{name} --include="*.ts" | head -20',
  'cat src/{name}/index.ts src/{name}/types.ts | wc -l',
  'find . -name "*.{name}.ts" -not -path "./node_modules/*" | xargs wc -l',
  'ls -la src/{name} test/{name} && cat package.json | jq .scripts',
  'cd packages/{name} && npm install --no-audit --no-fund',
  'echo "$(date -u +%FT%TZ) built {name}" >> build.log',
  'python3 scripts/{name}.py --input data/{name}.csv --out out/',
  'git log --oneline -n 20 --author="$(git config user.email)" -- src/{name}',
  'sed -n "1,80p" src/{name}/engine.ts && sed -n "1,40p" src/{name}/index.ts',
  'mkdir -p dist/{name} && cp -r src/{name}/assets dist/{name}/',
  'npx tsc -p tsconfig.json --noEmit 2>&1 | grep {name} | head',
  'for f in src/{name}/*.ts; do echo "$f"; wc -l "$f"; done',
  'rm -rf build/{name} && npm run build -- --project {name}',
  'curl -s https://registry.npmjs.org/{name}/latest | jq -r .version',
  'docker compose logs --tail 100 {name} | grep -i -E "error|warn" | tail',
  'git add -A && git commit -m "fix({name}): handle empty input"',
  'if [ -f .env.{name} ]; then export $(cat .env.{name}); fi',
  "ps aux | grep -v grep | grep {name} | awk '{print $2}'",
  'bash -c "cd /tmp && tar czf {name}.tgz /workspace/src"',
  'timeout 30 node dist/{name}/server.js --port 8080 > /tmp/{name}.log 2>&1 &',
];
const NAMES = [
  'policy',
  'sandbox',
  'egress',
  'api',
  'cli',
  'audit',
  'auth',
  'store',
  'mcp',
  'util',
  'worker',
  'queue',
  'ui',
];

function corpus(): string[] {
  const out: string[] = [];
  for (const n of NAMES) for (const t of TEMPLATES) out.push(t.replaceAll('{name}', n));
  return out;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

interface Row {
  perSecond: number;
  perCpuSecond: number;
  cpuMicros: number;
  p50: number;
  p99: number;
  max: number;
}

async function measure(engine: PolicyEngine, commands: string[], decisions: number): Promise<Row> {
  const actions: Action[] = commands.map((command) => ({ tool: 'Bash', command }));
  // Warm up until steady state: V8 compiles the wasm parser with its optimising tier in the
  // background, and each engine loads its own copy of the grammar, so the first ~10,000
  // decisions of every engine run slower (and burn CPU on compiler threads).
  for (let i = 0; i < warmup; i++) engine.decide(actions[i % actions.length] as Action);
  const latencies = new Float64Array(decisions);
  const started = performance.now();
  const cpuStarted = process.cpuUsage();
  for (let i = 0; i < decisions; i++) {
    const t0 = performance.now();
    engine.decide(actions[i % actions.length] as Action);
    latencies[i] = performance.now() - t0;
  }
  const elapsed = performance.now() - started;
  const cpu = process.cpuUsage(cpuStarted);
  latencies.sort();
  return {
    perSecond: decisions / (elapsed / 1000),
    // On a shared machine wall time includes waiting for a core; CPU time is what one core costs.
    perCpuSecond: decisions / ((cpu.user + cpu.system) / 1e6),
    cpuMicros: (cpu.user + cpu.system) / decisions,
    p50: percentile(latencies, 50) * 1000,
    p99: percentile(latencies, 99) * 1000,
    max: (latencies[decisions - 1] as number) * 1000,
  };
}

const policy = parsePolicyObject(
  {
    permissions: {
      default: 'deny',
      deny: ['Bash(ps:*)', 'Bash(curl:*)', 'Read(//secrets/**)', 'Read(.env)', 'Write(//etc/**)'],
      ask: ['Bash(git push:*)', 'Bash(docker:*)'],
      allow: [
        'Bash(git:*)',
        'Bash(npm:*)',
        'Bash(npx:*)',
        'Bash(ls:*)',
        'Bash(cat:*)',
        'Bash(grep:*)',
        'Bash(find:*)',
        'Bash(*)',
      ],
    },
  },
  'bench',
  'operator',
);
const commands = corpus();
const lengths = commands.map((c) => c.length).sort((a, b) => a - b);
const decisions = Number(process.env['BENCH_DECISIONS'] ?? 30000);
const warmup = Number(process.env['BENCH_WARMUP'] ?? 20000);

const uncached = await createPolicyEngine({ layers: [policy], cacheEntries: 0 });
const cached = await createPolicyEngine({ layers: [policy] });
// The floor: tree-sitter parsing alone (no analysis, no rules), through the same wrapper.
const parser = await ShellParser.create();
const parseOnly: PolicyEngine = {
  decide(action) {
    const outcome = parser.parse((action as { command: string }).command, Infinity);
    outcome.tree?.delete();
    return undefined as never;
  },
};

const rows: Array<[string, Row]> = [
  ['uncached (every decision parses)', await measure(uncached, commands, decisions)],
  ['cached (default 2048-entry LRU, corpus repeats)', await measure(cached, commands, decisions)],
  ['reference: tree-sitter parse only, no analysis', await measure(parseOnly, commands, decisions)],
];

const table = [
  `Policy engine, ${commands.length} distinct commands (median ${lengths[Math.floor(lengths.length / 2)]} chars, ${lengths[0]}–${lengths[lengths.length - 1]}), ${decisions} decisions per row after ${warmup} warm-up decisions, Node ${process.version}, one process`,
  '',
  `Machine load average at the end: ${loadavg()
    .map((l) => l.toFixed(1))
    .join(
      ' / ',
    )} (1/5/15 min) on ${availableParallelism()} cores — with other work running, wall-clock numbers include time spent waiting for a core.`,
  '',
  '| mode | decisions/s (wall) | decisions per CPU-second | CPU µs per decision | p50 µs | p99 µs | max µs |',
  '|---|---:|---:|---:|---:|---:|---:|',
  ...rows.map(
    ([name, r]) =>
      `| ${name} | ${Math.round(r.perSecond).toLocaleString('en-US')} | ${Math.round(r.perCpuSecond).toLocaleString('en-US')} | ${r.cpuMicros.toFixed(1)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.max.toFixed(0)} |`,
  ),
  '',
  'Target (issue 3): ≥ 20,000 decisions/s and p99 ≤ 1 ms on one core.',
].join('\n');
console.log(table);
mkdirSync(new URL('./results/', import.meta.url), { recursive: true });
writeFileSync(new URL('./results/policy.md', import.meta.url), `${table}\n`);
