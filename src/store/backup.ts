import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { PalisadeError } from '../errors/index.js';
import { DATABASE_FILE } from './open.js';

export interface BackupResult {
  /** The copy: `<outputDir>/palisade.db`, usable as a data directory's database. */
  path: string;
  pages: number;
}

/**
 * Copies the data directory's database with SQLite's online backup API: the copy is one
 * consistent snapshot even while a server keeps writing (readers and writers are not blocked).
 * The output directory must be new or empty, so a backup never overwrites anything; it is
 * owner-only because the database holds key hashes and the audit log.
 */
export async function backupDatabase(dataDir: string, outputDir: string): Promise<BackupResult> {
  const source = join(dataDir, DATABASE_FILE);
  if (!existsSync(source)) {
    throw new PalisadeError(
      'INVALID_PATH',
      `No Palisade database in ${dataDir}; pass the server's --data-dir.`,
    );
  }
  if (existsSync(outputDir) && readdirSync(outputDir).length > 0) {
    throw new PalisadeError(
      'FILE_EXISTS',
      `${outputDir} is not empty; give a new or empty directory so no earlier backup is overwritten.`,
    );
  }
  try {
    mkdirSync(outputDir, { recursive: true, mode: 0o700 });
    chmodSync(outputDir, 0o700);
  } catch (err) {
    throw new PalisadeError(
      'INVALID_PATH',
      `Cannot create the backup directory ${outputDir}; check the path and permissions.`,
      undefined,
      { cause: err },
    );
  }
  const destination = join(outputDir, DATABASE_FILE);
  // A reader of a WAL database creates the -wal/-shm files when no server has them open; they
  // must belong to the database's owner, or a server running as that user could not open it.
  const sideFiles = [`${source}-wal`, `${source}-shm`].filter((f) => !existsSync(f));
  let db: InstanceType<typeof SqliteDatabase> | undefined;
  try {
    db = new SqliteDatabase(source, { readonly: true, fileMustExist: true });
    db.pragma('busy_timeout = 5000');
    const progress = await db.backup(destination);
    chmodSync(destination, 0o600);
    // Read-write, so closing this last connection checkpoints and removes the copy's WAL files:
    // the backup is the one file.
    const check = new SqliteDatabase(destination, { fileMustExist: true });
    try {
      const result = check.pragma('integrity_check', { simple: true });
      if (result !== 'ok') {
        throw new PalisadeError(
          'INTERNAL',
          `The backup in ${destination} failed SQLite's integrity check (${String(result)}); do not rely on it.`,
        );
      }
    } finally {
      check.close();
    }
    return { path: destination, pages: progress.totalPages };
  } catch (err) {
    if (err instanceof PalisadeError) throw err;
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `Backing up ${source} to ${destination} failed: ${(err as Error).message}. Check permissions and free space.`,
      undefined,
      { cause: err },
    );
  } finally {
    db?.close();
    giveToOwnerOf(source, sideFiles);
  }
}

function giveToOwnerOf(source: string, files: string[]): void {
  try {
    const { uid, gid } = statSync(source);
    for (const file of files) {
      if (!existsSync(file)) continue;
      chownSync(file, uid, gid);
      chmodSync(file, 0o600);
    }
  } catch {
    // Best effort: only root can give files away, and as the owner they are already right.
  }
}
