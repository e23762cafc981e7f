import type { FastifyRequest } from 'fastify';

/** Query parameters whose names suggest a credential; their values never reach the log. */
const SECRET_PARAM = /token|key|secret|pass|auth|sig|cred|session/i;
/** An API key anywhere in a URL (path or query), e.g. a client that put it in the wrong place. */
const API_KEY = /psk_[A-Za-z0-9_-]*/g;

/**
 * The URL as logged. Palisade never takes keys from URLs, but clients do put them there
 * (`?token=…`, `?api_key=…`, a key pasted into the path); the request line is logged before
 * the request is refused, so the key would otherwise sit in the log.
 */
export function urlForLog(url: string): string {
  const masked = url.replace(API_KEY, 'psk_[redacted]');
  const q = masked.indexOf('?');
  if (q < 0) return masked;
  const query = masked
    .slice(q + 1)
    .split('&')
    .map((part) => {
      const eq = part.indexOf('=');
      if (eq < 0) return part;
      let name = part.slice(0, eq);
      try {
        name = decodeURIComponent(name);
      } catch {
        // a malformed escape: match on the raw text
      }
      return SECRET_PARAM.test(name) ? `${part.slice(0, eq)}=[redacted]` : part;
    })
    .join('&');
  return `${masked.slice(0, q)}?${query}`;
}

/** pino serializer for `req`: Fastify's default fields, with the URL passed through urlForLog. */
export function requestForLog(req: FastifyRequest): Record<string, unknown> {
  return {
    method: req.method,
    url: typeof req.url === 'string' ? urlForLog(req.url) : undefined,
    host: req.host,
    remoteAddress: req.ip,
    remotePort: req.socket?.remotePort,
  };
}
