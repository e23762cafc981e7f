import { domainToASCII } from 'node:url';
import { PalisadeError } from '../../errors/index.js';
import { parseIp } from './ip.js';

/** DNS limits (RFC 1035): 253 characters of text without the root dot, 63 per label. */
export const MAX_HOST_LENGTH = 253;
const MAX_LABEL_LENGTH = 63;
/** Input longer than this is refused before any work is done on it. */
const MAX_HOST_INPUT = 1024;

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$/;
const PRINTABLE_ASCII_HOST = /^[\x21-\x7e]*$/;
/** Characters that are never part of a host name (URL delimiters, escapes, whitespace). */
const NEVER_IN_HOST = /[\s/\\?#@%:[\]<>^|"'`{}\x00-\x1f\x7f]/u;
/** A last label a resolver would read as a number (inet_aton / WHATWG "ends in a number"). */
const NUMERIC_LABEL = /^(?:0x[0-9a-f]*|[0-9]+)$/;

function quote(host: string): string {
  return JSON.stringify(host.length > 80 ? `${host.slice(0, 80)}…` : host);
}

function invalid(host: string, problem: string): PalisadeError {
  return new PalisadeError('INVALID_ARGUMENT', `invalid host ${quote(host)}: ${problem}`, {
    host: host.slice(0, 256),
  });
}

function validateAsciiName(original: string, name: string): string {
  if (name.length === 0) throw invalid(original, 'it is empty');
  if (name.length > MAX_HOST_LENGTH) {
    throw invalid(
      original,
      `it is ${name.length} characters long; DNS names are at most ${MAX_HOST_LENGTH}`,
    );
  }
  const labels = name.split('.');
  for (const label of labels) {
    if (label.length === 0)
      throw invalid(original, 'it has an empty label (two dots in a row, or a leading dot)');
    if (label.length > MAX_LABEL_LENGTH) {
      throw invalid(
        original,
        `label "${label.slice(0, 20)}…" is ${label.length} characters long; labels are at most ${MAX_LABEL_LENGTH}`,
      );
    }
    if (!LABEL.test(label)) {
      throw invalid(
        original,
        `label "${label}" may contain only letters, digits, "-" and "_", and may not start or end with "-"`,
      );
    }
  }
  const last = labels[labels.length - 1] ?? '';
  if (NUMERIC_LABEL.test(last)) {
    throw invalid(
      original,
      'it ends in a number, so resolvers may read it as an IPv4 address; write the address as a dotted quad (e.g. 10.0.0.1)',
    );
  }
  if (labels.some((l) => l.startsWith('xn--')) && domainToASCII(name) === '') {
    throw invalid(original, 'it contains an invalid punycode ("xn--") label');
  }
  return name;
}

/** Lowercase, strip one trailing dot, IDN → punycode (node:url domainToASCII), validate label syntax/lengths; throws PalisadeError('INVALID_POLICY' or 'INVALID_ARGUMENT') with a clear message. IP literals are returned canonicalised. */
export function normaliseHost(host: string): string {
  if (typeof host !== 'string') {
    throw new PalisadeError('INVALID_ARGUMENT', 'invalid host: expected a string');
  }
  if (host.length > MAX_HOST_INPUT)
    throw invalid(host, `it is longer than ${MAX_HOST_INPUT} characters`);
  if (host.startsWith('[') || host.endsWith(']')) {
    const address = parseIp(host);
    if (address === null || address.family !== 6) {
      throw invalid(
        host,
        'brackets must hold an IPv6 address (zone ids such as %eth0 are not allowed)',
      );
    }
    return address.text;
  }
  let name = host.endsWith('.') ? host.slice(0, -1) : host;
  const literal = parseIp(name);
  if (literal !== null) return literal.text;
  if (name.includes(':')) {
    throw invalid(
      host,
      'it is not a valid IPv6 address (zone ids such as %eth0 are not allowed) and ":" is not allowed in names',
    );
  }
  if (NEVER_IN_HOST.test(name)) {
    throw invalid(
      host,
      'it contains whitespace, a control character or one of / \\ ? # @ % : [ ] < > ^ | " \' ` { }',
    );
  }
  if (PRINTABLE_ASCII_HOST.test(name)) {
    name = name.toLowerCase();
  } else {
    const ascii = domainToASCII(name);
    if (ascii === '') throw invalid(host, 'it is not a valid internationalised domain name');
    // IDN mapping can turn full-width digits and dots into an IP literal: judge it as one.
    const mapped = parseIp(ascii);
    if (mapped !== null) return mapped.text;
    name = ascii.toLowerCase();
    if (name.endsWith('.')) name = name.slice(0, -1);
  }
  return validateAsciiName(host, name);
}
