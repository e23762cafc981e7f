/**
 * Shell analysis: parse a command string with tree-sitter-bash and list every simple command
 * the shell could run — in lists, pipelines, subshells, groups, substitutions, here-docs,
 * function bodies, loops and conditionals, behind wrappers (env, timeout, sudo, xargs, …),
 * `find -exec`, and inside literal scripts run by `sh -c`, `eval` and `source`. Anything that
 * cannot be fully understood is reported as a problem, never silently dropped.
 */
import type { ShellParser } from './parser.js';
import { fieldChild, fieldChildren, type SyntaxNode as Node } from './syntax.js';
import { evaluateWord } from './words.js';

export interface FileAccess {
  tool: 'Read' | 'Write';
  path: string;
  /** The path contains unquoted glob characters: it stands for every path it could expand to. */
  glob?: boolean;
}

/** Per-argument knowledge: a literal, a glob pattern, or a value known only at run time. */
const LITERAL = 0;
const GLOB = 1;
const DYNAMIC = 2;
type ArgKind = typeof LITERAL | typeof GLOB | typeof DYNAMIC;

export interface Problem {
  /** `limit`: an input bound was hit (always deny). `unclear`: not fully understood (ask or deny). */
  kind: 'limit' | 'unclear';
  message: string;
}

export interface ShellCommand {
  /** The command that actually runs, after wrappers are stripped; argv[0] as written. */
  argv: string[];
  /** The command as written, wrappers included. */
  fullArgv: string[];
  /** Wrapper names stripped from the front (e.g. ['sudo', 'env']). */
  wrappers: string[];
  /** Source text of the command. */
  text: string;
  problems: Problem[];
  files: FileAccess[];
  /** A path argument or redirect target depends on run-time values. */
  dynamicFiles: boolean;
  /** Its real work is the nested script it runs (sh -c, eval, source of a here-doc). */
  container: boolean;
  /** A shell or interpreter that reads its program from standard input. */
  stdinProgram: boolean;
  /** Commands of earlier pipeline stages feeding this one's standard input. */
  upstream: ShellCommand[];
  /** Redirect targets as written (after unquoting), e.g. `/dev/tcp/1.2.3.4/80`. */
  redirectTargets: string[];
  /**
   * Directories the script `cd`ed into before this command, in order (each relative to the
   * previous). Relative paths are checked against the start directory and every one of these.
   */
  cdTargets: string[];
}

export interface ShellAnalysis {
  commands: ShellCommand[];
  /** Problems not tied to one command (syntax errors, limits). */
  problems: Problem[];
}

export interface AnalyseOptions {
  home: string;
  maxDepth: number;
  maxCommands: number;
  /** performance.now() deadline for all parsing in this analysis. */
  deadline: number;
  /**
   * Copy every syntax node exactly instead of taking the fast paths of syntax.ts (slower;
   * lets tests check that the fast paths change nothing).
   */
  exactSyntax?: boolean;
}

const MAX_AST_DEPTH = 512;
const MAX_WRAPPERS = 16;

const SHELLS: ReadonlySet<string> = new Set([
  'sh',
  'bash',
  'dash',
  'zsh',
  'ksh',
  'ash',
  'mksh',
  'yash',
  'rbash',
  'fish',
]);
const STDIN_INTERPRETERS: ReadonlySet<string> = new Set([
  'python',
  'python2',
  'python3',
  'perl',
  'ruby',
  'node',
  'nodejs',
  'php',
  'lua',
  'tclsh',
  'Rscript',
  'osascript',
  'deno',
  'bun',
]);
/** Assigning these changes what later commands run or how words split. */
const SENSITIVE_VARIABLES: ReadonlySet<string> = new Set([
  'PATH',
  'LD_PRELOAD',
  'LD_LIBRARY_PATH',
  'LD_AUDIT',
  'BASH_ENV',
  'ENV',
  'IFS',
  'PROMPT_COMMAND',
  'SHELLOPTS',
  'BASHOPTS',
  'PS4',
  'GCONV_PATH',
  'PYTHONPATH',
  'PYTHONSTARTUP',
  'NODE_OPTIONS',
  'PERL5OPT',
  'RUBYOPT',
  'GIT_SSH_COMMAND',
  'CDPATH',
  'GLOBIGNORE',
]);
const WRITE_REDIRECTS: ReadonlySet<string> = new Set(['>', '>>', '>|', '&>', '&>>', '>&', '<>']);
const HARMLESS_DEVICES: ReadonlySet<string> = new Set([
  '/dev/null',
  '/dev/stdout',
  '/dev/stderr',
  '/dev/stdin',
  '/dev/tty',
  '/dev/zero',
]);

/** Commands whose path arguments are read or written (first N non-option words skipped). */
const FILE_COMMANDS = new Map<string, { tool: 'Read' | 'Write'; skip: number }>();
for (const n of [
  'cat',
  'head',
  'tail',
  'less',
  'more',
  'wc',
  'sort',
  'uniq',
  'cut',
  'diff',
  'cmp',
  'file',
  'stat',
  'strings',
  'od',
  'xxd',
  'hexdump',
  'base64',
  'md5sum',
  'sha1sum',
  'sha256sum',
  'sha512sum',
  'nl',
  'tac',
  'source',
  '.',
  'ls',
  'du',
  'readlink',
  'realpath',
  'tar',
  'zip',
  'unzip',
  'gzip',
  'zcat',
  'bat',
  'vi',
  'vim',
  'nano',
  'paste',
  'comm',
  'fold',
  'fmt',
  'column',
]) {
  FILE_COMMANDS.set(n, { tool: 'Read', skip: 0 });
}
for (const n of ['grep', 'egrep', 'fgrep', 'rg', 'awk', 'jq', 'sed'])
  FILE_COMMANDS.set(n, { tool: 'Read', skip: 1 });
for (const n of ['rm', 'rmdir', 'touch', 'mkdir', 'tee', 'truncate', 'shred', 'unlink', 'mv'])
  FILE_COMMANDS.set(n, { tool: 'Write', skip: 0 });
for (const n of ['chmod', 'chown', 'chgrp', 'ln']) FILE_COMMANDS.set(n, { tool: 'Write', skip: 1 });

export function commandName(word: string): string {
  const slash = word.lastIndexOf('/');
  return slash === -1 ? word : word.slice(slash + 1);
}

interface Context {
  parser: ShellParser;
  options: AnalyseOptions;
  commands: ShellCommand[];
  problems: Problem[];
  source: string;
  stopped: boolean;
  /** `cd` targets seen so far, in order; cdUnknown once a cd went somewhere only known at run time. */
  cdTargets: string[];
  cdUnknown: boolean;
}

/** Analyse a whole command string. */
export function analyseShell(
  parser: ShellParser,
  script: string,
  options: AnalyseOptions,
): ShellAnalysis {
  const ctx: Context = {
    parser,
    options,
    commands: [],
    problems: [],
    source: script,
    stopped: false,
    cdTargets: [],
    cdUnknown: false,
  };
  analyseScript(ctx, script, 0, [], null);
  return { commands: ctx.commands, problems: ctx.problems };
}

function limit(ctx: Context, message: string): void {
  if (!ctx.problems.some((p) => p.message === message))
    ctx.problems.push({ kind: 'limit', message });
  ctx.stopped = true;
}

/** Parse and walk one script (the top-level command, or a nested `sh -c` / `eval` string). */
function analyseScript(
  ctx: Context,
  script: string,
  depth: number,
  upstream: ShellCommand[],
  owner: ShellCommand | null,
): void {
  if (ctx.stopped) return;
  if (depth > ctx.options.maxDepth)
    return limit(ctx, `nesting deeper than ${ctx.options.maxDepth} levels`);
  const outcome = ctx.parser.parseSyntax(
    script,
    ctx.options.deadline,
    MAX_AST_DEPTH,
    ctx.options.exactSyntax === true,
  );
  if (outcome.root === null) {
    return limit(
      ctx,
      outcome.reason === 'timeout'
        ? 'parsing took longer than the time limit'
        : `syntax nested deeper than ${MAX_AST_DEPTH} levels`,
    );
  }
  const saved = ctx.source;
  ctx.source = script;
  if (outcome.error !== null) {
    const problem: Problem = {
      kind: 'unclear',
      message: `the command does not parse cleanly${outcome.error}`,
    };
    if (owner) owner.problems.push(problem);
    else ctx.problems.push(problem);
  }
  visit(ctx, outcome.root, depth, 0, upstream);
  ctx.source = saved;
}

function textOf(ctx: Context, node: Node): string {
  return ctx.source.slice(node.startIndex, node.endIndex);
}

const NESTING: ReadonlySet<string> = new Set([
  'subshell',
  'command_substitution',
  'process_substitution',
  'compound_statement',
  'function_definition',
]);
const LEAF_WORDS: ReadonlySet<string> = new Set([
  'word',
  'raw_string',
  'ansi_c_string',
  'comment',
  'variable_name',
  'string_content',
  'heredoc_start',
  'heredoc_end',
  'file_descriptor',
  'test_operator',
  'special_variable_name',
]);

function visit(
  ctx: Context,
  node: Node,
  depth: number,
  astDepth: number,
  upstream: ShellCommand[],
): void {
  if (ctx.stopped) return;
  if (astDepth > MAX_AST_DEPTH)
    return limit(ctx, `syntax nested deeper than ${MAX_AST_DEPTH} levels`);
  const type = node.type;
  if (LEAF_WORDS.has(type)) return;
  if (NESTING.has(type)) {
    depth++;
    if (depth > ctx.options.maxDepth)
      return limit(ctx, `nesting deeper than ${ctx.options.maxDepth} levels`);
  }
  switch (type) {
    case 'command':
      handleCommand(ctx, node, [], node, depth, astDepth, upstream);
      return;
    case 'redirected_statement': {
      const body = fieldChild(node, 'body');
      const redirects = fieldChildren(node, 'redirect');
      if (body !== null && body.type === 'command') {
        handleCommand(ctx, body, redirects, node, depth, astDepth, upstream);
      } else {
        if (body !== null) visit(ctx, body, depth, astDepth + 1, upstream);
        handleRedirectOnly(ctx, node, redirects);
      }
      for (const r of redirects) visit(ctx, r, depth, astDepth + 1, upstream);
      return;
    }
    case 'pipeline': {
      let stage: ShellCommand[] = [];
      const feeding: ShellCommand[] = [...upstream];
      for (const child of node.children) {
        if (child.type === '|' || child.type === '|&') {
          feeding.push(...stage);
          stage = [];
          continue;
        }
        if (!child.isNamed) continue;
        const before = ctx.commands.length;
        visit(ctx, child, depth, astDepth + 1, feeding.slice());
        stage.push(...ctx.commands.slice(before));
      }
      return;
    }
    case 'variable_assignment':
      checkAssignment(ctx, node, null);
      if (!mayContainCommand(ctx.source, node)) return;
      break;
    case 'declaration_command':
    case 'unset_command':
      handleDeclaration(ctx, node);
      break;
  }
  // Only named children can hold commands; anonymous ones are punctuation and keywords.
  for (const child of node.namedChildren) visit(ctx, child, depth, astDepth + 1, upstream);
}

/**
 * A word or assignment can only run a command through `$(…)`, backticks or `<(…)`/`>(…)`;
 * skipping words without them saves walking their syntax nodes (a speed-up, not a check:
 * the parse tree, not this test, decides what a command is).
 */
function mayContainCommand(source: string, node: Node): boolean {
  const text = source.slice(node.startIndex, node.endIndex);
  return text.includes('$(') || text.includes('`') || text.includes('<(') || text.includes('>(');
}

function newCommand(text: string): ShellCommand {
  return {
    argv: [],
    fullArgv: [],
    wrappers: [],
    text,
    problems: [],
    files: [],
    dynamicFiles: false,
    container: false,
    stdinProgram: false,
    upstream: [],
    redirectTargets: [],
    cdTargets: [],
  };
}

function push(ctx: Context, cmd: ShellCommand): void {
  if (ctx.commands.length >= ctx.options.maxCommands)
    return limit(ctx, `more than ${ctx.options.maxCommands} commands in one script`);
  cmd.cdTargets = ctx.cdTargets;
  if (ctx.cdUnknown && cmd.files.some((f) => !f.path.startsWith('/'))) cmd.dynamicFiles = true;
  ctx.commands.push(cmd);
}

function unclear(cmd: ShellCommand, message: string): void {
  if (!cmd.problems.some((p) => p.message === message))
    cmd.problems.push({ kind: 'unclear', message });
}

function checkAssignment(ctx: Context, node: Node, cmd: ShellCommand | null): void {
  const nameNode = fieldChild(node, 'name');
  const name = nameNode ? textOf(ctx, nameNode) : '';
  const base = name.includes('[') ? name.slice(0, name.indexOf('[')) : name;
  if (SENSITIVE_VARIABLES.has(base)) {
    const message = `sets ${base}, which changes what later commands run`;
    if (cmd) unclear(cmd, message);
    else if (!ctx.problems.some((p) => p.message === message))
      ctx.problems.push({ kind: 'unclear', message });
  }
}

function handleDeclaration(ctx: Context, node: Node): void {
  const cmd = newCommand(textOf(ctx, node));
  for (const child of node.children) {
    if (child.type === 'variable_assignment') {
      checkAssignment(ctx, child, cmd);
      cmd.argv.push(textOf(ctx, child));
    } else if (!child.isNamed) cmd.argv.push(child.type);
    else {
      const w = evaluateWord(child, ctx.options.home, ctx.source);
      cmd.argv.push(...w.values);
      if (w.dynamic)
        unclear(
          cmd,
          `a declaration depends on a run-time value (${textOf(ctx, child).slice(0, 40)})`,
        );
      if (w.problem) unclear(cmd, w.problem);
      if (SENSITIVE_VARIABLES.has(w.values[0] ?? ''))
        unclear(cmd, `changes ${w.values[0]}, which changes what later commands run`);
    }
  }
  cmd.fullArgv = cmd.argv.slice();
  push(ctx, cmd);
}

/** A redirect on a compound statement (`{ …; } > f`): keep its file accesses. */
function handleRedirectOnly(ctx: Context, node: Node, redirects: readonly Node[]): void {
  if (redirects.length === 0) return;
  const cmd = newCommand(textOf(ctx, node));
  cmd.container = true;
  for (const r of redirects) collectRedirect(ctx, cmd, r);
  push(ctx, cmd);
}

function collectRedirect(
  ctx: Context,
  cmd: ShellCommand,
  redirect: Node,
): { script: string | null } {
  if (redirect.type === 'heredoc_redirect') {
    const body = redirect.children.find((c) => c.type === 'heredoc_body');
    return { script: body ? textOf(ctx, body) : '' };
  }
  if (redirect.type === 'herestring_redirect') {
    const value = redirect.namedChildren[0];
    if (!value) return { script: '' };
    const w = evaluateWord(value, ctx.options.home, ctx.source);
    return { script: w.dynamic ? null : w.values.join(' ') };
  }
  if (redirect.type !== 'file_redirect') return { script: null };
  let op = '';
  for (const child of redirect.children) {
    if (!child.isNamed) {
      op = child.type;
      break;
    }
  }
  const destinations = fieldChildren(redirect, 'destination');
  const dest = destinations[0];
  if (!dest) return { script: null };
  if (
    (op === '>&' || op === '<&' || op === '&>' || op === '>&-' || op === '<&-') &&
    /^([0-9]+-?|-)$/.test(textOf(ctx, dest))
  ) {
    return { script: null }; // file descriptor duplication, not a file
  }
  const w = evaluateWord(dest, ctx.options.home, ctx.source);
  if (w.problem) unclear(cmd, w.problem);
  for (const value of w.values) {
    cmd.redirectTargets.push(value);
    if (w.dynamic) {
      cmd.dynamicFiles = true;
      continue;
    }
    if (HARMLESS_DEVICES.has(value)) continue;
    const glob = w.glob ? { glob: true } : {};
    if (WRITE_REDIRECTS.has(op)) cmd.files.push({ tool: 'Write', path: value, ...glob });
    if (op === '<' || op === '<>') cmd.files.push({ tool: 'Read', path: value, ...glob });
  }
  return { script: null };
}

/** Newlines between a command's parts mean the grammar and the shell disagree on its extent. */
function hasUnescapedNewline(text: string): boolean {
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) {
    if (text[i - 1] !== '\\') return true;
  }
  return false;
}

function handleCommand(
  ctx: Context,
  node: Node,
  outerRedirects: readonly Node[],
  textNode: Node,
  depth: number,
  astDepth: number,
  upstream: ShellCommand[],
): void {
  const cmd = newCommand(ctx.source.slice(textNode.startIndex, textNode.endIndex));
  cmd.upstream = upstream;
  const words: Array<{ values: string[]; dynamic: boolean; glob: boolean }> = [];
  const redirects: Node[] = [...outerRedirects];
  const nested: Node[] = [];
  let previousEnd = -1;
  for (const child of node.namedChildren) {
    if (
      previousEnd !== -1 &&
      child.startIndex > previousEnd &&
      hasUnescapedNewline(ctx.source.slice(previousEnd, child.startIndex))
    ) {
      unclear(cmd, 'a newline inside a command (the parser and the shell would disagree)');
    }
    previousEnd = child.endIndex;
    const type = child.type;
    if (type === 'variable_assignment') {
      checkAssignment(ctx, child, cmd);
      nested.push(child);
    } else if (
      type === 'file_redirect' ||
      type === 'herestring_redirect' ||
      type === 'heredoc_redirect'
    ) {
      redirects.push(child);
    } else {
      const wordNode = type === 'command_name' ? child.namedChildren[0] : child;
      if (!wordNode) continue;
      const wordType = type === 'command_name' ? wordNode.type : type;
      const w = evaluateWord(
        wordNode,
        ctx.options.home,
        ctx.source,
        wordType,
        type === 'command_name' ? undefined : previousEnd,
      );
      if (w.problem) unclear(cmd, w.problem);
      words.push(w);
      if (!LEAF_WORDS.has(wordType)) nested.push(wordNode);
    }
  }
  let stdinScript: string | null | undefined;
  for (const r of redirects) {
    const { script } = collectRedirect(ctx, cmd, r);
    if (r.type === 'heredoc_redirect' || r.type === 'herestring_redirect') stdinScript = script;
  }
  const first = words[0];
  if (!first) {
    push(ctx, cmd); // redirect- or assignment-only statement
  } else {
    if (first.dynamic)
      unclear(cmd, `the command name is computed at run time (${first.values[0]?.slice(0, 40)})`);
    if (first.glob) unclear(cmd, 'the command name contains a glob');
    if (words.length > 0 && RESERVED_WORDS.has(first.values[0] ?? ''))
      unclear(cmd, `"${first.values[0]}" is a reserved word, not a command`);
    const argv: string[] = [];
    const kinds: ArgKind[] = [];
    for (const w of words) {
      for (const v of w.values) {
        argv.push(v);
        kinds.push(w.dynamic ? DYNAMIC : w.glob ? GLOB : LITERAL);
      }
    }
    if (argv[0] === '') unclear(cmd, 'the command name is empty');
    cmd.fullArgv = argv;
    interpret(ctx, cmd, argv, kinds, depth, stdinScript);
  }
  for (const n of nested) {
    if (mayContainCommand(ctx.source, n)) visit(ctx, n, depth, astDepth + 1, upstream);
  }
}

/** Strip wrappers, recurse into nested scripts, derive file accesses; then record the command. */
function interpret(
  ctx: Context,
  cmd: ShellCommand,
  argvIn: string[],
  kindsIn: ArgKind[],
  depth: number,
  stdinScript: string | null | undefined,
): void {
  let argv = argvIn;
  let kinds = kindsIn;
  for (let round = 0; round < MAX_WRAPPERS; round++) {
    const name = commandName(argv[0] ?? '');
    const start = wrapperArgsEnd(cmd, name, argv);
    if (start === null) break;
    cmd.wrappers.push(name);
    if (start >= argv.length) break; // nothing wrapped: the wrapper itself is the command (`env`, `sudo -i`)
    if (kinds[start] !== LITERAL)
      unclear(cmd, `the command run by ${name} is computed at run time`);
    argv = argv.slice(start);
    kinds = kinds.slice(start);
    if (name === 'xargs') {
      argv = [...argv, '<xargs input>'];
      kinds = [...kinds, DYNAMIC];
    }
  }
  cmd.argv = argv;
  const name = commandName(argv[0] ?? '');
  if (argv.length === 0) {
    push(ctx, cmd);
    return;
  }

  if (SHELLS.has(name) || (name === 'busybox' && argv[1] === 'sh')) {
    const args = name === 'busybox' ? argv.slice(2) : argv.slice(1);
    const argKinds = name === 'busybox' ? kinds.slice(2) : kinds.slice(1);
    const shell = shellInvocation(args);
    if (shell.kind === 'string') {
      cmd.container = true;
      push(ctx, cmd);
      if (argKinds[shell.index] === DYNAMIC)
        unclear(cmd, `the script run by ${name} -c is computed at run time`);
      else analyseScript(ctx, args[shell.index] ?? '', depth + 1, [], cmd);
      return;
    }
    if (shell.kind === 'stdin') {
      return stdinProgram(ctx, cmd, name, stdinScript, depth);
    }
    const scriptIndex = args.findIndex((a) => !a.startsWith('-') && !a.startsWith('+'));
    if (scriptIndex !== -1 && argKinds[scriptIndex] !== LITERAL)
      unclear(cmd, `${name} runs a script whose path is only known at run time`);
    push(ctx, cmd);
    return;
  }
  if (
    STDIN_INTERPRETERS.has(name) &&
    (argv.length === 1 || argv[1] === '-') &&
    (stdinScript !== undefined || cmd.upstream.length > 0)
  ) {
    cmd.stdinProgram = true;
    unclear(cmd, `${name} reads its program from standard input, which cannot be checked`);
    push(ctx, cmd);
    return;
  }
  if (name === 'eval') {
    cmd.container = true;
    push(ctx, cmd);
    if (kinds.slice(1).some((k) => k === DYNAMIC))
      unclear(cmd, 'eval runs a string computed at run time');
    else analyseScript(ctx, argv.slice(1).join(' '), depth + 1, [], cmd);
    return;
  }
  if (
    (name === 'source' || name === '.') &&
    (argv.length === 1 || argv[1] === '/dev/stdin' || argv[1] === '-' || kinds[1] !== LITERAL)
  ) {
    if (stdinScript !== undefined && kinds[1] === LITERAL) {
      cmd.container = true;
      push(ctx, cmd);
      if (stdinScript === null) unclear(cmd, `${name} runs a here-string computed at run time`);
      else analyseScript(ctx, stdinScript, depth + 1, [], cmd);
      return;
    }
    unclear(cmd, `${name} runs a script that is only known at run time`);
    push(ctx, cmd);
    return;
  }
  if (name === 'trap' && argv.length > 2 && !(argv[1] as string).startsWith('-')) {
    // `trap 'cmd' EXIT` runs cmd later: analyse it now, like eval.
    cmd.container = true;
    push(ctx, cmd);
    if (kinds[1] === DYNAMIC) unclear(cmd, 'trap runs a string computed at run time');
    else analyseScript(ctx, argv[1] as string, depth + 1, [], cmd);
    return;
  }
  if (name === 'alias' && argv.some((a, k) => k > 0 && a.includes('='))) {
    unclear(cmd, 'defines an alias; commands run through aliases cannot be checked');
  }
  if (name === 'watch') {
    let i = 1;
    while (i < argv.length && (argv[i] as string).startsWith('-'))
      i += WATCH_OPTIONS_WITH_VALUE.has(argv[i] as string) ? 2 : 1;
    if (i < argv.length) {
      cmd.container = true;
      push(ctx, cmd);
      if (kinds.slice(i).some((k) => k === DYNAMIC))
        unclear(cmd, 'watch runs a command computed at run time');
      else analyseScript(ctx, argv.slice(i).join(' '), depth + 1, [], cmd);
      return;
    }
  }
  deriveFiles(cmd, name, argv, kinds);
  if (name === 'cd' || name === 'pushd') {
    const target = argv.slice(1).find((a) => !a.startsWith('-') || a === '-');
    const k = kinds[argv.indexOf(target ?? '')];
    if (target === undefined) ctx.cdTargets = [...ctx.cdTargets, ctx.options.home];
    else if (target === '-' || k !== LITERAL) ctx.cdUnknown = true;
    else ctx.cdTargets = [...ctx.cdTargets, target];
  }
  push(ctx, cmd);
  if (name === 'find') findExec(ctx, cmd, argv, kinds, depth);
}

function stdinProgram(
  ctx: Context,
  cmd: ShellCommand,
  name: string,
  stdinScript: string | null | undefined,
  depth: number,
): void {
  if (typeof stdinScript === 'string') {
    cmd.container = true;
    push(ctx, cmd);
    analyseScript(ctx, stdinScript, depth + 1, [], cmd);
    return;
  }
  cmd.stdinProgram = true;
  unclear(
    cmd,
    stdinScript === null
      ? `${name} runs a here-string computed at run time`
      : `${name} reads its commands from standard input, which cannot be checked`,
  );
  push(ctx, cmd);
}

type ShellInvocation = { kind: 'string'; index: number } | { kind: 'stdin' } | { kind: 'file' };

/** How a shell is invoked: `-c STRING`, a script file, or commands on stdin. */
function shellInvocation(args: string[]): ShellInvocation {
  let wantsString = false;
  let readsStdin = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--' || a === '-') {
      const next = i + 1;
      if (wantsString) return { kind: 'string', index: next };
      return a === '-' || readsStdin || next >= args.length ? { kind: 'stdin' } : { kind: 'file' };
    }
    if (
      a === '-o' ||
      a === '+o' ||
      a === '-O' ||
      a === '+O' ||
      a === '--rcfile' ||
      a === '--init-file'
    ) {
      i++;
      continue;
    }
    if (a.startsWith('--')) continue;
    if ((a.startsWith('-') || a.startsWith('+')) && a.length > 1) {
      if (a.includes('c')) wantsString = true;
      if (a.includes('s')) readsStdin = true;
      continue;
    }
    if (wantsString) return { kind: 'string', index: i };
    return readsStdin ? { kind: 'stdin' } : { kind: 'file' };
  }
  return { kind: 'stdin' };
}

const OPTION_WITH_VALUE: Readonly<Record<string, ReadonlySet<string>>> = {
  env: new Set(['-u', '--unset', '-C', '--chdir']),
  timeout: new Set(['-s', '--signal', '-k', '--kill-after']),
  nice: new Set(['-n', '--adjustment']),
  ionice: new Set(['-c', '--class', '-n', '--classdata', '-p', '-P', '-u']),
  stdbuf: new Set(['-i', '-o', '-e', '--input', '--output', '--error']),
  exec: new Set(['-a']),
  sudo: new Set([
    '-u',
    '--user',
    '-g',
    '--group',
    '-C',
    '--close-from',
    '-D',
    '--chdir',
    '-h',
    '--host',
    '-p',
    '--prompt',
    '-r',
    '--role',
    '-t',
    '--type',
    '-U',
    '--other-user',
    '-T',
    '--command-timeout',
  ]),
  doas: new Set(['-u', '-C']),
  xargs: new Set([
    '-a',
    '--arg-file',
    '-d',
    '--delimiter',
    '-E',
    '-I',
    '-L',
    '--max-lines',
    '-n',
    '--max-args',
    '-P',
    '--max-procs',
    '-s',
    '--max-chars',
    '--process-slot-var',
  ]),
  setsid: new Set([]),
  nohup: new Set([]),
  command: new Set([]),
  builtin: new Set([]),
  time: new Set(['-f', '--format', '-o', '--output']),
  taskset: new Set([]),
  chronic: new Set([]),
  coproc: new Set([]),
};
const WATCH_OPTIONS_WITH_VALUE: ReadonlySet<string> = new Set([
  '-n',
  '--interval',
  '-d',
  '-q',
  '--equexit',
]);
/** Reserved words a real shell never runs as a command name (the grammar sometimes accepts them). */
const RESERVED_WORDS: ReadonlySet<string> = new Set([
  'then',
  'else',
  'elif',
  'fi',
  'do',
  'done',
  'esac',
  'in',
  '}',
  '{',
  '!',
  '[[',
  ']]',
  'function',
  'select',
  'until',
  'while',
  'for',
  'if',
  'case',
]);

/**
 * If `name` is a transparent wrapper, return the index in argv where the wrapped command
 * starts (argv.length when there is none); null when it is not a wrapper.
 */
function wrapperArgsEnd(cmd: ShellCommand, name: string, argv: string[]): number | null {
  const withValue = OPTION_WITH_VALUE[name];
  if (withValue === undefined) return null;
  let i = 1;
  while (i < argv.length) {
    const a = argv[i] as string;
    if (a === '--') {
      i++;
      break;
    }
    if (name === 'env' && /^[A-Za-z_][A-Za-z0-9_]*=/.test(a)) {
      const variable = a.slice(0, a.indexOf('='));
      if (SENSITIVE_VARIABLES.has(variable))
        unclear(cmd, `sets ${variable}, which changes what later commands run`);
      i++;
      continue;
    }
    if (!a.startsWith('-') || a === '-') break;
    if (name === 'env' && (a === '-S' || a.startsWith('-S') || a.startsWith('--split-string'))) {
      unclear(cmd, 'env -S splits a string into a command; it is not analysed');
      return argv.length;
    }
    if (
      (name === 'command' && /^-[pvV]*[vV]/.test(a)) ||
      (name === 'sudo' && /^-[a-zA-Z]*[lKkve]$/.test(a) && !a.includes('E'))
    ) {
      return argv.length; // `command -v x` looks x up; `sudo -l/-v/-k` run nothing
    }
    if (withValue.has(a)) i += 2;
    else i++;
  }
  if (name === 'timeout' && i < argv.length) i++; // the duration
  if (name === 'taskset' && i < argv.length) i++; // the CPU mask or list
  return Math.min(i, argv.length);
}

function deriveFiles(cmd: ShellCommand, name: string, argv: string[], kinds: ArgKind[]): void {
  if (name === 'cp' || name === 'install' || name === 'rsync' || name === 'scp') {
    const paths = positional(argv, kinds, cmd);
    paths.forEach((p, k) =>
      cmd.files.push({ ...p, tool: k === paths.length - 1 ? 'Write' : 'Read' }),
    );
    return;
  }
  if (name === 'dd') {
    for (let i = 1; i < argv.length; i++) {
      const a = argv[i] as string;
      if (a.startsWith('if=') || a.startsWith('of=')) {
        if (kinds[i] === DYNAMIC) cmd.dynamicFiles = true;
        else
          cmd.files.push({
            tool: a.startsWith('if=') ? 'Read' : 'Write',
            path: a.slice(3),
            ...(kinds[i] === GLOB ? { glob: true } : {}),
          });
      }
    }
    return;
  }
  if (name === 'sed' && argv.some((a) => a === '-i' || a.startsWith('-i') || a === '--in-place')) {
    positional(argv, kinds, cmd)
      .slice(1)
      .forEach((p) => cmd.files.push({ ...p, tool: 'Write' }));
    return;
  }
  const spec = FILE_COMMANDS.get(name);
  if (!spec) return;
  let skip = spec.skip;
  if (
    (name === 'grep' || name === 'egrep' || name === 'fgrep' || name === 'rg') &&
    argv.some((a) => a === '-e' || a === '-f' || a.startsWith('--regexp'))
  )
    skip = 0;
  positional(argv, kinds, cmd)
    .slice(skip)
    .forEach((p) => cmd.files.push({ ...p, tool: spec.tool }));
}

/** Non-option arguments (everything after `--` counts); dynamic ones only set the flag. */
function positional(argv: string[], kinds: ArgKind[], cmd: ShellCommand): FileAccess[] {
  const out: FileAccess[] = [];
  let options = true;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i] as string;
    if (options && a === '--') {
      options = false;
      continue;
    }
    if (options && a.startsWith('-') && a.length > 1) continue;
    if (kinds[i] === DYNAMIC) {
      cmd.dynamicFiles = true;
      continue;
    }
    out.push(kinds[i] === GLOB ? { tool: 'Read', path: a, glob: true } : { tool: 'Read', path: a });
  }
  return out;
}

/** `find … -exec CMD … ;` runs CMD: analyse it as its own command. `-delete` writes. */
function findExec(
  ctx: Context,
  findCmd: ShellCommand,
  argv: string[],
  kinds: ArgKind[],
  depth: number,
): void {
  const starts: string[] = [];
  let i = 1;
  for (; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a.startsWith('-') || a === '(' || a === '!') break;
    if (kinds[i] === LITERAL) starts.push(a);
  }
  for (; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '-delete')
      for (const s of starts.length ? starts : ['.'])
        findCmd.files.push({ tool: 'Write', path: s });
    if (a === '-exec' || a === '-execdir' || a === '-ok' || a === '-okdir') {
      let end = i + 1;
      while (end < argv.length && argv[end] !== ';' && argv[end] !== '+') end++;
      const inner = newCommand(findCmd.text);
      inner.fullArgv = argv;
      inner.wrappers = ['find'];
      if (end === i + 1) unclear(inner, 'find -exec without a command');
      const innerArgv = argv.slice(i + 1, end);
      // `{}` is replaced by each found path: a run-time value.
      const innerKinds = kinds
        .slice(i + 1, end)
        .map((d, k): ArgKind => ((innerArgv[k] as string).includes('{}') ? DYNAMIC : d));
      interpret(ctx, inner, innerArgv, innerKinds, depth, undefined);
      i = end;
    }
  }
}
