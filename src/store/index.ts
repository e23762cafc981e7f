export { openStore, DATABASE_FILE, type Store, type OpenStoreOptions } from './open.js';
export { backupDatabase, type BackupResult } from './backup.js';
export type { Database, ApiKeyTable, SandboxTable, AuditTable, MetaTable } from './schema.js';
