/**
 * File operations on a sandbox's filesystem. Every operation runs the files helper
 * (native/src/palisade-files.c, mounted read-only at /.palisade/files) INSIDE the sandbox
 * through the ordinary exec path: as the sandbox user, in the sandbox's mount namespace,
 * under its seccomp filter and cgroup. The kernel resolves every path against the sandbox's
 * own view, so no symlink, `..` or concurrent rename can reach a host file, and the host
 * never resolves a sandbox path itself.
 */
import { isPalisadeError, PalisadeError, type ErrorCode } from '../errors/index.js';
import { FILES_HELPER_PATH, WORKSPACE } from './bwrap/layout.js';
import { assertSandboxId } from './ids.js';
import type { ExecResult, SandboxRuntime } from './types.js';

/** A path inside the sandbox: absolute, or relative to /workspace. Bytes allow non-UTF-8 names. */
export type SandboxPath = string | Uint8Array;

export type FileType =
  'file' | 'directory' | 'symlink' | 'fifo' | 'socket' | 'char-device' | 'block-device' | 'other';

export interface FileInfo {
  type: FileType;
  size: number;
  /** Permission bits (e.g. 0o644), including setuid/setgid/sticky. */
  mode: number;
  mtime: Date;
  /** Owner as seen inside the sandbox (1000 is the sandbox user). */
  uid: number;
  gid: number;
}

export interface FileEntry extends FileInfo {
  /** The name decoded as UTF-8 (invalid bytes become U+FFFD). */
  name: string;
  /** The exact name bytes; pass them (joined to the directory) to address non-UTF-8 names. */
  rawName: Buffer;
}

export interface FileStat extends FileInfo {
  /** For symlinks: where the link points (not followed). */
  target?: string;
  rawTarget?: Buffer;
}

export interface SearchMatch extends FileInfo {
  /** Path relative to the searched directory. */
  path: string;
  rawPath: Buffer;
}

export interface SandboxFilesOptions {
  /** Largest read (bytes returned by one read/readStream). @default 64 MiB */
  maxReadBytes?: number;
  /** Largest file a write may produce. @default 64 MiB */
  maxWriteBytes?: number;
  /** Largest file edit may rewrite (it is held in memory inside the sandbox). @default 16 MiB */
  maxEditBytes?: number;
  /** Bytes fetched per helper run while reading; must not exceed the engine's maxOutputBytesLimit. @default 4 MiB */
  readChunkBytes?: number;
  /** Time limit of one helper run. Must not exceed the engine's maxExecTimeoutMs. @default 60 s */
  timeoutMs?: number;
  /** Most entries one list returns. @default 10 000 */
  maxListEntries?: number;
}

export interface SandboxFiles {
  read(
    id: string,
    path: SandboxPath,
    options?: { offset?: number; length?: number },
  ): Promise<Buffer>;
  /** Streams the bytes in chunks; fails with FILE_CHANGED if the file is replaced or modified mid-stream. */
  readStream(
    id: string,
    path: SandboxPath,
    options?: { offset?: number; length?: number },
  ): AsyncIterable<Buffer>;
  /** Creates or atomically replaces a file (temp file in the same directory, then rename). */
  write(
    id: string,
    path: SandboxPath,
    data: string | Uint8Array | AsyncIterable<Uint8Array>,
    options?: { mode?: number; createOnly?: boolean },
  ): Promise<{ size: number }>;
  list(
    id: string,
    dir: SandboxPath,
    options?: { maxEntries?: number },
  ): Promise<{ entries: FileEntry[]; truncated: boolean }>;
  /** Like lstat: a symlink is reported as a symlink, not followed. */
  stat(id: string, path: SandboxPath): Promise<FileStat>;
  mkdir(
    id: string,
    path: SandboxPath,
    options?: { parents?: boolean; mode?: number },
  ): Promise<void>;
  move(
    id: string,
    from: SandboxPath,
    to: SandboxPath,
    options?: { overwrite?: boolean },
  ): Promise<void>;
  remove(id: string, path: SandboxPath, options?: { recursive?: boolean }): Promise<void>;
  search(
    id: string,
    dir: SandboxPath,
    glob: string,
    options?: { maxResults?: number; maxDepth?: number },
  ): Promise<{ matches: SearchMatch[]; truncated: boolean }>;
  edit(
    id: string,
    path: SandboxPath,
    oldText: string | Uint8Array,
    newText: string | Uint8Array,
    options?: { replaceAll?: boolean },
  ): Promise<{ replacements: number }>;
}

const MiB = 1024 * 1024;
export const FILES_DEFAULTS = {
  maxReadBytes: 64 * MiB,
  maxWriteBytes: 64 * MiB,
  maxEditBytes: 16 * MiB,
  readChunkBytes: 4 * MiB,
  timeoutMs: 60_000,
  maxListEntries: 10_000,
} as const;

/** Path length limit of the helper (PATH_MAX less the terminator). */
const MAX_PATH_BYTES = 4095;
const MAX_GLOB_BYTES = 1024;
const MAX_SEARCH_RESULTS = 100_000;
const MAX_SEARCH_DEPTH = 64;
const MAX_LIST_ENTRIES = 50_000;
/** Upper bound of one JSON line the helper prints per entry (base64 name of 255 bytes + fields). */
const ENTRY_LINE_BYTES = 1024;
const SEARCH_LINE_BYTES = (MAX_PATH_BYTES * 4) / 3 + 256;
/** Bytes of stdin sent per writeStdin while streaming a write. */
const STREAM_WRITE_CHUNK = 256 * 1024;

interface HelperError {
  code: string;
  op: string;
  errno: number;
  detail: string;
}

function positiveInt(value: unknown, name: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) {
    throw new PalisadeError('INVALID_LIMIT', `${name} must be a whole number between 1 and ${max}`);
  }
  return value;
}

function flag(value: unknown, name: string): '0' | '1' {
  if (value === undefined) return '0';
  if (typeof value !== 'boolean')
    throw new PalisadeError('INVALID_ARGUMENT', `${name} must be true or false`);
  return value ? '1' : '0';
}

function modeArg(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0o7777) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'mode must be a whole number between 0 and 0o7777 (e.g. 0o644)',
    );
  }
  return String(value);
}

/** The path as the bytes the sandbox will see; relative paths are under /workspace. */
export function sandboxPathBytes(path: unknown, name = 'path'): Buffer {
  let bytes: Buffer;
  if (typeof path === 'string') {
    bytes = Buffer.from(path, 'utf8');
    if (bytes.toString('utf8') !== path) {
      throw new PalisadeError(
        'INVALID_PATH',
        `${name} is not valid Unicode (it has unpaired surrogates)`,
      );
    }
  } else if (path instanceof Uint8Array) {
    bytes = Buffer.from(path);
  } else {
    throw new PalisadeError('INVALID_PATH', `${name} must be a string or bytes`);
  }
  if (bytes.length === 0) throw new PalisadeError('INVALID_PATH', `${name} must not be empty`);
  if (bytes.includes(0))
    throw new PalisadeError('INVALID_PATH', `${name} must not contain NUL bytes`);
  if (bytes[0] !== 0x2f) bytes = Buffer.concat([Buffer.from(`${WORKSPACE}/`), bytes]);
  if (bytes.length > MAX_PATH_BYTES) {
    throw new PalisadeError('INVALID_PATH', `${name} is longer than ${MAX_PATH_BYTES} bytes`);
  }
  return bytes;
}

function shown(path: Buffer): string {
  return JSON.stringify(path.toString('utf8'));
}

function parseInfo(o: Record<string, unknown>): FileInfo {
  return {
    type: String(o.type) as FileType,
    size: Number(o.size),
    mode: Number(o.mode),
    mtime: new Date(Number(o.mtimeMs)),
    uid: Number(o.uid),
    gid: Number(o.gid),
  };
}

function jsonLines(out: Buffer): Array<Record<string, unknown>> {
  const lines = out
    .toString('utf8')
    .split('\n')
    .filter((l) => l.length > 0);
  return lines.map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function* chunksOf(data: Uint8Array): AsyncIterable<Uint8Array> {
  for (let i = 0; i < data.length; i += STREAM_WRITE_CHUNK) {
    yield data.subarray(i, i + STREAM_WRITE_CHUNK);
  }
}

export function createSandboxFiles(
  runtime: SandboxRuntime,
  options: SandboxFilesOptions = {},
): SandboxFiles {
  const maxReadBytes = positiveInt(
    options.maxReadBytes ?? FILES_DEFAULTS.maxReadBytes,
    'maxReadBytes',
  );
  const maxWriteBytes = positiveInt(
    options.maxWriteBytes ?? FILES_DEFAULTS.maxWriteBytes,
    'maxWriteBytes',
  );
  const maxEditBytes = positiveInt(
    options.maxEditBytes ?? FILES_DEFAULTS.maxEditBytes,
    'maxEditBytes',
  );
  const readChunkBytes = positiveInt(
    options.readChunkBytes ?? FILES_DEFAULTS.readChunkBytes,
    'readChunkBytes',
  );
  const timeoutMs = positiveInt(options.timeoutMs ?? FILES_DEFAULTS.timeoutMs, 'timeoutMs');
  const maxListEntries = positiveInt(
    options.maxListEntries ?? FILES_DEFAULTS.maxListEntries,
    'maxListEntries',
    MAX_LIST_ENTRIES,
  );

  function fail(
    id: string,
    what: string,
    path: Buffer,
    err: HelperError,
    limit?: number,
  ): PalisadeError {
    const p = shown(path);
    const details = { sandboxId: id, path: path.toString('utf8') };
    const make = (
      code: ErrorCode,
      message: string,
      extra: Record<string, unknown> = {},
    ): PalisadeError => new PalisadeError(code, message, { ...details, ...extra });
    switch (err.code) {
      case 'NOT_FOUND':
        return make(
          'FILE_NOT_FOUND',
          `cannot ${what} ${p}: no such file or directory in sandbox ${id}`,
        );
      case 'NOT_A_DIRECTORY':
        return make(
          'FILE_NOT_A_DIRECTORY',
          `cannot ${what} ${p}: a component of the path is not a directory`,
        );
      case 'IS_A_DIRECTORY':
        return make('FILE_IS_A_DIRECTORY', `cannot ${what} ${p}: it is a directory`);
      case 'PERMISSION_DENIED':
        return make(
          'FILE_PERMISSION_DENIED',
          `cannot ${what} ${p}: the sandbox user is not allowed to`,
        );
      case 'READ_ONLY':
        return make(
          'FILE_PERMISSION_DENIED',
          `cannot ${what} ${p}: that part of the sandbox's filesystem is read-only (write under /workspace or /tmp)`,
        );
      case 'EXISTS':
        return make('FILE_EXISTS', `cannot ${what} ${p}: it already exists`);
      case 'NOT_EMPTY':
        return make(
          'FILE_DIRECTORY_NOT_EMPTY',
          `cannot ${what} ${p}: the directory is not empty (pass recursive: true to remove it with its contents)`,
        );
      case 'NO_SPACE':
        return make(
          'FILE_NO_SPACE',
          `cannot ${what} ${p}: the sandbox's disk is full (its quota is used up)`,
        );
      case 'TOO_LARGE':
        return make(
          'FILE_TOO_LARGE',
          `cannot ${what} ${p}: it is larger than the limit of ${limit ?? 'the allowed'} bytes`,
          limit === undefined ? {} : { limit },
        );
      case 'CHANGED':
        return make(
          'FILE_CHANGED',
          `cannot ${what} ${p}: the file changed during the operation; try again`,
        );
      case 'NO_MATCH':
        return make(
          'EDIT_NO_MATCH',
          `cannot edit ${p}: the text to replace does not occur in the file`,
        );
      case 'NOT_UNIQUE': {
        const count = Number(err.detail);
        return make(
          'EDIT_NOT_UNIQUE',
          `cannot edit ${p}: the text to replace occurs ${count} times; give more context to make it unique, or pass replaceAll: true`,
          { occurrences: count },
        );
      }
      case 'LOOP':
        return make('INVALID_PATH', `cannot ${what} ${p}: too many levels of symbolic links`);
      case 'CROSS_DEVICE':
        return make(
          'INVALID_ARGUMENT',
          `cannot ${what} ${p}: source and destination are on different filesystems (e.g. /tmp and /workspace); read and write the file instead`,
        );
      case 'BUSY':
        return make('CONFLICT', `cannot ${what} ${p}: it is a mount point of the sandbox`);
      case 'INVALID':
        return make(
          'INVALID_ARGUMENT',
          `cannot ${what} ${p}: ${/^[ -~]{1,200}$/.test(err.detail) && !err.detail.includes('"') ? err.detail : 'invalid request'}`,
        );
      default:
        return make(
          'FILE_OPERATION_FAILED',
          `cannot ${what} ${p}: the operation failed (${err.op})`,
        );
    }
  }

  /** Turns a finished helper run into its stdout, or the mapped error. */
  function check(id: string, what: string, path: Buffer, r: ExecResult, limit?: number): Buffer {
    if (r.timedOut) {
      throw new PalisadeError(
        'FILE_OPERATION_FAILED',
        `cannot ${what} ${shown(path)}: it took longer than ${timeoutMs} ms`,
        { sandboxId: id, path: path.toString('utf8') },
      );
    }
    if (r.exitCode === 0 && !r.stdoutTruncated) return r.stdout;
    if (r.exitCode === 1) {
      let parsed: HelperError | undefined;
      try {
        const line = r.stderr.toString('utf8').split('\n')[0] ?? '';
        const o = JSON.parse(line) as Record<string, unknown>;
        if (typeof o.code === 'string') {
          parsed = {
            code: o.code,
            op: typeof o.op === 'string' && /^[a-z]{1,16}$/.test(o.op) ? o.op : 'unknown',
            errno: Number(o.errno),
            detail: typeof o.detail === 'string' ? o.detail : '',
          };
        }
      } catch {
        // not the helper's report; fall through to the generic error
      }
      if (parsed) throw fail(id, what, path, parsed, limit);
    }
    throw new PalisadeError(
      'FILE_OPERATION_FAILED',
      `cannot ${what} ${shown(path)}: the file helper ended unexpectedly (${r.signal ?? `exit ${r.exitCode}`})`,
      { sandboxId: id, path: path.toString('utf8') },
    );
  }

  function run(
    id: string,
    args: string[],
    maxOutputBytes: number,
    stdin?: Uint8Array,
  ): Promise<ExecResult> {
    return runtime.run(id, {
      argv: [FILES_HELPER_PATH, ...args],
      cwd: '/',
      timeoutMs,
      maxOutputBytes,
      ...(stdin === undefined ? {} : { stdin }),
    });
  }

  const hex = (b: Buffer): string => b.toString('hex');

  function rangeArgs(options: { offset?: number; length?: number } | undefined): {
    offset: number;
    length: number | undefined;
  } {
    const offset = options?.offset ?? 0;
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'offset must be a whole number of bytes, 0 or more',
      );
    }
    const length = options?.length;
    if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'length must be a whole number of bytes, 0 or more',
      );
    }
    return { offset, length };
  }

  async function* readStream(
    id: string,
    pathIn: SandboxPath,
    options?: { offset?: number; length?: number },
  ): AsyncGenerator<Buffer> {
    assertSandboxId(id);
    const path = sandboxPathBytes(pathIn);
    const { offset, length } = rangeArgs(options);
    if (length !== undefined && length > maxReadBytes) {
      throw fail(
        id,
        'read',
        path,
        { code: 'TOO_LARGE', op: 'read', errno: 0, detail: '' },
        maxReadBytes,
      );
    }
    let ident: string | undefined;
    let remaining = length ?? maxReadBytes;
    let position = offset;
    let first = true;
    while (first || remaining > 0) {
      const want = Math.min(readChunkBytes, remaining);
      const args = ['read', hex(path), String(position), String(want)];
      if (ident !== undefined) args.push(ident);
      // stderr shares the output bound and carries the short identity report.
      const r = await run(id, args, Math.max(want, 4096));
      const data = check(id, 'read', path, r);
      const report = jsonLines(r.stderr)[0] ?? {};
      if (first) {
        first = false;
        ident = String(report.ident);
        const available = Math.max(0, Number(report.size) - offset);
        if (length === undefined && available > maxReadBytes) {
          throw fail(
            id,
            'read',
            path,
            { code: 'TOO_LARGE', op: 'read', errno: 0, detail: '' },
            maxReadBytes,
          );
        }
        remaining = Math.min(length ?? available, available);
      }
      if (data.length > remaining) {
        throw new PalisadeError(
          'FILE_OPERATION_FAILED',
          `cannot read ${shown(path)}: the helper returned too much data`,
        );
      }
      remaining -= data.length;
      position += data.length;
      if (data.length > 0) yield data;
      if (data.length < want) {
        // The file is shorter than when the read began; a complete stream is impossible.
        if (remaining > 0) {
          throw fail(id, 'read', path, { code: 'CHANGED', op: 'read', errno: 0, detail: '' });
        }
        break;
      }
    }
  }

  async function writeStream(
    id: string,
    path: Buffer,
    args: string[],
    source: AsyncIterable<Uint8Array>,
  ): Promise<ExecResult> {
    const handle = await runtime.exec(id, {
      argv: [FILES_HELPER_PATH, ...args],
      cwd: '/',
      timeoutMs,
      maxOutputBytes: 4096,
      openStdin: true,
    });
    let sent = 0;
    let sourceError: unknown;
    let tooLarge = false;
    try {
      for await (const chunk of source) {
        if (!(chunk instanceof Uint8Array)) {
          throw new PalisadeError(
            'INVALID_ARGUMENT',
            'write data chunks must be bytes (Uint8Array)',
          );
        }
        // Past the limit the helper gets exactly one byte too many, so it refuses the write and
        // removes its temp file itself; the caller's extra bytes are never sent.
        const room = maxWriteBytes + 1 - sent;
        const piece = chunk.length > room ? chunk.subarray(0, room) : chunk;
        for (let i = 0; i < piece.length; i += STREAM_WRITE_CHUNK) {
          await handle.writeStdin(piece.subarray(i, i + STREAM_WRITE_CHUNK));
        }
        sent += piece.length;
        if (sent > maxWriteBytes) {
          tooLarge = true;
          break;
        }
      }
    } catch (err) {
      sourceError = err;
    }
    if (sourceError !== undefined && !tooLarge) {
      const helperEnded = isPalisadeError(sourceError, 'EXEC_FAILED');
      if (!helperEnded) {
        // The data did not arrive completely: abort, the helper removes its temp file on SIGTERM.
        handle.signal('SIGTERM');
        await handle.done;
        throw sourceError;
      }
    }
    handle.closeStdin();
    return handle.done;
  }

  return {
    readStream,

    async read(id, path, options) {
      const parts: Buffer[] = [];
      for await (const chunk of readStream(id, path, options)) parts.push(chunk);
      return Buffer.concat(parts);
    },

    async write(id, pathIn, data, options) {
      assertSandboxId(id);
      const path = sandboxPathBytes(pathIn);
      const mode = modeArg(options?.mode);
      const args = [
        'write',
        hex(path),
        String(maxWriteBytes),
        mode ?? '-',
        flag(options?.createOnly, 'createOnly'),
      ];
      let source: AsyncIterable<Uint8Array>;
      if (typeof data === 'string' || data instanceof Uint8Array) {
        const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
        if (bytes.length > maxWriteBytes) {
          throw fail(
            id,
            'write',
            path,
            { code: 'TOO_LARGE', op: 'write', errno: 0, detail: '' },
            maxWriteBytes,
          );
        }
        if (bytes.length <= STREAM_WRITE_CHUNK) {
          const out = check(id, 'write', path, await run(id, args, 4096, bytes), maxWriteBytes);
          return { size: Number(jsonLines(out)[0]?.size) };
        }
        source = chunksOf(bytes);
      } else if (data !== null && typeof data === 'object' && Symbol.asyncIterator in data) {
        source = data;
      } else {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          'write data must be a string, bytes or an async iterable of bytes',
        );
      }
      const r = await writeStream(id, path, args, source);
      const out = check(id, 'write', path, r, maxWriteBytes);
      return { size: Number(jsonLines(out)[0]?.size) };
    },

    async list(id, dirIn, options) {
      assertSandboxId(id);
      const dir = sandboxPathBytes(dirIn, 'dir');
      const maxEntries =
        options?.maxEntries === undefined
          ? maxListEntries
          : positiveInt(options.maxEntries, 'maxEntries', maxListEntries);
      const r = await run(
        id,
        ['list', hex(dir), String(maxEntries)],
        maxEntries * ENTRY_LINE_BYTES + 4096,
      );
      const lines = jsonLines(check(id, 'list', dir, r));
      const entries: FileEntry[] = [];
      let truncated = false;
      for (const o of lines) {
        if (o.end === true) {
          truncated = o.truncated === true;
          continue;
        }
        const rawName = Buffer.from(String(o.name), 'base64');
        entries.push({ name: rawName.toString('utf8'), rawName, ...parseInfo(o) });
      }
      entries.sort((a, b) => Buffer.compare(a.rawName, b.rawName));
      return { entries, truncated };
    },

    async stat(id, pathIn) {
      assertSandboxId(id);
      const path = sandboxPathBytes(pathIn);
      const o = jsonLines(
        check(id, 'stat', path, await run(id, ['stat', hex(path)], 4 * ENTRY_LINE_BYTES + 8192)),
      )[0];
      if (!o)
        throw new PalisadeError(
          'FILE_OPERATION_FAILED',
          `cannot stat ${shown(path)}: no answer from the helper`,
        );
      const result: FileStat = parseInfo(o);
      if (typeof o.target === 'string') {
        result.rawTarget = Buffer.from(o.target, 'base64');
        result.target = result.rawTarget.toString('utf8');
      }
      return result;
    },

    async mkdir(id, pathIn, options) {
      assertSandboxId(id);
      const path = sandboxPathBytes(pathIn);
      const mode = modeArg(options?.mode) ?? String(0o755);
      check(
        id,
        'create directory',
        path,
        await run(id, ['mkdir', hex(path), flag(options?.parents, 'parents'), mode], 4096),
      );
    },

    async move(id, fromIn, toIn, options) {
      assertSandboxId(id);
      const from = sandboxPathBytes(fromIn, 'from');
      const to = sandboxPathBytes(toIn, 'to');
      const r = await run(
        id,
        ['move', hex(from), hex(to), flag(options?.overwrite, 'overwrite')],
        4096,
      );
      try {
        check(id, 'move', from, r);
      } catch (err) {
        if (isPalisadeError(err, 'FILE_EXISTS')) {
          throw new PalisadeError(
            'FILE_EXISTS',
            `cannot move ${shown(from)} to ${shown(to)}: the destination exists (pass overwrite: true to replace it)`,
            { sandboxId: id, path: from.toString('utf8'), to: to.toString('utf8') },
          );
        }
        throw err;
      }
    },

    async remove(id, pathIn, options) {
      assertSandboxId(id);
      const path = sandboxPathBytes(pathIn);
      check(
        id,
        'remove',
        path,
        await run(id, ['remove', hex(path), flag(options?.recursive, 'recursive')], 4096),
      );
    },

    async search(id, dirIn, glob, options) {
      assertSandboxId(id);
      const dir = sandboxPathBytes(dirIn, 'dir');
      if (typeof glob !== 'string' || glob.length === 0) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          'glob must be a non-empty string such as "**/*.ts"',
        );
      }
      const globBytes = Buffer.from(glob, 'utf8');
      if (globBytes.length > MAX_GLOB_BYTES || globBytes.includes(0) || glob.startsWith('/')) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          `glob must be relative to the directory, without NUL, at most ${MAX_GLOB_BYTES} bytes`,
        );
      }
      const maxResults =
        options?.maxResults === undefined
          ? 1000
          : positiveInt(options.maxResults, 'maxResults', MAX_SEARCH_RESULTS);
      const maxDepth =
        options?.maxDepth === undefined
          ? 32
          : positiveInt(options.maxDepth, 'maxDepth', MAX_SEARCH_DEPTH);
      const r = await run(
        id,
        ['search', hex(dir), hex(globBytes), String(maxResults), String(maxDepth)],
        Math.min(maxResults * SEARCH_LINE_BYTES + 4096, 64 * MiB),
      );
      const matches: SearchMatch[] = [];
      let truncated = false;
      for (const o of jsonLines(check(id, 'search', dir, r))) {
        if (o.end === true) {
          truncated = o.truncated === true;
          continue;
        }
        const rawPath = Buffer.from(String(o.path), 'base64');
        matches.push({ path: rawPath.toString('utf8'), rawPath, ...parseInfo(o) });
      }
      matches.sort((a, b) => Buffer.compare(a.rawPath, b.rawPath));
      return { matches, truncated };
    },

    async edit(id, pathIn, oldText, newText, options) {
      assertSandboxId(id);
      const path = sandboxPathBytes(pathIn);
      const toBytes = (v: unknown, name: string): Buffer => {
        if (typeof v === 'string') return Buffer.from(v, 'utf8');
        if (v instanceof Uint8Array) return Buffer.from(v);
        throw new PalisadeError('INVALID_ARGUMENT', `${name} must be a string or bytes`);
      };
      const oldBytes = toBytes(oldText, 'oldText');
      const newBytes = toBytes(newText, 'newText');
      if (oldBytes.length === 0) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          'oldText must not be empty; use write to create or replace a whole file',
        );
      }
      if (oldBytes.length > maxEditBytes || newBytes.length > maxEditBytes) {
        throw fail(
          id,
          'edit',
          path,
          { code: 'TOO_LARGE', op: 'edit', errno: 0, detail: '' },
          maxEditBytes,
        );
      }
      const r = await run(
        id,
        [
          'edit',
          hex(path),
          String(oldBytes.length),
          flag(options?.replaceAll, 'replaceAll'),
          String(maxEditBytes),
        ],
        4096,
        Buffer.concat([oldBytes, newBytes]),
      );
      const out = check(id, 'edit', path, r, maxEditBytes);
      return { replacements: Number(jsonLines(out)[0]?.replacements) };
    },
  };
}
