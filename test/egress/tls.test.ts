import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { parseClientHello } from '../../src/egress/index.js';
import { captureClientHello } from './helpers.js';

/** Re-frames a single-record ClientHello into records of at most `size` handshake bytes. */
function splitIntoRecords(hello: Buffer, size: number): Buffer {
  const version = hello.subarray(1, 3);
  const handshake = hello.subarray(5, 5 + hello.readUInt16BE(3));
  const records: Buffer[] = [];
  for (let i = 0; i < handshake.length; i += size) {
    const part = handshake.subarray(i, i + size);
    const header = Buffer.from([
      0x16,
      version[0]!,
      version[1]!,
      part.length >> 8,
      part.length & 0xff,
    ]);
    records.push(header, part);
  }
  return Buffer.concat(records);
}

describe('parseClientHello', () => {
  test('reads the SNI of a real ClientHello', async () => {
    const hello = await captureClientHello('api.example.test');
    assert.deepEqual(parseClientHello(hello), {
      kind: 'client-hello',
      serverName: 'api.example.test',
    });
  });

  test('every prefix of a ClientHello is incomplete, never a wrong answer (TCP fragmentation)', async () => {
    const hello = await captureClientHello('frag.example.test');
    for (let cut = 1; cut < hello.length; cut++) {
      assert.deepEqual(
        parseClientHello(hello.subarray(0, cut)),
        { kind: 'incomplete' },
        `prefix ${cut}`,
      );
    }
  });

  test('a ClientHello split across many TLS records is reassembled', async () => {
    const hello = await captureClientHello('records.example.test');
    for (const size of [1, 7, 100]) {
      const framed = splitIntoRecords(hello, size);
      assert.deepEqual(parseClientHello(framed), {
        kind: 'client-hello',
        serverName: 'records.example.test',
      });
      assert.deepEqual(parseClientHello(framed.subarray(0, framed.length - 1)), {
        kind: 'incomplete',
      });
    }
  });

  test('no SNI (IP-literal TLS) is reported as null', async () => {
    const hello = await captureClientHello('');
    assert.deepEqual(parseClientHello(hello), { kind: 'client-hello', serverName: null });
  });

  test('non-TLS first bytes are "not-tls"', () => {
    assert.deepEqual(parseClientHello(Buffer.from('GET / HTTP/1.1\r\n')), { kind: 'not-tls' });
    assert.deepEqual(parseClientHello(Buffer.from('SSH-2.0-x\r\n')), { kind: 'not-tls' });
  });

  test('malformed handshakes are invalid', () => {
    assert.equal(
      parseClientHello(Buffer.from([0x16, 0x09, 0x01, 0x00, 0x01, 0x01])).kind,
      'invalid',
    );
    assert.equal(parseClientHello(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00])).kind, 'invalid');
    // A ServerHello (type 2) where a ClientHello must be.
    assert.equal(
      parseClientHello(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00])).kind,
      'invalid',
    );
    // An alert record in the middle of the handshake.
    assert.equal(
      parseClientHello(
        Buffer.from([
          0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x01, 0x00, 0x15, 0x03, 0x01, 0x00, 0x02, 0x02,
          0x28,
        ]),
      ).kind,
      'invalid',
    );
  });

  test('a second server_name extension (fronting trick) is invalid', async () => {
    const hello = await captureClientHello('one.example.test');
    const result = parseClientHello(hello);
    assert.equal(result.kind, 'client-hello');
    // Append a duplicate SNI extension and fix up all the lengths.
    const handshakeLength = hello.readUIntBE(6, 3);
    const body = hello.subarray(9, 9 + handshakeLength);
    let offset = 2 + 32;
    offset += 1 + body[offset]!;
    offset += 2 + body.readUInt16BE(offset);
    offset += 1 + body[offset]!;
    const extensionsStart = offset;
    const name = Buffer.from('two.example.test');
    const ext = Buffer.alloc(9 + name.length);
    ext.writeUInt16BE(0, 0);
    ext.writeUInt16BE(5 + name.length, 2);
    ext.writeUInt16BE(3 + name.length, 4);
    ext[6] = 0;
    ext.writeUInt16BE(name.length, 7);
    name.copy(ext, 9);
    const newBody = Buffer.concat([body, ext]);
    newBody.writeUInt16BE(body.readUInt16BE(extensionsStart) + ext.length, extensionsStart);
    const handshake = Buffer.concat([Buffer.from([0x01, 0, 0, 0]), newBody]);
    handshake.writeUIntBE(newBody.length, 1, 3);
    const record = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0, 0]), handshake]);
    record.writeUInt16BE(handshake.length, 3);
    assert.deepEqual(parseClientHello(record), {
      kind: 'invalid',
      reason: 'duplicate TLS extension',
    });
  });

  test('an announced ClientHello larger than the bound is refused without waiting for it', () => {
    const header = Buffer.from([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x7f, 0xff, 0xff]);
    assert.deepEqual(parseClientHello(header), {
      kind: 'invalid',
      reason: 'TLS ClientHello too large',
    });
  });

  test('property: random bytes never throw and never yield a server name from garbage', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
        const result = parseClientHello(bytes);
        assert.ok(['incomplete', 'not-tls', 'invalid', 'client-hello'].includes(result.kind));
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (tail) => {
        const bytes = Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), tail]);
        parseClientHello(bytes);
      }),
      { numRuns: 2000 },
    );
  });
});
