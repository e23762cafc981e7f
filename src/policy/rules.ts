/**
 * Permission rules: `Tool` or `Tool(specifier)`. Parsing validates a rule completely, so a
 * policy that loads never fails later at decision time.
 */
import { PalisadeError } from '../errors/index.js';
import { parseEgressPolicy, type EgressPolicy } from './network/index.js';
import { compilePathPattern, globMatch, type PathPattern } from './paths.js';
import type { Decision, FileTool, PermissionRule, RuleTool } from './types.js';

export const MAX_RULE_LENGTH = 1024;

const TOOLS: ReadonlySet<string> = new Set([
  'Bash',
  'Read',
  'Write',
  'Edit',
  'Glob',
  'Grep',
  'LS',
  'WebFetch',
  'Network',
  'Mcp',
]);
export const FILE_TOOLS: ReadonlySet<string> = new Set<FileTool>([
  'Read',
  'Write',
  'Edit',
  'Glob',
  'Grep',
  'LS',
]);

/** Parse one rule string; the error message says what is wrong (the caller adds where). */
export function parseRule(text: unknown, effect: Decision): PermissionRule {
  if (typeof text !== 'string')
    throw new PalisadeError('INVALID_POLICY', 'a rule must be a string like "Bash(npm test:*)"');
  if (text.length === 0 || text.length > MAX_RULE_LENGTH) {
    throw new PalisadeError(
      'INVALID_POLICY',
      `a rule must be 1–${MAX_RULE_LENGTH} characters long`,
    );
  }
  if (text.includes('\0') || text.includes('\n'))
    throw new PalisadeError(
      'INVALID_POLICY',
      `rule ${JSON.stringify(text)} contains a NUL or newline`,
    );
  const open = text.indexOf('(');
  const name = open === -1 ? text.trim() : text.slice(0, open).trim();
  if (!TOOLS.has(name)) {
    throw new PalisadeError(
      'INVALID_POLICY',
      `rule ${JSON.stringify(text)}: unknown tool "${name}"; use one of ${[...TOOLS].join(', ')}`,
    );
  }
  const tool = name as RuleTool;
  if (open === -1) return { text, tool, specifier: null, effect };
  if (!text.endsWith(')'))
    throw new PalisadeError('INVALID_POLICY', `rule ${JSON.stringify(text)}: missing closing ")"`);
  const specifier = text.slice(open + 1, -1).trim();
  if (specifier.length === 0) {
    throw new PalisadeError(
      'INVALID_POLICY',
      `rule ${JSON.stringify(text)}: empty specifier; write "${tool}" alone to match everything`,
    );
  }
  return { text, tool, specifier, effect };
}

/** A Bash specifier, compiled. */
export type BashMatcher =
  | { kind: 'any' }
  | { kind: 'prefix'; tokens: string[] }
  | { kind: 'exact'; tokens: string[] }
  | { kind: 'glob'; pattern: string };

export function compileBashSpecifier(specifier: string | null): BashMatcher {
  if (specifier === null || specifier === '*' || specifier === ':*') return { kind: 'any' };
  if (specifier.endsWith(':*')) {
    const tokens = splitTokens(specifier.slice(0, -2));
    if (tokens.length === 0) return { kind: 'any' };
    return { kind: 'prefix', tokens };
  }
  const tokens = splitTokens(specifier);
  if (specifier.includes('*')) return { kind: 'glob', pattern: tokens.join(' ') };
  return { kind: 'exact', tokens };
}

function splitTokens(text: string): string[] {
  return text.split(/[ \t]+/).filter((t) => t.length > 0);
}

/** Match a normalised argv (argv[0] already reduced to the command name the caller wants). */
export function bashMatches(matcher: BashMatcher, argv: readonly string[]): boolean {
  switch (matcher.kind) {
    case 'any':
      return true;
    case 'exact':
      if (argv.length !== matcher.tokens.length) return false;
      return matcher.tokens.every((t, i) => tokenMatches(t, argv[i] as string));
    case 'prefix':
      if (argv.length < matcher.tokens.length) return false;
      return matcher.tokens.every((t, i) => tokenMatches(t, argv[i] as string));
    case 'glob':
      return globMatch(matcher.pattern, argv.join(' '));
  }
}

function tokenMatches(token: string, word: string): boolean {
  return token.includes('*') || token.includes('?') ? globMatch(token, word) : token === word;
}

/** A compiled rule, ready for matching. */
export type CompiledRule =
  | { tool: 'Bash'; rule: PermissionRule; bash: BashMatcher }
  | { tool: FileTool; rule: PermissionRule; path: PathPattern | null }
  | { tool: 'WebFetch' | 'Network'; rule: PermissionRule; egress: EgressPolicy | null }
  | { tool: 'Mcp'; rule: PermissionRule; server: string; name: string };

export function compileRule(rule: PermissionRule, workspace: string): CompiledRule {
  const { tool, specifier } = rule;
  if (tool === 'Bash') return { tool, rule, bash: compileBashSpecifier(specifier) };
  if (tool === 'WebFetch') {
    if (specifier === null) return { tool, rule, egress: null };
    if (!specifier.startsWith('domain:')) {
      throw new PalisadeError(
        'INVALID_POLICY',
        `rule ${JSON.stringify(rule.text)}: WebFetch rules look like WebFetch(domain:example.com)`,
      );
    }
    return {
      tool,
      rule,
      egress: parseEgressPolicy({ allow: [specifier.slice('domain:'.length).trim()] }, rule.text),
    };
  }
  if (tool === 'Network') {
    if (specifier === null) return { tool, rule, egress: null };
    return { tool, rule, egress: parseEgressPolicy({ allow: [specifier] }, rule.text) };
  }
  if (tool === 'Mcp') {
    if (specifier === null) return { tool, rule, server: '*', name: '*' };
    const slash = specifier.indexOf('/');
    const server = slash === -1 ? specifier : specifier.slice(0, slash);
    const name = slash === -1 ? '*' : specifier.slice(slash + 1);
    if (server.length === 0 || name.length === 0 || name.includes('/')) {
      throw new PalisadeError(
        'INVALID_POLICY',
        `rule ${JSON.stringify(rule.text)}: MCP rules look like Mcp(server), Mcp(server/tool) or Mcp(server/*)`,
      );
    }
    return { tool, rule, server, name };
  }
  return { tool, rule, path: specifier === null ? null : compilePathPattern(specifier, workspace) };
}

/**
 * Bash rules indexed by the command name they require, so a command is matched only against
 * the rules that could match it. Rules whose first word is a wildcard, and glob and match-all
 * rules, are candidates for every command. Candidates come back in the original rule order,
 * so the result is the same as checking every rule in turn.
 */
export class BashRuleIndex<T extends { compiled: CompiledRule }> {
  private readonly byFirstWord = new Map<string, number[]>();
  private readonly everyCommand: number[] = [];

  constructor(private readonly rules: readonly T[]) {
    rules.forEach((rule, index) => {
      const first = firstLiteralWord(rule.compiled);
      if (first === null) {
        this.everyCommand.push(index);
        return;
      }
      const list = this.byFirstWord.get(first);
      if (list === undefined) this.byFirstWord.set(first, [index]);
      else list.push(index);
    });
  }

  /** The rules that can match an argv whose first word is one of `firstWords`. */
  candidates(firstWords: readonly string[]): T[] {
    if (this.byFirstWord.size === 0) return this.rules as T[];
    let indexes = this.everyCommand;
    let copied = false;
    for (let i = 0; i < firstWords.length; i++) {
      const word = firstWords[i] as string;
      if (firstWords.indexOf(word) !== i) continue;
      const keyed = this.byFirstWord.get(word);
      if (keyed === undefined) continue;
      indexes = copied ? indexes.concat(keyed) : [...indexes, ...keyed];
      copied = true;
    }
    if (copied) indexes.sort((a, b) => a - b);
    return indexes.map((i) => this.rules[i] as T);
  }
}

/** The exact argv[0] a Bash rule requires, or null when it can match any command name. */
function firstLiteralWord(rule: CompiledRule): string | null {
  if (rule.tool !== 'Bash') return null;
  const m = rule.bash;
  if (m.kind !== 'exact' && m.kind !== 'prefix') return null;
  const first = m.tokens[0];
  if (first === undefined || first.includes('*') || first.includes('?')) return null;
  return first;
}
