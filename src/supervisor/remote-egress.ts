/**
 * The worker's view of the supervisor's egress gateway: an EgressGateway whose operations are
 * supervisor requests and whose stats and recent denials are mirrored from the events the
 * supervisor pushes. The control plane (SandboxNetworks, the audit sink, metrics, the circuit
 * breaker) uses it exactly like a local gateway.
 */
import type {
  EgressEvent,
  EgressEventSink,
  EgressGateway,
  EgressPolicy,
  EgressStats,
} from '../egress/index.js';
import { PalisadeError } from '../errors/index.js';
import type { SandboxNetwork } from '../sandbox/index.js';
import { MAX_FRAME_BYTES, type EgressRulesWire, type EgressStatsWire } from './protocol.js';

/** Room left in a frame for everything but the rules (type, ids, keys). */
const FRAME_HEADROOM_BYTES = 4096;

/** Same sizes as the local gateway: denials kept per sandbox, detached sandboxes remembered. */
const DENIAL_RING_SIZE = 100;
const DETACHED_HISTORY = 64;

export type EgressCall = (
  body:
    | { t: 'netPolicy'; sandboxId: string; policy: EgressRulesWire }
    | { t: 'netDetach'; sandboxId: string },
) => Promise<unknown>;

export interface RemoteEgressOptions {
  /** Receives every gateway event the supervisor forwards (audit, metrics, circuit breaker). */
  sink: EgressEventSink;
  /** Events the supervisor dropped because this worker was behind (to be recorded in the audit log). */
  onDropped?: (count: number) => void;
  /**
   * A live policy update the supervisor refused (for logging; the caller of updatePolicy gets
   * the error too). The supervisor applies rules all or nothing, so its previous rules stay in
   * force.
   */
  onUpdateFailed?: (sandboxId: string, err: unknown) => void;
}

interface Mirror {
  stats: EgressStats;
  denials: EgressEvent[];
}

/**
 * The rules as text, refused here if they would not fit in one frame: an oversize frame is a
 * protocol violation that would end the supervisor connection (and the server with it). Only a
 * very large operator policy plus a large sandbox policy can get there.
 */
function rulesToWire(policy: EgressPolicy): EgressRulesWire {
  const wire = { allow: policy.allow.map((r) => r.raw), deny: policy.deny.map((r) => r.raw) };
  const bytes = Buffer.byteLength(JSON.stringify(wire));
  if (bytes > MAX_FRAME_BYTES - FRAME_HEADROOM_BYTES) {
    throw new PalisadeError(
      'INVALID_POLICY',
      `The egress rules (with the operator's denies) are ${bytes} bytes, more than the ${MAX_FRAME_BYTES - FRAME_HEADROOM_BYTES} that can be handed to the supervisor; use fewer rules (wildcards, CIDRs, port ranges).`,
    );
  }
  return wire;
}

function notAttached(sandboxId: string): PalisadeError {
  return new PalisadeError(
    'SANDBOX_NOT_FOUND',
    `sandbox ${sandboxId.slice(0, 80)} is not attached to the egress gateway`,
  );
}

export class RemoteEgressGateway implements EgressGateway {
  readonly #call: EgressCall;
  readonly #options: RemoteEgressOptions;
  readonly #live = new Map<string, Mirror>();
  readonly #history = new Map<string, Mirror>();
  #closed = false;

  constructor(call: EgressCall, options: RemoteEgressOptions) {
    this.#call = call;
    this.#options = options;
  }

  /**
   * Sets the rules of a sandbox the supervisor attached at create (with everything refused).
   * The owner is ignored: the supervisor uses the engine's own identity for the sandbox.
   */
  async attach(sandboxId: string, policy: EgressPolicy): Promise<SandboxNetwork> {
    if (this.#closed) throw new PalisadeError('CONFLICT', 'the egress gateway is closed');
    if (this.#live.has(sandboxId)) {
      throw new PalisadeError(
        'CONFLICT',
        `sandbox ${sandboxId} is already attached to the egress gateway`,
      );
    }
    await this.#call({ t: 'netPolicy', sandboxId, policy: rulesToWire(policy) });
    this.#live.set(sandboxId, {
      stats: { activeConnections: 0, bytesIn: 0, bytesOut: 0, denied: 0 },
      denials: [],
    });
    this.#history.delete(sandboxId);
    // The supervisor's engine mounted the bridge; nothing for the caller to mount.
    return { bridges: [] };
  }

  /**
   * Sends the new rules and resolves once the supervisor applied them. A refusal (an answer
   * with an error) rejects with the supervisor's error: the supervisor checks everything before
   * it changes anything, so its previous rules stay in force and the caller keeps showing them.
   * A lost connection also rejects; the worker then exits and the supervisor destroys every
   * sandbox (docs/supervisor.md, Lifecycle), so no sandbox outlives an unknown rule state.
   */
  async updatePolicy(sandboxId: string, policy: EgressPolicy): Promise<void> {
    if (!this.#live.has(sandboxId)) throw notAttached(sandboxId);
    const wire = rulesToWire(policy);
    try {
      await this.#call({ t: 'netPolicy', sandboxId, policy: wire });
    } catch (err) {
      try {
        this.#options.onUpdateFailed?.(sandboxId, err);
      } catch {
        // logging only
      }
      throw err;
    }
  }

  async detach(sandboxId: string): Promise<void> {
    const mirror = this.#live.get(sandboxId);
    if (mirror === undefined) throw notAttached(sandboxId);
    this.#live.delete(sandboxId);
    this.#history.set(sandboxId, mirror);
    if (this.#history.size > DETACHED_HISTORY) {
      const oldest = this.#history.keys().next();
      if (oldest.done !== true) this.#history.delete(oldest.value);
    }
    await this.#call({ t: 'netDetach', sandboxId });
    mirror.stats = { ...mirror.stats, activeConnections: 0 };
  }

  stats(sandboxId: string): EgressStats {
    const mirror = this.#live.get(sandboxId) ?? this.#history.get(sandboxId);
    if (mirror === undefined) throw notAttached(sandboxId);
    return { ...mirror.stats };
  }

  recentDenials(sandboxId: string): EgressEvent[] {
    const mirror = this.#live.get(sandboxId) ?? this.#history.get(sandboxId);
    if (mirror === undefined) throw notAttached(sandboxId);
    return [...mirror.denials];
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#live.keys()].map((id) => this.detach(id).catch(() => undefined)));
  }

  /** A gateway decision forwarded by the supervisor. */
  onEvent(event: EgressEvent, stats: EgressStatsWire | null): void {
    const mirror = this.#live.get(event.sandboxId) ?? this.#history.get(event.sandboxId);
    if (mirror !== undefined) {
      if (stats !== null) mirror.stats = { ...stats };
      if (event.decision === 'deny') {
        mirror.denials.push(event);
        if (mirror.denials.length > DENIAL_RING_SIZE) mirror.denials.shift();
      }
    }
    try {
      this.#options.sink.emit(event);
    } catch {
      // A failing sink must not break the supervisor connection; the sink reports its own errors.
    }
  }

  onStats(sandboxId: string, stats: EgressStatsWire): void {
    const mirror = this.#live.get(sandboxId);
    if (mirror !== undefined) mirror.stats = { ...stats };
  }

  onDropped(count: number): void {
    try {
      this.#options.onDropped?.(count);
    } catch {
      // as above
    }
  }
}
