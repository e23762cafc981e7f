import { closeSync, fstatSync, openSync, renameSync, writeSync } from 'node:fs';
import { PalisadeError } from '../errors/index.js';
import type { EgressEvent, EgressEventSink } from './types.js';

const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;
/** One event line is never longer than this; longer ones are dropped (they cannot occur with bounded fields). */
const MAX_LINE_BYTES = 64 * 1024;

/**
 * Appends one JSON object per line. Bounded: when the file would exceed `maxBytes` it is
 * renamed to `<path>.1` (replacing an older one) and a fresh file is started, so at most two
 * files of `maxBytes` exist. Writes are synchronous and small so an event is on disk before
 * emit returns; a write error is counted, never thrown into the gateway.
 */
export function createJsonlSink(
  path: string,
  options: { maxBytes?: number } = {},
): EgressEventSink & { close(): Promise<void>; readonly writeErrors: number } {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1024) {
    throw new PalisadeError(
      'INVALID_LIMIT',
      'createJsonlSink: maxBytes must be an integer of at least 1024',
      {
        maxBytes,
      },
    );
  }
  let fd: number | null = openSync(path, 'a', 0o600);
  let size = fstatSync(fd).size;
  let writeErrors = 0;

  function rotate(): void {
    if (fd !== null) closeSync(fd);
    fd = null;
    renameSync(path, `${path}.1`);
    fd = openSync(path, 'a', 0o600);
    size = 0;
  }

  return {
    emit(event: EgressEvent): void {
      if (fd === null) return;
      const line = Buffer.from(JSON.stringify(event) + '\n', 'utf8');
      if (line.length > MAX_LINE_BYTES) {
        writeErrors++;
        return;
      }
      try {
        if (size + line.length > maxBytes) rotate();
        if (fd === null) return;
        writeSync(fd, line);
        size += line.length;
      } catch {
        writeErrors++;
      }
    },
    get writeErrors(): number {
      return writeErrors;
    },
    async close(): Promise<void> {
      if (fd !== null) closeSync(fd);
      fd = null;
    },
  };
}
