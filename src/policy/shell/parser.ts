/**
 * tree-sitter-bash through web-tree-sitter. One ShellParser per policy engine: the wasm
 * language loads once, and the Parser object is reused for every decision.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Language, Parser, type Tree } from 'web-tree-sitter';
import { PalisadeError } from '../../errors/index.js';

export type ParseOutcome = { tree: Tree } | { tree: null; reason: 'timeout' };

export class ShellParser {
  private constructor(private readonly parser: Parser) {}

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
    return new ShellParser(parser);
  }

  /**
   * Parse `text`, giving up (never hanging) once `deadline` (performance.now() ms) passes.
   * The caller must `tree.delete()` the result.
   */
  parse(text: string, deadline: number): ParseOutcome {
    let timedOut = false;
    // The typings declare the callback as returning void, but returning true cancels the parse.
    const progressCallback = ((): boolean => {
      if (performance.now() > deadline) timedOut = true;
      return timedOut;
    }) as unknown as () => void;
    this.parser.reset();
    const tree = this.parser.parse(text, null, { progressCallback });
    if (tree === null || timedOut) {
      tree?.delete();
      this.parser.reset();
      return { tree: null, reason: 'timeout' };
    }
    return { tree };
  }
}
