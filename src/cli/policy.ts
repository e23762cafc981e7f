/**
 * `palisade policy check`: explain what the policy decides for one action.
 * Exit status: 0 allow, 1 deny, 2 ask, 3 invalid input.
 */
import { isPalisadeError, PalisadeError } from '../errors/index.js';
import {
  createPolicyEngine,
  loadPolicyFile,
  type Action,
  type DecisionResult,
  type LayerName,
  type PolicyLayer,
} from '../policy/index.js';

const USAGE = `Usage:
  palisade policy check [--policy FILE]... [--json] [--cwd DIR] -- 'shell command'
  palisade policy check [--policy FILE]... [--json] --tool Read|Write|Edit|Glob|Grep|LS PATH
  palisade policy check [--policy FILE]... [--json] --tool WebFetch URL
  palisade policy check [--policy FILE]... [--json] --tool Network HOST:PORT
  palisade policy check [--policy FILE]... [--json] --tool Mcp SERVER/TOOL

  --policy FILE   a policy file (YAML or JSON). Give up to three: the first is the operator
                  layer, the second the tenant layer, the third the sandbox layer.
                  Without any policy file everything is denied (the default).
  --json          print the decision as JSON (the stable format the audit log uses)
  --cwd DIR       the directory inside the sandbox the command runs in (default /workspace)

Exit status: 0 allow, 1 deny, 2 ask, 3 invalid input.
`;

const LAYER_ORDER: LayerName[] = ['operator', 'tenant', 'sandbox'];
const EXIT: Record<DecisionResult['decision'], number> = { allow: 0, deny: 1, ask: 2 };

export interface CliOutput {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const processOutput: CliOutput = {
  stdout: (text) => void process.stdout.write(text),
  stderr: (text) => void process.stderr.write(text),
};

interface CheckArgs {
  policies: string[];
  json: boolean;
  cwd: string | undefined;
  tool: string | undefined;
  rest: string[];
}

function usageError(message: string): PalisadeError {
  return new PalisadeError('INVALID_ARGUMENT', `${message}. Run 'palisade policy help' for usage.`);
}

function parseCheckArgs(args: string[]): CheckArgs {
  const out: CheckArgs = { policies: [], json: false, cwd: undefined, tool: undefined, rest: [] };
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    const value = (): string => {
      const v = args[++i];
      if (v === undefined) throw usageError(`${a} needs a value`);
      return v;
    };
    if (a === '--') {
      out.rest = args.slice(i + 1);
      return out;
    }
    if (a === '--policy') out.policies.push(value());
    else if (a === '--json') out.json = true;
    else if (a === '--cwd') out.cwd = value();
    else if (a === '--tool') out.tool = value();
    else if (a.startsWith('--')) throw usageError(`unknown option ${a}`);
    else {
      out.rest = args.slice(i);
      return out;
    }
  }
  return out;
}

function buildAction(parsed: CheckArgs): Action {
  const { tool, rest } = parsed;
  if (tool === undefined || tool === 'Bash') {
    if (rest.length === 0) throw usageError("give the shell command after '--'");
    const command = rest.join(' ');
    return parsed.cwd === undefined
      ? { tool: 'Bash', command }
      : { tool: 'Bash', command, cwd: parsed.cwd };
  }
  if (rest.length !== 1) throw usageError(`--tool ${tool} takes exactly one argument`);
  const arg = rest[0] as string;
  switch (tool) {
    case 'Read':
    case 'Write':
    case 'Edit':
    case 'Glob':
    case 'Grep':
    case 'LS':
      return parsed.cwd === undefined ? { tool, path: arg } : { tool, path: arg, cwd: parsed.cwd };
    case 'WebFetch':
      return { tool, url: arg };
    case 'Network': {
      const m = /^(?:\[([^\]]+)\]|([^:]+)):([0-9]{1,5})$/.exec(arg);
      const port = m ? Number(m[3]) : NaN;
      if (!m || !(port >= 1 && port <= 65535))
        throw usageError('--tool Network takes HOST:PORT, e.g. example.com:443 or [::1]:8080');
      return { tool, host: (m[1] ?? m[2]) as string, port };
    }
    case 'Mcp': {
      const slash = arg.indexOf('/');
      if (slash <= 0 || slash === arg.length - 1)
        throw usageError('--tool Mcp takes SERVER/TOOL, e.g. github/create_issue');
      return { tool, server: arg.slice(0, slash), name: arg.slice(slash + 1) };
    }
    default:
      throw usageError(
        `unknown tool ${tool}; use Bash, Read, Write, Edit, Glob, Grep, LS, WebFetch, Network or Mcp`,
      );
  }
}

function describeAction(action: Action): string {
  switch (action.tool) {
    case 'Bash':
      return action.command;
    case 'WebFetch':
      return action.url;
    case 'Network':
      return `${action.host}:${action.port}`;
    case 'Mcp':
      return `${action.server}/${action.name}`;
    default:
      return action.path;
  }
}

/** Human-readable rendering; control characters are escaped so output cannot spoof a terminal. */
export function formatDecision(result: DecisionResult): string {
  const safe = (text: string): string =>
    text.replace(/[\x00-\x1f\x7f]/g, (c) =>
      c === '\n'
        ? '\\n'
        : c === '\t'
          ? '\\t'
          : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
    );
  const lines = [
    `${result.decision.toUpperCase()}  ${result.action.tool}: ${safe(describeAction(result.action))}`,
    `  why: ${safe(result.reason)}`,
  ];
  if (!result.understood)
    lines.push('  note: the command was not fully understood, so it is never allowed silently');
  for (const r of result.rules)
    lines.push(
      `  rule: ${safe(r.rule)} [${r.effect}] from ${r.layer}${r.layer === 'builtin' ? '' : ` (${safe(r.source)})`}`,
    );
  if (result.subcommands && result.subcommands.length > 1) {
    lines.push('  commands:');
    for (const s of result.subcommands)
      lines.push(
        `    ${s.decision.padEnd(5)} ${safe(s.argv.join(' ') || s.text)} — ${safe(s.reason)}`,
      );
  }
  return lines.join('\n') + '\n';
}

export async function policyCommand(
  args: string[],
  output: CliOutput = processOutput,
): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === 'help' || sub === '--help' || sub === '-h') {
    output.stdout(USAGE);
    return sub === undefined ? 3 : 0;
  }
  if (sub !== 'check') {
    output.stderr(
      `palisade policy: unknown subcommand '${sub}'. Run 'palisade policy help' for usage.\n`,
    );
    return 3;
  }
  try {
    const parsed = parseCheckArgs(rest);
    if (parsed.policies.length > LAYER_ORDER.length)
      throw usageError('give at most three --policy files (operator, tenant, sandbox)');
    const action = buildAction(parsed);
    const layers: PolicyLayer[] = [];
    for (const [index, file] of parsed.policies.entries())
      layers.push(await loadPolicyFile(file, LAYER_ORDER[index] as LayerName));
    const engine = await createPolicyEngine({ layers });
    const result = engine.decide(action);
    output.stdout(parsed.json ? `${JSON.stringify(result)}\n` : formatDecision(result));
    return EXIT[result.decision];
  } catch (err) {
    if (isPalisadeError(err)) {
      output.stderr(`palisade policy: ${err.message} [${err.code}]\n`);
      return 3;
    }
    throw err;
  }
}
