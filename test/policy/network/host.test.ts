import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PalisadeError } from '../../../src/errors/index.js';
import { normaliseHost } from '../../../src/policy/network/index.js';

describe('normaliseHost', () => {
  it('lowercases, strips one trailing dot and converts IDN to punycode', () => {
    const cases: Array<[string, string]> = [
      ['example.com', 'example.com'],
      ['EXAMPLE.Com', 'example.com'],
      ['example.com.', 'example.com'],
      ['Example.COM.', 'example.com'],
      ['localhost', 'localhost'],
      ['a-b.c_d.example', 'a-b.c_d.example'],
      ['bücher.example', 'xn--bcher-kva.example'],
      ['BÜCHER.example', 'xn--bcher-kva.example'],
      ['xn--bcher-kva.example', 'xn--bcher-kva.example'],
      ['bücher.example.', 'xn--bcher-kva.example'],
      ['例え.テスト', 'xn--r8jz45g.xn--zckzah'],
      ['a.b。example', 'a.b.example'],
      [`${'a'.repeat(63)}.com`, `${'a'.repeat(63)}.com`],
      [`${'a.'.repeat(126)}b`, `${'a.'.repeat(126)}b`],
      ['123.example', '123.example'],
      // UTS 46 mapping, as browsers apply it: zero-width space is ignored
      ['a\u200b.example', 'a.example'],
    ];
    for (const [input, expected] of cases) assert.equal(normaliseHost(input), expected, input);
  });

  it('canonicalises IP literals, including non-canonical and full-width spellings', () => {
    const cases: Array<[string, string]> = [
      ['127.0.0.1', '127.0.0.1'],
      ['127.0.0.1.', '127.0.0.1'],
      ['0x7f.1', '127.0.0.1'],
      ['2130706433', '127.0.0.1'],
      ['[::1]', '::1'],
      ['::1', '::1'],
      ['[::FFFF:7F00:1]', '::ffff:127.0.0.1'],
      ['１２７.０.０.１', '127.0.0.1'],
      ['０x7f.1', '127.0.0.1'],
    ];
    for (const [input, expected] of cases) assert.equal(normaliseHost(input), expected, input);
  });

  it('rejects invalid names with INVALID_ARGUMENT and a message naming the problem', () => {
    const cases: Array<[string, RegExp]> = [
      ['', /empty/],
      ['.', /empty/],
      ['example.com..', /empty label/],
      ['a..b', /empty label/],
      ['.example.com', /empty label/],
      ['-a.example', /may not start or end with "-"/],
      ['a-.example', /may not start or end with "-"/],
      ['a b.example', /whitespace/],
      ['a\tb', /whitespace/],
      ['a\u0000b', /control/],
      ['a/b', /one of/],
      ['user@example.com', /one of/],
      ['a%2eb.com', /one of/],
      ['example.com:443', /":" is not allowed/],
      ['::1%eth0', /zone ids/],
      ['[::1%eth0]', /zone ids/],
      ['[1.2.3.4]', /IPv6/],
      ['[example.com]', /IPv6/],
      [`${'a'.repeat(64)}.com`, /at most 63/],
      [`${'a.'.repeat(127)}b`, /at most 253/],
      ['x'.repeat(2000), /longer than 1024/],
      ['1.2.3', /ends in a number/],
      ['1.2.3.4.5', /ends in a number/],
      ['256.1.1.1', /ends in a number/],
      ['0x', /ends in a number/],
      ['example.0x1f', /ends in a number/],
      ['example.123', /ends in a number/],
      ['xn--zz.example', /punycode/],
    ];
    for (const [input, message] of cases) {
      assert.throws(
        () => normaliseHost(input),
        (e: unknown) =>
          e instanceof PalisadeError && e.code === 'INVALID_ARGUMENT' && message.test(e.message),
        JSON.stringify(input),
      );
    }
  });

  it('rejects non-strings with INVALID_ARGUMENT', () => {
    for (const bad of [undefined, null, 42, {}]) {
      assert.throws(
        () => normaliseHost(bad as unknown as string),
        (e: unknown) => e instanceof PalisadeError && e.code === 'INVALID_ARGUMENT',
      );
    }
  });

  it('property: any string either normalises idempotently or throws a PalisadeError', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.string({ unit: 'grapheme' }),
          fc.stringMatching(/^[a-zA-Z0-9.\-_]{0,80}$/),
        ),
        (s) => {
          let out: string;
          try {
            out = normaliseHost(s);
          } catch (e) {
            assert.ok(e instanceof PalisadeError, String(e));
            return;
          }
          assert.equal(normaliseHost(out.includes(':') ? `[${out}]` : out), out);
          assert.ok(out.length <= 253);
          assert.match(out, /^[a-z0-9_.:-]+$/);
        },
      ),
      { numRuns: 5000 },
    );
  });
});
