import { isIP } from 'node:net';
import { sql, type Kysely } from 'kysely';
import type { SandboxRuntime } from '../sandbox/types.js';
import type { Database } from '../store/schema.js';
import type { App } from './app.js';
import type { KillSwitch } from './kill-switch.js';
import type { Metrics } from './metrics.js';

const EMPTY_QUERY = { type: 'object', additionalProperties: false, properties: {} } as const;
/** A readiness check slower than this counts as failed (a probe must answer promptly). */
const CHECK_TIMEOUT_MS = 2000;

/** Whether a socket peer address is loopback (127.0.0.0/8, ::1, or v4-mapped 127.x). */
export function isLoopbackPeer(address: string | undefined): boolean {
  if (address === undefined) return false;
  if (address === '::1') return true;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return isIP(v4) === 4 && v4.startsWith('127.');
}

async function within<T>(work: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} did not answer within ${CHECK_TIMEOUT_MS} ms`)),
      CHECK_TIMEOUT_MS,
    );
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface Check {
  ok: boolean;
  /** Short, fixed text for the caller; details go to the server log. */
  reason?: string;
}

export interface OpsDeps {
  db: Kysely<Database>;
  runtime: SandboxRuntime;
  kills: KillSwitch;
  metrics: Metrics;
}

/** GET /readyz (public) and GET /metrics (metrics:read, or loopback when configured). */
export function registerOpsRoutes(app: App, deps: OpsDeps): void {
  const { fastify } = app;

  fastify.get(
    '/readyz',
    {
      config: {
        access: {
          scope: 'public',
          category: 'read',
          summary:
            'Readiness: 200 when the engine and the database are usable, else 503 naming what is not',
        },
      },
      schema: { querystring: EMPTY_QUERY },
    },
    async (request, reply) => {
      const checks: Record<string, Check> = {};
      const run = async (name: string, probe: () => Promise<unknown>, reason: string) => {
        try {
          await within(probe(), name);
          checks[name] = { ok: true };
        } catch (err) {
          request.log.warn({ err, check: name }, 'readiness check failed');
          checks[name] = { ok: false, reason };
        }
      };
      await Promise.all([
        run(
          'database',
          () => sql`select 1`.execute(deps.db),
          'the database does not answer queries; check the data directory (disk full, permissions)',
        ),
        run(
          'engine',
          async () => deps.runtime.list(),
          'the sandbox engine is not usable; run palisade doctor',
        ),
        run(
          'killSwitches',
          () => deps.kills.ready(),
          'the active kill switches could not be loaded from the database',
        ),
      ]);
      const failed = Object.entries(checks).filter(([, c]) => !c.ok);
      if (failed.length === 0) return { ready: true, checks };
      return reply
        .code(503)
        .type('application/json; charset=utf-8')
        .send({
          code: 'REQUIREMENT_MISSING',
          message: `Not ready: ${failed.map(([name, c]) => `${name}: ${c.reason}`).join('; ')}.`,
          requestId: request.id,
          ready: false,
          checks,
        });
    },
  );

  fastify.get(
    '/metrics',
    {
      config: {
        access: {
          scope: 'metrics:read',
          category: 'read',
          summary:
            'Prometheus metrics (text format 0.0.4); needs a key with metrics:read (or admin), or a loopback client when metricsLoopback is on',
          loopbackWhenConfigured: true,
        },
      },
      schema: { querystring: EMPTY_QUERY },
    },
    async (_request, reply) => {
      const counts = await app.sandboxes.counts();
      const body = deps.metrics.render({
        sandboxesByState: counts.byState,
        flaggedSandboxes: counts.flagged,
        killSwitchesActive: deps.kills.activeCount,
      });
      return reply.type('text/plain; version=0.0.4; charset=utf-8').send(body);
    },
  );
}
