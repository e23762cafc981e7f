import type { Kysely, Migration, MigrationProvider } from 'kysely';

/**
 * Versioned migrations, in code so the binary carries its schema. Names sort in apply order.
 * Never edit an applied migration; add a new one.
 */
const migrations: Record<string, Migration> = {
  '0001_initial': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('api_keys')
        .addColumn('id', 'varchar(64)', (c) => c.primaryKey())
        .addColumn('tenant', 'varchar(64)', (c) => c.notNull())
        .addColumn('name', 'varchar(128)', (c) => c.notNull())
        .addColumn('scopes', 'text', (c) => c.notNull())
        .addColumn('secret_hash', 'varchar(64)', (c) => c.notNull())
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .addColumn('expires_at', 'varchar(32)')
        .addColumn('revoked_at', 'varchar(32)')
        .addColumn('last_used_at', 'varchar(32)')
        .execute();
      await db.schema
        .createTable('sandboxes')
        .addColumn('id', 'varchar(64)', (c) => c.primaryKey())
        .addColumn('tenant', 'varchar(64)', (c) => c.notNull())
        .addColumn('state', 'varchar(16)', (c) => c.notNull())
        .addColumn('reason', 'text', (c) => c.notNull())
        .addColumn('labels', 'text', (c) => c.notNull())
        .addColumn('limits', 'text', (c) => c.notNull())
        .addColumn('memory_bytes', 'bigint', (c) => c.notNull())
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .addColumn('updated_at', 'varchar(32)', (c) => c.notNull())
        .addColumn('expires_at', 'varchar(32)')
        .addColumn('ended_at', 'varchar(32)')
        .execute();
      await db.schema
        .createIndex('sandboxes_tenant_state')
        .on('sandboxes')
        .columns(['tenant', 'state'])
        .execute();
      await db.schema
        .createTable('audit_log')
        .addColumn('seq', 'bigint', (c) => c.primaryKey())
        .addColumn('ts', 'varchar(32)', (c) => c.notNull())
        .addColumn('type', 'varchar(64)', (c) => c.notNull())
        .addColumn('tenant', 'varchar(64)')
        .addColumn('sandbox_id', 'varchar(64)')
        .addColumn('actor', 'varchar(64)')
        .addColumn('data', 'text', (c) => c.notNull())
        .addColumn('prev_hash', 'varchar(64)', (c) => c.notNull())
        .addColumn('hash', 'varchar(64)', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('audit_log_ts').on('audit_log').column('ts').execute();
      await db.schema
        .createTable('palisade_meta')
        .addColumn('key', 'varchar(64)', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .execute();
    },
  },
  '0002_sandbox_policy': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('sandboxes').addColumn('policy', 'text').execute();
    },
  },
  '0003_kill_switches_and_breaker': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('kill_switches')
        .addColumn('id', 'varchar(64)', (c) => c.primaryKey())
        .addColumn('selector', 'text', (c) => c.notNull())
        .addColumn('reason', 'text', (c) => c.notNull())
        .addColumn('created_by', 'varchar(64)', (c) => c.notNull())
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .addColumn('released_at', 'varchar(32)')
        .addColumn('released_by', 'varchar(64)')
        .execute();
      await db.schema
        .alterTable('sandboxes')
        .addColumn('flagged', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
    },
  },
  '0004_key_restrictions': {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('api_keys').addColumn('sandbox_id', 'varchar(64)').execute();
      await db.schema.alterTable('api_keys').addColumn('tools', 'text').execute();
    },
  },
};

export const migrationProvider: MigrationProvider = {
  getMigrations: async () => migrations,
};
