// Runs the test suite with Node's built-in runner. Node 20's --test does not expand globs,
// so the files are collected here. Slow suites (*.slow.test.ts) run only with --slow.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const args = process.argv.slice(2);
const includeSlow = args.includes('--slow');
const onlySlow = args.includes('--only-slow');
const filters = args.filter((a) => !a.startsWith('--'));

function collect(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...collect(path));
    else if (name.endsWith('.test.ts')) out.push(path);
  }
  return out;
}

let files = collect('test');
if (onlySlow) files = files.filter((f) => f.endsWith('.slow.test.ts'));
else if (!includeSlow) files = files.filter((f) => !f.endsWith('.slow.test.ts'));
if (filters.length > 0) files = files.filter((f) => filters.some((flt) => f.includes(flt)));
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}

// Type errors anywhere (tests and benchmarks included) fail the run: tsx alone would strip them.
if (process.env.PALISADE_SKIP_TYPECHECK !== '1') {
  const tsc = spawnSync(
    process.execPath,
    ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json', '--noEmit'],
    { stdio: 'inherit' },
  );
  if (tsc.status !== 0) {
    console.error('type check failed');
    process.exit(1);
  }
}

// Every run also records each test's outcome; a run of the whole default suite is the one
// `npm run security:register` checks the findings register against.
const fullRun = filters.length === 0 && !onlySlow;
mkdirSync('.test-results', { recursive: true });
const resultsFile = join('.test-results', fullRun ? 'last-run.json' : 'last-partial-run.json');
const result = spawnSync(
  process.execPath,
  [
    '--import',
    'tsx',
    '--test',
    '--test-concurrency=2',
    '--test-reporter=spec',
    '--test-reporter-destination=stdout',
    '--test-reporter=./scripts/test-results-reporter.mjs',
    `--test-reporter-destination=${resultsFile}`,
    ...files,
  ],
  { stdio: 'inherit', env: { ...process.env, PALISADE_TEST: '1' } },
);
process.exit(result.status ?? 1);
