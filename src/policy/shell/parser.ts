/**
 * tree-sitter-bash through web-tree-sitter. One ShellParser per policy engine: the wasm
 * language loads once, and the Parser object is reused for every decision.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Language, Parser, type Node, type Tree } from 'web-tree-sitter';
import { PalisadeError } from '../../errors/index.js';
import { SyntaxCopier, type SyntaxNode } from './syntax.js';

export type ParseOutcome = { tree: Tree } | { tree: null; reason: 'timeout' };

/**
 * A parsed script as plain objects. `error` is null when it parsed cleanly, otherwise a hint
 * where the first syntax error is (possibly empty).
 */
export type SyntaxOutcome =
  { root: SyntaxNode; error: string | null } | { root: null; reason: 'timeout' | 'depth' };

export class ShellParser {
  private readonly copier: SyntaxCopier;
  /** The running parse's deadline and whether it passed (one parse at a time per parser). */
  private deadline = 0;
  private timedOut = false;
  /** Built once: the progress callback reads the deadline from this object. */
  private readonly parseOptions = {
    // The typings declare the callback as returning void, but returning true cancels the parse.
    progressCallback: ((): boolean => {
      if (performance.now() > this.deadline) this.timedOut = true;
      return this.timedOut;
    }) as unknown as () => void,
  };

  private constructor(
    private readonly parser: Parser,
    language: Language,
  ) {
    this.copier = new SyntaxCopier(language);
  }

  static async create(): Promise<ShellParser> {
    let wasmPath: string;
    try {
      const require = createRequire(import.meta.url);
      wasmPath = join(
        dirname(require.resolve('tree-sitter-bash/package.json')),
        'tree-sitter-bash.wasm',
      );
      await Parser.init();
    } catch (err) {
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        'The shell parser (web-tree-sitter with tree-sitter-bash) is not installed; run `npm install` in the Palisade directory.',
        undefined,
        { cause: err },
      );
    }
    let language: Language;
    try {
      language = await Language.load(wasmPath);
    } catch (err) {
      throw new PalisadeError(
        'REQUIREMENT_MISSING',
        `The bash grammar could not be loaded from node_modules/tree-sitter-bash/tree-sitter-bash.wasm; reinstall the tree-sitter-bash package.`,
        undefined,
        { cause: err },
      );
    }
    const parser = new Parser();
    parser.setLanguage(language);
    const shell = new ShellParser(parser, language);
    shell.warmUp();
    return shell;
  }

  /**
   * The first parses run cold (wasm compilation, JIT tiering) and can take tens of
   * milliseconds; doing them here keeps the first real decisions inside their deadline
   * instead of failing closed right after start.
   */
  private warmUp(): void {
    const sample = 'cd /w && for f in *.txt; do grep -n "x$(date)" "$f" | sort > /tmp/o 2>&1; done';
    for (let i = 0; i < 5; i++) this.parse(sample, Number.POSITIVE_INFINITY);
  }

  /**
   * Parse `text`, giving up (never hanging) once `deadline` (performance.now() ms) passes.
   * The caller must `tree.delete()` the result.
   */
  parse(text: string, deadline: number): ParseOutcome {
    this.deadline = deadline;
    this.timedOut = false;
    this.parser.reset();
    const tree = this.parser.parse(text, null, this.parseOptions);
    if (tree === null || this.timedOut) {
      tree?.delete();
      this.parser.reset();
      return { tree: null, reason: 'timeout' };
    }
    return { tree };
  }

  /**
   * Parse `text` and copy the tree into plain objects (see syntax.ts), freeing the wasm tree.
   * Gives up once `deadline` passes (parse and copy), or when the tree nests deeper than
   * `maxDepth` levels. `exact` skips the copy's fast paths (see SyntaxCopier.copy).
   */
  parseSyntax(text: string, deadline: number, maxDepth: number, exact = false): SyntaxOutcome {
    const outcome = this.parse(text, deadline);
    if (outcome.tree === null) return { root: null, reason: 'timeout' };
    const tree = outcome.tree;
    try {
      const wasmRoot = tree.rootNode;
      const error = wasmRoot.hasError ? findError(wasmRoot) : null;
      const root = this.copier.copy(wasmRoot, text, maxDepth, deadline, exact || error !== null);
      return typeof root === 'string' ? { root: null, reason: root } : { root, error };
    } finally {
      tree.delete();
    }
  }
}

/** Where the first syntax error is, for the message (only for trees with errors). */
function findError(node: Node): string {
  if (node.isError || node.isMissing) {
    const snippet = node.text.slice(0, 24).replace(/\s+/g, ' ');
    return node.isMissing ? ` (missing "${node.type}")` : snippet ? ` (near "${snippet}")` : '';
  }
  for (const child of node.children) {
    if (child.hasError || child.isMissing) return findError(child);
  }
  return '';
}
