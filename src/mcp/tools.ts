import type { McpToolName } from '../auth/index.js';
import type { JsonSchema } from './schema.js';

export interface ToolDefinition {
  name: McpToolName;
  description: string;
  inputSchema: JsonSchema & { type: 'object' };
  /** MCP tool annotations: hints for clients (which tools change nothing). */
  annotations: { readOnlyHint: boolean; destructiveHint: boolean; idempotentHint: boolean };
}

const SANDBOX_ID: JsonSchema = {
  type: 'string',
  pattern: '^sb-[a-z2-7]{20}$',
  description: 'Sandbox id (sb-…). May be omitted when the key is restricted to one sandbox.',
};
const EXEC_ID: JsonSchema = {
  type: 'string',
  pattern: '^ex-[a-z2-7]{20}$',
  description: 'Execution id (ex-…) returned by exec_background.',
};
const PATH: JsonSchema = {
  type: 'string',
  minLength: 1,
  maxLength: 4096,
  description: 'Path inside the sandbox; relative paths are relative to /workspace.',
};
const STRING_MAP = (description: string, maxValue: number): JsonSchema => ({
  type: 'object',
  description,
  maxProperties: 64,
  additionalProperties: { type: 'string', maxLength: maxValue },
});
const RULES: JsonSchema = {
  type: 'array',
  maxItems: 256,
  items: { type: 'string', minLength: 1, maxLength: 512 },
};
const COMMAND: JsonSchema = {
  type: 'string',
  minLength: 1,
  maxLength: 256 * 1024,
  description: 'Shell command, run with /bin/sh -c inside the sandbox.',
};
const CWD: JsonSchema = {
  type: 'string',
  minLength: 1,
  maxLength: 4096,
  description: 'Working directory. Default /workspace.',
};
const TIMEOUT: JsonSchema = {
  type: 'integer',
  minimum: 1,
  maximum: 3_600_000,
  description: 'Kill the command and its process tree after this many ms. Default 30000.',
};

function tool(
  name: McpToolName,
  description: string,
  properties: Record<string, JsonSchema>,
  required: string[],
  kind: 'read' | 'write' | 'destroy',
  idempotent = kind === 'read',
): ToolDefinition {
  return {
    name,
    description,
    inputSchema: { type: 'object', properties, required, additionalProperties: false },
    annotations: {
      readOnlyHint: kind === 'read',
      destructiveHint: kind === 'destroy',
      idempotentHint: idempotent,
    },
  };
}

/**
 * Every tool, in the order listed to clients. `sandboxId` is in `required` here; a key
 * restricted to one sandbox gets it dropped from `required` (see toolsFor).
 */
export const TOOL_DEFINITIONS: readonly ToolDefinition[] = [
  tool(
    'sandbox_create',
    'Create a new isolated sandbox (Linux, no network unless `network.allow` is given). Returns its id.',
    {
      labels: STRING_MAP('Labels (key=value) to find the sandbox by later.', 63),
      timeoutMs: {
        type: 'integer',
        minimum: 1000,
        maximum: 7 * 24 * 3_600_000,
        description: 'Lifetime; destroyed after this. Default 1 hour.',
      },
      limits: {
        type: 'object',
        additionalProperties: false,
        properties: {
          memoryBytes: { type: 'integer', minimum: 1 },
          cpus: { type: 'number', minimum: 0.01, maximum: 1024 },
          pids: { type: 'integer', minimum: 1 },
          diskBytes: { type: 'integer', minimum: 0 },
        },
      },
      network: {
        type: 'object',
        description: 'Egress rules, e.g. {"allow": ["pypi.org:443"]}. Omit for no network.',
        additionalProperties: false,
        properties: { allow: RULES, deny: RULES },
      },
    },
    [],
    'write',
  ),
  tool(
    'sandbox_list',
    'List your sandboxes (id, state, labels).',
    {
      state: { type: 'string', enum: ['pending', 'running', 'paused', 'terminated', 'failed'] },
      labelSelector: { type: 'string', maxLength: 2048, description: 'e.g. app=web,tier!=db' },
      limit: { type: 'integer', minimum: 1, maximum: 200 },
    },
    [],
    'read',
  ),
  tool(
    'sandbox_info',
    'Show one sandbox: state, limits, labels, expiry.',
    { sandboxId: SANDBOX_ID },
    ['sandboxId'],
    'read',
  ),
  tool(
    'sandbox_destroy',
    'Destroy a sandbox and everything in it (processes, files). Cannot be undone.',
    { sandboxId: SANDBOX_ID },
    ['sandboxId'],
    'destroy',
    true,
  ),
  tool(
    'sandbox_pause',
    'Freeze every process of a sandbox.',
    { sandboxId: SANDBOX_ID },
    ['sandboxId'],
    'write',
    true,
  ),
  tool(
    'sandbox_resume',
    'Resume a paused sandbox.',
    { sandboxId: SANDBOX_ID },
    ['sandboxId'],
    'write',
    true,
  ),
  tool(
    'exec',
    'Run a shell command in a sandbox and wait for it. Returns the exit code, stdout and stderr (each cut at 64 KiB, with a note when cut). The permission policy may deny the command (the reason is returned) or ask a human first: then the call waits for the decision, or returns PENDING APPROVAL with an execution id to follow with exec_poll.',
    {
      sandboxId: SANDBOX_ID,
      command: COMMAND,
      cwd: CWD,
      env: STRING_MAP('Extra environment variables.', 32768),
      timeoutMs: TIMEOUT,
      stdin: { type: 'string', maxLength: 1024 * 1024, description: 'Whole stdin of the command.' },
    },
    ['sandboxId', 'command'],
    'write',
  ),
  tool(
    'exec_background',
    'Start a shell command in the background. Returns an execution id for exec_poll and exec_kill.',
    {
      sandboxId: SANDBOX_ID,
      command: COMMAND,
      cwd: CWD,
      env: STRING_MAP('Extra environment variables.', 32768),
      timeoutMs: TIMEOUT,
    },
    ['sandboxId', 'command'],
    'write',
  ),
  tool(
    'exec_poll',
    'Status and new output of a background command. Pass the returned cursor back to read on.',
    {
      sandboxId: SANDBOX_ID,
      execId: EXEC_ID,
      cursor: {
        type: 'string',
        pattern: '^[0-9]{1,12}$',
        description: 'Default "0" (from the start).',
      },
    },
    ['sandboxId', 'execId'],
    'read',
  ),
  tool(
    'exec_kill',
    'Stop a background command (SIGINT, then its whole process tree is killed).',
    { sandboxId: SANDBOX_ID, execId: EXEC_ID },
    ['sandboxId', 'execId'],
    'write',
    true,
  ),
  tool(
    'file_read',
    'Read a file (UTF-8 text; binary files come back base64). At most 64 KiB per call: use offset to read on.',
    {
      sandboxId: SANDBOX_ID,
      path: PATH,
      offset: { type: 'integer', minimum: 0, description: 'Byte offset. Default 0.' },
      length: { type: 'integer', minimum: 1, description: 'Bytes to read (capped at 64 KiB).' },
    },
    ['sandboxId', 'path'],
    'read',
  ),
  tool(
    'file_write',
    'Create or replace a file with the given content.',
    {
      sandboxId: SANDBOX_ID,
      path: PATH,
      content: { type: 'string', description: 'The whole new content.' },
      encoding: {
        type: 'string',
        enum: ['utf8', 'base64'],
        description: 'Of content. Default utf8.',
      },
      mode: {
        type: 'integer',
        minimum: 0,
        maximum: 0o7777,
        description: 'Permission bits, e.g. 420 (0644).',
      },
      createOnly: { type: 'boolean', description: 'Fail if the file exists.' },
    },
    ['sandboxId', 'path', 'content'],
    'write',
    true,
  ),
  tool(
    'file_edit',
    'Replace exact text in a file. oldText must occur exactly once unless replaceAll is true.',
    {
      sandboxId: SANDBOX_ID,
      path: PATH,
      oldText: { type: 'string', minLength: 1, maxLength: 1024 * 1024 },
      newText: { type: 'string', maxLength: 1024 * 1024 },
      replaceAll: { type: 'boolean' },
    },
    ['sandboxId', 'path', 'oldText', 'newText'],
    'write',
  ),
  tool(
    'file_list',
    'List a directory: type, size, mode and name of each entry.',
    { sandboxId: SANDBOX_ID, path: PATH },
    ['sandboxId', 'path'],
    'read',
  ),
  tool(
    'file_search',
    'Find files under a directory whose path matches a glob (e.g. "**/*.py").',
    {
      sandboxId: SANDBOX_ID,
      path: PATH,
      glob: { type: 'string', minLength: 1, maxLength: 1024 },
      maxResults: { type: 'integer', minimum: 1, maximum: 10000 },
    },
    ['sandboxId', 'path', 'glob'],
    'read',
  ),
  tool(
    'network_policy_get',
    "A sandbox's egress rules, the operator's rules, and recent denied connections.",
    { sandboxId: SANDBOX_ID },
    ['sandboxId'],
    'read',
  ),
  tool(
    'network_policy_set',
    "Replace a sandbox's egress rules (within the operator's; only for sandboxes created with network).",
    { sandboxId: SANDBOX_ID, allow: RULES, deny: RULES },
    ['sandboxId', 'allow'],
    'write',
    true,
  ),
  tool(
    'policy_check',
    'Explain what the permission policy would decide for a command in a sandbox (allow, ask or deny, and why) without running it.',
    { sandboxId: SANDBOX_ID, command: COMMAND, cwd: CWD },
    ['sandboxId', 'command'],
    'read',
  ),
];

/** The definitions a caller may see: the allowed tools; sandboxId optional for a one-sandbox key. */
export function toolsFor(
  allowed: readonly McpToolName[],
  restrictedSandbox: string | undefined,
): ToolDefinition[] {
  return TOOL_DEFINITIONS.filter((t) => allowed.includes(t.name)).map((t) =>
    restrictedSandbox === undefined
      ? t
      : {
          ...t,
          inputSchema: {
            ...t.inputSchema,
            required: (t.inputSchema.required ?? []).filter((r) => r !== 'sandboxId'),
          },
        },
  );
}
