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
/** Bytes a slow reader of a streamed (SSE) MCP response may leave queued before it is cut. */
const MAX_SSE_BUFFERED_BYTES = 1024 * 1024;
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
    const signal = init?.signal ?? undefined;
    // light-my-request keeps the signal on the request (see inProcessSignal in routes-files.ts),
    // so a route waiting for a human approval sees this caller go away and cancels it.
    const injected = fastify.inject({
      method: (init?.method ?? 'GET') as 'GET',
      url: url.pathname + url.search,
      headers,
      ...(payload !== undefined ? { payload } : {}),
      ...(signal ? { signal } : {}),
    });
    const res = signal
      ? await new Promise<Awaited<typeof injected>>((resolve, reject) => {
          const onAbort = () =>
            reject(new DOMException('The in-process API call was aborted.', 'AbortError'));
          signal.addEventListener('abort', onAbort, { once: true });
          injected
            .then(resolve, reject)
            .finally(() => signal.removeEventListener('abort', onAbort));
        })
      : await injected;
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

/**
 * True if a request of the body asked for progress (`params._meta.progressToken`): its answer is
 * then streamed as Server-Sent Events so progress notifications reach the client while the tool
 * runs (e.g. while a human decides). Everything else gets a plain JSON response.
 */
function wantsProgress(body: unknown): boolean {
  const messages: unknown[] = Array.isArray(body) ? body : [body];
  return messages.some((m) => {
    const params = (m as { params?: { _meta?: { progressToken?: unknown } } } | null)?.params;
    const token = params?._meta?.progressToken;
    return typeof token === 'string' || typeof token === 'number';
  });
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

/**
 * Streamed tool calls in flight, so that a `notifications/cancelled` (which a stateless client
 * sends in a separate POST) can abort the call it names. Keyed by API key and JSON-RPC id; ids
 * are chosen by clients, so when two calls of the same key share an id, neither is cancelled
 * by guesswork. Entries live exactly as long as their stream.
 */
class InFlightCalls {
  readonly #calls = new Map<string, Set<() => void>>();

  add(keyId: string, requestId: string | number, cancel: () => void): () => void {
    const k = `${keyId}\u0000${typeof requestId}:${requestId}`;
    let set = this.#calls.get(k);
    if (!set) this.#calls.set(k, (set = new Set()));
    set.add(cancel);
    return () => {
      set.delete(cancel);
      if (set.size === 0) this.#calls.delete(k);
    };
  }

  cancel(keyId: string, requestId: string | number): void {
    const set = this.#calls.get(`${keyId}\u0000${typeof requestId}:${requestId}`);
    if (set?.size === 1) for (const cancel of set) cancel();
  }

  get size(): number {
    return this.#calls.size;
  }
}

function requestIdsOf(body: unknown): Array<string | number> {
  const messages: unknown[] = Array.isArray(body) ? body : [body];
  const ids: Array<string | number> = [];
  for (const m of messages) {
    const id = (m as { id?: unknown; method?: unknown } | null)?.id;
    if (
      (typeof id === 'string' || typeof id === 'number') &&
      typeof (m as { method?: unknown }).method === 'string'
    )
      ids.push(id);
  }
  return ids;
}

function cancelledIdsOf(body: unknown): Array<string | number> {
  const messages: unknown[] = Array.isArray(body) ? body : [body];
  const ids: Array<string | number> = [];
  for (const m of messages) {
    const n = m as { method?: unknown; params?: { requestId?: unknown } } | null;
    const id = n?.params?.requestId;
    if (
      n?.method === 'notifications/cancelled' &&
      (typeof id === 'string' || typeof id === 'number')
    )
      ids.push(id);
  }
  return ids;
}

async function handleMcp(
  app: App,
  inFlight: InFlightCalls,
  request: FastifyRequest,
  reply: FastifyReply,
): Promise<FastifyReply> {
  checkMcpRequest(request);
  const identity = identityOf(request);
  for (const id of cancelledIdsOf(request.body)) inFlight.cancel(identity.keyId, id);
  const approvalConfig = app.approvals.config;
  const client = new PalisadeClient({
    baseUrl: 'http://127.0.0.1',
    apiKey: bearerKey(request),
    // A rate-limited tool call is reported to the model at once instead of holding the request.
    retries: 0,
    // In process nothing hangs on a network; a file action held for a human may take the whole
    // approval window, which bounds it (the MCP client's own cancel still aborts it earlier).
    timeoutMs: approvalConfig.timeoutMs + 60_000,
    fetch: injectFetch(app.fastify),
    env: {},
  });
  const server = createMcpServer({
    client,
    identity,
    approvals: {
      // 1 ms is the operator's way to say "never wait" (config values are positive).
      waitMs: approvalConfig.mcpWaitMs <= 1 ? 0 : approvalConfig.mcpWaitMs,
      progressIntervalMs: approvalConfig.mcpProgressIntervalMs,
    },
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
  const streamed = wantsProgress(request.body);
  // Stateless: no session id is generated, none is accepted.
  const transport = new WebStandardStreamableHTTPServerTransport({
    sessionIdGenerator: undefined,
    enableJsonResponse: !streamed,
  });
  await server.connect(transport);
  const closeServer = () => server.close().catch(() => undefined);
  // A later `notifications/cancelled` for one of these requests closes the server, which aborts
  // the tool call; a JSON-mode caller then gets an empty 202 (a cancelled request has no answer).
  let cancel!: () => void;
  const cancelled = new Promise<'cancelled'>((resolve) => {
    cancel = () => resolve('cancelled');
  });
  const removals = requestIdsOf(request.body).map((id) =>
    inFlight.add(identity.keyId, id, () => {
      cancel();
      void closeServer();
    }),
  );
  const unregister = () => {
    for (const remove of removals) remove();
  };
  let closeLater = false;
  try {
    const headers = new Headers();
    for (const name of ['accept', 'content-type', 'mcp-protocol-version']) {
      const value = request.headers[name];
      if (typeof value === 'string') headers.set(name, value);
    }
    const res = await Promise.race([
      transport.handleRequest(new Request('http://127.0.0.1/mcp', { method: 'POST', headers }), {
        parsedBody: request.body,
      }),
      cancelled,
    ]);
    if (res === 'cancelled') return reply.code(202).send();
    if (streamed && res.status < 400 && res.body) {
      closeLater = true;
      return streamResponse(reply, res, res.body, async () => {
        unregister();
        await closeServer();
      });
    }
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
    if (!closeLater) {
      unregister();
      await closeServer();
    }
  }
}

/**
 * Relays the transport's SSE stream (progress notifications, then the response) to the client.
 * The client going away closes the MCP server, which aborts the tool call (a waiting exec is
 * interrupted and its approval cancelled). A reader too far behind is cut off.
 */
function streamResponse(
  reply: FastifyReply,
  res: Response,
  body: ReadableStream<Uint8Array>,
  close: () => Promise<void>,
): FastifyReply {
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(res.status, {
    ...(reply.getHeaders() as Record<string, string>),
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    'x-accel-buffering': 'no',
  });
  raw.flushHeaders();
  const reader = body.getReader();
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    void reader.cancel().catch(() => undefined);
    void close().catch(() => undefined);
  };
  raw.once('close', finish);
  void (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (raw.destroyed) break;
        if (raw.writableLength > MAX_SSE_BUFFERED_BYTES) {
          raw.destroy();
          break;
        }
        raw.write(value);
      }
      if (!raw.destroyed) raw.end();
    } catch {
      raw.destroy();
    } finally {
      finish();
    }
  })();
  return reply;
}

export function registerMcpRoutes(app: App): void {
  const { fastify, sandboxes } = app;
  const inFlight = new InFlightCalls();

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
    async (request, reply) => handleMcp(app, inFlight, request, reply),
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
