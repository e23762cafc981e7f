import { PalisadeError } from '../errors/index.js';
import { parseEgressPolicy, parseEgressRule } from '../policy/network/index.js';
import type { EgressPolicy, EgressRule } from '../policy/network/index.js';
import type { EgressEvent } from './types.js';

const DEFAULT_PORTS = [80, 443];

/**
 * The policy for `palisade run --allow-domain D --allow-cidr C --allow-port P`. Every allowed
 * domain and CIDR gets ports 80 and 443 plus each `--allow-port`. No flags = no network.
 * Rules are validated by the policy engine's parser, so flag errors read like policy errors.
 */
export function egressPolicyFromFlags(flags: {
  allowDomains: string[];
  allowCidrs: string[];
  allowPorts: number[];
}): EgressPolicy {
  for (const port of flags.allowPorts) {
    if (!Number.isSafeInteger(port) || port < 1 || port > 65535) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `--allow-port ${String(port)} is not a port number (1-65535)`,
      );
    }
  }
  const ports = [...new Set([...DEFAULT_PORTS, ...flags.allowPorts])].sort((a, b) => a - b);
  const withPorts = (text: string, flag: string): EgressRule => {
    const rule = parseEgressRule(text);
    if (rule.ports !== null) {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `${flag} ${text}: give the host only; use --allow-port for ports`,
      );
    }
    if (flag === '--allow-domain' && rule.kind !== 'domain' && rule.kind !== 'wildcard') {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `--allow-domain ${text}: not a domain name (use --allow-cidr for addresses)`,
      );
    }
    if (flag === '--allow-cidr' && rule.kind !== 'ip' && rule.kind !== 'cidr') {
      throw new PalisadeError(
        'INVALID_ARGUMENT',
        `--allow-cidr ${text}: not an IP address or CIDR`,
      );
    }
    return { ...rule, raw: `${rule.raw}:${ports.join(',')}`, ports };
  };
  const allow = [
    ...flags.allowDomains.map((d) => withPorts(d, '--allow-domain')),
    ...flags.allowCidrs.map((c) => withPorts(c, '--allow-cidr')),
  ];
  // Through the policy parser once more for its size limits; then the port-extended rules.
  parseEgressPolicy(
    { allow: [...flags.allowDomains, ...flags.allowCidrs], deny: [] },
    'command line',
  );
  return { allow, deny: [] };
}

/** Human-readable summary of denials for stderr after `palisade run`, or '' if there were none. */
export function formatDenials(events: EgressEvent[]): string {
  const denials = events.filter((e) => e.decision === 'deny');
  if (denials.length === 0) return '';
  const lines = [
    `palisade: ${denials.length} network connection${denials.length === 1 ? '' : 's'} blocked:`,
  ];
  for (const event of denials) {
    const target =
      event.host === '' ? '(malformed request)' : `${formatHost(event.host)}:${event.port}`;
    lines.push(`  ${event.protocol} ${printable(target)}: ${printable(event.reason)}`);
  }
  lines.push('  (allow a destination with --allow-domain, --allow-cidr or --allow-port)');
  return lines.join('\n') + '\n';
}

/** Text from the sandbox must not drive the user's terminal (escape sequences). */
function printable(text: string): string {
  const clean = text.replace(/[\x00-\x1f\x7f-\x9f]/g, '?');
  return clean.length > 300 ? `${clean.slice(0, 300)}...` : clean;
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
