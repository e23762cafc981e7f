import { chmodSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { openStore, type Store } from '../store/index.js';
import type { SandboxRuntime } from '../sandbox/types.js';
import { buildApp, type App, type EgressOptions } from './app.js';
import { resolveConfig, type ServerConfig, type ServerConfigInput } from './config.js';
import { createPolicyEngine, type PolicyLayer } from '../policy/index.js';

export interface ControlPlane {
  readonly app: App;
  readonly config: ServerConfig;
  readonly store: Store;
  /** Base URL, e.g. http://127.0.0.1:7070 */
  readonly url: string;
  /** The admin key if this start created it (first start of the data directory), else undefined. */
  readonly adminKey: string | undefined;
  /** Stops listening; destroys live sandboxes unless `keepSandboxes`; closes the database. */
  close(options?: { keepSandboxes?: boolean }): Promise<void>;
}

export interface StartOptions {
  config: ServerConfigInput;
  /** The engine. The caller owns it (and closes it after the control plane). */
  runtime: SandboxRuntime;
  /**
   * Operator (and tenant) permission policy layers. Omitted: execs are not policy-checked,
   * except in sandboxes created with their own policy layer.
   */
  policyLayers?: PolicyLayer[];
  /**
   * Egress gateway settings (the gateway itself always runs; its sockets live in
   * `<dataDir>/egress`). Tests inject a resolver and a connect guard here.
   */
  egress?: Omit<EgressOptions, 'socketDir'>;
  /**
   * false: run without the egress gateway (sandbox network sections are refused). The
   * privilege-separated worker uses this: it cannot chown proxy sockets. @default true
   */
  egressGateway?: boolean;
}

/**
 * Opens the database, creates the admin key on first start, reconciles sandboxes the database
 * thinks are live with the (fresh) engine, starts the expiry/retention reaper and listens.
 */
export async function startControlPlane(options: StartOptions): Promise<ControlPlane> {
  const config = resolveConfig(options.config);
  const policyLayers = options.policyLayers ?? [];
  const basePolicy =
    policyLayers.length > 0 ? await createPolicyEngine({ layers: policyLayers }) : undefined;
  const store = await openStore({ dataDir: config.dataDir });
  // Traversable but not listable: the engine's state usually lives below the data directory and
  // sandbox uids must reach it; the database files themselves are owner-only (0600).
  // A privilege-separated worker does not own the data directory; the supervisor set its mode.
  const uid = process.getuid?.();
  if (uid === 0 || statSync(config.dataDir).uid === uid) chmodSync(config.dataDir, 0o711);
  const egressDir = join(config.dataDir, 'egress');
  clearStaleEgressSockets(egressDir);
  let app: App | undefined;
  try {
    app = buildApp({
      config,
      store,
      runtime: options.runtime,
      policyLayers,
      ...(basePolicy ? { basePolicy } : {}),
      ...(options.egressGateway === false
        ? {}
        : { egress: { ...options.egress, socketDir: egressDir } }),
    });
    // Fail closed: a server that cannot read its kill switches must not serve.
    await app.kills.ready();
    const adminKey = await app.keys.ensureAdminKey();
    if (adminKey) {
      await app.audit.append({
        type: 'key.create',
        tenant: 'default',
        actor: 'system',
        data: { admin: true, firstStart: true },
      });
    }
    const lost = await app.sandboxes.reconcile();
    await app.audit.append({
      type: 'server.start',
      actor: 'system',
      data: { lostSandboxes: lost },
    });
    const started = app;
    let reaping = false;
    const reaper = setInterval(() => {
      if (reaping) return;
      reaping = true;
      started.execs.sweep();
      started.approvals.sweep();
      void started.sandboxes
        .reap(config.retentionMs)
        .catch((err: unknown) => started.fastify.log.error({ err }, 'reaper failed'))
        .finally(() => {
          reaping = false;
        });
    }, config.reaperIntervalMs);
    reaper.unref();
    const address = await app.fastify.listen({ host: config.host, port: config.port });
    const url = address.replace('[::]', '[::1]');
    let closed = false;
    return {
      app,
      config,
      store,
      url,
      adminKey,
      async close(closeOptions = {}) {
        if (closed) return;
        closed = true;
        clearInterval(reaper);
        await started.fastify.close();
        if (!closeOptions.keepSandboxes) await started.sandboxes.shutdown();
        await started.sandboxes.settle();
        started.sandboxes.close();
        // Detaching cuts any connection still open; its final events are audited before the
        // database closes.
        await started.egress?.gateway.close().catch(() => undefined);
        await started.egress?.auditSink.flush();
        await started.audit.append({ type: 'server.stop', actor: 'system' }).catch(() => undefined);
        await store.close();
      },
    };
  } catch (err) {
    if (app) await app.fastify.close().catch(() => undefined);
    await app?.egress?.gateway.close().catch(() => undefined);
    await store.close();
    throw err;
  }
}

const SANDBOX_DIR_RE = /^sb-[a-z2-7]{20}$/;

/**
 * A server killed without shutdown leaves its sandboxes' proxy socket directories behind. At
 * start nothing is attached yet, so every per-sandbox directory there is stale.
 */
function clearStaleEgressSockets(dir: string): void {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return;
  }
  for (const name of entries) {
    if (SANDBOX_DIR_RE.test(name)) rmSync(join(dir, name), { recursive: true, force: true });
  }
}
