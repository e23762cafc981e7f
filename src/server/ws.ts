import { randomBytes } from 'node:crypto';
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import type { AuditLog } from '../audit/index.js';
import {
  hasScope,
  restrictionError,
  type FailedAuthThrottle,
  type KeyStore,
  type Principal,
  type RateLimiter,
} from '../auth/index.js';
import { PalisadeError, isPalisadeError } from '../errors/index.js';
import type { SandboxInfo, SandboxRuntime } from '../sandbox/types.js';
import type { ApprovalEvent, ApprovalService } from './approvals.js';
import type { ExecEvent } from './executions.js';
import { securityHeaders } from './headers.js';
import { toErrorResponse } from './http-errors.js';
import { EXEC_ID_RE, SANDBOX_ID_RE } from './validate.js';

export interface WsConfig {
  /** Open WebSocket connections per API key; more are refused (429) before the upgrade. @default 8 */
  maxConnectionsPerKey: number;
  /** Open WebSocket connections on the whole server. @default 256 */
  maxConnectionsGlobal: number;
  /** Largest client message; larger closes the connection (1009). @default 4096 */
  maxPayloadBytes: number;
  /**
   * Bytes queued for one client (not yet taken by its TCP connection). Past it, messages are
   * dropped and a `dropped` marker with the count is sent once the client catches up. @default 1 MiB
   */
  maxBufferedBytes: number;
  /** A client that keeps the queue over the bound this long is disconnected. @default 30 s */
  stallTimeoutMs: number;
  /** Subscriptions per connection. @default 64 */
  maxSubscriptions: number;
  /**
   * Ping interval; a client that did not answer the previous ping is disconnected, and the key is
   * re-checked (a revoked or expired key's connections are closed). @default 30 s
   */
  pingIntervalMs: number;
}

export const DEFAULT_WS_CONFIG: WsConfig = {
  maxConnectionsPerKey: 8,
  maxConnectionsGlobal: 256,
  maxPayloadBytes: 4096,
  maxBufferedBytes: 1024 * 1024,
  stallTimeoutMs: 30_000,
  maxSubscriptions: 64,
  pingIntervalMs: 30_000,
};

/** The subprotocol a client must offer (and the server selects) to authenticate by token. */
export const WS_PROTOCOL = 'palisade.v1';
/** Browsers cannot set headers on a WebSocket: they offer `bearer.<key>` as a second subprotocol. */
export const WS_TOKEN_PREFIX = 'bearer.';
export const WS_PATH = '/v1/ws';

interface Connection {
  readonly id: number;
  readonly ws: WebSocket;
  readonly principal: Principal;
  readonly sandboxes: Set<string>;
  readonly execs: Set<string>;
  /** Messages dropped since the last one delivered. */
  dropped: number;
  droppingSince: number | null;
  alive: boolean;
  /** Subscribe requests are handled one at a time, in order. */
  queue: Promise<unknown>;
}

export interface WsStats {
  connections: number;
  /** Largest bytes queued for any one connection right now. */
  maxBufferedBytes: number;
  /** Messages dropped for slow readers since start. */
  droppedMessages: number;
  /** Connections closed for being too slow or not answering pings. */
  slowDisconnects: number;
  /** Subscriptions held by open connections (sandbox and exec). */
  subscriptions: number;
  /** Pending or running executions the hub knows the owner of (what exec subscriptions may name). */
  trackedExecs: number;
}

/** Owner of an execution the hub has seen start (or wait for approval) and not yet end. */
export interface ExecOwner {
  tenant: string;
  sandboxId: string;
}

/**
 * Live executions tracked for subscribe-time checks. An entry leaves when its exec ends; entries
 * whose end is never announced (a foreground exec denied at approval) are evicted oldest first.
 */
export const MAX_TRACKED_EXECS = 16_384;

/**
 * Routes exec, sandbox and approval events to WebSocket connections. Subscriptions are checked
 * when made (the sandbox or execution must be visible to the key) and indexed by target, so an
 * event goes straight to the connections subscribed to its sandbox or execution; the tenant is
 * compared again on delivery as defense in depth. Every connection's queue is bounded
 * (`maxBufferedBytes`): over it, messages are dropped and counted, and a client that stays over
 * it for `stallTimeoutMs` (or stops answering pings) is disconnected.
 */
export class StreamHub {
  readonly #config: WsConfig;
  readonly #connections = new Set<Connection>();
  readonly #perKey = new Map<string, number>();
  /** Reserved during the upgrade, so concurrent upgrades cannot overshoot the limits. */
  #reserved = 0;
  #nextId = 1;
  #droppedTotal = 0;
  #slowDisconnects = 0;
  readonly #bySandbox = new Map<string, Set<Connection>>();
  readonly #byExec = new Map<string, Set<Connection>>();
  readonly #execOwners = new Map<string, ExecOwner>();

  constructor(config: WsConfig) {
    this.#config = config;
  }

  get config(): Readonly<WsConfig> {
    return this.#config;
  }

  stats(): WsStats {
    let maxBuffered = 0;
    for (const c of this.#connections) maxBuffered = Math.max(maxBuffered, c.ws.bufferedAmount);
    return {
      connections: this.#connections.size,
      maxBufferedBytes: maxBuffered,
      droppedMessages: this.#droppedTotal,
      slowDisconnects: this.#slowDisconnects,
      subscriptions: countMembers(this.#bySandbox) + countMembers(this.#byExec),
      trackedExecs: this.#execOwners.size,
    };
  }

  /** Who owns a pending or running execution, if the hub has seen it and it has not ended. */
  execOwner(execId: string): ExecOwner | undefined {
    return this.#execOwners.get(execId);
  }

  subscribeSandbox(conn: Connection, sandboxId: string): void {
    conn.sandboxes.add(sandboxId);
    addMember(this.#bySandbox, sandboxId, conn);
  }

  subscribeExec(conn: Connection, execId: string): void {
    conn.execs.add(execId);
    addMember(this.#byExec, execId, conn);
  }

  unsubscribeSandbox(conn: Connection, sandboxId: string): void {
    conn.sandboxes.delete(sandboxId);
    removeMember(this.#bySandbox, sandboxId, conn);
  }

  unsubscribeExec(conn: Connection, execId: string): void {
    conn.execs.delete(execId);
    removeMember(this.#byExec, execId, conn);
  }

  #forget(conn: Connection): void {
    for (const id of conn.sandboxes) removeMember(this.#bySandbox, id, conn);
    for (const id of conn.execs) removeMember(this.#byExec, id, conn);
    conn.sandboxes.clear();
    conn.execs.clear();
  }

  #trackExec(execId: string, owner: ExecOwner): void {
    if (this.#execOwners.has(execId)) return;
    if (this.#execOwners.size >= MAX_TRACKED_EXECS) {
      const oldest = this.#execOwners.keys().next();
      if (!oldest.done) this.#execOwners.delete(oldest.value);
    }
    this.#execOwners.set(execId, owner);
  }

  /** The exec ended: nothing more will come for it, so its subscriptions are released. */
  #endExec(execId: string): void {
    this.#execOwners.delete(execId);
    const subscribers = this.#byExec.get(execId);
    if (!subscribers) return;
    this.#byExec.delete(execId);
    for (const conn of subscribers) conn.execs.delete(execId);
  }

  /** Reserves a slot for a key; returns a release function, or a reason it is refused. */
  reserve(keyId: string): (() => void) | string {
    const forKey = this.#perKey.get(keyId) ?? 0;
    if (forKey >= this.#config.maxConnectionsPerKey) {
      return `This API key already has ${forKey} WebSocket connections open, the maximum; close one first.`;
    }
    if (this.#connections.size + this.#reserved >= this.#config.maxConnectionsGlobal) {
      return 'The server has the maximum number of WebSocket connections open; retry later.';
    }
    this.#perKey.set(keyId, forKey + 1);
    this.#reserved++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const n = (this.#perKey.get(keyId) ?? 1) - 1;
      if (n <= 0) this.#perKey.delete(keyId);
      else this.#perKey.set(keyId, n);
      this.#reserved--;
    };
  }

  /** Takes over a reserved slot for an accepted connection; `release` runs when it closes. */
  add(ws: WebSocket, principal: Principal, release: () => void): Connection {
    const conn: Connection = {
      id: this.#nextId++,
      ws,
      principal,
      sandboxes: new Set(),
      execs: new Set(),
      dropped: 0,
      droppingSince: null,
      alive: true,
      queue: Promise.resolve(),
    };
    this.#connections.add(conn);
    // The slot stays counted per key; only the "reserved, not yet connected" count moves.
    this.#reserved--;
    ws.once('close', () => {
      this.#forget(conn);
      this.#connections.delete(conn);
      this.#reserved++;
      release();
    });
    ws.on('pong', () => {
      conn.alive = true;
    });
    return conn;
  }

  /** Sends one message, or drops it (counted) when the client's queue is over the bound. */
  send(conn: Connection, message: Record<string, unknown>): void {
    const ws = conn.ws;
    if (ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > this.#config.maxBufferedBytes) {
      conn.dropped++;
      this.#droppedTotal++;
      const now = Date.now();
      if (conn.droppingSince === null) {
        conn.droppingSince = now;
        // Checked again even if nothing more is sent: a reader still behind by then is cut off.
        setTimeout(() => {
          if (
            conn.droppingSince === now &&
            ws.readyState === WebSocket.OPEN &&
            ws.bufferedAmount > this.#config.maxBufferedBytes
          ) {
            this.#dropSlow(conn);
          }
        }, this.#config.stallTimeoutMs + 10).unref();
      } else if (now - conn.droppingSince > this.#config.stallTimeoutMs) {
        this.#dropSlow(conn);
      }
      return;
    }
    if (conn.dropped > 0) {
      ws.send(JSON.stringify({ type: 'dropped', messages: conn.dropped }));
      conn.dropped = 0;
      conn.droppingSince = null;
    }
    ws.send(JSON.stringify(message));
  }

  #dropSlow(conn: Connection): void {
    this.#slowDisconnects++;
    // terminate() destroys the socket at once, releasing everything queued for it.
    conn.ws.terminate();
  }

  /** Heartbeat: disconnects clients that did not answer the last ping or stayed over the bound. */
  heartbeat(checkKey: (conn: Connection) => void): void {
    const now = Date.now();
    for (const conn of this.#connections) {
      if (!conn.alive) {
        this.#dropSlow(conn);
        continue;
      }
      if (
        conn.ws.bufferedAmount > this.#config.maxBufferedBytes &&
        conn.droppingSince !== null &&
        now - conn.droppingSince > this.#config.stallTimeoutMs
      ) {
        this.#dropSlow(conn);
        continue;
      }
      conn.alive = false;
      try {
        conn.ws.ping();
      } catch {
        conn.ws.terminate();
        continue;
      }
      checkKey(conn);
    }
  }

  /** Connections subscribed to the sandbox or to the exec (each once). */
  #targets(sandboxId: string, execId: string | null): Set<Connection> {
    const out = new Set<Connection>(this.#bySandbox.get(sandboxId));
    const forExec = execId !== null ? this.#byExec.get(execId) : undefined;
    if (forExec) for (const conn of forExec) out.add(conn);
    return out;
  }

  publishExec(event: ExecEvent): void {
    const ended = event.type === 'exec.exit' || event.type === 'exec.not_run';
    if (!ended) this.#trackExec(event.execId, { tenant: event.tenant, sandboxId: event.sandboxId });
    let message: Record<string, unknown> | undefined;
    for (const conn of this.#targets(event.sandboxId, event.execId)) {
      // Subscriptions were checked when made; a tenant mismatch here would be a routing bug.
      if (conn.principal.tenant !== event.tenant) continue;
      message ??= execMessage(event);
      this.send(conn, message);
    }
    if (ended) this.#endExec(event.execId);
  }

  /** Engine state changes carry no tenant: a sandbox subscription was tenant-checked when made. */
  publishState(info: SandboxInfo): void {
    const subscribers = this.#bySandbox.get(info.id);
    if (!subscribers) return;
    const message = {
      type: 'sandbox.state',
      sandboxId: info.id,
      state: info.state,
      reason: info.reason,
    };
    for (const conn of subscribers) this.send(conn, message);
  }

  publishApproval(event: ApprovalEvent): void {
    const a = event.approval;
    // An exec waiting for approval can be subscribed to by id before it starts.
    // execId is null for a file action's approval: only its sandbox's subscribers hear of it.
    if (a.execId === null) {
      // nothing to track
    } else if (event.type === 'approval.pending') {
      this.#trackExec(a.execId, { tenant: event.tenant, sandboxId: a.sandboxId });
    } else if (a.status !== 'approved') {
      // It will never run; a background exec still announces exec.not_run to its subscribers.
      this.#execOwners.delete(a.execId);
    }
    for (const conn of this.#targets(a.sandboxId, a.execId)) {
      if (conn.principal.tenant !== event.tenant) continue;
      this.send(conn, { type: event.type, approval: a });
    }
  }

  /** Closes every connection (server shutdown). */
  closeAll(): void {
    for (const conn of this.#connections) conn.ws.close(1001, 'server shutting down');
    setTimeout(() => {
      for (const conn of this.#connections) conn.ws.terminate();
    }, 1000).unref();
  }

  terminateAll(): void {
    for (const conn of this.#connections) conn.ws.terminate();
  }
}

function addMember(index: Map<string, Set<Connection>>, id: string, conn: Connection): void {
  const set = index.get(id);
  if (set) set.add(conn);
  else index.set(id, new Set([conn]));
}

function removeMember(index: Map<string, Set<Connection>>, id: string, conn: Connection): void {
  const set = index.get(id);
  if (!set) return;
  set.delete(conn);
  if (set.size === 0) index.delete(id);
}

function countMembers(index: Map<string, Set<Connection>>): number {
  let n = 0;
  for (const set of index.values()) n += set.size;
  return n;
}

function execMessage(event: ExecEvent): Record<string, unknown> {
  if (event.type === 'exec.output') {
    return {
      type: 'exec.output',
      sandboxId: event.sandboxId,
      execId: event.execId,
      stream: event.stream,
      encoding: 'base64',
      data: event.data.toString('base64'),
    };
  }
  const { tenant: _tenant, ...rest } = event;
  return rest;
}

export interface WsDeps {
  server: Server;
  hub: StreamHub;
  keys: KeyStore;
  limiter: RateLimiter;
  authThrottle: FailedAuthThrottle;
  audit: AuditLog;
  runtime: SandboxRuntime;
  approvals: ApprovalService;
  corsOrigins: ReadonlySet<string>;
  tls: boolean;
  /**
   * Visibility check of a sandbox for this key, as `GET /v1/sandboxes/{id}` does (throws
   * SANDBOX_NOT_FOUND for another tenant's or a missing one). Exec subscriptions use it too.
   */
  assertSandbox: (principal: Principal, sandboxId: string) => Promise<void>;
  /** Client address used by the failed-auth throttle (same as the HTTP routes use). */
  clientOf: (req: IncomingMessage) => string;
  log: { warn: (obj: object, msg: string) => void; error: (obj: object, msg: string) => void };
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
};

/**
 * Serves WebSocket streams at /v1/ws. The HTTP server's `upgrade` event is handled here, and
 * every check (path, Origin, failed-auth throttle, credentials, scope, rate limit, connection
 * limits) runs BEFORE `handleUpgrade`: a refused client gets a plain HTTP error and never a 101.
 * Returns a function that detaches everything.
 */
export function attachWebSockets(deps: WsDeps): () => void {
  const { hub, server } = deps;
  const config = hub.config;
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: config.maxPayloadBytes,
    perMessageDeflate: false,
    clientTracking: false,
    handleProtocols: (protocols) => (protocols.has(WS_PROTOCOL) ? WS_PROTOCOL : false),
  });
  const headers = securityHeaders(deps.tls);

  const reject = (socket: Duplex, err: unknown) => {
    const id = `req_${randomBytes(12).toString('base64url')}`;
    const { status, body } = toErrorResponse(err, id);
    const payload = JSON.stringify(body);
    const lines = [
      `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}`,
      'Content-Type: application/json; charset=utf-8',
      `Content-Length: ${Buffer.byteLength(payload)}`,
      'Connection: close',
      `X-Request-ID: ${id}`,
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    ];
    if (
      status === 429 &&
      isPalisadeError(err) &&
      typeof err.details?.retryAfterSeconds === 'number'
    ) {
      lines.push(`Retry-After: ${err.details.retryAfterSeconds}`);
    }
    if (socket.writable) socket.end(`${lines.join('\r\n')}\r\n\r\n${payload}`);
    else socket.destroy();
  };

  const authenticateUpgrade = async (req: IncomingMessage): Promise<Principal> => {
    const url = req.url ?? '';
    if (url.split('?')[0] !== WS_PATH) {
      throw new PalisadeError('NOT_FOUND', `WebSocket upgrades are served only at ${WS_PATH}.`);
    }
    const origin = req.headers.origin;
    // Browsers always send Origin; non-browser clients usually do not and are allowed.
    if (origin !== undefined && !deps.corsOrigins.has(origin)) {
      throw new PalisadeError(
        'FORBIDDEN',
        'This Origin is not allowed to open WebSocket streams; the operator lists allowed origins with corsOrigins.',
      );
    }
    const client = deps.clientOf(req);
    const wait = deps.authThrottle.retryAfterSeconds(client);
    if (wait > 0) {
      throw new PalisadeError(
        'RATE_LIMITED',
        `Too many failed authentication attempts; retry after ${wait} s.`,
        { retryAfterSeconds: wait },
      );
    }
    const offered = (req.headers['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((p) => p.trim())
      .filter((p) => p.length > 0);
    const token = offered.find((p) => p.startsWith(WS_TOKEN_PREFIX));
    if (token !== undefined && !offered.includes(WS_PROTOCOL)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `Offer the subprotocol ${WS_PROTOCOL} together with ${WS_TOKEN_PREFIX}<key>.`,
      );
    }
    const authorization =
      req.headers.authorization ??
      (token !== undefined ? `Bearer ${token.slice(WS_TOKEN_PREFIX.length)}` : undefined);
    let principal: Principal;
    try {
      principal = await deps.keys.authenticate(authorization);
    } catch (err) {
      deps.authThrottle.recordFailure(client);
      await deps.audit
        .append({
          type: 'auth.failure',
          actor: null,
          data: { client, method: 'GET', route: WS_PATH },
        })
        .catch(() => undefined);
      throw err;
    }
    if (!hasScope(principal.scopes, 'sandboxes:read')) {
      throw new PalisadeError(
        'FORBIDDEN',
        "This API key lacks the 'sandboxes:read' scope needed here.",
        { requiredScope: 'sandboxes:read' },
      );
    }
    // Keys restricted to one sandbox or to some MCP tools get the same answer as on HTTP routes.
    const restricted = restrictionError(principal, 'GET', WS_PATH, {});
    if (restricted) throw restricted;
    const decision = deps.limiter.take(principal.keyId, 'read');
    if (!decision.allowed) {
      throw new PalisadeError(
        'RATE_LIMITED',
        `Rate limit reached for read requests; retry after ${decision.retryAfterSeconds} s.`,
        { retryAfterSeconds: decision.retryAfterSeconds, category: 'read' },
      );
    }
    return principal;
  };

  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    void authenticateUpgrade(req).then(
      (principal) => {
        if (socket.destroyed) return;
        const release = hub.reserve(principal.keyId);
        if (typeof release === 'string') {
          reject(socket, new PalisadeError('RATE_LIMITED', release, { retryAfterSeconds: 5 }));
          return;
        }
        let accepted = false;
        // ws answers a malformed handshake itself (400) without calling back: free the slot then.
        socket.once('close', () => {
          if (!accepted) release();
        });
        try {
          wss.handleUpgrade(req, socket, head, (ws) => {
            accepted = true;
            accept(ws, principal, release);
          });
        } catch (err) {
          release();
          deps.log.error({ err }, 'websocket upgrade failed');
          socket.destroy();
        }
      },
      (err: unknown) => reject(socket, err),
    );
  };

  const accept = (ws: WebSocket, principal: Principal, release: () => void) => {
    const conn = hub.add(ws, principal, release);
    ws.on('error', () => ws.terminate());
    ws.on('message', (data: RawData, isBinary: boolean) => {
      conn.queue = conn.queue.then(() => handleMessage(data, isBinary)).catch(() => undefined);
    });
    hub.send(conn, { type: 'ready', keyId: principal.keyId, tenant: principal.tenant });

    const fail = (err: unknown, ref?: unknown) => {
      const { body } = toErrorResponse(err, `ws_${conn.id}`);
      hub.send(conn, { type: 'error', code: body.code, message: body.message, ref: ref ?? null });
    };

    const handleMessage = async (data: RawData, isBinary: boolean) => {
      if (isBinary) return fail(new PalisadeError('INVALID_ARGUMENT', 'Send JSON text messages.'));
      let msg: unknown;
      try {
        msg = JSON.parse(data.toString());
      } catch {
        return fail(new PalisadeError('INVALID_ARGUMENT', 'Messages must be JSON objects.'));
      }
      const parsed = parseClientMessage(msg);
      if (typeof parsed === 'string') return fail(new PalisadeError('INVALID_ARGUMENT', parsed));
      if (parsed.type === 'ping') return hub.send(conn, { type: 'pong' });
      const ref = parsed.sandboxId ?? parsed.execId;
      const set = parsed.sandboxId !== undefined ? conn.sandboxes : conn.execs;
      if (parsed.type === 'unsubscribe') {
        if (parsed.sandboxId !== undefined) hub.unsubscribeSandbox(conn, parsed.sandboxId);
        else hub.unsubscribeExec(conn, parsed.execId!);
        return hub.send(conn, { type: 'unsubscribed', ...target(parsed) });
      }
      if (conn.sandboxes.size + conn.execs.size >= config.maxSubscriptions && !set.has(ref!)) {
        return fail(
          new PalisadeError(
            'INVALID_ARGUMENT',
            `At most ${config.maxSubscriptions} subscriptions per connection; unsubscribe first.`,
          ),
          ref,
        );
      }
      try {
        const decision = deps.limiter.take(principal.keyId, 'read');
        if (!decision.allowed) {
          throw new PalisadeError(
            'RATE_LIMITED',
            `Rate limit reached; retry after ${decision.retryAfterSeconds} s.`,
          );
        }
        await assertKeyValid(deps.keys, principal.keyId);
        // The subscription is authoritative: a sandbox must be visible to this key (404 like the
        // HTTP API otherwise), an exec must be pending or running in such a sandbox.
        if (parsed.sandboxId !== undefined) {
          await deps.assertSandbox(principal, parsed.sandboxId);
        } else {
          const execId = parsed.execId!;
          const owner = hub.execOwner(execId);
          if (!owner || owner.tenant !== principal.tenant) throw execNotFound(execId);
          await deps.assertSandbox(principal, owner.sandboxId).catch(() => {
            throw execNotFound(execId);
          });
          // It may have ended while the sandbox was checked: then nothing more would come.
          if (hub.execOwner(execId) === undefined) throw execNotFound(execId);
        }
      } catch (err) {
        if (isPalisadeError(err, 'UNAUTHENTICATED')) {
          ws.close(4401, 'API key no longer valid');
          return;
        }
        return fail(err, ref);
      }
      if (ws.readyState !== WebSocket.OPEN) return;
      if (parsed.sandboxId !== undefined) hub.subscribeSandbox(conn, parsed.sandboxId);
      else hub.subscribeExec(conn, parsed.execId!);
      hub.send(conn, { type: 'subscribed', ...target(parsed) });
    };
  };

  const checkKey = (conn: Connection) => {
    void assertKeyValid(deps.keys, conn.principal.keyId).catch((err: unknown) => {
      if (isPalisadeError(err, 'UNAUTHENTICATED')) conn.ws.close(4401, 'API key no longer valid');
    });
  };

  server.on('upgrade', onUpgrade);
  const unsubscribeState = deps.runtime.onStateChange((info) => hub.publishState(info));
  const unsubscribeApprovals = deps.approvals.subscribe((event) => hub.publishApproval(event));
  const heartbeat = setInterval(() => hub.heartbeat(checkKey), config.pingIntervalMs);
  heartbeat.unref();
  return () => {
    server.off('upgrade', onUpgrade);
    unsubscribeState();
    unsubscribeApprovals();
    clearInterval(heartbeat);
    hub.closeAll();
  };
}

function execNotFound(execId: string): PalisadeError {
  return new PalisadeError(
    'EXEC_NOT_FOUND',
    `No pending or running execution ${execId} visible to this API key. Subscribe to a running ` +
      'execution of your own sandbox, or subscribe to the sandbox before starting it; a finished ' +
      "execution's result and output are at GET /v1/sandboxes/{id}/execs/{execId} and …/logs.",
  );
}

async function assertKeyValid(keys: KeyStore, keyId: string): Promise<void> {
  const info = await keys.get(keyId);
  if (
    !info ||
    info.revokedAt !== null ||
    (info.expiresAt !== null && Date.parse(info.expiresAt) <= Date.now())
  ) {
    throw new PalisadeError('UNAUTHENTICATED', 'This API key has been revoked or has expired.');
  }
}

interface ClientMessage {
  type: 'subscribe' | 'unsubscribe' | 'ping';
  sandboxId?: string;
  execId?: string;
}

function target(m: ClientMessage): Record<string, string> {
  return m.sandboxId !== undefined ? { sandboxId: m.sandboxId } : { execId: m.execId! };
}

/** Strict: known types and fields only, exactly one target for (un)subscribe. */
export function parseClientMessage(msg: unknown): ClientMessage | string {
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
    return 'Messages must be JSON objects.';
  }
  const m = msg as Record<string, unknown>;
  for (const key of Object.keys(m)) {
    if (key !== 'type' && key !== 'sandboxId' && key !== 'execId') {
      return `Unknown field ${JSON.stringify(key.slice(0, 40))}; messages have type and sandboxId or execId.`;
    }
  }
  if (m.type === 'ping') {
    return m.sandboxId === undefined && m.execId === undefined
      ? { type: 'ping' }
      : 'ping takes no other fields.';
  }
  if (m.type !== 'subscribe' && m.type !== 'unsubscribe') {
    return 'type must be "subscribe", "unsubscribe" or "ping".';
  }
  const hasSandbox = m.sandboxId !== undefined;
  const hasExec = m.execId !== undefined;
  if (hasSandbox === hasExec) return `${m.type} needs exactly one of sandboxId and execId.`;
  if (hasSandbox && (typeof m.sandboxId !== 'string' || !SANDBOX_ID_RE.test(m.sandboxId))) {
    return 'Invalid sandboxId: ids look like sb- followed by 20 characters a-z, 2-7.';
  }
  if (hasExec && (typeof m.execId !== 'string' || !EXEC_ID_RE.test(m.execId))) {
    return 'Invalid execId: ids look like ex- followed by 20 characters a-z, 2-7.';
  }
  return hasSandbox
    ? { type: m.type, sandboxId: m.sandboxId as string }
    : { type: m.type, execId: m.execId as string };
}
