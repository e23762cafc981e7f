// A plain HTTP upstream on 127.0.0.1 for the sandbox network tests: it records the paths it
// was asked for and answers `upstream <path>`. Two paths behave differently so tests can hold
// a connection open through the egress gateway:
//   /stream  sends `tick\n` every 100 ms and never ends;
//   /slow    answers after 1.5 s.
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface Upstream {
  port: number;
  /** Request paths, in arrival order. */
  hits: string[];
  /** Stops the server, cutting any open connection (a /stream never ends by itself). */
  close(): Promise<void>;
}

export async function startUpstream(): Promise<Upstream> {
  const hits: string[] = [];
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const server: Server = createServer((req, res) => {
    const path = req.url ?? '';
    hits.push(path);
    if (path === '/stream') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      const timer = setInterval(() => res.write('tick\n'), 100);
      timers.add(timer);
      res.on('close', () => {
        clearInterval(timer);
        timers.delete(timer);
      });
      return;
    }
    const delay = path === '/slow' ? 1500 : 0;
    const timer = setTimeout(() => {
      timers.delete(timer);
      res.end(`upstream ${path}`);
    }, delay);
    timers.add(timer);
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    hits,
    async close() {
      for (const t of timers) clearTimeout(t);
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
