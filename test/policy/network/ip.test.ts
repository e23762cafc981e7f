import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ipFromBytes, parseIp } from '../../../src/policy/network/index.js';

const parses: Array<[string, 4 | 6, string]> = [
  // canonical
  ['127.0.0.1', 4, '127.0.0.1'],
  ['0.0.0.0', 4, '0.0.0.0'],
  ['255.255.255.255', 4, '255.255.255.255'],
  // non-canonical IPv4 that inet_aton (and so getaddrinfo) accepts
  ['0x7f.1', 4, '127.0.0.1'],
  ['0X7F.1', 4, '127.0.0.1'],
  ['2130706433', 4, '127.0.0.1'],
  ['017700000001', 4, '127.0.0.1'],
  ['127.1', 4, '127.0.0.1'],
  ['0x7f000001', 4, '127.0.0.1'],
  ['0x7f.0.0.1', 4, '127.0.0.1'],
  ['0177.0.0.1', 4, '127.0.0.1'],
  ['0177.0.0.01', 4, '127.0.0.1'],
  ['00000177.0.0.1', 4, '127.0.0.1'],
  ['0x00000000007f.1', 4, '127.0.0.1'],
  ['0', 4, '0.0.0.0'],
  ['4294967295', 4, '255.255.255.255'],
  ['0xffffffff', 4, '255.255.255.255'],
  ['037777777777', 4, '255.255.255.255'],
  ['169.16689662', 4, '169.254.169.254'],
  ['0xa9.0xfe.0xa9.0xfe', 4, '169.254.169.254'],
  ['10.0xffffff', 4, '10.255.255.255'],
  // IPv6, RFC 5952 canonical text
  ['::', 6, '::'],
  ['::1', 6, '::1'],
  ['[::1]', 6, '::1'],
  ['[::]', 6, '::'],
  ['0:0:0:0:0:0:0:1', 6, '::1'],
  ['FE80::1', 6, 'fe80::1'],
  ['2001:0db8:0000:0000:0000:0000:0000:0001', 6, '2001:db8::1'],
  ['2001:db8:0:0:1:0:0:1', 6, '2001:db8::1:0:0:1'],
  ['2001:db8:0:1:1:1:1:1', 6, '2001:db8:0:1:1:1:1:1'],
  ['1:2:3:4:5:6:7::', 6, '1:2:3:4:5:6:7:0'],
  ['::2:3:4:5:6:7:8', 6, '0:2:3:4:5:6:7:8'],
  ['1:0:0:2:0:0:0:3', 6, '1:0:0:2::3'],
  ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 6, 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  // IPv4-mapped and embedded dotted quads
  ['::ffff:127.0.0.1', 6, '::ffff:127.0.0.1'],
  ['::FFFF:7f00:1', 6, '::ffff:127.0.0.1'],
  ['[::ffff:169.254.169.254]', 6, '::ffff:169.254.169.254'],
  ['0:0:0:0:0:ffff:10.0.0.1', 6, '::ffff:10.0.0.1'],
  ['::127.0.0.1', 6, '::7f00:1'],
  ['64:ff9b::192.0.2.33', 6, '64:ff9b::c000:221'],
];

const rejects: string[] = [
  '',
  '1.2.3.4.5',
  '256.1.1.1',
  '1.256.1.1',
  '1.2.3.256',
  '0x',
  '0x.1',
  '1.2.3',
  '1.2.3.',
  '.1.2.3',
  '1..2.3',
  '127.16777216',
  '4294967296',
  '0x100000000',
  '040000000000',
  '08.0.0.1',
  '09',
  '1.2.3.4 ',
  ' 1.2.3.4',
  '1.2.3.4\n',
  '+1.2.3.4',
  '-1',
  '1e3',
  '１２７.０.０.１',
  'localhost',
  'example.com',
  'a.b.c.d',
  '127.0.0.1.',
  '::1%eth0',
  'fe80::1%25eth0',
  '[fe80::1%eth0]',
  '[::1',
  '::1]',
  '[1.2.3.4]',
  ':',
  ':::',
  '1::2::3',
  ':1:2:3:4:5:6:7',
  '1:2:3:4:5:6:7:8:9',
  '1:2:3:4:5:6:7',
  '1:2:3:4:5:6:7:8::',
  '12345::',
  'g::1',
  '::ffff:1.2.3',
  '::ffff:01.2.3.4',
  '::ffff:0x7f.0.0.1',
  '::ffff:256.0.0.1',
  '1.2.3.4::',
  '::1.2.3.4:5',
  `${'1'.repeat(100)}`,
  `${'0'.repeat(70)}1`,
];

describe('parseIp', () => {
  it('parses every canonical and non-canonical spelling to the right address', () => {
    for (const [input, family, text] of parses) {
      const parsed = parseIp(input);
      assert.ok(parsed, `${JSON.stringify(input)} should parse`);
      assert.equal(parsed.family, family, input);
      assert.equal(parsed.text, text, input);
      assert.equal(parsed.bytes.length, family === 4 ? 4 : 16, input);
    }
  });

  it('returns null for strings that are not IP literals', () => {
    for (const input of rejects) {
      assert.equal(parseIp(input), null, `${JSON.stringify(input)} must not parse`);
    }
  });

  it('returns null for non-strings instead of throwing', () => {
    for (const value of [undefined, null, 42, {}, ['1.2.3.4']]) {
      assert.equal(parseIp(value as unknown as string), null);
    }
  });

  it('property: random strings never throw, they parse or return null', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.string({ unit: 'binary' }),
          fc.stringMatching(/^[0-9a-fx.:[\]%]{0,50}$/),
        ),
        (s) => {
          const result = parseIp(s);
          assert.ok(result === null || result.bytes.length === (result.family === 4 ? 4 : 16));
        },
      ),
      { numRuns: 5000 },
    );
  });

  it('property: canonical text parses back to the same bytes', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ minLength: 4, maxLength: 4 }),
          fc.uint8Array({ minLength: 16, maxLength: 16 }),
        ),
        (bytes) => {
          const address = ipFromBytes(bytes);
          assert.ok(address);
          const again = parseIp(address.text);
          assert.ok(again, address.text);
          assert.deepEqual([...again.bytes], [...bytes]);
          assert.equal(again.text, address.text);
        },
      ),
      { numRuns: 3000 },
    );
  });

  it('property: IPv6 canonical text matches the WHATWG URL serialiser (non-mapped addresses)', () => {
    // Sparse groups so that runs of zeros, the interesting case for "::", are common.
    const group = fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff }));
    fc.assert(
      fc.property(fc.array(group, { minLength: 8, maxLength: 8 }), (groups) => {
        const text = groups.map((g) => g.toString(16)).join(':');
        const parsed = parseIp(text);
        assert.ok(parsed, text);
        const isMapped = groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff;
        if (!isMapped) assert.equal(`[${parsed.text}]`, new URL(`http://[${text}]/`).hostname);
      }),
      { numRuns: 3000 },
    );
  });

  it('property: numeric IPv4 spellings agree with the WHATWG URL parser (which follows inet_aton)', () => {
    const part = fc
      .tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.constantFrom(8, 10, 16))
      .map(([n, radix]) =>
        radix === 16 ? `0x${n.toString(16)}` : radix === 8 ? `0${n.toString(8)}` : String(n),
      );
    const spelling = fc.oneof(
      part,
      fc.tuple(part, part).map((p) => p.join('.')),
      fc.tuple(part, part, part, part).map((p) => p.join('.')),
      fc
        .tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 0xffffff }))
        .map(([a, b]) => `${a}.${b}`),
      fc
        .array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 })
        .map((p) => p.join('.')),
    );
    fc.assert(
      fc.property(spelling, (text) => {
        let expected: string | null;
        try {
          expected = new URL(`http://${text}/`).hostname;
        } catch {
          expected = null;
        }
        assert.equal(parseIp(text)?.text ?? null, expected, text);
      }),
      { numRuns: 3000 },
    );
  });
});
