import assert from 'node:assert/strict';
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { sql } from 'kysely';
import { openStore } from '../../src/store/index.js';

describe('store', () => {
  it('creates an owner-only SQLite file in WAL mode with migrations applied once', async () => {
    const dataDir = join(mkdtempSync(join(tmpdir(), 'palisade-store-')), 'data');
    const store = await openStore({ dataDir });
    assert.equal(statSync(store.path).mode & 0o777, 0o600);
    assert.equal(statSync(dataDir).mode & 0o077, 0);
    const mode = await sql<{ journal_mode: string }>`PRAGMA journal_mode`.execute(store.db);
    assert.equal(mode.rows[0]?.journal_mode, 'wal');
    const migrations = await sql<{ name: string }>`SELECT name FROM kysely_migration`.execute(
      store.db,
    );
    assert.deepEqual(
      migrations.rows.map((r) => r.name),
      [
        '0001_initial',
        '0002_sandbox_policy',
        '0003_kill_switches_and_breaker',
        '0004_key_restrictions',
      ],
    );
    await store.close();
    const again = await openStore({ dataDir });
    const after = await sql<{ name: string }>`SELECT name FROM kysely_migration`.execute(again.db);
    assert.equal(after.rows.length, 4);
    await again.close();
  });

  it('a second connection (the CLI beside the server) can write while the first is open', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'palisade-store-'));
    const a = await openStore({ dataDir });
    const b = await openStore({ dataDir });
    await a.db.insertInto('palisade_meta').values({ key: 'a', value: '1' }).execute();
    await b.db.insertInto('palisade_meta').values({ key: 'b', value: '2' }).execute();
    const rows = await a.db.selectFrom('palisade_meta').selectAll().orderBy('key').execute();
    assert.deepEqual(
      rows.map((r) => r.key),
      ['a', 'b'],
    );
    await a.close();
    await b.close();
  });

  it('an unusable data directory fails with a clear error', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'palisade-store-')), 'a-file');
    writeFileSync(file, 'x');
    await assert.rejects(
      openStore({ dataDir: join(file, 'data') }),
      /Cannot create the data directory/,
    );
  });
});
