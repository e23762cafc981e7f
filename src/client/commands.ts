/**
 * `sandbox.commands`: run a command and get its result, stream its output to callbacks, or
 * start it in the background and get a handle. Output always travels base64-encoded so the
 * SDK can hand out both exact bytes and UTF-8 text.
 */
import { CommandStreamError, ConnectionError, PolicyDeniedError, ProtocolError } from './errors.js';
import { SseParser } from './sse.js';
import { assertArgument, concat, sleep, type Transport } from './transport.js';
import type { CommandResult, ExecInfo, LogPage } from './types.js';

/** Chunk callback: text is UTF-8 decoded across chunk boundaries; bytes are exact. */
export type OutputCallback = (text: string, bytes: Uint8Array) => void;

export interface RunOptions {
  /** Working directory inside the sandbox. @default /workspace */
  cwd?: string;
  /** Extra environment, merged over the sandbox's. */
  env?: Record<string, string>;
  /** The command is killed (with its whole process tree) after this long. @default server default, 30 s */
  timeoutMs?: number;
  /** The command's whole stdin (closed after it). @default empty */
  stdin?: string;
  /** Bytes of stdout and of stderr kept; more is dropped and flagged. @default server default, 1 MiB */
  maxOutputBytes?: number;
  /** Called with each stdout chunk as it arrives (switches to a streamed request). */
  onStdout?: OutputCallback;
  onStderr?: OutputCallback;
  /** Start in the background and return a CommandHandle at once. @default false */
  background?: boolean;
  /** Aborting disconnects, which interrupts the command (SIGINT, then kill). */
  signal?: AbortSignal;
  /**
   * HTTP time limit for the whole call.
   * @default (timeoutMs ?? 30 s) + the client's timeoutMs
   */
  requestTimeoutMs?: number;
}

export interface WaitOptions {
  /** Pause between polls of the log while nothing new arrived. @default 250 ms */
  pollIntervalMs?: number;
  onStdout?: OutputCallback;
  onStderr?: OutputCallback;
  signal?: AbortSignal;
}

const DEFAULT_EXEC_TIMEOUT_MS = 30_000;
/** The server's maximum maxOutputBytes: the client never keeps more per stream. */
const MAX_KEPT_OUTPUT_BYTES = 4 * 1024 * 1024;
/** Largest single event accepted from a stream (base64 of an engine chunk is far smaller). */
const MAX_EVENT_BYTES = 8 * 1024 * 1024;

interface ExecJson {
  execId: string;
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  truncated: boolean;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  timedOut: boolean;
  interrupted: boolean;
  durationMs: number;
}

export class Commands {
  readonly #transport: Transport;
  readonly #sandboxId: string;
  readonly #clientTimeoutMs: number;

  constructor(transport: Transport, sandboxId: string, clientTimeoutMs: number) {
    this.#transport = transport;
    this.#sandboxId = sandboxId;
    this.#clientTimeoutMs = clientTimeoutMs;
  }

  /**
   * Runs `cmd` (a string runs with /bin/sh -c; an array is argv, no shell). Resolves with the
   * result whatever the exit status; with `background: true`, with a handle once it started.
   */
  run(cmd: string | string[], options: RunOptions & { background: true }): Promise<CommandHandle>;
  run(
    cmd: string | string[],
    options?: RunOptions & { background?: false },
  ): Promise<CommandResult>;
  run(cmd: string | string[], options?: RunOptions): Promise<CommandResult | CommandHandle>;
  async run(
    cmd: string | string[],
    options: RunOptions = {},
  ): Promise<CommandResult | CommandHandle> {
    const body = execBody(cmd, options);
    const path = `${sandboxPath(this.#sandboxId)}/exec`;
    const timeoutMs =
      options.requestTimeoutMs ??
      (options.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS) + this.#clientTimeoutMs;
    if (options.background) {
      const { body: info } = await this.#transport.json<ExecInfo>({
        method: 'POST',
        path,
        json: { ...body, background: true },
        signal: options.signal,
      });
      return new CommandHandle(this.#transport, this.#sandboxId, info, options);
    }
    if (!options.onStdout && !options.onStderr) {
      const { body: r } = await this.#transport.json<ExecJson>({
        method: 'POST',
        path,
        json: body,
        signal: options.signal,
        timeoutMs,
      });
      return resultFromJson(r);
    }
    return this.#transport.send(
      {
        method: 'POST',
        path,
        json: body,
        headers: { accept: 'text/event-stream' },
        signal: options.signal,
        timeoutMs,
      },
      (res, signal) => consumeStream(res, signal, options),
    );
  }

  /** Background executions of this sandbox (running and recently finished). */
  async list(options: { signal?: AbortSignal } = {}): Promise<ExecInfo[]> {
    const { body } = await this.#transport.json<{ items: ExecInfo[] }>({
      method: 'GET',
      path: `${sandboxPath(this.#sandboxId)}/execs`,
      signal: options.signal,
    });
    return body.items;
  }

  /** A handle on an existing background execution. */
  async connect(execId: string, options: { signal?: AbortSignal } = {}): Promise<CommandHandle> {
    assertArgument(
      /^ex-[a-z2-7]{20}$/.test(execId),
      `Not an execution id: ${JSON.stringify(execId)}.`,
    );
    const { body } = await this.#transport.json<ExecInfo>({
      method: 'GET',
      path: `${sandboxPath(this.#sandboxId)}/execs/${execId}`,
      signal: options.signal,
    });
    return new CommandHandle(this.#transport, this.#sandboxId, body, {});
  }
}

/** A command running in the background. */
export class CommandHandle {
  readonly id: string;
  readonly sandboxId: string;
  /** What the server reported when the handle was made. */
  readonly started: ExecInfo;
  readonly #transport: Transport;
  readonly #callbacks: {
    onStdout?: OutputCallback | undefined;
    onStderr?: OutputCallback | undefined;
  };

  constructor(
    transport: Transport,
    sandboxId: string,
    info: ExecInfo,
    callbacks: { onStdout?: OutputCallback | undefined; onStderr?: OutputCallback | undefined },
  ) {
    this.#transport = transport;
    this.sandboxId = sandboxId;
    this.id = info.id;
    this.started = info;
    this.#callbacks = callbacks;
  }

  #path(suffix = ''): string {
    return `${sandboxPath(this.sandboxId)}/execs/${this.id}${suffix}`;
  }

  /** Current status. */
  async info(options: { signal?: AbortSignal } = {}): Promise<ExecInfo> {
    return (
      await this.#transport.json<ExecInfo>({
        method: 'GET',
        path: this.#path(),
        signal: options.signal,
      })
    ).body;
  }

  /** Output from `cursor` (start: "0"); pass `nextCursor` back to read on. */
  async logs(
    options: { cursor?: string; maxBytes?: number; signal?: AbortSignal } = {},
  ): Promise<LogPage> {
    if (options.cursor !== undefined)
      assertArgument(/^[0-9]{1,12}$/.test(options.cursor), 'cursor must be a nextCursor value.');
    const { body } = await this.#transport.json<{
      chunks: { seq: number; stream: 'stdout' | 'stderr'; data: string }[];
      nextCursor: string;
      dropped: boolean;
      exec: ExecInfo;
    }>({
      method: 'GET',
      path: this.#path('/logs'),
      query: { cursor: options.cursor, maxBytes: options.maxBytes, encoding: 'base64' },
      signal: options.signal,
    });
    return {
      chunks: body.chunks.map((c) => ({ seq: c.seq, stream: c.stream, data: fromBase64(c.data) })),
      nextCursor: body.nextCursor,
      dropped: body.dropped,
      exec: body.exec,
    };
  }

  /**
   * Polls the log until the command has exited and all its output is read; delivers chunks to
   * the callbacks given here or to run(). Resolves with the result whatever the exit status.
   */
  async wait(options: WaitOptions = {}): Promise<CommandResult> {
    const pollMs = options.pollIntervalMs ?? 250;
    const out = new OutputCollector(MAX_KEPT_OUTPUT_BYTES, {
      onStdout: options.onStdout ?? this.#callbacks.onStdout,
      onStderr: options.onStderr ?? this.#callbacks.onStderr,
    });
    let cursor = '0';
    let dropped = false;
    for (;;) {
      const page = await this.logs({ cursor, signal: options.signal });
      dropped ||= page.dropped;
      for (const chunk of page.chunks) out.push(chunk.stream, chunk.data);
      cursor = page.nextCursor;
      if (page.chunks.length > 0) continue;
      if (page.exec.status === 'exited') {
        out.flush();
        const truncated = page.exec.truncated || dropped;
        return {
          execId: this.id,
          exitCode: page.exec.exitCode,
          signal: page.exec.signal,
          ...out.result(),
          truncated: truncated || out.stdoutTruncated || out.stderrTruncated,
          stdoutTruncated: truncated || out.stdoutTruncated,
          stderrTruncated: truncated || out.stderrTruncated,
          timedOut: page.exec.timedOut,
          interrupted: page.exec.interrupted,
          durationMs: page.exec.durationMs ?? 0,
        };
      }
      await sleep(pollMs, options.signal);
    }
  }

  /** Interrupts the command: SIGINT, then its whole process tree is killed. */
  async kill(options: { signal?: AbortSignal } = {}): Promise<ExecInfo> {
    return (
      await this.#transport.json<ExecInfo>({
        method: 'POST',
        path: this.#path('/interrupt'),
        signal: options.signal,
      })
    ).body;
  }
}

export function sandboxPath(id: string): string {
  assertArgument(
    typeof id === 'string' && /^sb-[a-z2-7]{20}$/.test(id),
    `Not a sandbox id: ${JSON.stringify(id)} (ids look like sb- followed by 20 characters a-z, 2-7).`,
  );
  return `/v1/sandboxes/${id}`;
}

function execBody(cmd: string | string[], o: RunOptions): Record<string, unknown> {
  if (typeof cmd === 'string') assertArgument(cmd.length > 0, 'The command is empty.');
  else
    assertArgument(
      Array.isArray(cmd) && cmd.length > 0 && cmd.every((a) => typeof a === 'string'),
      'argv must be a non-empty array of strings.',
    );
  return {
    ...(typeof cmd === 'string' ? { command: cmd } : { argv: cmd }),
    ...(o.cwd !== undefined ? { cwd: o.cwd } : {}),
    ...(o.env !== undefined ? { env: o.env } : {}),
    ...(o.timeoutMs !== undefined ? { timeoutMs: o.timeoutMs } : {}),
    ...(o.stdin !== undefined ? { stdin: o.stdin } : {}),
    ...(o.maxOutputBytes !== undefined ? { maxOutputBytes: o.maxOutputBytes } : {}),
    encoding: 'base64',
  };
}

function resultFromJson(r: ExecJson): CommandResult {
  const stdoutBytes = fromBase64(r.stdout);
  const stderrBytes = fromBase64(r.stderr);
  return {
    execId: r.execId,
    exitCode: r.exitCode,
    signal: r.signal,
    stdout: new TextDecoder().decode(stdoutBytes),
    stderr: new TextDecoder().decode(stderrBytes),
    stdoutBytes,
    stderrBytes,
    truncated: r.truncated,
    stdoutTruncated: r.stdoutTruncated,
    stderrTruncated: r.stderrTruncated,
    timedOut: r.timedOut,
    interrupted: r.interrupted,
    durationMs: r.durationMs,
  };
}

async function consumeStream(
  res: Response,
  signal: AbortSignal,
  options: RunOptions,
): Promise<CommandResult> {
  const requestId = res.headers.get('x-request-id') ?? undefined;
  if (!(res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
    throw new ProtocolError(
      'The server did not answer the streamed exec with an event stream.',
      requestId,
    );
  }
  const cap = options.maxOutputBytes ?? MAX_KEPT_OUTPUT_BYTES;
  const out = new OutputCollector(Math.min(cap, MAX_KEPT_OUTPUT_BYTES), options);
  const parser = new SseParser(MAX_EVENT_BYTES);
  let execId = '';
  let exit: Omit<ExecJson, 'stdout' | 'stderr'> | undefined;
  const handle = (name: string, data: string): void => {
    let payload: Record<string, unknown>;
    try {
      payload = JSON.parse(data) as Record<string, unknown>;
    } catch {
      throw new ProtocolError(`Malformed ${name} event in the command stream.`, requestId);
    }
    if (name === 'start') execId = String(payload.execId ?? '');
    else if (name === 'stdout' || name === 'stderr')
      out.push(name, fromBase64(String(payload.data ?? '')));
    else if (name === 'exit') exit = payload as unknown as typeof exit;
    else if (name === 'error') {
      const init = {
        status: 200,
        code: typeof payload.code === 'string' ? payload.code : 'INTERNAL',
        message: typeof payload.message === 'string' ? payload.message : 'The command failed.',
        requestId: typeof payload.requestId === 'string' ? payload.requestId : requestId,
      };
      // A command the policy asked about and a human denied (or no one approved in time) ends
      // the stream this way, after a `pending` event: the same class as a non-streamed denial.
      if (init.code === 'POLICY_DENIED') throw new PolicyDeniedError(init);
      throw new CommandStreamError(init);
    }
  };
  const reader = res.body?.getReader();
  if (!reader) throw new ProtocolError('The command stream has no body.', requestId);
  try {
    while (exit === undefined) {
      if (signal.aborted) throw signal.reason;
      const { done, value } = await reader.read();
      const events = done ? parser.end() : parser.push(value);
      for (const e of events) {
        handle(e.event, e.data);
        if (exit !== undefined) break;
      }
      if (done) break;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  if (exit === undefined) {
    throw new ConnectionError(
      'The command stream ended before the command finished (connection closed).',
      1,
    );
  }
  out.flush();
  return {
    execId: exit.execId ?? execId,
    exitCode: exit.exitCode,
    signal: exit.signal,
    ...out.result(),
    truncated: Boolean(exit.truncated) || out.stdoutTruncated || out.stderrTruncated,
    stdoutTruncated: Boolean(exit.stdoutTruncated) || out.stdoutTruncated,
    stderrTruncated: Boolean(exit.stderrTruncated) || out.stderrTruncated,
    timedOut: Boolean(exit.timedOut),
    interrupted: Boolean(exit.interrupted),
    durationMs: Number(exit.durationMs ?? 0),
  };
}

/** Keeps at most `cap` bytes per stream and feeds the callbacks (every chunk, kept or not). */
class OutputCollector {
  readonly #cap: number;
  readonly #parts = { stdout: [] as Uint8Array[], stderr: [] as Uint8Array[] };
  readonly #sizes = { stdout: 0, stderr: 0 };
  readonly #decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
  readonly #callbacks: { stdout?: OutputCallback | undefined; stderr?: OutputCallback | undefined };
  stdoutTruncated = false;
  stderrTruncated = false;

  constructor(
    cap: number,
    callbacks: { onStdout?: OutputCallback | undefined; onStderr?: OutputCallback | undefined },
  ) {
    this.#cap = cap;
    this.#callbacks = { stdout: callbacks.onStdout, stderr: callbacks.onStderr };
  }

  push(stream: 'stdout' | 'stderr', bytes: Uint8Array): void {
    const room = this.#cap - this.#sizes[stream];
    const kept = bytes.byteLength <= room ? bytes : bytes.subarray(0, Math.max(0, room));
    if (kept.byteLength < bytes.byteLength) {
      if (stream === 'stdout') this.stdoutTruncated = true;
      else this.stderrTruncated = true;
    }
    if (kept.byteLength > 0) {
      this.#parts[stream].push(kept);
      this.#sizes[stream] += kept.byteLength;
    }
    const callback = this.#callbacks[stream];
    if (callback) callback(this.#decoders[stream].decode(bytes, { stream: true }), bytes);
  }

  /** Hands out a partial character the decoders still hold. */
  flush(): void {
    for (const stream of ['stdout', 'stderr'] as const) {
      const callback = this.#callbacks[stream];
      if (!callback) continue;
      const rest = this.#decoders[stream].decode();
      if (rest.length > 0) callback(rest, new Uint8Array(0));
    }
  }

  result(): Pick<CommandResult, 'stdout' | 'stderr' | 'stdoutBytes' | 'stderrBytes'> {
    const stdoutBytes = concat(this.#parts.stdout, this.#sizes.stdout);
    const stderrBytes = concat(this.#parts.stderr, this.#sizes.stderr);
    return {
      stdout: new TextDecoder().decode(stdoutBytes),
      stderr: new TextDecoder().decode(stderrBytes),
      stdoutBytes,
      stderrBytes,
    };
  }
}

export function fromBase64(text: string): Uint8Array {
  const buf = Buffer.from(text, 'base64');
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}
