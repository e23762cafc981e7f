/**
 * The worker's view of the engine: a SandboxRuntime that forwards every call to the supervisor
 * over its unix socket. get() and list() are synchronous in the contract, so the client keeps a
 * mirror of the sandboxes, fed by the supervisor's hello, state and removed events. The
 * supervisor's egress gateway is reached through createEgressGateway().
 */
import { connect, type Socket } from 'node:net';
import type { EgressGateway } from '../egress/index.js';
import { PalisadeError, type ErrorCode } from '../errors/index.js';
import type {
  CreateSandboxOptions,
  ExecHandle,
  ExecRequest,
  ExecResult,
  ResourceLimits,
  SandboxInfo,
  SandboxRuntime,
  SandboxState,
  SandboxStats,
} from '../sandbox/index.js';
import {
  DATA_CHUNK_BYTES,
  encodeFrame,
  LineReader,
  MAX_FRAME_BYTES,
  type Event,
  type ExecRequestWire,
  type ExecResultWire,
  type Request,
  type SandboxInfoWire,
  type SignalName,
} from './protocol.js';
import { RemoteEgressGateway, type RemoteEgressOptions } from './remote-egress.js';

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
type RequestBody = DistributiveOmit<Request, 'id'>;

/**
 * Encodes a request, refusing one the supervisor would reject. The supervisor treats an
 * oversize frame as a protocol violation and drops the connection, which stops the whole server
 * (and every sandbox); one API request near the body limit must fail alone instead.
 */
function encodeWithinLimit(message: Request): string {
  const frame = encodeFrame(message);
  if (Buffer.byteLength(frame) > MAX_FRAME_BYTES) {
    throw new PalisadeError(
      'PAYLOAD_TOO_LARGE',
      `The request is too large to hand to the sandbox engine (more than ${MAX_FRAME_BYTES} bytes once encoded). Send less: shorter arguments, environment or edit texts; pass large data as stdin or a file upload.`,
    );
  }
  return frame;
}

function infoFromWire(w: SandboxInfoWire): SandboxInfo {
  return {
    id: w.id,
    backend: w.backend,
    template: w.template,
    state: w.state as SandboxState,
    reason: w.reason,
    createdAt: new Date(w.createdAt),
    limits: w.limits as unknown as ResourceLimits,
    labels: w.labels,
    hostUid: w.hostUid,
    cgroupsEnforced: w.cgroupsEnforced,
  };
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

interface Stream {
  request: ExecRequest;
  stdout: Buffer[];
  stderr: Buffer[];
  stdoutBytes: number;
  stderrBytes: number;
  resolve: (result: ExecResult) => void;
  reject: (err: unknown) => void;
}

function disconnected(): PalisadeError {
  return new PalisadeError(
    'INTERNAL',
    'The sandbox supervisor is not reachable (it stopped or closed the connection); restart palisade serve.',
  );
}

/**
 * The supervisor refuses an exec with QUOTA_EXCEEDED when its connection runs as many commands
 * (or has as many requests in flight) as it allows: a server-wide bound shared by every tenant.
 * Said as such, with what to do, and as a 429 (it passes once commands end).
 */
function execRefusal(err: unknown): unknown {
  if (!(err instanceof PalisadeError) || err.code !== 'QUOTA_EXCEEDED') return err;
  return new PalisadeError(
    'EXEC_LIMIT_REACHED',
    `The server runs as many commands at once as its sandbox supervisor allows for all tenants together (${err.message}). Wait for some to finish and retry; operators can lower exec.maxRunningPerTenant so that no tenant can take them all.`,
    { limit: 'supervisor.maxExecStreams', retryAfterSeconds: 1 },
    { cause: err },
  );
}

export interface RemoteRuntime extends SandboxRuntime {
  /** Resolves (never rejects) when the connection to the supervisor has ended. */
  readonly disconnected: Promise<string>;
  /**
   * Ends the connection without closing the engine; the supervisor kills the commands this
   * connection started. (close() also asks the supervisor to destroy every sandbox.)
   */
  disconnect(): void;
  /**
   * The supervisor's egress gateway as an EgressGateway (one per connection). A sandbox gets
   * network when create() is given a network provider that attaches it to this gateway
   * (SandboxNetworks.provider does); forwarded gateway events go to `options.sink`.
   */
  createEgressGateway(options: RemoteEgressOptions): EgressGateway;
}

/** Connects to a supervisor socket and waits for its hello. */
export async function connectRemoteRuntime(options: {
  socketPath: string;
  /** Fail if the supervisor has not said hello within this long. @default 10 s */
  timeoutMs?: number;
}): Promise<RemoteRuntime> {
  const socket = connect(options.socketPath);
  const client = new RemoteRuntimeClient(socket);
  await client.ready(options.timeoutMs ?? 10_000);
  return client;
}

class RemoteRuntimeClient implements RemoteRuntime {
  #backend = 'remote';
  readonly #socket: Socket;
  readonly #reader = new LineReader(MAX_FRAME_BYTES);
  readonly #mirror = new Map<string, SandboxInfo>();
  readonly #listeners = new Set<(info: SandboxInfo) => void>();
  readonly #pending = new Map<number, Pending>();
  readonly #streams = new Map<number, Stream>();
  /** Network release hooks of live sandboxes, called when the supervisor reports them removed. */
  readonly #releases = new Map<string, () => Promise<void>>();
  #egress: RemoteEgressGateway | undefined;
  #nextId = 1;
  #ended: string | undefined;
  #helloResolve: (() => void) | undefined;
  #helloReject: ((err: unknown) => void) | undefined;
  readonly disconnected: Promise<string>;
  #onEnd!: (reason: string) => void;

  constructor(socket: Socket) {
    this.#socket = socket;
    this.disconnected = new Promise((resolve) => (this.#onEnd = resolve));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err) => this.#end(`connection error: ${err.message}`));
    socket.on('close', () => this.#end('the supervisor closed the connection'));
  }

  get backend(): string {
    return this.#backend;
  }

  ready(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new PalisadeError(
            'REQUIREMENT_MISSING',
            'The sandbox supervisor did not answer in time; check that palisade serve started it.',
          ),
        );
        this.#socket.destroy();
      }, timeoutMs);
      this.#helloResolve = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#helloReject = (err) => {
        clearTimeout(timer);
        reject(err);
      };
    });
  }

  #end(reason: string): void {
    if (this.#ended !== undefined) return;
    this.#ended = reason;
    this.#helloReject?.(disconnected());
    for (const p of this.#pending.values()) p.reject(disconnected());
    this.#pending.clear();
    for (const s of this.#streams.values()) s.reject(disconnected());
    this.#streams.clear();
    this.#socket.destroy();
    this.#onEnd(reason);
  }

  #onData(chunk: Buffer): void {
    let lines: string[];
    try {
      lines = this.#reader.push(chunk);
    } catch (err) {
      this.#end((err as Error).message);
      return;
    }
    for (const line of lines) {
      let event: Event;
      try {
        event = JSON.parse(line) as Event;
      } catch {
        this.#end('the supervisor sent a malformed frame');
        return;
      }
      this.#dispatch(event);
    }
  }

  #dispatch(event: Event): void {
    switch (event.t) {
      case 'hello':
        this.#backend = event.backend;
        this.#helloResolve?.();
        this.#helloResolve = undefined;
        this.#helloReject = undefined;
        return;
      case 'res': {
        const p = this.#pending.get(event.id);
        if (!p) return;
        this.#pending.delete(event.id);
        if (event.ok) p.resolve(event.value);
        else p.reject(new PalisadeError(event.error.code as ErrorCode, event.error.message));
        return;
      }
      case 'out': {
        const s = this.#streams.get(event.exec);
        if (!s) return;
        const data = Buffer.from(event.data, 'base64');
        if (event.stream === 'stdout') {
          s.stdout.push(data);
          s.stdoutBytes += data.length;
          s.request.onStdout?.(data);
        } else {
          s.stderr.push(data);
          s.stderrBytes += data.length;
          s.request.onStderr?.(data);
        }
        return;
      }
      case 'done': {
        const s = this.#streams.get(event.exec);
        if (!s) return;
        this.#streams.delete(event.exec);
        s.resolve(resultFromWire(event.result, s));
        return;
      }
      case 'execFailed': {
        const s = this.#streams.get(event.exec);
        if (!s) return;
        this.#streams.delete(event.exec);
        s.reject(new PalisadeError(event.error.code as ErrorCode, event.error.message));
        return;
      }
      case 'state': {
        const info = infoFromWire(event.info);
        this.#mirror.set(info.id, info);
        for (const l of this.#listeners) {
          try {
            l(info);
          } catch {
            // a listener's failure must not break the connection
          }
        }
        return;
      }
      case 'removed': {
        this.#mirror.delete(event.sandboxId);
        const release = this.#releases.get(event.sandboxId);
        this.#releases.delete(event.sandboxId);
        if (release) void release().catch(() => undefined);
        return;
      }
      case 'egress':
        this.#egress?.onEvent(event.event, event.stats);
        return;
      case 'egressStats':
        this.#egress?.onStats(event.sandboxId, event.stats);
        return;
      case 'egressDropped':
        this.#egress?.onDropped(event.count);
        return;
      case 'protocolError':
        this.#end(`the supervisor refused a request: ${event.message}`);
        return;
    }
  }

  #call(body: RequestBody): Promise<unknown> {
    if (this.#ended !== undefined) return Promise.reject(disconnected());
    const id = this.#nextId++;
    let frame: string;
    try {
      frame = encodeWithinLimit({ ...body, id } as Request);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#socket.write(frame);
    });
  }

  createEgressGateway(options: RemoteEgressOptions): EgressGateway {
    if (this.#egress) {
      throw new PalisadeError('CONFLICT', 'This supervisor connection already has its gateway.');
    }
    this.#egress = new RemoteEgressGateway((body) => this.#call(body), options);
    return this.#egress;
  }

  async create(options: CreateSandboxOptions = {}): Promise<SandboxInfo> {
    const provider = options.network;
    if (provider !== undefined && typeof provider !== 'function') {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        "Ready-made network bridges cannot be passed through the supervisor: its own egress gateway serves the sandbox. Pass a network provider that attaches to createEgressGateway()'s gateway.",
      );
    }
    if (
      options.mounts !== undefined ||
      options.workspaceDir !== undefined ||
      options.template !== undefined
    ) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'mounts, workspaceDir and template cannot be requested through the supervisor.',
      );
    }
    const wire = (await this.#call({
      t: 'create',
      options: {
        ...(options.limits ? { limits: options.limits } : {}),
        ...(options.env ? { env: options.env } : {}),
        ...(options.labels ? { labels: options.labels } : {}),
        ...(provider ? { network: true as const } : {}),
      },
    })) as SandboxInfoWire;
    const info = infoFromWire(wire);
    if (!this.#mirror.has(info.id)) this.#mirror.set(info.id, info);
    if (provider) {
      // The supervisor attached the sandbox with everything refused; the provider sets its
      // rules. Nothing runs in the sandbox before create() returns, so nothing escapes the
      // gap; if the rules cannot be set the sandbox is destroyed (fail closed).
      try {
        // hostGid is not in SandboxInfo and not used: the supervisor owns the socket by the
        // engine's own identity for the sandbox, never by one the worker names.
        const network = await provider({
          id: info.id,
          hostUid: info.hostUid,
          hostGid: info.hostUid,
        });
        if (network.release) this.#releases.set(info.id, network.release);
      } catch (err) {
        await this.destroy(info.id, 'its network rules could not be set').catch(() => undefined);
        throw err;
      }
    }
    return this.#mirror.get(info.id) ?? info;
  }

  async exec(sandboxId: string, request: ExecRequest): Promise<ExecHandle> {
    const wire: ExecRequestWire = {
      ...(request.argv !== undefined ? { argv: request.argv } : {}),
      ...(request.command !== undefined ? { command: request.command } : {}),
      ...(request.cwd !== undefined ? { cwd: request.cwd } : {}),
      ...(request.env !== undefined ? { env: request.env } : {}),
      ...(request.timeoutMs !== undefined ? { timeoutMs: request.timeoutMs } : {}),
      ...(request.maxOutputBytes !== undefined ? { maxOutputBytes: request.maxOutputBytes } : {}),
      // Whole-stdin requests are streamed in frame-sized pieces.
      ...(request.openStdin || request.stdin !== undefined ? { openStdin: true } : {}),
    };
    if (this.#ended !== undefined) throw disconnected();
    const ref = this.#nextId++;
    const frame = encodeWithinLimit({ t: 'exec', id: ref, sandboxId, request: wire });
    let resolveDone!: (r: ExecResult) => void;
    let rejectDone!: (err: unknown) => void;
    const done = new Promise<ExecResult>((resolve, reject) => {
      resolveDone = resolve;
      rejectDone = reject;
    });
    this.#streams.set(ref, {
      request,
      stdout: [],
      stderr: [],
      stdoutBytes: 0,
      stderrBytes: 0,
      resolve: resolveDone,
      reject: rejectDone,
    });
    const started = new Promise<unknown>((resolve, reject) => {
      this.#pending.set(ref, { resolve, reject });
      this.#socket.write(frame);
    });
    let value: unknown;
    try {
      value = await started;
    } catch (err) {
      this.#streams.delete(ref);
      throw execRefusal(err);
    }
    // Avoid an unhandled rejection if the caller never awaits done.
    done.catch(() => undefined);
    const execId = (value as { execId: string }).execId;
    const control = (body: RequestBody) => this.#call(body);
    const handle: ExecHandle = {
      id: execId,
      sandboxId,
      done,
      async writeStdin(data) {
        const bytes = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data);
        let offset = 0;
        do {
          const piece = bytes.subarray(offset, offset + DATA_CHUNK_BYTES);
          await control({ t: 'stdin', exec: ref, data: piece.toString('base64') }).catch(
            (err: unknown) => {
              // The supervisor forgets an exec once it ended; report that like the local
              // engine does, so callers (the files API) read the command's own result.
              if (err instanceof PalisadeError && err.code === 'EXEC_NOT_FOUND')
                throw new PalisadeError('EXEC_FAILED', 'the command has already ended');
              throw err;
            },
          );
          offset += DATA_CHUNK_BYTES;
        } while (offset < bytes.length);
      },
      closeStdin() {
        void control({ t: 'closeStdin', exec: ref }).catch(() => undefined);
      },
      signal(signal: SignalName) {
        void control({ t: 'signal', exec: ref, signal }).catch(() => undefined);
      },
      interrupt() {
        void control({ t: 'interrupt', exec: ref }).catch(() => undefined);
      },
      async kill() {
        await control({ t: 'kill', exec: ref }).catch((err: unknown) => {
          // Already finished: nothing left to kill.
          if (!(err instanceof PalisadeError && err.code === 'EXEC_NOT_FOUND')) throw err;
        });
      },
    };
    if (request.signal) {
      if (request.signal.aborted) handle.interrupt();
      else request.signal.addEventListener('abort', () => handle.interrupt(), { once: true });
    }
    if (request.stdin !== undefined) {
      try {
        await handle.writeStdin(request.stdin);
      } finally {
        handle.closeStdin();
      }
    }
    return handle;
  }

  async run(sandboxId: string, request: ExecRequest): Promise<ExecResult> {
    const handle = await this.exec(sandboxId, request);
    return handle.done;
  }

  async destroy(sandboxId: string, reason?: string): Promise<void> {
    await this.#call({
      t: 'destroy',
      sandboxId,
      ...(reason !== undefined ? { reason: reason.slice(0, 512) } : {}),
    });
  }

  async pause(sandboxId: string): Promise<void> {
    await this.#call({ t: 'pause', sandboxId });
  }

  async resume(sandboxId: string): Promise<void> {
    await this.#call({ t: 'resume', sandboxId });
  }

  async stats(sandboxId: string): Promise<SandboxStats> {
    return (await this.#call({ t: 'stats', sandboxId })) as SandboxStats;
  }

  get(sandboxId: string): SandboxInfo | undefined {
    return this.#mirror.get(sandboxId);
  }

  list(): SandboxInfo[] {
    return [...this.#mirror.values()];
  }

  onStateChange(listener: (info: SandboxInfo) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  disconnect(): void {
    this.#socket.end();
    this.#end('disconnected by the worker');
  }

  /** Asks the supervisor to destroy every sandbox, then disconnects. */
  async close(): Promise<void> {
    if (this.#ended === undefined) {
      await this.#call({ t: 'close' }).catch(() => undefined);
    }
    this.#socket.end();
    this.#end('closed by the worker');
  }
}

function resultFromWire(w: ExecResultWire, s: Stream): ExecResult {
  return {
    exitCode: w.exitCode,
    signal: w.signal,
    stdout: Buffer.concat(s.stdout, s.stdoutBytes),
    stderr: Buffer.concat(s.stderr, s.stderrBytes),
    stdoutTruncated: w.stdoutTruncated,
    stderrTruncated: w.stderrTruncated,
    timedOut: w.timedOut,
    interrupted: w.interrupted,
    durationMs: w.durationMs,
  };
}
