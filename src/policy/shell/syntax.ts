/**
 * A plain-JavaScript copy of a tree-sitter syntax tree.
 *
 * Every web-tree-sitter node property other than startIndex (type, endIndex, children,
 * isNamed, fields) is a call into wasm that marshals the node through a transfer buffer, and
 * `node.text` slices the source on top of that. The analyser reads these properties many
 * times per node, so the tree is copied once — each node's type, end and children read
 * exactly once — and the analysis then runs on ordinary objects.
 */
import type { Language, Node } from 'web-tree-sitter';

export interface SyntaxNode {
  readonly type: string;
  readonly isNamed: boolean;
  /** UTF-16 offsets into the parsed string (what web-tree-sitter reports for string input). */
  readonly startIndex: number;
  readonly endIndex: number;
  /**
   * The children. In a tree that parsed cleanly, anonymous children (keywords, operators,
   * quotes) are kept only under the node types whose analysis reads them (ALL_CHILDREN);
   * elsewhere this is the same list as namedChildren. A `string` without `$`, backquote or
   * backslash has no children: its value is the text between its quotes.
   */
  readonly children: readonly SyntaxNode[];
  readonly namedChildren: readonly SyntaxNode[];
  /** The field this node fills in its parent; recorded only for the fields the analyser reads. */
  readonly field: string | null;
}

/** Token types: they never have children, so they are not asked for any. */
const TOKEN_TYPES: ReadonlySet<string> = new Set([
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

/** Types whose anonymous children the analyser reads (operators, quotes, keywords). */
const ALL_CHILDREN: ReadonlySet<string> = new Set([
  'pipeline',
  'string',
  'translated_string',
  'concatenation',
  'file_redirect',
  'heredoc_redirect',
  'herestring_redirect',
  'declaration_command',
  'unset_command',
]);

/** A command name made only of these characters is a single plain word. */
const PLAIN_NAME = /^[A-Za-z0-9_./-]+$/;
/**
 * A command that is only such words, separated by blanks: its children are the command name
 * and one plain argument per word (no quotes, escapes, expansions, globs, assignments or
 * redirects can hide in these characters).
 */
const PLAIN_COMMAND = /^[A-Za-z0-9_./-]+(?:[ \t]+[A-Za-z0-9_./:,+@%-]+)*$/;
/** A double-quoted string without these characters is its text between the quotes. */
const STRING_SPECIAL = /[$`\\]/;

/** Parent type → the fields of its children that the analyser needs. */
const FIELDS_READ: Readonly<Record<string, readonly string[]>> = {
  redirected_statement: ['body', 'redirect'],
  variable_assignment: ['name'],
  file_redirect: ['destination'],
};

const NO_CHILDREN: readonly SyntaxNode[] = Object.freeze([]);
const ERROR_SYMBOL = 65535;

/** Thrown inside the copy when a limit is hit; caught by SyntaxCopier.copy. */
class CopyLimit extends Error {
  constructor(readonly reason: 'depth' | 'timeout') {
    super(reason);
  }
}
/** Nodes copied between two looks at the clock. */
const CLOCK_EVERY = 256;

/** Per-language lookup tables (one per ShellParser; never shared through module state). */
export class SyntaxCopier {
  private readonly typeNames: string[];
  private readonly namedById: boolean[];
  /** The running copy's deadline and node count (one copy at a time per copier). */
  private deadline = 0;
  private copied = 0;

  constructor(private readonly language: Language) {
    this.typeNames = language.types.slice();
    this.namedById = this.typeNames.map((_, id) => language.nodeTypeIsNamed(id));
  }

  /**
   * Copy the tree under `root`. Refused ('depth') when it nests deeper than `maxDepth`
   * levels, abandoned ('timeout') once `deadline` (performance.now() ms) passes — the copy
   * counts as parsing time. `exact` keeps every child everywhere (used for trees with syntax
   * errors, so that error recovery output is analysed exactly as the parser produced it).
   */
  copy(
    root: Node,
    source: string,
    maxDepth: number,
    deadline: number,
    exact: boolean,
  ): SyntaxNode | 'depth' | 'timeout' {
    this.deadline = deadline;
    this.copied = 0;
    try {
      return this.copyNode(root, null, source, 0, maxDepth, exact);
    } catch (err) {
      if (err instanceof CopyLimit) return err.reason;
      throw err;
    }
  }

  private copyNode(
    node: Node,
    field: string | null,
    source: string,
    depth: number,
    maxDepth: number,
    exact: boolean,
  ): SyntaxNode {
    const id = node.typeId;
    // Same fallback as Node.type: symbols the language does not name are errors.
    const type = this.typeNames[id] || 'ERROR';
    const isNamed = id === ERROR_SYMBOL ? true : (this.namedById[id] ?? this.named(id));
    const startIndex = node.startIndex;
    const endIndex = node.endIndex;
    let children = NO_CHILDREN;
    let namedChildren = NO_CHILDREN;
    if (!exact && type === 'command_name' && PLAIN_NAME.test(source.slice(startIndex, endIndex))) {
      // Its only child is a word with the same extent: build it instead of asking for it.
      children = [plainWord(startIndex, endIndex)];
      return { type, isNamed, startIndex, endIndex, children, namedChildren: children, field };
    }
    if (!exact && type === 'command' && PLAIN_COMMAND.test(source.slice(startIndex, endIndex))) {
      children = plainCommandChildren(source, startIndex, endIndex);
      return { type, isNamed, startIndex, endIndex, children, namedChildren: children, field };
    }
    // Anonymous nodes are tokens (keywords, operators); a number has children only in the
    // `BASE#$(…)` / `BASE#${…}` form.
    if (
      isNamed &&
      !TOKEN_TYPES.has(type) &&
      (type !== 'number' || hasBaseExpansion(source, startIndex, endIndex)) &&
      (exact || type !== 'string' || !isPlainString(source, startIndex, endIndex))
    ) {
      const raw = exact || ALL_CHILDREN.has(type) ? node.children : node.namedChildren;
      if (raw.length > 0) {
        if (depth >= maxDepth) throw new CopyLimit('depth');
        this.copied += raw.length;
        if (this.copied >= CLOCK_EVERY) {
          this.copied = 0;
          if (performance.now() > this.deadline) throw new CopyLimit('timeout');
        }
        const fieldOf = this.fieldsOf(node, type);
        const copied: SyntaxNode[] = new Array<SyntaxNode>(raw.length);
        let namedCount = 0;
        for (let i = 0; i < raw.length; i++) {
          const child = raw[i] as Node;
          const c = this.copyNode(
            child,
            fieldOf?.get(child.id) ?? null,
            source,
            depth + 1,
            maxDepth,
            exact,
          );
          copied[i] = c;
          if (c.isNamed) namedCount++;
        }
        children = copied;
        namedChildren = namedCount === copied.length ? copied : copied.filter((c) => c.isNamed);
      }
    }
    return { type, isNamed, startIndex, endIndex, children, namedChildren, field };
  }

  private named(id: number): boolean {
    const named = this.language.nodeTypeIsNamed(id);
    this.namedById[id] = named;
    return named;
  }

  private fieldsOf(node: Node, type: string): Map<number, string> | null {
    const fields = FIELDS_READ[type];
    if (fields === undefined) return null;
    const out = new Map<number, string>();
    for (const f of fields) for (const child of node.childrenForFieldName(f)) out.set(child.id, f);
    return out;
  }
}

function plainWord(startIndex: number, endIndex: number): SyntaxNode {
  return {
    type: 'word',
    isNamed: true,
    startIndex,
    endIndex,
    children: NO_CHILDREN,
    namedChildren: NO_CHILDREN,
    field: null,
  };
}

/** The children of a PLAIN_COMMAND: command_name(word), then one word per argument. */
function plainCommandChildren(source: string, start: number, end: number): SyntaxNode[] {
  const out: SyntaxNode[] = [];
  let i = start;
  while (i < end) {
    const c = source.charCodeAt(i);
    if (c === 32 || c === 9) {
      i++;
      continue;
    }
    let j = i + 1;
    while (j < end && source.charCodeAt(j) !== 32 && source.charCodeAt(j) !== 9) j++;
    const word = plainWord(i, j);
    if (out.length === 0) {
      const name = [word];
      out.push({
        type: 'command_name',
        isNamed: true,
        startIndex: i,
        endIndex: j,
        children: name,
        namedChildren: name,
        field: null,
      });
    } else out.push(word);
    i = j;
  }
  return out;
}

function isPlainString(source: string, start: number, end: number): boolean {
  if (end - start < 2 || source[start] !== '"' || source[end - 1] !== '"') return false;
  return !STRING_SPECIAL.test(source.slice(start + 1, end - 1));
}

function hasBaseExpansion(source: string, start: number, end: number): boolean {
  const hash = source.indexOf('#', start);
  return hash !== -1 && hash < end - 1;
}

/** The first child filling `field`, like web-tree-sitter's Node.childForFieldName. */
export function fieldChild(node: SyntaxNode, field: string): SyntaxNode | null {
  for (const c of node.children) if (c.field === field) return c;
  return null;
}

/** Every child filling `field`, like web-tree-sitter's Node.childrenForFieldName. */
export function fieldChildren(node: SyntaxNode, field: string): SyntaxNode[] {
  const out: SyntaxNode[] = [];
  for (const c of node.children) if (c.field === field) out.push(c);
  return out;
}
