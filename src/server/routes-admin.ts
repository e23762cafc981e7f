import { PalisadeError } from '../errors/index.js';
import { hasScope, isValidKeyId, MCP_TOOLS, SCOPES, type Scope } from '../auth/index.js';
import { principalOf, type App } from './app.js';

const ISO_TIME = '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d{1,3})?Z$';
const KEY_ID = '^[a-z2-7]{16}$';
const TENANT = '^[a-z0-9][a-z0-9-]{0,62}$';
const SANDBOX_ID = '^sb-[a-z2-7]{20}$';
const EMPTY_QUERY = { type: 'object', additionalProperties: false, properties: {} } as const;

export function registerAdminRoutes(app: App): void {
  const { fastify, keys, audit } = app;

  fastify.get(
    '/v1/whoami',
    {
      config: {
        access: {
          scope: 'authenticated',
          category: 'read',
          summary: 'The calling key: id, tenant, scopes',
        },
      },
      schema: { querystring: EMPTY_QUERY },
    },
    async (request) => {
      const p = principalOf(request);
      return {
        keyId: p.keyId,
        tenant: p.tenant,
        scopes: p.scopes,
        sandboxId: p.sandboxId ?? null,
        tools: p.tools ?? null,
      };
    },
  );

  fastify.post(
    '/v1/keys',
    {
      config: {
        access: { scope: 'admin', category: 'write', summary: 'Create an API key (shown once)' },
      },
      schema: {
        querystring: EMPTY_QUERY,
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['name', 'scopes'],
          properties: {
            name: { type: 'string', minLength: 1, maxLength: 128 },
            tenant: { type: 'string', pattern: TENANT },
            scopes: {
              type: 'array',
              minItems: 1,
              maxItems: SCOPES.length,
              items: { type: 'string', enum: [...SCOPES] },
            },
            expiresAt: { type: 'string', pattern: ISO_TIME },
            sandboxId: { type: 'string', pattern: SANDBOX_ID },
            tools: {
              type: 'array',
              minItems: 1,
              maxItems: MCP_TOOLS.length,
              items: { type: 'string', enum: [...MCP_TOOLS] },
            },
          },
        },
      },
    },
    async (request, reply) => {
      const p = principalOf(request);
      const body = request.body as {
        name: string;
        tenant?: string;
        scopes: Scope[];
        expiresAt?: string;
        sandboxId?: string;
        tools?: string[];
      };
      const expiresAt = body.expiresAt !== undefined ? new Date(body.expiresAt) : null;
      if (expiresAt && Number.isNaN(expiresAt.getTime())) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          'expiresAt is not a valid time; use ISO-8601 UTC, e.g. 2030-01-01T00:00:00Z.',
        );
      }
      const created = await keys.create({
        tenant: body.tenant ?? p.tenant,
        name: body.name,
        scopes: body.scopes,
        expiresAt,
        ...(body.sandboxId !== undefined ? { sandboxId: body.sandboxId } : {}),
        ...(body.tools !== undefined ? { tools: body.tools } : {}),
      });
      await audit.append({
        type: 'key.create',
        tenant: created.info.tenant,
        actor: p.keyId,
        data: {
          keyId: created.info.id,
          name: created.info.name,
          scopes: created.info.scopes,
          expiresAt: created.info.expiresAt,
          sandboxId: created.info.sandboxId,
          tools: created.info.tools,
        },
      });
      return reply.code(201).send({ key: created.key, ...created.info });
    },
  );

  fastify.get(
    '/v1/keys',
    {
      config: {
        access: {
          scope: 'admin',
          category: 'read',
          summary: 'List API keys (never the keys themselves)',
        },
      },
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { tenant: { type: 'string', pattern: TENANT } },
        },
      },
    },
    async (request) => {
      const q = request.query as { tenant?: string };
      return { items: await keys.list(q.tenant !== undefined ? { tenant: q.tenant } : {}) };
    },
  );

  fastify.delete(
    '/v1/keys/:keyId',
    {
      config: {
        access: {
          scope: 'admin',
          category: 'write',
          summary: 'Revoke an API key (effective on its next request)',
        },
      },
      schema: {
        querystring: EMPTY_QUERY,
        params: {
          type: 'object',
          additionalProperties: false,
          required: ['keyId'],
          properties: { keyId: { type: 'string', pattern: KEY_ID } },
        },
      },
    },
    async (request) => {
      const p = principalOf(request);
      const { keyId } = request.params as { keyId: string };
      if (!isValidKeyId(keyId)) throw new PalisadeError('INVALID_ARGUMENT', 'Invalid key id.');
      const info = await keys.revoke(keyId);
      await audit.append({
        type: 'key.revoke',
        tenant: info.tenant,
        actor: p.keyId,
        data: { keyId },
      });
      return info;
    },
  );

  fastify.get(
    '/v1/audit',
    {
      config: {
        access: {
          scope: 'audit:read',
          category: 'read',
          summary: 'Audit records, filtered; non-admin keys see their tenant only',
        },
      },
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            since: { type: 'string', pattern: ISO_TIME },
            until: { type: 'string', pattern: ISO_TIME },
            type: { type: 'string', pattern: '^[a-z_.]{1,64}$' },
            tenant: { type: 'string', pattern: TENANT },
            sandboxId: { type: 'string', pattern: SANDBOX_ID },
            after: { type: 'string', pattern: '^[0-9]{1,15}$' },
            limit: { type: 'string', pattern: '^[0-9]{1,4}$' },
          },
        },
      },
    },
    async (request) => {
      const p = principalOf(request);
      const q = request.query as Record<string, string | undefined>;
      const isAdmin = hasScope(p.scopes, 'admin');
      if (!isAdmin && q.tenant !== undefined && q.tenant !== p.tenant) {
        throw new PalisadeError(
          'FORBIDDEN',
          "Only admin keys can read another tenant's audit records.",
        );
      }
      const tenant = isAdmin ? q.tenant : p.tenant;
      const limit = q.limit !== undefined ? Number(q.limit) : 100;
      const items = await audit.query({
        ...(q.since !== undefined ? { since: q.since } : {}),
        ...(q.until !== undefined ? { until: q.until } : {}),
        ...(q.type !== undefined ? { type: q.type } : {}),
        ...(tenant !== undefined ? { tenant } : {}),
        ...(q.sandboxId !== undefined ? { sandboxId: q.sandboxId } : {}),
        ...(q.after !== undefined ? { afterSeq: Number(q.after) } : {}),
        limit,
      });
      const last = items.at(-1);
      return {
        items,
        nextAfter:
          items.length === Math.min(Math.max(limit, 1), 1000) && last ? String(last.seq) : null,
      };
    },
  );

  fastify.get(
    '/v1/audit/verify',
    {
      config: {
        access: { scope: 'admin', category: 'read', summary: 'Verify the audit hash chain' },
      },
      schema: { querystring: EMPTY_QUERY },
    },
    async () => audit.verify(),
  );
}
