/**
 * MCP over Streamable HTTP at /mcp, and POST /v1/sandboxes/{id}/policy/check (the policy_check
 * tool's route: what the permission policy would decide, without running anything).
 *
 * /mcp runs behind the normal auth hook (API key, rate limit, key restrictions). It is stateless:
 * no MCP session ids exist, so none can be supplied or guessed (seed 002 M-8); the identity of
 * every request is the key it authenticated with. Each tool call is re-issued as an ordinary
 * API request (fastify.inject, in process) carrying the caller's own key, so it passes the same
 * auth, scopes, restrictions, rate limits, permission policy and audit as a direct call.
 */
import { WebStandardStreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js';
import {
  JSONRPCMessageSchema,
  SUPPORTED_PROTOCOL_VERSIONS,
} from '@modelcontextprotocol/sdk/types.js';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { PalisadeClient } from '../client/index.js';
import { PalisadeError } from '../errors/index.js';
import { createMcpServer, type McpIdentity } from '../mcp/index.js';
import { principalOf, type App } from './app.js';

const SANDBOX_ID = '^sb-[a-z2-7]{20}$';
const EMPTY_QUERY = { type: 'object', additionalProperties: false, properties: {} } as const;
/** JSON-RPC messages per POST (the SDK's own bound is larger). */
const MAX_BATCH = 32;
/** Headers of an in-process API call; anything else from the tool client is dropped. */
const FORWARDED_HEADERS = new Set(['authorization', 'accept', 'content-type', 'range']);

/**
 * A fetch that answers from this Fastify instance in process (no socket), so MCP tool calls
 * take exactly the path of external API requests.
 */
export function injectFetch(fastify: FastifyInstance): typeof fetch {
  return async (input, init) => {
    init?.signal?.throwIfAborted();
    const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
    const headers: Record<string, string> = {};
    new Headers(init?.headers).forEach((value, name) => {
      if (FORWARDED_HEADERS.has(name)) headers[name] = value;
    });
    const body = init?.body;
    let payload: string | Buffer | undefined;
    if (typeof body === 'string') payload = body;
    else if (body instanceof Uint8Array)
      payload = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    else if (body !== undefined && body !== null)
      throw new TypeError('injectFetch supports string and byte bodies only');
    const res = await fastify.inject({
      method: (init?.method ?? 'GET') as 'GET',
      url: url.pathname + url.search,
      headers,
      ...(payload !== undefined ? { payload } : {}),
    });
    const out = new Headers();
    for (const [name, value] of Object.entries(res.headers)) {
      if (value === undefined) continue;
      for (const v of Array.isArray(value) ? value : [value]) out.append(name, String(v));
    }
    const nullBody = res.statusCode === 204 || res.statusCode === 304 || init?.method === 'HEAD';
    return new Response(nullBody ? null : res.rawPayload, { status: res.statusCode, headers: out });
  };
}

function bearerKey(request: FastifyRequest): string {
  const m = /^Bearer ([\x21-\x7e]+)$/i.exec((request.headers.authorization ?? '').trim());
  if (!m?.[1]) throw new PalisadeError('UNAUTHENTICATED', 'Missing or invalid API key.');
  return m[1];
}

/** Refuses, in the API's error shape, what the SDK transport would refuse in its own. */
function checkMcpRequest(request: FastifyRequest): void {
  const accept = request.headers.accept ?? '';
  if (!accept.includes('application/json') || !accept.includes('text/event-stream')) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'MCP clients must send Accept: application/json, text/event-stream (Streamable HTTP transport).',
    );
  }
  const version = request.headers['mcp-protocol-version'];
  if (
    version !== undefined &&
    (typeof version !== 'string' || !SUPPORTED_PROTOCOL_VERSIONS.includes(version))
  ) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `Unsupported MCP protocol version; supported: ${SUPPORTED_PROTOCOL_VERSIONS.join(', ')}.`,
    );
  }
  const body: unknown = request.body;
  const messages = Array.isArray(body) ? body : [body];
  if (messages.length === 0 || messages.length > MAX_BATCH) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      `Send 1 to ${MAX_BATCH} JSON-RPC messages per request.`,
    );
  }
  if (!messages.every((m) => JSONRPCMessageSchema.safeParse(m).success)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'The body is not a JSON-RPC 2.0 message (or batch of them).',
    );
  }
}

function identityOf(request: FastifyRequest): McpIdentity {
  const p = principalOf(request);
  return {
    keyId: p.keyId,
    tenant: p.tenant,
    scopes: p.scopes,
    sandboxId: p.sandboxId,
    tools: p.tools,
  };
}

async function handleMcp(
  app: App,
  request: FastifyRequest,
  reply: FastifyReply,
): Promise<FastifyReply> {
  checkMcpRequest(request);
  const identity = identityOf(request);
  const client = new PalisadeClient({
    baseUrl: 'http://127.0.0.1',
    apiKey: bearerKey(request),
    // A rate-limited tool call is reported to the model at once instead of holding the request.
    retries: 0,
    fetch: injectFetch(app.fastify),
    env: {},
  });
  const server = createMcpServer({
    client,
    identity,
    onToolCall: (e) => {
      void app.audit
        .append({
          type: 'mcp.tool',
          tenant: identity.tenant,
          actor: identity.keyId,
          data: { tool: e.tool, ok: e.ok, ...(e.code ? { code: e.code } : {}), transport: 'http' },
        })
        .catch((err: unknown) => request.log.error({ err }, 'audit append failed'));
    },
  });
  // Stateless: no session id is generated, none is accepted.
  const transport = new WebStandardStreamableHTTPServerTransport({
    sessionIdGenerator: undefined,
    enableJsonResponse: true,
  });
  await server.connect(transport);
  try {
    const headers = new Headers();
    for (const name of ['accept', 'content-type', 'mcp-protocol-version']) {
      const value = request.headers[name];
      if (typeof value === 'string') headers.set(name, value);
    }
    const res = await transport.handleRequest(
      new Request('http://127.0.0.1/mcp', { method: 'POST', headers }),
      { parsedBody: request.body },
    );
    const text = await res.text();
    if (res.status >= 400) {
      let detail = 'the request was refused';
      try {
        const parsed = JSON.parse(text) as { error?: { message?: unknown } };
        if (typeof parsed.error?.message === 'string') detail = parsed.error.message;
      } catch {
        // keep the generic detail
      }
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `MCP: ${detail.replace(/[^\x20-\x7e]/g, '?').slice(0, 300)}`,
      );
    }
    void reply.code(res.status);
    const type = res.headers.get('content-type');
    if (type) void reply.type(type);
    return reply.send(text.length > 0 ? text : undefined);
  } finally {
    await server.close().catch(() => undefined);
  }
}

export function registerMcpRoutes(app: App): void {
  const { fastify, sandboxes } = app;

  fastify.post(
    '/mcp',
    {
      config: {
        access: {
          scope: 'authenticated',
          category: 'read',
          summary:
            'Model Context Protocol (Streamable HTTP, stateless, JSON responses). Tools are those the key may use; see docs/mcp.md.',
        },
      },
      schema: {
        querystring: EMPTY_QUERY,
        body: {
          description: 'A JSON-RPC 2.0 message or batch.',
          anyOf: [{ type: 'object' }, { type: 'array', maxItems: MAX_BATCH }],
        },
      },
    },
    async (request, reply) => handleMcp(app, request, reply),
  );

  // The transport is stateless: there is no server-to-client stream and no session to end.
  for (const method of ['GET', 'DELETE'] as const) {
    fastify.route({
      method,
      url: '/mcp',
      config: {
        access: {
          scope: 'authenticated',
          category: 'read',
          summary: 'Not offered (stateless MCP endpoint): 405',
        },
      },
      schema: { querystring: EMPTY_QUERY },
      handler: async (request, reply) => {
        void reply.header('allow', 'POST');
        return reply.code(405).type('application/json; charset=utf-8').send({
          code: 'INVALID_ARGUMENT',
          message: 'This MCP endpoint is stateless: send JSON-RPC messages with POST /mcp.',
          requestId: request.id,
        });
      },
    });
  }

  fastify.post(
    '/v1/sandboxes/:id/policy/check',
    {
      config: {
        access: {
          scope: 'sandboxes:read',
          category: 'read',
          summary: 'What the permission policy would decide for a command, without running it',
        },
      },
      schema: {
        querystring: EMPTY_QUERY,
        params: {
          type: 'object',
          additionalProperties: false,
          required: ['id'],
          properties: { id: { type: 'string', pattern: SANDBOX_ID } },
        },
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['command'],
          properties: {
            command: { type: 'string', minLength: 1, maxLength: 256 * 1024 },
            cwd: { type: 'string', minLength: 1, maxLength: 4096 },
          },
        },
      },
    },
    async (request) => {
      const caller = principalOf(request);
      const { id } = request.params as { id: string };
      const body = request.body as { command: string; cwd?: string };
      await sandboxes.get(caller, id);
      const policy = sandboxes.policyFor(id);
      if (!policy)
        return { decision: 'allow', reason: 'no permission policy is configured on this server' };
      const d = await policy.decide({
        tool: 'Bash',
        command: body.command,
        ...(body.cwd !== undefined ? { cwd: body.cwd } : {}),
      });
      return { decision: d.decision, reason: d.reason };
    },
  );
}
