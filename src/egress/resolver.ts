import { promises as dns } from 'node:dns';
import { PalisadeError } from '../errors/index.js';
import { parseIp } from '../policy/network/index.js';
import type { IpAddress } from '../policy/network/index.js';
import type { Resolver } from './types.js';

/** More addresses than this from one name are ignored (bounded work per connection). */
const MAX_ADDRESSES = 32;

/**
 * Resolves with the host's resolver (getaddrinfo: /etc/hosts, then DNS). getaddrinfo cannot
 * be cancelled, so an abort only stops waiting for it.
 */
export function createSystemResolver(): Resolver {
  return {
    async resolve(host: string, signal?: AbortSignal): Promise<IpAddress[]> {
      signal?.throwIfAborted();
      const lookup = dns.lookup(host, { all: true, verbatim: true });
      const results = await (signal === undefined ? lookup : raceAbort(lookup, signal));
      const addresses: IpAddress[] = [];
      for (const { address } of results.slice(0, MAX_ADDRESSES)) {
        const parsed = parseIp(address);
        if (parsed !== null) addresses.push(parsed);
      }
      if (addresses.length === 0) {
        throw new PalisadeError(
          'INVALID_ARGUMENT',
          `the name ${host} did not resolve to any address`,
        );
      }
      return addresses;
    },
  };
}

function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason ?? new Error('aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
