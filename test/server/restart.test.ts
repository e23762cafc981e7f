import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pidsInUidRange as pidsInRange } from '../helpers/processes.js';
import { spawnServe } from '../helpers/serve.js';
import { request } from './helpers.js';

const CLI = join(import.meta.dirname, 'cli-entry.ts');
const UID_START = 1_750_000_000 + (process.pid % 5000) * 100;
const UID_COUNT = 100;

const pidsInUidRange = () => pidsInRange(UID_START, UID_COUNT);

async function serve(
  dataDir: string,
): Promise<{ child: ChildProcess; url: string; adminKey: string | undefined }> {
  const served = await spawnServe({
    dataDir,
    logLevel: 'silent',
    engineUids: { start: UID_START, count: UID_COUNT },
    engineCgroup: `palisade-restart-${process.pid}`,
    startTimeoutMs: 30_000,
  });
  return { child: served.child, url: served.url, adminKey: served.adminKey };
}

describe('restart and crash consistency', () => {
  const children: ChildProcess[] = [];
  after(() => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  });

  it('after kill -9 during an exec, no sandbox process survives, state is consistent and the chain verifies', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'palisade-restart-'));
    const first = await serve(dataDir);
    children.push(first.child);
    assert.match(first.adminKey ?? '', /^psk_/);
    const key = first.adminKey!;
    const created = await request(first.url, 'POST', '/v1/sandboxes', { key, body: {} });
    assert.equal(created.status, 201, created.text);
    const id = created.json.id as string;
    const bg = await request(first.url, 'POST', `/v1/sandboxes/${id}/exec`, {
      key,
      body: { command: 'sleep 300', background: true },
    });
    assert.equal(bg.status, 202);
    // A foreground exec that is still running when the server dies.
    const inflight = request(first.url, 'POST', `/v1/sandboxes/${id}/exec`, {
      key,
      body: { command: 'sleep 300' },
    }).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(
      pidsInUidRange().length > 0,
      'the sandbox should have live processes before the crash',
    );
    first.child.kill('SIGKILL');
    await new Promise((r) => first.child.once('exit', r));
    await inflight;

    const second = await serve(dataDir);
    children.push(second.child);
    assert.equal(second.adminKey, undefined, 'the admin key is printed only on the first start');
    assert.deepEqual(pidsInUidRange(), [], 'no sandbox process may survive unaccounted for');
    const got = await request(second.url, 'GET', `/v1/sandboxes/${id}`, { key });
    assert.equal(got.status, 200);
    assert.equal(got.json.state, 'failed');
    assert.match(got.json.reason, /lost/);
    const lost = await request(second.url, 'GET', `/v1/audit?type=sandbox.lost&sandboxId=${id}`, {
      key,
    });
    assert.equal(lost.json.items.length, 1);
    // The new server works.
    const fresh = await request(second.url, 'POST', '/v1/sandboxes', { key, body: {} });
    assert.equal(fresh.status, 201);
    const ran = await request(second.url, 'POST', `/v1/sandboxes/${fresh.json.id}/exec`, {
      key,
      body: { command: 'echo ok' },
    });
    assert.equal(ran.json.stdout, 'ok\n');
    second.child.kill('SIGTERM');
    await new Promise((r) => second.child.once('exit', r));
    assert.deepEqual(pidsInUidRange(), []);

    const verify = spawnSync(
      process.execPath,
      ['--import', 'tsx', CLI, 'audit', 'verify', '--data-dir', dataDir],
      {
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    assert.equal(verify.status, 0, verify.stdout + verify.stderr);
    assert.match(verify.stdout, /audit chain OK/);
  });
});
