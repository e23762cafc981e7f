/**
 * Watches the operator's policy file and reports every change of its content, so `palisade
 * serve` can reload it without a restart (seed 003 U6: a reload must never drop a change).
 *
 * - The directory is watched, not the file: editors and deployment tools replace a file by
 *   renaming a new one over it, which a watch on the old inode never sees.
 * - Events are debounced; the read happens after the last event (bounded by `maxWaitMs` under
 *   a constant stream of events), so the final content is always read.
 * - Reads are synchronous, so no event can arrive during a read; an event after a read
 *   schedules another read.
 * - A slow stat poll backs fs.watch up (network filesystems, missed events).
 * - Content is compared by SHA-256: only real changes are reported, duplicates are not.
 */
import { createHash } from 'node:crypto';
import { statSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import { isPalisadeError } from '../errors/index.js';
import { readOperatorFile } from './operator-file.js';

export type PolicyFileEvent =
  { kind: 'content'; text: string; sha256: string } | { kind: 'error'; message: string };

export interface PolicyWatchOptions {
  path: string;
  /** Called with each new content (by hash), or with a read error (once per distinct error). */
  onChange: (event: PolicyFileEvent) => void;
  /** The hash of the content already in force (read at start). */
  initialSha256: string;
  maxBytes: number;
  /** Quiet time after the last event before reading. @default 100 */
  debounceMs?: number;
  /** Longest a read is postponed by a constant stream of events. @default 1000 */
  maxWaitMs?: number;
  /** Stat poll interval (0: no poll). @default 2000 */
  pollMs?: number;
}

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

export class PolicyFileWatcher {
  readonly #options: Required<Omit<PolicyWatchOptions, 'initialSha256'>>;
  #lastReported: string;
  #watcher: FSWatcher | undefined;
  #poll: NodeJS.Timeout | undefined;
  #timer: NodeJS.Timeout | undefined;
  #firstPendingAt = 0;
  #lastStat = '';
  #missingOnce = false;
  #force = false;
  #closed = false;

  constructor(options: PolicyWatchOptions) {
    this.#options = {
      debounceMs: 100,
      maxWaitMs: 1000,
      pollMs: 2000,
      ...options,
    };
    this.#lastReported = `sha256:${options.initialSha256}`;
  }

  /** Starts watching and checks once at once (the file may have changed since it was read). */
  start(): void {
    const { path } = this.#options;
    const name = basename(path);
    try {
      // The file's own name (written in place, or renamed over), and `..`-names: a symlinked
      // policy (a Kubernetes ConfigMap) changes by swapping its `..data` link. The hash
      // filters duplicates; the poll catches anything else.
      this.#watcher = watch(dirname(path), { persistent: false }, (_event, file) => {
        if (file === null || file === name || file.startsWith('..')) this.#schedule();
      });
      this.#watcher.on('error', () => undefined);
    } catch {
      // The poll still notices changes, only later.
    }
    if (this.#options.pollMs > 0) {
      this.#lastStat = this.#statKey();
      this.#poll = setInterval(() => {
        const key = this.#statKey();
        if (key !== this.#lastStat) {
          this.#lastStat = key;
          this.#schedule();
        }
      }, this.#options.pollMs);
      this.#poll.unref();
    }
    this.#schedule();
  }

  /** Re-reads now (SIGHUP); the content is reported even if unchanged. */
  reload(): void {
    this.#force = true;
    this.#schedule(0);
  }

  close(): void {
    this.#closed = true;
    this.#watcher?.close();
    clearInterval(this.#poll);
    clearTimeout(this.#timer);
  }

  #statKey(): string {
    try {
      const st = statSync(this.#options.path);
      return `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    } catch (err) {
      return `error:${(err as NodeJS.ErrnoException).code ?? ''}`;
    }
  }

  #schedule(delayMs = this.#options.debounceMs): void {
    if (this.#closed) return;
    const now = Date.now();
    if (this.#timer === undefined) this.#firstPendingAt = now;
    clearTimeout(this.#timer);
    const waited = now - this.#firstPendingAt;
    const delay = Math.max(0, Math.min(delayMs, this.#options.maxWaitMs - waited));
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#read();
    }, delay);
    this.#timer.unref();
  }

  #read(): void {
    if (this.#closed) return;
    const { path, maxBytes } = this.#options;
    const force = this.#force;
    this.#force = false;
    let event: PolicyFileEvent;
    try {
      // Same rules as at start: a policy file others can write would let them change the
      // policy of a running server.
      const text = readOperatorFile(path, { what: 'policy file', maxBytes });
      this.#missingOnce = false;
      event = { kind: 'content', text, sha256: sha256Hex(text) };
    } catch (err) {
      const missing = isPalisadeError(err) && err.details?.['errno'] === 'ENOENT';
      // Some editors delete and re-create the file: give it one more quiet period to reappear.
      if (missing && !this.#missingOnce && !force) {
        this.#missingOnce = true;
        this.#schedule();
        return;
      }
      event = {
        kind: 'error',
        message: isPalisadeError(err) ? err.message : `cannot read policy file ${path}`,
      };
    }
    const key = event.kind === 'content' ? `sha256:${event.sha256}` : `error:${event.message}`;
    if (key === this.#lastReported && !force) return;
    this.#lastReported = key;
    this.#options.onChange(event);
  }
}
