import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import type { Readable, Writable } from 'node:stream';
import { isMcpToolName, type McpToolName } from '../auth/index.js';
import { PalisadeClient, type ClientOptions } from '../client/index.js';
import type { McpIdentity } from './handlers.js';
import type { OutputLimits } from './output.js';
import { createMcpServer } from './server.js';

export interface StdioOptions {
  /** Client options; by default PALISADE_URL and PALISADE_API_KEY come from the environment. */
  client?: ClientOptions;
  stdin?: Readable;
  stdout?: Writable;
  limits?: Partial<OutputLimits>;
  /** Diagnostics (stderr by default; stdout belongs to the protocol). */
  log?: (line: string) => void;
}

/** What GET /v1/whoami says about the key: the identity and its restrictions. */
export async function identityOf(client: PalisadeClient): Promise<McpIdentity> {
  const who = (await client.whoami()) as {
    keyId: string;
    tenant: string;
    scopes: string[];
    sandboxId?: string | null;
    tools?: string[] | null;
  };
  const identity: McpIdentity = { keyId: who.keyId, tenant: who.tenant, scopes: who.scopes };
  if (typeof who.sandboxId === 'string') identity.sandboxId = who.sandboxId;
  if (Array.isArray(who.tools))
    identity.tools = who.tools.filter((t): t is McpToolName => isMcpToolName(t));
  return identity;
}

/**
 * `palisade mcp`: an MCP server on stdin/stdout for a local agent. It holds no sandbox power of
 * its own: every tool call is an HTTP request to a running `palisade serve` with the key from
 * the environment, so the server stays the single place where auth, scopes, key restrictions,
 * rate limits, policy and audit are enforced. Resolves when the client closes the connection.
 */
export async function runStdioMcpServer(options: StdioOptions = {}): Promise<void> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const client = new PalisadeClient(options.client ?? {});
  const identity = await identityOf(client);
  log(
    `palisade mcp: connected to ${client.baseUrl} as key ${identity.keyId} (tenant ${identity.tenant}${identity.sandboxId ? `, sandbox ${identity.sandboxId}` : ''}${identity.tools ? `, tools ${identity.tools.join(',')}` : ''})`,
  );
  const server = createMcpServer({
    client,
    identity,
    ...(options.limits ? { limits: options.limits } : {}),
    onToolCall: (e) => {
      if (!e.ok && e.code === 'INTERNAL') log(`palisade mcp: tool ${e.tool} failed unexpectedly`);
    },
  });
  const transport = new StdioServerTransport(options.stdin, options.stdout);
  const closed = new Promise<void>((resolve) => {
    server.onclose = () => resolve();
  });
  await server.connect(transport);
  const stdin = options.stdin ?? process.stdin;
  stdin.once('end', () => void server.close());
  await closed;
}
