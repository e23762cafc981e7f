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
  palisade backup --output DIR              online copy of the database (keys, records, audit log)
  palisade sandbox create|ls|exec|rm        use a running server (PALISADE_URL, PALISADE_API_KEY)
  palisade kill --label SEL|--all|ls|...    kill switch: destroy and block sandboxes (admin key)
  palisade mcp                              MCP server on stdio for agents (PALISADE_URL, PALISADE_API_KEY)
  palisade help                             show this help

Run 'palisade <command> --help' for a command's options.

Global option (before the command):
  --environment-file FILE   set PALISADE_URL, PALISADE_API_KEY, PALISADE_DATA_DIR from a
                    dotenv file; any other variable is refused (docs/config.md)
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
    case 'backup':
      return (await import('./backup.js')).backupCommand;
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
  const endOfOptions = argv.indexOf('--');
  if (
    (endOfOptions < 0 ? argv : argv.slice(0, endOfOptions)).some(
      (a) => a === '--env-file' || a.startsWith('--env-file='),
    )
  ) {
    // Node 20 itself loads `--env-file` from a script's arguments, every variable unfiltered
    // (NODE_OPTIONS included), before Palisade runs: the name must never look accepted.
    process.stderr.write(
      'palisade: --env-file is not a Palisade option: Node.js itself reads it and would set every variable in the file unfiltered. Use --environment-file FILE, which sets only PALISADE_* settings.\n',
    );
    return 3;
  }
  if (argv[0] === '--environment-file' || argv[0]?.startsWith('--environment-file=')) {
    const inline = argv[0].startsWith('--environment-file=');
    const file = inline ? argv[0].slice('--environment-file='.length) : argv[1];
    if (file === undefined || file === '') {
      process.stderr.write('palisade: --environment-file needs a file name.\n');
      return 3;
    }
    try {
      // Before any command module loads: their defaults read these variables.
      (await import('../config/index.js')).applyEnvFile(file);
    } catch (err) {
      if (!isPalisadeError(err)) throw err;
      process.stderr.write(`palisade: ${err.message} [${err.code}]\n`);
      return 3;
    }
    argv = argv.slice(inline ? 1 : 2);
  }
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
