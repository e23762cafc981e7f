import { StringDecoder } from 'node:string_decoder';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ExecResult, SandboxState } from '../sandbox/types.js';
import { principalOf, sendError, type App } from './app.js';
import { toErrorResponse } from './http-errors.js';
import type { StreamName } from './chunk-log.js';
import type { ServerConfig } from './config.js';
import type { ExecBody, PendingApproval } from './executions.js';
import type { CreateSandboxBody, NetworkRulesBody } from './sandboxes.js';

const SANDBOX_ID = '^sb-[a-z2-7]{20}$';
const EXEC_ID = '^ex-[a-z2-7]{20}$';
const EMPTY_QUERY = { type: 'object', additionalProperties: false, properties: {} } as const;
const ID_PARAMS = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'string', pattern: SANDBOX_ID } },
} as const;
const EXEC_PARAMS = {
  type: 'object',
  additionalProperties: false,
  required: ['id', 'execId'],
  properties: {
    id: { type: 'string', pattern: SANDBOX_ID },
    execId: { type: 'string', pattern: EXEC_ID },
  },
} as const;
const ENV_SCHEMA = {
  type: 'object',
  maxProperties: 256,
  propertyNames: { type: 'string', maxLength: 256 },
  additionalProperties: { type: 'string', maxLength: 32768 },
} as const;
const RULE_LIST = {
  type: 'array',
  maxItems: 1000,
  items: { type: 'string', minLength: 1, maxLength: 512 },
} as const;
/** The `network` section of a policy file: egress rules (grammar in docs/policy-network.md). */
const NETWORK_RULES_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  description:
    'Egress rules: allow and deny lists of rules such as "example.com", "*.npmjs.org:443", "10.0.0.0/8:5432". Operator denies always win; if the operator lists allow rules, every sandbox allow rule must lie within them.',
  properties: { allow: RULE_LIST, deny: RULE_LIST },
} as const;
const STATES: SandboxState[] = ['pending', 'running', 'paused', 'terminated', 'failed'];

function execBodySchema(config: ServerConfig) {
  return {
    type: 'object',
    additionalProperties: false,
    properties: {
      command: { type: 'string', minLength: 1, maxLength: 256 * 1024 },
      argv: {
        type: 'array',
        minItems: 1,
        maxItems: 4096,
        items: { type: 'string', maxLength: 128 * 1024 },
      },
      cwd: { type: 'string', minLength: 1, maxLength: 4096 },
      env: ENV_SCHEMA,
      timeoutMs: { type: 'integer', minimum: 1, maximum: config.exec.maxTimeoutMs },
      stdin: { type: 'string', maxLength: config.bodyLimitBytes },
      maxOutputBytes: { type: 'integer', minimum: 0, maximum: config.exec.maxOutputBytes },
      background: { type: 'boolean' },
      encoding: { type: 'string', enum: ['utf8', 'base64'] },
    },
  } as const;
}

export function registerSandboxRoutes(app: App, config: ServerConfig): void {
  const { fastify, sandboxes, execs } = app;

  fastify.post(
    '/v1/sandboxes',
    {
      config: {
        access: { scope: 'sandboxes:write', category: 'create', summary: 'Create a sandbox' },
      },
      schema: {
        querystring: EMPTY_QUERY,
        body: {
          type: 'object',
          additionalProperties: false,
          properties: {
            labels: {
              type: 'object',
              maxProperties: 32,
              propertyNames: { type: 'string', maxLength: 253 },
              additionalProperties: { type: 'string', maxLength: 63 },
            },
            env: ENV_SCHEMA,
            limits: {
              type: 'object',
              additionalProperties: false,
              properties: {
                memoryBytes: { type: 'integer', minimum: 16 * 1024 * 1024, maximum: 1024 ** 4 },
                swapBytes: { type: 'integer', minimum: 0, maximum: 1024 ** 4 },
                pids: { type: 'integer', minimum: 8, maximum: 65536 },
                cpus: { type: 'number', exclusiveMinimum: 0, maximum: 1024 },
                diskBytes: { type: 'integer', minimum: 0, maximum: 1024 ** 5 },
                tmpBytes: { type: 'integer', minimum: 0, maximum: 1024 ** 4 },
              },
            },
            timeoutMs: { type: 'integer', minimum: 1000, maximum: config.maxSandboxTimeoutMs },
            policy: {
              type: 'object',
              additionalProperties: false,
              description:
                "The sandbox's permission policy layer (same format as a policy file); it can tighten, never loosen, the operator's policy.",
              properties: { permissions: { type: 'object' }, network: NETWORK_RULES_SCHEMA },
            },
          },
        },
      },
    },
    async (request, reply) => {
      const view = await sandboxes.create(
        principalOf(request),
        (request.body ?? {}) as CreateSandboxBody,
      );
      return reply.code(201).send(view);
    },
  );

  fastify.get(
    '/v1/sandboxes',
    {
      config: {
        access: {
          scope: 'sandboxes:read',
          category: 'read',
          summary: 'List sandboxes (state filter, label selector, pagination)',
        },
      },
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            state: { type: 'string', enum: STATES },
            labelSelector: { type: 'string', maxLength: 2048 },
            limit: { type: 'string', pattern: '^[0-9]{1,3}$' },
            cursor: { type: 'string', maxLength: 512, pattern: '^[A-Za-z0-9_-]*$' },
          },
        },
      },
    },
    async (request) => {
      const q = request.query as {
        state?: SandboxState;
        labelSelector?: string;
        limit?: string;
        cursor?: string;
      };
      return sandboxes.list(principalOf(request), {
        ...(q.state !== undefined ? { state: q.state } : {}),
        ...(q.labelSelector !== undefined ? { labelSelector: q.labelSelector } : {}),
        ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}),
        ...(q.cursor !== undefined ? { cursor: q.cursor } : {}),
      });
    },
  );

  fastify.get(
    '/v1/sandboxes/:id',
    {
      config: { access: { scope: 'sandboxes:read', category: 'read', summary: 'Get a sandbox' } },
      schema: { params: ID_PARAMS, querystring: EMPTY_QUERY },
    },
    async (request) => sandboxes.get(principalOf(request), (request.params as { id: string }).id),
  );

  fastify.delete(
    '/v1/sandboxes/:id',
    {
      config: {
        access: {
          scope: 'sandboxes:write',
          category: 'write',
          summary: 'Destroy a sandbox; purge=true also deletes its record and logs',
        },
      },
      schema: {
        params: ID_PARAMS,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { purge: { type: 'string', enum: ['true', 'false'] } },
        },
      },
    },
    async (request, reply) => {
      const { id } = request.params as { id: string };
      if ((request.query as { purge?: string }).purge === 'true') {
        await sandboxes.purge(principalOf(request), id);
        return reply.code(204).send();
      }
      return sandboxes.destroy(principalOf(request), id);
    },
  );

  for (const action of ['pause', 'resume'] as const) {
    fastify.post(
      `/v1/sandboxes/:id/${action}`,
      {
        config: {
          access: {
            scope: 'sandboxes:write',
            category: 'write',
            summary: `${action === 'pause' ? 'Pause (freeze)' : 'Resume'} a sandbox`,
          },
        },
        schema: { params: ID_PARAMS, querystring: EMPTY_QUERY },
      },
      async (request) => {
        const { id } = request.params as { id: string };
        return action === 'pause'
          ? sandboxes.pause(principalOf(request), id)
          : sandboxes.resume(principalOf(request), id);
      },
    );
  }

  fastify.post(
    '/v1/sandboxes/:id/timeout',
    {
      config: {
        access: {
          scope: 'sandboxes:write',
          category: 'write',
          summary: 'Renew expiry: the sandbox now expires timeoutMs from now',
        },
      },
      schema: {
        params: ID_PARAMS,
        querystring: EMPTY_QUERY,
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['timeoutMs'],
          properties: {
            timeoutMs: { type: 'integer', minimum: 1000, maximum: config.maxSandboxTimeoutMs },
          },
        },
      },
    },
    async (request) => {
      const { id } = request.params as { id: string };
      return sandboxes.renew(
        principalOf(request),
        id,
        (request.body as { timeoutMs: number }).timeoutMs,
      );
    },
  );

  fastify.get(
    '/v1/sandboxes/:id/network',
    {
      config: {
        access: {
          scope: 'sandboxes:read',
          category: 'read',
          summary:
            "A sandbox's egress rules (its own, the operator's, the enforced ones), gateway stats and recent denials",
        },
      },
      schema: { params: ID_PARAMS, querystring: EMPTY_QUERY },
    },
    async (request) =>
      sandboxes.network(principalOf(request), (request.params as { id: string }).id),
  );

  fastify.put(
    '/v1/sandboxes/:id/network',
    {
      config: {
        access: {
          scope: 'sandboxes:write',
          category: 'write',
          summary:
            "Replace a sandbox's egress rules, live: new connections follow them, open connections to now-denied destinations are closed",
        },
      },
      schema: { params: ID_PARAMS, querystring: EMPTY_QUERY, body: NETWORK_RULES_SCHEMA },
    },
    async (request) =>
      sandboxes.setNetwork(
        principalOf(request),
        (request.params as { id: string }).id,
        (request.body ?? {}) as NetworkRulesBody,
      ),
  );

  fastify.post(
    '/v1/sandboxes/:id/exec',
    {
      config: {
        access: {
          scope: 'sandboxes:exec',
          category: 'exec',
          summary:
            'Run a command. JSON result; with Accept: text/event-stream, events stream as they happen; with background=true, 202 and an execution id.',
        },
      },
      schema: { params: ID_PARAMS, querystring: EMPTY_QUERY, body: execBodySchema(config) },
    },
    async (request, reply) => {
      const caller = principalOf(request);
      const { id } = request.params as { id: string };
      const body = (request.body ?? {}) as ExecBody;
      await sandboxes.assertRunning(caller, id);
      if (body.background) {
        return reply.code(202).send(await execs.startBackground(caller, id, body));
      }
      const encode = (data: Buffer) =>
        data.toString(body.encoding === 'base64' ? 'base64' : 'utf8');
      const abort = new AbortController();
      const onClose = () => {
        if (!reply.raw.writableFinished) abort.abort();
      };
      reply.raw.on('close', onClose);
      const wantsStream = (request.headers.accept ?? '').includes('text/event-stream');
      if (!wantsStream) {
        try {
          const { execId, result } = await execs.runForeground(caller, id, body, {
            signal: abort.signal,
          });
          return {
            execId,
            exitCode: result.exitCode,
            signal: result.signal,
            stdout: encode(result.stdout),
            stderr: encode(result.stderr),
            encoding: body.encoding ?? 'utf8',
            truncated: result.stdoutTruncated || result.stderrTruncated,
            stdoutTruncated: result.stdoutTruncated,
            stderrTruncated: result.stderrTruncated,
            timedOut: result.timedOut,
            interrupted: result.interrupted,
            durationMs: result.durationMs,
          };
        } finally {
          reply.raw.off('close', onClose);
        }
      }
      // Bounded per key: each open stream holds a connection, buffers and possibly a waiting
      // approval, whatever the command does.
      let releaseStream: () => void;
      try {
        releaseStream = execs.acquireStream(caller);
      } catch (err) {
        reply.raw.off('close', onClose);
        throw err;
      }
      try {
        return await streamExec(request, reply, body, abort, async (callbacks) =>
          execs.runForeground(caller, id, body, { ...callbacks, signal: abort.signal }),
        );
      } finally {
        releaseStream();
        reply.raw.off('close', onClose);
      }
    },
  );

  fastify.get(
    '/v1/sandboxes/:id/execs',
    {
      config: {
        access: {
          scope: 'sandboxes:read',
          category: 'read',
          summary: 'List background executions of a sandbox',
        },
      },
      schema: { params: ID_PARAMS, querystring: EMPTY_QUERY },
    },
    async (request) => {
      const caller = principalOf(request);
      const { id } = request.params as { id: string };
      await sandboxes.get(caller, id);
      return { items: execs.list(caller.tenant, id) };
    },
  );

  fastify.get(
    '/v1/sandboxes/:id/execs/:execId',
    {
      config: {
        access: {
          scope: 'sandboxes:read',
          category: 'read',
          summary: 'Status of a background execution',
        },
      },
      schema: { params: EXEC_PARAMS, querystring: EMPTY_QUERY },
    },
    async (request) => {
      const caller = principalOf(request);
      const { id, execId } = request.params as { id: string; execId: string };
      await sandboxes.get(caller, id);
      return execs.get(caller.tenant, id, execId);
    },
  );

  fastify.get(
    '/v1/sandboxes/:id/execs/:execId/logs',
    {
      config: {
        access: {
          scope: 'sandboxes:read',
          category: 'read',
          summary: 'Output of a background execution from a cursor',
        },
      },
      schema: {
        params: EXEC_PARAMS,
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            cursor: { type: 'string', pattern: '^[0-9]{1,12}$' },
            maxBytes: { type: 'string', pattern: '^[0-9]{1,8}$' },
            encoding: { type: 'string', enum: ['utf8', 'base64'] },
          },
        },
      },
    },
    async (request) => {
      const caller = principalOf(request);
      const { id, execId } = request.params as { id: string; execId: string };
      const q = request.query as {
        cursor?: string;
        maxBytes?: string;
        encoding?: 'utf8' | 'base64';
      };
      await sandboxes.get(caller, id);
      const maxBytes = Math.min(Math.max(Number(q.maxBytes ?? 262144), 1), 1024 * 1024);
      const read = execs.logs(caller.tenant, id, execId, Number(q.cursor ?? 0), maxBytes);
      const encoding = q.encoding ?? 'utf8';
      return {
        chunks: read.chunks.map((c) => ({
          seq: c.seq,
          stream: c.stream,
          data: c.data.toString(encoding),
        })),
        encoding,
        nextCursor: String(read.nextCursor),
        dropped: read.dropped,
        exec: read.view,
      };
    },
  );

  fastify.post(
    '/v1/sandboxes/:id/execs/:execId/interrupt',
    {
      config: {
        access: {
          scope: 'sandboxes:exec',
          category: 'exec',
          summary: 'Interrupt a background execution (SIGINT, then kill)',
        },
      },
      schema: { params: EXEC_PARAMS, querystring: EMPTY_QUERY },
    },
    async (request) => {
      const caller = principalOf(request);
      const { id, execId } = request.params as { id: string; execId: string };
      await sandboxes.get(caller, id);
      return execs.interrupt(caller.tenant, id, execId);
    },
  );
}

type Runner = (callbacks: {
  onStart: (execId: string) => void;
  onApprovalPending: (pending: PendingApproval) => void;
  onChunk: (stream: StreamName, data: Buffer) => void;
}) => Promise<{ execId: string; result: ExecResult }>;

/** While an exec waits for a human, a comment line this often keeps proxies from closing the stream. */
const PENDING_KEEPALIVE_MS = 15_000;

/**
 * Server-Sent Events: `start`, then `stdout`/`stderr` chunks in order, then `exit`. If the policy
 * asks a human first, `pending` (approval id, exec id, expiry) comes at once, then `start`… once
 * approved, or an `error` event (denied, expired, cancelled). Other errors before the command
 * starts are ordinary JSON error responses; the stream opens once it runs or waits.
 * Buffering is bounded by the exec's maxOutputBytes, which caps what the engine delivers.
 */
async function streamExec(
  request: FastifyRequest,
  reply: FastifyReply,
  body: ExecBody,
  abort: AbortController,
  run: Runner,
): Promise<FastifyReply | undefined> {
  const base64 = body.encoding === 'base64';
  const decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
  const pending: string[] = [];
  let open = false;
  const event = (name: string, data: unknown) =>
    `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
  // Output that arrives before `start` is sent is held back, so `start` always comes first.
  let started = false;
  const write = (text: string) => {
    if (!started) pending.push(text);
    else if (!reply.raw.destroyed) reply.raw.write(text);
  };
  const chunkEvent = (stream: StreamName, data: Buffer) => {
    const text = base64 ? data.toString('base64') : decoders[stream].write(data);
    if (text.length > 0) write(event(stream, { data: text }));
  };
  let keepalive: NodeJS.Timeout | undefined;
  const stopKeepalive = () => {
    if (keepalive !== undefined) clearInterval(keepalive);
    keepalive = undefined;
  };
  const openStream = () => {
    if (open) return;
    reply.hijack();
    reply.raw.writeHead(200, {
      ...(reply.getHeaders() as Record<string, string>),
      'content-type': 'text/event-stream; charset=utf-8',
      'x-accel-buffering': 'no',
      connection: 'keep-alive',
    });
    open = true;
  };
  try {
    const { execId, result } = await run({
      onApprovalPending: (waiting) => {
        openStream();
        reply.raw.write(
          event('pending', {
            approvalId: waiting.approvalId,
            execId: waiting.execId,
            expiresAt: waiting.expiresAt,
            policyReason: waiting.policyReason,
          }),
        );
        keepalive = setInterval(() => {
          if (!reply.raw.destroyed) reply.raw.write(': waiting for approval\n\n');
        }, PENDING_KEEPALIVE_MS);
        keepalive.unref();
      },
      onStart: (execId) => {
        stopKeepalive();
        openStream();
        reply.raw.write(event('start', { execId }));
        started = true;
        for (const text of pending.splice(0)) reply.raw.write(text);
      },
      onChunk: chunkEvent,
    });
    if (!base64) {
      for (const stream of ['stdout', 'stderr'] as const) {
        const rest = decoders[stream].end();
        if (rest.length > 0) write(event(stream, { data: rest }));
      }
    }
    write(
      event('exit', {
        execId,
        exitCode: result.exitCode,
        signal: result.signal,
        truncated: result.stdoutTruncated || result.stderrTruncated,
        stdoutTruncated: result.stdoutTruncated,
        stderrTruncated: result.stderrTruncated,
        timedOut: result.timedOut,
        interrupted: result.interrupted,
        durationMs: result.durationMs,
      }),
    );
    reply.raw.end();
    return undefined;
  } catch (err) {
    if (!open) return sendError(request, reply, err);
    const { body: errBody } = toErrorResponse(err, request.id);
    if (!reply.raw.destroyed) reply.raw.end(event('error', errBody));
    abort.abort();
    return undefined;
  } finally {
    stopKeepalive();
    if (!reply.raw.writableEnded && abort.signal.aborted) reply.raw.destroy();
  }
}
