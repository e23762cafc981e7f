import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdtempSync,
  renameSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  applyEnvFile,
  loadServeConfig,
  mergeFlagValues,
  parseEnvFile,
  PolicyFileWatcher,
  sha256Hex,
  toFlagArgs,
  type FlagValues,
  type PolicyFileEvent,
  type ServeConfigSchema,
} from '../../src/config/index.js';
import { isPalisadeError } from '../../src/errors/index.js';
import { startPalisade } from '../security/fixture.js';

const CLI = join(import.meta.dirname, '..', 'server', 'cli-entry.ts');

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'palisade-config-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function file(name: string, text: string, mode = 0o600): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  chmodSync(path, mode);
  return path;
}

function configError(pattern: RegExp) {
  return (err: unknown) => {
    assert.ok(isPalisadeError(err, 'INVALID_CONFIG'), String(err));
    assert.match(err.message, pattern);
    return true;
  };
}

describe('env file: only documented PALISADE_* variables', () => {
  it('sets the documented variables; quoting, comments and export are understood', () => {
    const path = file(
      'ok.env',
      [
        '# a comment',
        '',
        'export PALISADE_URL=http://127.0.0.1:7070   # trailing comment',
        'PALISADE_API_KEY="psk_abc_def"',
        "PALISADE_DATA_DIR='/srv/palisade data'",
      ].join('\n'),
    );
    const env: Record<string, string | undefined> = { PALISADE_URL: 'http://kept:1' };
    assert.deepEqual(applyEnvFile(path, env), ['PALISADE_API_KEY', 'PALISADE_DATA_DIR']);
    assert.deepEqual(env, {
      PALISADE_URL: 'http://kept:1',
      PALISADE_API_KEY: 'psk_abc_def',
      PALISADE_DATA_DIR: '/srv/palisade data',
    });
  });

  it('refuses PATH, NODE_OPTIONS, LD_PRELOAD, HOME and any other name, naming it, and sets nothing', () => {
    for (const name of [
      'PATH',
      'NODE_OPTIONS',
      'LD_PRELOAD',
      'HOME',
      'AGENTKIT_X',
      'PALISADE_TEST',
    ]) {
      const path = file(
        `bad-${name}.env`,
        `PALISADE_API_KEY=psk_x\n${name}=/tmp/evil\nPALISADE_URL=http://127.0.0.1:1\n`,
      );
      const env: Record<string, string | undefined> = {};
      assert.throws(
        () => applyEnvFile(path, env),
        configError(new RegExp(`bad-${name}\\.env:2: ${name} is not a Palisade setting`)),
      );
      assert.deepEqual(env, {}, `${name}: nothing may be set`);
    }
  });

  it('refuses control characters, oversize values, duplicates and malformed lines', () => {
    const cases: Array<[string, RegExp]> = [
      ['PALISADE_API_KEY=a\u0000b', /control character/],
      ['PALISADE_API_KEY="a\u001b[31mb"', /control character/],
      [`PALISADE_API_KEY=${'k'.repeat(5000)}`, /longer than 4096 bytes/],
      ['PALISADE_URL=http://a\nPALISADE_URL=http://b', /:2: PALISADE_URL is set twice/],
      ['PALISADE_URL=file:///etc/passwd', /must be an http/],
      ['PALISADE_DATA_DIR=relative/dir', /absolute path/],
      ['PALISADE_API_KEY="unterminated', /unterminated/],
      ['just words', /expected NAME=value/],
      ['BAD-NAME=1', /not a variable name/],
      ['PALISADE_API_KEY="a\\nb"', /only \\" and \\\\ escapes/],
    ];
    for (const [text, pattern] of cases) {
      assert.throws(() => parseEnvFile(text, 'test.env'), configError(pattern), text);
    }
  });

  it('refuses a group- or world-writable file with the chmod fix, and a file of another owner', () => {
    const loose = file('loose.env', 'PALISADE_URL=http://127.0.0.1:1\n', 0o620);
    assert.throws(() => applyEnvFile(loose, {}), configError(/chmod go-w .*loose\.env/));
    chmodSync(loose, 0o602);
    assert.throws(() => applyEnvFile(loose, {}), configError(/writable by group or others/));
    chmodSync(loose, 0o644);
    assert.deepEqual(applyEnvFile(loose, {}), ['PALISADE_URL']);
    if (process.geteuid?.() === 0) {
      chownSync(loose, 12345, 12345);
      assert.throws(() => applyEnvFile(loose, {}), configError(/owned by uid 12345/));
    }
    assert.throws(() => applyEnvFile(dir, {}), configError(/not a regular file/));
    assert.throws(() => applyEnvFile(join(dir, 'missing.env'), {}), configError(/ENOENT/));
  });

  it('palisade --environment-file refuses NODE_OPTIONS before anything runs (CLI)', () => {
    const marker = join(dir, 'pwned');
    const evil = file('evil.cjs', `require('fs').writeFileSync(${JSON.stringify(marker)}, 'x')`);
    const envFile = file('node-options.env', `NODE_OPTIONS=--require ${evil}\n`);
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, ['--import', 'tsx', CLI, ...args], {
        encoding: 'utf8',
        timeout: 30_000,
      });
    const r = cli('--environment-file', envFile, 'help');
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stderr, /NODE_OPTIONS is not a Palisade setting/);
    assert.equal(existsSync(marker), false);
    const ok = file('ok-cli.env', 'PALISADE_URL=http://127.0.0.1:9\n');
    const help = cli('--environment-file', ok, 'help');
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout, /Usage:/);
    // Node 20 itself would load --env-file unfiltered: Palisade refuses the name outright.
    const nodeFlag = cli('--env-file', ok, 'help');
    assert.equal(nodeFlag.status, 3);
    assert.match(nodeFlag.stderr, /--env-file is not a Palisade option.*--environment-file/);
  });
});

const SCHEMA: ServeConfigSchema = {
  flags: {
    host: { type: 'string' },
    port: { type: 'string' },
    'data-dir': { type: 'string' },
    policy: { type: 'string' },
    'behind-tls-proxy': { type: 'boolean' },
    'cors-origin': { type: 'string', multiple: true },
    config: { type: 'string' },
    'worker-socket': { type: 'string' },
  },
  exclude: ['config', 'worker-socket'],
  pathKeys: ['data-dir', 'policy'],
};

describe('serve configuration file', () => {
  it('reads YAML and JSON; relative paths are resolved against the file; flags override it', () => {
    const yaml = file(
      'serve.yaml',
      'host: 127.0.0.2\nport: 7071\ndata-dir: ./data\npolicy: /etc/p.yaml\nbehind-tls-proxy: true\ncors-origin:\n  - https://a.example\n',
    );
    const values = loadServeConfig(yaml, SCHEMA);
    assert.deepEqual(values, {
      host: '127.0.0.2',
      port: '7071',
      'data-dir': join(dir, 'data'),
      policy: '/etc/p.yaml',
      'behind-tls-proxy': true,
      'cors-origin': ['https://a.example'],
    });
    const flags: FlagValues = { port: '0', 'cors-origin': ['https://b.example'] };
    const merged = mergeFlagValues(values, flags);
    assert.equal(merged.port, '0');
    assert.deepEqual(merged['cors-origin'], ['https://b.example']);
    assert.equal(merged.host, '127.0.0.2');
    assert.deepEqual(toFlagArgs(merged, SCHEMA.flags), [
      '--host=127.0.0.2',
      '--port=0',
      `--data-dir=${join(dir, 'data')}`,
      '--policy=/etc/p.yaml',
      '--behind-tls-proxy',
      '--cors-origin=https://b.example',
    ]);
    const json = file('serve.json', '{"port": 0, "host": "::1"}');
    assert.deepEqual(loadServeConfig(json, SCHEMA), { port: '0', host: '::1' });
  });

  it('unknown keys, internal flags and wrong types are errors naming the file, line and key', () => {
    const cases: Array<[string, RegExp]> = [
      ['port: 1\nprot: 2\n', /bad\.yaml:2: unknown key "prot"; allowed keys are/],
      ['worker-socket: /tmp/s\n', /unknown key "worker-socket"/],
      ['config: other.yaml\n', /unknown key "config"/],
      ['behind-tls-proxy: "yes"\n', /"behind-tls-proxy" must be true or false/],
      ['port: [1]\n', /"port" must be a string/],
      ['port: -1\n', /"port" must be a string/],
      ['host: "a\\u0000b"\n', /control character/],
      ['- a\n- b\n', /must be a map of options/],
      ['port: 1\nport: 2\n', /not valid YAML or JSON/],
      ['a: &x [1]\nb: *x\n', /cannot be read: Alias/],
    ];
    for (const [text, pattern] of cases) {
      const path = file('bad.yaml', text);
      assert.throws(() => loadServeConfig(path, SCHEMA), configError(pattern), text);
    }
    const loose = file('loose.yaml', 'port: 1\n', 0o666);
    assert.throws(() => loadServeConfig(loose, SCHEMA), configError(/chmod go-w/));
  });
});

/** Collects a watcher's events. */
function watchInto(path: string, initial: string, pollMs = 0) {
  const events: PolicyFileEvent[] = [];
  const watcher = new PolicyFileWatcher({
    path,
    initialSha256: sha256Hex(initial),
    maxBytes: 1024,
    debounceMs: 50,
    pollMs,
    onChange: (e) => events.push(e),
  });
  watcher.start();
  return { events, watcher };
}

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await sleep(10);
  }
}

const texts = (events: PolicyFileEvent[]) =>
  events.map((e) => (e.kind === 'content' ? e.text : `error: ${e.message}`));

describe('policy file watcher', () => {
  it('reports in-place writes and renames over the file, once per content, never the unchanged start', async () => {
    const sub = mkdtempSync(join(dir, 'w1-'));
    const path = join(sub, 'policy.yaml');
    writeFileSync(path, 'v0');
    const { events, watcher } = watchInto(path, 'v0');
    try {
      await sleep(200);
      assert.deepEqual(texts(events), []);
      writeFileSync(path, 'v1');
      await until(() => events.length === 1);
      writeFileSync(join(sub, 'policy.yaml.tmp'), 'v2');
      renameSync(join(sub, 'policy.yaml.tmp'), path);
      await until(() => events.length === 2);
      writeFileSync(path, 'v2'); // same content again: not reported
      await sleep(300);
      assert.deepEqual(texts(events), ['v1', 'v2']);
      const last = events[1];
      assert.ok(last?.kind === 'content' && last.sha256 === sha256Hex('v2'));
      watcher.reload(); // SIGHUP: reported even though unchanged
      await until(() => events.length === 3);
      assert.deepEqual(texts(events), ['v1', 'v2', 'v2']);
    } finally {
      watcher.close();
    }
  });

  it('many rapid changes: the final content is always reported last', async () => {
    const sub = mkdtempSync(join(dir, 'w2-'));
    const path = join(sub, 'policy.yaml');
    writeFileSync(path, 'start');
    const { events, watcher } = watchInto(path, 'start');
    try {
      for (let i = 0; i < 200; i++) {
        if (i % 2 === 0) writeFileSync(path, `rapid-${i}`);
        else {
          writeFileSync(join(sub, `tmp-${i}`), `rapid-${i}`);
          renameSync(join(sub, `tmp-${i}`), path);
        }
        if (i % 50 === 0) await sleep(1);
      }
      await until(() => texts(events).at(-1) === 'rapid-199');
      const count = events.length;
      await sleep(300);
      assert.equal(events.length, count, 'nothing after the final content');
      assert.ok(count < 200, `debounced (${count} reports for 200 writes)`);
    } finally {
      watcher.close();
    }
  });

  it('a deleted, oversized or group-writable file is reported as an error; a file that reappears at once is not', async () => {
    const sub = mkdtempSync(join(dir, 'w3-'));
    const path = join(sub, 'policy.yaml');
    writeFileSync(path, 'a');
    const { events, watcher } = watchInto(path, 'a', 100);
    try {
      unlinkSync(path);
      writeFileSync(path, 'b'); // delete-and-recreate, as some editors save
      await until(() => events.length === 1);
      assert.deepEqual(texts(events), ['b']);
      writeFileSync(path, 'x'.repeat(2000));
      await until(() => events.length === 2);
      assert.match(texts(events)[1]!, /error: The policy file .* is 2000 bytes; the limit is 1024/);
      unlinkSync(path);
      await until(() => events.length === 3, 3000);
      assert.match(texts(events)[2]!, /error: Cannot read the policy file .*ENOENT/);
      writeFileSync(path, 'c');
      await until(() => events.length === 4);
      assert.equal(texts(events)[3], 'c');
      // A policy file others can write is refused (they could change the running policy).
      writeFileSync(path, 'd');
      chmodSync(path, 0o666);
      await until(() => events.length === 5);
      assert.match(texts(events)[4]!, /error: .*writable by group or others.*chmod go-w/);
      chmodSync(path, 0o644);
      writeFileSync(path, 'e');
      await until(() => events.length === 6);
      assert.equal(texts(events)[5], 'e');
    } finally {
      watcher.close();
    }
  });
});

describe('policy hot-reload without privilege separation (--single-process)', () => {
  it('a rewritten policy file applies to the next decision; an invalid one is refused and the old one stays', async () => {
    const policy = 'permissions:\n  default: allow\n  deny: ["Bash(hostname:*)"]\n';
    const p = await startPalisade({ singleProcess: true, policy });
    try {
      const path = join(p.dataDir, 'operator-policy.yaml');
      const sandbox = await p.createSandbox();
      const decide = async (command: string) =>
        (await p.req('POST', `/v1/sandboxes/${sandbox}/policy/check`, { body: { command } })).json
          .decision as string;
      const eventually = async (command: string, decision: string) => {
        const deadline = Date.now() + 10_000;
        while ((await decide(command)) !== decision) {
          if (Date.now() > deadline) throw new Error(`${command} never became ${decision}`);
          await sleep(50);
        }
      };
      assert.equal(await decide('hostname'), 'deny');
      assert.equal(await decide('uname'), 'allow');
      writeFileSync(path, 'permissions:\n  default: allow\n  deny: ["Bash(uname:*)"]\n');
      await eventually('uname', 'deny');
      assert.equal(await decide('hostname'), 'allow');
      const exec = await p.req('POST', `/v1/sandboxes/${sandbox}/exec`, {
        body: { command: 'uname' },
      });
      assert.equal(exec.status, 403, exec.text);
      writeFileSync(path, 'permissions: [not, a, map]\n');
      const deadline = Date.now() + 10_000;
      while (!/policy reload refused/.test(p.output().stderr)) {
        if (Date.now() > deadline) throw new Error('the refused reload was not logged');
        await sleep(50);
      }
      assert.equal(await decide('uname'), 'deny');
      const audit = await p.req('GET', '/v1/audit?type=policy.reload_failed');
      assert.equal(audit.json.items.length, 1, audit.text);
    } finally {
      await p.close();
    }
  });
});
