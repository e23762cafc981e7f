import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  cidrContains,
  parseCidr,
  parseIp,
  type IpAddress,
} from '../../../src/policy/network/index.js';

function ip(text: string): IpAddress {
  const parsed = parseIp(text);
  assert.ok(parsed, text);
  return parsed;
}

describe('parseCidr', () => {
  it('parses networks and bare addresses', () => {
    const cases: Array<[string, string, number]> = [
      ['10.0.0.0/8', '10.0.0.0/8', 8],
      ['0.0.0.0/0', '0.0.0.0/0', 0],
      ['1.2.3.4', '1.2.3.4/32', 32],
      ['1.2.3.4/32', '1.2.3.4/32', 32],
      ['fc00::/7', 'fc00::/7', 7],
      ['FC00::/7', 'fc00::/7', 7],
      ['[fc00::]/7', 'fc00::/7', 7],
      ['::/0', '::/0', 0],
      ['::1', '::1/128', 128],
      ['2001:db8::/32', '2001:db8::/32', 32],
      ['::ffff:0:0/96', '::ffff:0.0.0.0/96', 96],
    ];
    for (const [input, text, prefix] of cases) {
      const cidr = parseCidr(input);
      assert.ok(cidr, input);
      assert.equal(cidr.text, text);
      assert.equal(cidr.prefix, prefix);
    }
  });

  it('returns null for malformed CIDRs, including host bits set', () => {
    for (const bad of [
      '',
      '/8',
      '10.0.0.0/',
      '10.0.0.0/33',
      '10.0.0.0/08',
      '10.0.0.0/-1',
      '10.0.0.0/8/8',
      '10.0.0.1/8',
      'fc00::/129',
      'fc01::/7',
      '10.0.0.0/ 8',
      'example.com/8',
      '1.2.3/24',
      '::1%lo/128',
    ]) {
      assert.equal(parseCidr(bad), null, bad);
    }
  });

  it('property: random strings never throw', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.stringMatching(/^[0-9a-f.:/[\]x]{0,45}$/)), (s) => {
        const c = parseCidr(s);
        assert.ok(c === null || (c.prefix >= 0 && c.prefix <= (c.address.family === 4 ? 32 : 128)));
      }),
      { numRuns: 5000 },
    );
  });
});

describe('cidrContains', () => {
  const cases: Array<[string, string, boolean]> = [
    ['10.0.0.0/8', '10.0.0.0', true],
    ['10.0.0.0/8', '10.255.255.255', true],
    ['10.0.0.0/8', '9.255.255.255', false],
    ['10.0.0.0/8', '11.0.0.0', false],
    ['172.16.0.0/12', '172.31.255.255', true],
    ['172.16.0.0/12', '172.32.0.0', false],
    ['0.0.0.0/0', '255.255.255.255', true],
    ['1.2.3.4', '1.2.3.4', true],
    ['1.2.3.4', '1.2.3.5', false],
    ['fc00::/7', 'fc00::', true],
    ['fc00::/7', 'fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', true],
    ['fc00::/7', 'fe00::', false],
    ['fc00::/7', 'fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', false],
    ['::/0', '::1', true],
    ['2001:db8::/32', '2001:db8:ffff::1', true],
    ['2001:db8::/32', '2001:db9::', false],
    // IPv4-mapped IPv6 addresses match IPv4 CIDRs, and IPv4 addresses match mapped IPv6 CIDRs
    ['10.0.0.0/8', '::ffff:10.1.2.3', true],
    ['10.0.0.0/8', '::ffff:11.1.2.3', false],
    ['127.0.0.1', '::ffff:127.0.0.1', true],
    ['::ffff:0:0/96', '10.0.0.1', true],
    ['::ffff:10.0.0.0/104', '10.9.9.9', true],
    ['::ffff:10.0.0.0/104', '11.9.9.9', false],
    // families do not otherwise mix
    ['10.0.0.0/8', '::a00:1', false],
    ['10.0.0.0/8', '64:ff9b::a00:1', false],
    ['::/0', '1.2.3.4', true],
    ['fc00::/7', '1.2.3.4', false],
  ];
  it('matches v4, v6 and mapped addresses at range boundaries', () => {
    for (const [cidrText, addressText, expected] of cases) {
      const cidr = parseCidr(cidrText);
      assert.ok(cidr, cidrText);
      assert.equal(cidrContains(cidr, ip(addressText)), expected, `${cidrText} ∋ ${addressText}`);
    }
  });

  it('property: an IPv4 /p contains exactly the addresses whose top p bits match', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 0, max: 32 }),
        (net, addr, prefix) => {
          const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
          const network = (net & mask) >>> 0;
          const toText = (n: number): string =>
            [24, 16, 8, 0].map((s) => (n >>> s) & 0xff).join('.');
          const cidr = parseCidr(`${toText(network)}/${prefix}`);
          assert.ok(cidr);
          const expected = (addr & mask) >>> 0 === network;
          assert.equal(cidrContains(cidr, ip(toText(addr))), expected);
          assert.equal(cidrContains(cidr, ip(`::ffff:${toText(addr)}`)), expected);
        },
      ),
      { numRuns: 5000 },
    );
  });
});
