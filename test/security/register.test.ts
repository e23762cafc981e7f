// The findings-register checker must catch drift; these cases prove each kind is caught.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
// @ts-expect-error: a plain .mjs script without type declarations
import * as register from '../../scripts/security-register.mjs';

interface Checked {
  problems: string[];
  counts: { covered: number; na: number; open: number };
  countsLine: string;
}
const { parseRegister, checkRegister, EXPECTED_IDS } = register as {
  parseRegister(text: string): { rows: unknown[]; problems: string[] };
  checkRegister(
    parsed: { rows: unknown[]; problems: string[] },
    ctx: {
      root: string;
      results: { file: string; name: string; status: string }[];
      readme?: string;
    },
  ): Checked;
  EXPECTED_IDS: string[];
};

const HEADER =
  '| ID | Finding | How it could arise in Palisade | Control | Test | Status |\n|---|---|---|---|---|---|\n';

describe('security register checker', () => {
  const root = mkdtempSync(join(tmpdir(), 'palisade-register-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(root, 'src'), { recursive: true });
  mkdirSync(join(root, 'test'), { recursive: true });
  writeFileSync(join(root, 'src/guard.ts'), 'export function guardThing() {}\n');
  writeFileSync(join(root, 'test/guard.test.ts'), "it('004 C-1: attack fails', () => {});\n");
  const passing = [{ file: 'test/guard.test.ts', name: '004 C-1: attack fails', status: 'passed' }];
  const row = (
    id: string,
    status = 'covered',
    test = '`test/guard.test.ts` › 004 C-1: attack fails',
  ) => `| ${id} | finding | how | \`src/guard.ts\` \`guardThing\` | ${test} | ${status} |\n`;
  const all = (override: Record<string, string> = {}) => {
    const ids = [
      ...EXPECTED_IDS,
      ...Array.from({ length: 16 }, (_, i) => `003 U${(i % 6) + 1}.${Math.floor(i / 6) + 1}`),
    ];
    return HEADER + ids.map((id) => override[id] ?? row(id)).join('');
  };
  const check = (text: string, results = passing, readme?: string) =>
    checkRegister(parseRegister(text), {
      root,
      results,
      ...(readme !== undefined ? { readme } : {}),
    });

  it('a complete register whose tests passed has no problems and counts its rows', () => {
    const out = check(all({ '002 M-1': row('002 M-1', 'n/a: no such part', '—') }));
    assert.deepEqual(out.problems, []);
    assert.equal(out.counts.covered, EXPECTED_IDS.length + 16 - 1);
    assert.equal(out.counts.na, 1);
    assert.equal(check(all(), passing, `counts: ${out.countsLine}`).problems.length, 1);
  });

  it('a missing, duplicated or unknown ID is drift', () => {
    const missing = check(all({ '002 H-5': '' }));
    assert.ok(missing.problems.some((p) => p.includes('002 H-5 is missing')));
    const twice = check(all({ '002 H-5': row('002 H-5') + row('002 H-5') }));
    assert.ok(twice.problems.some((p) => p.includes('listed twice')));
    const unknown = check(all({ '002 H-5': row('002 H-5') + row('002 H-99') }));
    assert.ok(unknown.problems.some((p) => p.includes('002 H-99') && p.includes('not a finding')));
  });

  it('a test that did not run, failed or does not exist is drift', () => {
    assert.ok(check(all(), []).problems.some((p) => p.includes('did not run')));
    const failed = [{ ...passing[0]!, status: 'failed' }];
    assert.ok(check(all(), failed).problems.some((p) => p.includes('failed in the last run')));
    const gone = all({ '004 C-2': row('004 C-2', 'covered', '`test/nope.test.ts` › x') });
    assert.ok(check(gone).problems.some((p) => p.includes('test/nope.test.ts does not exist')));
  });

  it('a control whose file or function is gone, a bad status, or a covered row without a test is drift', () => {
    const bad = all({
      '004 H-1':
        '| 004 H-1 | f | h | `src/guard.ts` `renamedAway` | `test/guard.test.ts` › 004 C-1: attack fails | covered |\n',
      '004 H-2': row('004 H-2', 'fixed'),
      '004 H-3': row('004 H-3', 'covered', '—'),
    });
    const problems = check(bad).problems;
    assert.ok(problems.some((p) => p.includes('renamedAway does not occur')));
    assert.ok(problems.some((p) => p.includes('status must be')));
    assert.ok(problems.some((p) => p.includes('names the test that proves it')));
  });
});
