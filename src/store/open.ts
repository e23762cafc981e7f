import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect } from 'kysely';
import { PalisadeError } from '../errors/index.js';
import { migrationProvider } from './migrations.js';
import type { Database } from './schema.js';

export const DATABASE_FILE = 'palisade.db';

export interface Store {
  readonly db: Kysely<Database>;
  /** Absolute path of the database file. */
  readonly path: string;
  close(): Promise<void>;
}

export interface OpenStoreOptions {
  dataDir: string;
  /** Apply pending migrations. @default true */
  migrate?: boolean;
}

/**
 * Opens (creating if needed) the SQLite database in the data directory, in WAL mode with a
 * busy timeout so a second process (the CLI next to a running server) waits instead of failing,
 * and applies pending migrations. The data directory and file are owner-only.
 */
export async function openStore(options: OpenStoreOptions): Promise<Store> {
  const dataDir = options.dataDir;
  try {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new PalisadeError(
      'INVALID_PATH',
      `Cannot create the data directory ${dataDir}; choose a writable directory with --data-dir.`,
      undefined,
      { cause: err },
    );
  }
  const path = join(dataDir, DATABASE_FILE);
  const isNew = !existsSync(path);
  let sqlite: InstanceType<typeof SqliteDatabase>;
  try {
    sqlite = new SqliteDatabase(path);
    if (isNew) chmodSync(path, 0o600);
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('synchronous = NORMAL');
    sqlite.pragma('busy_timeout = 5000');
    sqlite.pragma('foreign_keys = ON');
  } catch (err) {
    throw new PalisadeError(
      'REQUIREMENT_MISSING',
      `Cannot open the database ${path}: ${(err as Error).message}. Check the data directory's permissions and free space.`,
      undefined,
      { cause: err },
    );
  }
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
  if (options.migrate !== false) {
    const migrator = new Migrator({ db, provider: migrationProvider });
    const { error } = await migrator.migrateToLatest();
    if (error) {
      await db.destroy();
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        `Database migration failed for ${path}: ${(error as Error).message ?? String(error)}.`,
        undefined,
        { cause: error },
      );
    }
  }
  return {
    db,
    path,
    close: () => db.destroy(),
  };
}
