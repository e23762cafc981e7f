import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isPalisadeError } from '../../src/errors/index.js';
import {
  createPolicyEngine,
  parsePolicyObject,
  type Action,
  type LayerName,
  type PolicyEngineOptions,
} from '../../src/policy/index.js';

function layer(name: LayerName, value: unknown) {
  return parsePolicyObject(value, `${name}.yaml`, name);
}

async function engine(
  layers: Array<[LayerName, unknown]>,
  extra: Partial<PolicyEngineOptions> = {},
) {
  return createPolicyEngine({
    layers: layers.map(([n, v]) => layer(n, v)),
    cacheEntries: 0,
    ...extra,
  });
}

const bash = (command: string, cwd?: string): Action =>
  cwd === undefined ? { tool: 'Bash', command } : { tool: 'Bash', command, cwd };

describe('layering and precedence', () => {
  test('deny in an upper layer beats allow in a lower layer', async () => {
    const e = await engine([
      ['operator', { permissions: { deny: ['Bash(ps:*)'] } }],
      ['sandbox', { permissions: { allow: ['Bash(*)', 'Bash(ps aux)'] } }],
    ]);
    const r = e.decide(bash('ps aux'));
    assert.equal(r.decision, 'deny');
    assert.deepEqual(
      r.rules.map((x) => [x.rule, x.layer]),
      [['Bash(ps:*)', 'operator']],
    );
  });

  test('ask beats allow, deny beats ask, across and within layers', async () => {
    const e = await engine([
      ['operator', { permissions: { ask: ['Bash(git push:*)'] } }],
      ['tenant', { permissions: { allow: ['Bash(git:*)'], deny: ['Bash(git push --force:*)'] } }],
    ]);
    assert.equal(e.decide(bash('git status')).decision, 'allow');
    assert.equal(e.decide(bash('git push origin')).decision, 'ask');
    assert.equal(e.decide(bash('git push --force origin')).decision, 'deny');
  });

  test('a lower layer cannot loosen an upper layer: its default cannot turn deny into allow', async () => {
    const e = await engine([
      ['operator', { permissions: { default: 'deny' } }],
      ['sandbox', { permissions: { default: 'allow' } }],
    ]);
    const r = e.decide(bash('make'));
    assert.equal(r.decision, 'deny');
    assert.match(r.reason, /default is deny \(operator policy operator\.yaml\)/);
  });

  test('a lower layer can tighten: a sandbox deny beats an operator allow', async () => {
    const e = await engine([
      ['operator', { permissions: { allow: ['Bash(*)'] } }],
      ['sandbox', { permissions: { deny: ['Bash(npm publish:*)'] } }],
    ]);
    assert.equal(e.decide(bash('npm publish')).decision, 'deny');
    assert.equal(e.decide(bash('npm test')).decision, 'allow');
  });

  test('nothing configured means deny', async () => {
    const e = await engine([]);
    for (const action of [
      bash('ls'),
      { tool: 'Read', path: 'a' } as Action,
      { tool: 'Network', host: 'example.com', port: 443 } as Action,
    ]) {
      assert.equal(e.decide(action).decision, 'deny');
    }
  });

  test('notUnderstood: the strictest layer wins', async () => {
    const e = await engine([
      ['operator', { permissions: { allow: ['Bash(*)'], notUnderstood: 'deny' } }],
      ['sandbox', { permissions: { notUnderstood: 'ask' } }],
    ]);
    assert.equal(e.decide(bash('$CMD x')).decision, 'deny');
  });

  test('the dangerous list applies even when everything is allowed, and operators can extend it', async () => {
    const e = await engine(
      [['operator', { permissions: { default: 'allow', allow: ['Bash(*)'] } }]],
      {
        dangerous: {
          extra: [
            { rule: 'Bash(terraform destroy:*)', effect: 'ask', reason: 'destroys infrastructure' },
          ],
        },
      },
    );
    assert.equal(e.decide(bash('sudo ls')).decision, 'deny');
    const r = e.decide(bash('terraform destroy -auto-approve'));
    assert.equal(r.decision, 'ask');
    assert.equal(r.rules[0]?.layer, 'builtin');
    assert.equal(e.decide(bash('terraform plan')).decision, 'allow');
  });

  test('an invalid dangerous-list entry is a clear error', async () => {
    await assert.rejects(
      engine([], { dangerous: { extra: [{ rule: 'Read(x)', effect: 'deny', reason: 'x' }] } }),
      (err: unknown) => isPalisadeError(err, 'INVALID_ARGUMENT') && /only Bash/.test(err.message),
    );
  });
});

describe('decision output', () => {
  test('field order and content are stable', async () => {
    const e = await engine([
      ['operator', { permissions: { deny: ['Bash(ps:*)'], allow: ['Bash(ls:*)'] } }],
    ]);
    const r = e.decide(bash('ls && ps aux'));
    assert.deepEqual(Object.keys(r), [
      'action',
      'decision',
      'reason',
      'rules',
      'subcommands',
      'understood',
    ]);
    assert.deepEqual(JSON.parse(JSON.stringify(r)), {
      action: { tool: 'Bash', command: 'ls && ps aux' },
      decision: 'deny',
      reason: '"ps aux": denied by Bash(ps:*) (operator policy operator.yaml)',
      rules: [{ rule: 'Bash(ps:*)', layer: 'operator', source: 'operator.yaml', effect: 'deny' }],
      subcommands: [
        {
          argv: ['ls'],
          text: 'ls',
          decision: 'allow',
          reason: 'allowed by Bash(ls:*) (operator policy operator.yaml)',
          rules: [
            { rule: 'Bash(ls:*)', layer: 'operator', source: 'operator.yaml', effect: 'allow' },
          ],
        },
        {
          argv: ['ps', 'aux'],
          text: 'ps aux',
          decision: 'deny',
          reason: 'denied by Bash(ps:*) (operator policy operator.yaml)',
          rules: [
            { rule: 'Bash(ps:*)', layer: 'operator', source: 'operator.yaml', effect: 'deny' },
          ],
        },
      ],
      understood: true,
    });
    const f = e.decide({ tool: 'Read', path: 'x' });
    assert.deepEqual(Object.keys(f), ['action', 'decision', 'reason', 'rules', 'understood']);
  });

  test('argv is normalised: quotes removed, escapes resolved', async () => {
    const e = await engine([['operator', { permissions: { allow: ['Bash'] } }]]);
    const r = e.decide(bash(`'r''m' "a b" c\\ d $'e\\tf'`));
    assert.deepEqual(r.subcommands?.[0]?.argv, ['rm', 'a b', 'c d', 'e\tf']);
  });

  test('cached results are identical and frozen', async () => {
    const e = await createPolicyEngine({
      layers: [layer('operator', { permissions: { allow: ['Bash'] } })],
      cacheEntries: 2,
    });
    const a = e.decide(bash('ls'));
    const b = e.decide(bash('ls'));
    assert.equal(a, b);
    assert.ok(Object.isFrozen(a) && Object.isFrozen(a.rules));
    // Bounded: after more distinct commands than entries, the first is recomputed (new object).
    e.decide(bash('ls -l'));
    e.decide(bash('ls -la'));
    assert.notEqual(e.decide(bash('ls')), a);
    // cwd is part of the key
    assert.notEqual(e.decide(bash('ls', '/tmp')), e.decide(bash('ls')));
  });
});

describe('input limits', () => {
  test('over-long commands are denied, not parsed', async () => {
    const e = await engine([['operator', { permissions: { allow: ['Bash'] } }]], {
      limits: { maxCommandBytes: 100 },
    });
    const r = e.decide(bash('echo ' + 'a'.repeat(200)));
    assert.equal(r.decision, 'deny');
    assert.match(r.reason, /longer than 100 bytes/);
    assert.equal(r.understood, false);
    // multibyte characters count in bytes
    assert.equal(e.decide(bash('echo ' + 'é'.repeat(60))).decision, 'deny');
    assert.equal(e.decide(bash('echo ' + 'é'.repeat(40))).decision, 'allow');
  });

  test('deep nesting is denied with a clear reason', async () => {
    const e = await engine([['operator', { permissions: { allow: ['Bash'] } }]], {
      limits: { maxDepth: 4 },
    });
    assert.equal(e.decide(bash('echo $(echo $(echo hi))')).decision, 'allow');
    const deep = e.decide(bash('echo $(echo $(echo $(echo $(echo $(echo hi)))))'));
    assert.equal(deep.decision, 'deny');
    assert.match(deep.reason, /nesting deeper than 4/);
    const nestedShells = e.decide(
      bash(`bash -c "bash -c 'bash -c \\"bash -c \\\\\\"bash -c ls\\\\\\"\\"'"`),
    );
    assert.equal(nestedShells.decision, 'deny');
    const subshells = e.decide(bash('('.repeat(3000) + 'ls' + ')'.repeat(3000)));
    assert.equal(subshells.decision, 'deny');
  });

  test('too many commands are denied', async () => {
    const e = await engine([['operator', { permissions: { allow: ['Bash'] } }]], {
      limits: { maxCommands: 10 },
    });
    const r = e.decide(bash(Array.from({ length: 20 }, () => 'ls').join('; ')));
    assert.equal(r.decision, 'deny');
    assert.match(r.reason, /more than 10 commands/);
  });

  test('parse time is bounded: a tiny budget aborts and denies instead of hanging', async () => {
    const e = await engine([['operator', { permissions: { allow: ['Bash'] } }]], {
      limits: { maxParseMs: 1, maxCommandBytes: 4 * 1024 * 1024, maxCommands: 1_000_000 },
    });
    const big = 'echo "$(ls ${a:-b}) x" | cat && '.repeat(60000) + 'ls';
    const started = performance.now();
    const r = e.decide(bash(big));
    assert.equal(r.decision, 'deny');
    assert.match(r.reason, /parsing took longer than the time limit/);
    assert.ok(performance.now() - started < 5000);
    // The parser recovers: the next decision is analysed normally.
    assert.equal(e.decide(bash('ls -la')).decision, 'allow');
  });

  test('NUL bytes are denied', async () => {
    const e = await engine([['operator', { permissions: { allow: ['Bash'] } }]]);
    assert.equal(e.decide(bash('ls\0-la')).decision, 'deny');
  });

  test('invalid limits and malformed actions are clear errors', async () => {
    await assert.rejects(engine([], { limits: { maxDepth: 0 } }), (err: unknown) =>
      isPalisadeError(err, 'INVALID_LIMIT'),
    );
    const e = await engine([]);
    for (const bad of [
      null,
      {},
      { tool: 'Bash' },
      { tool: 'Nope' },
      { tool: 'Network', host: 'x', port: 0 },
      { tool: 'Read', path: 5 },
    ]) {
      assert.throws(
        () => e.decide(bad as unknown as Action),
        (err: unknown) => isPalisadeError(err, 'INVALID_ARGUMENT'),
      );
    }
  });
});

describe('file actions', () => {
  const policy = {
    permissions: {
      deny: ['Read(//secrets/**)', 'Read(.env)', 'Write(//etc/**)', 'Edit(/config/locked.json)'],
      ask: ['Write(~/.bashrc)'],
      allow: [
        'Read(./**)',
        'Read(//usr/share/**)',
        'Write(src/**)',
        'Edit(**)',
        'Glob',
        'Grep(//tmp/**)',
      ],
    },
  };

  test('canonical paths: . and .. resolved, slashes folded, relative to cwd or workspace', async () => {
    const e = await engine([['sandbox', policy]]);
    const read = (path: string, cwd?: string) =>
      e.decide(cwd === undefined ? { tool: 'Read', path } : { tool: 'Read', path, cwd }).decision;
    assert.equal(read('/secrets/key'), 'deny');
    assert.equal(read('//secrets///key'), 'deny');
    assert.equal(read('/workspace/../secrets/./key'), 'deny');
    assert.equal(read('../../../../secrets/key'), 'deny');
    assert.equal(read('key', '/secrets'), 'deny');
    assert.equal(read('/secrets'), 'deny');
    assert.equal(read('/secretsX/key'), 'deny', 'not covered by a rule: default deny');
    assert.equal(read('README.md'), 'allow');
    assert.equal(read('/workspace/src/a.ts'), 'allow');
    assert.equal(read('~/notes.txt'), 'allow');
    assert.equal(read('/usr/share/dict/words'), 'allow');
    assert.equal(read('a/b/.env'), 'deny');
    assert.equal(read('.envrc'), 'allow');
  });

  test('NUL in a path is denied with a clear reason', async () => {
    const e = await engine([['sandbox', policy]]);
    const r = e.decide({ tool: 'Read', path: 'a\0b' });
    assert.equal(r.decision, 'deny');
    assert.match(r.reason, /NUL/);
  });

  test('Write and Edit rules cover each other; Read rules also stop Grep/Glob/LS', async () => {
    const e = await engine([['sandbox', policy]]);
    assert.equal(e.decide({ tool: 'Edit', path: '/etc/passwd' }).decision, 'deny');
    assert.equal(
      e.decide({ tool: 'Write', path: '/workspace/config/locked.json' }).decision,
      'deny',
    );
    assert.equal(e.decide({ tool: 'Write', path: '~/.bashrc' }).decision, 'ask');
    assert.equal(e.decide({ tool: 'Write', path: 'src/a.ts' }).decision, 'allow');
    assert.equal(e.decide({ tool: 'Grep', path: '/secrets' }).decision, 'deny');
    assert.equal(e.decide({ tool: 'Glob', path: '/secrets/*' }).decision, 'deny');
    assert.equal(e.decide({ tool: 'LS', path: '/secrets' }).decision, 'deny');
    assert.equal(e.decide({ tool: 'Grep', path: '/tmp/x' }).decision, 'allow');
  });

  test('shell readers and redirects are checked against file rules', async () => {
    const e = await engine([
      ['sandbox', { permissions: { ...policy.permissions, allow: ['Bash(*)'] } }],
    ]);
    assert.equal(e.decide(bash('cat /secrets/key')).decision, 'deny');
    assert.equal(e.decide(bash('echo x > /etc/hosts')).decision, 'deny');
    assert.equal(e.decide(bash('echo x >> ~/.bashrc')).decision, 'ask');
    assert.equal(e.decide(bash('cat key', '/secrets')).decision, 'deny');
    assert.equal(e.decide(bash('cat README.md')).decision, 'allow');
  });
});

describe('network, WebFetch and MCP actions', () => {
  const policy = {
    permissions: {
      deny: ['Network(10.0.0.0/8)', 'WebFetch(domain:evil.example.com)', 'Mcp(github/delete_repo)'],
      ask: ['Mcp(github/create_*)'],
      allow: ['WebFetch(domain:docs.example.com)', 'Network(db.internal:5432)', 'Mcp(github)'],
    },
    network: { allow: ['*.npmjs.org', '192.168.1.10:8080'], deny: ['bad.npmjs.org'] },
  };

  test('Network rules and network sections', async () => {
    const e = await engine([['operator', policy]]);
    const net = (host: string, port: number) => e.decide({ tool: 'Network', host, port });
    assert.equal(net('registry.npmjs.org', 443).decision, 'allow');
    assert.equal(net('REGISTRY.NPMJS.ORG.', 443).decision, 'allow');
    assert.equal(net('npmjs.org', 443).decision, 'deny', 'wildcard covers subdomains only');
    assert.equal(
      net('registry.npmjs.org', 22).decision,
      'deny',
      'allow rules without ports mean 80/443',
    );
    assert.equal(net('bad.npmjs.org', 443).decision, 'deny');
    assert.equal(net('db.internal', 5432).decision, 'allow');
    assert.equal(net('db.internal', 5433).decision, 'deny');
    assert.equal(
      net('10.1.2.3', 22).decision,
      'deny',
      'a deny rule without ports covers every port',
    );
    assert.equal(net('192.168.1.10', 8080).decision, 'allow');
    assert.equal(net('127.0.0.1', 443).decision, 'deny');
    assert.equal(net('169.254.169.254', 80).decision, 'deny');
    const r = net('bad.npmjs.org', 443);
    assert.equal(r.rules[0]?.layer, 'operator');
  });

  test('WebFetch: domain rules, network sections, bad URLs', async () => {
    const e = await engine([['operator', policy]]);
    const fetch = (url: string) => e.decide({ tool: 'WebFetch', url }).decision;
    assert.equal(fetch('https://docs.example.com/page'), 'allow');
    assert.equal(fetch('https://evil.example.com/'), 'deny');
    assert.equal(fetch('https://registry.npmjs.org/x'), 'allow');
    assert.equal(fetch('https://other.example.com/'), 'deny');
    assert.equal(fetch('http://10.0.0.1/'), 'deny');
    assert.equal(fetch('file:///etc/passwd'), 'deny');
    assert.equal(fetch('https://user:pw@docs.example.com/'), 'deny');
    assert.equal(fetch('not a url'), 'deny');
  });

  test('MCP rules', async () => {
    const e = await engine([['operator', policy]]);
    const mcp = (server: string, name: string) => e.decide({ tool: 'Mcp', server, name }).decision;
    assert.equal(mcp('github', 'list_issues'), 'allow');
    assert.equal(mcp('github', 'create_issue'), 'ask');
    assert.equal(mcp('github', 'delete_repo'), 'deny');
    assert.equal(mcp('slack', 'post'), 'deny');
  });
});
