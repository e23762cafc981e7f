import type { McpToolName } from '../auth/index.js';
import type { PalisadeClient, SandboxInfo } from '../client/index.js';
import {
  describeState,
  followAskedExec,
  stateOf,
  type ApprovalWaitOptions,
} from './approval-wait.js';
import { capText, looksLikeText, renderStream, type OutputLimits } from './output.js';

/** Who is calling: always derived from the API key by the server, never from tool arguments. */
export interface McpIdentity {
  keyId: string;
  tenant: string;
  scopes: readonly string[];
  /** The key is restricted to this sandbox. */
  sandboxId?: string | undefined;
  /** The key is restricted to these tools. */
  tools?: readonly McpToolName[] | undefined;
}

export interface ToolContext {
  client: PalisadeClient;
  identity: McpIdentity;
  limits: OutputLimits;
  signal?: AbortSignal | undefined;
  /** How an exec the policy asks about waits for a human (see approval-wait.ts). */
  approvals?: ApprovalWaitOptions | undefined;
  /** Whether this identity may use a tool (the approval flow needs policy_check and exec_poll). */
  canUse?: ((tool: McpToolName) => boolean) | undefined;
}

/** A tool's own refusal of its arguments (shown to the model as an error result). */
export class ToolInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ToolInputError';
  }
}

type Args = Record<string, unknown>;
type Handler = (args: Args, ctx: ToolContext) => Promise<string>;

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' ? v : undefined);
const bool = (v: unknown): boolean | undefined => (typeof v === 'boolean' ? v : undefined);
const strings = (v: unknown): string[] | undefined =>
  Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : undefined;
const stringMap = (v: unknown): Record<string, string> | undefined =>
  typeof v === 'object' && v !== null ? (v as Record<string, string>) : undefined;

function sandboxIdOf(args: Args, ctx: ToolContext): string {
  const given = str(args.sandboxId);
  const id = given ?? ctx.identity.sandboxId;
  if (id === undefined) throw new ToolInputError('sandboxId is required.');
  return id;
}

function json(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

function describeSandbox(info: SandboxInfo): string {
  return json({
    id: info.id,
    state: info.state,
    reason: info.reason,
    labels: info.labels,
    limits: info.limits,
    createdAt: info.createdAt,
    expiresAt: info.expiresAt,
  });
}

/** Drops undefined values so optional arguments are simply absent from requests. */
function defined<T extends Record<string, unknown>>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function decodeContent(args: Args, limits: OutputLimits): Uint8Array {
  const content = str(args.content) ?? '';
  const encoding = str(args.encoding) ?? 'utf8';
  if (encoding === 'base64' && !/^[A-Za-z0-9+/]*={0,2}$/.test(content))
    throw new ToolInputError('content is not valid base64.');
  // Checked before decoding: base64 decodes to 3/4 of its length, UTF-8 to at most its length x 3.
  const upperBound =
    encoding === 'base64' ? Math.ceil((content.length * 3) / 4) : content.length * 3;
  const bytes =
    upperBound <= limits.maxWriteBytes || content.length <= limits.maxWriteBytes
      ? Buffer.from(content, encoding === 'base64' ? 'base64' : 'utf8')
      : undefined;
  if (bytes === undefined || bytes.length > limits.maxWriteBytes)
    throw new ToolInputError(
      `content is larger than ${limits.maxWriteBytes} bytes; write it in parts or generate it inside the sandbox with exec.`,
    );
  return bytes;
}

/**
 * The policy's reason if it asks about this command, else null. Also null when this identity
 * cannot follow an approval (no policy_check or exec_poll) or the check fails: the exec then
 * takes the ordinary path, where the server still applies the policy (and holds an asked
 * command until a human decides).
 */
async function askReason(
  ctx: ToolContext,
  sandboxId: string,
  command: string,
  cwd: string | undefined,
): Promise<string | null> {
  if (!ctx.canUse?.('policy_check') || !ctx.canUse('exec_poll')) return null;
  if (!/^sb-[a-z2-7]{20}$/.test(sandboxId)) return null;
  try {
    const r = await ctx.client.request<{ decision: string; reason: string }>(
      defined({
        method: 'POST' as const,
        path: `/v1/sandboxes/${sandboxId}/policy/check`,
        json: defined({ command, cwd }),
        signal: ctx.signal,
      }) as { method: 'POST'; path: string },
    );
    return r.decision === 'ask' ? r.reason : null;
  } catch {
    return null;
  }
}

export const HANDLERS: Readonly<Record<McpToolName, Handler>> = {
  async sandbox_create(args, { client, signal }) {
    const network = args.network as { allow?: string[]; deny?: string[] } | undefined;
    const sandbox = await client.createSandbox(
      defined({
        labels: stringMap(args.labels),
        timeoutMs: num(args.timeoutMs),
        limits: args.limits as Record<string, number> | undefined,
        network: network ? { allow: network.allow ?? [], deny: network.deny ?? [] } : undefined,
        signal,
      }),
    );
    return `Created sandbox ${sandbox.id}.\n${describeSandbox(sandbox.info!)}`;
  },

  async sandbox_list(args, { client, identity, signal, limits }) {
    // A key restricted to one sandbox may not list the tenant; it sees its own sandbox only.
    const items = identity.sandboxId
      ? [await client.getSandboxInfo(identity.sandboxId, defined({ signal }))]
      : (
          await client.listSandboxes(
            defined({
              state: str(args.state) as SandboxInfo['state'] | undefined,
              labelSelector: str(args.labelSelector),
              limit: num(args.limit) ?? 50,
              signal,
            }),
          )
        ).items;
    if (items.length === 0) return 'No sandboxes.';
    const lines = items.map(
      (s) =>
        `${s.id}  ${s.state.padEnd(10)}  ${
          Object.entries(s.labels)
            .map(([k, v]) => `${k}=${v}`)
            .join(',') || '-'
        }  expires ${s.expiresAt ?? 'never'}`,
    );
    return capText(lines.join('\n'), limits.maxResultChars);
  },

  async sandbox_info(args, ctx) {
    return describeSandbox(
      await ctx.client.getSandboxInfo(sandboxIdOf(args, ctx), defined({ signal: ctx.signal })),
    );
  },

  async sandbox_destroy(args, ctx) {
    const id = sandboxIdOf(args, ctx);
    await ctx.client.sandbox(id).kill(defined({ signal: ctx.signal }));
    return `Destroyed sandbox ${id}.`;
  },

  async sandbox_pause(args, ctx) {
    const info = await ctx.client
      .sandbox(sandboxIdOf(args, ctx))
      .pause(defined({ signal: ctx.signal }));
    return `Paused.\n${describeSandbox(info)}`;
  },

  async sandbox_resume(args, ctx) {
    const info = await ctx.client
      .sandbox(sandboxIdOf(args, ctx))
      .resume(defined({ signal: ctx.signal }));
    return `Resumed.\n${describeSandbox(info)}`;
  },

  async exec(args, ctx) {
    const { limits } = ctx;
    const sandboxId = sandboxIdOf(args, ctx);
    const asked = await askReason(ctx, sandboxId, str(args.command)!, str(args.cwd));
    if (asked !== null) {
      const handle = await ctx.client.sandbox(sandboxId).commands.run(str(args.command)!, {
        ...defined({
          cwd: str(args.cwd),
          env: stringMap(args.env),
          timeoutMs: num(args.timeoutMs),
          stdin: str(args.stdin),
          signal: ctx.signal,
        }),
        background: true,
      });
      return followAskedExec(
        handle,
        asked,
        ctx.approvals ?? { waitMs: 0, pollIntervalMs: 500 },
        limits,
        ctx.signal,
      );
    }
    const r = await ctx.client.sandbox(sandboxId).commands.run(
      str(args.command)!,
      defined({
        cwd: str(args.cwd),
        env: stringMap(args.env),
        timeoutMs: num(args.timeoutMs),
        stdin: str(args.stdin),
        // One byte more than shown, so a cut is detected here even when the server kept it all.
        maxOutputBytes: limits.maxStreamBytes + 1,
        signal: ctx.signal,
      }),
    );
    const status =
      r.exitCode !== null ? `exit code ${r.exitCode}` : `ended by signal ${r.signal ?? 'unknown'}`;
    const notes = [
      ...(r.timedOut ? ['timed out: the command and its processes were killed'] : []),
      ...(r.interrupted ? ['interrupted'] : []),
    ];
    return (
      `${status}${notes.length > 0 ? ` (${notes.join('; ')})` : ''}, ${r.durationMs} ms\n` +
      renderStream('stdout', r.stdoutBytes, limits.maxStreamBytes, r.stdoutTruncated) +
      renderStream('stderr', r.stderrBytes, limits.maxStreamBytes, r.stderrTruncated)
    );
  },

  async exec_background(args, ctx) {
    const handle = await ctx.client
      .sandbox(sandboxIdOf(args, ctx))
      .commands.run(str(args.command)!, {
        ...defined({
          cwd: str(args.cwd),
          env: stringMap(args.env),
          timeoutMs: num(args.timeoutMs),
          signal: ctx.signal,
        }),
        background: true,
      });
    const state = stateOf(handle.started);
    if (state.status === 'pending') {
      return `Execution ${handle.id} is waiting for a human approval (${state.approvalId ?? 'approval'}): the permission policy asks before this command runs. It starts once approved; do not start it again. Follow it with exec_poll {"execId": "${handle.id}", "cursor": "0"}.`;
    }
    return `Started execution ${handle.id} (${handle.started.status}). Read its output with exec_poll {"execId": "${handle.id}", "cursor": "0"}.`;
  },

  async exec_poll(args, ctx) {
    const { limits } = ctx;
    const commands = ctx.client.sandbox(sandboxIdOf(args, ctx)).commands;
    const handle = await commands.connect(str(args.execId)!, defined({ signal: ctx.signal }));
    const page = await handle.logs(
      defined({
        cursor: str(args.cursor) ?? '0',
        maxBytes: limits.maxStreamBytes * 2,
        signal: ctx.signal,
      }),
    );
    const out = { stdout: [] as Uint8Array[], stderr: [] as Uint8Array[] };
    for (const c of page.chunks) out[c.stream].push(c.data);
    const e = stateOf(page.exec);
    const status = describeState(e);
    const more =
      page.chunks.length > 0 || e.status === 'running' || e.status === 'pending'
        ? `Call exec_poll again with cursor "${page.nextCursor}" for more.`
        : 'All output has been read.';
    return (
      `${status}; cursor ${page.nextCursor}. ${more}\n` +
      (page.dropped
        ? '[older output was dropped: the server keeps at most 1 MiB per execution]\n'
        : '') +
      renderStream('stdout', Buffer.concat(out.stdout), limits.maxStreamBytes, false) +
      renderStream('stderr', Buffer.concat(out.stderr), limits.maxStreamBytes, false)
    );
  },

  async exec_kill(args, ctx) {
    const commands = ctx.client.sandbox(sandboxIdOf(args, ctx)).commands;
    const handle = await commands.connect(str(args.execId)!, defined({ signal: ctx.signal }));
    const info = await handle.kill(defined({ signal: ctx.signal }));
    return `Execution ${info.id}: ${info.status}${info.status === 'running' ? ' (being stopped)' : ''}.`;
  },

  async file_read(args, ctx) {
    const { limits } = ctx;
    const files = ctx.client.sandbox(sandboxIdOf(args, ctx)).files;
    const path = str(args.path)!;
    const stat = await files.stat(path, defined({ signal: ctx.signal }));
    if (stat.type !== 'file')
      throw new ToolInputError(
        `${path} is a ${stat.type}, not a regular file; use file_list for directories.`,
      );
    const offset = num(args.offset) ?? 0;
    if (offset > stat.size)
      throw new ToolInputError(
        `offset ${offset} is past the end of the file (${stat.size} bytes).`,
      );
    const length = Math.min(
      num(args.length) ?? limits.maxReadBytes,
      limits.maxReadBytes,
      stat.size - offset,
    );
    const bytes =
      length === 0
        ? new Uint8Array(0)
        : await files.read(path, defined({ offset, length, signal: ctx.signal }));
    const end = offset + bytes.length;
    const header =
      end < stat.size || offset > 0
        ? `[bytes ${offset}-${end} of ${stat.size}${end < stat.size ? `; call file_read with offset ${end} for more` : ''}]\n`
        : '';
    if (looksLikeText(bytes)) return header + Buffer.from(bytes).toString('utf8');
    return `${header}[binary content, base64]\n${Buffer.from(bytes).toString('base64')}`;
  },

  async file_write(args, ctx) {
    const bytes = decodeContent(args, ctx.limits);
    const r = await ctx.client
      .sandbox(sandboxIdOf(args, ctx))
      .files.write(
        str(args.path)!,
        bytes,
        defined({ mode: num(args.mode), createOnly: bool(args.createOnly), signal: ctx.signal }),
      );
    return `Wrote ${r.size} bytes to ${r.path}.`;
  },

  async file_edit(args, ctx) {
    const r = await ctx.client
      .sandbox(sandboxIdOf(args, ctx))
      .files.edit(
        str(args.path)!,
        str(args.oldText)!,
        str(args.newText)!,
        defined({ replaceAll: bool(args.replaceAll), signal: ctx.signal }),
      );
    return `Replaced ${r.replacements} occurrence(s) in ${str(args.path)!}.`;
  },

  async file_list(args, ctx) {
    const path = str(args.path)!;
    const listing = await ctx.client
      .sandbox(sandboxIdOf(args, ctx))
      .files.list(path, defined({ signal: ctx.signal }));
    const lines = listing.entries.map(
      (e) =>
        `${e.type.padEnd(9)} ${e.mode.toString(8).padStart(4, '0')} ${String(e.size).padStart(10)}  ${e.name}`,
    );
    if (listing.truncated) lines.push('[listing truncated by the server: too many entries]');
    return capText(
      lines.length > 0 ? lines.join('\n') : `${path} is empty.`,
      ctx.limits.maxResultChars,
    );
  },

  async file_search(args, ctx) {
    const r = await ctx.client
      .sandbox(sandboxIdOf(args, ctx))
      .files.search(
        str(args.path)!,
        str(args.glob)!,
        defined({ maxResults: num(args.maxResults), signal: ctx.signal }),
      );
    const lines = r.matches.map((m) => `${m.type.padEnd(9)} ${m.path}`);
    if (r.truncated) lines.push('[more matches exist: raise maxResults or narrow the glob]');
    return capText(lines.length > 0 ? lines.join('\n') : 'No matches.', ctx.limits.maxResultChars);
  },

  async network_policy_get(args, ctx) {
    const view = await ctx.client
      .sandbox(sandboxIdOf(args, ctx))
      .network.get(defined({ signal: ctx.signal }));
    return capText(json(view), ctx.limits.maxResultChars);
  },

  async network_policy_set(args, ctx) {
    const view = await ctx.client
      .sandbox(sandboxIdOf(args, ctx))
      .network.update(
        { allow: strings(args.allow) ?? [], deny: strings(args.deny) ?? [] },
        defined({ signal: ctx.signal }),
      );
    return capText(
      `Egress rules replaced.\n${json({ rules: view.rules, effective: view.effective })}`,
      ctx.limits.maxResultChars,
    );
  },

  async policy_check(args, ctx) {
    const id = sandboxIdOf(args, ctx);
    if (!/^sb-[a-z2-7]{20}$/.test(id)) throw new ToolInputError('sandboxId has the wrong format.');
    const r = await ctx.client.request<{ decision: string; reason: string; source: string }>(
      defined({
        method: 'POST' as const,
        path: `/v1/sandboxes/${id}/policy/check`,
        json: defined({ command: str(args.command)!, cwd: str(args.cwd) }),
        signal: ctx.signal,
      }) as { method: 'POST'; path: string },
    );
    const meaning =
      r.decision === 'allow'
        ? 'exec would run it'
        : r.decision === 'ask'
          ? 'exec would hold it until a human approves it: the call waits (with progress notifications) or returns a pending approval id to follow with exec_poll'
          : 'exec would refuse it';
    return `decision: ${r.decision} (${meaning})\nreason: ${r.reason}\npolicy: ${r.source}`;
  },
};
