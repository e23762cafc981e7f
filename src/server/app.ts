import { randomBytes } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import pino from 'pino';
import { AuditLog } from '../audit/index.js';
import {
  FailedAuthThrottle,
  KeyStore,
  RateLimiter,
  hasScope,
  restrictionError,
  type Principal,
  type RateCategory,
  type Scope,
} from '../auth/index.js';
import {
  createEgressGateway,
  type EgressEventSink,
  type EgressGateway,
  type GatewayLimits,
  type IpAddress,
  type Resolver,
} from '../egress/index.js';
import { PalisadeError } from '../errors/index.js';
import type { SandboxRuntime } from '../sandbox/types.js';
import type { Store } from '../store/index.js';
import type { ServerConfig } from './config.js';
import { ExecService } from './executions.js';
import { securityHeaders } from './headers.js';
import { toErrorResponse } from './http-errors.js';
import { requestForLog } from './log-redact.js';
import { buildOpenApi, type RouteDoc } from './openapi.js';
import type { PolicyLayer } from '../policy/index.js';
import type { ExecPolicy } from './policy-hook.js';
import type { OperatorPolicy } from './operator-policy.js';
import { registerAdminRoutes } from './routes-admin.js';
import { registerFileRoutes } from './routes-files.js';
import { registerSandboxRoutes } from './routes-sandboxes.js';
import { SandboxService } from './sandboxes.js';
import { EgressAuditSink, SandboxNetworks } from './network.js';
import { CircuitBreaker } from './breaker.js';
import { KillSwitch } from './kill-switch.js';
import { Metrics, instrumentRuntime, observeEgress, observePolicy } from './metrics.js';
import { registerKillRoutes } from './routes-kill.js';
import { isLoopbackPeer, registerOpsRoutes } from './routes-ops.js';
import { registerMcpRoutes } from './routes-mcp.js';
import { ApprovalService } from './approvals.js';
import { registerApprovalRoutes } from './routes-approvals.js';
import { StreamHub, attachWebSockets } from './ws.js';

export const API_VERSION = '1.0.0';

export interface RouteAccess {
  /** Scope required; 'authenticated' for any valid key; 'public' for the few unauthenticated routes. */
  scope: Scope | 'authenticated' | 'public';
  category: RateCategory;
  summary: string;
  /** Also open to loopback clients without a key when the operator turned on metricsLoopback. */
  loopbackWhenConfigured?: boolean;
}

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | null;
    /** The error code sendError answered with, if any (the circuit breaker counts refusals). */
    errorCode: string | null;
  }
  interface FastifyContextConfig {
    access?: RouteAccess;
  }
}

export interface AppDeps {
  config: ServerConfig;
  store: Store;
  runtime: SandboxRuntime;
  /** Operator (and tenant) policy layers; each sandbox may add its own sandbox layer. */
  policyLayers?: PolicyLayer[];
  /** The engine built from `policyLayers` (built by startControlPlane). */
  basePolicy?: ExecPolicy;
  /** The reloadable operator policy (also `basePolicy`), when serve has a policy file. */
  operatorPolicy?: OperatorPolicy;
  /** The egress gateway the app owns. Omitted: no sandbox can have network (network sections are refused). */
  egress?: EgressOptions;
}

export interface EgressOptions {
  /** Directory for the per-sandbox proxy sockets (startControlPlane: `<dataDir>/egress`). */
  socketDir: string;
  /** Name resolution for the gateway (tests inject one that maps names to loopback). */
  resolver?: Resolver;
  limits?: Partial<GatewayLimits>;
  /** A last veto before every upstream connect (tests keep traffic on loopback with it). */
  connectGuard?: (address: IpAddress, port: number) => boolean;
  /** Audit appends of egress events in flight; more are dropped and counted. @default 1024 */
  maxPendingAuditEvents?: number;
  /**
   * Builds the gateway instead of createEgressGateway: the privilege-separated worker drives
   * the supervisor's gateway through it (socketDir, resolver, limits and connectGuard then
   * belong to the supervisor). `sink` takes every event; `onDropped` records events lost
   * before they reached this process.
   */
  createGateway?: (hooks: {
    sink: EgressEventSink;
    onDropped: (count: number) => void;
  }) => EgressGateway;
}

export interface AppEgress {
  readonly gateway: EgressGateway;
  readonly networks: SandboxNetworks;
  readonly auditSink: EgressAuditSink;
}

export interface App {
  readonly fastify: FastifyInstance;
  readonly keys: KeyStore;
  readonly audit: AuditLog;
  readonly sandboxes: SandboxService;
  readonly execs: ExecService;
  readonly limiter: RateLimiter;
  readonly authThrottle: FailedAuthThrottle;
  /** The egress gateway and its audit bridge, when configured. The owner closes the gateway. */
  readonly egress: AppEgress | undefined;
  readonly kills: KillSwitch;
  readonly breaker: CircuitBreaker;
  readonly metrics: Metrics;
  /** Pending human approvals (policy "ask"). */
  readonly approvals: ApprovalService;
  /** WebSocket stream connections at /v1/ws. */
  readonly streams: StreamHub;
}

function requestId(): string {
  return `req_${randomBytes(12).toString('base64url')}`;
}

/** Principal of an authenticated route (the auth hook guarantees it). */
export function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw new PalisadeError('UNAUTHENTICATED', 'Missing or invalid API key.');
  return request.principal;
}

export function sendError(
  request: FastifyRequest,
  reply: FastifyReply,
  err: unknown,
): FastifyReply {
  const { status, body } = toErrorResponse(err, request.id);
  request.errorCode = body.code;
  if (status >= 500) request.log.error({ err }, 'request failed');
  if (
    status === 429 &&
    err instanceof PalisadeError &&
    typeof err.details?.retryAfterSeconds === 'number'
  ) {
    void reply.header('retry-after', String(err.details.retryAfterSeconds));
  }
  return reply.code(status).type('application/json; charset=utf-8').send(body);
}

/** Builds the Fastify app with every control and route; does not listen. */
export function buildApp(deps: AppDeps): App {
  const { config, store, runtime } = deps;
  const logger = pino(
    {
      level: config.logLevel,
      redact: {
        paths: [
          'req.headers.authorization',
          'req.headers.cookie',
          'headers.authorization',
          'key',
          '*.key',
          'secret',
          '*.secret',
          'env',
          '*.env',
          'body.env',
          'body.stdin',
        ],
        censor: '[redacted]',
      },
      serializers: { req: requestForLog },
    },
    config.logStream ?? pino.destination(2),
  );
  const fastify = Fastify({
    loggerInstance: logger,
    bodyLimit: config.bodyLimitBytes,
    genReqId: requestId,
    requestIdHeader: false,
    trustProxy: false,
    return503OnClosing: true,
    connectionTimeout: 0,
    // Bounds how long a client may take to send its request (slow-loris); responses such as
    // long execs and SSE streams are not limited by it.
    requestTimeout: 30_000,
    keepAliveTimeout: 10_000,
    routerOptions: { maxParamLength: 200 },
    // Malformed URLs and over-long ids are answered by the router before any hook runs; without
    // this they get Fastify's own error shape, echoing the whole path (001 #14, 004 L-1).
    frameworkErrors: (_err, request, reply) =>
      sendError(
        request,
        reply.headers(securityHeaders(Boolean(config.tls))).header('x-request-id', request.id),
        new PalisadeError(
          'INVALID_ARGUMENT',
          'The request path is malformed or one of its segments is longer than 200 characters; check the ids in the URL.',
        ),
      ),
    ...(config.tls ? { https: { cert: config.tls.cert, key: config.tls.key } } : {}),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  }) as unknown as FastifyInstance;

  const keys = new KeyStore(store.db);
  const audit = new AuditLog(store.db);
  const metrics = new Metrics();
  const kills = new KillSwitch({ db: store.db, audit });
  // onTrip runs only for refusals, after `sandboxes` is initialised.
  const breaker: CircuitBreaker = new CircuitBreaker({
    threshold: config.breakerThreshold,
    windowMs: config.breakerWindowMs,
    onTrip: (sandboxId, refusals, windowMs) => {
      const reason = `circuit breaker: ${refusals} denials in ${Math.round(windowMs / 1000)} s; needs a human`;
      void sandboxes
        .freeze(sandboxId, reason)
        .then((frozen) => {
          if (!frozen) return;
          metrics.breakerTrips.inc('trip');
          fastify.log.warn({ sandboxId, refusals }, 'circuit breaker froze a sandbox');
        })
        .catch((err: unknown) =>
          fastify.log.error({ err, sandboxId }, 'circuit breaker could not freeze a sandbox'),
        );
    },
  });
  let egress: AppEgress | undefined;
  if (deps.egress) {
    const auditSink = new EgressAuditSink({
      audit,
      // Events of a just-released sandbox can arrive after its entry is gone: ask the database.
      tenantOf: async (sandboxId) =>
        networks.tenantOf(sandboxId) ??
        (
          await store.db
            .selectFrom('sandboxes')
            .select('tenant')
            .where('id', '=', sandboxId)
            .executeTakeFirst()
        )?.tenant,
      ...(deps.egress.maxPendingAuditEvents !== undefined
        ? { maxPending: deps.egress.maxPendingAuditEvents }
        : {}),
    });
    const sink = observeEgress(auditSink, metrics, (id) => breaker.record(id, 'egress'));
    const gateway = deps.egress.createGateway
      ? deps.egress.createGateway({ sink, onDropped: (count) => auditSink.recordDropped(count) })
      : createEgressGateway({
          socketDir: deps.egress.socketDir,
          sink,
          ...(deps.egress.resolver ? { resolver: deps.egress.resolver } : {}),
          ...(deps.egress.limits ? { limits: deps.egress.limits } : {}),
          ...(deps.egress.connectGuard ? { connectGuard: deps.egress.connectGuard } : {}),
        });
    // tenantOf runs only for gateway events, after `networks` is initialised.
    const networks: SandboxNetworks = new SandboxNetworks({
      gateway,
      upperLayers: deps.policyLayers ?? [],
    });
    egress = { gateway, networks, auditSink };
  }
  const approvals = new ApprovalService({ audit, config: config.approvals });
  const streams = new StreamHub(config.ws);
  const execs = new ExecService({
    runtime: instrumentRuntime(runtime, metrics),
    audit,
    config: config.exec,
    approvals,
    onEvent: (event) => streams.publishExec(event),
    policyFor: (sandboxId) => {
      const policy = sandboxes.policyFor(sandboxId);
      return policy ? observePolicy(policy, metrics) : undefined;
    },
  });
  // policyFor runs only for requests, after `sandboxes` is initialised.
  const sandboxes: SandboxService = new SandboxService({
    runtime,
    policyLayers: deps.policyLayers ?? [],
    ...(deps.basePolicy ? { basePolicy: deps.basePolicy } : {}),
    ...(deps.operatorPolicy ? { operatorPolicy: deps.operatorPolicy } : {}),
    ...(egress ? { networks: egress.networks } : {}),
    db: store.db,
    audit,
    execs,
    guard: kills,
    quotas: config.quotas,
    defaultTimeoutMs: config.defaultSandboxTimeoutMs,
    maxTimeoutMs: config.maxSandboxTimeoutMs,
  });
  const limiter = new RateLimiter({
    ...(config.rateLimits.perKey ? { perKey: config.rateLimits.perKey } : {}),
    ...(config.rateLimits.global ? { global: config.rateLimits.global } : {}),
  });
  const authThrottle = new FailedAuthThrottle(config.authThrottle);
  const headers = securityHeaders(Boolean(config.tls));
  const corsOrigins = new Set(config.corsOrigins);
  const routes: RouteDoc[] = [];

  fastify.server.maxConnections = config.maxConnections;
  fastify.decorateRequest('principal', null);
  fastify.decorateRequest('errorCode', null);
  fastify.removeContentTypeParser('text/plain');

  fastify.addHook('onRoute', (route) => {
    const access = (route.config as { access?: RouteAccess } | undefined)?.access;
    // onRequest lets a route without `access` through unauthenticated (that is how 404s pass),
    // so a route that forgot to declare its access must never be registered (004 H-1).
    if (!access) {
      throw new PalisadeError(
        'INTERNAL',
        `Route ${String(route.method)} ${route.url} declares no access (config.access); every route must.`,
      );
    }
    if (route.method === 'HEAD') return;
    routes.push({
      method: String(route.method),
      url: route.url,
      summary: access.summary,
      scope: access.scope,
      schema: (route.schema ?? {}) as Record<string, unknown>,
    });
  });

  fastify.addHook('onRequest', async (request, reply) => {
    void reply.headers(headers);
    void reply.header('x-request-id', request.id);
    const origin = request.headers.origin;
    const corsAllowed = typeof origin === 'string' && corsOrigins.has(origin);
    if (corsAllowed) {
      void reply.header('access-control-allow-origin', origin);
      void reply.header('vary', 'Origin');
      void reply.header(
        'access-control-expose-headers',
        'X-Request-ID, Retry-After, Content-Range, Content-Disposition, Accept-Ranges',
      );
    }
    if (request.method === 'OPTIONS') {
      if (corsAllowed) {
        void reply.header('access-control-allow-methods', 'GET, POST, PUT, DELETE, OPTIONS');
        void reply.header(
          'access-control-allow-headers',
          'Authorization, Content-Type, Accept, Range',
        );
        void reply.header('access-control-max-age', '600');
      }
      return reply.code(204).send();
    }
    const access = request.routeOptions.config.access;
    if (!access || access.scope === 'public') return;
    if (
      access.loopbackWhenConfigured &&
      config.metricsLoopback &&
      isLoopbackPeer(request.socket.remoteAddress)
    )
      return;
    const client = request.ip;
    const wait = authThrottle.retryAfterSeconds(client);
    if (wait > 0) {
      metrics.rateLimitHits.inc('auth_throttle');
      return sendError(
        request,
        reply,
        new PalisadeError(
          'RATE_LIMITED',
          `Too many failed authentication attempts; retry after ${wait} s.`,
          {
            retryAfterSeconds: wait,
          },
        ),
      );
    }
    let principal: Principal;
    try {
      principal = await keys.authenticate(request.headers.authorization);
    } catch (err) {
      authThrottle.recordFailure(client);
      await audit
        .append({
          type: 'auth.failure',
          actor: null,
          data: { client, method: request.method, route: request.routeOptions.url ?? null },
        })
        .catch(() => undefined);
      return sendError(request, reply, err);
    }
    const decision = limiter.take(principal.keyId, access.category);
    if (!decision.allowed) {
      metrics.rateLimitHits.inc(access.category);
      return sendError(
        request,
        reply,
        new PalisadeError(
          'RATE_LIMITED',
          `Rate limit reached for ${access.category} requests (${decision.scope === 'key' ? 'this key' : 'whole server'}); retry after ${decision.retryAfterSeconds} s.`,
          { retryAfterSeconds: decision.retryAfterSeconds, category: access.category },
        ),
      );
    }
    if (access.scope !== 'authenticated' && !hasScope(principal.scopes, access.scope)) {
      return sendError(
        request,
        reply,
        new PalisadeError(
          'FORBIDDEN',
          `This API key lacks the '${access.scope}' scope needed here.`,
          {
            requiredScope: access.scope,
          },
        ),
      );
    }
    const restricted = restrictionError(
      principal,
      request.method,
      request.routeOptions.url ?? '',
      request.params,
    );
    if (restricted) return sendError(request, reply, restricted);
    request.principal = principal;
  });

  // Hooks may be skipped for errors raised before routing; onSend runs for every reply.
  fastify.addHook('onSend', async (request, reply, payload) => {
    for (const [name, value] of Object.entries(headers))
      if (!reply.hasHeader(name)) void reply.header(name, value);
    if (!reply.hasHeader('x-request-id')) void reply.header('x-request-id', request.id);
    return payload;
  });

  // Every policy refusal of a sandbox action (exec, streamed exec, file action) is answered
  // through sendError before anything runs; each one counts towards the circuit breaker.
  fastify.addHook('onSend', async (request, _reply, payload) => {
    if (request.errorCode !== 'POLICY_DENIED') return payload;
    const id = (request.params as { id?: unknown } | undefined)?.id;
    if (
      typeof id !== 'string' ||
      !(request.routeOptions.url ?? '').startsWith('/v1/sandboxes/:id/')
    )
      return payload;
    // Exec decisions are counted where the exec service asks the policy; file actions here.
    if ((request.routeOptions.url ?? '').startsWith('/v1/sandboxes/:id/files'))
      metrics.policyDecisions.inc('deny');
    breaker.record(id, 'policy');
    return payload;
  });

  fastify.setErrorHandler((err, request, reply) => sendError(request, reply, err));
  fastify.setNotFoundHandler((request, reply) =>
    sendError(
      request,
      reply,
      new PalisadeError(
        'NOT_FOUND',
        `No route ${request.method} ${request.url.split('?')[0]!.slice(0, 200)}. See /v1/openapi.json.`,
      ),
    ),
  );

  let openApiDoc: Record<string, unknown> | undefined;
  fastify.get(
    '/v1/openapi.json',
    {
      config: { access: { scope: 'public', category: 'read', summary: 'This OpenAPI document' } },
      schema: { querystring: { type: 'object', additionalProperties: false, properties: {} } },
    },
    async () => (openApiDoc ??= buildOpenApi(routes, API_VERSION)),
  );
  fastify.get(
    '/healthz',
    {
      config: { access: { scope: 'public', category: 'read', summary: 'Liveness' } },
      schema: { querystring: { type: 'object', additionalProperties: false, properties: {} } },
    },
    async () => ({ ok: true }),
  );

  const app: App = {
    fastify,
    keys,
    audit,
    sandboxes,
    execs,
    limiter,
    authThrottle,
    egress,
    kills,
    breaker,
    metrics,
    approvals,
    streams,
  };
  registerAdminRoutes(app);
  registerSandboxRoutes(app, config);
  registerFileRoutes(app, config, runtime);
  registerKillRoutes(app, kills);
  registerOpsRoutes(app, { db: store.db, runtime, kills, metrics });
  registerMcpRoutes(app);
  registerApprovalRoutes(app, approvals, streams);
  const detachWebSockets = attachWebSockets({
    server: fastify.server,
    hub: streams,
    keys,
    limiter,
    authThrottle,
    audit,
    runtime,
    approvals,
    corsOrigins,
    tls: Boolean(config.tls),
    assertSandbox: async (principal, sandboxId) => {
      await sandboxes.get(principal, sandboxId);
    },
    clientOf: (req) => req.socket.remoteAddress ?? 'unknown',
    log: fastify.log,
  });
  // Upgraded sockets and waiting execs would keep the server from closing.
  fastify.addHook('preClose', async () => {
    detachWebSockets();
    streams.terminateAll();
    approvals.close();
  });
  return app;
}
