/** A sandbox: lifecycle calls plus `commands`, `files` and `network`. */
import { PalisadeClient, type ClientOptions } from './client.js';
import { Commands, sandboxPath } from './commands.js';
import { Files } from './files.js';
import { Network } from './network.js';
import type {
  CreateSandboxOptions,
  ListSandboxesOptions,
  SandboxInfo,
  SandboxPage,
} from './types.js';

/** A client, or the options to make one (default: from PALISADE_URL / PALISADE_API_KEY). */
export type Connection = PalisadeClient | ClientOptions;

type Signal = { signal?: AbortSignal };

export class Sandbox {
  readonly id: string;
  readonly client: PalisadeClient;
  readonly commands: Commands;
  readonly files: Files;
  readonly network: Network;
  #info: SandboxInfo | undefined;

  /** Use Sandbox.create / Sandbox.connect or the client's methods. */
  constructor(client: PalisadeClient, info: SandboxInfo | string) {
    this.client = client;
    this.id = typeof info === 'string' ? info : info.id;
    sandboxPath(this.id);
    this.#info = typeof info === 'string' ? undefined : info;
    this.commands = new Commands(client.transport, this.id, client.timeoutMs);
    this.files = new Files(client.transport, this.id);
    this.network = new Network(client.transport, this.id);
  }

  static async create(
    options: CreateSandboxOptions = {},
    connection: Connection = {},
  ): Promise<Sandbox> {
    return clientOf(connection).createSandbox(options);
  }

  static async connect(
    id: string,
    connection: Connection = {},
    options: Signal = {},
  ): Promise<Sandbox> {
    return clientOf(connection).connectSandbox(id, options);
  }

  static async list(
    options: ListSandboxesOptions = {},
    connection: Connection = {},
  ): Promise<SandboxPage> {
    return clientOf(connection).listSandboxes(options);
  }

  /**
   * The info from the last call that returned it (create, connect, getInfo, pause, …);
   * undefined for a handle from client.sandbox(id) until such a call.
   */
  get info(): SandboxInfo | undefined {
    return this.#info;
  }

  async getInfo(options: Signal = {}): Promise<SandboxInfo> {
    this.#info = await this.client.getSandboxInfo(this.id, options);
    return this.#info;
  }

  /**
   * Destroys the sandbox (every process, its filesystem and network). The record stays
   * (state terminated) unless `purge`, which also deletes the record and its logs.
   */
  async kill(options: { purge?: boolean } & Signal = {}): Promise<void> {
    const { body } = await this.client.transport.json<SandboxInfo | undefined>({
      method: 'DELETE',
      path: sandboxPath(this.id),
      query: { purge: options.purge ? 'true' : undefined },
      signal: options.signal,
    });
    if (body) this.#info = body;
  }

  /** Freezes every process (cgroup freezer). */
  async pause(options: Signal = {}): Promise<SandboxInfo> {
    return this.#post('pause', undefined, options);
  }

  async resume(options: Signal = {}): Promise<SandboxInfo> {
    return this.#post('resume', undefined, options);
  }

  /** The sandbox now expires `timeoutMs` from now (at least 1000, at most the server's maximum). */
  async setTimeout(timeoutMs: number, options: Signal = {}): Promise<SandboxInfo> {
    return this.#post('timeout', { timeoutMs }, options);
  }

  async #post(action: string, json: unknown, options: Signal): Promise<SandboxInfo> {
    const { body } = await this.client.transport.json<SandboxInfo>({
      method: 'POST',
      path: `${sandboxPath(this.id)}/${action}`,
      ...(json !== undefined ? { json } : {}),
      signal: options.signal,
    });
    this.#info = body;
    return body;
  }
}

function clientOf(connection: Connection): PalisadeClient {
  return connection instanceof PalisadeClient ? connection : new PalisadeClient(connection);
}
