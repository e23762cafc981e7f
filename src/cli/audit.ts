/** `palisade audit verify|export`: checks the hash chain, or writes the log as JSON lines. */
import { createWriteStream } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { AuditLog } from '../audit/index.js';
import { PalisadeError } from '../errors/index.js';
import { DATABASE_FILE, openStore } from '../store/index.js';
import { DEFAULT_DATA_ROOT } from './engine-config.js';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export const AUDIT_USAGE = `Usage:
  palisade audit verify [--data-dir DIR]          exit 0 if the chain is intact, 1 naming the first bad record
  palisade audit export [--data-dir DIR] [--output FILE]   JSON lines (stdout by default)
`;

export async function auditCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      strict: true,
      allowPositionals: false,
      options: { 'data-dir': { type: 'string' }, output: { type: 'string' } },
    });
  } catch (err) {
    throw new PalisadeError('INVALID_ARGUMENT', `${(err as Error).message}\n\n${AUDIT_USAGE}`);
  }
  if (sub !== 'verify' && sub !== 'export') {
    process.stderr.write(AUDIT_USAGE);
    return 3;
  }
  const dataDir = resolve(parsed.values['data-dir'] ?? DEFAULT_DATA_ROOT);
  if (!existsSync(join(dataDir, DATABASE_FILE))) {
    throw new PalisadeError(
      'INVALID_PATH',
      `No Palisade database in ${dataDir}; pass the server's --data-dir.`,
    );
  }
  const store = await openStore({ dataDir });
  try {
    const audit = new AuditLog(store.db);
    if (sub === 'verify') {
      const result = await audit.verify();
      if (result.ok) {
        process.stdout.write(
          `audit chain OK: ${result.count} records, head #${result.headSeq} ${result.headHash}\n`,
        );
        return 0;
      }
      process.stdout.write(
        `audit chain BROKEN at record ${result.firstBadSeq}: ${result.problem} (${result.count} records verified before it)\n`,
      );
      return 1;
    }
    const output = parsed.values.output;
    if (output === undefined) {
      await audit.exportJsonl((line) => {
        process.stdout.write(line);
      });
      return 0;
    }
    const file = createWriteStream(output, { mode: 0o600, flags: 'wx' });
    const count = await audit.exportJsonl(
      (line) =>
        new Promise<void>((ok, fail) => {
          if (file.write(line)) ok();
          else file.once('drain', ok).once('error', fail);
        }),
    );
    await new Promise<void>((ok, fail) =>
      file.end((err?: Error | null) => (err ? fail(err) : ok())),
    );
    process.stderr.write(`exported ${count} records to ${output}\n`);
    return 0;
  } finally {
    await store.close();
  }
}
