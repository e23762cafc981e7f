/**
 * What the server needs from the permission policy engine (src/policy). Kept structural so the
 * server builds and runs whether or not a policy is configured; `palisade serve` passes the
 * real engine when the operator configures a policy file.
 */
export interface ExecPolicyDecision {
  decision: 'allow' | 'ask' | 'deny';
  reason: string;
}

export interface ExecPolicy {
  decide(action: {
    tool: 'Bash';
    command: string;
    cwd?: string;
  }): ExecPolicyDecision | Promise<ExecPolicyDecision>;
}

/** Renders argv as one POSIX shell string so argv execs are checked like command strings. */
export function argvToShell(argv: readonly string[]): string {
  return argv
    .map((arg) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`))
    .join(' ');
}
