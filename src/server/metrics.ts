/**
 * Prometheus metrics for the control plane. Every label value comes from a fixed, small set
 * (states, outcomes, decisions, rate categories), never from request data or sandbox ids, so
 * the number of series is bounded by construction.
 */
import type { EgressEvent, EgressEventSink } from '../egress/index.js';
import type { ExecHandle, ExecResult, SandboxRuntime, SandboxState } from '../sandbox/types.js';
import type { ExecPolicy, ExecPolicyDecision } from './policy-hook.js';

export type ExecOutcome =
  'success' | 'nonzero' | 'signal' | 'timeout' | 'interrupted' | 'start_failed' | 'denied';

/** Exec latency bucket upper bounds, in seconds. */
export const EXEC_LATENCY_BUCKETS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

class LabeledCounter {
  readonly #values = new Map<string, number>();
  inc(label: string, by = 1): void {
    this.#values.set(label, (this.#values.get(label) ?? 0) + by);
  }
  get(label: string): number {
    return this.#values.get(label) ?? 0;
  }
  entries(): Array<[string, number]> {
    return [...this.#values.entries()].sort(([a], [b]) => a.localeCompare(b));
  }
}

class Histogram {
  readonly #bounds: readonly number[];
  readonly #counts: number[];
  #sum = 0;
  #count = 0;
  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
    this.#counts = bounds.map(() => 0);
  }
  observe(value: number): void {
    this.#sum += value;
    this.#count++;
    const i = this.#bounds.findIndex((b) => value <= b);
    if (i >= 0) this.#counts[i]!++;
  }
  render(name: string): string[] {
    const lines: string[] = [];
    let cumulative = 0;
    this.#bounds.forEach((b, i) => {
      cumulative += this.#counts[i]!;
      lines.push(`${name}_bucket{le="${b}"} ${cumulative}`);
    });
    lines.push(`${name}_bucket{le="+Inf"} ${this.#count}`);
    lines.push(`${name}_sum ${this.#sum}`);
    lines.push(`${name}_count ${this.#count}`);
    return lines;
  }
}

/** Values read at scrape time (they live elsewhere: database, kill switch, breaker). */
export interface MetricsSnapshot {
  sandboxesByState: Partial<Record<SandboxState, number>>;
  flaggedSandboxes: number;
  killSwitchesActive: number;
}

const STATES: SandboxState[] = ['pending', 'running', 'paused', 'terminated', 'failed'];

export class Metrics {
  readonly execs = new LabeledCounter();
  readonly execLatency = new Histogram(EXEC_LATENCY_BUCKETS);
  readonly policyDecisions = new LabeledCounter();
  readonly egressDecisions = new LabeledCounter();
  readonly rateLimitHits = new LabeledCounter();
  readonly breakerTrips = new LabeledCounter();
  readonly kills = new LabeledCounter();
  /** Operator policy reloads by result (reloaded, unchanged, failed). */
  readonly policyReloads = new LabeledCounter();
  /** 1 while the policy file on disk could not be loaded (the previous policy is in force). */
  policyReloadFailing = 0;

  execEnded(outcome: ExecOutcome, durationMs?: number): void {
    this.execs.inc(outcome);
    if (durationMs !== undefined) this.execLatency.observe(durationMs / 1000);
  }

  /** Prometheus text exposition format 0.0.4. */
  render(snapshot: MetricsSnapshot): string {
    const out: string[] = [];
    const family = (name: string, type: string, help: string) =>
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    family('palisade_sandboxes', 'gauge', 'Sandboxes known to the control plane, by state.');
    for (const state of STATES)
      out.push(`palisade_sandboxes{state="${state}"} ${snapshot.sandboxesByState[state] ?? 0}`);
    family(
      'palisade_sandboxes_flagged',
      'gauge',
      'Live sandboxes frozen by the circuit breaker and waiting for a human.',
    );
    out.push(`palisade_sandboxes_flagged ${snapshot.flaggedSandboxes}`);
    family('palisade_execs_total', 'counter', 'Exec requests by outcome.');
    for (const [outcome, n] of this.execs.entries())
      out.push(`palisade_execs_total{outcome="${outcome}"} ${n}`);
    family(
      'palisade_exec_duration_seconds',
      'histogram',
      'Duration of execs that ran, from start to exit.',
    );
    out.push(...this.execLatency.render('palisade_exec_duration_seconds'));
    family('palisade_policy_decisions_total', 'counter', 'Permission policy decisions.');
    for (const [decision, n] of this.policyDecisions.entries())
      out.push(`palisade_policy_decisions_total{decision="${decision}"} ${n}`);
    family('palisade_egress_decisions_total', 'counter', 'Egress gateway decisions.');
    for (const [decision, n] of this.egressDecisions.entries())
      out.push(`palisade_egress_decisions_total{decision="${decision}"} ${n}`);
    family(
      'palisade_rate_limit_hits_total',
      'counter',
      'Requests refused by a rate limit, by category (auth_throttle: failed-authentication throttle).',
    );
    for (const [category, n] of this.rateLimitHits.entries())
      out.push(`palisade_rate_limit_hits_total{category="${category}"} ${n}`);
    family('palisade_kill_switches_active', 'gauge', 'Kill switches in force.');
    out.push(`palisade_kill_switches_active ${snapshot.killSwitchesActive}`);
    family('palisade_kill_switch_events_total', 'counter', 'Kill switch engagements and releases.');
    for (const [event, n] of this.kills.entries())
      out.push(`palisade_kill_switch_events_total{event="${event}"} ${n}`);
    family(
      'palisade_policy_reloads_total',
      'counter',
      'Operator policy file reloads by result (reloaded, unchanged, failed).',
    );
    for (const [result, n] of this.policyReloads.entries())
      out.push(`palisade_policy_reloads_total{result="${result}"} ${n}`);
    family(
      'palisade_policy_reload_failing',
      'gauge',
      '1 while the policy file cannot be loaded and the previous policy stays in force.',
    );
    out.push(`palisade_policy_reload_failing ${this.policyReloadFailing}`);
    family('palisade_breaker_trips_total', 'counter', 'Sandboxes frozen by the circuit breaker.');
    out.push(`palisade_breaker_trips_total ${this.breakerTrips.get('trip')}`);
    return `${out.join('\n')}\n`;
  }
}

function outcomeOf(result: ExecResult): ExecOutcome {
  if (result.timedOut) return 'timeout';
  if (result.interrupted) return 'interrupted';
  if (result.signal !== null) return 'signal';
  return result.exitCode === 0 ? 'success' : 'nonzero';
}

/**
 * The engine as the exec service sees it, with every exec counted by outcome and timed. All
 * other calls go straight through.
 */
export function instrumentRuntime(runtime: SandboxRuntime, metrics: Metrics): SandboxRuntime {
  const observe = (handle: ExecHandle): ExecHandle => {
    handle.done.then(
      (result) => metrics.execEnded(outcomeOf(result), result.durationMs),
      () => metrics.execEnded('start_failed'),
    );
    return handle;
  };
  return {
    get backend() {
      return runtime.backend;
    },
    create: (options) => runtime.create(options),
    exec: async (sandboxId, request) => {
      try {
        return observe(await runtime.exec(sandboxId, request));
      } catch (err) {
        metrics.execEnded('start_failed');
        throw err;
      }
    },
    run: async (sandboxId, request) => {
      const handle = observe(await runtime.exec(sandboxId, request));
      return handle.done;
    },
    destroy: (sandboxId, reason) => runtime.destroy(sandboxId, reason),
    pause: (sandboxId) => runtime.pause(sandboxId),
    resume: (sandboxId) => runtime.resume(sandboxId),
    stats: (sandboxId) => runtime.stats(sandboxId),
    get: (sandboxId) => runtime.get(sandboxId),
    list: () => runtime.list(),
    onStateChange: (listener) => runtime.onStateChange(listener),
    close: () => runtime.close(),
  };
}

/** Wraps a sandbox's exec policy so every decision is counted. */
export function observePolicy(policy: ExecPolicy, metrics: Metrics): ExecPolicy {
  return {
    async decide(action): Promise<ExecPolicyDecision> {
      const decision = await policy.decide(action);
      metrics.policyDecisions.inc(decision.decision);
      if (decision.decision === 'deny') metrics.execEnded('denied');
      return decision;
    },
  };
}

/** Passes every gateway event on to `next` after counting it and reporting refusals. */
export function observeEgress(
  next: EgressEventSink,
  metrics: Metrics,
  onDeny: (sandboxId: string) => void,
): EgressEventSink {
  return {
    emit(event: EgressEvent): void {
      metrics.egressDecisions.inc(event.decision);
      if (event.decision === 'deny') onDeny(event.sandboxId);
      next.emit(event);
    },
  };
}
