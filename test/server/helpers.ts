import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { connect, type Socket } from 'node:net';
import { WebSocket } from 'ws';
import type { Scope } from '../../src/auth/index.js';
import type { PolicyLayer } from '../../src/policy/index.js';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createSandboxRuntime,
  type EngineConfig,
  type SandboxRuntime,
} from '../../src/sandbox/index.js';
import {
  startControlPlane,
  type ControlPlane,
  type StartOptions,
  type ServerConfigInput,
} from '../../src/server/index.js';

let counter = 0;

/** Engine settings unique to this process, so parallel test files never reap each other's sandboxes. */
export function serverEngineConfig(dataDir: string): EngineConfig {
  const n = (process.pid % 5000) * 10 + (counter++ % 10);
  return {
    dataDir: join(dataDir, 'engine'),
    cgroupPrefix: `palisade-srvtest-${process.pid}-${counter}`,
    uidRange: { start: 1_700_000_000 + n * 100, count: 100 },
    workspacePoolBytes: 4 * 1024 ** 3,
  };
}

export interface Res {
  status: number;
  headers: Headers;
  text: string;
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export interface TestServer {
  cp: ControlPlane;
  engine: SandboxRuntime;
  engineConfig: EngineConfig;
  dataDir: string;
  url: string;
  adminKey: string;
  req(method: string, path: string, options?: ReqOptions): Promise<Res>;
  close(): Promise<void>;
}

export interface ReqOptions {
  key?: string | null;
  body?: unknown;
  rawBody?: string | Buffer;
  headers?: Record<string, string>;
}

export async function request(
  url: string,
  method: string,
  path: string,
  options: ReqOptions = {},
): Promise<Res> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.key) headers.authorization = `Bearer ${options.key}`;
  let body: string | Buffer | undefined;
  if (options.rawBody !== undefined) body = options.rawBody;
  else if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers['content-type'] ??= 'application/json';
  }
  const res = await fetch(url + path, { method, headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  let json: unknown;
  try {
    json = text.length > 0 ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

export async function startTestServer(
  options: {
    config?: Partial<ServerConfigInput>;
    dataDir?: string;
    engine?: SandboxRuntime;
    engineConfig?: EngineConfig;
    policyLayers?: PolicyLayer[];
    egress?: StartOptions['egress'];
  } = {},
): Promise<TestServer> {
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'palisade-srv-'));
  chmodSync(dataDir, 0o711);
  const engineConfig = options.engineConfig ?? serverEngineConfig(dataDir);
  const engine = options.engine ?? (await createSandboxRuntime(engineConfig));
  const cp = await startControlPlane({
    runtime: engine,
    ...(options.policyLayers ? { policyLayers: options.policyLayers } : {}),
    ...(options.egress ? { egress: options.egress } : {}),
    config: { dataDir, host: '127.0.0.1', port: 0, logLevel: 'silent', ...options.config },
  });
  const url = cp.url;
  return {
    cp,
    engine,
    engineConfig,
    dataDir,
    url,
    adminKey: cp.adminKey ?? '',
    req: (method, path, reqOptions) => request(url, method, path, reqOptions),
    async close() {
      await cp.close();
      if (!options.engine) await engine.close();
      // Only a directory this helper created, and only once the engine has released it.
      if (!options.dataDir && !options.engine) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Polls `check` every 25 ms until it returns a value; fails after `ms`. */
export async function waitFor<T>(
  check: () => Promise<T | undefined>,
  ms = 10_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what} not met in time`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** An approval as `GET /v1/approvals` lists it. */
export interface ApprovalView {
  id: string;
  sandboxId: string;
  execId: string | null;
  tool: string;
  command: string;
  path: string | null;
  policyReason: string;
  status: string;
}

/** The first pending approval visible to `approverKey` that `match` accepts, once it appears. */
export function waitForPendingApproval(
  server: Pick<TestServer, 'req'>,
  approverKey: string,
  match: (approval: ApprovalView) => boolean,
  ms = 10_000,
): Promise<ApprovalView> {
  return waitFor(
    async () => {
      const r = await server.req('GET', '/v1/approvals', { key: approverKey });
      assert.equal(r.status, 200, r.text);
      return (r.json.items as ApprovalView[]).find(match);
    },
    ms,
    'a matching pending approval',
  );
}

/** Approve or deny an approval as `approverKey`, with an optional reason. */
export function decideApproval(
  server: Pick<TestServer, 'req'>,
  id: string,
  decision: 'approve' | 'deny',
  approverKey: string,
  reason?: string,
): Promise<Res> {
  return server.req('POST', `/v1/approvals/${id}/${decision}`, {
    key: approverKey,
    body: reason === undefined ? {} : { reason },
  });
}

/** Mint an API key straight in the server's key store; returns the secret. */
export async function mintKey(
  server: Pick<TestServer, 'cp'>,
  name: string,
  scopes: Scope[],
  tenant = 'default',
): Promise<string> {
  return (await server.cp.app.keys.create({ tenant, name, scopes })).key;
}

/**
 * The two sides of an approval: an agent key that may run commands (`agent`), a human key that
 * may decide approvals (`human`), and a sandbox the agent created.
 */
export async function approvalParties(
  server: Pick<TestServer, 'cp' | 'req'>,
): Promise<{ agent: string; approver: string; sandbox: string }> {
  const agent = await mintKey(server, 'agent', [
    'sandboxes:read',
    'sandboxes:write',
    'sandboxes:exec',
  ]);
  const approver = await mintKey(server, 'human', ['approvals:write']);
  const r = await server.req('POST', '/v1/sandboxes', { key: agent, body: {} });
  assert.equal(r.status, 201, r.text);
  return { agent, approver, sandbox: r.json.id as string };
}

/**
 * Sends a raw WebSocket upgrade request (optionally from a chosen loopback source address) and
 * resolves with the status code, the raw response head and the still-open socket.
 */
export function rawUpgrade(
  url: string,
  headers: Record<string, string>,
  options: { path?: string; localAddress?: string } = {},
): Promise<{ status: number; head: string; socket: Socket }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: hostname,
      port: Number(port),
      ...(options.localAddress !== undefined ? { localAddress: options.localAddress } : {}),
    });
    let buf = '';
    socket.on('error', reject);
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        socket.removeAllListeners('data');
        resolve({ status: Number(buf.split(' ')[1]), head: buf.slice(0, end), socket });
      }
    });
    const lines = [
      `GET ${options.path ?? '/v1/ws'} HTTP/1.1`,
      `Host: ${hostname}:${port}`,
      'Upgrade: websocket',
      'Connection: Upgrade',
      `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
      'Sec-WebSocket-Version: 13',
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    ];
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  });
}

export interface RawRes {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export interface RequestFromOptions {
  key?: string;
  /** Sent as JSON (with `content-type: application/json` unless `headers` sets one). */
  body?: unknown;
  /** Sent as is. */
  rawBody?: string | Buffer;
  headers?: Record<string, string>;
}

/**
 * An HTTP request through node:http with a chosen loopback source address, so per-address
 * limits (the failed-auth throttle) can be exercised or kept apart; no connection reuse.
 */
export function requestFrom(
  baseUrl: string,
  source: string,
  method: string,
  path: string,
  options: RequestFromOptions = {},
): Promise<RawRes> {
  const url = new URL(path, baseUrl);
  const headers: Record<string, string> = { ...options.headers };
  if (options.key !== undefined) headers.authorization = `Bearer ${options.key}`;
  let body: string | Buffer | undefined;
  if (options.rawBody !== undefined) body = options.rawBody;
  else if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers['content-type'] ??= 'application/json';
  }
  if (body !== undefined) headers['content-length'] = String(Buffer.byteLength(body));
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname + url.search,
        method,
        headers,
        localAddress: source,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = text.length > 0 ? JSON.parse(text) : undefined;
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** A message from the `/v1/ws` stream. */
export interface WsMessage {
  type: string;
  [key: string]: unknown;
}

/** A `/v1/ws` client (authenticated with `key`) that records every message it receives. */
export class WsClient {
  readonly messages: WsMessage[] = [];
  readonly ws: WebSocket;
  readonly opened: Promise<void>;
  closeCode: number | null = null;

  constructor(url: string, key: string) {
    this.ws = new WebSocket(`${url.replace('http', 'ws')}/v1/ws`, {
      headers: { authorization: `Bearer ${key}` },
    });
    this.ws.on('message', (data) => this.messages.push(JSON.parse(String(data)) as WsMessage));
    this.ws.on('close', (code) => {
      this.closeCode = code;
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
    });
  }

  send(msg: unknown): void {
    this.ws.send(JSON.stringify(msg));
  }

  async waitFor(pred: (m: WsMessage) => boolean, ms = 15_000): Promise<WsMessage> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.messages.find(pred);
      if (found) return found;
      if (Date.now() > deadline)
        throw new Error(`no matching message; got ${JSON.stringify(this.messages).slice(0, 2000)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  output(execId: string): string {
    return this.messages
      .filter((m) => m.type === 'exec.output' && m.execId === execId)
      .map((m) => Buffer.from(String(m.data), 'base64').toString())
      .join('');
  }

  close(): void {
    this.ws.terminate();
  }
}
