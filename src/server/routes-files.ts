/**
 * The files HTTP API: `/v1/sandboxes/{id}/files…`. Every operation is done by the engine's
 * files helper INSIDE the sandbox (src/sandbox/files.ts), so the kernel resolves every path in
 * the sandbox's own view; this module only authenticates (by the app's hook), checks tenant,
 * state and the permission policy, bounds sizes, streams, and audits.
 */
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isPalisadeError, PalisadeError, type ErrorCode } from '../errors/index.js';
import type { FileTool } from '../policy/index.js';
import {
  createSandboxFiles,
  sandboxPathBytes,
  type FileStat,
  type SandboxFiles,
  type SandboxRuntime,
} from '../sandbox/index.js';
import { principalOf, sendError, type App } from './app.js';
import type { ServerConfig } from './config.js';
import { outcomeError } from './approvals.js';
import type { Caller } from './executions.js';
import type { ExecPolicyDecision } from './policy-hook.js';

const SANDBOX_ID = '^sb-[a-z2-7]{20}$';
const ID_PARAMS = {
  type: 'object',
  additionalProperties: false,
  required: ['id'],
  properties: { id: { type: 'string', pattern: SANDBOX_ID } },
} as const;
/** A sandbox path as it arrives in JSON (UTF-8); the engine bounds it to 4095 bytes. */
const PATH_FIELD = { type: 'string', minLength: 1, maxLength: 4096 } as const;
/** A percent-encoded path in the query: up to 4095 bytes, each possibly `%XX`. */
const PATH_QUERY = { type: 'string', minLength: 1, maxLength: 3 * 4096 } as const;
const BOOL_QUERY = { type: 'string', enum: ['true', 'false'] } as const;
const MAX_SYMLINK_HOPS = 16;
/**
 * While an upload waits for a human approval, up to this much of its body is read into memory so
 * the request completes (Node's requestTimeout only stops counting once the whole request has
 * arrived); the rest waits in the socket under TCP flow control.
 */
const MAX_HELD_UPLOAD_BYTES = 1024 * 1024;
/** All uploads waiting for approval together hold at most this much memory. */
const MAX_HELD_UPLOADS_TOTAL_BYTES = 64 * 1024 * 1024;

/** Status of the files errors (the app's table covers the rest). */
const FILE_STATUS: Partial<Record<ErrorCode, number>> = {
  FILE_NOT_FOUND: 404,
  FILE_EXISTS: 409,
  FILE_TOO_LARGE: 413,
  FILE_PERMISSION_DENIED: 403,
  FILE_NOT_A_DIRECTORY: 409,
  FILE_IS_A_DIRECTORY: 409,
  FILE_DIRECTORY_NOT_EMPTY: 409,
  FILE_CHANGED: 409,
  // The sandbox's own disk quota is full: the caller can fix it by deleting files.
  FILE_NO_SPACE: 409,
  EDIT_NO_MATCH: 422,
  EDIT_NOT_UNIQUE: 422,
  RANGE_NOT_SATISFIABLE: 416,
  // The helper timed out, was killed (e.g. the sandbox's memory limit) or hit an I/O error on
  // what the caller named (/proc/self/mem): the engine's message names only the sandbox path.
  FILE_OPERATION_FAILED: 422,
};

/** The policy engine's file actions (the server's ExecPolicy type only names Bash). */
interface FilePolicy {
  decide(action: {
    tool: FileTool;
    path: string;
  }): ExecPolicyDecision | Promise<ExecPolicyDecision>;
}

function sendFileError(request: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  if (isPalisadeError(err)) {
    const status = FILE_STATUS[err.code];
    if (status !== undefined) {
      const body: Record<string, unknown> = {
        code: err.code,
        message: err.message,
        requestId: request.id,
      };
      if (err.details !== undefined) body.details = { ...err.details };
      if (typeof err.details?.size === 'number' && err.code === 'RANGE_NOT_SATISFIABLE') {
        void reply.header('content-range', `bytes */${err.details.size}`);
      }
      return reply.code(status).type('application/json; charset=utf-8').send(body);
    }
  }
  return sendError(request, reply, err);
}

/**
 * The exact bytes of a query parameter: percent-escapes are decoded to bytes, so a name that
 * is not UTF-8 (`caf%E9`) stays addressable. Fastify's own decoding keeps invalid UTF-8 as
 * the literal escape text, which would silently name a different file.
 */
export function rawQueryBytes(url: string, name: string): Buffer | undefined {
  const q = url.indexOf('?');
  if (q < 0) return undefined;
  for (const part of url.slice(q + 1).split('&')) {
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    if (percentDecode(key).toString('utf8') !== name) continue;
    return percentDecode(eq < 0 ? '' : part.slice(eq + 1));
  }
  return undefined;
}

function percentDecode(text: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x25) {
      const hex = text.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) {
        throw new PalisadeError(
          'INVALID_PATH',
          'The query has a malformed percent-escape; encode the path with encodeURIComponent (bytes as %XX).',
        );
      }
      out.push(parseInt(hex, 16));
      i += 2;
    } else if (c === 0x2b) {
      out.push(0x20);
    } else if (c < 0x80) {
      out.push(c);
    } else {
      out.push(...Buffer.from(text[i] ?? '', 'utf8'));
    }
  }
  return Buffer.from(out);
}

/** The requested path as absolute sandbox bytes (relative paths are under /workspace). */
function queryPath(request: FastifyRequest, name = 'path'): Buffer {
  const decoded = (request.query as Record<string, string | undefined>)[name];
  const raw = rawQueryBytes(request.url, name) ?? (decoded === undefined ? undefined : decoded);
  if (raw === undefined) {
    throw new PalisadeError('INVALID_PATH', `The query parameter "${name}" is required.`);
  }
  return sandboxPathBytes(raw, name);
}

const text = (path: Buffer): string => path.toString('utf8');

/** Audit data for a path: the text, plus the exact bytes when they are not valid UTF-8. */
function auditPath(path: Buffer, key = 'path'): Record<string, string> {
  const t = text(path);
  return Buffer.from(t, 'utf8').equals(path)
    ? { [key]: t }
    : { [key]: t, [`${key}Base64`]: path.toString('base64') };
}

function dirname(path: Buffer): Buffer {
  const slash = path.lastIndexOf(0x2f);
  return slash <= 0 ? Buffer.from('/') : path.subarray(0, slash);
}

/**
 * Content-Disposition for a download (004 L-3): a quoted ASCII fallback with every character
 * that could end the quoted string, split the header or be misread by a browser replaced, and
 * the exact name as RFC 8187 `filename*` (UTF-8, percent-encoded).
 */
export function contentDisposition(name: Buffer): string {
  const full = name.toString('utf8');
  const ascii = full.replace(/[^\x20-\x7e]|["\\%;]/gu, '_') || 'download';
  const encoded = Array.from(Buffer.from(full, 'utf8'))
    .map((b) =>
      /[A-Za-z0-9!#$&+\-.^_`|~]/.test(String.fromCharCode(b))
        ? String.fromCharCode(b)
        : `%${b.toString(16).toUpperCase().padStart(2, '0')}`,
    )
    .join('');
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encoded}`;
}

export interface ByteRange {
  start: number;
  /** Inclusive. */
  end: number;
}

/**
 * One `bytes=` range against a file of `size` bytes. Anything else (other units, several
 * ranges, malformed or unsatisfiable ranges) is refused with 416 rather than silently served
 * whole, so a client never mistakes a full body for the part it asked for.
 */
export function parseRange(header: string, size: number): ByteRange {
  const unsatisfiable = (why: string) =>
    new PalisadeError(
      'RANGE_NOT_SATISFIABLE',
      `Range ${JSON.stringify(header.slice(0, 100))} cannot be served: ${why}. Send one range such as "bytes=0-1023", "bytes=1024-" or "bytes=-512"; the file has ${size} bytes.`,
      { size },
    );
  const m = /^bytes=(\d{0,16})-(\d{0,16})$/.exec(header.trim());
  if (!m) throw unsatisfiable('only a single "bytes=" range is supported');
  const [, first = '', last = ''] = m;
  if (first === '' && last === '') throw unsatisfiable('the range is empty');
  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0 || size === 0) throw unsatisfiable('the range selects no bytes');
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
  if (last !== '' && Number(last) < start) throw unsatisfiable('the last byte is before the first');
  if (start >= size) throw unsatisfiable('it starts at or after the end of the file');
  return { start, end };
}

/**
 * The abort signal of an in-process request (`fastify.inject`, used by MCP over /mcp), which
 * light-my-request keeps on the raw request. Its aborts do not close the injected response once
 * the body was read, so the route listens to the signal itself. Undefined for socket requests.
 */
function inProcessSignal(request: FastifyRequest): AbortSignal | undefined {
  const raw = request.raw as { _lightMyRequest?: { signal?: unknown } };
  const signal = raw._lightMyRequest?.signal;
  return signal instanceof AbortSignal ? signal : undefined;
}

/** How a file action waits for a human approval when the policy asks. */
interface ApprovalWait {
  /** One line for the approver: what will happen (`Write /workspace/a.txt`). */
  action: string;
  /** Aborted when the client goes away: the approval is cancelled. */
  signal: AbortSignal;
  /** Called once the approval is pending (before the wait). */
  onPending?: () => void;
}

/** Memory held by uploads waiting for approval, shared by all of them (one per server). */
interface HeldUploads {
  bytes: number;
}

/**
 * Reads an upload body while its approval is pending, at most `cap` bytes and only while the
 * shared budget lasts, so that a small or medium upload arrives completely and is not cut by the
 * server's request timeout. `data()` then yields the held chunks followed by the rest.
 */
function holdUpload(source: AsyncIterator<Uint8Array>, cap: number, held: HeldUploads) {
  const chunks: Uint8Array[] = [];
  let bytes = 0;
  let ended = false;
  let failure: unknown;
  let stopped = false;
  const loop = (async () => {
    try {
      while (!stopped && bytes < cap && held.bytes < MAX_HELD_UPLOADS_TOTAL_BYTES) {
        const next = await source.next();
        if (next.done) {
          ended = true;
          return;
        }
        chunks.push(next.value);
        bytes += next.value.length;
        held.bytes += next.value.length;
      }
    } catch (err) {
      failure = err;
    }
  })();
  return {
    /** Stops reading ahead (after the chunk being read, if any). */
    async stop(): Promise<void> {
      stopped = true;
      await loop;
    },
    /** Gives the held memory back once the loop is done (never blocks the caller). */
    release(): void {
      stopped = true;
      void loop.then(() => {
        held.bytes -= bytes;
        bytes = 0;
        chunks.length = 0;
      });
    },
    async *data(): AsyncGenerator<Uint8Array> {
      for (let chunk = chunks.shift(); chunk !== undefined; chunk = chunks.shift()) yield chunk;
      if (failure !== undefined) throw failure;
      if (ended) return;
      for (let next = await source.next(); !next.done; next = await source.next()) yield next.value;
    },
  };
}

export function registerFileRoutes(app: App, config: ServerConfig, runtime: SandboxRuntime): void {
  const { sandboxes, audit, approvals } = app;
  const heldUploads: HeldUploads = { bytes: 0 };
  const limits = config.files;
  const files: SandboxFiles = createSandboxFiles(runtime, {
    maxReadBytes: limits.maxReadBytes,
    maxWriteBytes: limits.maxWriteBytes,
    maxEditBytes: limits.maxEditBytes,
    maxListEntries: limits.maxListEntries,
  });

  /** Resolves the sandbox for the caller: another tenant's is 404, a paused one 409. */
  async function target(request: FastifyRequest): Promise<{ caller: Caller; id: string }> {
    const caller = principalOf(request);
    const { id } = request.params as { id: string };
    await sandboxes.assertRunning(caller, id);
    return { caller, id };
  }

  /**
   * Checks a file action against the sandbox's permission policy (its own layer, else the
   * operator's) and audits each decision. Deny refuses at once. Ask waits for one human approval
   * covering the whole action (every check that asked): approved, it returns the approval id;
   * denied, expired or cancelled (the client went away), it throws. No policy: allowed.
   */
  async function authorize(
    caller: Caller,
    id: string,
    checks: Array<{ tool: FileTool; path: Buffer }>,
    wait: ApprovalWait,
  ): Promise<string | null> {
    const policy = sandboxes.policyFor(id) as FilePolicy | undefined;
    if (!policy) return null;
    const asked: Array<{ tool: FileTool; path: Buffer; reason: string }> = [];
    for (const { tool, path } of checks) {
      const shown = text(path);
      const decision = await policy.decide({ tool, path: shown });
      await audit.append({
        type: 'policy.decision',
        tenant: caller.tenant,
        sandboxId: id,
        actor: caller.keyId,
        data: {
          tool,
          ...auditPath(path),
          decision: decision.decision,
          reason: decision.reason,
        },
      });
      if (decision.decision === 'deny') {
        throw new PalisadeError(
          'POLICY_DENIED',
          `The permission policy denies ${tool} on ${JSON.stringify(shown)}: ${decision.reason}`,
          { decision: 'deny', reason: decision.reason, tool },
        );
      }
      if (decision.decision === 'ask') asked.push({ tool, path, reason: decision.reason });
    }
    const first = asked[0];
    if (!first) return null;
    const { view, outcome } = await approvals.request({
      tenant: caller.tenant,
      sandboxId: id,
      keyId: caller.keyId,
      tool: first.tool,
      path: text(first.path),
      command: wait.action,
      policyReason: [...new Set(asked.map((a) => `${a.tool}: ${a.reason}`))].join('; '),
      signal: wait.signal,
    });
    wait.onPending?.();
    const result = await outcome;
    if (result.status !== 'approved') {
      throw outcomeError(view.id, result, approvals.config.timeoutMs, 'file action');
    }
    return view.id;
  }

  /** Audits a read-only action that needed (and got) a human approval. */
  async function auditApprovedRead(
    caller: Caller,
    id: string,
    type: string,
    approvalId: string | null,
    data: Record<string, unknown>,
  ): Promise<void> {
    if (approvalId === null) return;
    await audit.append({
      type,
      tenant: caller.tenant,
      sandboxId: id,
      actor: caller.keyId,
      data: { ...data, approvalId },
    });
  }

  /** True if a path may be shown (search results): only an explicit allow, no audit entry. */
  async function visible(id: string, path: Buffer): Promise<boolean> {
    const policy = sandboxes.policyFor(id) as FilePolicy | undefined;
    if (!policy) return true;
    return (await policy.decide({ tool: 'Glob', path: text(path) })).decision === 'allow';
  }

  /** Runs a change and audits it, whether it succeeded or failed (never file contents). */
  async function audited<T>(
    caller: Caller,
    id: string,
    type: string,
    data: Record<string, unknown>,
    run: () => Promise<T>,
    result?: (value: T) => Record<string, unknown>,
  ): Promise<T> {
    try {
      const value = await run();
      await audit.append({
        type,
        tenant: caller.tenant,
        sandboxId: id,
        actor: caller.keyId,
        data: { ...data, ...(result ? result(value) : {}), ok: true },
      });
      return value;
    } catch (err) {
      await audit
        .append({
          type,
          tenant: caller.tenant,
          sandboxId: id,
          actor: caller.keyId,
          data: { ...data, ok: false, error: isPalisadeError(err) ? err.code : 'INTERNAL' },
        })
        .catch(() => undefined);
      throw err;
    }
  }

  /**
   * lstat, following a final symlink (up to 16 hops, each resolved by the kernel inside the
   * sandbox) so a download knows the size of what it will read. Returns the last path too.
   */
  async function statFollowing(id: string, path: Buffer): Promise<{ st: FileStat; at: Buffer }> {
    let at = path;
    for (let hop = 0; hop <= MAX_SYMLINK_HOPS; hop++) {
      const st = await files.stat(id, at);
      if (st.type !== 'symlink' || !st.rawTarget) return { st, at };
      at =
        st.rawTarget[0] === 0x2f
          ? st.rawTarget
          : Buffer.concat([dirname(at), Buffer.from('/'), st.rawTarget]);
      at = sandboxPathBytes(at);
    }
    throw new PalisadeError(
      'INVALID_PATH',
      `cannot read ${JSON.stringify(text(path))}: too many levels of symbolic links`,
    );
  }

  /**
   * Wraps a route: errors become JSON error responses, and `signal` aborts when the client goes
   * away before the response is complete (which cancels a pending approval), or when an
   * in-process caller (MCP over /mcp) aborts its request.
   */
  const handle =
    (
      run: (request: FastifyRequest, reply: FastifyReply, signal: AbortSignal) => Promise<unknown>,
    ) =>
    async (request: FastifyRequest, reply: FastifyReply): Promise<unknown> => {
      const abort = new AbortController();
      const onClose = () => {
        if (!reply.raw.writableFinished) abort.abort();
      };
      reply.raw.on('close', onClose);
      const inProcess = inProcessSignal(request);
      const onInProcessAbort = () => abort.abort();
      if (inProcess?.aborted) abort.abort();
      inProcess?.addEventListener('abort', onInProcessAbort, { once: true });
      try {
        return await run(request, reply, abort.signal);
      } catch (err) {
        return sendFileError(request, reply, err);
      } finally {
        reply.raw.off('close', onClose);
        inProcess?.removeEventListener('abort', onInProcessAbort);
      }
    };

  const access = (scope: 'sandboxes:read' | 'sandboxes:write', summary: string) => ({
    access: { scope, category: scope === 'sandboxes:read' ? 'read' : 'write', summary } as const,
  });

  const { fastify } = app;

  fastify.get(
    '/v1/sandboxes/:id/files',
    {
      config: access(
        'sandboxes:read',
        'Download a file: raw bytes (application/octet-stream), streamed; one Range (bytes=a-b, a-, -n) gives 206',
      ),
      schema: {
        params: ID_PARAMS,
        querystring: {
          type: 'object',
          additionalProperties: false,
          required: ['path'],
          properties: { path: PATH_QUERY },
        },
        produces: ['application/octet-stream'],
      },
    },
    handle(async (request, reply, signal) => {
      const { caller, id } = await target(request);
      const path = queryPath(request);
      let approvalId = await authorize(caller, id, [{ tool: 'Read', path }], {
        action: `Read ${text(path)}`,
        signal,
      });
      const { st, at } = await statFollowing(id, path);
      // A final symlink is read where it points: that place must be readable by the policy too.
      if (!at.equals(path)) {
        approvalId =
          (await authorize(caller, id, [{ tool: 'Read', path: at }], {
            action: `Read ${text(at)} (the target of the symlink ${text(path)})`,
            signal,
          })) ?? approvalId;
      }
      if (st.type === 'directory') {
        throw new PalisadeError(
          'FILE_IS_A_DIRECTORY',
          `cannot read ${JSON.stringify(text(path))}: it is a directory; list it with GET /v1/sandboxes/${id}/files/list?path=…`,
        );
      }
      if (st.type !== 'file') {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          `cannot read ${JSON.stringify(text(path))}: it is not a regular file (${st.type})`,
        );
      }
      const rangeHeader = request.headers.range;
      const range = typeof rangeHeader === 'string' ? parseRange(rangeHeader, st.size) : undefined;
      const offset = range?.start ?? 0;
      const length = range ? range.end - range.start + 1 : st.size;
      if (length > limits.maxReadBytes) {
        throw new PalisadeError(
          'FILE_TOO_LARGE',
          `cannot read ${JSON.stringify(text(path))}: ${length} bytes is more than the download limit of ${limits.maxReadBytes} bytes; request it in parts with a Range header (e.g. "bytes=0-${limits.maxReadBytes - 1}")`,
          { limit: limits.maxReadBytes, size: st.size },
        );
      }
      await auditApprovedRead(caller, id, 'file.read', approvalId, {
        ...auditPath(path),
        offset,
        length,
      });
      const name = path.subarray(path.lastIndexOf(0x2f) + 1);
      void reply
        .code(range ? 206 : 200)
        .header('content-type', 'application/octet-stream')
        .header('content-disposition', contentDisposition(name))
        .header('accept-ranges', 'bytes')
        .header('last-modified', st.mtime.toUTCString())
        .header('content-length', String(length));
      if (range) void reply.header('content-range', `bytes ${range.start}-${range.end}/${st.size}`);
      if (length === 0) return reply.send();
      if (request.method === 'HEAD') {
        // Headers only: Fastify would replace Content-Length of an empty body with 0.
        void reply.hijack();
        reply.raw.writeHead(range ? 206 : 200, reply.getHeaders() as Record<string, string>);
        reply.raw.end();
        return reply;
      }
      const chunks = files.readStream(id, path, { offset, length })[Symbol.asyncIterator]();
      // The first chunk decides errors while a JSON error can still be sent.
      const first = await chunks.next();
      return reply.send(Readable.from(exactly(first, chunks, length, path), { objectMode: false }));
    }),
  );

  const uploads = async (scope: FastifyInstance): Promise<void> => {
    // The body is the file: any content type, passed on as the request stream (never buffered).
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_request, payload, done) => done(null, payload));
    scope.put(
      '/v1/sandboxes/:id/files',
      {
        config: access(
          'sandboxes:write',
          'Write a file from the raw request body (created, or replaced atomically); 201 {path, size}',
        ),
        schema: {
          params: ID_PARAMS,
          querystring: {
            type: 'object',
            additionalProperties: false,
            required: ['path'],
            properties: {
              path: PATH_QUERY,
              mode: { type: 'string', pattern: '^0?[0-7]{1,4}$' },
              createOnly: BOOL_QUERY,
            },
          },
          consumes: ['application/octet-stream'],
        },
      },
      handle(async (request, reply, signal) => {
        const { caller, id } = await target(request);
        const path = queryPath(request);
        const q = request.query as { mode?: string; createOnly?: string };
        const declared = Number(request.headers['content-length'] ?? 0);
        if (declared > limits.maxWriteBytes) {
          // The rest of the body is discarded by Node; closing avoids reusing a busy connection.
          void reply.header('connection', 'close');
          throw new PalisadeError(
            'FILE_TOO_LARGE',
            `cannot write ${JSON.stringify(text(path))}: the body (${declared} bytes) is larger than the upload limit of ${limits.maxWriteBytes} bytes`,
            { limit: limits.maxWriteBytes },
          );
        }
        const mode = q.mode === undefined ? undefined : parseInt(q.mode, 8);
        const body = request.body as Readable | undefined;
        // Not destroyed when the engine stops early (limit hit), so the error can be sent.
        const source =
          body && typeof body.iterator === 'function'
            ? body.iterator({ destroyOnReturn: false })
            : undefined;
        let held: ReturnType<typeof holdUpload> | undefined;
        try {
          const approvalId = await authorize(caller, id, [{ tool: 'Write', path }], {
            action: `Write ${text(path)}${declared > 0 ? ` (${declared} bytes)` : ''}`,
            signal,
            onPending: () => {
              if (source) {
                held = holdUpload(
                  source,
                  Math.min(MAX_HELD_UPLOAD_BYTES, limits.maxWriteBytes + 1),
                  heldUploads,
                );
              }
            },
          });
          await held?.stop();
          const data: AsyncIterable<Uint8Array> | Uint8Array = held
            ? held.data()
            : source
              ? { [Symbol.asyncIterator]: () => source }
              : new Uint8Array(0);
          const { size } = await audited(
            caller,
            id,
            'file.write',
            {
              ...auditPath(path),
              mode: mode ?? null,
              createOnly: q.createOnly === 'true',
              ...(approvalId !== null ? { approvalId } : {}),
            },
            () =>
              files.write(id, path, data, {
                ...(mode !== undefined ? { mode } : {}),
                createOnly: q.createOnly === 'true',
              }),
            (r) => ({ size: r.size }),
          );
          return reply.code(201).send({ path: text(path), size });
        } catch (err) {
          if (body && !body.readableEnded) void reply.header('connection', 'close');
          throw err;
        } finally {
          held?.release();
        }
      }),
    );
  };
  void fastify.register(uploads);

  fastify.delete(
    '/v1/sandboxes/:id/files',
    {
      config: access(
        'sandboxes:write',
        'Delete a file or empty directory; recursive=true deletes a tree (symlinks are never followed)',
      ),
      schema: {
        params: ID_PARAMS,
        querystring: {
          type: 'object',
          additionalProperties: false,
          required: ['path'],
          properties: { path: PATH_QUERY, recursive: BOOL_QUERY },
        },
      },
    },
    handle(async (request, reply, signal) => {
      const { caller, id } = await target(request);
      const path = queryPath(request);
      const recursive = (request.query as { recursive?: string }).recursive === 'true';
      const approvalId = await authorize(caller, id, [{ tool: 'Write', path }], {
        action: `Delete ${text(path)}${recursive ? ' (recursively)' : ''}`,
        signal,
      });
      await audited(
        caller,
        id,
        'file.delete',
        { ...auditPath(path), recursive, ...(approvalId !== null ? { approvalId } : {}) },
        () => files.remove(id, path, { recursive }),
      );
      return reply.code(204).send();
    }),
  );

  fastify.get(
    '/v1/sandboxes/:id/files/list',
    {
      config: access(
        'sandboxes:read',
        'List a directory: {entries: [{name, nameBase64, type, size, mode, mtime}], truncated}',
      ),
      schema: {
        params: ID_PARAMS,
        querystring: {
          type: 'object',
          additionalProperties: false,
          required: ['path'],
          properties: { path: PATH_QUERY },
        },
      },
    },
    handle(async (request, _reply, signal) => {
      const { caller, id } = await target(request);
      const path = queryPath(request);
      const approvalId = await authorize(caller, id, [{ tool: 'LS', path }], {
        action: `List ${text(path)}`,
        signal,
      });
      const { entries, truncated } = await files.list(id, path);
      await auditApprovedRead(caller, id, 'file.list', approvalId, auditPath(path));
      return {
        entries: entries.map((e) => ({
          name: e.name,
          nameBase64: e.rawName.toString('base64'),
          type: e.type,
          size: e.size,
          mode: e.mode,
          mtime: e.mtime.toISOString(),
        })),
        truncated,
      };
    }),
  );

  fastify.get(
    '/v1/sandboxes/:id/files/stat',
    {
      config: access(
        'sandboxes:read',
        'Stat a path without following a final symlink: {path, type, size, mode, mtime, target?}',
      ),
      schema: {
        params: ID_PARAMS,
        querystring: {
          type: 'object',
          additionalProperties: false,
          required: ['path'],
          properties: { path: PATH_QUERY },
        },
      },
    },
    handle(async (request, _reply, signal) => {
      const { caller, id } = await target(request);
      const path = queryPath(request);
      const approvalId = await authorize(caller, id, [{ tool: 'Read', path }], {
        action: `Stat ${text(path)}`,
        signal,
      });
      const st = await files.stat(id, path);
      await auditApprovedRead(caller, id, 'file.stat', approvalId, auditPath(path));
      return {
        path: text(path),
        type: st.type,
        size: st.size,
        mode: st.mode,
        mtime: st.mtime.toISOString(),
        ...(st.target !== undefined ? { target: st.target } : {}),
      };
    }),
  );

  fastify.post(
    '/v1/sandboxes/:id/files/mkdir',
    {
      config: access(
        'sandboxes:write',
        'Create a directory (parents=true: with missing parents); 201 {path}',
      ),
      schema: {
        params: ID_PARAMS,
        querystring: { type: 'object', additionalProperties: false, properties: {} },
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['path'],
          properties: { path: PATH_FIELD, parents: { type: 'boolean' } },
        },
      },
    },
    handle(async (request, reply, signal) => {
      const { caller, id } = await target(request);
      const body = request.body as { path: string; parents?: boolean };
      const path = sandboxPathBytes(body.path);
      const parents = body.parents === true;
      const approvalId = await authorize(caller, id, [{ tool: 'Write', path }], {
        action: `Create directory ${text(path)}${parents ? ' (with parents)' : ''}`,
        signal,
      });
      await audited(
        caller,
        id,
        'file.mkdir',
        { ...auditPath(path), parents, ...(approvalId !== null ? { approvalId } : {}) },
        () => files.mkdir(id, path, { parents }),
      );
      return reply.code(201).send({ path: text(path) });
    }),
  );

  fastify.post(
    '/v1/sandboxes/:id/files/move',
    {
      config: access(
        'sandboxes:write',
        'Move or rename (overwrite=true replaces an existing destination); {from, to}',
      ),
      schema: {
        params: ID_PARAMS,
        querystring: { type: 'object', additionalProperties: false, properties: {} },
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['from', 'to'],
          properties: { from: PATH_FIELD, to: PATH_FIELD, overwrite: { type: 'boolean' } },
        },
      },
    },
    handle(async (request, _reply, signal) => {
      const { caller, id } = await target(request);
      const body = request.body as { from: string; to: string; overwrite?: boolean };
      const from = sandboxPathBytes(body.from, 'from');
      const to = sandboxPathBytes(body.to, 'to');
      const overwrite = body.overwrite === true;
      // Moving makes the source's content appear at the destination: it must be readable too.
      const approvalId = await authorize(
        caller,
        id,
        [
          { tool: 'Read', path: from },
          { tool: 'Write', path: from },
          { tool: 'Write', path: to },
        ],
        {
          action: `Move ${text(from)} to ${text(to)}${overwrite ? ' (overwriting)' : ''}`,
          signal,
        },
      );
      await audited(
        caller,
        id,
        'file.move',
        {
          ...auditPath(from, 'from'),
          ...auditPath(to, 'to'),
          overwrite,
          ...(approvalId !== null ? { approvalId } : {}),
        },
        () => files.move(id, from, to, { overwrite }),
      );
      return { from: text(from), to: text(to) };
    }),
  );

  fastify.post(
    '/v1/sandboxes/:id/files/edit',
    {
      config: access(
        'sandboxes:write',
        'Replace an exact string in a file (unique unless replaceAll); {replacements}',
      ),
      schema: {
        params: ID_PARAMS,
        querystring: { type: 'object', additionalProperties: false, properties: {} },
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['path', 'oldText', 'newText'],
          properties: {
            path: PATH_FIELD,
            oldText: { type: 'string', minLength: 1, maxLength: config.bodyLimitBytes },
            newText: { type: 'string', maxLength: config.bodyLimitBytes },
            replaceAll: { type: 'boolean' },
          },
        },
      },
    },
    handle(async (request, _reply, signal) => {
      const { caller, id } = await target(request);
      const body = request.body as {
        path: string;
        oldText: string;
        newText: string;
        replaceAll?: boolean;
      };
      const path = sandboxPathBytes(body.path);
      const replaceAll = body.replaceAll === true;
      // Whether the text occurs is itself a read of the file.
      const approvalId = await authorize(
        caller,
        id,
        [
          { tool: 'Read', path },
          { tool: 'Edit', path },
        ],
        {
          action: `Edit ${text(path)}: replace ${Buffer.byteLength(body.oldText)} bytes of text with ${Buffer.byteLength(body.newText)} bytes${replaceAll ? ' (every occurrence)' : ''}`,
          signal,
        },
      );
      return audited(
        caller,
        id,
        'file.edit',
        {
          ...auditPath(path),
          oldBytes: Buffer.byteLength(body.oldText),
          newBytes: Buffer.byteLength(body.newText),
          replaceAll,
          ...(approvalId !== null ? { approvalId } : {}),
        },
        () => files.edit(id, path, body.oldText, body.newText, { replaceAll }),
        (r) => ({ replacements: r.replacements }),
      );
    }),
  );

  fastify.post(
    '/v1/sandboxes/:id/files/search',
    {
      config: access(
        'sandboxes:read',
        'Find paths under a directory by glob (*, ?, [..], **); {matches: [{path, pathBase64, type}], truncated}',
      ),
      schema: {
        params: ID_PARAMS,
        querystring: { type: 'object', additionalProperties: false, properties: {} },
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['path', 'glob'],
          properties: {
            path: PATH_FIELD,
            glob: { type: 'string', minLength: 1, maxLength: 1024 },
            maxResults: { type: 'integer', minimum: 1, maximum: limits.maxSearchResults },
          },
        },
      },
    },
    handle(async (request, _reply, signal) => {
      const { caller, id } = await target(request);
      const body = request.body as { path: string; glob: string; maxResults?: number };
      const dir = sandboxPathBytes(body.path);
      const approvalId = await authorize(caller, id, [{ tool: 'Glob', path: dir }], {
        action: `Search ${text(dir)} for ${JSON.stringify(body.glob)}`,
        signal,
      });
      await auditApprovedRead(caller, id, 'file.search', approvalId, {
        ...auditPath(dir),
        glob: body.glob,
      });
      const { matches, truncated } = await files.search(id, dir, body.glob, {
        maxResults: body.maxResults ?? Math.min(1000, limits.maxSearchResults),
      });
      const out: Array<{ path: string; pathBase64: string; type: string }> = [];
      for (const m of matches) {
        // The walk descends into directories the policy may hide; their entries are left out.
        const full = Buffer.concat([dir, Buffer.from('/'), m.rawPath]);
        if (!(await visible(id, full))) continue;
        out.push({ path: m.path, pathBase64: m.rawPath.toString('base64'), type: m.type });
      }
      return { matches: out, truncated };
    }),
  );
}

/**
 * Yields the prefetched chunk and the rest, and fails (so the response is cut, not completed
 * short or long) unless exactly `length` bytes arrive: the file changed after it was stat'ed.
 */
async function* exactly(
  first: IteratorResult<Buffer>,
  rest: AsyncIterator<Buffer>,
  length: number,
  path: Buffer,
): AsyncGenerator<Buffer> {
  let sent = 0;
  let done = false;
  try {
    let next = first;
    while (!next.done) {
      sent += next.value.length;
      if (sent > length) break;
      yield next.value;
      next = await rest.next();
    }
    done = next.done === true;
  } finally {
    if (!done) await rest.return?.();
  }
  if (sent !== length) {
    throw new PalisadeError(
      'FILE_CHANGED',
      `cannot read ${JSON.stringify(text(path))}: the file changed during the download; try again`,
    );
  }
}
