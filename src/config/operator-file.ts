/**
 * Reads a file an operator gives Palisade (configuration, env file). Such a file decides how a
 * root process behaves, so whoever can write it controls the server: it must be a regular file
 * that only its owner can write, and the owner must be root or the user running Palisade
 * (sshd's StrictModes idea). The checks use the descriptor that is then read, so the file
 * cannot be swapped between check and read.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { PalisadeError } from '../errors/index.js';

export interface OperatorFileOptions {
  /** What the file is, for messages ("configuration file", "env file"). */
  what: string;
  maxBytes: number;
}

export function readOperatorFile(path: string, options: OperatorFileOptions): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new PalisadeError(
      'INVALID_CONFIG',
      `Cannot read the ${options.what} ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'}); check the path and permissions.`,
      { file: path, errno: (err as NodeJS.ErrnoException).code ?? 'error' },
    );
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) {
      throw new PalisadeError(
        'INVALID_CONFIG',
        `The ${options.what} ${path} is not a regular file.`,
        { file: path },
      );
    }
    if ((st.mode & 0o022) !== 0) {
      throw new PalisadeError(
        'INVALID_CONFIG',
        `The ${options.what} ${path} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}), so someone else could change how Palisade runs; fix it with: chmod go-w ${path}`,
        { file: path },
      );
    }
    const uid = process.geteuid?.();
    if (uid !== undefined && st.uid !== 0 && st.uid !== uid) {
      throw new PalisadeError(
        'INVALID_CONFIG',
        `The ${options.what} ${path} is owned by uid ${st.uid}, not by root or the user running Palisade (uid ${uid}); fix it with: chown ${uid} ${path}`,
        { file: path },
      );
    }
    if (st.size > options.maxBytes) {
      throw new PalisadeError(
        'INVALID_CONFIG',
        `The ${options.what} ${path} is ${st.size} bytes; the limit is ${options.maxBytes}.`,
        { file: path },
      );
    }
    // Read at most one byte past the limit: a file that grows after fstat is still bounded.
    const buf = Buffer.alloc(options.maxBytes + 1);
    let size = 0;
    for (;;) {
      const n = readSync(fd, buf, size, buf.length - size, null);
      if (n === 0) break;
      size += n;
      if (size > options.maxBytes) {
        throw new PalisadeError(
          'INVALID_CONFIG',
          `The ${options.what} ${path} is larger than ${options.maxBytes} bytes.`,
          { file: path },
        );
      }
    }
    const text = buf.subarray(0, size).toString('utf8');
    if (text.includes('\u0000')) {
      throw new PalisadeError(
        'INVALID_CONFIG',
        `The ${options.what} ${path} contains a NUL byte; it must be text.`,
        { file: path },
      );
    }
    return text;
  } finally {
    closeSync(fd);
  }
}
