// Property tests: the analyser never crashes or hangs on arbitrary input, and anything it
// does not understand is never allowed — even under an allow-everything policy.
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import fc from 'fast-check';
import {
  createPolicyEngine,
  parsePolicyObject,
  type PolicyEngine,
} from '../../src/policy/index.js';

const SHELL_PIECES = [
  'ls',
  'rm',
  '-rf',
  '/',
  'echo',
  '"',
  "'",
  '`',
  '$(',
  ')',
  '(',
  '{',
  '}',
  ';',
  '&&',
  '||',
  '|',
  '&',
  '\n',
  '\\',
  '$',
  '${',
  'IFS',
  '<<',
  'EOF',
  '<<<',
  '>',
  '<',
  '>&',
  '#',
  ' ',
  '\t',
  'bash',
  '-c',
  'eval',
  'sudo',
  'xargs',
  'find',
  '-exec',
  '\\;',
  '*',
  '?',
  '[',
  ']',
  '!',
  'if',
  'then',
  'fi',
  'for',
  'do',
  'done',
  'case',
  'esac',
  'in',
  '=',
  'a',
  'x=1',
  '$x',
  "$'",
  '\\x41',
  '{a,b}',
];

describe('analyser properties', () => {
  let engine: PolicyEngine;
  before(async () => {
    // Everything allowed, default allow: only "not understood" and the dangerous list can refuse.
    engine = await createPolicyEngine({
      layers: [
        parsePolicyObject(
          { permissions: { default: 'allow', allow: ['Bash'] } },
          'allow-all',
          'operator',
        ),
      ],
      cacheEntries: 0,
      limits: { maxParseMs: 200 },
    });
  });

  function check(command: string): void {
    const started = performance.now();
    const r = engine.decide({ tool: 'Bash', command });
    assert.ok(performance.now() - started < 2000, 'a decision took longer than 2 s');
    assert.ok(['allow', 'ask', 'deny'].includes(r.decision));
    assert.equal(typeof r.reason, 'string');
    if (!r.understood)
      assert.notEqual(
        r.decision,
        'allow',
        `not understood but allowed: ${JSON.stringify(command)}`,
      );
    for (const s of r.subcommands ?? []) assert.ok(Array.isArray(s.argv));
    JSON.stringify(r);
  }

  test('random printable strings never crash, hang, or allow what was not understood', () => {
    fc.assert(fc.property(fc.string({ maxLength: 300 }), check), { numRuns: 1500 });
  });

  test('random full-unicode and binary strings likewise', () => {
    fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 300 }), check), { numRuns: 1000 });
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) =>
        check(Buffer.from(bytes).toString('latin1')),
      ),
      { numRuns: 500 },
    );
  });

  test('random shell-shaped token soup likewise', () => {
    const soup = fc
      .array(fc.constantFrom(...SHELL_PIECES), { maxLength: 60 })
      .map((parts) => parts.join(''));
    const spaced = fc
      .array(fc.constantFrom(...SHELL_PIECES), { maxLength: 60 })
      .map((parts) => parts.join(' '));
    fc.assert(fc.property(fc.oneof(soup, spaced), check), { numRuns: 3000 });
  });

  test('a command with a syntax error is never allowed', () => {
    const broken = fc
      .tuple(
        fc.constantFrom('ls', 'echo hi', 'git status', 'cat x'),
        fc.constantFrom('(', '$(', '"', "'", '`', 'if true; then', '|', '&&'),
      )
      .map(([cmd, tail]) => `${cmd} ${tail}`);
    fc.assert(
      fc.property(broken, (command) => {
        const r = engine.decide({ tool: 'Bash', command });
        assert.equal(r.understood, false, command);
        assert.notEqual(r.decision, 'allow', command);
      }),
      { numRuns: 200 },
    );
  });
});
