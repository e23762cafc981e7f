import type { ServerResponse } from 'node:http';
import { PalisadeError } from '../errors/index.js';
import { principalOf, sendError, type App } from './app.js';
import type { ApprovalEvent, ApprovalService } from './approvals.js';
import type { StreamHub } from './ws.js';
import { WS_PATH } from './ws.js';

const EMPTY_QUERY = { type: 'object', additionalProperties: false, properties: {} } as const;
const APPROVAL_PARAMS = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'string', pattern: '^ap-[a-z2-7]{20}$' } },
} as const;
const DECISION_BODY = {
  type: 'object',
  additionalProperties: false,
  properties: { reason: { type: 'string', maxLength: 1024 } },
} as const;
/** Bytes an SSE approvals feed may have queued for a slow reader before it is closed. */
const MAX_SSE_BUFFERED_BYTES = 256 * 1024;
const SSE_KEEPALIVE_MS = 15_000;

/**
 * Approvals: list, approve, deny, and the SSE feed of new ones. Deciding needs the
 * `approvals:write` scope (or admin); the agent's own key should not have it. Everything is
 * scoped to the caller's tenant.
 */
export function registerApprovalRoutes(app: App, approvals: ApprovalService, hub: StreamHub): void {
  const { fastify } = app;
  /** Open SSE feeds per key, bounded like WebSocket connections. */
  const feedsPerKey = new Map<string, number>();
  const feeds = new Set<ServerResponse>();
  // Open feeds would keep the server from closing.
  fastify.addHook('preClose', async () => {
    for (const raw of feeds) raw.destroy();
  });

  fastify.get(
    '/v1/approvals',
    {
      config: {
        access: {
          scope: 'approvals:write',
          category: 'read',
          summary:
            "Pending approvals of the caller's tenant (commands and file actions the policy marked ask)",
        },
      },
      schema: { querystring: EMPTY_QUERY },
    },
    async (request) => ({ items: approvals.list(principalOf(request).tenant) }),
  );

  for (const decision of ['approve', 'deny'] as const) {
    fastify.post(
      `/v1/approvals/:id/${decision}`,
      {
        config: {
          access: {
            scope: 'approvals:write',
            category: 'write',
            summary:
              decision === 'approve'
                ? 'Approve a pending command or file action (it then runs); 409 if already decided'
                : 'Deny a pending command or file action (its caller gets 403 with the reason); 409 if already decided',
          },
        },
        schema: { params: APPROVAL_PARAMS, querystring: EMPTY_QUERY, body: DECISION_BODY },
        // The body (a reason) is optional: no body means {}.
        preValidation: async (request) => {
          request.body ??= {};
        },
      },
      async (request) => {
        const caller = principalOf(request);
        const { id } = request.params as { id: string };
        const reason = (request.body as { reason?: string } | undefined)?.reason;
        return approvals.decide(caller, id, decision, reason);
      },
    );
  }

  fastify.get(
    '/v1/approvals/stream',
    {
      config: {
        access: {
          scope: 'approvals:write',
          category: 'read',
          summary:
            'Server-Sent Events feed (Accept: text/event-stream): the pending approvals, then each new and resolved one',
        },
      },
      schema: { querystring: EMPTY_QUERY, produces: ['text/event-stream'] },
    },
    async (request, reply) => {
      const caller = principalOf(request);
      if (!(request.headers.accept ?? '').includes('text/event-stream')) {
        return sendError(
          request,
          reply,
          new PalisadeError(
            'INVALID_ARGUMENT',
            'This is a Server-Sent Events feed: send Accept: text/event-stream.',
          ),
        );
      }
      const open = feedsPerKey.get(caller.keyId) ?? 0;
      if (open >= hub.config.maxConnectionsPerKey) {
        return sendError(
          request,
          reply,
          new PalisadeError(
            'RATE_LIMITED',
            `This API key already has ${open} approval feeds open, the maximum; close one first.`,
            { retryAfterSeconds: 5 },
          ),
        );
      }
      feedsPerKey.set(caller.keyId, open + 1);
      reply.hijack();
      const raw = reply.raw;
      feeds.add(raw);
      raw.writeHead(200, {
        ...(reply.getHeaders() as Record<string, string>),
        'content-type': 'text/event-stream; charset=utf-8',
        'x-accel-buffering': 'no',
        connection: 'keep-alive',
      });
      // Send the headers now: with nothing pending, the first event could be minutes away.
      raw.flushHeaders();
      const write = (text: string) => {
        if (raw.destroyed) return;
        // A reader that does not keep up is cut off; it reconnects and gets the pending list again.
        if (raw.writableLength > MAX_SSE_BUFFERED_BYTES) {
          raw.destroy();
          return;
        }
        raw.write(text);
      };
      const event = (e: ApprovalEvent) =>
        write(`event: ${e.type}\ndata: ${JSON.stringify(e.approval)}\n\n`);
      for (const approval of approvals.list(caller.tenant)) {
        event({ type: 'approval.pending', tenant: caller.tenant, approval });
      }
      const unsubscribe = approvals.subscribe((e) => {
        if (e.tenant === caller.tenant) event(e);
      });
      const keepalive = setInterval(() => write(': keepalive\n\n'), SSE_KEEPALIVE_MS);
      keepalive.unref();
      raw.once('close', () => {
        feeds.delete(raw);
        unsubscribe();
        clearInterval(keepalive);
        const n = (feedsPerKey.get(caller.keyId) ?? 1) - 1;
        if (n <= 0) feedsPerKey.delete(caller.keyId);
        else feedsPerKey.set(caller.keyId, n);
      });
      return reply;
    },
  );

  // Only reached without an Upgrade header (upgrades are taken by the server's upgrade handler).
  fastify.get(
    WS_PATH,
    {
      config: {
        access: {
          scope: 'sandboxes:read',
          category: 'read',
          summary:
            'WebSocket streams (upgrade only): subscribe to sandboxes or executions; see docs/api.md "WebSocket streams"',
        },
      },
      schema: { querystring: EMPTY_QUERY },
    },
    async (request, reply) =>
      sendError(
        request,
        reply,
        new PalisadeError(
          'INVALID_ARGUMENT',
          `${WS_PATH} accepts only WebSocket upgrades (Connection: Upgrade, Upgrade: websocket).`,
        ),
      ),
  );
}
