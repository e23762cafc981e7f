import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import {
  CallToolRequestSchema,
  ListToolsRequestSchema,
  type CallToolResult,
} from '@modelcontextprotocol/sdk/types.js';
import { isMcpToolName, toolsAllowed, type McpToolName } from '../auth/index.js';
import { PalisadeClientError, type PalisadeClient } from '../client/index.js';
import { ApprovalRefusedError } from './approval-wait.js';
import { HANDLERS, ToolInputError, type McpIdentity } from './handlers.js';
import { DEFAULT_OUTPUT_LIMITS, type OutputLimits } from './output.js';
import { startProgress } from './progress.js';
import { checkValue } from './schema.js';
import { toolsFor } from './tools.js';

export const MCP_SERVER_NAME = 'palisade';
export const MCP_SERVER_VERSION = '0.1.0';

export interface McpServerOptions {
  /** Client every tool call goes through (the HTTP API: auth, scopes, limits, policy, audit). */
  client: PalisadeClient;
  /** The caller, as the server derived it from the API key. */
  identity: McpIdentity;
  limits?: Partial<OutputLimits>;
  /** Called after every tool call (for logs); never given arguments or output. */
  onToolCall?: (event: { tool: string; ok: boolean; code?: string }) => void;
  /** How tool calls that need a human approval behave (docs/mcp.md). */
  approvals?: Partial<McpApprovalOptions>;
}

export interface McpApprovalOptions {
  /**
   * How long a call whose client sent a progress token waits for a human (sending progress
   * notifications) before returning the pending result; 0 = always return it at once.
   * Calls without a progress token always get the pending result at once. @default 5 min
   */
  waitMs: number;
  /** Interval of notifications/progress while a call waits or runs. @default 5 s */
  progressIntervalMs: number;
  /** How often a waiting exec's status is read. @default 500 ms */
  pollIntervalMs: number;
}

export const DEFAULT_MCP_APPROVAL_OPTIONS: McpApprovalOptions = {
  waitMs: 5 * 60_000,
  progressIntervalMs: 5_000,
  pollIntervalMs: 500,
};

const FILE_TOOLS = new Set(['file_read', 'file_write', 'file_edit', 'file_list', 'file_search']);

const INSTRUCTIONS = `Palisade runs commands and file operations in isolated Linux sandboxes.
Create a sandbox with sandbox_create (or use the one this key is restricted to), then use exec,
file_* and the other tools with its id. Every call is checked by the operator's permission
policy: a denied call returns an error explaining the rule; use policy_check to ask first.
A command the policy asks a human about either waits for the decision, or returns
"PENDING APPROVAL" with an execution id: then do not run it again, follow it with exec_poll.`;

function errorResult(text: string): CallToolResult {
  return { content: [{ type: 'text', text }], isError: true };
}

/** Turns any failure into a tool error result the model can act on, without internals. */
export function describeFailure(err: unknown): { text: string; code: string } {
  if (err instanceof ToolInputError) return { text: err.message, code: 'INVALID_ARGUMENT' };
  if (err instanceof ApprovalRefusedError) return { text: err.message, code: err.code };
  if (err instanceof PalisadeClientError) {
    const rid = err.requestId ? ` (request ${err.requestId})` : '';
    if (err.code === 'POLICY_DENIED' && /^(A human denied|No one approved)/.test(err.message))
      return { text: `Denied by a human approver: ${err.message}${rid}`, code: err.code };
    if (err.code === 'POLICY_DENIED')
      return { text: `Denied by the permission policy: ${err.message}${rid}`, code: err.code };
    if (err.code === 'POLICY_ASK')
      return {
        text: `Needs approval: ${err.message} Ask the user to run it themselves or to change the policy${rid}.`,
        code: err.code,
      };
    return { text: `${err.code}: ${err.message}${rid}`, code: err.code };
  }
  return { text: 'INTERNAL: the tool failed unexpectedly; see the server log.', code: 'INTERNAL' };
}

/**
 * An MCP server (low-level SDK `Server`, plain JSON schemas) exposing the tools this identity
 * may use: its key's tool list narrowed by its scopes. Tools outside that set are not listed
 * and are refused if called anyway; the HTTP API refuses them again on its side.
 */
export function createMcpServer(options: McpServerOptions): Server {
  const limits: OutputLimits = { ...DEFAULT_OUTPUT_LIMITS, ...options.limits };
  const approvalOptions: McpApprovalOptions = {
    ...DEFAULT_MCP_APPROVAL_OPTIONS,
    ...options.approvals,
  };
  const { identity } = options;
  const scopes = new Set(identity.scopes);
  const allowed = toolsAllowed(
    {
      ...(identity.sandboxId !== undefined ? { sandboxId: identity.sandboxId } : {}),
      ...(identity.tools !== undefined ? { tools: identity.tools } : {}),
    },
    (scope) => scopes.has('admin') || scopes.has(scope),
  );
  const definitions = toolsFor(allowed, identity.sandboxId);
  const byName = new Map(definitions.map((d) => [d.name as string, d]));

  const server = new Server(
    { name: MCP_SERVER_NAME, version: MCP_SERVER_VERSION },
    { capabilities: { tools: {} }, instructions: INSTRUCTIONS },
  );
  server.setRequestHandler(ListToolsRequestSchema, () => ({
    tools: definitions.map((d) => ({
      name: d.name,
      description: d.description,
      inputSchema: d.inputSchema as { type: 'object'; [key: string]: unknown },
      annotations: d.annotations,
    })),
  }));
  server.setRequestHandler(
    CallToolRequestSchema,
    async (request, extra): Promise<CallToolResult> => {
      const name = request.params.name;
      const definition = byName.get(name);
      if (!definition || !isMcpToolName(name)) {
        options.onToolCall?.({ tool: name.slice(0, 64), ok: false, code: 'FORBIDDEN' });
        return errorResult(
          `FORBIDDEN: the tool '${name.slice(0, 64)}' is not available to this API key. Available: ${definitions.map((d) => d.name).join(', ') || 'none'}.`,
        );
      }
      const args = request.params.arguments ?? {};
      const problem = checkValue(definition.inputSchema, args);
      if (problem) {
        options.onToolCall?.({ tool: name, ok: false, code: 'INVALID_ARGUMENT' });
        return errorResult(`INVALID_ARGUMENT: ${problem}`);
      }
      const progressToken = request.params._meta?.progressToken;
      // With a progress token the client hears from a long call (e.g. one held for a human)
      // every interval, so its request timeout can keep resetting.
      const progress =
        progressToken === undefined
          ? undefined
          : startProgress(
              { progressToken, send: (n) => extra.sendNotification(n) },
              approvalOptions.progressIntervalMs,
              `${name} is still in progress${FILE_TOOLS.has(name) ? ' (the server may be holding it for a human approval)' : ''}.`,
            );
      try {
        const text = await HANDLERS[name as McpToolName](args, {
          client: options.client,
          identity,
          limits,
          signal: extra.signal,
          approvals: {
            waitMs: progress ? approvalOptions.waitMs : 0,
            pollIntervalMs: approvalOptions.pollIntervalMs,
            progress,
          },
          canUse: (tool) => byName.has(tool),
        });
        options.onToolCall?.({ tool: name, ok: true });
        return { content: [{ type: 'text', text }] };
      } catch (err) {
        const failure = describeFailure(err);
        options.onToolCall?.({ tool: name, ok: false, code: failure.code });
        return errorResult(failure.text);
      } finally {
        progress?.stop();
      }
    },
  );
  return server;
}
