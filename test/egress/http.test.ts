import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  chunkedFraming,
  lengthFraming,
  parseAbsoluteHttpTarget,
  parseAuthority,
  parseRequestHead,
} from '../../src/egress/http.js';

function feedAll(
  framing: ReturnType<typeof chunkedFraming>,
  data: Buffer,
  pieceSize: number,
): number | null {
  let consumed = 0;
  for (let i = 0; i < data.length && !framing.done; i += pieceSize) {
    const piece = data.subarray(i, i + pieceSize);
    const used = framing.next(piece);
    if (used === null) return null;
    consumed += used;
  }
  return consumed;
}

describe('request body framing', () => {
  const body = Buffer.from('5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nTrailer: x\r\n\r\n');
  const after = Buffer.from('GET http://evil.test/ HTTP/1.1\r\n\r\n');

  test('chunked: finds the exact end of the body however the bytes are split', () => {
    for (const size of [1, 2, 3, 7, 64, 1000]) {
      const framing = chunkedFraming(1024);
      assert.equal(
        feedAll(framing, Buffer.concat([body, after]), size),
        body.length,
        `piece size ${size}`,
      );
      assert.ok(framing.done);
    }
  });

  test('chunked: malformed framing is refused', () => {
    for (const bad of [
      'zz\r\n',
      '5\nhello\n',
      '5\r\nhelloX\r\n',
      '-1\r\n',
      `${'f'.repeat(16)}\r\n`,
      '5 5\r\n',
      '\r\n',
      `0\r\n${'a'.repeat(2000)}`,
    ]) {
      assert.equal(chunkedFraming(1024).next(Buffer.from(bad)), null, JSON.stringify(bad));
    }
  });

  test('content-length framing stops at the length', () => {
    const framing = lengthFraming(4);
    assert.equal(framing.next(Buffer.from('ab')), 2);
    assert.equal(framing.done, false);
    assert.equal(framing.next(Buffer.from('cdEXTRA')), 2);
    assert.equal(framing.done, true);
    assert.equal(framing.next(Buffer.from('more')), 0);
  });

  test('property: random input never throws and never reports more than it was given', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 300 }),
        fc.integer({ min: 1, max: 50 }),
        (bytes, size) => {
          const framing = chunkedFraming(256);
          const consumed = feedAll(framing, Buffer.from(bytes), size);
          assert.ok(consumed === null || consumed <= bytes.length);
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe('request head and authority parsing', () => {
  test('parses a head and reports its length; incomplete and too large are distinct', () => {
    const text = 'GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\nX-A:  b \r\n\r\nBODY';
    const result = parseRequestHead(Buffer.from(text), 1024);
    assert.equal(result.kind, 'head');
    if (result.kind === 'head') {
      assert.equal(result.head.length, text.length - 4);
      assert.deepEqual(result.head.headers, [
        ['Host', 'a.test'],
        ['X-A', 'b'],
      ]);
    }
    assert.equal(
      parseRequestHead(Buffer.from('GET http://a.test/ HTTP/1.1\r\n'), 1024).kind,
      'incomplete',
    );
    assert.equal(parseRequestHead(Buffer.alloc(2000, 0x61), 1024).kind, 'too-large');
  });

  test('refuses ambiguous heads', () => {
    for (const bad of [
      'GET  http://a.test/ HTTP/1.1\r\n\r\n',
      'GET http://a.test/ HTTP/2\r\n\r\n',
      'GET http://a.test/ HTTP/1.1\r\n folded\r\n\r\n',
      'GET http://a.test/ HTTP/1.1\r\nBad Name: x\r\n\r\n',
      'GET http://a.test/ HTTP/1.1\r\nX: a\nY: b\r\n\r\n',
      'GET http://a.test/\x01 HTTP/1.1\r\n\r\n',
    ]) {
      assert.equal(
        parseRequestHead(Buffer.from(bad, 'latin1'), 1024).kind,
        'invalid',
        JSON.stringify(bad),
      );
    }
  });

  test('authorities and absolute targets', () => {
    assert.deepEqual(parseAuthority('a.test:443'), { host: 'a.test', port: 443 });
    assert.deepEqual(parseAuthority('[::1]:80'), { host: '::1', port: 80 });
    assert.deepEqual(parseAuthority('a.test', 80), { host: 'a.test', port: 80 });
    for (const bad of [
      'a.test',
      '::1:80',
      'a.test:0',
      'a.test:65536',
      'user@a.test:80',
      '[::1]x:80',
      'a.test:+80',
      '[a.test]:80',
    ]) {
      assert.equal(parseAuthority(bad), null, bad);
    }
    assert.deepEqual(parseAbsoluteHttpTarget('http://a.test:8080/p?q=1'), {
      host: 'a.test',
      port: 8080,
      path: '/p?q=1',
    });
    assert.deepEqual(parseAbsoluteHttpTarget('HTTP://a.test?q'), {
      host: 'a.test',
      port: 80,
      path: '/?q',
    });
    assert.equal(parseAbsoluteHttpTarget('https://a.test/'), null);
    assert.equal(parseAbsoluteHttpTarget('http://user:pw@a.test/'), null);
    assert.equal(parseAbsoluteHttpTarget('http://a.test/#frag'), null);
  });
});
