import { LruMap } from './lru.js';

/** create ≪ exec ≪ read: creating sandboxes is the most expensive thing a caller can do. */
export type RateCategory = 'create' | 'exec' | 'write' | 'read';

export interface BucketSpec {
  /** Requests allowed in a burst. */
  burst: number;
  /** Sustained requests per second. */
  perSecond: number;
}

export type RateLimitConfig = Record<RateCategory, BucketSpec>;

export const DEFAULT_KEY_LIMITS: RateLimitConfig = {
  create: { burst: 20, perSecond: 2 },
  exec: { burst: 120, perSecond: 20 },
  write: { burst: 120, perSecond: 20 },
  read: { burst: 600, perSecond: 100 },
};

export const DEFAULT_GLOBAL_LIMITS: RateLimitConfig = {
  create: { burst: 100, perSecond: 10 },
  exec: { burst: 600, perSecond: 100 },
  write: { burst: 600, perSecond: 100 },
  read: { burst: 3000, perSecond: 500 },
};

interface Bucket {
  tokens: number;
  updatedMs: number;
}

export type RateDecision =
  { allowed: true } | { allowed: false; retryAfterSeconds: number; scope: 'key' | 'global' };

/**
 * Token buckets per (key, category) plus one global bucket per category. The per-key map is
 * an LRU with a hard bound; an evicted bucket comes back full, which the global bucket caps.
 */
export class RateLimiter {
  readonly #perKey: RateLimitConfig;
  readonly #global: RateLimitConfig;
  readonly #keyBuckets: LruMap<string, Bucket>;
  readonly #globalBuckets = new Map<RateCategory, Bucket>();
  readonly #now: () => number;

  constructor(
    options: {
      perKey?: RateLimitConfig;
      global?: RateLimitConfig;
      maxTrackedKeys?: number;
      now?: () => number;
    } = {},
  ) {
    this.#perKey = options.perKey ?? DEFAULT_KEY_LIMITS;
    this.#global = options.global ?? DEFAULT_GLOBAL_LIMITS;
    this.#keyBuckets = new LruMap(options.maxTrackedKeys ?? 10000);
    this.#now = options.now ?? Date.now;
  }

  get trackedKeys(): number {
    return this.#keyBuckets.size;
  }

  take(keyId: string, category: RateCategory): RateDecision {
    const now = this.#now();
    const globalSpec = this.#global[category];
    const globalBucket = this.#globalBuckets.get(category) ?? {
      tokens: globalSpec.burst,
      updatedMs: now,
    };
    this.#globalBuckets.set(category, globalBucket);
    const mapKey = `${keyId}\u0000${category}`;
    const keySpec = this.#perKey[category];
    let keyBucket = this.#keyBuckets.get(mapKey);
    if (!keyBucket) {
      keyBucket = { tokens: keySpec.burst, updatedMs: now };
      this.#keyBuckets.set(mapKey, keyBucket);
    }
    refill(keyBucket, keySpec, now);
    refill(globalBucket, globalSpec, now);
    if (keyBucket.tokens < 1)
      return { allowed: false, retryAfterSeconds: waitSeconds(keyBucket, keySpec), scope: 'key' };
    if (globalBucket.tokens < 1) {
      return {
        allowed: false,
        retryAfterSeconds: waitSeconds(globalBucket, globalSpec),
        scope: 'global',
      };
    }
    keyBucket.tokens -= 1;
    globalBucket.tokens -= 1;
    return { allowed: true };
  }
}

function refill(bucket: Bucket, spec: BucketSpec, now: number): void {
  const elapsed = Math.max(0, now - bucket.updatedMs) / 1000;
  bucket.tokens = Math.min(spec.burst, bucket.tokens + elapsed * spec.perSecond);
  bucket.updatedMs = now;
}

function waitSeconds(bucket: Bucket, spec: BucketSpec): number {
  if (spec.perSecond <= 0) return 3600;
  return Math.max(1, Math.ceil((1 - bucket.tokens) / spec.perSecond));
}

export interface AuthThrottleOptions {
  /** Failures allowed per client in one window. @default 10 */
  maxFailures?: number;
  /** @default 60 s */
  windowMs?: number;
  /** @default 10000 */
  maxTrackedClients?: number;
  now?: () => number;
}

interface FailureWindow {
  startMs: number;
  failures: number;
}

/**
 * Slows down key guessing: a client (IPv4 address, or IPv6 /64) with too many failed
 * authentications in a window is refused until the window ends, before its key is checked.
 */
export class FailedAuthThrottle {
  readonly #clients: LruMap<string, FailureWindow>;
  readonly #maxFailures: number;
  readonly #windowMs: number;
  readonly #now: () => number;

  constructor(options: AuthThrottleOptions = {}) {
    this.#maxFailures = options.maxFailures ?? 10;
    this.#windowMs = options.windowMs ?? 60_000;
    this.#clients = new LruMap(options.maxTrackedClients ?? 10000);
    this.#now = options.now ?? Date.now;
  }

  get trackedClients(): number {
    return this.#clients.size;
  }

  /** Seconds the client must wait, or 0 if it may try. */
  retryAfterSeconds(client: string): number {
    const entry = this.#clients.get(clientKey(client));
    if (!entry) return 0;
    const now = this.#now();
    if (now - entry.startMs >= this.#windowMs) return 0;
    if (entry.failures < this.#maxFailures) return 0;
    return Math.max(1, Math.ceil((entry.startMs + this.#windowMs - now) / 1000));
  }

  recordFailure(client: string): void {
    const key = clientKey(client);
    const now = this.#now();
    const entry = this.#clients.get(key);
    if (!entry || now - entry.startMs >= this.#windowMs)
      this.#clients.set(key, { startMs: now, failures: 1 });
    else entry.failures++;
  }
}

function clientKey(address: string): string {
  const v4mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (v4mapped) return v4mapped[1]!;
  if (!address.includes(':')) return address;
  // One IPv6 host usually owns a whole /64, so count per /64.
  const [head] = address.split('::');
  const groups = (head ?? '').split(':').filter((g) => g.length > 0);
  return `${groups.slice(0, 4).join(':')}::/64`;
}
