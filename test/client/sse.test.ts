import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ProtocolError } from '../../src/client/index.js';
import { SseParser } from '../../src/client/sse.js';
import { parseRetryAfter } from '../../src/client/transport.js';

const enc = (text: string) => new TextEncoder().encode(text);

function parseAll(chunks: Uint8Array[], max = 1 << 20) {
  const parser = new SseParser(max);
  const out = chunks.flatMap((c) => parser.push(c));
  return [...out, ...parser.end()];
}

describe('SSE parser', () => {
  it('parses events with LF, CRLF and CR line ends, comments and multi-line data', () => {
    const text =
      ': comment\nevent: start\ndata: {"a":1}\n\r\nevent: stdout\r\ndata: line1\r\ndata:line2\r\n\r\n' +
      'data: plain\r\rid: 7\nevent: exit\ndata: {}\n\nevent: lost\ndata: unterminated';
    assert.deepEqual(parseAll([enc(text)]), [
      { event: 'start', data: '{"a":1}' },
      { event: 'stdout', data: 'line1\nline2' },
      { event: 'message', data: 'plain' },
      { event: 'exit', data: '{}' },
    ]);
  });

  it('gives the same events however the bytes are split (including inside CRLF and UTF-8)', () => {
    const text = 'event: a\r\ndata: é€😀\r\n\r\nevent: b\ndata: x\n\n';
    const bytes = enc(text);
    const whole = parseAll([bytes]);
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: bytes.length - 1 })), (cuts) => {
        const points = [0, ...cuts.sort((x, y) => x - y), bytes.length];
        const chunks = points.slice(1).map((end, i) => bytes.subarray(points[i]!, end));
        assert.deepEqual(parseAll(chunks), whole);
      }),
    );
    assert.equal(whole.length, 2);
  });

  it('refuses an event larger than its bound instead of buffering it', () => {
    const parser = new SseParser(1000);
    assert.throws(() => parser.push(enc(`data: ${'x'.repeat(2000)}`)), ProtocolError);
    const lines = new SseParser(1000);
    assert.throws(() => {
      for (let i = 0; i < 100; i++) lines.push(enc(`data: ${'y'.repeat(50)}\n`));
    }, ProtocolError);
  });
});

describe('Retry-After', () => {
  it('accepts seconds and HTTP dates, ignores garbage', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    assert.equal(parseRetryAfter(null), undefined);
    assert.equal(parseRetryAfter('soon'), undefined);
    const now = Date.parse('2030-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('Tue, 01 Jan 2030 00:00:05 GMT', now), 5000);
    assert.equal(parseRetryAfter('Tue, 01 Jan 2029 00:00:05 GMT', now), 0);
  });
});
