import { prefixMatches } from './classify.js';
import { ipFromBytes, parseIp, unmapIpv4, type IpAddress } from './ip.js';

export interface Cidr {
  address: IpAddress;
  prefix: number;
  text: string;
}

const PREFIX_TEXT = /^(?:0|[1-9][0-9]{0,2})$/;
const MAX_CIDR_TEXT = 128;

/**
 * Parses `10.0.0.0/8`, `fc00::/7`, `[fc00::]/7`, or a bare address (= /32 or /128).
 * Returns null for anything else, including a network address with host bits set
 * (`10.0.0.1/8` is ambiguous: the caller must say 10.0.0.0/8 or 10.0.0.1).
 */
export function parseCidr(text: string): Cidr | null {
  if (typeof text !== 'string' || text.length === 0 || text.length > MAX_CIDR_TEXT) return null;
  const slash = text.indexOf('/');
  const addressText = slash < 0 ? text : text.slice(0, slash);
  const address = parseIp(addressText);
  if (address === null) return null;
  const maxPrefix = address.family === 4 ? 32 : 128;
  let prefix = maxPrefix;
  if (slash >= 0) {
    const prefixText = text.slice(slash + 1);
    if (!PREFIX_TEXT.test(prefixText)) return null;
    prefix = Number(prefixText);
    if (prefix > maxPrefix) return null;
  }
  if (networkOf(address, prefix).text !== address.text) return null;
  return { address, prefix, text: `${address.text}/${prefix}` };
}

/** The `prefix` first bits of `address` kept, the rest cleared: the network a host lies in. */
export function networkOf(address: IpAddress, prefix: number): IpAddress {
  const bytes = Uint8Array.from(address.bytes);
  for (let bit = prefix; bit < bytes.length * 8; bit++) {
    const index = bit >> 3;
    bytes[index] = (bytes[index] ?? 0) & ~(0x80 >> (bit & 7));
  }
  return ipFromBytes(bytes) ?? address;
}

/** IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) match IPv4 CIDRs, and IPv4 addresses match IPv6 CIDRs through their mapped form. */
export function cidrContains(cidr: Cidr, address: IpAddress): boolean {
  let candidate: IpAddress | null = address;
  if (cidr.address.family === 4 && address.family === 6) {
    candidate = unmapIpv4(address);
  } else if (cidr.address.family === 6 && address.family === 4) {
    const mapped = new Uint8Array(16);
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped.set(address.bytes, 12);
    candidate = ipFromBytes(mapped);
  }
  if (candidate === null || candidate.bytes.length !== cidr.address.bytes.length) return false;
  return prefixMatches(candidate.bytes, cidr.address.bytes, cidr.prefix);
}
