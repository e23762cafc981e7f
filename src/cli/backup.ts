/** `palisade backup`: an online, consistent copy of the database (keys, sandboxes, audit log). */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { AuditLog } from '../audit/index.js';
import { PalisadeError } from '../errors/index.js';
import { backupDatabase, openStore } from '../store/index.js';
import { DEFAULT_DATA_ROOT } from './engine-config.js';

export const BACKUP_USAGE = `Usage: palisade backup --output DIR [--data-dir DIR]

Copies the server's database (API key hashes, sandbox records, the audit log) into DIR (new or
empty; created owner-only) with SQLite's online backup API. Safe while the server runs. The copy
is checked (SQLite integrity check, audit hash chain). To restore, stop the server and copy
DIR/palisade.db into the data directory. Schedule it with cron or a systemd timer.
`;

export async function backupCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        'data-dir': { type: 'string' },
        output: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new PalisadeError('INVALID_ARGUMENT', `${(err as Error).message}\n\n${BACKUP_USAGE}`);
  }
  if (parsed.values.help) {
    process.stdout.write(BACKUP_USAGE);
    return 0;
  }
  if (parsed.values.output === undefined) {
    throw new PalisadeError('INVALID_ARGUMENT', `Give --output DIR.\n\n${BACKUP_USAGE}`);
  }
  const dataDir = resolve(parsed.values['data-dir'] ?? DEFAULT_DATA_ROOT);
  const outputDir = resolve(parsed.values.output);
  const { path, pages } = await backupDatabase(dataDir, outputDir);
  const store = await openStore({ dataDir: outputDir, migrate: false });
  try {
    const chain = await new AuditLog(store.db).verify();
    if (!chain.ok) {
      process.stdout.write(
        `backup written to ${path}, but its audit chain is BROKEN at record ${chain.firstBadSeq}: ${chain.problem}\n`,
      );
      return 1;
    }
    process.stdout.write(
      `backup written to ${path} (${pages} pages); integrity OK; audit chain OK: ${chain.count} records, head #${chain.headSeq} ${chain.headHash}\n`,
    );
    return 0;
  } finally {
    await store.close();
  }
}
