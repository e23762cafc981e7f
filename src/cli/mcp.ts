/**
 * `palisade mcp`: the MCP server over stdio for a local agent (Claude Code and other MCP
 * clients start it as a subprocess). It is a client of a running `palisade serve`: the key
 * comes from PALISADE_API_KEY (never a flag: flags land in shell history and the process list)
 * and every tool call goes through the server's enforcement.
 */
import { runStdioMcpServer } from '../mcp/index.js';
import { cliErrorFromSdk } from './sandbox.js';

export const MCP_USAGE = `Usage:
  palisade mcp        serve the Palisade MCP tools on stdin/stdout

Environment: PALISADE_API_KEY (required; a scoped key from 'palisade keys create --sandbox ID
--tools ...' limits what the agent can do), PALISADE_URL (default http://127.0.0.1:7070).
Diagnostics go to stderr; stdout carries the protocol only.
`;

export async function mcpCommand(args: string[]): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(MCP_USAGE);
    return 0;
  }
  if (args.length > 0) {
    process.stderr.write(
      `palisade mcp: unexpected argument '${args[0]!.slice(0, 64)}'.\n\n${MCP_USAGE}`,
    );
    return 3;
  }
  try {
    await runStdioMcpServer();
    return 0;
  } catch (err) {
    throw cliErrorFromSdk(err, process.env.PALISADE_URL ?? 'http://127.0.0.1:7070');
  }
}
