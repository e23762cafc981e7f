import { chmodSync, chownSync, lstatSync, mkdirSync, rmdirSync, unlinkSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { PalisadeError } from '../errors/index.js';
import {
  decideEgress,
  decideResolvedAddress,
  normaliseHost,
  parseIp,
} from '../policy/network/index.js';
import type { EgressPolicy, EgressRule, IpAddress } from '../policy/network/index.js';
import {
  chunkedFraming,
  headerValues,
  lengthFraming,
  type BodyFraming,
  parseAbsoluteHttpTarget,
  parseAuthority,
  parseRequestHead,
  type RequestHead,
} from './http.js';
import { createSystemResolver } from './resolver.js';
import {
  parseConnectRequest,
  parseGreeting,
  SOCKS_METHOD_NO_AUTH,
  SOCKS_METHOD_NONE_ACCEPTABLE,
  SOCKS_VERSION,
  SocksReply,
  socksReply,
  type SocksReplyCode,
} from './socks.js';
import { MAX_CLIENT_HELLO_BUFFER, parseClientHello } from './tls.js';
import type {
  EgressEvent,
  EgressEventSink,
  EgressGateway,
  EgressGatewayOptions,
  EgressStats,
  GatewayLimits,
  Resolver,
} from './types.js';

/** The in-sandbox port of the single bridge: HTTP proxy and SOCKS5 on one port (first byte 0x05 = SOCKS5). */
export const PROXY_PORT = 3128;

export const DEFAULT_LIMITS: Readonly<GatewayLimits> = Object.freeze({
  maxConnectionsPerSandbox: 64,
  maxBytesInPerSandbox: 4 * 1024 * 1024 * 1024,
  maxBytesOutPerSandbox: 1024 * 1024 * 1024,
  connectTimeoutMs: 10_000,
  idleTimeoutMs: 300_000,
  maxHeaderBytes: 16 * 1024,
});

const DENIAL_RING_SIZE = 100;
const SOCKET_BUFFER_BYTES = 256 * 1024;
const DETACHED_HISTORY = 64;
const MAX_REASON_CHARS = 300;
const SANDBOX_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
/** sun_path is 108 bytes on Linux, including the terminating NUL. */
const MAX_SOCKET_PATH = 107;
/** TLS fatal alert unrecognized_name (112), sent before closing a tunnel whose SNI was refused. */
const TLS_ALERT_UNRECOGNIZED_NAME = Buffer.from([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x70]);
/** Request headers that only concern the hop to the proxy; never forwarded. */
const HOP_BY_HOP = new Set([
  'connection',
  'proxy-connection',
  'keep-alive',
  'proxy-authorization',
  'proxy-authenticate',
  'te',
  'trailer',
  'upgrade',
]);

type Protocol = EgressEvent['protocol'];

interface SandboxState {
  id: string;
  policy: EgressPolicy;
  server: Server;
  socketPath: string;
  connections: Set<Connection>;
  /** Sockets accepted and not yet closed, including ones refused for the connection limit. */
  openSockets: number;
  bytesIn: number;
  bytesOut: number;
  denied: number;
  denials: EgressEvent[];
  detached: boolean;
}

/** Why the gateway refused or cut a connection; becomes a 'deny' event. */
interface Refusal {
  reason: string;
  rule: EgressRule | null;
  httpStatus: number;
  socksCode: SocksReplyCode;
}

class Connection {
  protocol: Protocol = 'connect';
  host = '';
  port = 0;
  resolved: string[] = [];
  address: IpAddress | null = null;
  allowRule: EgressRule | null = null;
  allowReason = '';
  upstream: Socket | null = null;
  bytesIn = 0;
  bytesOut = 0;
  /** Set when the gateway refused or cut the connection. */
  refusal: Refusal | null = null;
  /** True when the client never completed a request: there was no decision to report. */
  silent = false;
  /** How an allowed connection ended, when it was not a normal close. */
  endNote: string | null = null;
  readonly startedAt = performance.now();
  readonly abort = new AbortController();
  private clientClosed = false;
  private upstreamClosed = true;
  private finished = false;

  constructor(
    readonly client: Socket,
    private readonly onFinish: (connection: Connection) => void,
  ) {
    client.once('close', () => {
      this.clientClosed = true;
      this.abort.abort();
      this.upstream?.destroy();
      this.maybeFinish();
    });
  }

  attachUpstream(upstream: Socket): void {
    this.upstream = upstream;
    this.upstreamClosed = false;
    upstream.once('close', () => {
      this.upstreamClosed = true;
      this.maybeFinish();
    });
    if (this.clientClosed) upstream.destroy();
  }

  /** Close both sides now; the first reason given is the one reported. */
  cut(refusal: Refusal | null, note?: string): void {
    if (refusal !== null && this.refusal === null) this.refusal = refusal;
    if (note !== undefined && this.endNote === null) this.endNote = note;
    this.abort.abort();
    this.upstream?.destroy();
    this.client.destroy();
  }

  private maybeFinish(): void {
    if (this.finished || !this.clientClosed || !this.upstreamClosed) return;
    this.finished = true;
    this.onFinish(this);
  }
}

export function createEgressGateway(options: EgressGatewayOptions): EgressGateway {
  const limits = validateLimits(options.limits ?? {});
  const resolver: Resolver = options.resolver ?? createSystemResolver();
  const sink: EgressEventSink | undefined = options.sink;
  const connectGuard = options.connectGuard;
  const socketDir = options.socketDir;
  if (typeof socketDir !== 'string' || !socketDir.startsWith('/')) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'createEgressGateway: socketDir must be an absolute path',
    );
  }
  const sandboxes = new Map<string, SandboxState>();
  /** Final stats and denials of detached sandboxes, so a caller can report them after teardown. */
  const history = new Map<string, { stats: EgressStats; denials: EgressEvent[] }>();
  let closed = false;

  function emit(state: SandboxState, event: EgressEvent): void {
    if (event.decision === 'deny') {
      state.denied++;
      state.denials.push(event);
      if (state.denials.length > DENIAL_RING_SIZE) state.denials.shift();
    }
    try {
      sink?.emit(event);
    } catch {
      // A failing sink must not take the gateway down; the sink reports its own errors.
    }
  }

  function finishConnection(state: SandboxState, connection: Connection): void {
    state.connections.delete(connection);
    if (connection.silent && connection.refusal === null) return;
    const refusal = connection.refusal;
    let reason: string;
    if (refusal !== null) reason = refusal.reason;
    else if (connection.endNote !== null)
      reason = `${connection.allowReason}; closed: ${connection.endNote}`;
    else reason = connection.allowReason;
    emit(state, {
      time: new Date().toISOString(),
      sandboxId: state.id,
      protocol: connection.protocol,
      host: connection.host,
      port: connection.port,
      resolved: connection.resolved,
      address: connection.address?.text ?? null,
      decision: refusal === null ? 'allow' : 'deny',
      reason,
      rule: (refusal !== null ? refusal.rule : connection.allowRule)?.raw ?? null,
      bytesIn: connection.bytesIn,
      bytesOut: connection.bytesOut,
      durationMs: Math.round((performance.now() - connection.startedAt) * 1000) / 1000,
    });
  }

  function onAccept(state: SandboxState, client: Socket): void {
    state.openSockets++;
    client.once('close', () => {
      state.openSockets--;
    });
    client.on('error', () => {
      // Reported through 'close'; a client reset is not a gateway error.
    });
    if (state.detached) {
      client.destroy();
      return;
    }
    const overLimit = state.connections.size >= limits.maxConnectionsPerSandbox;
    if (overLimit && state.openSockets > 2 * limits.maxConnectionsPerSandbox) {
      // Far over the limit: do not spend even a request parse on it.
      state.denied++;
      client.destroy();
      return;
    }
    client.setNoDelay(true);
    client.setTimeout(limits.idleTimeoutMs);
    const connection = new Connection(client, (c) => finishConnection(state, c));
    if (!overLimit) state.connections.add(connection);
    client.on('timeout', () => connection.cut(null, 'idle timeout'));
    const limitRefusal: Refusal | null = overLimit
      ? {
          reason: `connection limit reached (${limits.maxConnectionsPerSandbox} concurrent connections per sandbox)`,
          rule: null,
          httpStatus: 429,
          socksCode: SocksReply.generalFailure,
        }
      : null;
    handleClient(state, connection, limitRefusal).catch(() => {
      connection.cut(failure('internal error while handling the request', 502));
    });
  }

  async function handleClient(
    state: SandboxState,
    connection: Connection,
    limitRefusal: Refusal | null,
  ): Promise<void> {
    const reader = new ClientReader(connection.client);
    if (!(await reader.waitFor(1))) {
      // No request, so no decision to report.
      connection.silent = true;
      connection.client.destroy();
      return;
    }
    if (reader.buffer[0] === SOCKS_VERSION)
      await handleSocks(state, connection, reader, limitRefusal);
    else await handleHttp(state, connection, reader, limitRefusal);
  }

  async function handleHttp(
    state: SandboxState,
    connection: Connection,
    reader: ClientReader,
    limitRefusal: Refusal | null,
  ): Promise<void> {
    connection.protocol = 'http';
    let head: RequestHead;
    for (;;) {
      const result = parseRequestHead(reader.buffer, limits.maxHeaderBytes);
      if (result.kind === 'head') {
        head = result.head;
        break;
      }
      if (result.kind === 'too-large') {
        return refuseHttp(
          connection,
          badRequest(`request head larger than ${limits.maxHeaderBytes} bytes`, 431),
        );
      }
      if (result.kind === 'invalid') return refuseHttp(connection, badRequest(result.reason));
      if (!(await reader.waitFor(reader.buffer.length + 1))) return closedEarly(connection);
    }
    reader.consume(head.length);

    if (head.method === 'CONNECT') {
      connection.protocol = 'connect';
      const authority = parseAuthority(head.target);
      if (authority === null) {
        return refuseHttp(connection, badRequest('CONNECT target must be host:port'));
      }
      connection.host = authority.host;
      connection.port = authority.port;
      if (limitRefusal !== null) return refuseHttp(connection, limitRefusal);
      const upstream = await decideAndConnect(state, connection);
      if (upstream === null) return refuseHttp(connection, connection.refusal);
      connection.client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      return tunnel(state, connection, reader, upstream);
    }

    const target = parseAbsoluteHttpTarget(head.target);
    if (target === null) {
      return refuseHttp(
        connection,
        badRequest(
          'not a proxy request: use an absolute http:// URL, or CONNECT for https and other TCP',
        ),
      );
    }
    connection.host = target.host;
    connection.port = target.port;
    const hostRefusal = checkHostHeader(head, target.host, target.port);
    if (hostRefusal !== null) return refuseHttp(connection, hostRefusal);
    const body = requestBodyFraming(head, limits.maxHeaderBytes);
    if ('reason' in body) return refuseHttp(connection, body);
    if (limitRefusal !== null) return refuseHttp(connection, limitRefusal);
    const upstream = await decideAndConnect(state, connection);
    if (upstream === null) return refuseHttp(connection, connection.refusal);

    const outgoingHead = Buffer.from(rewriteHead(head, target.path), 'latin1');
    if (!account(state, connection, 'out', outgoingHead.length)) return;
    upstream.write(outgoingHead);
    pump(state, connection, upstream, connection.client, 'in');
    reader.release();
    const buffered = reader.take(reader.buffer.length);
    // One request per connection: after its body, further client bytes are never forwarded,
    // so a second request cannot reach this upstream under a different Host.
    const feed = pump(state, connection, connection.client, upstream, 'out', body);
    if (buffered.length > 0) feed(buffered);
  }

  async function handleSocks(
    state: SandboxState,
    connection: Connection,
    reader: ClientReader,
    limitRefusal: Refusal | null,
  ): Promise<void> {
    connection.protocol = 'socks5';
    const client = connection.client;
    for (;;) {
      const greeting = parseGreeting(reader.buffer);
      if (greeting.kind === 'greeting') {
        reader.consume(greeting.length);
        if (!greeting.methods.includes(SOCKS_METHOD_NO_AUTH)) {
          connection.refusal = badRequest(
            'SOCKS5 client offers no acceptable method (only no-auth is supported)',
          );
          client.end(Buffer.from([SOCKS_VERSION, SOCKS_METHOD_NONE_ACCEPTABLE]));
          return;
        }
        client.write(Buffer.from([SOCKS_VERSION, SOCKS_METHOD_NO_AUTH]));
        break;
      }
      if (greeting.kind === 'invalid' || reader.buffer.length > 257) {
        connection.refusal = badRequest('malformed SOCKS5 greeting');
        client.destroy();
        return;
      }
      if (!(await reader.waitFor(reader.buffer.length + 1))) return closedEarly(connection);
    }
    for (;;) {
      const request = parseConnectRequest(reader.buffer);
      if (request.kind === 'request') {
        reader.consume(request.length);
        connection.host = request.host;
        connection.port = request.port;
        break;
      }
      if (request.kind === 'invalid') {
        return refuseSocks(connection, { ...badRequest(request.reason), socksCode: request.reply });
      }
      if (!(await reader.waitFor(reader.buffer.length + 1))) return closedEarly(connection);
    }
    if (limitRefusal !== null) return refuseSocks(connection, limitRefusal);
    const upstream = await decideAndConnect(state, connection);
    if (upstream === null) return refuseSocks(connection, connection.refusal);
    client.write(socksReply(SocksReply.succeeded));
    return tunnel(state, connection, reader, upstream);
  }

  /**
   * The decision: rules on the requested name, then every resolved address vetted, then a
   * connection to exactly one vetted address. Returns null with connection.refusal set on
   * refusal or failure.
   */
  async function decideAndConnect(
    state: SandboxState,
    connection: Connection,
  ): Promise<Socket | null> {
    const refuse = (refusal: Refusal): null => {
      connection.refusal = refusal;
      return null;
    };
    // Not a refusal: the client left while we were deciding or connecting.
    const clientGone = (): null => {
      connection.endNote ??= 'client went away';
      return null;
    };
    if (
      state.bytesIn >= limits.maxBytesInPerSandbox ||
      state.bytesOut >= limits.maxBytesOutPerSandbox
    ) {
      return refuse(blocked('byte quota exhausted for this sandbox', null));
    }
    let host: string;
    try {
      host = normaliseHost(connection.host);
    } catch {
      return refuse(blocked(`invalid host name ${sanitise(connection.host, 80)}`, null));
    }
    connection.host = host;
    const policy = state.policy;
    const ruling = decideEgress(policy, { host, port: connection.port });
    if (ruling.decision === 'deny') return refuse(blocked(ruling.reason, ruling.rule));
    connection.allowRule = ruling.rule;
    connection.allowReason = ruling.reason;

    const deadline = AbortSignal.any([
      connection.abort.signal,
      AbortSignal.timeout(limits.connectTimeoutMs),
    ]);
    let addresses: IpAddress[];
    const literal = parseIp(host);
    if (literal !== null) {
      addresses = [literal];
    } else {
      try {
        addresses = await resolver.resolve(host, deadline);
      } catch {
        if (connection.abort.signal.aborted) return clientGone();
        return refuse(failure(`could not resolve ${host}`, 502, SocksReply.hostUnreachable));
      }
      if (!Array.isArray(addresses) || addresses.length === 0) {
        return refuse(failure(`could not resolve ${host}`, 502, SocksReply.hostUnreachable));
      }
    }
    connection.resolved = addresses.map((a) => a.text);
    // Every address must pass, not just the one used: a name that mixes public and private
    // answers is treated as pointing at the private one.
    for (const address of addresses) {
      const vetted = decideResolvedAddress(policy, address, connection.port);
      if (vetted.decision === 'deny') {
        return refuse(
          blocked(`${host} resolves to ${address.text}: ${vetted.reason}`, vetted.rule),
        );
      }
    }
    for (const address of addresses) {
      if (connectGuard !== undefined && !connectGuard(address, connection.port)) {
        return refuse(
          blocked(
            `connection to ${address.text} port ${connection.port} refused by the operator's connect guard`,
            null,
          ),
        );
      }
    }
    let lastError = 'no address';
    for (const address of addresses) {
      if (deadline.aborted) break;
      try {
        const upstream = await connectPinned(address, connection.port, deadline);
        if (state.detached || connection.client.destroyed) {
          upstream.destroy();
          return clientGone();
        }
        connection.address = address;
        connection.attachUpstream(upstream);
        // The policy may have changed while resolving or connecting.
        const recheck = recheckConnection(state.policy, connection);
        if (recheck !== null) {
          upstream.destroy();
          return refuse(recheck);
        }
        return upstream;
      } catch (err) {
        lastError = (err as NodeJS.ErrnoException).code ?? 'connect failed';
      }
    }
    if (connection.abort.signal.aborted) return clientGone();
    if (deadline.aborted) {
      return refuse(
        failure(
          `connecting to ${host}:${connection.port} timed out`,
          504,
          SocksReply.hostUnreachable,
        ),
      );
    }
    const socksCode =
      lastError === 'ECONNREFUSED'
        ? SocksReply.connectionRefused
        : lastError === 'ENETUNREACH'
          ? SocksReply.networkUnreachable
          : SocksReply.hostUnreachable;
    return refuse(
      failure(`could not connect to ${host}:${connection.port} (${lastError})`, 502, socksCode),
    );
  }

  /**
   * Moves bytes after the handshake. Upstream → client starts at once (server-first
   * protocols work); client → upstream first waits for enough bytes to tell whether the
   * client speaks TLS, and if its ClientHello names a server other than the approved host,
   * the tunnel is cut before a single byte reaches the upstream.
   */
  async function tunnel(
    state: SandboxState,
    connection: Connection,
    reader: ClientReader,
    upstream: Socket,
  ): Promise<void> {
    pump(state, connection, upstream, connection.client, 'in');
    for (;;) {
      const hello = parseClientHello(reader.buffer);
      if (hello.kind === 'not-tls') break;
      if (hello.kind === 'invalid') {
        connection.cut(blocked(`refused TLS: ${hello.reason}`, null));
        return;
      }
      if (hello.kind === 'client-hello') {
        if (hello.serverName !== null && !sameHost(hello.serverName, connection.host)) {
          connection.refusal ??= blocked(
            `TLS server name ${sanitise(hello.serverName, 80)} does not match the requested host ${connection.host}`,
            null,
          );
          connection.abort.abort();
          upstream.destroy();
          connection.client.end(TLS_ALERT_UNRECOGNIZED_NAME);
          connection.client.destroySoon();
          return;
        }
        break;
      }
      if (reader.buffer.length === 0) {
        // Nothing sent yet: wait for the first bytes without holding any.
        if (!(await reader.waitFor(1))) {
          reader.release();
          upstream.end();
          return;
        }
        continue;
      }
      if (reader.buffer.length >= MAX_CLIENT_HELLO_BUFFER) {
        connection.cut(blocked('refused TLS: ClientHello too large', null));
        return;
      }
      if (!(await reader.waitFor(reader.buffer.length + 1))) {
        connection.cut(null, 'client closed during the TLS handshake');
        return;
      }
    }
    reader.release();
    const first = reader.take(reader.buffer.length);
    const feed = pump(state, connection, connection.client, upstream, 'out');
    if (first.length > 0) feed(first);
  }

  /** Counts bytes against the connection and the sandbox quota; false (and the connection cut) if over. */
  function account(
    state: SandboxState,
    connection: Connection,
    direction: 'in' | 'out',
    bytes: number,
  ): boolean {
    const used = direction === 'in' ? state.bytesIn : state.bytesOut;
    const max = direction === 'in' ? limits.maxBytesInPerSandbox : limits.maxBytesOutPerSandbox;
    if (used + bytes > max) {
      connection.cut(
        blocked(
          `byte quota exceeded (${direction === 'in' ? 'download' : 'upload'} limit ${max} bytes)`,
          null,
        ),
      );
      return false;
    }
    addBytes(state, connection, direction, bytes);
    return true;
  }

  function addBytes(
    state: SandboxState,
    connection: Connection,
    direction: 'in' | 'out',
    bytes: number,
  ): void {
    if (direction === 'in') {
      state.bytesIn += bytes;
      connection.bytesIn += bytes;
    } else {
      state.bytesOut += bytes;
      connection.bytesOut += bytes;
    }
  }

  /**
   * Forwards src → dst with backpressure (what stream.pipe does), counting every byte against
   * the sandbox's quota. A chunk that would cross the quota is forwarded up to the quota, then
   * dst is ended so the receiver gets a clean end of stream, and the connection is reported.
   * With `framing`, forwarding stops where the request body ends and later input is discarded.
   */
  function pump(
    state: SandboxState,
    connection: Connection,
    src: Socket,
    dst: Socket,
    direction: 'in' | 'out',
    framing?: BodyFraming,
  ): (chunk: Buffer) => void {
    const max = direction === 'in' ? limits.maxBytesInPerSandbox : limits.maxBytesOutPerSandbox;
    const onData = (chunk: Buffer): void => {
      let piece = chunk;
      if (framing !== undefined) {
        if (framing.done) return;
        const used = framing.next(chunk);
        if (used === null) {
          connection.cut(badRequest('malformed chunked request body'));
          return;
        }
        piece = chunk.subarray(0, used);
        if (piece.length === 0) return;
      }
      const used = direction === 'in' ? state.bytesIn : state.bytesOut;
      if (used + piece.length > max) {
        const allowed = Math.max(0, max - used);
        if (allowed > 0) dst.write(piece.subarray(0, allowed));
        addBytes(state, connection, direction, allowed);
        connection.refusal ??= blocked(
          `byte quota exceeded (${direction === 'in' ? 'download' : 'upload'} limit ${max} bytes)`,
          null,
        );
        connection.abort.abort();
        src.destroy();
        dst.end();
        if (direction === 'out') connection.client.destroy();
        return;
      }
      addBytes(state, connection, direction, piece.length);
      if (!dst.write(piece)) src.pause();
    };
    src.on('data', onData);
    dst.on('drain', () => src.resume());
    src.on('end', () => {
      if (framing === undefined || !framing.done) dst.end();
    });
    dst.on('error', () => src.destroy());
    src.on('error', () => dst.destroy());
    src.resume();
    return onData;
  }

  function refuseHttp(connection: Connection, refusal: Refusal | null): void {
    if (refusal === null && connection.client.destroyed) return;
    const r = refusal ?? failure('refused', 502);
    connection.refusal ??= r;
    const statusText: Record<number, string> = {
      400: 'Bad Request',
      403: 'Forbidden',
      411: 'Length Required',
      501: 'Not Implemented',
      429: 'Too Many Requests',
      431: 'Request Header Fields Too Large',
      502: 'Bad Gateway',
      504: 'Gateway Timeout',
    };
    const reason = sanitise(r.reason, MAX_REASON_CHARS);
    const body =
      r.httpStatus === 403
        ? `Blocked by Palisade egress policy: ${reason}\n`
        : `Palisade egress gateway: ${reason}\n`;
    const lines = [
      `HTTP/1.1 ${r.httpStatus} ${statusText[r.httpStatus] ?? 'Error'}`,
      ...(r.httpStatus === 403 || r.httpStatus === 429 ? [`X-Palisade-Blocked: ${reason}`] : []),
      'Content-Type: text/plain; charset=utf-8',
      `Content-Length: ${Buffer.byteLength(body)}`,
      'Connection: close',
      '',
      body,
    ];
    finishRefusal(connection, lines.join('\r\n'));
  }

  function refuseSocks(connection: Connection, refusal: Refusal | null): void {
    if (refusal === null && connection.client.destroyed) return;
    const r = refusal ?? failure('refused', 502);
    connection.refusal ??= r;
    finishRefusal(connection, socksReply(r.socksCode));
  }

  function finishRefusal(connection: Connection, response: string | Buffer): void {
    const client = connection.client;
    if (client.destroyed) return;
    // Keep reading (and discarding) so unread request bytes do not turn our close into a
    // reset that would hide the response from the client.
    client.removeAllListeners('data');
    client.on('data', () => {});
    client.on('end', () => client.destroy());
    client.resume();
    client.end(response);
  }

  function closedEarly(connection: Connection): void {
    connection.silent = true;
    connection.client.destroy();
  }

  function recheckConnection(policy: EgressPolicy, connection: Connection): Refusal | null {
    const ruling = decideEgress(policy, { host: connection.host, port: connection.port });
    if (ruling.decision === 'deny') return blocked(`policy changed: ${ruling.reason}`, ruling.rule);
    if (connection.address !== null) {
      const vetted = decideResolvedAddress(policy, connection.address, connection.port);
      if (vetted.decision === 'deny')
        return blocked(`policy changed: ${vetted.reason}`, vetted.rule);
    }
    return null;
  }

  function getState(sandboxId: string): SandboxState {
    const state = sandboxes.get(sandboxId);
    if (state === undefined) {
      throw new PalisadeError(
        'SANDBOX_NOT_FOUND',
        `sandbox ${sanitise(String(sandboxId), 80)} is not attached to the egress gateway`,
      );
    }
    return state;
  }

  function statsOf(state: SandboxState): EgressStats {
    return {
      activeConnections: state.connections.size,
      bytesIn: state.bytesIn,
      bytesOut: state.bytesOut,
      denied: state.denied,
    };
  }

  return {
    async attach(sandboxId, policy, owner) {
      if (closed) throw new PalisadeError('CONFLICT', 'the egress gateway is closed');
      if (typeof sandboxId !== 'string' || !SANDBOX_ID.test(sandboxId)) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          'sandbox id must be 1-64 characters of letters, digits, _ and -',
        );
      }
      assertPolicy(policy);
      assertOwner(owner);
      if (sandboxes.has(sandboxId)) {
        throw new PalisadeError(
          'CONFLICT',
          `sandbox ${sandboxId} is already attached to the egress gateway`,
        );
      }
      prepareSocketDir(socketDir);
      const sandboxDir = join(socketDir, sandboxId);
      const socketPath = join(sandboxDir, 'proxy.sock');
      if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          `the proxy socket path ${socketPath} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter socketDir`,
        );
      }
      prepareSandboxDir(sandboxDir, socketPath);
      // A larger write buffer than the 16 KiB default lets a 64 KiB read be written without a
      // pause/drain cycle per chunk (throughput); it is per socket and bounded.
      const server = createServer({ allowHalfOpen: true, highWaterMark: SOCKET_BUFFER_BYTES });
      const state: SandboxState = {
        id: sandboxId,
        policy,
        server,
        socketPath,
        connections: new Set(),
        openSockets: 0,
        bytesIn: 0,
        bytesOut: 0,
        denied: 0,
        denials: [],
        detached: false,
      };
      server.on('connection', (socket) => onAccept(state, socket));
      sandboxes.set(sandboxId, state);
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(socketPath, () => {
            server.off('error', reject);
            resolve();
          });
        });
        server.on('error', () => {
          // A listener error after start is not recoverable per connection; detach cleans up.
        });
        // The sandbox directory is still 0700 and ours, so nobody can reach the socket before
        // it is handed over. bubblewrap runs as the sandbox user and must reach the socket to
        // bind-mount it: the directory becomes root:<sandbox gid> 0710, the socket
        // <sandbox uid> 0600. No other user (and no other sandbox) can enter the directory.
        chmodSync(socketPath, 0o600);
        chownSync(socketPath, owner.uid, owner.gid);
        chownSync(sandboxDir, process.getuid?.() ?? 0, owner.gid);
        chmodSync(sandboxDir, 0o710);
      } catch (err) {
        sandboxes.delete(sandboxId);
        server.close();
        removeSandboxDir(socketPath);
        throw new PalisadeError(
          'REQUIREMENT_MISSING',
          `could not create the egress proxy socket for sandbox ${sandboxId} in ${socketDir} (${(err as NodeJS.ErrnoException).code ?? 'error'}); ` +
            'the gateway must be able to create unix sockets there and chown them (run it as root or as the sandbox user)',
          { sandboxId },
          { cause: err },
        );
      }
      history.delete(sandboxId);
      return { bridges: [{ port: PROXY_PORT, hostSocket: socketPath }], env: proxyEnv(PROXY_PORT) };
    },

    updatePolicy(sandboxId, policy) {
      const state = getState(sandboxId);
      assertPolicy(policy);
      state.policy = policy;
      for (const connection of state.connections) {
        if (connection.upstream === null || connection.refusal !== null) continue;
        const refusal = recheckConnection(policy, connection);
        if (refusal !== null) connection.cut(refusal);
      }
    },

    async detach(sandboxId) {
      const state = getState(sandboxId);
      state.detached = true;
      sandboxes.delete(sandboxId);
      const serverClosed = new Promise<void>((resolve) => state.server.close(() => resolve()));
      for (const connection of state.connections) connection.cut(null, 'sandbox detached');
      await serverClosed;
      removeSandboxDir(state.socketPath);
      history.set(sandboxId, { stats: statsOf(state), denials: state.denials });
      if (history.size > DETACHED_HISTORY) {
        const oldest = history.keys().next();
        if (oldest.done !== true) history.delete(oldest.value);
      }
    },

    stats(sandboxId) {
      const state = sandboxes.get(sandboxId);
      if (state === undefined) {
        const past = history.get(sandboxId);
        if (past !== undefined) return { ...past.stats, activeConnections: 0 };
      }
      return statsOf(getState(sandboxId));
    },

    recentDenials(sandboxId) {
      const state = sandboxes.get(sandboxId);
      if (state === undefined) {
        const past = history.get(sandboxId);
        if (past !== undefined) return [...past.denials];
      }
      return [...getState(sandboxId).denials];
    },

    async close() {
      closed = true;
      await Promise.all([...sandboxes.keys()].map((id) => this.detach(id)));
    },
  };
}

/** Reads from the client socket into a buffer until the gateway knows what the client wants. */
class ClientReader {
  buffer: Buffer = Buffer.alloc(0);
  private ended = false;
  private wake: (() => void) | null = null;
  private readonly onData = (chunk: Buffer): void => {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    this.socket.pause();
    this.notify();
  };
  private readonly onEnd = (): void => {
    this.ended = true;
    this.notify();
  };

  constructor(private readonly socket: Socket) {
    socket.on('data', this.onData);
    socket.once('end', this.onEnd);
    socket.once('close', this.onEnd);
  }

  /** Resolves true once at least `length` bytes are buffered, false if the client ended first. */
  async waitFor(length: number): Promise<boolean> {
    while (this.buffer.length < length) {
      if (this.ended || this.socket.destroyed) return false;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        this.socket.resume();
      });
    }
    return true;
  }

  consume(length: number): void {
    this.buffer = this.buffer.subarray(length);
  }

  /** Removes and returns up to `length` buffered bytes. */
  take(length: number): Buffer {
    const out = this.buffer.subarray(0, Math.min(length, this.buffer.length));
    this.consume(out.length);
    return out;
  }

  /** Stops buffering; the socket is left paused for a pump to take over. */
  release(): void {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.pause();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

function connectPinned(address: IpAddress, port: number, signal: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // An IP literal host: net.connect does no name lookup, so this is exactly the vetted address.
    const options = {
      host: address.text,
      port,
      family: address.family,
      allowHalfOpen: true,
      noDelay: true,
      // Accepted by net.Socket at run time (stream option), missing from @types/node.
      highWaterMark: SOCKET_BUFFER_BYTES,
    };
    const socket = createConnection(options);
    const onAbort = (): void => {
      socket.destroy();
      reject(Object.assign(new Error('connect aborted'), { code: 'ETIMEDOUT' }));
    };
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      signal.removeEventListener('abort', onAbort);
      socket.removeAllListeners('error');
      socket.on('error', () => {
        // handled by the pump and the close handler
      });
      resolve(socket);
    });
    socket.once('error', (err) => {
      signal.removeEventListener('abort', onAbort);
      socket.destroy();
      reject(err);
    });
  });
}

function checkHostHeader(head: RequestHead, host: string, port: number): Refusal | null {
  const values = headerValues(head, 'host');
  if (values.length !== 1) {
    return blocked(
      values.length === 0 ? 'request has no Host header' : 'request has more than one Host header',
      null,
    );
  }
  const authority = parseAuthority(values[0] ?? '', 80);
  if (authority === null || authority.port !== port || !sameHost(authority.host, host)) {
    return blocked(
      `Host header ${sanitise(values[0] ?? '', 80)} does not match the request target ${sanitise(host, 80)}:${port}`,
      null,
    );
  }
  return null;
}

/**
 * How the request body is delimited, or a refusal for bodies this proxy cannot delimit
 * unambiguously (the classic request-smuggling shapes: both headers, odd encodings).
 */
function requestBodyFraming(head: RequestHead, maxHeaderBytes: number): BodyFraming | Refusal {
  const transferEncoding = headerValues(head, 'transfer-encoding');
  const lengths = headerValues(head, 'content-length');
  if (transferEncoding.length > 0) {
    if (lengths.length > 0) return badRequest('both Transfer-Encoding and Content-Length');
    const codings = transferEncoding.flatMap((v) =>
      v.split(',').map((s) => s.trim().toLowerCase()),
    );
    if (codings.length !== 1 || codings[0] !== 'chunked') {
      return { ...badRequest('only Transfer-Encoding: chunked is supported'), httpStatus: 501 };
    }
    return chunkedFraming(maxHeaderBytes);
  }
  if (lengths.length === 0) return lengthFraming(0);
  const unique = new Set(lengths.flatMap((v) => v.split(',').map((s) => s.trim())));
  const [only] = [...unique];
  if (unique.size !== 1 || only === undefined || !/^[0-9]{1,15}$/.test(only)) {
    return badRequest('invalid Content-Length');
  }
  return lengthFraming(Number(only));
}

function rewriteHead(head: RequestHead, path: string): string {
  const named = new Set(
    headerValues(head, 'connection').flatMap((v) =>
      v.split(',').map((s) => s.trim().toLowerCase()),
    ),
  );
  const lines = [`${head.method} ${path} ${head.version}`];
  for (const [name, value] of head.headers) {
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || named.has(lower)) continue;
    lines.push(`${name}: ${value}`);
  }
  lines.push('Connection: close', '', '');
  return lines.join('\r\n');
}

function sameHost(a: string, b: string): boolean {
  try {
    return normaliseHost(a) === normaliseHost(b);
  } catch {
    return false;
  }
}

function blocked(reason: string, rule: EgressRule | null): Refusal {
  return { reason, rule, httpStatus: 403, socksCode: SocksReply.notAllowedByRuleset };
}

function badRequest(reason: string, httpStatus = 400): Refusal {
  return { reason, rule: null, httpStatus, socksCode: SocksReply.generalFailure };
}

function failure(
  reason: string,
  httpStatus: number,
  socksCode: SocksReplyCode = SocksReply.generalFailure,
): Refusal {
  return { reason, rule: null, httpStatus, socksCode };
}

/** Printable ASCII only, bounded: reasons end up in headers and logs. */
function sanitise(text: string, max: number): string {
  const clean = text.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > max ? `${clean.slice(0, max)}...` : clean;
}

function proxyEnv(port: number): Record<string, string> {
  const http = `http://127.0.0.1:${port}`;
  const socks = `socks5h://127.0.0.1:${port}`;
  const noProxy = 'localhost,127.0.0.1,::1';
  return {
    HTTP_PROXY: http,
    HTTPS_PROXY: http,
    ALL_PROXY: socks,
    NO_PROXY: noProxy,
    http_proxy: http,
    https_proxy: http,
    all_proxy: socks,
    no_proxy: noProxy,
  };
}

function assertOwner(owner: { uid: number; gid: number }): void {
  if (
    owner === null ||
    typeof owner !== 'object' ||
    !Number.isSafeInteger(owner.uid) ||
    !Number.isSafeInteger(owner.gid) ||
    owner.uid < 0 ||
    owner.gid < 0 ||
    owner.uid > 0xfffffffe ||
    owner.gid > 0xfffffffe
  ) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'owner must be { uid, gid } with non-negative integers',
    );
  }
  if (owner.uid === 0) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'the proxy socket owner must be the sandbox user, never root (uid 0)',
    );
  }
}

function assertPolicy(policy: EgressPolicy): void {
  if (
    policy === null ||
    typeof policy !== 'object' ||
    !Array.isArray(policy.allow) ||
    !Array.isArray(policy.deny)
  ) {
    throw new PalisadeError(
      'INVALID_POLICY',
      'egress policy must come from parseEgressPolicy (allow and deny rule lists)',
    );
  }
  try {
    // The policy engine validates rule objects on every decision; do it once up front so a
    // bad policy fails attach/updatePolicy instead of every connection.
    decideEgress(policy, { host: 'policy-check.invalid', port: 443 });
  } catch (err) {
    throw new PalisadeError(
      'INVALID_POLICY',
      'invalid egress policy; build it with parseEgressPolicy',
      undefined,
      { cause: err },
    );
  }
}

function validateLimits(partial: Partial<GatewayLimits>): GatewayLimits {
  const limits = { ...DEFAULT_LIMITS, ...partial };
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value <= 0) {
      throw new PalisadeError(
        'INVALID_LIMIT',
        `egress gateway limit ${name} must be a positive integer`,
        { [name]: value },
      );
    }
  }
  return limits;
}

/** The shared directory: ours, traversable (so bubblewrap, running as a sandbox user, can reach that sandbox's own subdirectory) but not listable. */
function prepareSocketDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o711 });
    const info = lstatSync(dir);
    const uid = process.getuid?.() ?? -1;
    if (!info.isDirectory() || info.uid !== uid) {
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        `egress socket directory ${dir} must be a real directory owned by the gateway's user; remove it or choose another socketDir`,
      );
    }
    if ((info.mode & 0o777) !== 0o711) chmodSync(dir, 0o711);
  } catch (err) {
    if (err instanceof PalisadeError) throw err;
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `cannot create the egress socket directory ${dir} (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
      undefined,
      { cause: err },
    );
  }
}

/** A fresh 0700 per-sandbox directory; a stale one from a crashed gateway is cleared first. */
function prepareSandboxDir(dir: string, socketPath: string): void {
  let info;
  try {
    info = lstatSync(dir);
  } catch {
    info = undefined;
  }
  if (info !== undefined) {
    if (!info.isDirectory() || info.uid !== (process.getuid?.() ?? -1)) {
      throw new PalisadeError(
        'CONFLICT',
        `${dir} exists and is not a directory owned by the gateway; refusing to reuse it`,
      );
    }
    removeSandboxDir(socketPath);
  }
  mkdirSync(dir, { mode: 0o700 });
  chmodSync(dir, 0o700);
}

function removeSandboxDir(socketPath: string): void {
  try {
    if (lstatSync(socketPath).isSocket()) unlinkSync(socketPath);
  } catch {
    // not there
  }
  try {
    rmdirSync(dirname(socketPath));
  } catch {
    // not there, or not empty (then attach reports the conflict)
  }
}
