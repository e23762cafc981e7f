/**
 * Classifies an address as public or as one of the special-purpose ranges an egress gateway
 * must not reach by accident (IANA special-purpose registries, RFC 6890 and successors).
 * IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are judged
 * by that IPv4 address whenever it is special, so `::ffff:127.0.0.1`, `64:ff9b::7f00:1` and
 * `2002:7f00:1::` are all loopback.
 */
import { PalisadeError } from '../../errors/index.js';
import { ipFromBytes, isIpAddress, parseIp, type IpAddress } from './ip.js';

export type AddressClass =
  | 'public'
  | 'unspecified'
  | 'loopback'
  | 'private'
  | 'link-local'
  | 'metadata'
  | 'cgnat'
  | 'multicast'
  | 'broadcast'
  | 'documentation'
  | 'benchmark'
  | 'reserved'
  | 'unique-local'
  | 'this-network'
  | 'nat64'
  | 'discard'
  | 'ietf-protocol';

export interface Classification {
  address: IpAddress;
  class: AddressClass;
  /** true for everything except 'public' */
  special: boolean;
  /** the IPv4 address embedded in IPv4-mapped/compatible, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo 2001::/32 — classified by the embedded address when that is more restrictive */
  embeddedIPv4?: IpAddress;
  reason: string;
}

interface RangeEntry {
  /** network address bytes (4 or 16) */
  network: Uint8Array;
  prefix: number;
  cidrText: string;
  class: AddressClass;
  what: string;
  /** How to find an embedded IPv4 address (IPv6 entries only). */
  embedded?: (bytes: Uint8Array) => Uint8Array;
}

/** Compares the first `prefix` bits of two equally long byte arrays. */
export function prefixMatches(a: Uint8Array, b: Uint8Array, prefix: number): boolean {
  const fullBytes = Math.floor(prefix / 8);
  for (let i = 0; i < fullBytes; i++) if (a[i] !== b[i]) return false;
  const restBits = prefix % 8;
  if (restBits === 0) return true;
  const mask = (0xff << (8 - restBits)) & 0xff;
  return ((a[fullBytes] ?? 0) & mask) === ((b[fullBytes] ?? 0) & mask);
}

function entry(
  cidrText: string,
  cls: AddressClass,
  what: string,
  embedded?: (bytes: Uint8Array) => Uint8Array,
): RangeEntry {
  const slash = cidrText.indexOf('/');
  const address = parseIp(cidrText.slice(0, slash));
  if (address === null) throw new Error(`bad built-in range ${cidrText}`);
  const result: RangeEntry = {
    network: address.bytes,
    prefix: Number(cidrText.slice(slash + 1)),
    cidrText,
    class: cls,
    what,
  };
  if (embedded !== undefined) result.embedded = embedded;
  return result;
}

const lastFour = (bytes: Uint8Array): Uint8Array => bytes.slice(12, 16);
const sixToFour = (bytes: Uint8Array): Uint8Array => bytes.slice(2, 6);
/** Teredo (RFC 4380) stores the client's public IPv4 address with every bit inverted. */
const teredoClient = (bytes: Uint8Array): Uint8Array => lastFour(bytes).map((b) => ~b & 0xff);

/**
 * First match wins, so more specific entries come first. Immutable data, built once.
 * Cloud metadata endpoints are listed individually because reaching one from a sandbox can
 * hand out the host's credentials; some of them sit in otherwise public space.
 */
const IPV4_RANGES: readonly RangeEntry[] = Object.freeze([
  entry(
    '0.0.0.0/32',
    'unspecified',
    'the unspecified address (connecting to it reaches this host)',
  ),
  entry('0.0.0.0/8', 'this-network', '"this network" (RFC 791)'),
  entry('10.0.0.0/8', 'private', 'private network space (RFC 1918)'),
  entry('100.100.100.200/32', 'metadata', 'the Alibaba Cloud metadata service'),
  entry('100.64.0.0/10', 'cgnat', 'carrier-grade NAT shared space (RFC 6598)'),
  entry('127.0.0.0/8', 'loopback', 'loopback (RFC 1122)'),
  entry('168.63.129.16/32', 'metadata', 'the Azure platform endpoint (WireServer)'),
  entry('169.254.169.254/32', 'metadata', 'the cloud instance metadata service'),
  entry('169.254.170.2/32', 'metadata', 'the AWS ECS task metadata service'),
  entry('169.254.0.0/16', 'link-local', 'link-local (RFC 3927)'),
  entry('172.16.0.0/12', 'private', 'private network space (RFC 1918)'),
  entry('192.0.0.192/32', 'metadata', 'the Oracle Cloud metadata service'),
  entry('192.0.0.0/24', 'ietf-protocol', 'IETF protocol assignments (RFC 6890)'),
  entry('192.0.2.0/24', 'documentation', 'documentation TEST-NET-1 (RFC 5737)'),
  entry('192.88.99.0/24', 'reserved', 'the deprecated 6to4 relay anycast block (RFC 7526)'),
  entry('192.168.0.0/16', 'private', 'private network space (RFC 1918)'),
  entry('198.18.0.0/15', 'benchmark', 'benchmarking space (RFC 2544)'),
  entry('198.51.100.0/24', 'documentation', 'documentation TEST-NET-2 (RFC 5737)'),
  entry('203.0.113.0/24', 'documentation', 'documentation TEST-NET-3 (RFC 5737)'),
  entry('224.0.0.0/4', 'multicast', 'multicast (RFC 5771)'),
  entry('255.255.255.255/32', 'broadcast', 'limited broadcast (RFC 919)'),
  entry('240.0.0.0/4', 'reserved', 'reserved space (RFC 1112)'),
]);

const IPV6_RANGES: readonly RangeEntry[] = Object.freeze([
  entry('::/128', 'unspecified', 'the unspecified address (connecting to it reaches this host)'),
  entry('::1/128', 'loopback', 'loopback (RFC 4291)'),
  entry('::ffff:0:0/96', 'public', 'IPv4-mapped (RFC 4291)', lastFour),
  entry('::/96', 'reserved', 'deprecated IPv4-compatible (RFC 4291)', lastFour),
  entry('::ffff:0:0:0/96', 'reserved', 'IPv4-translated (RFC 2765)', lastFour),
  entry('64:ff9b::/96', 'nat64', 'the NAT64 well-known prefix (RFC 6052)', lastFour),
  entry('64:ff9b:1::/48', 'nat64', 'the local-use NAT64 prefix (RFC 8215)'),
  entry('100::/64', 'discard', 'discard-only (RFC 6666)'),
  entry('2001::/32', 'public', 'Teredo (RFC 4380)', teredoClient),
  entry('2001:2::/48', 'benchmark', 'benchmarking space (RFC 5180)'),
  entry('2001:db8::/32', 'documentation', 'documentation (RFC 3849)'),
  entry('2001::/23', 'ietf-protocol', 'IETF protocol assignments (RFC 2928)'),
  entry('2002::/16', 'public', '6to4 (RFC 3056)', sixToFour),
  entry('3fff::/20', 'documentation', 'documentation (RFC 9637)'),
  entry('5f00::/16', 'reserved', 'SRv6 SIDs (RFC 9602)'),
  entry('fd00:ec2::254/128', 'metadata', 'the AWS instance metadata service (IPv6)'),
  entry('fc00::/7', 'unique-local', 'unique local addresses (RFC 4193)'),
  entry('fe80::/10', 'link-local', 'link-local (RFC 4291)'),
  entry('fec0::/10', 'reserved', 'deprecated site-local (RFC 3879)'),
  entry('ff00::/8', 'multicast', 'multicast (RFC 4291)'),
  entry('2000::/3', 'public', 'global unicast'),
  // Everything else in IPv6 is unassigned by IANA and has no business being reachable.
  entry('::/0', 'reserved', 'space IANA has not assigned for unicast'),
]);

function findRange(address: IpAddress): RangeEntry | undefined {
  const table = address.family === 4 ? IPV4_RANGES : IPV6_RANGES;
  return table.find((r) => prefixMatches(address.bytes, r.network, r.prefix));
}

function classifyIpv4(address: IpAddress): Classification {
  const range = findRange(address);
  if (range === undefined) {
    return {
      address,
      class: 'public',
      special: false,
      reason: `${address.text} is a public address`,
    };
  }
  return {
    address,
    class: range.class,
    special: range.class !== 'public',
    reason: `${address.text} is ${range.what}, ${range.cidrText}`,
  };
}

function classifyIpv6(address: IpAddress): Classification {
  const range = findRange(address);
  if (range === undefined) throw new Error('unreachable: ::/0 matches every IPv6 address');
  const base: Classification = {
    address,
    class: range.class,
    special: range.class !== 'public',
    reason: `${address.text} is ${range.what}, ${range.cidrText}`,
  };
  if (range.embedded === undefined) return base;
  const embedded = ipFromBytes(range.embedded(address.bytes));
  if (embedded === null) return base;
  const inner = classifyIpv4(embedded);
  base.embeddedIPv4 = embedded;
  if (range.cidrText === '::ffff:0:0/96') {
    // A mapped address is the IPv4 address as far as any socket is concerned.
    return {
      ...base,
      class: inner.class,
      special: inner.special,
      reason: `${address.text} is IPv4-mapped: ${inner.reason}`,
    };
  }
  if (inner.special) {
    return {
      ...base,
      class: inner.class,
      special: true,
      reason: `${address.text} is ${range.what}; the embedded IPv4 address ${inner.reason}`,
    };
  }
  return { ...base, reason: `${base.reason} (embeds public ${embedded.text})` };
}

/**
 * Classifies an address or IP literal. Throws PalisadeError('INVALID_ARGUMENT') for text
 * that is not an IP literal or a malformed IpAddress object.
 */
export function classifyIp(address: IpAddress | string): Classification {
  let parsed: IpAddress | null;
  if (typeof address === 'string') {
    parsed = parseIp(address);
    if (parsed === null) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `"${address.slice(0, 64)}" is not an IP address; pass an IPv4 or IPv6 literal`,
      );
    }
  } else {
    if (!isIpAddress(address)) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        'not an IP address: expected { family: 4 | 6, bytes } with 4 or 16 bytes',
      );
    }
    // Recompute the canonical text from the bytes: the caller's `text` is not trusted.
    parsed = ipFromBytes(address.bytes);
    if (parsed === null) throw new PalisadeError('INVALID_ARGUMENT', 'not an IP address');
  }
  return parsed.family === 4 ? classifyIpv4(parsed) : classifyIpv6(parsed);
}
