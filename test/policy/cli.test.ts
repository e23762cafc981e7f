import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { policyCommand } from '../../src/cli/policy.js';

async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await policyCommand(args, {
    stdout: (t) => void (out += t),
    stderr: (t) => void (err += t),
  });
  return { code, out, err };
}

describe('palisade policy check', () => {
  let dir = '';
  let operator = '';
  let sandbox = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'palisade-cli-'));
    operator = join(dir, 'operator.yaml');
    sandbox = join(dir, 'sandbox.json');
    await writeFile(
      operator,
      'permissions:\n  deny: ["Bash(ps:*)", "Read(//secrets/**)"]\n  ask: ["Bash(git push:*)"]\nnetwork:\n  allow: ["*.npmjs.org"]\n',
    );
    await writeFile(
      sandbox,
      JSON.stringify({ permissions: { allow: ['Bash(*)', 'Read(./**)', 'Mcp(github)'] } }),
    );
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('exit 0 allow, 1 deny, 2 ask; human output explains', async () => {
    const allow = await run([
      'check',
      '--policy',
      operator,
      '--policy',
      sandbox,
      '--',
      'ls',
      '-la',
    ]);
    assert.equal(allow.code, 0);
    assert.match(
      allow.out,
      /^ALLOW {2}Bash: ls -la\n {2}why: allowed by Bash\(\*\) \(tenant policy /,
    );
    const deny = await run([
      'check',
      '--policy',
      operator,
      '--policy',
      sandbox,
      '--',
      'ls; ps aux',
    ]);
    assert.equal(deny.code, 1);
    assert.match(deny.out, /why: "ps aux": denied by Bash\(ps:\*\) \(operator policy /);
    assert.match(deny.out, /commands:\n {4}allow ls/);
    const ask = await run(['check', '--policy', operator, '--policy', sandbox, '--', 'git push']);
    assert.equal(ask.code, 2);
  });

  test('--json prints the stable decision object', async () => {
    const r = await run(['check', '--policy', operator, '--json', '--', 'ps']);
    assert.equal(r.code, 1);
    const parsed = JSON.parse(r.out);
    assert.deepEqual(Object.keys(parsed), [
      'action',
      'decision',
      'reason',
      'rules',
      'subcommands',
      'understood',
    ]);
    assert.equal(parsed.rules[0].layer, 'operator');
  });

  test('--tool for files, WebFetch, Network and MCP; --cwd', async () => {
    assert.equal(
      (
        await run([
          'check',
          '--policy',
          operator,
          '--policy',
          sandbox,
          '--tool',
          'Read',
          '/secrets/k',
        ])
      ).code,
      1,
    );
    assert.equal(
      (
        await run([
          'check',
          '--policy',
          operator,
          '--policy',
          sandbox,
          '--tool',
          'Read',
          'src/a.ts',
        ])
      ).code,
      0,
    );
    assert.equal(
      (
        await run([
          'check',
          '--policy',
          operator,
          '--policy',
          sandbox,
          '--cwd',
          '/secrets',
          '--',
          'cat key',
        ])
      ).code,
      1,
    );
    assert.equal(
      (await run(['check', '--policy', operator, '--tool', 'Network', 'registry.npmjs.org:443']))
        .code,
      0,
    );
    assert.equal(
      (await run(['check', '--policy', operator, '--tool', 'Network', '[::1]:80'])).code,
      1,
    );
    assert.equal(
      (
        await run([
          'check',
          '--policy',
          operator,
          '--tool',
          'WebFetch',
          'https://registry.npmjs.org/x',
        ])
      ).code,
      0,
    );
    assert.equal(
      (
        await run([
          'check',
          '--policy',
          operator,
          '--policy',
          sandbox,
          '--tool',
          'Mcp',
          'github/list',
        ])
      ).code,
      0,
    );
  });

  test('no policy means deny', async () => {
    assert.equal((await run(['check', '--', 'ls'])).code, 1);
  });

  test('invalid input exits 3 with a clear message', async () => {
    const cases: string[][] = [
      ['check'],
      ['check', '--tool', 'Network', 'no-port'],
      ['check', '--tool', 'Mcp', 'x'],
      ['check', '--tool', 'Frobnicate', 'x'],
      ['check', '--bogus', '--', 'ls'],
      ['check', '--policy', join(dir, 'missing.yaml'), '--', 'ls'],
      [
        'check',
        '--policy',
        operator,
        '--policy',
        operator,
        '--policy',
        operator,
        '--policy',
        operator,
        '--',
        'ls',
      ],
      ['frob'],
    ];
    for (const args of cases) {
      const r = await run(args);
      assert.equal(r.code, 3, args.join(' '));
      assert.match(r.err, /palisade policy: .+/, args.join(' '));
    }
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'permissions:\n  allow: [Bash(ls]\n');
    const r = await run(['check', '--policy', bad, '--', 'ls']);
    assert.equal(r.code, 3);
    assert.match(
      r.err,
      /bad\.yaml:2: "permissions\.allow\[0\]": rule "Bash\(ls": missing closing "\)" \[INVALID_POLICY\]/,
    );
  });

  test('control characters in output are escaped', async () => {
    const r = await run(['check', '--policy', sandbox, '--', 'echo "\x1b[31mred"']);
    assert.equal(r.code, 0);
    assert.ok(!r.out.includes('\x1b'));
    assert.match(r.out, /\\x1b\[31m/);
  });

  test('the real entry point wires `palisade policy` (spawned process)', () => {
    const script =
      "import('./src/cli/main.ts').then(async (m) => { process.exitCode = await m.main(process.argv.slice(1)); })";
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', '-e', script, 'policy', 'check', '--policy', operator, '--', 'ps aux'],
      {
        cwd: new URL('../..', import.meta.url).pathname,
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stdout, /^DENY {2}Bash: ps aux/);
  });
});
