import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** What the front proxy does with one request. */
export type FrontAction =
  | { kind: 'proxy' }
  | { kind: 'status'; status: number; retryAfter?: string; body?: string }
  | { kind: 'delay'; ms: number }
  /** Forward (the server acts on it), then drop the server's answer and say 503. */
  | { kind: 'forwardThen503' };

export interface FrontProxy {
  url: string;
  /** Every request seen, as "METHOD /path" (query stripped). */
  seen: string[];
  count(method: string, pathPrefix: string): number;
  /** Decides per request; default: proxy everything. */
  plan: (method: string, path: string, nth: number) => FrontAction;
  /** Forget what was seen (and the per-route counters); proxy everything again. */
  reset(): void;
  close(): Promise<void>;
}

/**
 * A real HTTP server in front of the real API: it can answer with an error status (503, 429
 * with Retry-After) or stall, and otherwise forwards the request unchanged. Used to count how
 * many attempts the SDK makes.
 */
export async function startFrontProxy(upstream: string): Promise<FrontProxy> {
  const target = new URL(upstream);
  const seen: string[] = [];
  const counts = new Map<string, number>();
  const front: FrontProxy = {
    url: '',
    seen,
    count: (method, prefix) => seen.filter((s) => s.startsWith(`${method} ${prefix}`)).length,
    plan: () => ({ kind: 'proxy' }),
    reset: () => {
      seen.length = 0;
      counts.clear();
      front.plan = () => ({ kind: 'proxy' });
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const key = `${req.method} ${path}`;
    seen.push(key);
    const nth = (counts.get(key) ?? 0) + 1;
    counts.set(key, nth);
    const action = front.plan(req.method ?? 'GET', path, nth);
    if (action.kind === 'status') {
      req.resume();
      res.writeHead(action.status, {
        'content-type': 'application/json',
        'x-request-id': `req_front_${seen.length}`,
        ...(action.retryAfter !== undefined ? { 'retry-after': action.retryAfter } : {}),
      });
      res.end(
        action.body ??
          JSON.stringify({
            code: action.status === 429 ? 'RATE_LIMITED' : 'UNAVAILABLE',
            message: `front proxy says ${action.status}`,
            requestId: `req_front_${seen.length}`,
          }),
      );
      return;
    }
    const forward = () => {
      const up = httpRequest(
        {
          host: target.hostname,
          port: target.port,
          method: req.method,
          path: req.url,
          headers: { ...req.headers, host: target.host },
        },
        (upRes) => {
          if (action.kind === 'forwardThen503') {
            upRes.resume();
            upRes.on('end', () => {
              res.writeHead(503, { 'content-type': 'application/json' });
              res.end(
                JSON.stringify({
                  code: 'UNAVAILABLE',
                  message: 'lost answer',
                  requestId: 'req_lost',
                }),
              );
            });
            return;
          }
          res.writeHead(upRes.statusCode ?? 502, upRes.headers);
          upRes.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      res.on('close', () => {
        if (!res.writableFinished) up.destroy();
      });
      req.pipe(up);
    };
    if (action.kind === 'delay') {
      const timer = setTimeout(forward, action.ms);
      res.on('close', () => clearTimeout(timer));
    } else forward();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  front.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return front;
}

/** A loopback port with nothing listening (bound, then released). */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
