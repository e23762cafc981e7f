// The plain-object syntax tree (src/policy/shell/syntax.ts) against web-tree-sitter's own
// nodes, read the slow way, for every command of the shell corpus; and the bypasses that the
// copy made visible.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { before, describe, test } from 'node:test';
import fc from 'fast-check';
import { Language, Parser, type Node } from 'web-tree-sitter';
import { createPolicyEngine, parsePolicyObject } from '../../src/policy/index.js';
import { BashRuleIndex, bashMatches, compileRule, parseRule } from '../../src/policy/rules.js';
import { analyseShell, ShellParser, type ShellCommand } from '../../src/policy/shell/index.js';
import { SyntaxCopier, type SyntaxNode } from '../../src/policy/shell/syntax.js';

const corpus = JSON.parse(
  readFileSync(new URL('./fixtures/shell-corpus.json', import.meta.url), 'utf8'),
) as { cases: Array<{ command: string }> };
const EXTRA = [
  'cat <<EOF | sh\nrm -rf /\nEOF',
  '{ echo a; echo b; } > /tmp/out 2>&1',
  'x=$(whoami) y[1]=2 env',
  'echo "a$" "$" $"t" "x\\"y" ""',
  'echo 10#$(id) $((16#ff))',
  'diff <(ls a) >(cat) && ls 2>&1 >/dev/null | tee -a log',
  'echo "unterminated',
  'if then fi',
];
const COMMANDS = [...new Set([...corpus.cases.map((c) => c.command), ...EXTRA])];
const FIELDS: Record<string, string[]> = {
  redirected_statement: ['body', 'redirect'],
  variable_assignment: ['name'],
  file_redirect: ['destination'],
};
const ALL_CHILDREN = new Set([
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

interface Plain {
  type: string;
  isNamed: boolean;
  startIndex: number;
  endIndex: number;
  field: string | null;
  children: Plain[];
}

/** The tree as web-tree-sitter reports it, one property call at a time. */
function fromWasm(node: Node, field: string | null): Plain {
  const fields = FIELDS[node.type];
  const fieldOf = new Map<number, string>();
  for (const f of fields ?? []) for (const c of node.childrenForFieldName(f)) fieldOf.set(c.id, f);
  return {
    type: node.type,
    isNamed: node.isNamed,
    startIndex: node.startIndex,
    endIndex: node.endIndex,
    field,
    children: node.children.map((c) => fromWasm(c, fieldOf.get(c.id) ?? null)),
  };
}

function plain(node: SyntaxNode): Plain {
  return {
    type: node.type,
    isNamed: node.isNamed,
    startIndex: node.startIndex,
    endIndex: node.endIndex,
    field: node.field,
    children: node.children.map(plain),
  };
}

/** What the fast copy promises: see SyntaxNode.children. */
function expectedFast(
  node: Plain,
  source: string,
  seen: { names: number; strings: number; commands: number },
): Plain {
  const text = source.slice(node.startIndex, node.endIndex);
  if (node.type === 'command_name' && /^[A-Za-z0-9_./-]+$/.test(text)) {
    const only = node.children[0] as Plain;
    assert.equal(node.children.length, 1, text);
    assert.deepEqual([only.startIndex, only.endIndex], [node.startIndex, node.endIndex], text);
    seen.names++;
    return { ...node, children: [{ ...only, type: 'word', children: [] }] };
  }
  if (node.type === 'command' && /^[A-Za-z0-9_./-]+(?:[ \t]+[A-Za-z0-9_./:,+@%-]+)*$/.test(text)) {
    // One named child per blank-separated word, no anonymous children; arguments become
    // words (the grammar may call a digits-only one a number: same literal value).
    const words = text.split(/[ \t]+/);
    assert.equal(node.children.length, words.length, text);
    assert.ok(node.children.every((c) => c.isNamed && c.children.length <= 1));
    seen.commands++;
    return {
      ...node,
      children: node.children.map((c, k) => {
        assert.equal(source.slice(c.startIndex, c.endIndex), words[k], text);
        return k === 0
          ? expectedFast(c, source, seen)
          : { ...c, type: 'word', children: [], field: null };
      }),
    };
  }
  if (node.type === 'string' && /^"[^$`\\]*"$/.test(text)) {
    seen.strings++;
    return { ...node, children: [] };
  }
  const kept = ALL_CHILDREN.has(node.type) ? node.children : node.children.filter((c) => c.isNamed);
  return { ...node, children: kept.map((c) => expectedFast(c, source, seen)) };
}

describe('plain syntax tree', () => {
  let parser: Parser;
  let copier: SyntaxCopier;
  before(async () => {
    const require = createRequire(import.meta.url);
    await Parser.init();
    const language = await Language.load(
      join(dirname(require.resolve('tree-sitter-bash/package.json')), 'tree-sitter-bash.wasm'),
    );
    parser = new Parser();
    parser.setLanguage(language);
    copier = new SyntaxCopier(language);
  });

  test(`exact copies equal web-tree-sitter's tree for ${COMMANDS.length} commands`, () => {
    for (const command of COMMANDS) {
      const tree = parser.parse(command);
      assert.ok(tree);
      try {
        const copy = copier.copy(tree.rootNode, command, 512, Infinity, true);
        assert.ok(typeof copy !== 'string', command);
        assert.deepEqual(plain(copy), fromWasm(tree.rootNode, null), command);
        assert.deepEqual(
          copy.namedChildren.map(plain),
          copy.children.filter((c) => c.isNamed).map(plain),
        );
      } finally {
        tree.delete();
      }
    }
  });

  test('fast copies keep exactly the children the analyser reads', () => {
    const seen = { names: 0, strings: 0, commands: 0 };
    for (const command of COMMANDS) {
      const tree = parser.parse(command);
      assert.ok(tree);
      try {
        if (tree.rootNode.hasError) continue; // error trees are always copied exactly
        const copy = copier.copy(tree.rootNode, command, 512, Infinity, false);
        assert.ok(typeof copy !== 'string', command);
        const expected = expectedFast(fromWasm(tree.rootNode, null), command, seen);
        assert.deepEqual(plain(copy), expected, command);
      } finally {
        tree.delete();
      }
    }
    assert.ok(
      seen.names > 300 && seen.strings > 10 && seen.commands > 100,
      `fast paths exercised: ${JSON.stringify(seen)}`,
    );
  });

  test('a tree deeper than the limit is refused, not copied', () => {
    const command = `echo "${'${a:-'.repeat(300)}${'}'.repeat(300)}"`;
    const tree = parser.parse(command);
    assert.ok(tree);
    try {
      assert.equal(copier.copy(tree.rootNode, command, 64, Infinity, false), 'depth');
      assert.equal(typeof copier.copy(tree.rootNode, command, 5000, Infinity, false), 'object');
    } finally {
      tree.delete();
    }
  });
});

describe('copy time', () => {
  test('copying counts as parsing: a passed deadline abandons a large copy', async () => {
    const require = createRequire(import.meta.url);
    await Parser.init();
    const language = await Language.load(
      join(dirname(require.resolve('tree-sitter-bash/package.json')), 'tree-sitter-bash.wasm'),
    );
    const parser = new Parser();
    parser.setLanguage(language);
    const copier = new SyntaxCopier(language);
    const command = 'a;'.repeat(2000);
    const tree = parser.parse(command);
    assert.ok(tree);
    try {
      const past = performance.now() - 1;
      assert.equal(copier.copy(tree.rootNode, command, 512, past, false), 'timeout');
      const whole = copier.copy(tree.rootNode, command, 512, Infinity, false);
      assert.ok(typeof whole !== 'string');
      assert.equal(whole.namedChildren.length, 2000);
    } finally {
      tree.delete();
      parser.delete();
    }
  });
});

describe('commands inside numbers and deep words', () => {
  const policy = parsePolicyObject(
    { permissions: { default: 'deny', deny: ['Bash(rm:*)'], allow: ['Bash(*)'] } },
    'test',
    'operator',
  );

  for (const command of [
    'echo 10#$(rm -rf /tmp/x)',
    'echo $((16#$(rm -rf /tmp/x)))',
    'x=2#$(rm -rf /tmp/x)',
  ]) {
    test(`${command} runs rm, so it is denied`, async () => {
      const engine = await createPolicyEngine({ layers: [policy], cacheEntries: 0 });
      const r = engine.decide({ tool: 'Bash', command });
      assert.equal(r.decision, 'deny', r.reason);
      assert.ok(r.subcommands?.some((s) => s.argv[0] === 'rm'));
    });
  }

  test('a plain base-16 number stays a literal argument', async () => {
    const engine = await createPolicyEngine({ layers: [policy], cacheEntries: 0 });
    const r = engine.decide({ tool: 'Bash', command: 'echo 16#ff' });
    assert.equal(r.decision, 'allow');
    assert.deepEqual(r.subcommands?.[0]?.argv, ['echo', '16#ff']);
  });

  test('expansions nested 600 deep hit the syntax-depth limit (deny)', async () => {
    const engine = await createPolicyEngine({ layers: [policy], cacheEntries: 0 });
    const command = `echo "${'${a:-'.repeat(600)}${'}'.repeat(600)}"`;
    const r = engine.decide({ tool: 'Bash', command });
    assert.equal(r.decision, 'deny');
    assert.match(r.reason, /nested deeper than 512 levels/);
  });
});

describe('Bash rule index', () => {
  const word = fc.constantFrom('git', 'rm', 'ls', 'push', '-rf', '/', 'g*', '*', 'r?', 'a b');
  const ruleText = fc
    .tuple(fc.array(word, { minLength: 1, maxLength: 3 }), fc.constantFrom('', ':*'))
    .map(([words, suffix]) => `Bash(${words.join(' ')}${suffix})`);

  test('candidates hold every matching rule, in rule order', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(ruleText, fc.constant('Bash')), { minLength: 1, maxLength: 12 }),
        fc.array(fc.array(word, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 3 }),
        (texts, argvs) => {
          const rules = texts.map((t) => ({
            compiled: compileRule(parseRule(t, 'deny'), '/workspace'),
          }));
          const index = new BashRuleIndex(rules);
          const matchesAny = (r: (typeof rules)[number]): boolean => {
            const c = r.compiled;
            if (c.tool !== 'Bash') return false;
            return argvs.some((a) => bashMatches(c.bash, a));
          };
          const expected = rules.filter(matchesAny);
          const actual = index.candidates(argvs.map((a) => a[0] as string)).filter(matchesAny);
          assert.deepEqual(actual, expected);
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('fast copy against exact copy on random input', () => {
  // Shell-like strings built from plain words (which take the fast paths) mixed with the
  // characters that should push a node off them: quotes, escapes, expansions, operators,
  // assignments, redirects, comments, globs, braces, newlines, numbers with bases.
  const piece = fc.oneof(
    {
      weight: 6,
      arbitrary: fc.constantFrom(
        'ls',
        'rm',
        'git',
        '-rf',
        '/',
        'a.b',
        'x/y',
        '10',
        '0x1f',
        '-5',
        'a:b,c+d@e%f',
      ),
    },
    { weight: 3, arbitrary: fc.constantFrom(' ', ' ', '\t', ';', '|', '&&', '\n', '#') },
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        '"',
        "'",
        '\\',
        '$',
        '$(',
        ')',
        '`',
        '=',
        '>',
        '<',
        '2>&1',
        '*',
        '?',
        '[',
        '{',
        '}',
        ',',
        '~',
        '!',
        '10#',
        '$((',
        '))',
        '"a b"',
        '""',
        '"$x"',
        '<<<',
        '(',
        'if',
        'then',
        'fi',
      ),
    },
  );
  const command = fc.array(piece, { minLength: 1, maxLength: 14 }).map((p) => p.join(''));

  function strip(commands: ShellCommand[]): unknown {
    return commands.map((c) => ({ ...c, upstream: c.upstream.map((u) => commands.indexOf(u)) }));
  }

  test('analyses are identical with and without the fast paths', async () => {
    const parser = await ShellParser.create();
    const options = { home: '/workspace', maxDepth: 16, maxCommands: 256 };
    fc.assert(
      fc.property(command, (text) => {
        const fast = analyseShell(parser, text, { ...options, deadline: performance.now() + 2000 });
        const exact = analyseShell(parser, text, {
          ...options,
          deadline: performance.now() + 2000,
          exactSyntax: true,
        });
        assert.deepEqual(fast.problems, exact.problems, text);
        assert.deepEqual(strip(fast.commands), strip(exact.commands), text);
      }),
      { numRuns: 3000 },
    );
  });
});
