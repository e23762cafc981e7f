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
