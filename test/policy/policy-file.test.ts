import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isPalisadeError } from '../../src/errors/index.js';
import {
  loadPolicyFile,
  parsePolicy,
  parsePolicyObject,
  parseRule,
} from '../../src/policy/index.js';

function invalid(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(
      isPalisadeError(err, 'INVALID_POLICY'),
      `expected INVALID_POLICY, got ${String(err)}`,
    );
    assert.match(err.message, pattern);
    return true;
  });
}

describe('policy files', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'palisade-policy-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('the documented JSON example loads', () => {
    const layer = parsePolicy(
      JSON.stringify({
        permissions: {
          default: 'deny',
          deny: ['Bash(ps:*)'],
          ask: ['Bash(git push:*)'],
          allow: ['Bash(*)', 'Read(./**)'],
        },
        network: {
          allow: ['example.com', '*.npmjs.org', '10.0.0.0/8:5432'],
          deny: ['evil.example.com'],
        },
      }),
      'example.json',
      'tenant',
    );
    assert.equal(layer.name, 'tenant');
    assert.equal(layer.permissions.default, 'deny');
    assert.deepEqual(
      layer.permissions.allow.map((r) => r.text),
      ['Bash(*)', 'Read(./**)'],
    );
    assert.equal(layer.network.allow.length, 3);
  });

  test('YAML loads from a file; errors name the file and line', async () => {
    const good = join(dir, 'good.yaml');
    await writeFile(
      good,
      'permissions:\n  allow:\n    - Bash(ls:*)\nnetwork:\n  allow: [example.com]\n',
    );
    const layer = await loadPolicyFile(good, 'operator');
    assert.equal(layer.source, good);
    assert.equal(layer.permissions.allow[0]?.text, 'Bash(ls:*)');

    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'permissions:\n  allow:\n    - Bash(ls:*)\n    - Bsh(x)\n');
    await assert.rejects(loadPolicyFile(bad), (err: unknown) => {
      assert.ok(isPalisadeError(err, 'INVALID_POLICY'));
      assert.match(
        err.message,
        new RegExp(
          `^${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:4: "permissions.allow\\[1\\]": rule "Bsh\\(x\\)": unknown tool "Bsh"`,
        ),
      );
      return true;
    });
  });

  test('a missing file is a clear error', async () => {
    await assert.rejects(
      loadPolicyFile(join(dir, 'nope.yaml')),
      (err: unknown) =>
        isPalisadeError(err, 'INVALID_POLICY') &&
        /cannot read policy file .*ENOENT/.test(err.message),
    );
  });

  test('an oversized file is refused before parsing', async () => {
    const big = join(dir, 'big.yaml');
    await writeFile(big, '#'.repeat(1024 * 1024 + 1));
    await assert.rejects(
      loadPolicyFile(big),
      (err: unknown) =>
        isPalisadeError(err, 'INVALID_POLICY') && /limit is 1048576/.test(err.message),
    );
  });

  test('malformed YAML/JSON names the line and column', () => {
    invalid(
      () => parsePolicy('permissions: [\n', 'p.yaml'),
      /^p\.yaml:\d+:\d+: not valid YAML or JSON/,
    );
    invalid(
      () => parsePolicy('{"permissions": {"allow": ["Bash"],}', 'p.json'),
      /^p\.json:1:\d+: not valid YAML or JSON/,
    );
    invalid(
      () => parsePolicy('permissions: {}\npermissions: {}\n', 'dup.yaml'),
      /dup\.yaml:2:\d+: .*unique|dup\.yaml:2:\d+/,
    );
  });

  test('unknown keys are errors, with the field and line', () => {
    invalid(
      () => parsePolicy('permisions:\n  allow: []\n', 'p.yaml'),
      /^p\.yaml:1: unknown key "permisions" at top level; allowed keys are permissions, network/,
    );
    invalid(
      () => parsePolicy('permissions:\n  allow: []\n  alow: []\n', 'p.yaml'),
      /^p\.yaml:3: unknown key "alow" at "permissions"/,
    );
    invalid(
      () => parsePolicy('network:\n  allowed: []\n', 'p.yaml'),
      /^p\.yaml:2: unknown key "allowed" at "network"/,
    );
  });

  test('wrong types and values', () => {
    invalid(() => parsePolicy('[]', 'p.yaml'), /must be an object/);
    invalid(() => parsePolicy('permissions: 5', 'p.yaml'), /"permissions" must be an object/);
    invalid(
      () => parsePolicy('permissions:\n  default: maybe\n', 'p.yaml'),
      /^p\.yaml:2: "permissions.default" must be "allow", "ask" or "deny"/,
    );
    invalid(() => parsePolicy('permissions:\n  notUnderstood: allow\n', 'p.yaml'), /never allow/);
    invalid(
      () => parsePolicy('permissions:\n  deny: Bash(ps)\n', 'p.yaml'),
      /"permissions.deny" must be a list/,
    );
    invalid(
      () => parsePolicy('permissions:\n  deny: [5]\n', 'p.yaml'),
      /permissions.deny\[0\].*must be a string/,
    );
    invalid(
      () => parsePolicy('network:\n  allow:\n    - example.com\n    - http://x\n', 'p.yaml'),
      /^p\.yaml:4: network\.allow\[1\]: egress rule "http:\/\/x"/,
    );
    invalid(() => parsePolicy('network: []\n', 'p.yaml'), /"network" must be an object/);
  });

  test('rule syntax errors say what is wrong', () => {
    invalid(() => parseRule('Bash(ls', 'allow'), /missing closing/);
    invalid(() => parseRule('Bash()', 'allow'), /empty specifier/);
    invalid(() => parseRule('Shell(ls)', 'allow'), /unknown tool "Shell"/);
    invalid(() => parseRule('', 'allow'), /1–1024 characters/);
    invalid(
      () => parsePolicyObject({ permissions: { allow: ['WebFetch(example.com)'] } }, 'api'),
      /WebFetch\(domain:example\.com\)/,
    );
    invalid(
      () => parsePolicyObject({ permissions: { allow: ['Network(10.0.0.1/8)'] } }, 'api'),
      /host bits set/,
    );
    invalid(
      () => parsePolicyObject({ permissions: { allow: ['Mcp(/x)'] } }, 'api'),
      /Mcp\(server\)/,
    );
    invalid(() => parsePolicyObject({ permissions: { allow: ['Read(a\0b)'] } }, 'api'), /NUL/);
  });

  test('parsePolicyObject validates API bodies the same way', () => {
    invalid(
      () => parsePolicyObject({ permissions: { allow: ['Bash'] }, extra: 1 }, 'api:tenant/acme'),
      /^api:tenant\/acme: unknown key "extra"/,
    );
    const layer = parsePolicyObject(undefined, 'empty');
    assert.equal(layer.name, 'sandbox');
    assert.deepEqual(layer.permissions, {
      default: null,
      notUnderstood: null,
      deny: [],
      ask: [],
      allow: [],
    });
  });

  test('an unknown layer name is an error', () => {
    assert.throws(
      () => parsePolicy('{}', 'p', 'root' as 'operator'),
      (err: unknown) => isPalisadeError(err, 'INVALID_ARGUMENT'),
    );
  });

  test('YAML aliases cannot blow up memory', () => {
    const bomb =
      'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\npermissions: {}\n';
    invalid(() => parsePolicy(bomb, 'bomb.yaml'), /bomb\.yaml/);
  });
});
