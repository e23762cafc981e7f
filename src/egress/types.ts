import type { EgressPolicy, IpAddress } from '../policy/network/index.js';
import type { SandboxNetwork } from '../sandbox/types.js';

/** Resolves a host name to addresses on the host. Injected in tests; the default uses node:dns. */
export interface Resolver {
  resolve(host: string, signal?: AbortSignal): Promise<IpAddress[]>;
}

/**
 * One decision of the gateway. Refused connections produce one event at refusal time; allowed
 * connections produce one event when they end, carrying the bytes moved and how they ended.
 * A connection the gateway cuts (policy change, byte quota, SNI mismatch) is reported as 'deny'.
 */
export interface EgressEvent {
  time: string;
  sandboxId: string;
  protocol: 'http' | 'connect' | 'socks5';
  host: string;
  port: number;
  /** Every address the name resolved to (or the literal itself). */
  resolved: string[];
  /** The vetted address the gateway connected to (pinned), or null if it never connected. */
  address: string | null;
  decision: 'allow' | 'deny';
  reason: string;
  /** The raw text of the rule that decided, if any. */
  rule: string | null;
  /** Bytes from the upstream to the sandbox. */
  bytesIn: number;
  /** Bytes from the sandbox to the upstream. */
  bytesOut: number;
  durationMs: number;
}

export interface EgressEventSink {
  emit(event: EgressEvent): void;
}

export interface GatewayLimits {
  /** Concurrent connections per sandbox (including ones still being negotiated). */
  maxConnectionsPerSandbox: number;
  /** Total bytes upstream → sandbox over the sandbox's lifetime (quota). */
  maxBytesInPerSandbox: number;
  /** Total bytes sandbox → upstream over the sandbox's lifetime (quota). */
  maxBytesOutPerSandbox: number;
  /** Name resolution plus TCP connect to the upstream. */
  connectTimeoutMs: number;
  /** A connection with no traffic either way for this long is closed; also bounds how long a client may take to send its request. */
  idleTimeoutMs: number;
  /** Largest HTTP request head (request line + headers) accepted. */
  maxHeaderBytes: number;
}

export interface EgressGatewayOptions {
  /** Directory for the per-sandbox unix sockets; created 0700 if missing, and must be owned by this process's user. */
  socketDir: string;
  resolver?: Resolver;
  sink?: EgressEventSink;
  limits?: Partial<GatewayLimits>;
  /**
   * A last veto, consulted with the exact address right before every upstream connect, after
   * the policy allowed it (e.g. an operator's hard block-list). Returning false refuses the
   * connection. Tests use it as a safety net that keeps traffic on loopback even if the
   * gateway were broken.
   */
  connectGuard?: (address: IpAddress, port: number) => boolean;
}

export interface EgressStats {
  activeConnections: number;
  bytesIn: number;
  bytesOut: number;
  denied: number;
}

export interface EgressGateway {
  /** Starts serving a sandbox; returns the network hook to pass to the sandbox engine. */
  attach(
    sandboxId: string,
    policy: EgressPolicy,
    owner: { uid: number; gid: number },
  ): Promise<SandboxNetwork>;
  /**
   * New connections follow the new policy; open connections to now-denied destinations are
   * closed. All or nothing: if it throws (or its promise rejects), the previous policy stays in
   * force. A gateway in another process returns a promise that settles once it applied them.
   */
  updatePolicy(sandboxId: string, policy: EgressPolicy): void | Promise<void>;
  /** Closes the sandbox's listener and every connection, and removes its socket. */
  detach(sandboxId: string): Promise<void>;
  stats(sandboxId: string): EgressStats;
  /** Recent denials for a sandbox (bounded ring), oldest first. */
  recentDenials(sandboxId: string): EgressEvent[];
  close(): Promise<void>;
}
