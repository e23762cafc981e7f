/** `sandbox.network`: the sandbox's egress rules through the gateway. */
import { sandboxPath } from './commands.js';
import type { Transport } from './transport.js';
import type { NetworkInfo, NetworkRules } from './types.js';

export class Network {
  readonly #transport: Transport;
  readonly #path: string;

  constructor(transport: Transport, sandboxId: string) {
    this.#transport = transport;
    this.#path = `${sandboxPath(sandboxId)}/network`;
  }

  /** The sandbox's rules, the operator's, the enforced ones, gateway stats and recent denials. */
  async get(options: { signal?: AbortSignal } = {}): Promise<NetworkInfo> {
    return (
      await this.#transport.json<NetworkInfo>({
        method: 'GET',
        path: this.#path,
        signal: options.signal,
      })
    ).body;
  }

  /**
   * Replaces the sandbox's rules (a missing list is empty), live: open connections to
   * destinations the new rules deny are closed. A sandbox created without network cannot get
   * network later (ConflictError).
   */
  async update(rules: NetworkRules, options: { signal?: AbortSignal } = {}): Promise<NetworkInfo> {
    return (
      await this.#transport.json<NetworkInfo>({
        method: 'PUT',
        path: this.#path,
        json: {
          ...(rules.allow !== undefined ? { allow: rules.allow } : {}),
          ...(rules.deny !== undefined ? { deny: rules.deny } : {}),
        },
        signal: options.signal,
      })
    ).body;
  }
}
