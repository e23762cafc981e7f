import { principalOf, type App } from './app.js';
import { selectorMatcher, type KillBody, type KillSwitch } from './kill-switch.js';

const EMPTY_QUERY = { type: 'object', additionalProperties: false, properties: {} } as const;

/** POST/GET /v1/kill and DELETE /v1/kill/{killId}; admin keys only. */
export function registerKillRoutes(app: App, kills: KillSwitch): void {
  const { fastify, sandboxes } = app;

  fastify.post(
    '/v1/kill',
    {
      config: {
        access: {
          scope: 'admin',
          category: 'write',
          summary:
            'Kill switch: destroy every live sandbox matching one selector (all, tenant, label selector, sandbox) and refuse matching creates and execs until released',
        },
      },
      schema: {
        querystring: EMPTY_QUERY,
        body: {
          type: 'object',
          additionalProperties: false,
          description: 'Exactly one of all, tenant, labels, sandboxId; reason is optional.',
          properties: {
            all: { type: 'boolean' },
            tenant: { type: 'string', pattern: '^[a-z0-9][a-z0-9-]{0,62}$' },
            labels: { type: 'string', minLength: 1, maxLength: 2048 },
            sandboxId: { type: 'string', pattern: '^sb-[a-z2-7]{20}$' },
            reason: { type: 'string', maxLength: 500 },
          },
        },
      },
    },
    async (request, reply) => {
      const caller = principalOf(request);
      const kill = await kills.engage(caller.keyId, (request.body ?? {}) as KillBody);
      app.metrics.kills.inc('engage');
      const { destroyed, failed } = await sandboxes.destroyMatching(
        selectorMatcher(kill.selector),
        `killed by kill switch ${kill.id}`,
        caller.keyId,
      );
      app.fastify.log.warn({ killId: kill.id, destroyed: destroyed.length }, 'kill switch engaged');
      return reply.code(201).send({ ...kill, killed: destroyed, failed });
    },
  );

  fastify.get(
    '/v1/kill',
    {
      config: { access: { scope: 'admin', category: 'read', summary: 'Active kill switches' } },
      schema: { querystring: EMPTY_QUERY },
    },
    async () => {
      await kills.ready();
      return { items: kills.list() };
    },
  );

  fastify.delete(
    '/v1/kill/:killId',
    {
      config: {
        access: {
          scope: 'admin',
          category: 'write',
          summary: 'Release a kill switch: matching creates and execs are allowed again',
        },
      },
      schema: {
        querystring: EMPTY_QUERY,
        params: {
          type: 'object',
          additionalProperties: false,
          required: ['killId'],
          properties: { killId: { type: 'string', pattern: '^kill-[a-z2-7]{20}$' } },
        },
      },
    },
    async (request) => {
      const caller = principalOf(request);
      const { killId } = request.params as { killId: string };
      const released = await kills.release(caller.keyId, killId);
      app.metrics.kills.inc('release');
      return { ...released, released: true };
    },
  );
}
