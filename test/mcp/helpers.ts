import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface ToolOutcome {
  text: string;
  isError: boolean;
}

export interface McpSession {
  client: Client;
  call(name: string, args?: Record<string, unknown>): Promise<ToolOutcome>;
  toolNames(): Promise<string[]>;
  /** What `palisade mcp` wrote to stderr (stdio sessions only). */
  stderr(): string;
  close(): Promise<void>;
}

function wrap(client: Client, stderr: () => string): McpSession {
  return {
    client,
    async call(name, args = {}) {
      const r = await client.callTool({ name, arguments: args });
      const content = r.content as { type: string; text?: string }[];
      return {
        text: content.map((c) => (c.type === 'text' ? (c.text ?? '') : `[${c.type}]`)).join('\n'),
        isError: r.isError === true,
      };
    },
    async toolNames() {
      return (await client.listTools()).tools.map((t) => t.name);
    },
    stderr,
    close: () => client.close(),
  };
}

/** The real `palisade mcp` (from source) as a subprocess, driven by the official SDK Client. */
export async function stdioSession(
  url: string,
  key: string,
  extraEnv: Record<string, string> = {},
): Promise<McpSession> {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: ['--import', 'tsx', 'test/mcp/cli-entry.ts', 'mcp'],
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      PALISADE_URL: url,
      PALISADE_API_KEY: key,
      ...extraEnv,
    },
    stderr: 'pipe',
  });
  let err = '';
  transport.stderr?.on('data', (d: Buffer) => {
    if (err.length < 64 * 1024) err += d.toString('utf8');
  });
  const client = new Client({ name: 'palisade-test', version: '0.0.0' });
  await client.connect(transport);
  return wrap(client, () => err);
}

/** The official SDK Client over Streamable HTTP against /mcp of a running server. */
export async function httpSession(url: string, key: string): Promise<McpSession> {
  const transport = new StreamableHTTPClientTransport(new URL('/mcp', url), {
    requestInit: { headers: { authorization: `Bearer ${key}` } },
  });
  const client = new Client({ name: 'palisade-test', version: '0.0.0' });
  await client.connect(transport);
  return wrap(client, () => '');
}

export function sandboxIdIn(text: string): string {
  const m = /sb-[a-z2-7]{20}/.exec(text);
  assert.ok(m, `no sandbox id in: ${text}`);
  return m[0];
}
