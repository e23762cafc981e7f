/**
 * The worker's view of the engine: a SandboxRuntime that forwards every call to the supervisor
 * over its unix socket. get() and list() are synchronous in the contract, so the client keeps a
 * mirror of the sandboxes, fed by the supervisor's hello, state and removed events.
 */
import { connect, type Socket } from 'node:net';
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

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
type RequestBody = DistributiveOmit<Request, 'id'>;

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

export interface RemoteRuntime extends SandboxRuntime {
  /** Resolves (never rejects) when the connection to the supervisor has ended. */
  readonly disconnected: Promise<string>;
  /**
   * Ends the connection without closing the engine; the supervisor kills the commands this
   * connection started. (close() also asks the supervisor to destroy every sandbox.)
   */
  disconnect(): void;
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
      case 'removed':
        this.#mirror.delete(event.sandboxId);
        return;
      case 'protocolError':
        this.#end(`the supervisor refused a request: ${event.message}`);
        return;
    }
  }

  #call(body: RequestBody): Promise<unknown> {
    if (this.#ended !== undefined) return Promise.reject(disconnected());
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#socket.write(encodeFrame({ ...body, id } as Request));
    });
  }

  async create(options: CreateSandboxOptions = {}): Promise<SandboxInfo> {
    if (options.network !== undefined) {
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        'Sandbox network is not available when palisade serve runs privilege-separated: the egress gateway is not yet reachable through the supervisor. Create the sandbox without a network section, or run palisade serve --single-process (the HTTP server then runs as root).',
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
      },
    })) as SandboxInfoWire;
    const info = infoFromWire(wire);
    if (!this.#mirror.has(info.id)) this.#mirror.set(info.id, info);
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
      this.#socket.write(
        encodeFrame({ t: 'exec', id: ref, sandboxId, request: wire } satisfies Request),
      );
    });
    let value: unknown;
    try {
      value = await started;
    } catch (err) {
      this.#streams.delete(ref);
      throw err;
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
          await control({ t: 'stdin', exec: ref, data: piece.toString('base64') });
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
