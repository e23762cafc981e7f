export type {
  EgressEvent,
  EgressEventSink,
  EgressGateway,
  EgressGatewayOptions,
  EgressStats,
  GatewayLimits,
  Resolver,
} from './types.js';
export type { IpAddress, EgressPolicy } from '../policy/network/index.js';
export { createEgressGateway, DEFAULT_LIMITS, PROXY_PORT } from './gateway.js';
export { createSystemResolver } from './resolver.js';
export { createJsonlSink } from './sink.js';
export { egressPolicyFromFlags, formatDenials } from './flags.js';
export { parseClientHello, type ClientHelloResult } from './tls.js';
