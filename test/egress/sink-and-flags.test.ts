import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { createJsonlSink, egressPolicyFromFlags, formatDenials } from '../../src/egress/index.js';
import type { EgressEvent } from '../../src/egress/index.js';
import { isPalisadeError } from '../../src/errors/index.js';
import { decideEgress, parseIp, decideResolvedAddress } from '../../src/policy/network/index.js';
import { tempDir } from './helpers.js';

function event(overrides: Partial<EgressEvent> = {}): EgressEvent {
  return {
    time: new Date(0).toISOString(),
    sandboxId: 'sb1',
    protocol: 'connect',
    host: 'example.test',
    port: 443,
    resolved: [],
    address: null,
    decision: 'deny',
    reason: 'no allow rule matches example.test port 443',
    rule: null,
    bytesIn: 0,
    bytesOut: 0,
    durationMs: 1,
    ...overrides,
  };
}

describe('createJsonlSink', () => {
  test('writes one JSON object per line, 0600, with hostile text escaped', async () => {
    const dir = tempDir('pal-sink-');
    try {
      const path = join(dir.path, 'egress.jsonl');
      const sink = createJsonlSink(path);
      sink.emit(event());
      sink.emit(event({ host: 'evil\n{"decision":"allow"}', decision: 'deny' }));
      await sink.close();
      sink.emit(event()); // after close: ignored, never throws
      const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
      assert.equal(lines.length, 2);
      const parsed = lines.map((l) => JSON.parse(l) as EgressEvent);
      assert.equal(parsed[1]!.host, 'evil\n{"decision":"allow"}');
      assert.equal(parsed[1]!.decision, 'deny');
      assert.equal(statSync(path).mode & 0o777, 0o600);
    } finally {
      dir.remove();
    }
  });

  test('is bounded: rotates to .1 at maxBytes, so at most two files of maxBytes exist', async () => {
    const dir = tempDir('pal-sink-');
    try {
      const path = join(dir.path, 'egress.jsonl');
      const sink = createJsonlSink(path, { maxBytes: 4096 });
      for (let i = 0; i < 200; i++) sink.emit(event({ port: i + 1 }));
      await sink.close();
      assert.ok(statSync(path).size <= 4096);
      assert.ok(statSync(`${path}.1`).size <= 4096);
      const last = readFileSync(path, 'utf8').trimEnd().split('\n').at(-1)!;
      assert.equal((JSON.parse(last) as EgressEvent).port, 200);
      assert.equal(sink.writeErrors, 0);
      assert.throws(
        () => createJsonlSink(path, { maxBytes: 10 }),
        (e) => isPalisadeError(e, 'INVALID_LIMIT'),
      );
    } finally {
      dir.remove();
    }
  });
});

describe('egressPolicyFromFlags', () => {
  test('no flags: no network at all', () => {
    const policy = egressPolicyFromFlags({ allowDomains: [], allowCidrs: [], allowPorts: [] });
    assert.equal(decideEgress(policy, { host: 'example.com', port: 443 }).decision, 'deny');
  });

  test('domains and wildcards get 80/443 plus --allow-port', () => {
    const policy = egressPolicyFromFlags({
      allowDomains: ['example.com', '*.npmjs.org'],
      allowCidrs: [],
      allowPorts: [8443],
    });
    assert.equal(decideEgress(policy, { host: 'example.com', port: 443 }).decision, 'allow');
    assert.equal(decideEgress(policy, { host: 'example.com', port: 8443 }).decision, 'allow');
    assert.equal(decideEgress(policy, { host: 'example.com', port: 22 }).decision, 'deny');
    assert.equal(decideEgress(policy, { host: 'registry.npmjs.org', port: 443 }).decision, 'allow');
    assert.equal(decideEgress(policy, { host: 'npmjs.org', port: 443 }).decision, 'deny');
  });

  test('--allow-cidr makes a private range reachable', () => {
    const policy = egressPolicyFromFlags({
      allowDomains: [],
      allowCidrs: ['10.0.0.0/8'],
      allowPorts: [5432],
    });
    const address = parseIp('10.1.2.3')!;
    assert.equal(decideResolvedAddress(policy, address, 5432).decision, 'allow');
    assert.equal(decideEgress(policy, { host: '10.1.2.3', port: 5432 }).decision, 'allow');
    assert.equal(decideResolvedAddress(policy, parseIp('192.168.0.1')!, 5432).decision, 'deny');
  });

  test('bad flags are clear errors', () => {
    const bad = (
      flags: { allowDomains?: string[]; allowCidrs?: string[]; allowPorts?: number[] },
      code: string,
    ) =>
      assert.throws(
        () => egressPolicyFromFlags({ allowDomains: [], allowCidrs: [], allowPorts: [], ...flags }),
        (e) => isPalisadeError(e) && e.code === code,
      );
    bad({ allowPorts: [0] }, 'INVALID_ARGUMENT');
    bad({ allowPorts: [70000] }, 'INVALID_ARGUMENT');
    bad({ allowDomains: ['example.com:22'] }, 'INVALID_ARGUMENT');
    bad({ allowDomains: ['10.0.0.0/8'] }, 'INVALID_ARGUMENT');
    bad({ allowCidrs: ['example.com'] }, 'INVALID_ARGUMENT');
    bad({ allowDomains: ['exa mple.com'] }, 'INVALID_POLICY');
  });
});

describe('formatDenials', () => {
  test('summarises denials for stderr and ignores allowed events', () => {
    assert.equal(formatDenials([]), '');
    assert.equal(formatDenials([event({ decision: 'allow' })]), '');
    const text = formatDenials([
      event(),
      event({ protocol: 'http', host: '::1', port: 80, reason: '::1 is loopback' }),
      event({ protocol: 'socks5', host: '', port: 0, reason: 'malformed SOCKS5 greeting' }),
    ]);
    assert.match(text, /^palisade: 3 network connections blocked:\n/);
    assert.match(
      text,
      / {2}connect example\.test:443: no allow rule matches example\.test port 443\n/,
    );
    assert.match(text, / {2}http \[::1\]:80: ::1 is loopback\n/);
    assert.match(text, /\(malformed request\)/);
    assert.match(text, /--allow-domain/);
  });
});
