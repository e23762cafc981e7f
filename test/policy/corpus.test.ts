// Table-driven shell corpus (test/policy/fixtures/shell-corpus.json): every bypass named in
// issue 3 and seeds 001 #2 / 003 U2, plus false positives that must stay allowed.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { before, describe, test } from 'node:test';
import {
  createPolicyEngine,
  parsePolicyObject,
  type Decision,
  type PolicyEngine,
} from '../../src/policy/index.js';

interface Case {
  command: string;
  policy: string;
  expect: Decision;
  note: string;
}
const corpus = JSON.parse(
  readFileSync(new URL('./fixtures/shell-corpus.json', import.meta.url), 'utf8'),
) as {
  presets: Record<string, unknown>;
  cases: Case[];
};

describe('shell corpus', () => {
  const engines = new Map<string, PolicyEngine>();
  before(async () => {
    for (const [name, policy] of Object.entries(corpus.presets)) {
      engines.set(
        name,
        await createPolicyEngine({
          layers: [parsePolicyObject(policy, `preset:${name}`, 'operator')],
          cacheEntries: 0,
        }),
      );
    }
  });

  test('has at least 300 cases, each with a known preset and decision', () => {
    assert.ok(corpus.cases.length >= 300, `only ${corpus.cases.length} cases`);
    for (const c of corpus.cases) {
      assert.ok(c.policy in corpus.presets, `unknown preset ${c.policy}`);
      assert.ok(['allow', 'ask', 'deny'].includes(c.expect));
    }
  });

  test('covers every decision for the seed bypasses', () => {
    const notes = corpus.cases.map((c) => c.note).join('\n');
    for (const seed of ['001 #0', '001 #2', '001 #3', '001 #6', '003 U2'])
      assert.ok(notes.includes(seed), seed);
  });

  for (const [index, c] of corpus.cases.entries()) {
    test(`#${index} [${c.policy}] ${JSON.stringify(c.command)} → ${c.expect} (${c.note})`, () => {
      const engine = engines.get(c.policy) as PolicyEngine;
      const result = engine.decide({ tool: 'Bash', command: c.command });
      assert.equal(result.decision, c.expect, `reason: ${result.reason}`);
      if (!result.understood)
        assert.notEqual(result.decision, 'allow', 'a command not understood was allowed');
    });
  }
});
