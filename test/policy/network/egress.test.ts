import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PalisadeError } from '../../../src/errors/index.js';
import {
  classifyIp,
  decideEgress,
  decideResolvedAddress,
  ipFromBytes,
  parseEgressPolicy,
  parseEgressRule,
  parseIp,
  type EgressPolicy,
  type IpAddress,
} from '../../../src/policy/network/index.js';

function ip(text: string): IpAddress {
  const parsed = parseIp(text);
  assert.ok(parsed, text);
  return parsed;
}

function isPolicyError(pattern: RegExp) {
  return (e: unknown): boolean =>
    e instanceof PalisadeError && e.code === 'INVALID_POLICY' && pattern.test(e.message);
}

describe('parseEgressRule', () => {
  it('parses every form of the grammar', () => {
    const cases: Array<[string, string, string | undefined, number[] | null]> = [
      ['example.com', 'domain', 'example.com', null],
      ['Example.COM.', 'domain', 'example.com', null],
      ['bücher.example', 'domain', 'xn--bcher-kva.example', null],
      ['*.example.com', 'wildcard', 'example.com', null],
      ['*.Example.com.:443', 'wildcard', 'example.com', [443]],
      ['*.com', 'wildcard', 'com', null],
      ['example.com:8443', 'domain', 'example.com', [8443]],
      ['example.com:80,443', 'domain', 'example.com', [80, 443]],
      ['example.com:443,80,443', 'domain', 'example.com', [80, 443]],
      ['example.com:8000-8003', 'domain', 'example.com', [8000, 8001, 8002, 8003]],
      ['example.com:22,8000-8001', 'domain', 'example.com', [22, 8000, 8001]],
      ['example.com:1,65535', 'domain', 'example.com', [1, 65535]],
      ['1.2.3.4', 'ip', '1.2.3.4/32', null],
      ['1.2.3.4:22', 'ip', '1.2.3.4/32', [22]],
      ['0x7f.1:8080', 'ip', '127.0.0.1/32', [8080]],
      ['10.0.0.0/8:5432', 'cidr', '10.0.0.0/8', [5432]],
      ['10.0.0.0/8', 'cidr', '10.0.0.0/8', null],
      ['[::1]:8080', 'ip', '::1/128', [8080]],
      ['[::1]', 'ip', '::1/128', null],
      ['::1', 'ip', '::1/128', null],
      ['fc00::/7', 'cidr', 'fc00::/7', null],
      ['[fc00::/7]:443', 'cidr', 'fc00::/7', [443]],
      ['[fc00::]/7:443', 'cidr', 'fc00::/7', [443]],
      ['*', 'any', undefined, null],
      ['*:22', 'any', undefined, [22]],
      ['*:8000-8100', 'any', undefined, Array.from({ length: 101 }, (_, i) => 8000 + i)],
    ];
    for (const [text, kind, host, ports] of cases) {
      const rule = parseEgressRule(text);
      assert.equal(rule.raw, text);
      assert.equal(rule.kind, kind, text);
      assert.equal(rule.host, host, text);
      assert.deepEqual(rule.ports, ports, text);
      if (kind === 'ip' || kind === 'cidr') assert.equal(rule.cidr?.text, host, text);
    }
  });

  it('rejects malformed rules with INVALID_POLICY naming the rule and the problem', () => {
    const cases: Array<[string, RegExp]> = [
      ['', /empty/],
      ['example.com:', /nothing after ":"/],
      ['example.com:0', /"0" is not a port/],
      ['example.com:65536', /"65536" is not a port/],
      ['example.com:http', /"http" is not a port/],
      ['example.com:080', /"080" is not a port/],
      ['example.com:80,', /"" is not a port/],
      ['example.com:90-80', /backwards/],
      ['example.com:1-2-3', /not a port/],
      ['example .com', /whitespace/],
      ['example.com\n', /whitespace/],
      ['a.*.com', /whole leading label/],
      ['*example.com', /whole leading label/],
      ['**.example.com', /whole leading label/],
      ['*.*.example.com', /whole leading label/],
      ['*.', /empty/],
      ['*.1.2.3.4', /ends in a number|not an IP/],
      ['10.0.0.1/8', /host bits set; write 10\.0\.0\.0\/8/],
      ['10.0.0.0/33', /prefix length; use 0 to 32/],
      ['fc00::/200', /prefix length; use 0 to 128/],
      ['example.com/8', /not an IP address/],
      ['[::1', /not closed/],
      ['[::1]x', /only ":ports"/],
      ['[example.com]:80', /brackets must hold an IPv6/],
      ['[::1%lo]:80', /zone ids/],
      ['[1.2.3.4]:80', /IPv6/],
      ['fc00::/7:443', /bracket it: \[fc00::\/7\]:443/],
      ['1.2.3', /ends in a number/],
      ['256.1.1.1', /ends in a number/],
      ['-bad.example', /may not start or end/],
      [`${'a'.repeat(64)}.com`, /at most 63/],
      ['x'.repeat(513), /at most 512/],
      [':443', /host is missing/],
    ];
    for (const [text, message] of cases) {
      assert.throws(
        () => parseEgressRule(text),
        (e: unknown) =>
          isPolicyError(message)(e) &&
          (e as PalisadeError).message.startsWith(
            `egress rule ${JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text)}`,
          ),
        JSON.stringify(text),
      );
    }
    assert.throws(
      () => parseEgressRule(42 as unknown as string),
      isPolicyError(/expected a string/),
    );
  });
});

describe('parseEgressPolicy', () => {
  it('parses allow and deny lists; both optional', () => {
    const policy = parseEgressPolicy({
      allow: ['example.com', '*.npmjs.org', '10.0.0.0/8:5432'],
      deny: ['evil.example.com'],
    });
    assert.deepEqual(
      policy.allow.map((r) => r.kind),
      ['domain', 'wildcard', 'cidr'],
    );
    assert.deepEqual(
      policy.deny.map((r) => r.host),
      ['evil.example.com'],
    );
    assert.deepEqual(parseEgressPolicy({}), { allow: [], deny: [] });
  });

  it('names the source and field in every error', () => {
    const cases: Array<[unknown, RegExp]> = [
      [null, /^policy\.yaml: network: expected an object/],
      [['a.test'], /^policy\.yaml: network: expected an object/],
      [{ allow: 'a.test' }, /^policy\.yaml: allow: expected a list/],
      [{ deny: { a: 1 } }, /^policy\.yaml: deny: expected a list/],
      [{ allow: ['a.test', 7] }, /^policy\.yaml: allow\[1\]: expected a string .* got number/],
      [{ allow: [null] }, /^policy\.yaml: allow\[0\]: expected a string .* got null/],
      [
        { deny: ['ok.test', 'bad..test'] },
        /^policy\.yaml: deny\[1\]: egress rule "bad\.\.test": .*empty label/,
      ],
      [{ allow: [], allwo: [] }, /^policy\.yaml: unknown key "allwo"/],
      [
        { allow: Array.from({ length: 1001 }, (_, i) => `h${i}.test`) },
        /^policy\.yaml: allow: 1001 rules; at most 1000/,
      ],
      [
        { allow: ['a.test:1-65535', 'b.test:1-65535', 'c.test:1-65535', 'd.test:1-65535'] },
        /^policy\.yaml: the rules list 262140 ports in total; at most 200000/,
      ],
    ];
    for (const [input, message] of cases) {
      assert.throws(
        () => parseEgressPolicy(input as { allow?: unknown }, 'policy.yaml'),
        isPolicyError(message),
        String(message),
      );
    }
  });

  it('accepts exactly 1000 rules per list', () => {
    const policy = parseEgressPolicy({
      allow: Array.from({ length: 1000 }, (_, i) => `h${i}.test`),
    });
    assert.equal(policy.allow.length, 1000);
  });

  it('reports the field in error details', () => {
    try {
      parseEgressPolicy({ allow: ['ok.test', 'a.*.b'] });
      assert.fail('expected an error');
    } catch (e) {
      assert.ok(e instanceof PalisadeError);
      assert.equal(e.details?.field, 'allow[1]');
      assert.match(e.message, /^allow\[1\]: egress rule "a\.\*\.b"/);
    }
  });
});

describe('decideEgress', () => {
  const policy = parseEgressPolicy({
    allow: [
      '*.a.test',
      'exact.test',
      'ports.test:8443,9000-9001',
      '203.0.113.7',
      '10.0.0.0/8:5432',
      '[2001:db8::1]:8080',
      '*:2222',
    ],
    deny: ['bad.a.test', '10.9.0.0/16', '*:25'],
  });
  const cases: Array<[string, number, 'allow' | 'deny', string | null]> = [
    // wildcard: subdomains only, not the apex
    ['b.a.test', 443, 'allow', '*.a.test'],
    ['x.y.a.test', 80, 'allow', '*.a.test'],
    ['a.test', 443, 'deny', null],
    ['xa.test', 443, 'deny', null],
    ['b.a.test.evil', 443, 'deny', null],
    // deny beats allow; a deny without ports covers every port
    ['bad.a.test', 443, 'deny', 'bad.a.test'],
    ['bad.a.test', 8080, 'deny', 'bad.a.test'],
    ['sub.bad.a.test', 443, 'allow', '*.a.test'],
    ['b.a.test', 25, 'deny', '*:25'],
    // default ports 80 and 443 only
    ['exact.test', 80, 'allow', 'exact.test'],
    ['exact.test', 443, 'allow', 'exact.test'],
    ['exact.test', 8080, 'deny', null],
    ['exact.test', 22, 'deny', null],
    // explicit ports replace the defaults
    ['ports.test', 8443, 'allow', 'ports.test:8443,9000-9001'],
    ['ports.test', 9001, 'allow', 'ports.test:8443,9000-9001'],
    ['ports.test', 9002, 'deny', null],
    ['ports.test', 443, 'deny', null],
    // case- and trailing-dot-insensitive, IDN normalised
    ['EXACT.Test.', 443, 'allow', 'exact.test'],
    ['B.A.TEST', 443, 'allow', '*.a.test'],
    // name targets never match IP rules and IP targets never match name rules
    ['203.0.113.7', 443, 'allow', '203.0.113.7'],
    ['0xcb.0x71.7', 443, 'deny', null],
    ['203.0.113.8', 443, 'deny', null],
    ['10.1.2.3', 5432, 'allow', '10.0.0.0/8:5432'],
    ['10.1.2.3', 443, 'deny', null],
    ['::ffff:10.1.2.3', 5432, 'allow', '10.0.0.0/8:5432'],
    ['10.9.1.1', 5432, 'deny', '10.9.0.0/16'],
    ['[2001:db8::1]', 8080, 'allow', '[2001:db8::1]:8080'],
    ['2001:DB8:0::1', 8080, 'allow', '[2001:db8::1]:8080'],
    // `*` with a port matches any name, but never unlocks a special IP literal
    ['anything.test', 2222, 'allow', '*:2222'],
    ['8.8.8.8', 2222, 'allow', '*:2222'],
    ['127.0.0.1', 2222, 'deny', null],
    ['0x7f.1', 2222, 'deny', null],
    ['[::1]', 2222, 'deny', null],
    ['169.254.169.254', 2222, 'deny', null],
    // invalid targets are denied, not thrown
    ['bad..name', 443, 'deny', null],
    ['1.2.3', 443, 'deny', null],
    ['::1%eth0', 2222, 'deny', null],
    ['exact.test', 0, 'deny', null],
    ['exact.test', 65536, 'deny', null],
    ['exact.test', 44.5, 'deny', null],
  ];
  it('applies deny first, then allow, then denies by default', () => {
    for (const [host, port, decision, raw] of cases) {
      const result = decideEgress(policy, { host, port });
      assert.equal(result.decision, decision, `${host}:${port} → ${result.reason}`);
      assert.equal(result.rule?.raw ?? null, raw, `${host}:${port} rule`);
      assert.ok(result.reason.length > 0);
    }
  });

  it('denies everything under an empty policy', () => {
    const empty = parseEgressPolicy({});
    for (const host of ['example.com', '8.8.8.8', '::1', 'localhost']) {
      const result = decideEgress(empty, { host, port: 443 });
      assert.equal(result.decision, 'deny', host);
      assert.match(result.reason, /no allow rule matches/);
    }
  });

  it('throws INVALID_ARGUMENT for a malformed policy or target object', () => {
    const isArg = (e: unknown): boolean =>
      e instanceof PalisadeError && e.code === 'INVALID_ARGUMENT';
    assert.throws(
      () => decideEgress({ allow: 'x' } as unknown as EgressPolicy, { host: 'a', port: 1 }),
      isArg,
    );
    assert.throws(
      () =>
        decideEgress(
          {
            allow: [{ raw: '1.2.3.4', kind: 'ip', ports: null }],
            deny: [],
          } as unknown as EgressPolicy,
          { host: 'a', port: 1 },
        ),
      isArg,
    );
    assert.throws(() => decideEgress(parseEgressPolicy({}), null as never), isArg);
  });

  it('property: random hosts and ports never throw and are never allowed by an empty allow list', () => {
    const denyOnly = parseEgressPolicy({ deny: ['evil.test'] });
    fc.assert(
      fc.property(
        fc.oneof(fc.string(), fc.domain(), fc.ipV4(), fc.ipV6()),
        fc.integer({ min: -5, max: 70000 }),
        (host, port) => {
          assert.equal(decideEgress(denyOnly, { host, port }).decision, 'deny');
          decideEgress(policy, { host, port });
        },
      ),
      { numRuns: 3000 },
    );
  });
});

describe('decideResolvedAddress', () => {
  const open = parseEgressPolicy({ allow: ['*', '*:1-65535', '0.0.0.0/0', '::/0'], deny: [] });

  it('refuses special addresses that only a broad rule covers, whatever their spelling', () => {
    for (const text of [
      '169.254.169.254',
      '::ffff:127.0.0.1',
      '0x7f.1',
      '2130706433',
      '[::1]',
      '[::]',
      '0.0.0.0',
      '10.0.0.1',
      '192.168.1.1',
      '100.64.0.1',
      'fe80::1',
      'fd00::1',
      'fd00:ec2::254',
      '64:ff9b::7f00:1',
      '2002:a9fe:a9fe::',
      '::ffff:169.254.169.254',
      '224.0.0.1',
    ]) {
      const address = ip(text);
      const result = decideResolvedAddress(open, address, 443);
      assert.equal(result.decision, 'deny', `${text}: ${result.reason}`);
      assert.equal(result.rule, null);
      assert.match(
        result.reason,
        new RegExp(classifyIp(address).address.text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')),
      );
    }
  });

  it('allows public addresses that no deny rule covers', () => {
    for (const text of ['8.8.8.8', '::ffff:8.8.8.8', '2606:4700:4700::1111', '2002:808:808::']) {
      assert.equal(decideResolvedAddress(open, ip(text), 443).decision, 'allow', text);
      assert.equal(
        decideResolvedAddress(parseEgressPolicy({}), ip(text), 443).decision,
        'allow',
        text,
      );
    }
  });

  it('allows a private address only when an allow ip/cidr rule with a matching port contains it', () => {
    const policy = parseEgressPolicy({
      allow: ['10.0.0.0/8:5432', '[::1]:8080', '127.0.0.1', '[fc00::/7]:443'],
    });
    const cases: Array<[string, number, 'allow' | 'deny']> = [
      ['10.1.2.3', 5432, 'allow'],
      ['10.1.2.3', 443, 'deny'],
      ['11.1.2.3', 5432, 'allow'],
      ['::ffff:10.1.2.3', 5432, 'allow'],
      ['192.168.0.1', 5432, 'deny'],
      ['::1', 8080, 'allow'],
      ['::1', 80, 'deny'],
      ['127.0.0.1', 80, 'allow'],
      ['0x7f.1', 443, 'allow'],
      ['127.0.0.2', 80, 'deny'],
      ['::ffff:127.0.0.1', 80, 'allow'],
      ['64:ff9b::7f00:1', 80, 'deny'],
      ['fd12::1', 443, 'allow'],
      ['fd12::1', 80, 'deny'],
      ['169.254.169.254', 80, 'deny'],
    ];
    for (const [text, port, decision] of cases) {
      const result = decideResolvedAddress(policy, ip(text), port);
      assert.equal(result.decision, decision, `${text}:${port} → ${result.reason}`);
    }
  });

  it('unlocks cloud metadata only by its exact address, and the unspecified address never', () => {
    const broad = parseEgressPolicy({
      allow: ['169.254.0.0/16', 'fd00::/8', '0.0.0.0/8', '::/128', '0.0.0.0'],
    });
    assert.equal(decideResolvedAddress(broad, ip('169.254.169.254'), 80).decision, 'deny');
    assert.equal(decideResolvedAddress(broad, ip('169.254.1.1'), 80).decision, 'allow');
    assert.equal(decideResolvedAddress(broad, ip('fd00:ec2::254'), 80).decision, 'deny');
    assert.equal(decideResolvedAddress(broad, ip('0.0.0.0'), 80).decision, 'deny');
    assert.equal(decideResolvedAddress(broad, ip('::'), 80).decision, 'deny');
    assert.equal(decideResolvedAddress(broad, ip('0.0.0.1'), 80).decision, 'allow');
    const exact = parseEgressPolicy({ allow: ['169.254.169.254', '[fd00:ec2::254]:80'] });
    assert.equal(decideResolvedAddress(exact, ip('169.254.169.254'), 80).decision, 'allow');
    assert.equal(decideResolvedAddress(exact, ip('::ffff:169.254.169.254'), 80).decision, 'allow');
    assert.equal(decideResolvedAddress(exact, ip('fd00:ec2::254'), 80).decision, 'allow');
    assert.equal(decideResolvedAddress(exact, ip('fd00:ec2::254'), 443).decision, 'deny');
  });

  it('refuses an address a deny rule covers, even public, even via an embedding IPv6 form', () => {
    const policy = parseEgressPolicy({
      allow: ['*:1-65535', '10.0.0.0/8'],
      deny: ['8.8.8.0/24', '10.9.0.0/16', '[2606:4700::/32]:443'],
    });
    const cases: Array<[string, number, 'allow' | 'deny']> = [
      ['8.8.8.8', 443, 'deny'],
      ['::ffff:8.8.8.8', 443, 'deny'],
      ['64:ff9b::808:808', 443, 'deny'],
      ['2002:808:808::1', 443, 'deny'],
      ['8.8.4.4', 443, 'allow'],
      ['10.9.1.1', 443, 'deny'],
      ['10.8.1.1', 443, 'allow'],
      ['2606:4700::1', 443, 'deny'],
      ['2606:4700::1', 80, 'allow'],
    ];
    for (const [text, port, decision] of cases) {
      const result = decideResolvedAddress(policy, ip(text), port);
      assert.equal(result.decision, decision, `${text}:${port} → ${result.reason}`);
      if (decision === 'deny') assert.ok(result.rule, text);
    }
  });

  it('rejects malformed input: bad addresses throw, bad ports are denied', () => {
    const policy = parseEgressPolicy({});
    assert.throws(
      () => decideResolvedAddress(policy, { family: 4, bytes: new Uint8Array(3), text: '' }, 80),
      (e: unknown) => e instanceof PalisadeError && e.code === 'INVALID_ARGUMENT',
    );
    assert.equal(decideResolvedAddress(policy, ip('8.8.8.8'), 0).decision, 'deny');
    assert.equal(decideResolvedAddress(policy, ip('8.8.8.8'), Number.NaN).decision, 'deny');
  });

  it('property: no special address is ever allowed by `*`, `/0` or port-range-only rules', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ minLength: 4, maxLength: 4 }),
          fc.uint8Array({ minLength: 16, maxLength: 16 }),
        ),
        fc.integer({ min: 1, max: 65535 }),
        (bytes, port) => {
          const address = ipFromBytes(bytes);
          assert.ok(address);
          const result = decideResolvedAddress(open, address, port);
          assert.equal(result.decision === 'deny', classifyIp(address).special, address.text);
        },
      ),
      { numRuns: 10000 },
    );
  });
});
