/**
 * IP literal parsing. IPv4 follows what glibc's inet_aton (and so getaddrinfo) accepts,
 * because an egress decision is only sound if it reads an address exactly the way the
 * resolver that later connects will: `0x7f.1`, `2130706433` and `017700000001` all reach
 * 127.0.0.1. IPv6 follows inet_pton, with optional brackets and without zone ids.
 */

export type IpFamily = 4 | 6;

export interface IpAddress {
  family: IpFamily;
  /** 4 or 16 bytes */
  bytes: Uint8Array;
  /** canonical text: dotted quad or RFC 5952 */
  text: string;
}

/** Longest text either parser looks at; anything longer is not an IP literal. */
const MAX_IPV4_TEXT = 64;
const MAX_IPV6_TEXT = 64;

const DECIMAL_PART = /^(?:0|[1-9][0-9]*)$/;
const OCTAL_PART = /^0[0-7]+$/;
const HEX_PART = /^0[xX][0-9a-fA-F]+$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;
const STRICT_OCTET = /^(?:0|[1-9][0-9]{0,2})$/;

function parseIpv4Part(part: string): number | null {
  let digits: string;
  let radix: number;
  if (HEX_PART.test(part)) {
    digits = part.slice(2);
    radix = 16;
  } else if (OCTAL_PART.test(part)) {
    digits = part.slice(1);
    radix = 8;
  } else if (DECIMAL_PART.test(part)) {
    digits = part;
    radix = 10;
  } else {
    return null;
  }
  let value = 0;
  for (const ch of digits) {
    value = value * radix + parseInt(ch, radix);
    // Stop early so absurdly long parts cannot lose precision and wrap into range.
    if (value > 0xffffffff) return null;
  }
  return value;
}

/**
 * inet_aton forms: a (32 bits), a.b (8.24), a.b.c.d (8.8.8.8), each part decimal, octal
 * (leading 0) or hex (0x). The three-part form a.b.c (8.8.16) is deliberately not accepted
 * as a literal; normaliseHost refuses it as a host name instead, so it is never allowed.
 */
function parseIpv4(text: string): Uint8Array | null {
  if (text.length === 0 || text.length > MAX_IPV4_TEXT) return null;
  const parts = text.split('.');
  if (parts.length !== 1 && parts.length !== 2 && parts.length !== 4) return null;
  const values: number[] = [];
  for (const part of parts) {
    const value = parseIpv4Part(part);
    if (value === null) return null;
    values.push(value);
  }
  const last = values[values.length - 1] ?? 0;
  const leading = values.slice(0, -1);
  if (leading.some((v) => v > 0xff)) return null;
  const lastBits = 8 * (4 - leading.length);
  if (last >= 2 ** lastBits) return null;
  const bytes = new Uint8Array(4);
  leading.forEach((v, i) => (bytes[i] = v));
  for (let i = 3; i >= leading.length; i--) {
    bytes[i] = Math.floor(last / 2 ** (8 * (3 - i))) % 256;
  }
  return bytes;
}

/** Strict dotted quad, as inet_pton requires inside IPv6 text (no leading zeros). */
function parseStrictDottedQuad(text: string): Uint8Array | null {
  const parts = text.split('.');
  if (parts.length !== 4) return null;
  const bytes = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = parts[i] ?? '';
    if (!STRICT_OCTET.test(part)) return null;
    const value = Number(part);
    if (value > 255) return null;
    bytes[i] = value;
  }
  return bytes;
}

function parseIpv6Groups(side: string, allowTrailingIpv4: boolean): number[] | null {
  if (side === '') return [];
  const pieces = side.split(':');
  const groups: number[] = [];
  for (let i = 0; i < pieces.length; i++) {
    const piece = pieces[i] ?? '';
    if (allowTrailingIpv4 && i === pieces.length - 1 && piece.includes('.')) {
      const v4 = parseStrictDottedQuad(piece);
      if (v4 === null) return null;
      groups.push(((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0));
      continue;
    }
    if (!HEX_GROUP.test(piece)) return null;
    groups.push(parseInt(piece, 16));
  }
  return groups;
}

function parseIpv6(input: string): Uint8Array | null {
  let text = input;
  if (text.startsWith('[') || text.endsWith(']')) {
    if (!(text.startsWith('[') && text.endsWith(']'))) return null;
    text = text.slice(1, -1);
  }
  if (text.length < 2 || text.length > MAX_IPV6_TEXT || !text.includes(':')) return null;
  // Zone ids (fe80::1%eth0) name a host interface; they are never valid egress targets.
  if (text.includes('%')) return null;
  const halves = text.split('::');
  if (halves.length > 2) return null;
  let groups: number[];
  if (halves.length === 2) {
    const head = parseIpv6Groups(halves[0] ?? '', false);
    const tail = parseIpv6Groups(halves[1] ?? '', true);
    if (head === null || tail === null) return null;
    const missing = 8 - head.length - tail.length;
    if (missing < 1) return null;
    groups = [...head, ...new Array<number>(missing).fill(0), ...tail];
  } else {
    const all = parseIpv6Groups(text, true);
    if (all === null || all.length !== 8) return null;
    groups = all;
  }
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  return bytes;
}

export function formatIpv4(bytes: Uint8Array): string {
  return `${bytes[0] ?? 0}.${bytes[1] ?? 0}.${bytes[2] ?? 0}.${bytes[3] ?? 0}`;
}

function isIpv4MappedBytes(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** RFC 5952: lowercase, no leading zeros, first longest run (>= 2) of zero groups as `::`, mapped addresses in mixed notation. */
export function formatIpv6(bytes: Uint8Array): string {
  if (isIpv4MappedBytes(bytes)) return `::ffff:${formatIpv4(bytes.subarray(12, 16))}`;
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push(((bytes[2 * i] ?? 0) << 8) | (bytes[2 * i + 1] ?? 0));
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  const head = hex.slice(0, bestStart).join(':');
  const tail = hex.slice(bestStart + bestLength).join(':');
  return `${head}::${tail}`;
}

/** Builds an IpAddress from raw bytes (4 or 16); returns null for any other length. */
export function ipFromBytes(bytes: Uint8Array): IpAddress | null {
  if (!(bytes instanceof Uint8Array)) return null;
  if (bytes.length === 4) {
    const copy = Uint8Array.from(bytes);
    return { family: 4, bytes: copy, text: formatIpv4(copy) };
  }
  if (bytes.length === 16) {
    const copy = Uint8Array.from(bytes);
    return { family: 6, bytes: copy, text: formatIpv6(copy) };
  }
  return null;
}

/** Parses an IP literal. Accepts non-canonical IPv4 spellings that resolvers/libc accept: 0x7f.1, 2130706433, 017700000001, 127.1, 0x7f000001; IPv6 with or without brackets, with zone ids rejected; IPv4-mapped forms. Returns null for anything that is not an IP literal. */
export function parseIp(text: string): IpAddress | null {
  if (typeof text !== 'string') return null;
  const bytes = text.includes(':') || text.startsWith('[') ? parseIpv6(text) : parseIpv4(text);
  return bytes === null ? null : ipFromBytes(bytes);
}

/** The IPv4 address inside an IPv4-mapped IPv6 address (::ffff:a.b.c.d), else null. */
export function unmapIpv4(address: IpAddress): IpAddress | null {
  if (address.family !== 6 || !isIpv4MappedBytes(address.bytes)) return null;
  return ipFromBytes(address.bytes.subarray(12, 16));
}

/** True when `value` has the shape of an IpAddress this module can work with. */
export function isIpAddress(value: unknown): value is IpAddress {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Partial<IpAddress>;
  return (
    v.bytes instanceof Uint8Array &&
    ((v.family === 4 && v.bytes.length === 4) || (v.family === 6 && v.bytes.length === 16))
  );
}
