import { isPalisadeError } from '../errors/index.js';

const USAGE = `palisade — secure sandboxes for AI agents

Usage:
  palisade serve [options]                  run the API server (prints the admin key on first start)
  palisade run [options] -- CMD [ARGS...]   run a command in a one-shot sandbox
  palisade doctor                           check that this host can run sandboxes
  palisade demo                             show what a sandbox looks like from the inside
  palisade policy check ...                 explain what the policy decides for an action
  palisade keys create|list|revoke          manage API keys (talks to the database)
  palisade audit verify|export              check or export the tamper-evident audit log
  palisade sandbox create|ls|exec|rm        use a running server (PALISADE_URL, PALISADE_API_KEY)
  palisade kill --label SEL|--all|ls|...    kill switch: destroy and block sandboxes (admin key)
  palisade mcp                              MCP server on stdio for agents (PALISADE_URL, PALISADE_API_KEY)
  palisade help                             show this help

Run 'palisade <command> --help' for a command's options.
`;

type Command = (args: string[]) => Promise<number>;

async function loadCommand(name: string): Promise<Command | undefined> {
  switch (name) {
    case 'run':
      return (await import('./run.js')).runCommand;
    case 'doctor':
      return (await import('./doctor.js')).doctorCommand;
    case 'demo':
      return (await import('./demo.js')).demoCommand;
    case 'policy':
      return (await import('./policy.js')).policyCommand;
    case 'serve':
      return (await import('./serve.js')).serveCommand;
    case 'keys':
      return (await import('./keys.js')).keysCommand;
    case 'audit':
      return (await import('./audit.js')).auditCommand;
    case 'sandbox':
      return (await import('./sandbox.js')).sandboxCommand;
    case 'kill':
      return (await import('./kill.js')).killCommand;
    case 'mcp':
      return (await import('./mcp.js')).mcpCommand;
    default:
      return undefined;
  }
}

/** CLI entry point; returns the process exit status. */
export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    process.stdout.write(USAGE);
    return name === undefined ? 3 : 0;
  }
  const command = await loadCommand(name);
  if (!command) {
    process.stderr.write(
      `palisade: unknown command '${name}'. Run 'palisade help' for the list.\n`,
    );
    return 3;
  }
  try {
    return await command(rest);
  } catch (err) {
    if (isPalisadeError(err)) {
      process.stderr.write(`palisade: ${err.message} [${err.code}]\n`);
      return 3;
    }
    throw err;
  }
}
