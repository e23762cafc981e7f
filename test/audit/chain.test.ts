import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { AuditLog, GENESIS_HASH } from '../../src/audit/index.js';
import { openStore } from '../../src/store/index.js';

const CLI = join(import.meta.dirname, '..', 'server', 'cli-entry.ts');

async function seeded(n: number): Promise<string> {
  const dataDir = mkdtempSync(join(tmpdir(), 'palisade-audit-'));
  const store = await openStore({ dataDir });
  const log = new AuditLog(store.db);
  await Promise.all(
    Array.from({ length: n }, (_, i) =>
      log.append({
        type: 'test.event',
        tenant: 't1',
        sandboxId: null,
        actor: 'k',
        data: { i, text: `event ${i}` },
      }),
    ),
  );
  await store.close();
  return dataDir;
}

async function verify(dataDir: string) {
  const store = await openStore({ dataDir });
  try {
    return await new AuditLog(store.db).verify();
  } finally {
    await store.close();
  }
}

function cliVerify(dataDir: string): { status: number | null; stdout: string } {
  const r = spawnSync(
    process.execPath,
    ['--import', 'tsx', CLI, 'audit', 'verify', '--data-dir', dataDir],
    {
      encoding: 'utf8',
      timeout: 60_000,
    },
  );
  return { status: r.status, stdout: r.stdout + r.stderr };
}

function tamper(dataDir: string, sql: string): void {
  const db = new Database(join(dataDir, 'palisade.db'));
  db.exec(sql);
  db.close();
}

describe('audit hash chain', () => {
  it('concurrent appends form one linear chain that verifies', async () => {
    const dataDir = await seeded(50);
    const result = await verify(dataDir);
    assert.equal(result.ok, true);
    assert.equal(result.count, 50);
    const store = await openStore({ dataDir });
    const first = await new AuditLog(store.db).query({ limit: 1 });
    assert.equal(first[0]!.prevHash, GENESIS_HASH);
    await store.close();
    const cli = cliVerify(dataDir);
    assert.equal(cli.status, 0, cli.stdout);
    assert.match(cli.stdout, /audit chain OK: 50 records/);
  });

  it('two writers on one database (server and CLI) interleave without forking the chain', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'palisade-audit-'));
    const a = await openStore({ dataDir });
    const b = await openStore({ dataDir });
    const logA = new AuditLog(a.db);
    const logB = new AuditLog(b.db);
    for (let i = 0; i < 20; i++) {
      await Promise.all([
        logA.append({ type: 'a', data: { i } }),
        logB.append({ type: 'b', data: { i } }),
      ]);
    }
    const result = await logA.verify();
    assert.equal(result.ok, true);
    assert.equal(result.count, 40);
    await a.close();
    await b.close();
  });

  it('an edited record is detected and named by `palisade audit verify`', async () => {
    const dataDir = await seeded(10);
    tamper(
      dataDir,
      `UPDATE audit_log SET data = '{"i":4,"text":"nothing happened"}' WHERE seq = 5`,
    );
    const cli = cliVerify(dataDir);
    assert.equal(cli.status, 1);
    assert.match(cli.stdout, /BROKEN at record 5: record 5 was modified/);
  });

  it('an edit that also recomputes that record hash is caught at the next record', async () => {
    const dataDir = await seeded(10);
    const store = await openStore({ dataDir });
    const [row] = await new AuditLog(store.db).query({ afterSeq: 3, limit: 1 });
    await store.close();
    const { recordHash } = await import('../../src/audit/index.js');
    const data = '{"i":3,"text":"forged"}';
    const hash = recordHash({ ...row!, data });
    tamper(dataDir, `UPDATE audit_log SET data = '${data}', hash = '${hash}' WHERE seq = 4`);
    const result = await verify(dataDir);
    assert.equal(result.ok, false);
    assert.equal(!result.ok && result.firstBadSeq, 5);
  });

  it('a deleted record is detected', async () => {
    const dataDir = await seeded(10);
    tamper(dataDir, 'DELETE FROM audit_log WHERE seq = 7');
    const cli = cliVerify(dataDir);
    assert.equal(cli.status, 1);
    assert.match(cli.stdout, /BROKEN at record 7: record 7 is missing/);
  });

  it('reordered records are detected', async () => {
    const dataDir = await seeded(10);
    tamper(
      dataDir,
      'UPDATE audit_log SET seq = -1 WHERE seq = 3; UPDATE audit_log SET seq = 3 WHERE seq = 4; UPDATE audit_log SET seq = 4 WHERE seq = -1;',
    );
    const result = await verify(dataDir);
    assert.equal(result.ok, false);
    assert.equal(!result.ok && result.firstBadSeq, 3);
    assert.equal(cliVerify(dataDir).status, 1);
  });

  it('export writes every record as JSON lines in order', async () => {
    const dataDir = await seeded(5);
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', CLI, 'audit', 'export', '--data-dir', dataDir],
      {
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { seq: number; hash: string; prevHash: string });
    assert.deepEqual(
      lines.map((l) => l.seq),
      [1, 2, 3, 4, 5],
    );
    for (let i = 1; i < lines.length; i++) assert.equal(lines[i]!.prevHash, lines[i - 1]!.hash);
  });

  it('long fields are cut so one event cannot grow the log without bound', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'palisade-audit-'));
    const store = await openStore({ dataDir });
    const log = new AuditLog(store.db);
    const rec = await log.append({ type: 'exec.start', data: { command: 'x'.repeat(100_000) } });
    assert.ok(JSON.stringify(rec.data).length < 5000);
    assert.equal((await log.verify()).ok, true);
    await store.close();
  });
});
