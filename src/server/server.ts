import { chmodSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { openStore, type Store } from '../store/index.js';
import type { SandboxRuntime } from '../sandbox/types.js';
import { buildApp, type App, type EgressOptions } from './app.js';
import { resolveConfig, type ServerConfig, type ServerConfigInput } from './config.js';
import type { PolicyLayer } from '../policy/index.js';
import {
  OperatorPolicy,
  withTenantVisibleSource,
  type PolicyReloadResult,
  type PolicyStatus,
} from './operator-policy.js';

export interface ControlPlane {
  readonly app: App;
  readonly config: ServerConfig;
  readonly store: Store;
  /** Base URL, e.g. http://127.0.0.1:7070 */
  readonly url: string;
  /** The admin key if this start created it (first start of the data directory), else undefined. */
  readonly adminKey: string | undefined;
  /**
   * Replaces the operator policy with new file content (or records that the file could not be
   * read): valid content takes effect for every later decision; invalid content is refused and
   * the old policy stays. Audited (policy.reload / policy.reload_failed), logged and counted.
   */
  reloadPolicy(input: {
    source: string;
    text?: string;
    error?: string;
  }): Promise<PolicyReloadResult>;
  /** The operator policy in force; undefined when serve runs without --policy. */
  policyStatus(): PolicyStatus | undefined;
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
  /** The operator policy file's text, so reloads can tell real changes by hash. */
  operatorPolicyText?: string;
  /**
   * Egress gateway settings (the gateway itself always runs; its sockets live in
   * `<dataDir>/egress`). Tests inject a resolver and a connect guard here.
   */
  egress?: Omit<EgressOptions, 'socketDir'>;
  /**
   * false: run without any egress gateway (sandbox network sections are refused with 400). No
   * shipped mode uses it: the privilege-separated worker keeps the gateway but passes
   * `egress.createGateway` (the supervisor's gateway over its socket, which runs as root and can
   * chown the proxy sockets). @default true
   */
  egressGateway?: boolean;
}

/**
 * Opens the database, creates the admin key on first start, reconciles sandboxes the database
 * thinks are live with the (fresh) engine, starts the expiry/retention reaper and listens.
 */
export async function startControlPlane(options: StartOptions): Promise<ControlPlane> {
  const config = resolveConfig(options.config);
  const policyLayers = (options.policyLayers ?? []).map(withTenantVisibleSource);
  const basePolicy =
    policyLayers.length > 0
      ? await OperatorPolicy.create(policyLayers, options.operatorPolicyText)
      : undefined;
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
      ...(basePolicy ? { basePolicy, operatorPolicy: basePolicy } : {}),
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
      async reloadPolicy(input) {
        if (!basePolicy) {
          return {
            status: 'failed',
            sha256: null,
            generation: 0,
            error: 'palisade serve was started without --policy; there is no policy to reload',
          };
        }
        const result = await basePolicy.reload(input);
        const { metrics, fastify, audit } = started;
        metrics.policyReloads.inc(result.status);
        metrics.policyReloadFailing = result.status === 'failed' ? 1 : 0;
        if (result.status === 'reloaded') {
          fastify.log.info({ source: input.source, sha256: result.sha256 }, 'policy reloaded');
          await audit.append({
            type: 'policy.reload',
            actor: 'system',
            data: { source: input.source, sha256: result.sha256, generation: result.generation },
          });
        } else if (result.status === 'failed') {
          fastify.log.error(
            { source: input.source, sha256: result.sha256, error: result.error },
            'policy reload refused; the previous policy stays in force',
          );
          await audit.append({
            type: 'policy.reload_failed',
            actor: 'system',
            data: { source: input.source, sha256: result.sha256, error: result.error },
          });
        } else {
          fastify.log.info({ source: input.source, sha256: result.sha256 }, 'policy unchanged');
        }
        return result;
      },
      policyStatus: () => basePolicy?.status(),
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
