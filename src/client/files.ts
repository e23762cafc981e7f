/** `sandbox.files`: the sandbox's filesystem through the files routes (paths as seen inside). */
import { NotFoundError } from './errors.js';
import { sandboxPath } from './commands.js';
import { assertArgument, type Transport } from './transport.js';
import type { FileListing, FileStat, SearchResult, WriteResult } from './types.js';

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
  async read(path: string, options: ReadOptions = {}): Promise<Uint8Array> {
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
  async readText(path: string, options: ReadOptions = {}): Promise<string> {
    return new TextDecoder().decode(await this.read(path, options));
  }

  /** Creates or replaces a file (strings are written as UTF-8). */
  async write(
    path: string,
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
  async list(path: string, options: Signal = {}): Promise<FileListing> {
    checkPath(path);
    return (
      await this.#transport.json<FileListing>({
        method: 'GET',
        path: `${this.#base}/list`,
        query: { path },
        signal: options.signal,
      })
    ).body;
  }

  /** Type, size, mode and mtime; symlinks are not followed (`target` says where they point). */
  async stat(path: string, options: Signal = {}): Promise<FileStat> {
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
  async exists(path: string, options: Signal = {}): Promise<boolean> {
    try {
      await this.stat(path, options);
      return true;
    } catch (err) {
      if (err instanceof NotFoundError) return false;
      throw err;
    }
  }

  /** Creates a directory; with `parents`, missing parents too (and no error if it exists). */
  async mkdir(path: string, options: { parents?: boolean } & Signal = {}): Promise<void> {
    checkPath(path);
    await this.#transport.json({
      method: 'POST',
      path: `${this.#base}/mkdir`,
      json: { path, ...(options.parents !== undefined ? { parents: options.parents } : {}) },
      signal: options.signal,
    });
  }

  /** Renames `from` to `to`; an existing `to` is an error unless `overwrite`. */
  async move(
    from: string,
    to: string,
    options: { overwrite?: boolean } & Signal = {},
  ): Promise<void> {
    checkPath(from);
    checkPath(to);
    await this.#transport.json({
      method: 'POST',
      path: `${this.#base}/move`,
      json: {
        from,
        to,
        ...(options.overwrite !== undefined ? { overwrite: options.overwrite } : {}),
      },
      signal: options.signal,
    });
  }

  /** Deletes a file, or a directory (non-empty ones only with `recursive`). */
  async remove(path: string, options: { recursive?: boolean } & Signal = {}): Promise<void> {
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
    path: string,
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
          path,
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
    path: string,
    glob: string,
    options: { maxResults?: number } & Signal = {},
  ): Promise<SearchResult> {
    checkPath(path);
    assertArgument(typeof glob === 'string' && glob.length > 0, 'glob must be a non-empty string.');
    return (
      await this.#transport.json<SearchResult>({
        method: 'POST',
        path: `${this.#base}/search`,
        json: {
          path,
          glob,
          ...(options.maxResults !== undefined ? { maxResults: options.maxResults } : {}),
        },
        signal: options.signal,
      })
    ).body;
  }
}

function checkPath(path: string): void {
  assertArgument(typeof path === 'string' && path.length > 0, 'path must be a non-empty string.');
  assertArgument(!path.includes('\0'), 'path must not contain NUL bytes.');
}
