/**
 * Running-command limits in privilege-separated mode, where every command of every tenant runs
 * through the worker's single supervisor connection (at most 64 at once): one tenant at its
 * limit must not make another tenant's exec fail (002 M-15 / T-3), and the supervisor's own
 * cap, when reached, is a clear 429. Real `palisade serve` (split, as root) and a real
 * in-process supervisor.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isPalisadeError } from '../../src/errors/index.js';
import { createSandboxRuntime, type SandboxRuntime } from '../../src/sandbox/index.js';
import { startControlPlane } from '../../src/server/index.js';
import {
  connectRemoteRuntime,
  startSupervisor,
  type Supervisor,
} from '../../src/supervisor/index.js';
import { startPalisade, type Palisade } from '../security/fixture.js';
import { request, serverEngineConfig } from '../server/helpers.js';

const isRoot = process.getuid?.() === 0;
const SCOPES = ['sandboxes:exec', 'sandboxes:read', 'sandboxes:write'];

describe(
  'palisade serve as root: per-tenant running-exec limit',
  { skip: !isRoot && 'needs root' },
  () => {
    let p: Palisade;
    before(async () => {
      p = await startPalisade();
      assert.ok(p.workerPid, 'privilege-separated');
    });
    after(async () => {
      await p?.close();
    });

    it('tenant A saturating its limit (default 16, 12 per key) does not stop tenant B; A gets 429 naming the limit', async () => {
      const a1 = (await p.createKey({ tenant: 'tenant-a', name: 'a1', scopes: SCOPES })).key;
      const a2 = (await p.createKey({ tenant: 'tenant-a', name: 'a2', scopes: SCOPES })).key;
      const b = (await p.createKey({ tenant: 'tenant-b', name: 'b', scopes: SCOPES })).key;
      const boxA1 = await p.createSandbox({}, a1);
      const boxA2 = await p.createSandbox({}, a2);
      const boxB = await p.createSandbox({}, b);
      const bg = (key: string, box: string, command: string) =>
        p.req('POST', `/v1/sandboxes/${box}/exec`, {
          key,
          body: { command, background: true },
        });

      for (let i = 0; i < 12; i++) {
        const r = await bg(a1, boxA1, 'sleep 120');
        assert.equal(r.status, 202, r.text);
      }
      const keyLimited = await bg(a1, boxA1, 'sleep 120');
      assert.equal(keyLimited.status, 429, keyLimited.text);
      assert.equal(keyLimited.json.code, 'EXEC_LIMIT_REACHED');
      assert.match(keyLimited.json.message, /exec\.maxRunningPerKey = 12/);
      for (let i = 0; i < 4; i++) {
        const r = await bg(a2, boxA2, 'sleep 120');
        assert.equal(r.status, 202, r.text);
      }
      const tenantLimited = await p.req('POST', `/v1/sandboxes/${boxA2}/exec`, {
        key: a2,
        body: { command: 'echo one-more' },
      });
      assert.equal(tenantLimited.status, 429, tenantLimited.text);
      assert.equal(tenantLimited.json.code, 'EXEC_LIMIT_REACHED');
      assert.match(tenantLimited.json.message, /Tenant tenant-a already runs 16 commands/);
      assert.match(tenantLimited.json.message, /exec\.maxRunningPerTenant = 16/);
      assert.equal(tenantLimited.headers.get('retry-after'), '1');

      // Tenant B: foreground, streamed and background commands all run.
      const fg = await p.req('POST', `/v1/sandboxes/${boxB}/exec`, {
        key: b,
        body: { command: 'echo b-runs' },
      });
      assert.equal(fg.status, 200, fg.text);
      assert.equal(fg.json.stdout, 'b-runs\n');
      const streamed = await p.req('POST', `/v1/sandboxes/${boxB}/exec`, {
        key: b,
        body: { command: 'echo b-streams' },
        headers: { accept: 'text/event-stream' },
      });
      assert.equal(streamed.status, 200, streamed.text);
      assert.match(streamed.text, /b-streams[\s\S]*event: exit/);
      const bBg = await bg(b, boxB, 'echo b-background');
      assert.equal(bBg.status, 202, bBg.text);

      // Destroying A's sandboxes ends its commands and frees its slots.
      for (const [key, box] of [
        [a1, boxA1],
        [a2, boxA2],
      ] as const) {
        const r = await p.req('DELETE', `/v1/sandboxes/${box}`, { key });
        assert.equal(r.status, 200, r.text);
      }
      const boxA3 = await p.createSandbox({}, a1);
      let again = await p.req('POST', `/v1/sandboxes/${boxA3}/exec`, {
        key: a1,
        body: { command: 'echo a-again' },
      });
      for (let i = 0; i < 100 && again.status === 429; i++) {
        await new Promise((r) => setTimeout(r, 50));
        again = await p.req('POST', `/v1/sandboxes/${boxA3}/exec`, {
          key: a1,
          body: { command: 'echo a-again' },
        });
      }
      assert.equal(again.status, 200, again.text);
      assert.equal(again.json.stdout, 'a-again\n');
    });
  },
);

describe(
  'the supervisor connection cap, reached: a clear 429 (in-process)',
  { skip: !isRoot && 'needs root' },
  () => {
    let dir: string;
    let engine: SandboxRuntime;
    let supervisor: Supervisor;
    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'palisade-suplimit-'));
      chmodSync(dir, 0o711);
      engine = await createSandboxRuntime(serverEngineConfig(dir));
      // A tiny cap stands for the real 64, so the control plane's limits (set above it here)
      // are not what refuses.
      supervisor = await startSupervisor({
        runtime: engine,
        socketPath: join(dir, 'supervisor', 'supervisor.sock'),
        limits: { maxExecStreams: 2, maxConnections: 2 },
      });
    });
    after(async () => {
      await supervisor.close();
      await engine.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('an exec whose sandbox is destroyed ends on the worker too (execFailed), never left waiting', async () => {
      const remote = await connectRemoteRuntime({ socketPath: supervisor.socketPath });
      try {
        const info = await remote.create({});
        const handle = await remote.exec(info.id, { command: 'sleep 60' });
        await remote.destroy(info.id);
        await assert.rejects(
          Promise.race([
            handle.done,
            new Promise((_, reject) =>
              setTimeout(() => reject(new Error('done never settled')), 10_000),
            ),
          ]),
          (e: unknown) => isPalisadeError(e) && e.code !== 'INTERNAL',
        );
      } finally {
        remote.disconnect();
      }
    });

    it('an exec past the supervisor cap is 429 EXEC_LIMIT_REACHED saying it is server-wide and what to do', async () => {
      const remote = await connectRemoteRuntime({ socketPath: supervisor.socketPath });
      const dataDir = mkdtempSync(join(tmpdir(), 'palisade-suplimit-cp-'));
      chmodSync(dataDir, 0o711);
      const cp = await startControlPlane({
        runtime: remote,
        egressGateway: false,
        config: { dataDir, host: '127.0.0.1', port: 0, logLevel: 'silent' },
      });
      const api = (method: string, path: string, body?: unknown) =>
        request(cp.url, method, path, {
          key: cp.adminKey ?? '',
          ...(body !== undefined ? { body } : {}),
        });
      try {
        const created = await api('POST', '/v1/sandboxes', {});
        assert.equal(created.status, 201, created.text);
        const id = created.json.id as string;
        const ids: string[] = [];
        for (let i = 0; i < 2; i++) {
          const r = await api('POST', `/v1/sandboxes/${id}/exec`, {
            command: 'sleep 60',
            background: true,
          });
          assert.equal(r.status, 202, r.text);
          ids.push(r.json.id);
        }
        const refused = await api('POST', `/v1/sandboxes/${id}/exec`, { command: 'echo x' });
        assert.equal(refused.status, 429, refused.text);
        assert.equal(refused.json.code, 'EXEC_LIMIT_REACHED');
        assert.match(refused.json.message, /all tenants together/);
        assert.match(refused.json.message, /more than 2 commands running/);
        assert.match(refused.json.message, /Wait for some to finish/);
        assert.equal(refused.json.details.limit, 'supervisor.maxExecStreams');
        assert.equal(refused.headers.get('retry-after'), '1');
        assert.equal(cp.app.execs.runningForTenant('default'), 2, 'the refused exec holds no slot');
        for (const execId of ids) {
          await api('POST', `/v1/sandboxes/${id}/execs/${execId}/interrupt`);
        }
        let ok = await api('POST', `/v1/sandboxes/${id}/exec`, { command: 'echo after' });
        for (let i = 0; i < 100 && ok.status === 429; i++) {
          await new Promise((r) => setTimeout(r, 50));
          ok = await api('POST', `/v1/sandboxes/${id}/exec`, { command: 'echo after' });
        }
        assert.equal(ok.status, 200, ok.text);
        assert.equal(ok.json.stdout, 'after\n');
      } finally {
        await cp.close();
        remote.disconnect();
        rmSync(dataDir, { recursive: true, force: true });
      }
    });
  },
);
