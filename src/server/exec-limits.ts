/**
 * Concurrency bounds of the exec API that keep one tenant (or one key) from using up what all
 * tenants share: the engine's running commands (in privilege-separated mode, the supervisor
 * connection's fixed number of exec streams) and the server's open event streams.
 */
import { PalisadeError } from '../errors/index.js';

export interface ExecConcurrencyLimits {
  /** Commands running at once per tenant, foreground and background. */
  maxRunningPerTenant: number;
  /** Commands running at once per API key, foreground and background. */
  maxRunningPerKey: number;
  /** Streamed execs (Accept: text/event-stream) open at once per API key. */
  maxStreamsPerKey: number;
}

/** Seconds suggested in Retry-After: a slot frees as soon as any of the caller's commands ends. */
const RETRY_AFTER_SECONDS = 1;

/** Counts per name; an entry exists only while its count is above zero (bounded by callers). */
class Counts {
  readonly #counts = new Map<string, number>();

  get(name: string): number {
    return this.#counts.get(name) ?? 0;
  }

  add(name: string): void {
    this.#counts.set(name, this.get(name) + 1);
  }

  remove(name: string): void {
    const next = this.get(name) - 1;
    if (next > 0) this.#counts.set(name, next);
    else this.#counts.delete(name);
  }
}

/**
 * Running-exec and stream slots per tenant and key. acquire*() takes a slot or throws 429
 * EXEC_LIMIT_REACHED naming the limit; the returned release is idempotent, so a caller can
 * call it from every exit path.
 */
export class ExecSlots {
  readonly #limits: ExecConcurrencyLimits;
  readonly #tenants = new Counts();
  readonly #keys = new Counts();
  readonly #streams = new Counts();

  constructor(limits: ExecConcurrencyLimits) {
    for (const [name, value] of Object.entries(limits)) {
      if (!Number.isSafeInteger(value) || value < 1) {
        throw new PalisadeError('INVALID_LIMIT', `exec.${name} must be a positive whole number.`);
      }
    }
    this.#limits = { ...limits };
  }

  runningForTenant(tenant: string): number {
    return this.#tenants.get(tenant);
  }

  runningForKey(keyId: string): number {
    return this.#keys.get(keyId);
  }

  streamsForKey(keyId: string): number {
    return this.#streams.get(keyId);
  }

  /** Takes a running-command slot of the caller's tenant and key (both, or neither). */
  acquireRunning(caller: { tenant: string; keyId: string }): () => void {
    const { maxRunningPerTenant, maxRunningPerKey } = this.#limits;
    const tenantRunning = this.#tenants.get(caller.tenant);
    if (tenantRunning >= maxRunningPerTenant) {
      throw limitError(
        `Tenant ${caller.tenant} already runs ${tenantRunning} commands at once (foreground and background), the most a tenant may (exec.maxRunningPerTenant = ${maxRunningPerTenant}). Wait for one to finish, or interrupt a background one (POST /v1/sandboxes/{id}/execs/{execId}/interrupt), then retry.`,
        { limit: 'exec.maxRunningPerTenant', max: maxRunningPerTenant, running: tenantRunning },
      );
    }
    const keyRunning = this.#keys.get(caller.keyId);
    if (keyRunning >= maxRunningPerKey) {
      throw limitError(
        `This API key already runs ${keyRunning} commands at once (foreground and background), the most one key may (exec.maxRunningPerKey = ${maxRunningPerKey}). Wait for one to finish, or interrupt a background one (POST /v1/sandboxes/{id}/execs/{execId}/interrupt), then retry.`,
        { limit: 'exec.maxRunningPerKey', max: maxRunningPerKey, running: keyRunning },
      );
    }
    this.#tenants.add(caller.tenant);
    this.#keys.add(caller.keyId);
    return once(() => {
      this.#tenants.remove(caller.tenant);
      this.#keys.remove(caller.keyId);
    });
  }

  /** Takes a streamed-exec slot of the caller's key. */
  acquireStream(caller: { keyId: string }): () => void {
    const { maxStreamsPerKey } = this.#limits;
    const open = this.#streams.get(caller.keyId);
    if (open >= maxStreamsPerKey) {
      throw limitError(
        `This API key already has ${open} streamed execs (Accept: text/event-stream) open, the most one key may (exec.maxStreamsPerKey = ${maxStreamsPerKey}). Wait for one to end, or run the command in the background (background: true) and read its logs.`,
        { limit: 'exec.maxStreamsPerKey', max: maxStreamsPerKey, open },
      );
    }
    this.#streams.add(caller.keyId);
    return once(() => this.#streams.remove(caller.keyId));
  }
}

function limitError(message: string, details: Record<string, unknown>): PalisadeError {
  return new PalisadeError('EXEC_LIMIT_REACHED', message, {
    ...details,
    retryAfterSeconds: RETRY_AFTER_SECONDS,
  });
}

function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    fn();
  };
}
