import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { FailedAuthThrottle, LruMap, RateLimiter } from '../../src/auth/index.js';
import { ChunkLog } from '../../src/server/chunk-log.js';
import { startTestServer, type TestServer } from './helpers.js';

describe('bounded in-memory stores', () => {
  it('LruMap never exceeds its bound and evicts the least recently used', () => {
    const m = new LruMap<number, number>(3);
    for (let i = 0; i < 100; i++) m.set(i, i);
    assert.equal(m.size, 3);
    assert.equal(m.get(96), undefined);
    assert.equal(m.get(97), 97);
    m.set(100, 100);
    assert.equal(m.get(98), undefined);
    assert.equal(m.get(97), 97);
  });

  it('rate limiter tracks a bounded number of keys and refills over time', () => {
    let now = 0;
    const limiter = new RateLimiter({
      perKey: {
        create: { burst: 1, perSecond: 1 },
        exec: { burst: 2, perSecond: 1 },
        write: { burst: 2, perSecond: 1 },
        read: { burst: 2, perSecond: 1 },
      },
      maxTrackedKeys: 50,
      now: () => now,
    });
    for (let i = 0; i < 10_000; i++) limiter.take(`k${i}`, 'read');
    assert.equal(limiter.trackedKeys, 50);
    assert.equal(limiter.take('a', 'create').allowed, true);
    const denied = limiter.take('a', 'create');
    assert.equal(denied.allowed, false);
    assert.equal(!denied.allowed && denied.retryAfterSeconds, 1);
    now += 1000;
    assert.equal(limiter.take('a', 'create').allowed, true);
  });

  it('the global bucket caps all keys together', () => {
    const spec = { burst: 1000, perSecond: 0 };
    const limiter = new RateLimiter({
      perKey: { create: spec, exec: spec, write: spec, read: spec },
      global: { create: { burst: 5, perSecond: 0.5 }, exec: spec, write: spec, read: spec },
      now: () => 0,
    });
    const results = Array.from({ length: 10 }, (_, i) => limiter.take(`key${i}`, 'create'));
    assert.equal(results.filter((r) => r.allowed).length, 5);
    const refused = results.find((r) => !r.allowed);
    assert.equal(refused && !refused.allowed && refused.scope, 'global');
  });

  it('failed-auth throttle is bounded, windows expire, and IPv6 counts per /64', () => {
    let now = 0;
    const t = new FailedAuthThrottle({
      maxFailures: 3,
      windowMs: 10_000,
      maxTrackedClients: 100,
      now: () => now,
    });
    for (let i = 0; i < 5000; i++) t.recordFailure(`10.0.${i >> 8}.${i & 255}`);
    assert.equal(t.trackedClients, 100);
    for (let i = 0; i < 3; i++) t.recordFailure(`2001:db8:1:2::${i + 1}`);
    assert.ok(t.retryAfterSeconds('2001:db8:1:2::ffff') > 0);
    assert.equal(t.retryAfterSeconds('2001:db8:1:3::1'), 0);
    now += 10_001;
    assert.equal(t.retryAfterSeconds('2001:db8:1:2::1'), 0);
  });

  it('chunk log keeps at most its byte bound and tells a late reader it missed output', () => {
    const log = new ChunkLog(100);
    for (let i = 0; i < 50; i++)
      log.push('stdout', Buffer.from(`line ${String(i).padStart(3, '0')}\n`));
    assert.ok(log.bytes <= 100);
    const read = log.read(0, 1_000_000);
    assert.equal(read.dropped, true);
    assert.match(Buffer.concat(read.chunks.map((c) => c.data)).toString(), /line 049\n$/);
    const again = log.read(read.nextCursor, 1000);
    assert.equal(again.chunks.length, 0);
    assert.equal(again.dropped, false);
    const huge = new ChunkLog(10);
    huge.push('stderr', Buffer.alloc(1000, 'x'));
    assert.equal(huge.bytes, 10);
  });
});

describe('bounded execution records over HTTP', () => {
  let s: TestServer;
  let id: string;
  before(async () => {
    s = await startTestServer({
      config: { exec: { maxExecRecords: 3, maxRunningPerSandbox: 2, maxLogBytesPerExec: 64 } },
    });
    id = (await s.req('POST', '/v1/sandboxes', { key: s.adminKey, body: {} })).json.id;
  });
  after(async () => {
    await s.close();
  });

  it('refuses running background execs beyond the per-sandbox limit, evicts finished ones, bounds logs', async () => {
    const a = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'sleep 30', background: true },
    });
    const b = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'sleep 30', background: true },
    });
    assert.equal(a.status, 202);
    assert.equal(b.status, 202);
    const c = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
      key: s.adminKey,
      body: { command: 'true', background: true },
    });
    assert.equal(c.status, 429);
    assert.match(c.json.message, /background commands/);
    for (const e of [a, b])
      await s.req('POST', `/v1/sandboxes/${id}/execs/${e.json.id}/interrupt`, { key: s.adminKey });
    const wait = async (execId: string) => {
      for (let i = 0; i < 100; i++) {
        const r = await s.req('GET', `/v1/sandboxes/${id}/execs/${execId}`, { key: s.adminKey });
        if (r.json.status === 'exited') return;
        await new Promise((res) => setTimeout(res, 50));
      }
      assert.fail('exec did not finish');
    };
    await wait(a.json.id);
    await wait(b.json.id);
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await s.req('POST', `/v1/sandboxes/${id}/exec`, {
        key: s.adminKey,
        body: { command: 'head -c 1000 /dev/zero | tr "\\0" z', background: true },
      });
      assert.equal(r.status, 202, r.text);
      ids.push(r.json.id);
      await wait(r.json.id);
    }
    assert.ok(s.cp.app.execs.recordCount <= 3);
    const evicted = await s.req('GET', `/v1/sandboxes/${id}/execs/${a.json.id}`, {
      key: s.adminKey,
    });
    assert.equal(evicted.status, 404);
    const logs = await s.req('GET', `/v1/sandboxes/${id}/execs/${ids[3]}/logs`, {
      key: s.adminKey,
    });
    const text = logs.json.chunks.map((x: { data: string }) => x.data).join('');
    assert.ok(text.length <= 64);
    assert.equal(logs.json.exec.truncated, true);
  });
});
