// Runs the real CLI entry point from source (the tests do not depend on a build).
import { main } from '../../src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
