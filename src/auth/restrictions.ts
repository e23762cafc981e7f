import { PalisadeError } from '../errors/index.js';
import type { Scope } from './scopes.js';

/**
 * Scoped keys (seed 002 M-5): a key may be restricted to one sandbox and/or to a subset of the
 * MCP tools. The restriction is enforced here, in the auth layer, for every HTTP route, so an
 * agent holding the key gains nothing by bypassing the MCP server and calling the API itself.
 */
export const MCP_TOOLS = [
  'sandbox_create',
  'sandbox_list',
  'sandbox_info',
  'sandbox_destroy',
  'sandbox_pause',
  'sandbox_resume',
  'exec',
  'exec_background',
  'exec_poll',
  'exec_kill',
  'file_read',
  'file_write',
  'file_edit',
  'file_list',
  'file_search',
  'network_policy_get',
  'network_policy_set',
  'policy_check',
] as const;
export type McpToolName = (typeof MCP_TOOLS)[number];

export function isMcpToolName(value: string): value is McpToolName {
  return (MCP_TOOLS as readonly string[]).includes(value);
}

/** Tools that change nothing: the "read-only" preset of `palisade keys create --read-only`. */
export const READ_ONLY_TOOLS: readonly McpToolName[] = [
  'sandbox_list',
  'sandbox_info',
  'exec_poll',
  'file_read',
  'file_list',
  'file_search',
  'network_policy_get',
  'policy_check',
];

/**
 * The scope each tool needs and the HTTP routes (`METHOD route-pattern`) it calls. A
 * tool-restricted key may call a route only if one of its tools needs that route.
 */
export const TOOL_ACCESS: Readonly<Record<McpToolName, { scope: Scope; routes: string[] }>> = {
  sandbox_create: { scope: 'sandboxes:write', routes: ['POST /v1/sandboxes'] },
  sandbox_list: { scope: 'sandboxes:read', routes: ['GET /v1/sandboxes', 'GET /v1/sandboxes/:id'] },
  sandbox_info: { scope: 'sandboxes:read', routes: ['GET /v1/sandboxes/:id'] },
  sandbox_destroy: { scope: 'sandboxes:write', routes: ['DELETE /v1/sandboxes/:id'] },
  sandbox_pause: { scope: 'sandboxes:write', routes: ['POST /v1/sandboxes/:id/pause'] },
  sandbox_resume: { scope: 'sandboxes:write', routes: ['POST /v1/sandboxes/:id/resume'] },
  exec: { scope: 'sandboxes:exec', routes: ['POST /v1/sandboxes/:id/exec'] },
  exec_background: { scope: 'sandboxes:exec', routes: ['POST /v1/sandboxes/:id/exec'] },
  exec_poll: {
    scope: 'sandboxes:read',
    routes: [
      'GET /v1/sandboxes/:id/execs',
      'GET /v1/sandboxes/:id/execs/:execId',
      'GET /v1/sandboxes/:id/execs/:execId/logs',
    ],
  },
  exec_kill: {
    scope: 'sandboxes:exec',
    routes: [
      'GET /v1/sandboxes/:id/execs/:execId',
      'POST /v1/sandboxes/:id/execs/:execId/interrupt',
    ],
  },
  file_read: {
    scope: 'sandboxes:read',
    routes: ['GET /v1/sandboxes/:id/files', 'GET /v1/sandboxes/:id/files/stat'],
  },
  file_write: { scope: 'sandboxes:write', routes: ['PUT /v1/sandboxes/:id/files'] },
  file_edit: { scope: 'sandboxes:write', routes: ['POST /v1/sandboxes/:id/files/edit'] },
  file_list: { scope: 'sandboxes:read', routes: ['GET /v1/sandboxes/:id/files/list'] },
  file_search: { scope: 'sandboxes:read', routes: ['POST /v1/sandboxes/:id/files/search'] },
  network_policy_get: { scope: 'sandboxes:read', routes: ['GET /v1/sandboxes/:id/network'] },
  network_policy_set: { scope: 'sandboxes:write', routes: ['PUT /v1/sandboxes/:id/network'] },
  policy_check: { scope: 'sandboxes:read', routes: ['POST /v1/sandboxes/:id/policy/check'] },
};

/** Routes every key may call whatever its restrictions (identity, discovery, the MCP endpoint). */
const ALWAYS_ALLOWED = new Set([
  'GET /v1/whoami',
  'GET /v1/openapi.json',
  'POST /mcp',
  'GET /mcp',
  'DELETE /mcp',
]);
const SANDBOX_ROUTE_PREFIX = '/v1/sandboxes/:id';
const MAX_TOOLS = MCP_TOOLS.length;

export interface KeyRestrictions {
  /** The one sandbox this key may see and act on. */
  sandboxId?: string;
  /** The MCP tools this key may use (and the HTTP routes those tools need). */
  tools?: readonly McpToolName[];
}

/** Validates restrictions for a new key; returns them normalised (tools deduplicated, in order). */
export function normaliseRestrictions(
  input: { sandboxId?: string | null; tools?: readonly string[] | null },
  scopes: readonly Scope[],
): KeyRestrictions {
  const out: KeyRestrictions = {};
  if (input.sandboxId !== undefined && input.sandboxId !== null) {
    if (!/^sb-[a-z2-7]{20}$/.test(input.sandboxId)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        "Invalid sandboxId: give a sandbox id such as 'sb-…' from 'palisade sandbox ls'.",
      );
    }
    out.sandboxId = input.sandboxId;
  }
  const tools = input.tools;
  if (tools !== undefined && tools !== null) {
    const bad = tools.find((t) => !isMcpToolName(t));
    if (bad !== undefined || tools.length === 0 || tools.length > MAX_TOOLS) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `Invalid tools: give one or more of ${MCP_TOOLS.join(', ')}.`,
        bad !== undefined ? { tool: bad.slice(0, 64) } : undefined,
      );
    }
    out.tools = MCP_TOOLS.filter((t) => tools.includes(t));
  }
  if ((out.sandboxId !== undefined || out.tools !== undefined) && scopes.includes('admin')) {
    // admin implies minting keys, which would undo any restriction.
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'A key restricted to a sandbox or to tools cannot have the admin scope; give sandboxes:* scopes instead.',
    );
  }
  return out;
}

/** Tools a key may use: its tool list (if any) narrowed by the scopes it holds. */
export function toolsAllowed(
  restrictions: KeyRestrictions,
  hasScopeFn: (scope: Scope) => boolean,
): McpToolName[] {
  const listed = restrictions.tools ?? MCP_TOOLS;
  return MCP_TOOLS.filter((t) => listed.includes(t) && hasScopeFn(TOOL_ACCESS[t].scope));
}

/**
 * Decides whether a restricted key may call a route. Returns the error to answer with, or
 * undefined to let the request through. `route` is the route pattern (e.g.
 * `/v1/sandboxes/:id/exec`), `params` the matched path parameters.
 */
export function restrictionError(
  restrictions: KeyRestrictions,
  method: string,
  route: string,
  params: unknown,
): PalisadeError | undefined {
  if (restrictions.sandboxId === undefined && restrictions.tools === undefined) return undefined;
  const key = `${method.toUpperCase()} ${route}`;
  if (ALWAYS_ALLOWED.has(key)) return undefined;
  if (restrictions.sandboxId !== undefined) {
    const isSandboxRoute =
      route === SANDBOX_ROUTE_PREFIX || route.startsWith(`${SANDBOX_ROUTE_PREFIX}/`);
    if (isSandboxRoute) {
      const id = (params as { id?: unknown } | undefined)?.id;
      if (id !== restrictions.sandboxId) {
        // The same answer as for a sandbox that does not exist: the key learns nothing.
        return new PalisadeError(
          'SANDBOX_NOT_FOUND',
          `No sandbox ${typeof id === 'string' ? id.slice(0, 64) : ''}. List your sandboxes with GET /v1/sandboxes.`,
        );
      }
    } else {
      return new PalisadeError(
        'FORBIDDEN',
        `This API key is restricted to sandbox ${restrictions.sandboxId}; it cannot call ${key}.`,
        { restrictedTo: restrictions.sandboxId },
      );
    }
  }
  if (restrictions.tools !== undefined) {
    const allowed = restrictions.tools.some((t) => TOOL_ACCESS[t].routes.includes(key));
    if (!allowed) {
      return new PalisadeError(
        'FORBIDDEN',
        `This API key is restricted to the MCP tools ${restrictions.tools.join(', ')}; none of them needs ${key}.`,
        { tools: [...restrictions.tools] },
      );
    }
  }
  return undefined;
}
