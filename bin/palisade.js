#!/usr/bin/env node
// The CLI is compiled to dist/ by `npm run build` (which `npm start`/`npm test` run through scripts/setup.mjs).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write(
    'palisade: not built yet. Run `npm run setup` in the project directory first.\n',
  );
  process.exit(3);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
