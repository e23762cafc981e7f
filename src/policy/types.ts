import type { EgressPolicy } from './network/index.js';

export type Decision = 'allow' | 'ask' | 'deny';
export type LayerName = 'operator' | 'tenant' | 'sandbox';
export type FileTool = 'Read' | 'Write' | 'Edit' | 'Glob' | 'Grep' | 'LS';
export type RuleTool = 'Bash' | FileTool | 'WebFetch' | 'Network' | 'Mcp';

/**
 * One thing an agent wants to do. `cwd` (optional) is the sandbox directory the action runs
 * in; relative paths resolve against it, else against the workspace.
 */
export type Action =
  | { tool: 'Bash'; command: string; cwd?: string }
  | { tool: FileTool; path: string; cwd?: string }
  | { tool: 'WebFetch'; url: string }
  | { tool: 'Network'; host: string; port: number }
  | { tool: 'Mcp'; server: string; name: string };

export interface PermissionRule {
  /** The rule exactly as written, e.g. `Bash(npm run test:*)`. */
  text: string;
  tool: RuleTool;
  /** The part in parentheses; null for a bare tool name (matches every action of that tool). */
  specifier: string | null;
  effect: Decision;
}

export interface Permissions {
  /** What happens when no rule matches. Unset means "no opinion" (the engine's fallback is deny). */
  default: Decision | null;
  /** What happens to a command the analyser cannot fully understand. Unset: no opinion (ask). */
  notUnderstood: 'ask' | 'deny' | null;
  deny: PermissionRule[];
  ask: PermissionRule[];
  allow: PermissionRule[];
}

export interface PolicyLayer {
  name: LayerName;
  /** Where the layer came from (file path, or a label such as `api:tenant/acme`). */
  source: string;
  permissions: Permissions;
  network: EgressPolicy;
}

/** A rule that contributed to a decision, and where it came from. */
export interface MatchedRule {
  rule: string;
  /** `operator` | `tenant` | `sandbox`, or `builtin` for the dangerous-command list and analyser limits. */
  layer: string;
  source: string;
  effect: Decision;
}

export interface SubcommandResult {
  argv: string[];
  text: string;
  decision: Decision;
  reason: string;
  rules: MatchedRule[];
}

/**
 * The decision for one action. Field order is part of the contract (users and the audit log
 * read it): action, decision, reason, rules, subcommands (Bash only), understood.
 */
export interface DecisionResult {
  action: Action;
  decision: Decision;
  reason: string;
  rules: MatchedRule[];
  subcommands?: SubcommandResult[];
  understood: boolean;
}

/** An operator-added entry of the dangerous-command list. */
export interface DangerousRuleInput {
  /** A Bash rule, e.g. `Bash(terraform destroy:*)`. */
  rule: string;
  effect: 'deny' | 'ask';
  reason: string;
}

export interface PolicyLimits {
  /** Longest accepted shell command, in UTF-8 bytes. @default 16384 */
  maxCommandBytes?: number;
  /** Deepest nesting of subshells, substitutions and `sh -c`/`eval` levels. @default 16 */
  maxDepth?: number;
  /** Parse-time budget per decision, in milliseconds. @default 50 */
  maxParseMs?: number;
  /** Most simple commands analysed in one script. @default 256 */
  maxCommands?: number;
}

export interface PolicyEngineOptions {
  layers: PolicyLayer[];
  /** The sandbox's workspace and HOME. @default '/workspace' */
  workspace?: string;
  /** Operator extensions of the built-in dangerous-command list. */
  dangerous?: { extra?: DangerousRuleInput[] };
  limits?: PolicyLimits;
  /** Decisions for identical (command, cwd) pairs are memoised up to this many entries; 0 disables. @default 2048 */
  cacheEntries?: number;
}

export interface PolicyEngine {
  /** Synchronous; throws PalisadeError('INVALID_ARGUMENT') only for a malformed action object. */
  decide(action: Action): DecisionResult;
}
