// Runs the CLI from source (tests spawn `palisade mcp` through this, without a build).
import { main } from '../../src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
