/**
 * `palisade keys create|list|revoke`: key management on the host, straight on the database in
 * the data directory (file access to the data directory is administrator access). Works while
 * the server runs; revocation applies to the key's next request.
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { AuditLog } from '../audit/index.js';
import {
  isScope,
  KeyStore,
  MCP_TOOLS,
  READ_ONLY_TOOLS,
  SCOPES,
  type Scope,
} from '../auth/index.js';
import { PalisadeError } from '../errors/index.js';
import { openStore } from '../store/index.js';
import { DEFAULT_DATA_ROOT } from './engine-config.js';

/** What each scope allows; a Record over Scope, so a new scope cannot be added without a line here. */
const SCOPE_HELP: Record<Scope, string> = {
  admin: 'everything, including key management, kill switch and all tenants',
  'sandboxes:read': 'list and inspect sandboxes, executions and files; WebSocket streams',
  'sandboxes:write': 'create, destroy, pause and resume sandboxes; write files; network policy',
  'sandboxes:exec': 'run commands in sandboxes',
  'audit:read': "read the tenant's audit log",
  'metrics:read': 'read Prometheus metrics at /metrics',
  'approvals:write': 'list, approve and deny pending human approvals (and read their feed)',
};

const SCOPE_LINES = SCOPES.map((s) => `  ${s.padEnd(16)} ${SCOPE_HELP[s]}`).join('\n');

export const KEYS_USAGE = `Usage:
  palisade keys create --name NAME [--tenant T] [--scope S]... [--admin] [--expires ISO-TIME]
                       [--sandbox SANDBOX-ID] [--tools TOOL,...] [--read-only] [--data-dir DIR]
  palisade keys list [--tenant T] [--data-dir DIR]
  palisade keys revoke KEY-ID [--data-dir DIR]
  palisade keys [SUBCOMMAND] --help

Scopes (--scope, repeatable; --admin is --scope admin):
${SCOPE_LINES}
Restrictions (not with --admin): --sandbox limits the key to one sandbox of its tenant;
--tools limits it to these MCP tools and the API routes they need; --read-only is --tools with
the tools that change nothing (${READ_ONLY_TOOLS.join(', ')}).
MCP tools: ${MCP_TOOLS.join(', ')}
`;

export async function keysCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      strict: true,
      allowPositionals: true,
      options: {
        name: { type: 'string' },
        tenant: { type: 'string' },
        scope: { type: 'string', multiple: true },
        admin: { type: 'boolean' },
        expires: { type: 'string' },
        sandbox: { type: 'string' },
        tools: { type: 'string', multiple: true },
        'read-only': { type: 'boolean' },
        'data-dir': { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new PalisadeError('INVALID_ARGUMENT', `${(err as Error).message}\n\n${KEYS_USAGE}`);
  }
  const v = parsed.values;
  if (v.help || sub === 'help' || sub === '--help' || sub === '-h') {
    process.stdout.write(KEYS_USAGE);
    return 0;
  }
  if (sub !== 'create' && sub !== 'list' && sub !== 'revoke') {
    process.stderr.write(KEYS_USAGE);
    return 3;
  }
  const scopes = [...(v.scope ?? []), ...(v.admin ? ['admin'] : [])];
  if (sub === 'create') {
    const bad = scopes.find((s) => !isScope(s));
    if (bad !== undefined || scopes.length === 0) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `${bad !== undefined ? `Unknown scope ${JSON.stringify(bad.slice(0, 40))}. ` : ''}Give one or more valid --scope values (or --admin).\n\n${KEYS_USAGE}`,
      );
    }
  }
  const store = await openStore({ dataDir: resolve(v['data-dir'] ?? DEFAULT_DATA_ROOT) });
  try {
    const keys = new KeyStore(store.db);
    const audit = new AuditLog(store.db);
    if (sub === 'create') {
      if (v.name === undefined)
        throw new PalisadeError('INVALID_ARGUMENT', `--name is required.\n\n${KEYS_USAGE}`);
      let expiresAt: Date | null = null;
      if (v.expires !== undefined) {
        expiresAt = new Date(v.expires);
        if (Number.isNaN(expiresAt.getTime())) {
          throw new PalisadeError(
            'INVALID_ARGUMENT',
            '--expires must be an ISO-8601 time, e.g. 2030-01-01T00:00:00Z.',
          );
        }
      }
      const listed = (v.tools ?? []).flatMap((t) => t.split(',')).map((t) => t.trim());
      if (v['read-only'] && listed.length > 0)
        throw new PalisadeError('INVALID_ARGUMENT', 'Give --tools or --read-only, not both.');
      const tools = v['read-only'] ? [...READ_ONLY_TOOLS] : listed.length > 0 ? listed : undefined;
      const { key, info } = await keys.create({
        tenant: v.tenant ?? 'default',
        name: v.name,
        scopes: scopes as Scope[],
        expiresAt,
        ...(v.sandbox !== undefined ? { sandboxId: v.sandbox } : {}),
        ...(tools !== undefined ? { tools } : {}),
      });
      await audit.append({
        type: 'key.create',
        tenant: info.tenant,
        actor: 'cli',
        data: {
          keyId: info.id,
          name: info.name,
          scopes: info.scopes,
          expiresAt: info.expiresAt,
          sandboxId: info.sandboxId,
          tools: info.tools,
        },
      });
      process.stdout.write(
        `API key: ${key}\nid: ${info.id}  tenant: ${info.tenant}  scopes: ${info.scopes.join(',')}` +
          (info.sandboxId ? `  sandbox: ${info.sandboxId}` : '') +
          (info.tools ? `  tools: ${info.tools.join(',')}` : '') +
          '\n',
      );
      return 0;
    }
    if (sub === 'list') {
      const list = await keys.list(v.tenant !== undefined ? { tenant: v.tenant } : {});
      if (v.json) {
        process.stdout.write(JSON.stringify(list, null, 2) + '\n');
        return 0;
      }
      process.stdout.write('ID                TENANT        STATUS   SCOPES  NAME  LAST-USED\n');
      for (const k of list) {
        const status = k.revokedAt
          ? 'revoked'
          : k.expiresAt && Date.parse(k.expiresAt) <= Date.now()
            ? 'expired'
            : 'active';
        process.stdout.write(
          `${k.id}  ${k.tenant.padEnd(12)}  ${status.padEnd(7)}  ${k.scopes.join(',')}  ${JSON.stringify(k.name)}  ${k.lastUsedAt ?? '-'}\n`,
        );
      }
      return 0;
    }
    const id = parsed.positionals[0];
    if (id === undefined)
      throw new PalisadeError('INVALID_ARGUMENT', `Give the key id to revoke.\n\n${KEYS_USAGE}`);
    const info = await keys.revoke(id);
    await audit.append({
      type: 'key.revoke',
      tenant: info.tenant,
      actor: 'cli',
      data: { keyId: id },
    });
    process.stdout.write(`revoked ${id}\n`);
    return 0;
  } finally {
    await store.close();
  }
}
