// The speed work (plain-object syntax tree, indexed rules) must not change what the analyser
// sees or what the engine decides. fixtures/walk-golden.json was recorded with the earlier
// implementation, which read web-tree-sitter nodes directly, for every command of the shell
// corpus, the benchmark corpus and extra syntax (here-docs, redirects, errors, arithmetic, …).
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { before, describe, test } from 'node:test';
import {
  createPolicyEngine,
  parsePolicyObject,
  type DecisionResult,
  type PolicyEngine,
} from '../../src/policy/index.js';
import { analyseShell, ShellParser, type ShellCommand } from '../../src/policy/shell/index.js';

interface GoldenCase {
  command: string;
  problems: unknown;
  commands: unknown;
  decisions: Record<string, unknown>;
}
const goldenUrl = new URL('./fixtures/walk-golden.json', import.meta.url);
const golden = JSON.parse(readFileSync(goldenUrl, 'utf8')) as {
  description: string;
  cases: GoldenCase[];
};
const presets = (
  JSON.parse(readFileSync(new URL('./fixtures/shell-corpus.json', import.meta.url), 'utf8')) as {
    presets: Record<string, unknown>;
  }
).presets;

/** A compact, order-preserving record of one analysed command (defaults left out). */
function record(cmd: ShellCommand, all: ShellCommand[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(cmd)) {
    if (value === false || (Array.isArray(value) && value.length === 0)) continue;
    if (key === 'fullArgv' && JSON.stringify(value) === JSON.stringify(cmd.argv)) continue;
    out[key] = key === 'upstream' ? (value as ShellCommand[]).map((u) => all.indexOf(u)) : value;
  }
  return out;
}

function decisionRecord(r: DecisionResult): unknown[] {
  return [
    r.decision,
    r.reason,
    r.understood,
    r.rules.map((m) => `${m.effect} ${m.rule}`),
    (r.subcommands ?? []).map((s) => s.decision[0]).join(''),
  ];
}

describe('analysis and decisions match the recorded baseline', () => {
  let parser: ShellParser;
  const engines = new Map<string, PolicyEngine>();
  before(async () => {
    parser = await ShellParser.create();
    for (const [name, policy] of Object.entries(presets)) {
      engines.set(
        name,
        await createPolicyEngine({
          layers: [parsePolicyObject(policy, `preset:${name}`, 'operator')],
          cacheEntries: 0,
        }),
      );
    }
  });

  function current(command: string): GoldenCase {
    const analysis = analyseShell(parser, command, {
      home: '/workspace',
      maxDepth: 16,
      maxCommands: 256,
      deadline: performance.now() + 5000,
    });
    const decisions: Record<string, unknown> = {};
    for (const [name, engine] of engines)
      decisions[name] = decisionRecord(engine.decide({ tool: 'Bash', command }));
    return {
      command,
      problems: analysis.problems,
      commands: analysis.commands.map((c) => record(c, analysis.commands)),
      decisions,
    };
  }

  test('the baseline covers the shell corpus and the benchmark corpus', () => {
    assert.ok(golden.cases.length >= 800, `only ${golden.cases.length} cases`);
    assert.deepEqual(
      Object.keys(golden.cases[0]?.decisions ?? {}).sort(),
      [...engines.keys()].sort(),
    );
  });

  test('every command gives the same commands, problems and decisions', () => {
    if (process.env['PALISADE_UPDATE_GOLDEN'] === '1') {
      const cases = golden.cases.map((c) => current(c.command));
      writeFileSync(goldenUrl, `${JSON.stringify({ ...golden, cases })}\n`);
      return;
    }
    let differing = 0;
    const first: string[] = [];
    for (const expected of golden.cases) {
      const actual = JSON.parse(JSON.stringify(current(expected.command))) as GoldenCase;
      try {
        assert.deepEqual(actual, expected);
      } catch (err) {
        differing++;
        if (first.length < 3) first.push((err as Error).message.slice(0, 1500));
      }
    }
    assert.equal(differing, 0, `${differing} commands differ; first:\n${first.join('\n---\n')}`);
  });
});
