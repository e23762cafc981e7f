/**
 * The MCP server: Palisade's tools for agents over the Model Context Protocol (official SDK).
 * Transports: stdio (`palisade mcp`, a client of a running server) and Streamable HTTP at
 * /mcp on `palisade serve` (src/server/routes-mcp.ts). Tools call the HTTP API through the
 * TypeScript SDK, so every call passes the server's auth, scopes, restrictions, rate limits,
 * permission policy and audit.
 */
export {
  createMcpServer,
  describeFailure,
  DEFAULT_MCP_APPROVAL_OPTIONS,
  MCP_SERVER_NAME,
  MCP_SERVER_VERSION,
  type McpApprovalOptions,
  type McpServerOptions,
} from './server.js';
export {
  ApprovalRefusedError,
  describeState,
  pendingText,
  type ApprovalWaitOptions,
  type ExecState,
} from './approval-wait.js';
export { startProgress, type ProgressReporter, type ProgressSink } from './progress.js';
export {
  approvalOptionsFromEnv,
  runStdioMcpServer,
  identityOf,
  type StdioOptions,
} from './stdio.js';
export { TOOL_DEFINITIONS, toolsFor, type ToolDefinition } from './tools.js';
export { HANDLERS, ToolInputError, type McpIdentity, type ToolContext } from './handlers.js';
export {
  DEFAULT_OUTPUT_LIMITS,
  capText,
  headText,
  renderStream,
  type OutputLimits,
} from './output.js';
export { checkValue, type JsonSchema } from './schema.js';
