/** `sandbox.files`: the sandbox's filesystem through the files routes (paths as seen inside). */
import { InvalidArgumentError, NotFoundError } from './errors.js';
import { sandboxPath } from './commands.js';
import { assertArgument, type Transport } from './transport.js';
import type { FileEntry, FileListing, FileStat, SearchResult, WriteResult } from './types.js';

/**
 * A path inside the sandbox: a string (sent as UTF-8) or the exact bytes (a Buffer or
 * Uint8Array), for names that are not valid UTF-8. Byte paths are sent percent-encoded byte for
 * byte; read, write, list, stat, exists and remove accept any bytes. mkdir, move, edit and search
 * send JSON, which carries only text: there a byte path must be valid UTF-8.
 */
export type FilePath = string | Uint8Array;

export interface ReadOptions {
  /** First byte to read. @default 0 */
  offset?: number;
  /** Bytes to read from `offset`. @default to the end of the file */
  length?: number;
  signal?: AbortSignal;
}

export interface WriteOptions {
  /** Permission bits of a new file (e.g. 0o644). @default server default (0644) */
  mode?: number;
  /** Fail with FILE_EXISTS (ConflictError) instead of replacing an existing file. @default false */
  createOnly?: boolean;
  signal?: AbortSignal;
}

type Signal = { signal?: AbortSignal };

export class Files {
  readonly #transport: Transport;
  readonly #base: string;

  constructor(transport: Transport, sandboxId: string) {
    this.#transport = transport;
    this.#base = `${sandboxPath(sandboxId)}/files`;
  }

  /** The file's bytes (or a range of them). */
  async read(path: FilePath, options: ReadOptions = {}): Promise<Uint8Array> {
    checkPath(path);
    const { offset, length } = options;
    if (offset !== undefined)
      assertArgument(
        Number.isSafeInteger(offset) && offset >= 0,
        'offset must be a whole number >= 0.',
      );
    if (length !== undefined)
      assertArgument(
        Number.isSafeInteger(length) && length >= 0,
        'length must be a whole number >= 0.',
      );
    if (length === 0) return new Uint8Array(0);
    const from = offset ?? 0;
    const range =
      offset === undefined && length === undefined
        ? undefined
        : `bytes=${from}-${length === undefined ? '' : from + length - 1}`;
    const { data } = await this.#transport.bytes({
      method: 'GET',
      path: this.#base,
      query: { path },
      headers: { accept: 'application/octet-stream', ...(range ? { range } : {}) },
      signal: options.signal,
    });
    return data;
  }

  /** The file decoded as UTF-8 (invalid sequences become U+FFFD). */
  async readText(path: FilePath, options: ReadOptions = {}): Promise<string> {
    return new TextDecoder().decode(await this.read(path, options));
  }

  /** Creates or replaces a file (strings are written as UTF-8). */
  async write(
    path: FilePath,
    data: string | Uint8Array,
    options: WriteOptions = {},
  ): Promise<WriteResult> {
    checkPath(path);
    assertArgument(
      typeof data === 'string' || data instanceof Uint8Array,
      'data must be a string or a Uint8Array.',
    );
    if (options.mode !== undefined)
      assertArgument(
        Number.isInteger(options.mode) && options.mode >= 0 && options.mode <= 0o7777,
        'mode must be permission bits such as 0o644.',
      );
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    const { body } = await this.#transport.json<WriteResult>({
      method: 'PUT',
      path: this.#base,
      query: {
        path,
        mode: options.mode === undefined ? undefined : options.mode.toString(8).padStart(4, '0'),
        createOnly: options.createOnly ? 'true' : undefined,
      },
      body: bytes,
      signal: options.signal,
    });
    return body;
  }

  /** Entries of a directory (bounded by the server; `truncated` says if some were left out). */
  async list(path: FilePath, options: Signal = {}): Promise<FileListing> {
    checkPath(path);
    const { body } = await this.#transport.json<{
      entries: Array<Omit<FileEntry, 'nameBytes'>>;
      truncated: boolean;
    }>({
      method: 'GET',
      path: `${this.#base}/list`,
      query: { path },
      signal: options.signal,
    });
    return {
      ...body,
      entries: body.entries.map((e) => ({ ...e, nameBytes: fromBase64(e.nameBase64, e.name) })),
    };
  }

  /** Type, size, mode and mtime; symlinks are not followed (`target` says where they point). */
  async stat(path: FilePath, options: Signal = {}): Promise<FileStat> {
    checkPath(path);
    return (
      await this.#transport.json<FileStat>({
        method: 'GET',
        path: `${this.#base}/stat`,
        query: { path },
        signal: options.signal,
      })
    ).body;
  }

  /** True if the path exists (a NotFoundError from stat means false). */
  async exists(path: FilePath, options: Signal = {}): Promise<boolean> {
    try {
      await this.stat(path, options);
      return true;
    } catch (err) {
      if (err instanceof NotFoundError) return false;
      throw err;
    }
  }

  /** Creates a directory; with `parents`, missing parents too (and no error if it exists). */
  async mkdir(path: FilePath, options: { parents?: boolean } & Signal = {}): Promise<void> {
    checkPath(path);
    await this.#transport.json({
      method: 'POST',
      path: `${this.#base}/mkdir`,
      json: {
        path: jsonPath(path, 'mkdir'),
        ...(options.parents !== undefined ? { parents: options.parents } : {}),
      },
      signal: options.signal,
    });
  }

  /** Renames `from` to `to`; an existing `to` is an error unless `overwrite`. */
  async move(
    from: FilePath,
    to: FilePath,
    options: { overwrite?: boolean } & Signal = {},
  ): Promise<void> {
    checkPath(from);
    checkPath(to);
    await this.#transport.json({
      method: 'POST',
      path: `${this.#base}/move`,
      json: {
        from: jsonPath(from, 'move'),
        to: jsonPath(to, 'move'),
        ...(options.overwrite !== undefined ? { overwrite: options.overwrite } : {}),
      },
      signal: options.signal,
    });
  }

  /** Deletes a file, or a directory (non-empty ones only with `recursive`). */
  async remove(path: FilePath, options: { recursive?: boolean } & Signal = {}): Promise<void> {
    checkPath(path);
    await this.#transport.json({
      method: 'DELETE',
      path: this.#base,
      query: { path, recursive: options.recursive ? 'true' : undefined },
      signal: options.signal,
    });
  }

  /**
   * Replaces `oldText` with `newText`. Without `replaceAll`, `oldText` must occur exactly once
   * (EDIT_NO_MATCH / EDIT_NOT_UNIQUE otherwise, as InvalidRequestError).
   */
  async edit(
    path: FilePath,
    oldText: string,
    newText: string,
    options: { replaceAll?: boolean } & Signal = {},
  ): Promise<{ replacements: number }> {
    checkPath(path);
    assertArgument(
      typeof oldText === 'string' && oldText.length > 0,
      'oldText must be a non-empty string.',
    );
    assertArgument(typeof newText === 'string', 'newText must be a string.');
    return (
      await this.#transport.json<{ replacements: number }>({
        method: 'POST',
        path: `${this.#base}/edit`,
        json: {
          path: jsonPath(path, 'edit'),
          oldText,
          newText,
          ...(options.replaceAll !== undefined ? { replaceAll: options.replaceAll } : {}),
        },
        signal: options.signal,
      })
    ).body;
  }

  /** Paths under `path` whose relative path matches `glob` (e.g. "**\/*.ts"). */
  async search(
    path: FilePath,
    glob: string,
    options: { maxResults?: number } & Signal = {},
  ): Promise<SearchResult> {
    checkPath(path);
    assertArgument(typeof glob === 'string' && glob.length > 0, 'glob must be a non-empty string.');
    const { body } = await this.#transport.json<{
      matches: Array<Omit<SearchResult['matches'][number], 'pathBytes'>>;
      truncated: boolean;
    }>({
      method: 'POST',
      path: `${this.#base}/search`,
      json: {
        path: jsonPath(path, 'search'),
        glob,
        ...(options.maxResults !== undefined ? { maxResults: options.maxResults } : {}),
      },
      signal: options.signal,
    });
    return {
      ...body,
      matches: body.matches.map((m) => ({ ...m, pathBytes: fromBase64(m.pathBase64, m.path) })),
    };
  }
}

/** The engine's own bound on a path (PATH_MAX less the terminating NUL). */
const MAX_PATH_BYTES = 4095;

function checkPath(path: FilePath): void {
  if (path instanceof Uint8Array) {
    assertArgument(path.length > 0, 'path must not be empty.');
    assertArgument(!path.includes(0), 'path must not contain NUL bytes.');
    assertArgument(
      path.length <= MAX_PATH_BYTES,
      `path must be at most ${MAX_PATH_BYTES} bytes long.`,
    );
    return;
  }
  assertArgument(
    typeof path === 'string' && path.length > 0,
    'path must be a non-empty string or Uint8Array.',
  );
  assertArgument(!path.includes('\0'), 'path must not contain NUL bytes.');
}

/** The path as JSON text: byte paths must be valid UTF-8 here (JSON carries no raw bytes). */
function jsonPath(path: FilePath, operation: string): string {
  checkPath(path);
  if (typeof path === 'string') return path;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(path);
  } catch {
    throw new InvalidArgumentError(
      `${operation} takes a path that is valid UTF-8 (the server's ${operation} route receives JSON text); ` +
        'read, write, list, stat and remove accept any bytes. Rename such a file with a command in the sandbox.',
    );
  }
}

/** The exact bytes the server sent; an older server without the base64 field gives the text. */
function fromBase64(base64: string | undefined, fallback: string): Uint8Array {
  return typeof base64 === 'string'
    ? new Uint8Array(Buffer.from(base64, 'base64'))
    : new TextEncoder().encode(fallback);
}
