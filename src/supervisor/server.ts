/**
 * The privileged half of `palisade serve`: owns the sandbox engine and the egress gateway and
 * answers the HTTP worker's requests over an owner-only unix socket. It exposes exactly the
 * SandboxRuntime and gateway operations the API uses, re-validated here (the worker is not
 * trusted), with per-connection bounds.
 */
import { chmodSync, chownSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import {
  createEgressGateway,
  type EgressEvent,
  type EgressGateway,
  type GatewayLimits,
  type IpAddress,
  type Resolver,
} from '../egress/index.js';
import { isPalisadeError, PalisadeError } from '../errors/index.js';
import { parseEgressPolicy, type EgressPolicy, type PolicyLayer } from '../policy/index.js';
import type { ExecHandle, NetworkProvider, SandboxInfo, SandboxRuntime } from '../sandbox/index.js';
import { EgressRuleCombiner } from '../server/index.js';
import {
  DATA_CHUNK_BYTES,
  encodeFrame,
  LineReader,
  MAX_FRAME_BYTES,
  parseRequest,
  type EgressRulesWire,
  type EgressStatsWire,
  type Event,
  type Request,
  type SandboxInfoWire,
} from './protocol.js';

export interface SupervisorLimits {
  /** Requests awaiting an answer per connection; more are refused with QUOTA_EXCEEDED. @default 64 */
  maxInFlight: number;
  /** Live exec streams per connection; more are refused with QUOTA_EXCEEDED. @default 64 */
  maxExecStreams: number;
  /** Simultaneous connections (the worker is one). Extra ones are closed at once. @default 1 */
  maxConnections: number;
  /** Bytes queued towards a connection that does not read; past this it is closed. @default 64 MiB */
  maxBufferedBytes: number;
  /**
   * Past this many bytes queued towards a connection, gateway events for it are dropped and
   * counted (an egressDropped frame reports the count once it reads again) instead of queued.
   * @default 1 MiB
   */
  maxEgressBufferedBytes: number;
  /** How often changed gateway stats of attached sandboxes are pushed to the worker. @default 1000 */
  egressStatsIntervalMs: number;
}

export const DEFAULT_SUPERVISOR_LIMITS: Readonly<SupervisorLimits> = Object.freeze({
  maxInFlight: 64,
  maxExecStreams: 64,
  maxConnections: 1,
  maxBufferedBytes: 64 * 1024 * 1024,
  maxEgressBufferedBytes: 1024 * 1024,
  egressStatsIntervalMs: 1000,
});

export interface SupervisorEgressOptions {
  /** Directory for the per-sandbox proxy sockets; must be the supervisor's own (root's) directory. */
  socketDir: string;
  /**
   * The operator's policy layers. The supervisor applies them itself to every rule set the
   * worker sends: their denies are always added, and a sandbox allow outside their allows is
   * refused.
   */
  upperLayers?: readonly PolicyLayer[];
  resolver?: Resolver;
  limits?: Partial<GatewayLimits>;
  /** A last veto before every upstream connect (see EgressGatewayOptions.connectGuard). */
  connectGuard?: (address: IpAddress, port: number) => boolean;
}

export interface SupervisorOptions {
  runtime: SandboxRuntime;
  /** Unix socket path; its directory is created 0700 and the socket 0600, both owned by `owner`. */
  socketPath: string;
  /** The only user that may connect (the worker). @default the current user */
  owner?: { uid: number; gid: number };
  limits?: Partial<SupervisorLimits>;
  /** Called when a connection ends, with the reason (e.g. a protocol violation). */
  onDisconnect?: (reason: string) => void;
  /** Called for each protocol violation (logged by the caller). */
  onViolation?: (message: string) => void;
  /**
   * Runs the egress gateway here (it needs root to hand each sandbox a socket owned by its
   * uid). Omitted: creates asking for network are refused.
   */
  egress?: SupervisorEgressOptions;
}

export interface Supervisor {
  readonly socketPath: string;
  /** Connections currently open. */
  readonly connections: number;
  /** Protocol violations seen so far (each closed its connection). */
  readonly violations: number;
  /** Gateway events not forwarded (no worker connected, or it was not reading fast enough). */
  readonly egressDropped: number;
  /** Stops accepting, closes every connection and removes the socket. Does not close the engine. */
  close(): Promise<void>;
}

export function infoToWire(info: SandboxInfo): SandboxInfoWire {
  return {
    id: info.id,
    backend: info.backend,
    template: info.template,
    state: info.state,
    reason: info.reason,
    createdAt: info.createdAt.toISOString(),
    limits: { ...info.limits },
    labels: { ...info.labels },
    hostUid: info.hostUid,
    cgroupsEnforced: info.cgroupsEnforced,
  };
}

/** Keeps one event frame far below the frame limit whatever the gateway put in it. */
function boundEvent(event: EgressEvent): EgressEvent {
  return {
    ...event,
    host: event.host.slice(0, 512),
    resolved: event.resolved.slice(0, 32).map((a) => a.slice(0, 64)),
    address: event.address === null ? null : event.address.slice(0, 64),
    reason: event.reason.slice(0, 2048),
    rule: event.rule === null ? null : event.rule.slice(0, 1024),
  };
}

function sameStats(a: EgressStatsWire | undefined, b: EgressStatsWire): boolean {
  return (
    a !== undefined &&
    a.activeConnections === b.activeConnections &&
    a.bytesIn === b.bytesIn &&
    a.bytesOut === b.bytesOut &&
    a.denied === b.denied
  );
}

function errorToWire(err: unknown): { code: string; message: string } {
  if (isPalisadeError(err)) return { code: err.code, message: err.message };
  return {
    code: 'INTERNAL',
    message: 'the sandbox engine failed unexpectedly; see the supervisor log',
  };
}

/** Creates the socket directory (0700) owned by `owner`, refusing a symlink or a non-directory. */
function prepareSocketDir(dir: string, owner: { uid: number; gid: number }): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (!st.isDirectory()) {
    throw new PalisadeError(
      'INVALID_PATH',
      `The supervisor socket directory ${dir} is not a directory; remove it and start again.`,
    );
  }
  chownSync(dir, owner.uid, owner.gid);
  chmodSync(dir, 0o700);
}

function noGateway(): PalisadeError {
  return new PalisadeError(
    'REQUIREMENT_MISSING',
    'This supervisor runs without the egress gateway; no sandbox has network.',
  );
}

export async function startSupervisor(options: SupervisorOptions): Promise<Supervisor> {
  const limits: SupervisorLimits = { ...DEFAULT_SUPERVISOR_LIMITS, ...options.limits };
  const runtime = options.runtime;
  const owner = options.owner ?? { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const socketPath = options.socketPath;
  try {
    prepareSocketDir(dirname(socketPath), owner);
    try {
      unlinkSync(socketPath);
    } catch {
      // not there
    }
  } catch (err) {
    if (isPalisadeError(err)) throw err;
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `Cannot prepare the supervisor socket directory ${dirname(socketPath)} (${(err as Error).message}); the supervisor must run as root or as the owner of that directory.`,
    );
  }

  const connections = new Set<Connection>();
  let violations = 0;
  let egressDropped = 0;
  const seen = new Set<string>();
  const egress = options.egress ? startEgress(options.egress) : undefined;

  /**
   * The gateway and what the supervisor tracks of it: the sandboxes created with network (and
   * the stats last pushed for each). Entries are removed when the engine releases a sandbox's
   * network or the worker detaches it, so the map is bounded by the live sandboxes.
   */
  function startEgress(o: SupervisorEgressOptions) {
    const combiner = new EgressRuleCombiner(o.upperLayers ?? []);
    const upperDenies = new Set(combiner.upperRules().deny);
    const attached = new Map<string, EgressStatsWire | undefined>();
    const gateway: EgressGateway = createEgressGateway({
      socketDir: o.socketDir,
      sink: {
        emit(event) {
          const stats = statsOf(event.sandboxId);
          const frame: Event = { t: 'egress', event: boundEvent(event), stats };
          if (connections.size === 0) egressDropped++;
          for (const c of connections) c.sendEgress(frame);
        },
      },
      ...(o.resolver ? { resolver: o.resolver } : {}),
      ...(o.limits ? { limits: o.limits } : {}),
      ...(o.connectGuard ? { connectGuard: o.connectGuard } : {}),
    });
    function statsOf(sandboxId: string): EgressStatsWire | null {
      try {
        return gateway.stats(sandboxId);
      } catch {
        return null;
      }
    }
    async function detach(sandboxId: string): Promise<void> {
      if (!attached.delete(sandboxId)) return;
      await gateway.detach(sandboxId).catch(() => undefined);
    }
    const timer = setInterval(
      () => {
        for (const c of connections) c.flushEgressDropped();
        for (const [id, last] of attached) {
          const stats = statsOf(id);
          if (stats === null || sameStats(last, stats)) continue;
          let delivered = true;
          for (const c of connections) {
            if (!c.sendEgressStats({ t: 'egressStats', sandboxId: id, stats })) delivered = false;
          }
          // Not delivered (worker busy): compare against the old value again next tick.
          if (delivered && connections.size > 0) attached.set(id, stats);
        }
      },
      Math.max(50, limits.egressStatsIntervalMs),
    );
    timer.unref();
    return {
      /** The engine's network hook: attached with no rules (everything refused) until netPolicy. */
      provider(): NetworkProvider {
        return async (sandbox) => {
          const network = await gateway.attach(sandbox.id, parseEgressPolicy({}), {
            uid: sandbox.hostUid,
            gid: sandbox.hostGid,
          });
          attached.set(sandbox.id, undefined);
          return { ...network, release: () => detach(sandbox.id) };
        };
      },
      /**
       * Parses the worker's rules again and enforces the operator's layers here: the worker may
       * send the effective rules (operator denies included) or only the sandbox's own; either
       * way the operator's denies are in force and the allows must lie within its bounds.
       */
      async setPolicy(sandboxId: string, wire: EgressRulesWire): Promise<void> {
        const info = runtime.get(sandboxId);
        if (!info || info.state === 'terminated' || info.state === 'failed') {
          throw new PalisadeError('SANDBOX_NOT_FOUND', `Sandbox ${sandboxId} does not exist.`);
        }
        if (!attached.has(sandboxId)) {
          throw new PalisadeError(
            'CONFLICT',
            `Sandbox ${sandboxId} has no network: it was created without one, and a network cannot be added to a running sandbox.`,
          );
        }
        const own: EgressPolicy = parseEgressPolicy(
          { allow: wire.allow, deny: wire.deny.filter((rule) => !upperDenies.has(rule)) },
          'supervisor',
        );
        combiner.assertWithinBounds(own, 'network');
        await gateway.updatePolicy(sandboxId, combiner.effective(own));
      },
      detach,
      async close(): Promise<void> {
        clearInterval(timer);
        attached.clear();
        await gateway.close().catch(() => undefined);
      },
    };
  }
  const broadcast = (event: Event) => {
    for (const c of connections) c.send(event);
  };
  const unsubscribe = runtime.onStateChange((info) => {
    seen.add(info.id);
    broadcast({ t: 'state', info: infoToWire(info) });
  });
  /** Tells the workers about sandboxes the engine has forgotten (destroyed, failed creates). */
  const announceRemoved = () => {
    for (const id of seen) {
      if (runtime.get(id) === undefined) {
        seen.delete(id);
        broadcast({ t: 'removed', sandboxId: id });
      }
    }
  };

  class Connection {
    readonly #socket: Socket;
    readonly #reader = new LineReader(MAX_FRAME_BYTES);
    readonly #inFlight = new Set<number>();
    readonly #execs = new Map<number, ExecHandle>();
    #closed = false;
    /** Gateway events dropped for this connection and not yet reported to it. */
    #egressDropped = 0;
    #drainArmed = false;

    constructor(socket: Socket) {
      this.#socket = socket;
      socket.on('data', (chunk: Buffer) => this.#onData(chunk));
      socket.on('error', () => undefined);
      socket.on('close', () => this.#onClose('the worker disconnected'));
      // One frame per sandbox (a single list could outgrow the frame limit), then hello.
      for (const info of runtime.list()) {
        seen.add(info.id);
        this.send({ t: 'state', info: infoToWire(info) });
      }
      this.send({ t: 'hello', backend: runtime.backend });
    }

    send(event: Event): void {
      if (this.#closed) return;
      if (this.#socket.writableLength > limits.maxBufferedBytes) {
        this.#violation(
          `the worker stopped reading (more than ${limits.maxBufferedBytes} bytes queued)`,
        );
        return;
      }
      this.#socket.write(encodeFrame(event));
    }

    /** Gateway events: dropped and counted, never queued, while the worker is behind. */
    sendEgress(frame: Event): void {
      if (this.#closed) return;
      if (this.#socket.writableLength > limits.maxEgressBufferedBytes) {
        this.#egressDropped++;
        egressDropped++;
        if (!this.#drainArmed) {
          this.#drainArmed = true;
          this.#socket.once('drain', () => {
            this.#drainArmed = false;
            this.flushEgressDropped();
          });
        }
        return;
      }
      this.flushEgressDropped();
      this.send(frame);
    }

    /** Returns false (nothing sent) while the worker is behind. */
    sendEgressStats(frame: Event): boolean {
      if (this.#closed || this.#socket.writableLength > limits.maxEgressBufferedBytes) {
        return false;
      }
      this.send(frame);
      return true;
    }

    flushEgressDropped(): void {
      if (this.#closed || this.#egressDropped === 0) return;
      if (this.#socket.writableLength > limits.maxEgressBufferedBytes) return;
      const count = this.#egressDropped;
      this.#egressDropped = 0;
      this.send({ t: 'egressDropped', count });
    }

    #onData(chunk: Buffer): void {
      if (this.#closed) return;
      let lines: string[];
      try {
        lines = this.#reader.push(chunk);
      } catch (err) {
        this.#violation((err as Error).message);
        return;
      }
      for (const line of lines) {
        if (this.#closed) return;
        let request: Request;
        try {
          request = parseRequest(line);
        } catch (err) {
          this.#violation((err as Error).message);
          return;
        }
        if (this.#inFlight.has(request.id)) {
          this.#violation(`request id ${request.id} is already in flight`);
          return;
        }
        if (this.#inFlight.size >= limits.maxInFlight) {
          this.send({
            t: 'res',
            id: request.id,
            ok: false,
            error: {
              code: 'QUOTA_EXCEEDED',
              message: `more than ${limits.maxInFlight} supervisor requests in flight; retry when some have finished`,
            },
          });
          continue;
        }
        this.#inFlight.add(request.id);
        void this.#handle(request)
          .then(
            (value) =>
              this.send(
                value === undefined
                  ? { t: 'res', id: request.id, ok: true }
                  : { t: 'res', id: request.id, ok: true, value },
              ),
            (err: unknown) =>
              this.send({ t: 'res', id: request.id, ok: false, error: errorToWire(err) }),
          )
          .finally(() => {
            this.#inFlight.delete(request.id);
            announceRemoved();
          });
      }
    }

    #exec(ref: number): ExecHandle {
      const handle = this.#execs.get(ref);
      if (!handle) throw new PalisadeError('EXEC_NOT_FOUND', `exec stream ${ref} is not running`);
      return handle;
    }

    async #handle(request: Request): Promise<unknown> {
      switch (request.t) {
        case 'create': {
          const o = request.options;
          if (o.network && !egress) {
            throw new PalisadeError(
              'REQUIREMENT_MISSING',
              'This supervisor runs without the egress gateway, so a sandbox cannot have network; start it with the egress option (palisade serve does).',
            );
          }
          const info = await runtime.create({
            ...(o.limits ? { limits: o.limits } : {}),
            ...(o.env ? { env: o.env } : {}),
            ...(o.labels ? { labels: o.labels } : {}),
            ...(o.network && egress ? { network: egress.provider() } : {}),
          });
          seen.add(info.id);
          return infoToWire(info);
        }
        case 'exec': {
          if (this.#execs.size >= limits.maxExecStreams) {
            throw new PalisadeError(
              'QUOTA_EXCEEDED',
              `more than ${limits.maxExecStreams} commands running through this supervisor connection; wait for some to finish`,
            );
          }
          const ref = request.id;
          const stream = (which: 'stdout' | 'stderr') => (chunk: Buffer) => {
            for (let i = 0; i < chunk.length; i += DATA_CHUNK_BYTES) {
              const piece = chunk.subarray(i, i + DATA_CHUNK_BYTES);
              this.send({ t: 'out', exec: ref, stream: which, data: piece.toString('base64') });
            }
          };
          const handle = await runtime.exec(request.sandboxId, {
            ...request.request,
            onStdout: stream('stdout'),
            onStderr: stream('stderr'),
          });
          this.#execs.set(ref, handle);
          void handle.done.then(
            (result) => {
              this.#execs.delete(ref);
              this.send({
                t: 'done',
                exec: ref,
                result: {
                  exitCode: result.exitCode,
                  signal: result.signal,
                  stdoutTruncated: result.stdoutTruncated,
                  stderrTruncated: result.stderrTruncated,
                  timedOut: result.timedOut,
                  interrupted: result.interrupted,
                  durationMs: result.durationMs,
                },
              });
            },
            (err: unknown) => {
              this.#execs.delete(ref);
              // The worker waits for every exec's end: without this, its record of the exec
              // (and any concurrency slot it holds) would never be released.
              this.send({ t: 'execFailed', exec: ref, error: errorToWire(err) });
            },
          );
          return { execId: handle.id };
        }
        case 'stdin':
          await this.#exec(request.exec).writeStdin(Buffer.from(request.data, 'base64'));
          return undefined;
        case 'closeStdin':
          this.#exec(request.exec).closeStdin();
          return undefined;
        case 'signal':
          this.#exec(request.exec).signal(request.signal);
          return undefined;
        case 'interrupt':
          this.#exec(request.exec).interrupt();
          return undefined;
        case 'kill':
          await this.#exec(request.exec).kill();
          return undefined;
        case 'destroy':
          await runtime.destroy(request.sandboxId, request.reason);
          return undefined;
        case 'pause':
          await runtime.pause(request.sandboxId);
          return undefined;
        case 'resume':
          await runtime.resume(request.sandboxId);
          return undefined;
        case 'stats':
          return await runtime.stats(request.sandboxId);
        case 'netPolicy':
          // Synchronous up to the local gateway's (synchronous) update on purpose: a later frame
          // (an exec) sees the new rules. The answer is sent only once they are in force.
          if (!egress) throw noGateway();
          await egress.setPolicy(request.sandboxId, request.policy);
          return undefined;
        case 'netDetach':
          if (!egress) throw noGateway();
          await egress.detach(request.sandboxId);
          return undefined;
        case 'close':
          // Destroying every sandbox is something the API can already do (admin kill).
          await runtime.close();
          return undefined;
      }
    }

    #violation(message: string): void {
      violations++;
      options.onViolation?.(message);
      if (!this.#closed) {
        this.#socket.end(encodeFrame({ t: 'protocolError', message }));
      }
      this.#onClose(`protocol violation: ${message}`);
      // Do not wait for a peer that ignores the end.
      setTimeout(() => this.#socket.destroy(), 1000).unref();
    }

    #onClose(reason: string): void {
      if (this.#closed) return;
      this.#closed = true;
      connections.delete(this);
      // Commands started for a connection that is gone have nobody to report to.
      for (const handle of this.#execs.values()) void handle.kill().catch(() => undefined);
      this.#execs.clear();
      options.onDisconnect?.(reason);
    }

    destroy(): void {
      this.#onClose('the supervisor is closing');
      this.#socket.destroy();
    }
  }

  const server: Server = createServer((socket) => {
    if (connections.size >= limits.maxConnections) {
      violations++;
      options.onViolation?.('connection refused: the worker is already connected');
      socket.on('error', () => undefined);
      socket.end(
        encodeFrame({
          t: 'protocolError',
          message: 'connection refused: the worker is already connected',
        }),
      );
      return;
    }
    connections.add(new Connection(socket));
  });
  await new Promise<void>((resolve, reject) => {
    const fail = (err: Error) => {
      void egress?.close();
      reject(err);
    };
    server.once('error', fail);
    // Owner-only from the start: the umask covers the window before the chmod below.
    const oldMask = process.umask(0o177);
    try {
      server.listen(socketPath, () => {
        server.off('error', fail);
        resolve();
      });
    } finally {
      process.umask(oldMask);
    }
  });
  chownSync(socketPath, owner.uid, owner.gid);
  chmodSync(socketPath, 0o600);

  let closed = false;
  return {
    socketPath,
    get connections() {
      return connections.size;
    },
    get violations() {
      return violations;
    },
    get egressDropped() {
      return egressDropped;
    },
    async close() {
      if (closed) return;
      closed = true;
      unsubscribe();
      for (const c of [...connections]) c.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      try {
        unlinkSync(socketPath);
      } catch {
        // already gone
      }
      await egress?.close();
    },
  };
}
