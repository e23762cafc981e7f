/**
 * Just enough of a TLS ClientHello parser to read the server_name (SNI) extension, so the
 * gateway can refuse a tunnel whose TLS names a different host than the one the policy
 * allowed. Works on the bytes seen so far: the ClientHello may be split across TCP reads and
 * across TLS records, so an incomplete buffer yields 'incomplete' and the caller reads more
 * (up to MAX_CLIENT_HELLO_BYTES).
 */

export const MAX_CLIENT_HELLO_BYTES = 64 * 1024;
/** Bytes the caller may buffer while waiting for a ClientHello (room for record headers). */
export const MAX_CLIENT_HELLO_BUFFER = MAX_CLIENT_HELLO_BYTES + 4096;

const RECORD_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 0x01;
const EXTENSION_SERVER_NAME = 0x0000;
const MAX_RECORD_LENGTH = 16384 + 2048;

export type ClientHelloResult =
  | { kind: 'incomplete' }
  /** The first byte is not a TLS handshake record: some other protocol. */
  | { kind: 'not-tls' }
  | { kind: 'invalid'; reason: string }
  | { kind: 'client-hello'; serverName: string | null };

/** Inspect the first bytes a client sent on a tunnel. */
export function parseClientHello(data: Uint8Array): ClientHelloResult {
  if (data.length === 0) return { kind: 'incomplete' };
  if (data[0] !== RECORD_HANDSHAKE) return { kind: 'not-tls' };

  // Judge the handshake header as soon as it is visible, so an oversized or non-ClientHello
  // message is refused without buffering it.
  if (data.length >= 9 && readU16(data, 3) >= 4) {
    if (data[5] !== HANDSHAKE_CLIENT_HELLO) {
      return { kind: 'invalid', reason: 'first TLS handshake message is not a ClientHello' };
    }
    if (4 + ((data[6]! << 16) | (data[7]! << 8) | data[8]!) > MAX_CLIENT_HELLO_BYTES) {
      return { kind: 'invalid', reason: 'TLS ClientHello too large' };
    }
  }

  // Reassemble the handshake message from consecutive handshake records.
  const fragments: Uint8Array[] = [];
  let handshakeBytes = 0;
  let offset = 0;
  let needed = -1;
  for (;;) {
    if (offset + 5 > data.length) return incompleteOrTooLarge(data);
    if (data[offset] !== RECORD_HANDSHAKE) {
      return { kind: 'invalid', reason: 'TLS handshake interrupted by another record type' };
    }
    const major = data[offset + 1];
    if (major !== 3) return { kind: 'invalid', reason: 'unknown TLS record version' };
    const length = readU16(data, offset + 3);
    if (length === 0 || length > MAX_RECORD_LENGTH) {
      return { kind: 'invalid', reason: 'TLS record length out of range' };
    }
    if (offset + 5 + length > data.length) return incompleteOrTooLarge(data);
    const fragment = data.subarray(offset + 5, offset + 5 + length);
    fragments.push(fragment);
    handshakeBytes += fragment.length;
    offset += 5 + length;
    if (needed < 0 && handshakeBytes >= 4) {
      const head = concat(fragments, 4);
      if (head[0] !== HANDSHAKE_CLIENT_HELLO) {
        return { kind: 'invalid', reason: 'first TLS handshake message is not a ClientHello' };
      }
      needed = 4 + ((head[1]! << 16) | (head[2]! << 8) | head[3]!);
      if (needed > MAX_CLIENT_HELLO_BYTES) {
        return { kind: 'invalid', reason: 'TLS ClientHello too large' };
      }
    }
    if (needed >= 0 && handshakeBytes >= needed) break;
  }
  const message = concat(fragments, needed);
  return parseClientHelloBody(message.subarray(4));
}

function incompleteOrTooLarge(data: Uint8Array): ClientHelloResult {
  return data.length >= MAX_CLIENT_HELLO_BUFFER
    ? { kind: 'invalid', reason: 'TLS ClientHello too large' }
    : { kind: 'incomplete' };
}

function parseClientHelloBody(body: Uint8Array): ClientHelloResult {
  const reader = new Reader(body);
  try {
    reader.skip(2 + 32); // legacy_version, random
    reader.skip(reader.u8()); // session id
    reader.skip(reader.u16()); // cipher suites
    reader.skip(reader.u8()); // compression methods
    if (reader.remaining() === 0) return { kind: 'client-hello', serverName: null };
    const extensionsLength = reader.u16();
    if (extensionsLength !== reader.remaining()) {
      return { kind: 'invalid', reason: 'TLS extensions length mismatch' };
    }
    const seen = new Set<number>();
    let serverName: string | null = null;
    while (reader.remaining() > 0) {
      const type = reader.u16();
      const length = reader.u16();
      const extension = reader.take(length);
      if (seen.has(type)) return { kind: 'invalid', reason: 'duplicate TLS extension' };
      seen.add(type);
      if (type === EXTENSION_SERVER_NAME) {
        const parsed = parseServerName(extension);
        if (typeof parsed !== 'string') return parsed;
        serverName = parsed;
      }
    }
    return { kind: 'client-hello', serverName };
  } catch {
    return { kind: 'invalid', reason: 'truncated TLS ClientHello' };
  }
}

function parseServerName(extension: Uint8Array): string | ClientHelloResult {
  const reader = new Reader(extension);
  const listLength = reader.u16();
  if (listLength !== reader.remaining()) {
    return { kind: 'invalid', reason: 'TLS server_name list length mismatch' };
  }
  let name: string | null = null;
  while (reader.remaining() > 0) {
    const nameType = reader.u8();
    const value = reader.take(reader.u16());
    if (nameType !== 0) continue; // only host_name (0) is defined
    if (name !== null) return { kind: 'invalid', reason: 'more than one TLS server name' };
    if (value.length === 0 || value.length > 255) {
      return { kind: 'invalid', reason: 'TLS server name length out of range' };
    }
    for (const byte of value) {
      // RFC 6066: ASCII host name, no trailing NULs or control characters.
      if (byte <= 0x20 || byte >= 0x7f) {
        return { kind: 'invalid', reason: 'TLS server name contains invalid characters' };
      }
    }
    name = Buffer.from(value).toString('latin1');
  }
  if (name === null)
    return { kind: 'invalid', reason: 'TLS server_name extension without a host name' };
  return name;
}

function readU16(data: Uint8Array, offset: number): number {
  return (data[offset]! << 8) | data[offset + 1]!;
}

function concat(fragments: Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let offset = 0;
  for (const fragment of fragments) {
    if (offset >= length) break;
    const part = fragment.subarray(0, length - offset);
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

class Reader {
  private offset = 0;
  constructor(private readonly data: Uint8Array) {}
  remaining(): number {
    return this.data.length - this.offset;
  }
  u8(): number {
    return this.take(1)[0]!;
  }
  u16(): number {
    const bytes = this.take(2);
    return (bytes[0]! << 8) | bytes[1]!;
  }
  skip(length: number): void {
    this.take(length);
  }
  take(length: number): Uint8Array {
    if (this.offset + length > this.data.length) throw new RangeError('truncated');
    const out = this.data.subarray(this.offset, this.offset + length);
    this.offset += length;
    return out;
  }
}
