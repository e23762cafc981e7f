/**
 * The operator's permission policy, replaceable while the server runs (policy hot-reload).
 * Every decision reads the engine in force at that moment; a reload builds the new engine
 * completely before one assignment swaps it in, so no decision ever sees half a policy.
 * A policy that does not parse, or that changes the `network` section (egress rules are fixed
 * into the gateway when a sandbox starts, so they change only with a restart), is refused and
 * the old policy stays.
 */
import { createHash } from 'node:crypto';
import { basename } from 'node:path';
import { PalisadeError } from '../errors/index.js';
import {
  createPolicyEngine,
  parsePolicy,
  type Action,
  type DecisionResult,
  type PolicyEngine,
  type PolicyLayer,
} from '../policy/index.js';
import type { ExecPolicy } from './policy-hook.js';

export type PolicyReloadResult =
  | { status: 'reloaded'; sha256: string; generation: number }
  | { status: 'unchanged'; sha256: string; generation: number }
  | { status: 'failed'; sha256: string | null; generation: number; error: string };

export interface PolicyStatus {
  source: string;
  sha256: string;
  generation: number;
  loadedAt: Date;
  /** The last reload attempt's error, until a later attempt succeeds or the file is reverted. */
  lastError: string | null;
}

/**
 * Decision explanations ("… (operator policy X)") reach tenants over HTTP and MCP; the operator's
 * file path on the host must not, so the operator layer (always a file) is named by its file
 * name only.
 */
export function withTenantVisibleSource(layer: PolicyLayer): PolicyLayer {
  return layer.name === 'operator' ? { ...layer, source: basename(layer.source) } : layer;
}

function sha256(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

export class OperatorPolicy implements ExecPolicy {
  #engine: PolicyEngine;
  #layers: PolicyLayer[];
  #status: PolicyStatus;
  /** Reloads run one at a time, in arrival order, so the last content always wins. */
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(engine: PolicyEngine, layers: PolicyLayer[], status: PolicyStatus) {
    this.#engine = engine;
    this.#layers = layers;
    this.#status = status;
  }

  static async create(layers: PolicyLayer[], text?: string): Promise<OperatorPolicy> {
    const engine = await createPolicyEngine({ layers });
    return new OperatorPolicy(engine, layers, {
      source: layers.map((l) => l.source).join(', '),
      sha256: text !== undefined ? sha256(text) : '',
      generation: 1,
      loadedAt: new Date(),
      lastError: null,
    });
  }

  /** Any policy action (exec and file tools alike), decided by the policy in force now. */
  decide(action: Action): DecisionResult {
    return this.#engine.decide(action);
  }

  /** The operator layers in force (sandboxes with their own layer build on these). */
  layers(): PolicyLayer[] {
    return this.#layers;
  }

  get generation(): number {
    return this.#status.generation;
  }

  status(): Readonly<PolicyStatus> {
    return { ...this.#status };
  }

  /** Replaces the policy with `text` (or records `error`, when the file could not be read). */
  reload(input: { source: string; text?: string; error?: string }): Promise<PolicyReloadResult> {
    const run = this.#queue.then(() => this.#reload(input));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #reload(input: {
    source: string;
    text?: string;
    error?: string;
  }): Promise<PolicyReloadResult> {
    const generation = this.#status.generation;
    if (input.text === undefined) {
      const error = input.error ?? 'no policy text';
      this.#status = { ...this.#status, lastError: error };
      return { status: 'failed', sha256: null, generation, error };
    }
    const hash = sha256(input.text);
    if (hash === this.#status.sha256) {
      this.#status = { ...this.#status, lastError: null };
      return { status: 'unchanged', sha256: hash, generation };
    }
    try {
      const layer = withTenantVisibleSource(parsePolicy(input.text, input.source, 'operator'));
      const old = this.#layers.find((l) => l.name === 'operator');
      if (old && JSON.stringify(old.network) !== JSON.stringify(layer.network)) {
        throw new PalisadeError(
          'INVALID_POLICY',
          `${input.source}: the "network" section changed; egress rules are applied when a sandbox starts and change only with a restart of palisade serve. The permissions were not reloaded either; restore the network section or restart.`,
        );
      }
      const layers = this.#layers.map((l) => (l.name === 'operator' ? layer : l));
      if (!old) layers.unshift(layer);
      const engine = await createPolicyEngine({ layers });
      // The swap: everything above can fail without touching the policy in force.
      this.#engine = engine;
      this.#layers = layers;
      this.#status = {
        source: input.source,
        sha256: hash,
        generation: generation + 1,
        loadedAt: new Date(),
        lastError: null,
      };
      return { status: 'reloaded', sha256: hash, generation: generation + 1 };
    } catch (err) {
      const error = err instanceof PalisadeError ? err.message : 'the policy could not be built';
      this.#status = { ...this.#status, lastError: error };
      return { status: 'failed', sha256: hash, generation, error };
    }
  }
}
