/** SOCKS5 (RFC 1928) message parsing: the method greeting and the CONNECT request. */

export const SOCKS_VERSION = 0x05;
export const SOCKS_METHOD_NO_AUTH = 0x00;
export const SOCKS_METHOD_NONE_ACCEPTABLE = 0xff;

export const SocksReply = {
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowedByRuleset: 0x02,
  networkUnreachable: 0x03,
  hostUnreachable: 0x04,
  connectionRefused: 0x05,
  ttlExpired: 0x06,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
} as const;
export type SocksReplyCode = (typeof SocksReply)[keyof typeof SocksReply];

export type GreetingResult =
  | { kind: 'incomplete' }
  | { kind: 'invalid'; reason: string }
  | { kind: 'greeting'; methods: number[]; length: number };

export function parseGreeting(data: Uint8Array): GreetingResult {
  if (data.length < 2) return { kind: 'incomplete' };
  if (data[0] !== SOCKS_VERSION) return { kind: 'invalid', reason: 'not SOCKS5' };
  const count = data[1]!;
  if (count === 0) return { kind: 'invalid', reason: 'SOCKS5 greeting lists no methods' };
  if (data.length < 2 + count) return { kind: 'incomplete' };
  return { kind: 'greeting', methods: [...data.subarray(2, 2 + count)], length: 2 + count };
}

export type SocksRequestResult =
  | { kind: 'incomplete' }
  | { kind: 'invalid'; reason: string; reply: SocksReplyCode }
  | {
      kind: 'request';
      addressType: 'ipv4' | 'ipv6' | 'domain';
      host: string;
      port: number;
      length: number;
    };

export function parseConnectRequest(data: Uint8Array): SocksRequestResult {
  if (data.length < 5) return { kind: 'incomplete' };
  if (data[0] !== SOCKS_VERSION) {
    return { kind: 'invalid', reason: 'not SOCKS5', reply: SocksReply.generalFailure };
  }
  if (data[1] !== 0x01) {
    return {
      kind: 'invalid',
      reason: 'only SOCKS5 CONNECT is supported',
      reply: SocksReply.commandNotSupported,
    };
  }
  if (data[2] !== 0x00) {
    return {
      kind: 'invalid',
      reason: 'malformed SOCKS5 request',
      reply: SocksReply.generalFailure,
    };
  }
  const atyp = data[3];
  let host: string;
  let addressType: 'ipv4' | 'ipv6' | 'domain';
  let offset: number;
  if (atyp === 0x01) {
    if (data.length < 4 + 4 + 2) return { kind: 'incomplete' };
    host = [...data.subarray(4, 8)].join('.');
    addressType = 'ipv4';
    offset = 8;
  } else if (atyp === 0x04) {
    if (data.length < 4 + 16 + 2) return { kind: 'incomplete' };
    const groups: string[] = [];
    for (let i = 0; i < 8; i++)
      groups.push(((data[4 + 2 * i]! << 8) | data[5 + 2 * i]!).toString(16));
    host = groups.join(':');
    addressType = 'ipv6';
    offset = 20;
  } else if (atyp === 0x03) {
    const length = data[4]!;
    if (length === 0) {
      return {
        kind: 'invalid',
        reason: 'empty SOCKS5 domain name',
        reply: SocksReply.generalFailure,
      };
    }
    if (data.length < 5 + length + 2) return { kind: 'incomplete' };
    const name = data.subarray(5, 5 + length);
    for (const byte of name) {
      if (byte <= 0x20 || byte >= 0x7f) {
        return {
          kind: 'invalid',
          reason: 'SOCKS5 domain name contains invalid characters',
          reply: SocksReply.generalFailure,
        };
      }
    }
    host = Buffer.from(name).toString('latin1');
    addressType = 'domain';
    offset = 5 + length;
  } else {
    return {
      kind: 'invalid',
      reason: 'unsupported SOCKS5 address type',
      reply: SocksReply.addressTypeNotSupported,
    };
  }
  const port = (data[offset]! << 8) | data[offset + 1]!;
  if (port === 0)
    return { kind: 'invalid', reason: 'SOCKS5 port 0', reply: SocksReply.generalFailure };
  return { kind: 'request', addressType, host, port, length: offset + 2 };
}

/** A reply with the bound address left as 0.0.0.0:0 (clients do not need it for CONNECT). */
export function socksReply(code: SocksReplyCode): Buffer {
  return Buffer.from([SOCKS_VERSION, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
}
