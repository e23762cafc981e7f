/**
 * Egress rules and decisions. Two questions are answered separately because the gateway
 * meets them at different times: decideEgress (may the sandbox ask for this host and port?)
 * before DNS, and decideResolvedAddress (may it reach this address?) after DNS, so a name
 * that is allowed but resolves to 127.0.0.1 or 169.254.169.254 is still refused.
 */
import { PalisadeError } from '../../errors/index.js';
import { cidrContains, networkOf, parseCidr, type Cidr } from './cidr.js';
import { classifyIp, type Classification } from './classify.js';
import { normaliseHost } from './host.js';
import { isIpAddress, parseIp, type IpAddress } from './ip.js';

export type EgressRuleKind = 'domain' | 'wildcard' | 'ip' | 'cidr' | 'any';

export interface EgressRule {
  raw: string;
  kind: EgressRuleKind;
  /** normalised host (domain), suffix for wildcard ('example.com' for '*.example.com'), cidr for ip/cidr */
  host?: string;
  cidr?: Cidr;
  /** null = default ports (80, 443) */
  ports: number[] | null;
}

export interface EgressPolicy {
  allow: EgressRule[];
  deny: EgressRule[];
}

/** host = name or IP literal as the client asked */
export interface EgressTarget {
  host: string;
  port: number;
}

export interface EgressDecision {
  decision: 'allow' | 'deny';
  rule: EgressRule | null;
  reason: string;
}

/** Ports an allow rule without a port list permits. */
export const DEFAULT_EGRESS_PORTS: readonly number[] = Object.freeze([80, 443]);
export const MAX_EGRESS_RULES_PER_LIST = 1000;
export const MAX_EGRESS_RULE_LENGTH = 512;
/** Port ranges are expanded into lists; this bounds the memory one policy can take. */
export const MAX_EGRESS_POLICY_PORTS = 200_000;

const PORT_TEXT = /^[1-9][0-9]{0,4}$/;
const RULE_KINDS: ReadonlySet<string> = new Set(['domain', 'wildcard', 'ip', 'cidr', 'any']);

function quoteRule(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text);
}

function ruleError(text: string, problem: string): PalisadeError {
  return new PalisadeError('INVALID_POLICY', `egress rule ${quoteRule(text)}: ${problem}`, {
    rule: text.slice(0, MAX_EGRESS_RULE_LENGTH),
  });
}

function parsePort(rule: string, text: string): number {
  const port = PORT_TEXT.test(text) ? Number(text) : NaN;
  if (!(port >= 1 && port <= 65535)) {
    throw ruleError(
      rule,
      `"${text.slice(0, 20)}" is not a port; ports are whole numbers from 1 to 65535`,
    );
  }
  return port;
}

function parsePorts(rule: string, text: string): number[] {
  if (text === '')
    throw ruleError(
      rule,
      'there is nothing after ":"; give a port, a list (80,443) or a range (8000-8100)',
    );
  const ports = new Set<number>();
  for (const item of text.split(',')) {
    const dash = item.indexOf('-');
    if (dash < 0) {
      ports.add(parsePort(rule, item));
      continue;
    }
    const low = parsePort(rule, item.slice(0, dash));
    const high = parsePort(rule, item.slice(dash + 1));
    if (low > high) throw ruleError(rule, `port range ${item} is backwards; write ${high}-${low}`);
    for (let p = low; p <= high; p++) ports.add(p);
  }
  return [...ports].sort((a, b) => a - b);
}

/** Splits `host[:ports]`, where an IPv6 host with ports must be bracketed. */
function splitHostAndPorts(rule: string): { host: string; ports: string | null } {
  if (rule.startsWith('[')) {
    const close = rule.indexOf(']');
    if (close < 0) throw ruleError(rule, '"[" is not closed by "]"');
    let host = rule.slice(1, close);
    let rest = rule.slice(close + 1);
    if (rest.startsWith('/')) {
      const end = rest.indexOf(':');
      host += end < 0 ? rest : rest.slice(0, end);
      rest = end < 0 ? '' : rest.slice(end);
    }
    const inside = parseCidr(host);
    if (inside === null || inside.address.family !== 6) {
      throw ruleError(
        rule,
        'brackets must hold an IPv6 address or CIDR (zone ids such as %eth0 are not allowed)',
      );
    }
    if (rest === '') return { host, ports: null };
    if (!rest.startsWith(':')) throw ruleError(rule, 'only ":ports" may follow "]"');
    return { host, ports: rest.slice(1) };
  }
  const colons = rule.split(':').length - 1;
  // Two or more colons: an unbracketed IPv6 address or CIDR, which cannot carry ports.
  if (colons !== 1) return { host: rule, ports: null };
  const colon = rule.indexOf(':');
  return { host: rule.slice(0, colon), ports: rule.slice(colon + 1) };
}

function parseCidrRule(rule: string, host: string): Cidr {
  const cidr = parseCidr(host);
  if (cidr !== null) return cidr;
  const slash = host.indexOf('/');
  const address = parseIp(host.slice(0, slash));
  if (address === null)
    throw ruleError(rule, `"${host.slice(0, slash)}" before "/" is not an IP address`);
  const prefixText = host.slice(slash + 1);
  if (address.family === 6 && prefixText.includes(':')) {
    throw ruleError(
      rule,
      `to give ports with an IPv6 address or CIDR, bracket it: [${address.text}/${prefixText.split(':')[0]}]:${prefixText.split(':').slice(1).join(':')}`,
    );
  }
  const max = address.family === 4 ? 32 : 128;
  if (!/^(?:0|[1-9][0-9]{0,2})$/.test(prefixText) || Number(prefixText) > max) {
    throw ruleError(rule, `"/${prefixText}" is not a prefix length; use 0 to ${max}`);
  }
  const network = networkOf(address, Number(prefixText));
  throw ruleError(
    rule,
    `${address.text}/${prefixText} has host bits set; write ${network.text}/${prefixText} for the network or ${address.text} for one address`,
  );
}

/** Grammar (document it): `example.com`, `*.example.com` (subdomains only, not the apex), `example.com:8443`, `1.2.3.4`, `10.0.0.0/8:5432`, `[::1]:8080`, `fc00::/7`, port lists `example.com:80,443` and ranges `:8000-8100`, and `*` (any host; only meaningful with a port or in deny). Throws PalisadeError('INVALID_POLICY') naming the rule and what is wrong. */
export function parseEgressRule(text: string): EgressRule {
  if (typeof text !== 'string') {
    throw new PalisadeError(
      'INVALID_POLICY',
      'egress rule: expected a string such as "example.com:443"',
    );
  }
  if (text.length === 0) throw ruleError(text, 'it is empty');
  if (text.length > MAX_EGRESS_RULE_LENGTH) {
    throw ruleError(
      text,
      `it is ${text.length} characters long; rules are at most ${MAX_EGRESS_RULE_LENGTH}`,
    );
  }
  if (/[\s\x00-\x1f\x7f]/u.test(text))
    throw ruleError(text, 'it contains whitespace or a control character');
  const { host, ports: portsText } = splitHostAndPorts(text);
  const ports = portsText === null ? null : parsePorts(text, portsText);
  if (host === '') throw ruleError(text, 'the host is missing');

  if (host === '*') return { raw: text, kind: 'any', ports };
  if (host.includes('*')) {
    if (!host.startsWith('*.') || host.indexOf('*', 1) >= 0) {
      throw ruleError(
        text,
        'a wildcard is allowed only as a whole leading label, as in "*.example.com"',
      );
    }
    const suffix = normaliseRuleHost(text, host.slice(2));
    if (parseIp(suffix) !== null)
      throw ruleError(text, 'a wildcard must be followed by a domain name, not an IP address');
    return { raw: text, kind: 'wildcard', host: suffix, ports };
  }
  if (host.includes('/')) {
    const cidr = parseCidrRule(text, host);
    return { raw: text, kind: 'cidr', host: cidr.text, cidr, ports };
  }
  const normalised = normaliseRuleHost(text, host);
  const literal = parseCidr(normalised);
  if (literal !== null) return { raw: text, kind: 'ip', host: literal.text, cidr: literal, ports };
  return { raw: text, kind: 'domain', host: normalised, ports };
}

function normaliseRuleHost(rule: string, host: string): string {
  try {
    return normaliseHost(host);
  } catch (err) {
    const message = err instanceof PalisadeError ? err.message : 'it is not a valid host';
    throw ruleError(rule, message);
  }
}

function parseRuleList(value: unknown, field: string, where: string): EgressRule[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) {
    throw new PalisadeError('INVALID_POLICY', `${where}${field}: expected a list of rule strings`, {
      field,
    });
  }
  if (value.length > MAX_EGRESS_RULES_PER_LIST) {
    throw new PalisadeError(
      'INVALID_POLICY',
      `${where}${field}: ${value.length} rules; at most ${MAX_EGRESS_RULES_PER_LIST} are allowed (use wildcards or CIDRs)`,
      { field },
    );
  }
  return value.map((item: unknown, index) => {
    const at = `${field}[${index}]`;
    if (typeof item !== 'string') {
      throw new PalisadeError(
        'INVALID_POLICY',
        `${where}${at}: expected a string such as "example.com:443", got ${item === null ? 'null' : typeof item}`,
        { field: at },
      );
    }
    try {
      return parseEgressRule(item);
    } catch (err) {
      if (err instanceof PalisadeError) {
        throw new PalisadeError('INVALID_POLICY', `${where}${at}: ${err.message}`, {
          field: at,
          ...err.details,
        });
      }
      throw err;
    }
  });
}

/** Validates `{ allow?: string[], deny?: string[] }`; `source` (a file name) prefixes every error. Unknown keys are errors. */
export function parseEgressPolicy(
  input: { allow?: unknown; deny?: unknown },
  source?: string,
): EgressPolicy {
  const where = source === undefined || source === '' ? '' : `${source}: `;
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new PalisadeError(
      'INVALID_POLICY',
      `${where}network: expected an object with "allow" and/or "deny" lists`,
    );
  }
  for (const key of Object.keys(input)) {
    if (key !== 'allow' && key !== 'deny') {
      throw new PalisadeError(
        'INVALID_POLICY',
        `${where}unknown key ${JSON.stringify(key.slice(0, 40))}; an egress policy has only "allow" and "deny"`,
        { field: key.slice(0, 40) },
      );
    }
  }
  const policy = {
    allow: parseRuleList(input.allow, 'allow', where),
    deny: parseRuleList(input.deny, 'deny', where),
  };
  const portCount = [...policy.allow, ...policy.deny].reduce(
    (n, r) => n + (r.ports?.length ?? 0),
    0,
  );
  if (portCount > MAX_EGRESS_POLICY_PORTS) {
    throw new PalisadeError(
      'INVALID_POLICY',
      `${where}the rules list ${portCount} ports in total; at most ${MAX_EGRESS_POLICY_PORTS} are allowed (narrow the port ranges)`,
    );
  }
  return policy;
}

function hasPort(sorted: readonly number[], port: number): boolean {
  let low = 0;
  let high = sorted.length - 1;
  while (low <= high) {
    const mid = (low + high) >> 1;
    const value = sorted[mid] ?? 0;
    if (value === port) return true;
    if (value < port) low = mid + 1;
    else high = mid - 1;
  }
  return false;
}

/** Allow rules without ports mean the web ports; deny rules without ports mean every port. */
function allowCoversPort(rule: EgressRule, port: number): boolean {
  return hasPort(rule.ports ?? DEFAULT_EGRESS_PORTS, port);
}
function denyCoversPort(rule: EgressRule, port: number): boolean {
  return rule.ports === null || hasPort(rule.ports, port);
}

function isValidRule(r: EgressRule): boolean {
  if (typeof r !== 'object' || r === null || !RULE_KINDS.has(r.kind)) return false;
  if (r.ports !== null && !Array.isArray(r.ports)) return false;
  if (r.kind === 'ip' || r.kind === 'cidr')
    return r.cidr !== undefined && isIpAddress(r.cidr.address);
  if (r.kind === 'domain' || r.kind === 'wildcard') return typeof r.host === 'string';
  return true;
}

/** Policies are plain data a caller may have built by hand; a malformed one must not fail open. */
function assertValidPolicy(policy: EgressPolicy): void {
  let ok =
    typeof policy === 'object' &&
    policy !== null &&
    Array.isArray(policy.allow) &&
    Array.isArray(policy.deny);
  if (ok) {
    for (const r of policy.allow) if (!isValidRule(r)) ok = false;
    for (const r of policy.deny) if (!isValidRule(r)) ok = false;
  }
  if (!ok) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'invalid egress policy object; build it with parseEgressPolicy or parseEgressRule',
    );
  }
}

function invalidPort(port: unknown): boolean {
  return typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535;
}

/** Does an IP rule (ip/cidr/any) cover the address, directly or through its embedded IPv4? */
function ipRuleCovers(
  rule: EgressRule,
  classification: Classification,
  viaEmbedded: boolean,
): boolean {
  if (rule.kind === 'any') return true;
  if ((rule.kind !== 'ip' && rule.kind !== 'cidr') || rule.cidr === undefined) return false;
  if (cidrContains(rule.cidr, classification.address)) return true;
  const embedded = classification.embeddedIPv4;
  return viaEmbedded && embedded !== undefined && cidrContains(rule.cidr, embedded);
}

/**
 * May this allow rule open a special (non-public) address? Only a rule that names it by IP or
 * CIDR: never `*`, never a /0 (which means "anywhere", not "my LAN too"), never for the
 * unspecified address (it reaches this host), and for cloud metadata only the exact address.
 */
function unlocksSpecial(rule: EgressRule, classification: Classification): boolean {
  if ((rule.kind !== 'ip' && rule.kind !== 'cidr') || rule.cidr === undefined) return false;
  if (rule.cidr.prefix === 0 || classification.class === 'unspecified') return false;
  if (!cidrContains(rule.cidr, classification.address)) return false;
  if (classification.class === 'metadata') {
    return rule.cidr.prefix === (rule.cidr.address.family === 4 ? 32 : 128);
  }
  return true;
}

function deny(rule: EgressRule | null, reason: string): EgressDecision {
  return { decision: 'deny', rule, reason };
}

function decideAddress(
  policy: EgressPolicy,
  classification: Classification,
  port: number,
  asked: string,
): EgressDecision {
  const address = classification.address;
  for (const rule of policy.deny) {
    if (denyCoversPort(rule, port) && ipRuleCovers(rule, classification, true)) {
      return deny(rule, `${asked} port ${port} is denied by rule ${quoteRule(rule.raw)}`);
    }
  }
  if (classification.special) {
    const rule = policy.allow.find(
      (r) => allowCoversPort(r, port) && unlocksSpecial(r, classification),
    );
    if (rule !== undefined) {
      return {
        decision: 'allow',
        rule,
        reason: `${address.text} port ${port} is allowed by rule ${quoteRule(rule.raw)} (${classification.reason})`,
      };
    }
    const hint =
      classification.class === 'unspecified'
        ? 'it can never be allowed'
        : classification.class === 'metadata'
          ? 'only an allow rule naming this exact address can permit it'
          : 'only an allow rule naming it by IP or CIDR (not * or /0) can permit it';
    return deny(null, `${classification.reason}; ${hint}`);
  }
  return {
    decision: 'allow',
    rule: null,
    reason: `${address.text} is public and no deny rule covers it`,
  };
}

/** Deny rules first, then allow; nothing matched → deny. A name target matches only domain/wildcard/any rules; an IP-literal target matches only ip/cidr/any rules. Ports: a rule without ports allows only 80 and 443. Case-insensitive, trailing-dot-insensitive. Empty policy → deny everything. */
export function decideEgress(policy: EgressPolicy, target: EgressTarget): EgressDecision {
  assertValidPolicy(policy);
  if (typeof target !== 'object' || target === null) {
    throw new PalisadeError('INVALID_ARGUMENT', 'invalid egress target: expected { host, port }');
  }
  if (invalidPort(target.port)) {
    return deny(null, `port ${String(target.port).slice(0, 20)} is not a valid port (1-65535)`);
  }
  const port = target.port;
  let host: string;
  try {
    host = normaliseHost(target.host);
  } catch (err) {
    return deny(null, err instanceof PalisadeError ? err.message : 'invalid host');
  }
  const literal = parseIp(host);
  if (literal !== null) {
    const classification = classifyIp(literal);
    for (const rule of policy.deny) {
      if (denyCoversPort(rule, port) && ipRuleCovers(rule, classification, true)) {
        return deny(rule, `${literal.text} port ${port} is denied by rule ${quoteRule(rule.raw)}`);
      }
    }
    const rule = policy.allow.find(
      (r) => allowCoversPort(r, port) && ipRuleCovers(r, classification, false),
    );
    if (rule === undefined) return deny(null, `no allow rule matches ${literal.text} port ${port}`);
    if (!classification.special) {
      return {
        decision: 'allow',
        rule,
        reason: `${literal.text} port ${port} is allowed by rule ${quoteRule(rule.raw)}`,
      };
    }
    return decideAddress(policy, classification, port, literal.text);
  }
  const matchesName = (rule: EgressRule): boolean =>
    rule.kind === 'any' ||
    (rule.kind === 'domain' && rule.host === host) ||
    (rule.kind === 'wildcard' && rule.host !== undefined && host.endsWith(`.${rule.host}`));
  const denied = policy.deny.find((r) => denyCoversPort(r, port) && matchesName(r));
  if (denied !== undefined)
    return deny(denied, `${host} port ${port} is denied by rule ${quoteRule(denied.raw)}`);
  const allowed = policy.allow.find((r) => allowCoversPort(r, port) && matchesName(r));
  if (allowed === undefined) return deny(null, `no allow rule matches ${host} port ${port}`);
  return {
    decision: 'allow',
    rule: allowed,
    reason: `${host} port ${port} is allowed by rule ${quoteRule(allowed.raw)}`,
  };
}

/** For the gateway after DNS resolution: is this resolved address acceptable? Special (non-public) addresses are refused unless an allow ip/cidr rule (with a matching port) explicitly contains it; a deny cidr containing it refuses it even if public. */
export function decideResolvedAddress(
  policy: EgressPolicy,
  address: IpAddress,
  port: number,
): EgressDecision {
  assertValidPolicy(policy);
  if (!isIpAddress(address)) {
    throw new PalisadeError(
      'INVALID_ARGUMENT',
      'invalid resolved address: expected an IpAddress with 4 or 16 bytes',
    );
  }
  if (invalidPort(port))
    return deny(null, `port ${String(port).slice(0, 20)} is not a valid port (1-65535)`);
  const classification = classifyIp(address);
  return decideAddress(policy, classification, port, classification.address.text);
}
