/**
 * How an `exec` whose command the permission policy marks "ask" reaches the agent over MCP.
 * The command is started as a background execution, which the server holds as a pending
 * approval and returns at once with its approval id. Then either:
 *
 * - the call waits (the client sent a progress token and the wait budget is not spent): the
 *   execution's status is polled, `notifications/progress` tell the client it is waiting for a
 *   human (the approval id and the policy's reason), and once approved and finished the normal
 *   exec result is returned; denied, expired or cancelled is an error result with the reason;
 *   the MCP request being cancelled interrupts the execution, which cancels the approval; or
 * - the call returns a pending result at once (no progress token, or the wait budget ran out):
 *   it names the approval and the execution and tells the model to poll with exec_poll.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { CommandHandle, ExecInfo } from '../client/index.js';
import { renderStream, type OutputLimits } from './output.js';
import type { ProgressReporter } from './progress.js';

/** What the server reports for an execution, including the approval states. */
export type ExecState = Omit<ExecInfo, 'status'> & {
  status: 'pending' | 'running' | 'exited' | 'denied' | 'cancelled';
  approvalId?: string | null;
  notRunReason?: string | null;
};

export interface ApprovalWaitOptions {
  /** How long to wait for a human before answering with the pending result; 0 = do not wait. */
  waitMs: number;
  /** How often the execution's status is read while waiting. */
  pollIntervalMs: number;
  /** Present when the client sent a progress token. */
  progress?: ProgressReporter | undefined;
}

/** The approval was denied, expired or cancelled: the command never ran. */
export class ApprovalRefusedError extends Error {
  readonly code: 'POLICY_DENIED' | 'CONFLICT';
  constructor(code: 'POLICY_DENIED' | 'CONFLICT', message: string) {
    super(message);
    this.name = 'ApprovalRefusedError';
    this.code = code;
  }
}

export function stateOf(info: ExecInfo): ExecState {
  return info as unknown as ExecState;
}

/** The text a model gets for a command still waiting for a human. */
export function pendingText(
  sandboxId: string,
  execId: string,
  approvalId: string | null,
  policyReason: string,
): string {
  return [
    `PENDING APPROVAL: the permission policy requires a human to approve this command before it runs (${policyReason}). It has not run yet.`,
    `approval: ${approvalId ?? 'unknown'}  execution: ${execId}`,
    `Do not run it again. It starts as soon as a human approves it, and is refused if they deny it or nobody decides in time.`,
    `Call exec_poll {"sandboxId": "${sandboxId}", "execId": "${execId}"} later to see whether it was approved and to read its output.`,
  ].join('\n');
}

/** exec_poll's one-line status of an execution, approval states included. */
export function describeState(e: ExecState): string {
  switch (e.status) {
    case 'pending':
      return `waiting for a human approval (${e.approvalId ?? 'approval'}); it has not started`;
    case 'denied':
    case 'cancelled':
      return `not run (${e.status}): ${e.notRunReason ?? 'the approval was not granted'}`;
    case 'running':
      return 'running';
    default:
      return `exited: ${e.exitCode !== null ? `exit code ${e.exitCode}` : `signal ${e.signal ?? 'unknown'}`}${e.timedOut ? ' (timed out)' : ''}${e.interrupted ? ' (interrupted)' : ''}`;
  }
}

function refused(e: ExecState): ApprovalRefusedError {
  const why = e.notRunReason ?? `its approval ${e.approvalId ?? ''} was not granted`;
  return e.status === 'denied'
    ? new ApprovalRefusedError('POLICY_DENIED', `Denied by a human approver: ${why}`)
    : new ApprovalRefusedError('CONFLICT', `Not run: ${why}`);
}

/**
 * Follows a background execution started for an asked command until it has run (returns the
 * exec result text), was refused (throws ApprovalRefusedError), or the wait budget is spent
 * (returns the pending text). Cancelling `signal` interrupts the execution.
 */
export async function followAskedExec(
  handle: CommandHandle,
  policyReason: string,
  options: ApprovalWaitOptions,
  limits: OutputLimits,
  signal: AbortSignal | undefined,
): Promise<string> {
  let state = stateOf(handle.started);
  const approvalId = state.approvalId ?? null;
  if (state.status === 'pending' && options.waitMs <= 0) {
    return pendingText(handle.sandboxId, handle.id, approvalId, policyReason);
  }
  const deadline = Date.now() + options.waitMs;
  const { progress } = options;
  progress?.update(
    `Waiting for a human to approve this command (approval ${approvalId ?? 'unknown'}; policy: ${policyReason}).`,
  );
  let announcedRun = false;
  try {
    for (;;) {
      if (state.status === 'exited') break;
      if (state.status === 'denied' || state.status === 'cancelled') throw refused(state);
      if (state.status === 'pending' && Date.now() >= deadline) {
        return pendingText(handle.sandboxId, handle.id, approvalId, policyReason);
      }
      if (state.status === 'running' && !announcedRun) {
        announcedRun = true;
        progress?.update(
          `Approved${approvalId ? ` (${approvalId})` : ''}; the command is running.`,
        );
      }
      await sleep(options.pollIntervalMs, undefined, signal ? { signal } : {});
      state = stateOf(await handle.info(signal ? { signal } : {}));
    }
  } catch (err) {
    // The caller gave up: stop the command, which also cancels a still-pending approval.
    if (signal?.aborted) await handle.kill().catch(() => undefined);
    throw err;
  }
  return renderFinished(handle, limits, signal);
}

/** Reads a finished execution's log (bounded: the server keeps at most 1 MiB) into a result. */
async function renderFinished(
  handle: CommandHandle,
  limits: OutputLimits,
  signal: AbortSignal | undefined,
): Promise<string> {
  const kept = { stdout: [] as Uint8Array[], stderr: [] as Uint8Array[] };
  const seen = { stdout: 0, stderr: 0 };
  let cursor = '0';
  let dropped = false;
  let final: ExecState | undefined;
  while (final === undefined) {
    const page = await handle.logs({
      cursor,
      maxBytes: limits.maxStreamBytes * 2,
      ...(signal ? { signal } : {}),
    });
    dropped ||= page.dropped;
    for (const c of page.chunks) {
      // One byte past the limit is enough to know (and say) that the output was cut.
      if (seen[c.stream] <= limits.maxStreamBytes) kept[c.stream].push(c.data);
      seen[c.stream] += c.data.length;
    }
    cursor = page.nextCursor;
    if (page.chunks.length === 0) final = stateOf(page.exec);
  }
  const lost = dropped || final.truncated;
  const status =
    final.exitCode !== null
      ? `exit code ${final.exitCode}`
      : `ended by signal ${final.signal ?? 'unknown'}`;
  const notes = [
    ...(final.timedOut ? ['timed out: the command and its processes were killed'] : []),
    ...(final.interrupted ? ['interrupted'] : []),
  ];
  return (
    `${status}${notes.length > 0 ? ` (${notes.join('; ')})` : ''}, ${final.durationMs ?? 0} ms (after approval${final.approvalId ? ` ${final.approvalId}` : ''})\n` +
    renderStream('stdout', Buffer.concat(kept.stdout), limits.maxStreamBytes, lost) +
    renderStream('stderr', Buffer.concat(kept.stderr), limits.maxStreamBytes, lost)
  );
}
