/**
 * The policy engine: layered permission rules (deny > ask > allow, across operator, tenant
 * and sandbox layers), shell-command analysis, the dangerous-command list and egress rules.
 * Advisory defense in depth above the kernel sandbox, never a replacement for it.
 */
import { PalisadeError, isPalisadeError } from '../errors/index.js';
import { createDangerousList, type DangerousList } from './dangerous.js';
import { decideEgress, parseEgressPolicy, type EgressPolicy } from './network/index.js';
import { canonicalPath, pathMatches } from './paths.js';
import { BashRuleIndex, bashMatches, compileRule, FILE_TOOLS, type CompiledRule } from './rules.js';
import { analyseShell, commandName, ShellParser, type ShellCommand } from './shell/index.js';
import type {
  Action,
  Decision,
  DecisionResult,
  FileTool,
  MatchedRule,
  PolicyEngine,
  PolicyEngineOptions,
  PolicyLayer,
  SubcommandResult,
} from './types.js';

type Limits = {
  maxCommandBytes: number;
  maxDepth: number;
  maxParseMs: number;
  maxCommands: number;
};
export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  maxCommandBytes: 16 * 1024,
  maxDepth: 16,
  // Wall-clock, so it must absorb a loaded host and a cold start: the command-size, depth and
  // count limits bound the real work; this only stops a pathological parse from hanging.
  maxParseMs: 250,
  maxCommands: 256,
});
const DEFAULT_CACHE_ENTRIES = 2048;
const MAX_URL_LENGTH = 8192;
const MAX_NAME_LENGTH = 1024;
/** argv[0] under these directories is the same program as its bare name, for allow rules. */
const SYSTEM_DIRS = new Set([
  '/bin',
  '/usr/bin',
  '/usr/local/bin',
  '/sbin',
  '/usr/sbin',
  '/usr/local/sbin',
]);

const RANK: Record<Decision, number> = { allow: 0, ask: 1, deny: 2 };
const DENY_ASK: readonly Decision[] = ['deny', 'ask'];
function worst(a: Decision, b: Decision): Decision {
  return RANK[a] >= RANK[b] ? a : b;
}

interface LayeredRule {
  compiled: CompiledRule;
  layer: string;
  source: string;
}

/** Rules a file action of each tool is checked against (a Read deny also stops Grep). */
const RELATED_FILE_TOOLS: Record<FileTool, FileTool[]> = {
  Read: ['Read'],
  Glob: ['Glob', 'Read'],
  Grep: ['Grep', 'Read'],
  LS: ['LS', 'Read'],
  Write: ['Write', 'Edit'],
  Edit: ['Edit', 'Write'],
};

interface Verdict {
  decision: Decision;
  reason: string;
  rules: MatchedRule[];
  understood: boolean;
}

function describe(m: MatchedRule): string {
  return m.layer === 'builtin'
    ? `${m.rule} (built-in)`
    : `${m.rule} (${m.layer} policy ${m.source})`;
}

function verb(d: Decision): string {
  return d === 'allow' ? 'allowed' : d === 'ask' ? 'needs approval' : 'denied';
}

/** Build a verdict from matched rules: deny beats ask beats allow; nothing → fallback. */
function verdictFrom(
  matches: MatchedRule[],
  fallback: Decision,
  fallbackReason: string,
  understood = true,
): Verdict {
  let decision: Decision | null = null;
  for (const m of matches) decision = decision === null ? m.effect : worst(decision, m.effect);
  if (decision === null)
    return { decision: fallback, reason: fallbackReason, rules: [], understood };
  const deciding = matches.filter((m) => m.effect === decision);
  const first = deciding[0] as MatchedRule;
  const more = deciding.length > 1 ? ` and ${deciding.length - 1} more` : '';
  return {
    decision,
    reason: `${verb(decision)} by ${describe(first)}${more}`,
    rules: deciding,
    understood,
  };
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

function positiveInt(value: unknown, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new PalisadeError('INVALID_LIMIT', `limits.${name} must be a positive whole number`);
  }
  return value;
}

export async function createPolicyEngine(options: PolicyEngineOptions): Promise<PolicyEngine> {
  if (typeof options !== 'object' || options === null || !Array.isArray(options.layers)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'createPolicyEngine needs { layers: PolicyLayer[] } (load them with loadPolicyFile or parsePolicy)',
    );
  }
  const workspace = options.workspace ?? '/workspace';
  if (typeof workspace !== 'string' || !workspace.startsWith('/') || workspace.includes('\0')) {
    throw new PalisadeError(
      'INVALID_PATH',
      'workspace must be an absolute path such as /workspace',
    );
  }
  const limits = {
    maxCommandBytes: positiveInt(
      options.limits?.maxCommandBytes,
      'maxCommandBytes',
      DEFAULT_LIMITS.maxCommandBytes,
    ),
    maxDepth: positiveInt(options.limits?.maxDepth, 'maxDepth', DEFAULT_LIMITS.maxDepth),
    maxParseMs: positiveInt(options.limits?.maxParseMs, 'maxParseMs', DEFAULT_LIMITS.maxParseMs),
    maxCommands: positiveInt(
      options.limits?.maxCommands,
      'maxCommands',
      DEFAULT_LIMITS.maxCommands,
    ),
  };
  const cacheEntries = options.cacheEntries ?? DEFAULT_CACHE_ENTRIES;
  if (!Number.isInteger(cacheEntries) || cacheEntries < 0)
    throw new PalisadeError('INVALID_LIMIT', 'cacheEntries must be a whole number ≥ 0');
  const dangerous = createDangerousList(options.dangerous?.extra ?? []);
  const parser = await ShellParser.create();
  return new Engine(options.layers, workspace, limits, dangerous, parser, cacheEntries);
}

class Engine implements PolicyEngine {
  private readonly rules: Record<Decision, LayeredRule[]> = { deny: [], ask: [], allow: [] };
  /** Bash rules split out and indexed once: they are consulted for every simple command. */
  private readonly bashDenyAsk: BashRuleIndex<LayeredRule>;
  private readonly bashAllow: BashRuleIndex<LayeredRule>;
  /** File rules by the tool of the action (related tools included) and effect, in rule order. */
  private readonly fileRules = new Map<FileTool, Record<Decision, LayeredRule[]>>();
  private readonly networks: Array<{ layer: PolicyLayer; policy: EgressPolicy }> = [];
  private readonly defaultDecision: Decision;
  private readonly defaultSource: string;
  private readonly notUnderstood: 'ask' | 'deny';
  private readonly cache = new Map<string, DecisionResult>();
  private readonly fileRuleTools = new Set<string>();
  /** The start directory of commands sent without a cwd (the workspace), resolved once. */
  private readonly workspaceCwd: { path: string } | { error: string };
  private readonly fallbackReason: string;

  constructor(
    layers: PolicyLayer[],
    private readonly workspace: string,
    private readonly limits: Limits,
    private readonly dangerous: DangerousList,
    private readonly parser: ShellParser,
    private readonly cacheEntries: number,
  ) {
    let def: Decision | null = null;
    let defSource = 'built-in fallback';
    const bashDenyAsk: LayeredRule[] = [];
    const bashAllow: LayeredRule[] = [];
    let nu: 'ask' | 'deny' | null = null;
    for (const layer of layers) {
      if (typeof layer !== 'object' || layer === null || !layer.permissions || !layer.network) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          'each layer must come from loadPolicyFile, parsePolicy or parsePolicyObject',
        );
      }
      const p = layer.permissions;
      if (p.default !== null && (def === null || RANK[p.default] > RANK[def])) {
        def = p.default;
        defSource = `${layer.name} policy ${layer.source}`;
      }
      if (p.notUnderstood !== null && (nu === null || RANK[p.notUnderstood] > RANK[nu]))
        nu = p.notUnderstood;
      for (const effect of ['deny', 'ask', 'allow'] as const) {
        for (const rule of p[effect]) {
          const compiled = compileRule(rule, workspace);
          const layered = { compiled, layer: layer.name, source: layer.source };
          this.rules[effect].push(layered);
          if (compiled.tool === 'Bash')
            (effect === 'allow' ? bashAllow : bashDenyAsk).push(layered);
          if (FILE_TOOLS.has(rule.tool) && effect !== 'allow') this.fileRuleTools.add(rule.tool);
        }
      }
      this.networks.push({
        layer,
        policy: parseEgressPolicy(
          {
            allow: layer.network.allow.map((r) => r.raw),
            deny: layer.network.deny.map((r) => r.raw),
          },
          layer.source,
        ),
      });
    }
    this.bashDenyAsk = new BashRuleIndex(bashDenyAsk);
    this.bashAllow = new BashRuleIndex(bashAllow);
    for (const tool of Object.keys(RELATED_FILE_TOOLS) as FileTool[]) {
      const related = RELATED_FILE_TOOLS[tool];
      const byEffect: Record<Decision, LayeredRule[]> = { deny: [], ask: [], allow: [] };
      for (const effect of ['deny', 'ask', 'allow'] as const) {
        byEffect[effect] = this.rules[effect].filter(
          (l) => FILE_TOOLS.has(l.compiled.tool) && related.includes(l.compiled.tool as FileTool),
        );
      }
      this.fileRules.set(tool, byEffect);
    }
    this.defaultDecision = def ?? 'deny';
    this.defaultSource = defSource;
    this.fallbackReason = `no rule matched; the default is ${this.defaultDecision} (${this.defaultSource})`;
    this.workspaceCwd = this.resolve('.', undefined);
    this.notUnderstood = nu ?? 'ask';
  }

  decide(action: Action): DecisionResult {
    const clean = validateAction(action);
    switch (clean.tool) {
      case 'Bash':
        return this.decideBash(clean);
      case 'WebFetch':
        return this.finish(clean, this.decideWebFetch(clean.url));
      case 'Network':
        return this.finish(clean, this.decideNetwork(clean.host, clean.port, []));
      case 'Mcp':
        return this.finish(clean, this.decideMcp(clean.server, clean.name));
      default:
        return this.finish(clean, this.decideFile(clean.tool, clean.path, clean.cwd));
    }
  }

  private finish(action: Action, v: Verdict, subcommands?: SubcommandResult[]): DecisionResult {
    // Built field by field so the JSON field order is the documented one.
    const result = (
      subcommands === undefined
        ? {
            action,
            decision: v.decision,
            reason: v.reason,
            rules: v.rules,
            understood: v.understood,
          }
        : {
            action,
            decision: v.decision,
            reason: v.reason,
            rules: v.rules,
            subcommands,
            understood: v.understood,
          }
    ) satisfies DecisionResult;
    return result;
  }

  private fallback(): Verdict {
    return {
      decision: this.defaultDecision,
      reason: this.fallbackReason,
      rules: [],
      understood: true,
    };
  }

  private matched(l: LayeredRule): MatchedRule {
    return {
      rule: l.compiled.rule.text,
      layer: l.layer,
      source: l.source,
      effect: l.compiled.rule.effect,
    };
  }

  // ---- files ----

  private fileMatches(
    tool: FileTool,
    canonical: string,
    effects: readonly Decision[],
    globPath = false,
  ): MatchedRule[] {
    const out: MatchedRule[] = [];
    const byEffect = this.fileRules.get(tool);
    if (byEffect === undefined) return out;
    for (const effect of effects) {
      for (const l of byEffect[effect]) {
        const c = l.compiled;
        if ('path' in c && (c.path === null || pathMatches(c.path, canonical, globPath)))
          out.push(this.matched(l));
      }
    }
    return out;
  }

  private resolve(path: string, cwd: string | undefined): { path: string } | { error: string } {
    try {
      const base =
        cwd === undefined ? this.workspace : canonicalPath(cwd, this.workspace, this.workspace);
      return { path: canonicalPath(path, base, this.workspace) };
    } catch (err) {
      return { error: isPalisadeError(err) ? err.message : 'invalid path' };
    }
  }

  private decideFile(tool: FileTool, path: string, cwd: string | undefined): Verdict {
    const resolved = this.resolve(path, cwd);
    if ('error' in resolved)
      return { decision: 'deny', reason: resolved.error, rules: [], understood: false };
    const matches = this.fileMatches(tool, resolved.path, ['deny', 'ask', 'allow']);
    const fb = this.fallback();
    return verdictFrom(matches, fb.decision, fb.reason);
  }

  // ---- network ----

  private decideNetwork(host: string, port: number, extra: MatchedRule[]): Verdict {
    const matches: MatchedRule[] = [...extra];
    const target = { host, port };
    for (const effect of ['deny', 'ask', 'allow'] as const) {
      for (const l of this.rules[effect]) {
        const c = l.compiled;
        if (c.tool !== 'Network') continue;
        if (c.egress === null || egressRuleCovers(c.egress, target, effect))
          matches.push(this.matched(l));
      }
    }
    for (const { layer, policy } of this.networks) {
      const d = decideEgress(policy, target);
      if (d.rule !== null)
        matches.push({
          rule: `network.${d.decision}: ${d.rule.raw}`,
          layer: layer.name,
          source: layer.source,
          effect: d.decision,
        });
    }
    const fb = this.fallback();
    return verdictFrom(matches, fb.decision, `${host} port ${port}: ${fb.reason}`);
  }

  private decideWebFetch(url: string): Verdict {
    let parsed: URL;
    try {
      if (url.length > MAX_URL_LENGTH) throw new Error('too long');
      parsed = new URL(url);
    } catch {
      return {
        decision: 'deny',
        reason: `not a valid URL (at most ${MAX_URL_LENGTH} characters, like https://example.com/page)`,
        rules: [],
        understood: false,
      };
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      return {
        decision: 'deny',
        reason: `only http and https URLs can be fetched, not ${parsed.protocol}`,
        rules: [],
        understood: true,
      };
    }
    if (parsed.username !== '' || parsed.password !== '') {
      return {
        decision: 'deny',
        reason: 'URLs with credentials (user:password@) are refused',
        rules: [],
        understood: true,
      };
    }
    const host = parsed.hostname.startsWith('[') ? parsed.hostname.slice(1, -1) : parsed.hostname;
    const port = parsed.port !== '' ? Number(parsed.port) : parsed.protocol === 'https:' ? 443 : 80;
    const matches: MatchedRule[] = [];
    for (const effect of ['deny', 'ask', 'allow'] as const) {
      for (const l of this.rules[effect]) {
        const c = l.compiled;
        if (c.tool !== 'WebFetch') continue;
        if (c.egress === null || egressRuleCovers(c.egress, { host, port }, effect))
          matches.push(this.matched(l));
      }
    }
    return this.decideNetwork(host, port, matches);
  }

  // ---- MCP ----

  private decideMcp(server: string, name: string): Verdict {
    const matches: MatchedRule[] = [];
    for (const effect of ['deny', 'ask', 'allow'] as const) {
      for (const l of this.rules[effect]) {
        const c = l.compiled;
        if (c.tool === 'Mcp' && globOrEqual(c.server, server) && globOrEqual(c.name, name))
          matches.push(this.matched(l));
      }
    }
    const fb = this.fallback();
    return verdictFrom(matches, fb.decision, fb.reason);
  }

  // ---- shell ----

  private decideBash(action: Extract<Action, { tool: 'Bash' }>): DecisionResult {
    const key = this.cacheEntries > 0 ? `${action.cwd ?? ''}\0${action.command}` : '';
    if (this.cacheEntries > 0) {
      const hit = this.cache.get(key);
      if (hit !== undefined) {
        this.cache.delete(key);
        this.cache.set(key, hit);
        return hit;
      }
    }
    let result: DecisionResult;
    try {
      result = this.analyseBash(action);
    } catch {
      // Fail closed without leaking internals; analysis should never throw.
      result = this.finish(action, {
        decision: 'deny',
        reason: 'the command could not be analysed',
        rules: [{ rule: 'limit', layer: 'builtin', source: 'analyser', effect: 'deny' }],
        understood: false,
      });
    }
    if (this.cacheEntries > 0) {
      if (this.cache.size >= this.cacheEntries) {
        const oldest = this.cache.keys().next();
        if (!oldest.done) this.cache.delete(oldest.value);
      }
      // Cached results are shared between callers, so nobody may change them.
      this.cache.set(key, deepFreeze(result));
    }
    return result;
  }

  private limitDeny(action: Action, reason: string): DecisionResult {
    return this.finish(action, {
      decision: 'deny',
      reason,
      rules: [{ rule: 'limit', layer: 'builtin', source: 'analyser', effect: 'deny' }],
      understood: false,
    });
  }

  private analyseBash(action: Extract<Action, { tool: 'Bash' }>): DecisionResult {
    const command = action.command;
    // Cheap upper bound first: a UTF-16 length within a third of the limit cannot exceed it in UTF-8.
    if (
      command.length * 3 > this.limits.maxCommandBytes &&
      Buffer.byteLength(command, 'utf8') > this.limits.maxCommandBytes
    ) {
      return this.limitDeny(
        action,
        `the command is longer than ${this.limits.maxCommandBytes} bytes; split it up or raise limits.maxCommandBytes`,
      );
    }
    if (command.includes('\0'))
      return this.limitDeny(action, 'the command contains a NUL byte, which no shell can run');
    const resolvedCwd =
      action.cwd === undefined ? this.workspaceCwd : this.resolve('.', action.cwd);
    if ('error' in resolvedCwd) return this.limitDeny(action, `cwd: ${resolvedCwd.error}`);
    const cwd = resolvedCwd.path;
    let analysis;
    try {
      analysis = analyseShell(this.parser, command, {
        home: this.workspace,
        maxDepth: this.limits.maxDepth,
        maxCommands: this.limits.maxCommands,
        deadline: performance.now() + this.limits.maxParseMs,
      });
    } catch {
      // Fail closed without leaking internals; the analyser should never throw.
      return this.limitDeny(action, 'the command could not be analysed');
    }
    const limitProblem = analysis.problems.find((p) => p.kind === 'limit');
    if (limitProblem)
      return this.limitDeny(action, `${limitProblem.message}; the command was not analysed`);

    const subcommands: SubcommandResult[] = [];
    let understood = analysis.problems.length === 0;
    // The worst decision so far, the reason and rules behind it; the reason text is built only
    // when a verdict becomes the deciding one.
    let decision: Decision = 'allow';
    let reason = '';
    let rules: MatchedRule[] = [];
    for (const p of analysis.problems) {
      const matched: MatchedRule = {
        rule: 'not-understood',
        layer: 'builtin',
        source: 'analyser',
        effect: this.notUnderstood,
      };
      if (reason === '' || RANK[this.notUnderstood] > RANK[decision]) {
        decision = this.notUnderstood;
        reason = `not fully understood: ${p.message}`;
        rules = [matched];
      } else if (this.notUnderstood === decision) addRules(rules, [matched]);
    }
    const several = analysis.commands.length > 1;
    for (const cmd of analysis.commands) {
      const v = this.decideCommand(cmd, cwd);
      if (!v.understood) understood = false;
      subcommands.push({
        argv: cmd.argv,
        text: cmd.text,
        decision: v.decision,
        reason: v.reason,
        rules: v.rules,
      });
      if (reason === '' || RANK[v.decision] > RANK[decision]) {
        decision = v.decision;
        reason = several ? `${JSON.stringify(clip(cmd.text))}: ${v.reason}` : v.reason;
        rules = [...v.rules];
      } else if (v.decision === decision) addRules(rules, v.rules);
    }
    if (reason === '') reason = 'the command runs nothing';
    return this.finish(action, { decision, reason, rules, understood }, subcommands);
  }

  private decideCommand(cmd: ShellCommand, cwd: string): Verdict {
    const matches: MatchedRule[] = [];
    let understood = true;
    for (const p of cmd.problems) {
      understood = false;
      matches.push({
        rule: `not-understood: ${p.message}`,
        layer: 'builtin',
        source: 'analyser',
        effect: this.notUnderstood,
      });
    }
    // Relative paths are checked from the start directory and from every directory the
    // script cd'ed into before this command (subshell scoping is not tracked: over-check).
    const bases = [cwd];
    for (const target of cmd.cdTargets)
      bases.push(canonicalPath(target, bases[bases.length - 1] as string, this.workspace));
    for (const d of this.dangerous.check(cmd, bases)) {
      matches.push({ rule: d.id, layer: 'builtin', source: d.reason, effect: d.effect });
    }
    const name = commandName(cmd.argv[0] ?? '');
    const hasArgv = cmd.argv.length > 0;
    // The same argv with argv[0] by base name (`/usr/bin/rm` → `rm`); shared when equal.
    const byName = hasArgv && name !== cmd.argv[0] ? [name, ...cmd.argv.slice(1)] : cmd.argv;
    const full = cmd.fullArgv !== cmd.argv && cmd.fullArgv.length > 0 ? cmd.fullArgv : null;
    const fullName = full ? commandName(full[0] as string) : '';
    const fullByName = full && fullName !== full[0] ? [fullName, ...full.slice(1)] : full;
    if (hasArgv) {
      const firstWords =
        fullByName === null
          ? [name, cmd.argv[0] as string]
          : [name, cmd.argv[0] as string, fullName];
      for (const l of this.bashDenyAsk.candidates(firstWords)) {
        const c = l.compiled;
        if (c.tool !== 'Bash') continue;
        if (
          bashMatches(c.bash, byName) ||
          (byName !== cmd.argv && bashMatches(c.bash, cmd.argv)) ||
          (fullByName !== null && bashMatches(c.bash, fullByName))
        ) {
          matches.push(this.matched(l));
        }
      }
    }
    if (cmd.files.length > 0 && this.fileRuleTools.size > 0) {
      for (const f of cmd.files) {
        const seen = new Set<string>();
        for (const base of f.path.startsWith('/') || f.path.startsWith('~') ? [cwd] : bases) {
          let canonical: string;
          try {
            canonical = canonicalPath(f.path, base, this.workspace);
          } catch {
            understood = false;
            matches.push({
              rule: 'not-understood: invalid path',
              layer: 'builtin',
              source: 'analyser',
              effect: this.notUnderstood,
            });
            break;
          }
          if (seen.has(canonical)) continue;
          seen.add(canonical);
          for (const m of this.fileMatches(f.tool, canonical, DENY_ASK, f.glob === true)) {
            if (!matches.some((x) => x.rule === m.rule && x.layer === m.layer)) matches.push(m);
          }
        }
      }
    }
    if (cmd.dynamicFiles && this.fileRuleTools.size > 0) {
      understood = false;
      matches.push({
        rule: 'not-understood: a file path is only known at run time and file rules exist',
        layer: 'builtin',
        source: 'analyser',
        effect: this.notUnderstood,
      });
    }
    const base = this.allowOrDefault(cmd, byName, understood);
    if (matches.length > 0) {
      const v = verdictFrom(matches, 'allow', '', understood);
      // An unclear or ask-worthy command that no allow rule covers falls to the default.
      if (RANK[base.decision] > RANK[v.decision]) return { ...base, understood };
      const first = v.rules[0];
      if (first && first.layer === 'builtin') {
        const text = first.rule.startsWith('not-understood: ')
          ? `not fully understood: ${first.rule.slice(16)}`
          : `${verb(v.decision)}: ${first.source} (${first.rule})`;
        v.reason = text;
      }
      return v;
    }
    return base;
  }

  /** The allow rule that covers this command, else the default. */
  private allowOrDefault(cmd: ShellCommand, byName: string[], understood: boolean): Verdict {
    const hasArgv = cmd.argv.length > 0;
    // A nested script that could not be read leaves the wrapper itself (eval, sh -c) to the rules.
    if ((cmd.container && cmd.problems.length === 0) || !hasArgv) {
      return {
        decision: 'allow',
        reason: hasArgv
          ? 'runs a nested script, whose commands are checked separately'
          : 'no command to run',
        rules: [],
        understood,
      };
    }
    // Allow rules see argv[0] as its bare name only for the system directories: `./ls` is not `ls`.
    const allowArgv =
      cmd.argv[0]?.includes('/') && SYSTEM_DIRS.has(dirOf(cmd.argv[0])) ? byName : cmd.argv;
    for (const l of this.bashAllow.candidates([allowArgv[0] as string])) {
      const c = l.compiled;
      if (c.tool === 'Bash' && bashMatches(c.bash, allowArgv)) {
        const m = this.matched(l);
        return { decision: 'allow', reason: `allowed by ${describe(m)}`, rules: [m], understood };
      }
    }
    return this.fallback();
  }
}

function dirOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash <= 0 ? '/' : path.slice(0, slash);
}

/** Add the rules not already listed (same rule text from the same layer). */
function addRules(rules: MatchedRule[], more: readonly MatchedRule[]): void {
  for (const m of more)
    if (!rules.some((r) => r.rule === m.rule && r.layer === m.layer)) rules.push(m);
}

function clip(text: string): string {
  const oneLine = text.replace(/\s+/g, ' ');
  return oneLine.length > 60 ? `${oneLine.slice(0, 57)}...` : oneLine;
}

function globOrEqual(pattern: string, value: string): boolean {
  if (pattern === '*') return true;
  if (!pattern.includes('*')) return pattern === value;
  const parts = pattern.split('*');
  let pos = 0;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as string;
    if (i === 0) {
      if (!value.startsWith(part)) return false;
      pos = part.length;
    } else if (i === parts.length - 1) {
      return value.length - part.length >= pos && value.endsWith(part);
    } else {
      const at = value.indexOf(part, pos);
      if (at === -1) return false;
      pos = at + part.length;
    }
  }
  return pos === value.length;
}

/** Does a one-rule egress policy cover the target? Deny/ask rules cover every port unless they name ports. */
function egressRuleCovers(
  policy: EgressPolicy,
  target: { host: string; port: number },
  effect: Decision,
): boolean {
  const probe: EgressPolicy = effect === 'allow' ? policy : { allow: [], deny: policy.allow };
  const d = decideEgress(probe, target);
  return d.rule !== null && d.decision === (effect === 'allow' ? 'allow' : 'deny');
}

function str(value: unknown, field: string, max: number): string {
  if (typeof value !== 'string')
    throw new PalisadeError('INVALID_ARGUMENT', `action.${field} must be a string`);
  if (value.length > max)
    throw new PalisadeError('INVALID_ARGUMENT', `action.${field} is longer than ${max} characters`);
  return value;
}

/** A copy of the action with only its known fields (the result echoes it). */
function validateAction(action: unknown): Action {
  if (typeof action !== 'object' || action === null)
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'an action must be an object like { tool: "Bash", command: "ls" }',
    );
  const a = action as Record<string, unknown>;
  const cwd = a['cwd'] === undefined ? undefined : str(a['cwd'], 'cwd', 4096);
  switch (a['tool']) {
    case 'Bash': {
      // Length is checked in bytes by the engine (a clear deny, not an error); this bounds memory only.
      const command = str(a['command'], 'command', 16 * 1024 * 1024);
      return cwd === undefined ? { tool: 'Bash', command } : { tool: 'Bash', command, cwd };
    }
    case 'Read':
    case 'Write':
    case 'Edit':
    case 'Glob':
    case 'Grep':
    case 'LS': {
      const path = str(a['path'], 'path', 65536);
      return cwd === undefined ? { tool: a['tool'], path } : { tool: a['tool'], path, cwd };
    }
    case 'WebFetch':
      return { tool: 'WebFetch', url: str(a['url'], 'url', 65536) };
    case 'Network': {
      const host = str(a['host'], 'host', MAX_NAME_LENGTH);
      const port = a['port'];
      if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          'action.port must be a whole number from 1 to 65535',
        );
      }
      return { tool: 'Network', host, port };
    }
    case 'Mcp':
      return {
        tool: 'Mcp',
        server: str(a['server'], 'server', MAX_NAME_LENGTH),
        name: str(a['name'], 'name', MAX_NAME_LENGTH),
      };
    default:
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `unknown action tool ${JSON.stringify(String(a['tool']).slice(0, 40))}; use Bash, Read, Write, Edit, Glob, Grep, LS, WebFetch, Network or Mcp`,
      );
  }
}
