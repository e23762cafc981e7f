/**
 * Circuit breaker: a sandbox that is refused (policy denials, egress refusals) more than
 * `threshold` times within a sliding window is handed to `onTrip` once, which freezes it and
 * flags it for a human. State is bounded: at most `maxTracked` sandboxes are tracked (least
 * recently refused evicted first) and each keeps at most `threshold + 1` timestamps.
 */
import { LruMap } from '../auth/index.js';
import { PalisadeError } from '../errors/index.js';

export type RefusalKind = 'policy' | 'egress';

export interface BreakerOptions {
  /** Refusals allowed per window; one more trips the breaker. */
  threshold: number;
  /** @default 60 000 ms */
  windowMs?: number;
  /** @default 4096 */
  maxTracked?: number;
  onTrip: (sandboxId: string, refusals: number, windowMs: number) => void;
  now?: () => number;
}

export class CircuitBreaker {
  readonly threshold: number;
  readonly windowMs: number;
  readonly #onTrip: BreakerOptions['onTrip'];
  readonly #now: () => number;
  /** Sorted refusal times per sandbox within the window. */
  readonly #recent: LruMap<string, number[]>;

  constructor(options: BreakerOptions) {
    const windowMs = options.windowMs ?? 60_000;
    const maxTracked = options.maxTracked ?? 4096;
    if (!Number.isSafeInteger(options.threshold) || options.threshold < 1)
      throw new PalisadeError('INVALID_LIMIT', 'The breaker threshold must be a positive integer.');
    if (!Number.isSafeInteger(windowMs) || windowMs < 1000)
      throw new PalisadeError('INVALID_LIMIT', 'The breaker window must be at least 1000 ms.');
    if (!Number.isSafeInteger(maxTracked) || maxTracked < 1)
      throw new PalisadeError('INVALID_LIMIT', 'maxTracked must be a positive integer.');
    this.threshold = options.threshold;
    this.windowMs = windowMs;
    this.#onTrip = options.onTrip;
    this.#now = options.now ?? Date.now;
    this.#recent = new LruMap(maxTracked);
  }

  get tracked(): number {
    return this.#recent.size;
  }

  /** Counts one refusal; trips (and forgets the sandbox's count) past the threshold. */
  record(sandboxId: string, _kind: RefusalKind): void {
    const now = this.#now();
    const times = (this.#recent.get(sandboxId) ?? []).filter((t) => now - t < this.windowMs);
    times.push(now);
    if (times.length > this.threshold + 1) times.splice(0, times.length - this.threshold - 1);
    if (times.length > this.threshold) {
      this.#recent.delete(sandboxId);
      this.#onTrip(sandboxId, times.length, this.windowMs);
      return;
    }
    this.#recent.set(sandboxId, times);
  }

  /** Drops a sandbox's count (it ended, or a human cleared it). */
  forget(sandboxId: string): void {
    this.#recent.delete(sandboxId);
  }
}
