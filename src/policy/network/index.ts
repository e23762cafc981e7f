/**
 * The network half of the policy engine: IP parsing and classification, CIDRs, host-name
 * normalisation, egress rules and the decisions the egress gateway makes with them.
 */
export { parseIp, ipFromBytes, unmapIpv4, type IpFamily, type IpAddress } from './ip.js';
export { classifyIp, type AddressClass, type Classification } from './classify.js';
export { parseCidr, cidrContains, type Cidr } from './cidr.js';
export { normaliseHost, MAX_HOST_LENGTH } from './host.js';
export {
  parseEgressRule,
  parseEgressPolicy,
  decideEgress,
  decideResolvedAddress,
  DEFAULT_EGRESS_PORTS,
  MAX_EGRESS_RULES_PER_LIST,
  MAX_EGRESS_RULE_LENGTH,
  MAX_EGRESS_POLICY_PORTS,
  type EgressRuleKind,
  type EgressRule,
  type EgressPolicy,
  type EgressTarget,
  type EgressDecision,
} from './egress.js';
