import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import type { Readable, Writable } from 'node:stream';
import { isMcpToolName, type McpToolName } from '../auth/index.js';
import { PalisadeClient, type ClientOptions } from '../client/index.js';
import { PalisadeError } from '../errors/index.js';
import type { McpIdentity } from './handlers.js';
import type { OutputLimits } from './output.js';
import {
  createMcpServer,
  DEFAULT_MCP_APPROVAL_OPTIONS,
  type McpApprovalOptions,
} from './server.js';

export interface StdioOptions {
  /** Client options; by default PALISADE_URL and PALISADE_API_KEY come from the environment. */
  client?: ClientOptions;
  stdin?: Readable;
  stdout?: Writable;
  limits?: Partial<OutputLimits>;
  /** Diagnostics (stderr by default; stdout belongs to the protocol). */
  log?: (line: string) => void;
  /**
   * How calls needing a human approval behave. By default from the environment:
   * PALISADE_MCP_APPROVAL_WAIT_MS (0 = always answer "pending" at once) and
   * PALISADE_MCP_PROGRESS_INTERVAL_MS.
   */
  approvals?: Partial<McpApprovalOptions>;
}

const MAX_WAIT_MS = 24 * 3_600_000;

/** Approval options from PALISADE_MCP_* variables; a malformed value is refused (fail closed). */
export function approvalOptionsFromEnv(
  env: Readonly<Record<string, string | undefined>>,
): Partial<McpApprovalOptions> {
  const out: Partial<McpApprovalOptions> = {};
  const read = (name: string, min: number): number | undefined => {
    const raw = env[name];
    if (raw === undefined || raw === '') return undefined;
    const value = Number(raw);
    if (!/^[0-9]{1,9}$/.test(raw) || value < min || value > MAX_WAIT_MS) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `${name} must be a whole number of milliseconds from ${min} to ${MAX_WAIT_MS}; got ${JSON.stringify(raw.slice(0, 20))}.`,
      );
    }
    return value;
  };
  const waitMs = read('PALISADE_MCP_APPROVAL_WAIT_MS', 0);
  const progressIntervalMs = read('PALISADE_MCP_PROGRESS_INTERVAL_MS', 100);
  if (waitMs !== undefined) out.waitMs = waitMs;
  if (progressIntervalMs !== undefined) out.progressIntervalMs = progressIntervalMs;
  return out;
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
  const approvals = options.approvals ?? approvalOptionsFromEnv(process.env);
  const waitMs = approvals.waitMs ?? DEFAULT_MCP_APPROVAL_OPTIONS.waitMs;
  // A file action held for a human answers only once decided: the HTTP timeout must outlast the
  // wait (the MCP client's own cancel still aborts it earlier, which cancels the approval).
  const client = new PalisadeClient({
    timeoutMs: Math.max(60_000, waitMs + 30_000),
    ...options.client,
  });
  const identity = await identityOf(client);
  log(
    `palisade mcp: connected to ${client.baseUrl} as key ${identity.keyId} (tenant ${identity.tenant}${identity.sandboxId ? `, sandbox ${identity.sandboxId}` : ''}${identity.tools ? `, tools ${identity.tools.join(',')}` : ''})`,
  );
  const server = createMcpServer({
    client,
    identity,
    ...(options.limits ? { limits: options.limits } : {}),
    approvals,
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
