/**
 * Sandbox network through the egress gateway: how a sandbox's own egress rules combine with
 * the operator's, the per-sandbox state the control plane keeps for live sandboxes, and the
 * bounded bridge from gateway events to the audit log.
 */
import type { AuditLog } from '../audit/index.js';
import type { EgressEvent, EgressEventSink, EgressGateway, EgressStats } from '../egress/index.js';
import { isPalisadeError, PalisadeError } from '../errors/index.js';
import {
  cidrContains,
  classifyIp,
  DEFAULT_EGRESS_PORTS,
  type EgressPolicy,
  type EgressRule,
  type PolicyLayer,
} from '../policy/index.js';
import type { NetworkProvider } from '../sandbox/types.js';

export interface EgressRulesText {
  allow: string[];
  deny: string[];
}

/** At most this many operator allow rules are quoted in an error message. */
const QUOTED_OPERATOR_RULES = 10;

function rulesText(policy: EgressPolicy): EgressRulesText {
  return { allow: policy.allow.map((r) => r.raw), deny: policy.deny.map((r) => r.raw) };
}

function portsOf(rule: EgressRule): readonly number[] {
  return rule.ports ?? DEFAULT_EGRESS_PORTS;
}

/**
 * Whether the destinations of `outer` (an operator allow rule) include every host `inner` (a
 * sandbox allow rule) can reach, ignoring ports. Conservative by design: when containment
 * cannot be shown exactly, the answer is no. In particular `*` never covers an IP or CIDR rule
 * (an IP/CIDR allow rule can unlock special addresses that `*` never reaches), except a single
 * public address.
 */
function hostCovers(outer: EgressRule, inner: EgressRule): boolean {
  switch (outer.kind) {
    case 'any':
      if (inner.kind === 'domain' || inner.kind === 'wildcard' || inner.kind === 'any') return true;
      return (
        inner.kind === 'ip' && inner.cidr !== undefined && !classifyIp(inner.cidr.address).special
      );
    case 'domain':
      return inner.kind === 'domain' && inner.host === outer.host;
    case 'wildcard': {
      if (outer.host === undefined || inner.host === undefined) return false;
      if (inner.kind === 'domain') return inner.host.endsWith(`.${outer.host}`);
      if (inner.kind === 'wildcard')
        return inner.host === outer.host || inner.host.endsWith(`.${outer.host}`);
      return false;
    }
    case 'ip':
    case 'cidr': {
      if (inner.kind !== 'ip' && inner.kind !== 'cidr') return false;
      const o = outer.cidr;
      const i = inner.cidr;
      if (o === undefined || i === undefined || o.address.family !== i.address.family) return false;
      return i.prefix >= o.prefix && cidrContains(o, i.address);
    }
  }
}

/** Whether the allow rules together permit every host and port `rule` permits. */
export function allowRuleCovered(rule: EgressRule, allows: readonly EgressRule[]): boolean {
  const ports = new Set<number>();
  for (const outer of allows) {
    if (hostCovers(outer, rule)) for (const p of portsOf(outer)) ports.add(p);
  }
  if (ports.size === 0) return false;
  return portsOf(rule).every((p) => ports.has(p));
}

/**
 * How the rules combine (documented in docs/api.md):
 * - every deny of every upper layer (operator) is in force for every sandbox, and is checked
 *   before any allow (the gateway's deny-first order), so an operator deny always wins;
 * - an upper layer that lists allow rules bounds the sandbox: each sandbox allow rule must lie
 *   within that layer's allow rules (checked here, refused with 400 otherwise), so the union of
 *   the sandbox's allows is inside every bounding layer's allows;
 * - upper allow rules never grant anything by themselves: a sandbox has exactly the network its
 *   own rules ask for, within those bounds.
 */
export class EgressRuleCombiner {
  readonly #upper: Array<{ name: string; policy: EgressPolicy }>;

  constructor(layers: readonly PolicyLayer[]) {
    this.#upper = layers.map((l) => ({ name: l.name, policy: l.network }));
  }

  /** The operator (upper-layer) rules, as text, for display. */
  upperRules(): EgressRulesText {
    return {
      allow: this.#upper.flatMap((u) => u.policy.allow.map((r) => r.raw)),
      deny: this.#upper.flatMap((u) => u.policy.deny.map((r) => r.raw)),
    };
  }

  /** Throws INVALID_POLICY naming the first sandbox allow rule outside an upper layer's allows. */
  assertWithinBounds(sandbox: EgressPolicy, field = 'network'): void {
    for (const upper of this.#upper) {
      if (upper.policy.allow.length === 0) continue;
      sandbox.allow.forEach((rule, index) => {
        if (allowRuleCovered(rule, upper.policy.allow)) return;
        const quoted = upper.policy.allow
          .slice(0, QUOTED_OPERATOR_RULES)
          .map((r) => JSON.stringify(r.raw))
          .join(', ');
        const more =
          upper.policy.allow.length > QUOTED_OPERATOR_RULES
            ? ` and ${upper.policy.allow.length - QUOTED_OPERATOR_RULES} more`
            : '';
        throw new PalisadeError(
          'INVALID_POLICY',
          `${field}.allow[${index}]: ${JSON.stringify(rule.raw)} is outside what the ${upper.name} policy allows (${quoted}${more}). ` +
            'A sandbox may only allow destinations and ports the operator allows: narrow the rule, or ask the operator to allow it. ' +
            'IP and CIDR rules must lie inside an operator IP/CIDR rule.',
          { field: `${field}.allow[${index}]`, layer: upper.name },
        );
      });
    }
  }

  /** The single policy the gateway enforces for a sandbox with these (already bounded) rules. */
  effective(sandbox: EgressPolicy): EgressPolicy {
    return {
      allow: [...sandbox.allow],
      deny: [...this.#upper.flatMap((u) => u.policy.deny), ...sandbox.deny],
    };
  }
}

interface LiveNetwork {
  tenant: string;
  rules: EgressPolicy;
  effective: EgressPolicy;
}

export interface NetworkView {
  sandboxId: string;
  /** False: the sandbox was created without a network section and has no network at all. */
  enabled: boolean;
  /** The sandbox layer's rules (what create or PUT set). */
  rules: EgressRulesText | null;
  /** The operator's rules that also apply (its denies always win; its allows bound the sandbox's). */
  operator: EgressRulesText;
  /** What the gateway enforces: the sandbox's allows; operator and sandbox denies. */
  effective: EgressRulesText | null;
  stats: EgressStats | null;
  recentDenials: EgressEvent[];
}

/**
 * The control plane's side of the egress gateway: one entry per live sandbox that has network
 * rules (bounded by the live-sandbox quota), removed when the sandbox's network is released.
 */
export class SandboxNetworks {
  readonly #gateway: EgressGateway;
  readonly #combiner: EgressRuleCombiner;
  readonly #live = new Map<string, LiveNetwork>();

  constructor(options: { gateway: EgressGateway; upperLayers: readonly PolicyLayer[] }) {
    this.#gateway = options.gateway;
    this.#combiner = new EgressRuleCombiner(options.upperLayers);
  }

  /** Validates a sandbox layer against the operator's bounds (throws INVALID_POLICY). */
  check(rules: EgressPolicy, field = 'network'): void {
    this.#combiner.assertWithinBounds(rules, field);
  }

  /** The engine's network hook for a new sandbox of `tenant` with these (checked) rules. */
  provider(tenant: string, rules: EgressPolicy): NetworkProvider {
    const effective = this.#combiner.effective(rules);
    return async (sandbox) => {
      const network = await this.#gateway.attach(sandbox.id, effective, {
        uid: sandbox.hostUid,
        gid: sandbox.hostGid,
      });
      this.#live.set(sandbox.id, { tenant, rules, effective });
      return { ...network, release: () => this.release(sandbox.id) };
    };
  }

  /** Detaches the sandbox from the gateway (idempotent: the engine and the server may both call it). */
  async release(sandboxId: string): Promise<void> {
    if (!this.#live.delete(sandboxId)) return;
    await this.#gateway.detach(sandboxId);
  }

  tenantOf(sandboxId: string): string | undefined {
    return this.#live.get(sandboxId)?.tenant;
  }

  has(sandboxId: string): boolean {
    return this.#live.has(sandboxId);
  }

  /**
   * Replaces the sandbox layer's rules live: new connections follow them, now-denied ones are
   * cut. Resolves once the gateway has them in force (in split mode: once the supervisor
   * confirmed); the rules shown by view() change only then. If the gateway refuses, the
   * previous rules stay in force and shown, and the refusal is thrown.
   */
  async update(sandboxId: string, rules: EgressPolicy): Promise<void> {
    const live = this.#live.get(sandboxId);
    if (!live) {
      throw new PalisadeError(
        'CONFLICT',
        `Sandbox ${sandboxId} has no network: it was created without a "network" section in its policy, and a network cannot be added to a running sandbox. Create a new sandbox with policy.network (an empty {"allow": []} gives a proxy that refuses everything until rules are set).`,
      );
    }
    this.#combiner.assertWithinBounds(rules, 'network');
    const effective = this.#combiner.effective(rules);
    try {
      await this.#gateway.updatePolicy(sandboxId, effective);
    } catch (err) {
      throw refusal(err);
    }
    // Released (sandbox ended) while the update was on its way: nothing to show any more.
    if (this.#live.get(sandboxId) === live) {
      this.#live.set(sandboxId, { ...live, rules, effective });
    }
  }

  view(sandboxId: string): NetworkView {
    const live = this.#live.get(sandboxId);
    let stats: EgressStats | null = null;
    let recentDenials: EgressEvent[] = [];
    try {
      stats = this.#gateway.stats(sandboxId);
      recentDenials = this.#gateway.recentDenials(sandboxId);
    } catch {
      // Never attached (no network), or detached long enough ago to be forgotten.
    }
    return {
      sandboxId,
      enabled: live !== undefined,
      rules: live ? rulesText(live.rules) : null,
      operator: this.#combiner.upperRules(),
      effective: live ? rulesText(live.effective) : null,
      stats,
      recentDenials,
    };
  }
}

/**
 * A gateway's refusal of new rules, said in the caller's terms. Errors written for callers
 * (4xx codes) keep their code and text; anything else stays as it is (the HTTP layer turns it
 * into a generic 500 with a request id).
 */
function refusal(err: unknown): unknown {
  if (!isPalisadeError(err) || !CALLER_CODES.has(err.code)) return err;
  return new PalisadeError(
    err.code,
    `The egress gateway refused the new network rules, so the previous rules stay in force: ${err.message}`,
    { ...err.details, previousRulesInForce: true },
    { cause: err },
  );
}

const CALLER_CODES = new Set<string>([
  'INVALID_POLICY',
  'INVALID_ARGUMENT',
  'CONFLICT',
  'SANDBOX_NOT_FOUND',
  'SANDBOX_NOT_RUNNING',
  'QUOTA_EXCEEDED',
]);

/**
 * Appends every gateway decision to the audit log (`egress.allow` / `egress.deny`). The gateway
 * emits synchronously and the log appends asynchronously, so appends in flight are bounded: past
 * `maxPending`, events are dropped and counted, and an `egress.dropped` record with the count is
 * written as soon as there is room again (or at flush), so the log shows the gap.
 */
export class EgressAuditSink implements EgressEventSink {
  readonly #audit: AuditLog;
  readonly #tenantOf: (sandboxId: string) => string | undefined | Promise<string | undefined>;
  readonly #maxPending: number;
  #pending = 0;
  #dropped = 0;
  #droppedTotal = 0;
  #writeErrors = 0;
  /** flush() callers waiting for the appends in flight to finish. */
  #waiters: Array<() => void> = [];

  constructor(options: {
    audit: AuditLog;
    tenantOf: (sandboxId: string) => string | undefined | Promise<string | undefined>;
    /** Audit appends in flight from the gateway; more events are dropped and counted. @default 1024 */
    maxPending?: number;
  }) {
    const maxPending = options.maxPending ?? 1024;
    if (!Number.isSafeInteger(maxPending) || maxPending < 1) {
      throw new PalisadeError('INVALID_LIMIT', 'maxPending must be a positive integer.');
    }
    this.#audit = options.audit;
    this.#tenantOf = options.tenantOf;
    this.#maxPending = maxPending;
  }

  get droppedTotal(): number {
    return this.#droppedTotal;
  }

  get writeErrors(): number {
    return this.#writeErrors;
  }

  get pending(): number {
    return this.#pending;
  }

  emit(event: EgressEvent): void {
    if (this.#pending >= this.#maxPending) {
      this.#dropped++;
      this.#droppedTotal++;
      return;
    }
    this.#track(this.#writeMarker());
    this.#track(this.#write(event));
  }

  /**
   * Events lost before they reached this sink (e.g. dropped by the privilege-separated
   * supervisor while the worker was behind): counted and recorded like the sink's own drops.
   */
  recordDropped(count: number): void {
    if (!Number.isSafeInteger(count) || count <= 0) return;
    this.#dropped += count;
    this.#droppedTotal += count;
    if (this.#pending < this.#maxPending) this.#track(this.#writeMarker());
  }

  /** Waits for appends in flight, then records any dropped events still uncounted. */
  async flush(): Promise<void> {
    await this.#whenIdle();
    this.#track(this.#writeMarker());
    await this.#whenIdle();
  }

  #whenIdle(): Promise<void> {
    if (this.#pending === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  #track(work: Promise<void> | undefined): void {
    if (!work) return;
    this.#pending++;
    void work
      .catch(() => {
        this.#writeErrors++;
      })
      .finally(() => {
        this.#pending--;
        if (this.#pending === 0) for (const wake of this.#waiters.splice(0)) wake();
      });
  }

  #writeMarker(): Promise<void> | undefined {
    if (this.#dropped === 0) return undefined;
    const count = this.#dropped;
    this.#dropped = 0;
    return this.#audit
      .append({
        type: 'egress.dropped',
        actor: 'system',
        data: {
          count,
          reason: `the audit log could not keep up with the egress gateway; ${count} egress events were not recorded`,
        },
      })
      .then(() => undefined);
  }

  async #write(event: EgressEvent): Promise<void> {
    const tenant = (await this.#tenantOf(event.sandboxId)) ?? null;
    await this.#audit.append({
      type: `egress.${event.decision}`,
      tenant,
      sandboxId: event.sandboxId,
      actor: 'system',
      data: {
        protocol: event.protocol,
        host: event.host,
        port: event.port,
        address: event.address,
        resolved: event.resolved.slice(0, 32),
        reason: event.reason,
        rule: event.rule,
        bytesIn: event.bytesIn,
        bytesOut: event.bytesOut,
        durationMs: event.durationMs,
        time: event.time,
      },
    });
  }
}
