/**
 * Real upstream servers on loopback and real clients that talk to the gateway's unix socket
 * exactly as the in-sandbox bridge would (it forwards bytes unchanged).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import type { IncomingHttpHeaders, Server as HttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { connect as netConnect, createServer as createNetServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { parseEgressPolicy, parseIp } from '../../src/policy/network/index.js';
import type { EgressPolicy, IpAddress } from '../../src/policy/network/index.js';
import type { EgressEvent, EgressEventSink, Resolver } from '../../src/egress/index.js';

export function policy(allow: string[], deny: string[] = []): EgressPolicy {
  return parseEgressPolicy({ allow, deny }, 'test');
}

export function tempDir(prefix: string): { path: string; remove(): void } {
  // Short path: unix socket paths are limited to 107 bytes.
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Maps names to fixed answers (or a sequence of answers, one per call) and counts calls. */
export function mapResolver(
  table: Record<string, string[] | string[][]>,
): Resolver & { calls: Map<string, number> } {
  const calls = new Map<string, number>();
  return {
    calls,
    async resolve(host: string): Promise<IpAddress[]> {
      const n = calls.get(host) ?? 0;
      calls.set(host, n + 1);
      const entry = table[host];
      if (entry === undefined) throw new Error(`ENOTFOUND ${host}`);
      const answers = (
        Array.isArray(entry[0]) ? (entry as string[][])[Math.min(n, entry.length - 1)] : entry
      ) as string[];
      return answers.map((text) => {
        const ip = parseIp(text);
        if (ip === null) throw new Error(`bad test address ${text}`);
        return ip;
      });
    },
  };
}

export function collectingSink(): EgressEventSink & { events: EgressEvent[] } {
  const events: EgressEvent[] = [];
  return { events, emit: (event) => events.push(event) };
}

export async function waitFor<T>(check: () => T | undefined | false, timeoutMs = 3000): Promise<T> {
  const start = Date.now();
  for (;;) {
    const value = check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() - start > timeoutMs) throw new Error('timed out waiting for condition');
    await new Promise((r) => setTimeout(r, 10));
  }
}

export interface SeenRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** An HTTP server on 127.0.0.1 (or another loopback address) that records every request. */
export async function startHttpServer(host = '127.0.0.1'): Promise<{
  port: number;
  requests: SeenRequest[];
  connections: () => number;
  close(): Promise<void>;
  server: HttpServer;
}> {
  const requests: SeenRequest[] = [];
  let connections = 0;
  const server = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      requests.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString(),
      });
      res.setHeader('content-type', 'text/plain');
      res.end(`hello from ${host} ${req.url ?? ''}`);
    });
  });
  server.on('connection', () => connections++);
  const port = await listen(server, host);
  return {
    port,
    requests,
    connections: () => connections,
    server,
    close: () => closeServer(server),
  };
}

/** A self-signed certificate for the test names, made with openssl at test time. */
export function makeCertificate(names: string[]): { key: Buffer; cert: Buffer } {
  const dir = tempDir('pal-cert-');
  try {
    const san = names.map((n) => `DNS:${n}`).join(',');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        join(dir.path, 'key.pem'),
        '-out',
        join(dir.path, 'cert.pem'),
        '-days',
        '1',
        '-subj',
        `/CN=${names[0] ?? 'test'}`,
        '-addext',
        `subjectAltName=${san}`,
      ],
      { stdio: 'ignore' },
    );
    return {
      key: readFileSync(join(dir.path, 'key.pem')),
      cert: readFileSync(join(dir.path, 'cert.pem')),
    };
  } finally {
    dir.remove();
  }
}

export async function startHttpsServer(credentials: { key: Buffer; cert: Buffer }): Promise<{
  port: number;
  handshakes: () => number;
  close(): Promise<void>;
}> {
  let handshakes = 0;
  const server = createHttpsServer(credentials, (req, res) => {
    res.end(`tls hello ${req.headers.host ?? ''}`);
  });
  server.on('secureConnection', () => handshakes++);
  const port = await listen(server, '127.0.0.1');
  return { port, handshakes: () => handshakes, close: () => closeServer(server) };
}

/** A raw TCP server; `banner` is sent first (server-first protocols); everything received is echoed and counted. */
export async function startTcpServer(
  options: { banner?: string; payload?: Buffer; echo?: boolean; host?: string } = {},
): Promise<{
  port: number;
  received: () => number;
  connections: () => number;
  sockets: Set<Socket>;
  close(): Promise<void>;
}> {
  let received = 0;
  let connections = 0;
  const sockets = new Set<Socket>();
  const server = createNetServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    if (options.banner !== undefined) socket.write(options.banner);
    if (options.payload !== undefined) socket.end(options.payload);
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (options.echo !== false && !socket.writableEnded) socket.write(chunk);
    });
  });
  const port = await listen(server, options.host ?? '127.0.0.1');
  return {
    port,
    received: () => received,
    connections: () => connections,
    sockets,
    close: async () => {
      for (const s of sockets) s.destroy();
      await closeServer(server);
    },
  };
}

function listen(server: Server, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve((server.address() as AddressInfo).port));
  });
}

function closeServer(server: Server): Promise<void> {
  (server as HttpServer).closeAllConnections?.();
  return new Promise((resolve) => server.close(() => resolve()));
}

export interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** Sends a plain-HTTP proxy request (absolute-form) through the gateway socket. */
export function proxyGet(
  socketPath: string,
  url: string,
  headers: Record<string, string> = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const host = new URL(url).host;
    const req = httpRequest(
      { socketPath, path: url, method: 'GET', headers: { host, ...headers }, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString(),
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** Sends raw bytes to the gateway socket and collects everything until the gateway closes. */
export function rawExchange(
  socketPath: string,
  data: string | Buffer,
  timeoutMs = 3000,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(socketPath);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('rawExchange timed out'));
    }, timeoutMs);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    socket.write(data);
  });
}

export function parseRawResponse(raw: Buffer): RawResponse {
  const text = raw.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const headLines = text.slice(0, end < 0 ? text.length : end).split('\r\n');
  const status = Number((headLines[0] ?? '').split(' ')[1]);
  const headers: IncomingHttpHeaders = {};
  for (const line of headLines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { status, headers, body: end < 0 ? '' : text.slice(end + 4) };
}

/** Opens a CONNECT tunnel; resolves with the socket once the gateway answered 200, or the refusal. */
export function openConnect(
  socketPath: string,
  authority: string,
): Promise<{ ok: true; socket: Socket } | { ok: false; response: RawResponse }> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(socketPath);
    let buffer = Buffer.alloc(0);
    socket.on('error', reject);
    const onData = (chunk: Buffer): void => {
      buffer = Buffer.concat([buffer, chunk]);
      const end = buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      const response = parseRawResponse(buffer);
      if (response.status === 200) {
        socket.off('error', reject);
        socket.pause();
        const rest = buffer.subarray(end + 4);
        if (rest.length > 0) socket.unshift(rest);
        resolve({ ok: true, socket });
      } else {
        socket.on('end', () => resolve({ ok: false, response: parseRawResponse(buffer) }));
        socket.on('data', (c: Buffer) => (buffer = Buffer.concat([buffer, c])));
      }
    };
    socket.on('data', onData);
    socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  });
}

/** TLS over an open tunnel; resolves with the HTTP response text or rejects if the handshake fails. */
export function httpsOverTunnel(socket: Socket, servername: string, ca: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const tls: TLSSocket = tlsConnect({ socket, servername, ca });
    const chunks: Buffer[] = [];
    tls.on('secureConnect', () =>
      tls.write(`GET / HTTP/1.1\r\nHost: ${servername}\r\nConnection: close\r\n\r\n`),
    );
    tls.on('data', (c: Buffer) => chunks.push(c));
    tls.on('end', () => resolve(Buffer.concat(chunks).toString()));
    tls.on('error', reject);
    tls.on('close', () => resolve(Buffer.concat(chunks).toString()));
  });
}

/** Reads from a socket until `length` bytes arrived or it ends. */
export function readBytes(
  socket: Socket,
  length: number,
  timeoutMs = 3000,
): Promise<{ data: Buffer; ended: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let total = 0;
    const finish = (ended: boolean): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      resolve({ data: Buffer.concat(chunks), ended });
    };
    const onData = (c: Buffer): void => {
      chunks.push(c);
      total += c.length;
      if (total >= length) finish(false);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.on('data', onData);
    socket.once('end', () => finish(true));
    socket.once('close', () => finish(true));
    socket.resume();
  });
}

/** SOCKS5 handshake through the gateway socket; resolves with the reply code and the socket. */
export function socks5Connect(
  socketPath: string,
  target: { domain?: string; ipv4?: number[]; ipv6?: number[]; port: number },
  options: { methods?: number[]; command?: number } = {},
): Promise<{ methodReply: number; reply: number | null; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(socketPath);
    socket.on('error', reject);
    const methods = options.methods ?? [0x00];
    socket.write(Buffer.from([0x05, methods.length, ...methods]));
    let stage: 'method' | 'reply' = 'method';
    let buffer = Buffer.alloc(0);
    let methodReply = -1;
    const onData = (chunk: Buffer): void => {
      buffer = Buffer.concat([buffer, chunk]);
      if (stage === 'method' && buffer.length >= 2) {
        methodReply = buffer[1]!;
        buffer = buffer.subarray(2);
        if (methodReply !== 0x00) {
          socket.off('data', onData);
          return resolve({ methodReply, reply: null, socket });
        }
        stage = 'reply';
        let address: number[];
        if (target.domain !== undefined)
          address = [0x03, target.domain.length, ...Buffer.from(target.domain, 'latin1')];
        else if (target.ipv4 !== undefined) address = [0x01, ...target.ipv4];
        else address = [0x04, ...(target.ipv6 ?? [])];
        socket.write(
          Buffer.from([
            0x05,
            options.command ?? 0x01,
            0x00,
            ...address,
            target.port >> 8,
            target.port & 0xff,
          ]),
        );
      }
      if (stage === 'reply' && buffer.length >= 10) {
        socket.off('data', onData);
        socket.pause();
        const rest = buffer.subarray(10);
        if (rest.length > 0) socket.unshift(rest);
        resolve({ methodReply, reply: buffer[1]!, socket });
      }
    };
    socket.on('data', onData);
    socket.on('close', () => resolve({ methodReply, reply: null, socket }));
  });
}

/** The ClientHello a real TLS client sends for `servername`, captured from a loopback server. */
export async function captureClientHello(servername: string): Promise<Buffer> {
  const server = createNetServer();
  const port = await listen(server, '127.0.0.1');
  const hello = new Promise<Buffer>((resolve) => {
    server.once('connection', (socket) => {
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => {
        chunks.push(c);
        const all = Buffer.concat(chunks);
        if (all.length >= 5 && all.length >= 5 + all.readUInt16BE(3)) {
          resolve(all);
          socket.destroy();
        }
      });
      socket.on('error', () => {});
    });
  });
  const client = tlsConnect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false });
  client.on('error', () => {});
  const data = await hello;
  client.destroy();
  await closeServer(server);
  return data;
}
