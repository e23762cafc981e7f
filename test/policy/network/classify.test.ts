import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PalisadeError } from '../../../src/errors/index.js';
import { classifyIp, ipFromBytes, type AddressClass } from '../../../src/policy/network/index.js';

// Each range: its first and last address, and the neighbours just outside.
const ipv4: Array<[string, AddressClass]> = [
  ['0.0.0.0', 'unspecified'],
  ['0.0.0.1', 'this-network'],
  ['0.255.255.255', 'this-network'],
  ['1.0.0.0', 'public'],
  ['9.255.255.255', 'public'],
  ['10.0.0.0', 'private'],
  ['10.255.255.255', 'private'],
  ['11.0.0.0', 'public'],
  ['100.63.255.255', 'public'],
  ['100.64.0.0', 'cgnat'],
  ['100.127.255.255', 'cgnat'],
  ['100.128.0.0', 'public'],
  ['100.100.100.200', 'metadata'],
  ['126.255.255.255', 'public'],
  ['127.0.0.0', 'loopback'],
  ['127.0.0.1', 'loopback'],
  ['127.255.255.255', 'loopback'],
  ['128.0.0.0', 'public'],
  ['168.63.129.15', 'public'],
  ['168.63.129.16', 'metadata'],
  ['168.63.129.17', 'public'],
  ['169.253.255.255', 'public'],
  ['169.254.0.0', 'link-local'],
  ['169.254.169.253', 'link-local'],
  ['169.254.169.254', 'metadata'],
  ['169.254.169.255', 'link-local'],
  ['169.254.170.2', 'metadata'],
  ['169.254.255.255', 'link-local'],
  ['169.255.0.0', 'public'],
  ['172.15.255.255', 'public'],
  ['172.16.0.0', 'private'],
  ['172.31.255.255', 'private'],
  ['172.32.0.0', 'public'],
  ['191.255.255.255', 'public'],
  ['192.0.0.0', 'ietf-protocol'],
  ['192.0.0.192', 'metadata'],
  ['192.0.0.255', 'ietf-protocol'],
  ['192.0.1.0', 'public'],
  ['192.0.1.255', 'public'],
  ['192.0.2.0', 'documentation'],
  ['192.0.2.255', 'documentation'],
  ['192.0.3.0', 'public'],
  ['192.88.98.255', 'public'],
  ['192.88.99.0', 'reserved'],
  ['192.88.99.255', 'reserved'],
  ['192.88.100.0', 'public'],
  ['192.167.255.255', 'public'],
  ['192.168.0.0', 'private'],
  ['192.168.255.255', 'private'],
  ['192.169.0.0', 'public'],
  ['198.17.255.255', 'public'],
  ['198.18.0.0', 'benchmark'],
  ['198.19.255.255', 'benchmark'],
  ['198.20.0.0', 'public'],
  ['198.51.99.255', 'public'],
  ['198.51.100.0', 'documentation'],
  ['198.51.100.255', 'documentation'],
  ['198.51.101.0', 'public'],
  ['203.0.112.255', 'public'],
  ['203.0.113.0', 'documentation'],
  ['203.0.113.255', 'documentation'],
  ['203.0.114.0', 'public'],
  ['223.255.255.255', 'public'],
  ['224.0.0.0', 'multicast'],
  ['239.255.255.255', 'multicast'],
  ['240.0.0.0', 'reserved'],
  ['255.255.255.254', 'reserved'],
  ['255.255.255.255', 'broadcast'],
  ['8.8.8.8', 'public'],
  // non-canonical spellings classify like the address they name
  ['0x7f.1', 'loopback'],
  ['2130706433', 'loopback'],
  ['017700000001', 'loopback'],
  ['0xa9fea9fe', 'metadata'],
  ['10.1', 'private'],
];

const ipv6: Array<[string, AddressClass, string?]> = [
  ['::', 'unspecified'],
  ['::1', 'loopback'],
  ['::2', 'this-network', '0.0.0.2'],
  ['::127.0.0.1', 'loopback', '127.0.0.1'],
  ['::8.8.8.8', 'reserved', '8.8.8.8'],
  ['::ffff:ffff', 'broadcast', '255.255.255.255'],
  ['::1:0:0', 'reserved'],
  ['::fffe:ffff:ffff', 'reserved'],
  // IPv4-mapped ::ffff:0:0/96
  ['::ffff:0.0.0.0', 'unspecified', '0.0.0.0'],
  ['::ffff:127.0.0.1', 'loopback', '127.0.0.1'],
  ['::ffff:10.0.0.1', 'private', '10.0.0.1'],
  ['::ffff:169.254.169.254', 'metadata', '169.254.169.254'],
  ['::ffff:8.8.8.8', 'public', '8.8.8.8'],
  ['::ffff:255.255.255.255', 'broadcast', '255.255.255.255'],
  ['::1:ffff:0:0', 'reserved'],
  // IPv4-translated ::ffff:0:0:0/96
  ['::ffff:0:7f00:1', 'loopback', '127.0.0.1'],
  ['::ffff:0:808:808', 'reserved', '8.8.8.8'],
  // NAT64
  ['64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff', 'reserved'],
  ['64:ff9b::', 'unspecified', '0.0.0.0'],
  ['64:ff9b::7f00:1', 'loopback', '127.0.0.1'],
  ['64:ff9b::169.254.169.254', 'metadata', '169.254.169.254'],
  ['64:ff9b::808:808', 'nat64', '8.8.8.8'],
  ['64:ff9b::ffff:ffff', 'broadcast', '255.255.255.255'],
  ['64:ff9b::1:0:0', 'reserved'],
  ['64:ff9b:1::', 'nat64'],
  ['64:ff9b:1:ffff:ffff:ffff:ffff:ffff', 'nat64'],
  ['64:ff9b:2::', 'reserved'],
  // discard
  ['ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'reserved'],
  ['100::', 'discard'],
  ['100::ffff:ffff:ffff:ffff', 'discard'],
  ['100:0:0:1::', 'reserved'],
  // 2001::/23 with Teredo, benchmarking and documentation
  ['1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'reserved'],
  ['2000::', 'public'],
  ['2001::', 'broadcast', '255.255.255.255'],
  ['2001:0:4136:e378:8000:63bf:f7f7:f7f7', 'public', '8.8.8.8'],
  ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'documentation', '192.0.2.45'],
  ['2001:0:4136:e378:8000:63bf:80ff:fffe', 'loopback', '127.0.0.1'],
  ['2001:0:ffff:ffff:ffff:ffff:ffff:ffff', 'unspecified', '0.0.0.0'],
  ['2001:1::', 'ietf-protocol'],
  ['2001:1::1', 'ietf-protocol'],
  ['2001:1:ffff:ffff:ffff:ffff:ffff:ffff', 'ietf-protocol'],
  ['2001:2::', 'benchmark'],
  ['2001:2:0:ffff:ffff:ffff:ffff:ffff', 'benchmark'],
  ['2001:2:1::', 'ietf-protocol'],
  ['2001:3::', 'ietf-protocol'],
  ['2001:20::1', 'ietf-protocol'],
  ['2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff', 'ietf-protocol'],
  ['2001:200::', 'public'],
  ['2001:db7:ffff:ffff:ffff:ffff:ffff:ffff', 'public'],
  ['2001:db8::', 'documentation'],
  ['2001:db8:ffff:ffff:ffff:ffff:ffff:ffff', 'documentation'],
  ['2001:db9::', 'public'],
  // 6to4
  ['2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'public'],
  ['2002::', 'unspecified', '0.0.0.0'],
  ['2002:808:808::', 'public', '8.8.8.8'],
  ['2002:7f00:1::', 'loopback', '127.0.0.1'],
  ['2002:a00:1::1', 'private', '10.0.0.1'],
  ['2002:a9fe:a9fe::', 'metadata', '169.254.169.254'],
  ['2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'broadcast', '255.255.255.255'],
  ['2003::', 'public'],
  ['2606:4700:4700::1111', 'public'],
  // documentation 3fff::/20, SRv6 5f00::/16
  ['3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'public'],
  ['3fff::', 'documentation'],
  ['3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff', 'documentation'],
  ['3fff:1000::', 'public'],
  ['3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'public'],
  ['4000::', 'reserved'],
  ['5f00::', 'reserved'],
  // unique-local, metadata, link-local, site-local, multicast
  ['fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'reserved'],
  ['fc00::', 'unique-local'],
  ['fd00:ec2::253', 'unique-local'],
  ['fd00:ec2::254', 'metadata'],
  ['fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'unique-local'],
  ['fe00::', 'reserved'],
  ['fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'reserved'],
  ['fe80::', 'link-local'],
  ['fe80::1', 'link-local'],
  ['febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'link-local'],
  ['fec0::', 'reserved'],
  ['feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'reserved'],
  ['ff00::', 'multicast'],
  ['ff02::1', 'multicast'],
  ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'multicast'],
];

describe('classifyIp', () => {
  it('classifies every IPv4 range at its boundaries', () => {
    for (const [input, expected] of ipv4) {
      const c = classifyIp(input);
      assert.equal(c.class, expected, `${input}: ${c.reason}`);
      assert.equal(c.special, expected !== 'public', input);
      assert.ok(c.reason.includes(c.address.text), c.reason);
    }
  });

  it('classifies every IPv6 range at its boundaries, judging embedded IPv4 addresses', () => {
    for (const [input, expected, embedded] of ipv6) {
      const c = classifyIp(input);
      assert.equal(c.class, expected, `${input}: ${c.reason}`);
      assert.equal(c.special, expected !== 'public', input);
      assert.equal(c.embeddedIPv4?.text, embedded, `${input} embedded`);
    }
  });

  it('accepts IpAddress objects and ignores a lying text field', () => {
    const c = classifyIp({ family: 4, bytes: Uint8Array.of(127, 0, 0, 1), text: '8.8.8.8' });
    assert.equal(c.class, 'loopback');
    assert.equal(c.address.text, '127.0.0.1');
  });

  it('throws INVALID_ARGUMENT for text that is not an IP and for malformed objects', () => {
    for (const bad of ['localhost', '1.2.3', '', '::1%lo']) {
      assert.throws(
        () => classifyIp(bad),
        (e: unknown) => e instanceof PalisadeError && e.code === 'INVALID_ARGUMENT',
      );
    }
    const malformed = [
      { family: 4, bytes: new Uint8Array(16), text: '' },
      { family: 6, bytes: new Uint8Array(4), text: '' },
      { family: 5, bytes: new Uint8Array(4), text: '' },
      { family: 4, bytes: [1, 2, 3, 4], text: '' },
      null,
    ];
    for (const bad of malformed) {
      assert.throws(
        () => classifyIp(bad as never),
        (e: unknown) => e instanceof PalisadeError && e.code === 'INVALID_ARGUMENT',
      );
    }
  });

  it('property: an IPv4 address and its IPv4-mapped IPv6 form classify the same', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 4, maxLength: 4 }), (v4) => {
        const mapped = new Uint8Array(16);
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped.set(v4, 12);
        const a = classifyIp({ family: 4, bytes: v4, text: '' });
        const b = classifyIp({ family: 6, bytes: mapped, text: '' });
        assert.equal(b.class, a.class);
        assert.equal(b.special, a.special);
        assert.equal(b.embeddedIPv4?.text, a.address.text);
      }),
      { numRuns: 10000 },
    );
  });

  it('property: embedded special IPv4 makes NAT64, 6to4, Teredo and compatible forms special', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 4, maxLength: 4 }),
        fc.constantFrom('nat64', '6to4', 'teredo', 'compat'),
        (v4, form) => {
          const inner = classifyIp({ family: 4, bytes: v4, text: '' });
          const b = new Uint8Array(16);
          if (form === 'nat64') {
            b.set([0x00, 0x64, 0xff, 0x9b]);
            b.set(v4, 12);
          } else if (form === '6to4') {
            b.set([0x20, 0x02]);
            b.set(v4, 2);
          } else if (form === 'teredo') {
            b.set([0x20, 0x01, 0, 0]);
            b.set(
              v4.map((x) => ~x & 0xff),
              12,
            );
          } else {
            b.set(v4, 12);
            if (b.every((x) => x === 0) || (b.subarray(0, 15).every((x) => x === 0) && b[15] === 1))
              return;
          }
          const outer = classifyIp({ family: 6, bytes: b, text: '' });
          assert.equal(outer.embeddedIPv4?.text, inner.address.text);
          if (inner.special) assert.equal(outer.class, inner.class, outer.reason);
          else assert.equal(outer.special, form === 'nat64' || form === 'compat', outer.reason);
        },
      ),
      { numRuns: 10000 },
    );
  });

  it('property: random bytes never make classifyIp throw', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ minLength: 4, maxLength: 4 }),
          fc.uint8Array({ minLength: 16, maxLength: 16 }),
        ),
        (bytes) => {
          const address = ipFromBytes(bytes);
          assert.ok(address);
          const c = classifyIp(address);
          assert.equal(c.special, c.class !== 'public');
          assert.ok(c.reason.length > 0);
        },
      ),
      { numRuns: 20000 },
    );
  });
});
