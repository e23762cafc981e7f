// Idempotent set-up for a fresh Debian machine: npm dependencies, Debian packages the
// sandbox needs, the native helpers and the TypeScript build. `npm start` and `npm test`
// run it first, so a fresh clone needs nothing installed by hand.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const quiet = process.env.PALISADE_SETUP_QUIET === '1';
const log = (msg) => quiet || process.stderr.write(`[setup] ${msg}\n`);

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'], ...opts });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed with status ${r.status ?? r.signal}`);
  }
}

function newestMtime(path) {
  if (!existsSync(path)) return 0;
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  let newest = st.mtimeMs;
  for (const name of readdirSync(path)) newest = Math.max(newest, newestMtime(join(path, name)));
  return newest;
}

function have(binary) {
  return spawnSync('sh', ['-c', `command -v ${binary}`], { stdio: 'ignore' }).status === 0;
}

// 1. npm dependencies.
const lockStamp = join(root, 'node_modules/.package-lock.json');
if (
  !existsSync(lockStamp) ||
  statSync(lockStamp).mtimeMs < statSync(join(root, 'package-lock.json')).mtimeMs
) {
  log('installing npm dependencies');
  run('npm', ['ci', '--no-audit', '--no-fund']);
}

// 2. Debian packages: bubblewrap for the sandbox, e2fsprogs for the workspace quota pool,
//    gcc for the native helpers, iproute2 for network tests.
const wanted = [
  ['bwrap', 'bubblewrap'],
  ['mkfs.ext4', 'e2fsprogs'],
  ['gcc', 'gcc'],
  ['ip', 'iproute2'],
];
const missing = wanted.filter(([bin]) => !have(bin)).map(([, pkg]) => pkg);
if (missing.length > 0) {
  if (process.getuid?.() !== 0) {
    throw new Error(
      `missing Debian packages: ${missing.join(', ')}; install them with: sudo apt-get install -y ${missing.join(' ')}`,
    );
  }
  log(`installing Debian packages: ${missing.join(', ')}`);
  run('apt-get', ['update', '-qq'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], {
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
  });
}

// 3. Native helpers (the in-sandbox agent and the launcher).
const nativeSrc = join(root, 'native');
const nativeOut = join(root, 'native/build');
if (
  existsSync(join(nativeSrc, 'Makefile')) &&
  newestMtime(nativeSrc + '/src') > newestMtime(nativeOut)
) {
  log('building native helpers');
  run('make', ['-s', '-C', nativeSrc]);
}

// 4. TypeScript build (the CLI runs from dist/).
const distStamp = join(root, 'dist/src/cli/main.js');
const srcNewest = Math.max(
  newestMtime(join(root, 'src')),
  statSync(join(root, 'tsconfig.json')).mtimeMs,
);
if (
  !existsSync(distStamp) ||
  statSync(distStamp).mtimeMs < srcNewest ||
  process.env.PALISADE_REBUILD === '1'
) {
  log('compiling TypeScript');
  execFileSync(
    process.execPath,
    [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'],
    {
      cwd: root,
      stdio: 'inherit',
    },
  );
}
