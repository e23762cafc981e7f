/**
 * `palisade doctor`: checks every host requirement, prints pass/fail with the fix for each,
 * then proves the whole chain by running a command in a real sandbox. Exit status 0 only if
 * sandboxes can be created.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { isPalisadeError } from '../errors/index.js';
import {
  checkEncryptionSupport,
  checkRequirements,
  defaultFscryptHelper,
  defaultHelperPath,
  readEncryptionStatus,
  type RequirementCheck,
} from '../sandbox/index.js';
import { startOneShotEngine } from './engine-config.js';

function line(c: RequirementCheck): string {
  const mark = c.ok ? 'PASS' : c.required ? 'FAIL' : 'WARN';
  return `[${mark}] ${c.name}: ${c.detail}${!c.ok && c.fix ? `\n       fix: ${c.fix}` : ''}\n`;
}

export async function doctorCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      json: { type: 'boolean' },
      'cgroups-optional': { type: 'boolean' },
      'no-smoke-test': { type: 'boolean' },
    },
    strict: true,
  });
  const cgroupsRequired = values['cgroups-optional'] !== true;
  const checks = checkRequirements({
    bwrapPath: 'bwrap',
    helperPath: defaultHelperPath(),
    cgroupsRequired,
  });
  checks.push(await workspaceEncryptionCheck());
  const staticOk = checks.every((c) => c.ok || !c.required);
  if (staticOk && values['no-smoke-test'] !== true) {
    checks.push(await smokeTest(cgroupsRequired));
  }
  const ok = checks.every((c) => c.ok || !c.required);
  if (values.json) {
    process.stdout.write(JSON.stringify({ ok, checks }, null, 2) + '\n');
  } else {
    for (const c of checks) process.stdout.write(line(c));
    if (!cgroupsRequired)
      process.stdout.write(
        'NOTE: cgroup limits relaxed by --cgroups-optional (development only)\n',
      );
    process.stdout.write(
      ok
        ? '\nThis host can run Palisade sandboxes.\n'
        : '\nSandboxes cannot be created on this host until the failures above are fixed.\n',
    );
  }
  return ok ? 0 : 1;
}

/** Engines encrypt workspaces by default ('required') and refuse to start without it. */
async function workspaceEncryptionCheck(): Promise<RequirementCheck> {
  const support = await checkEncryptionSupport();
  return {
    name: 'workspace encryption at rest',
    ok: support.supported,
    required: true,
    detail: support.reason,
    fix:
      "use a kernel with CONFIG_FS_ENCRYPTION, run 'make -C native', or start the engine with " +
      "workspaceEncryption: 'off' (workspaces then sit unencrypted on the host disk)",
  };
}

/** Creates a real sandbox and checks from inside that it is isolated. */
async function smokeTest(cgroupsRequired: boolean): Promise<RequirementCheck> {
  const name = 'sandbox smoke test';
  let engine;
  let dataDir: string;
  try {
    ({ engine, dataDir } = await startOneShotEngine({
      cgroups: cgroupsRequired ? 'required' : 'optional',
    }));
    const sb = await engine.create();
    const r = await engine.run(sb.id, {
      command:
        'id -u; ls /proc | grep -c "^[0-9]"; grep -E "^(CapEff|NoNewPrivs|Seccomp):" /proc/self/status',
      timeoutMs: 10_000,
    });
    const out = r.stdout.toString();
    const lines = out.trim().split('\n');
    const problems: string[] = [];
    if (r.exitCode !== 0)
      problems.push(`exit ${r.exitCode ?? r.signal}: ${r.stderr.toString().trim()}`);
    if (lines[0] !== '1000') problems.push(`uid inside is ${lines[0]}, expected 1000`);
    if (Number(lines[1]) > 4)
      problems.push(`${lines[1]} processes visible (host processes leak in)`);
    if (!/CapEff:\s+0+$/m.test(out)) problems.push('capabilities not dropped');
    if (!/NoNewPrivs:\s+1/.test(out)) problems.push('no_new_privs not set');
    if (!/Seccomp:\s+2/.test(out)) problems.push('seccomp filter not active');
    // From the host: every process of the sandbox runs as its own unprivileged uid.
    const hostUids = sandboxProcessUids(sb.hostUid);
    if (sb.hostUid === 0 || hostUids.length === 0 || hostUids.some((u) => u !== sb.hostUid)) {
      problems.push(
        `host-side uids ${JSON.stringify(hostUids)} are not all the sandbox uid ${sb.hostUid}`,
      );
    }
    // From the host: the workspace is encrypted at rest and its key is loaded.
    const encryption = await readEncryptionStatus(
      defaultFscryptHelper(),
      join(dataDir, 'workspaces', 'mnt', sb.id, 'workspace'),
    ).catch(() => undefined);
    if (!encryption?.encrypted || encryption.keyStatus !== 'present') {
      problems.push('the workspace is not encrypted at rest');
    }
    await engine.destroy(sb.id);
    return problems.length === 0
      ? {
          name,
          ok: true,
          required: true,
          detail: `sandbox ${sb.id} ran as uid 1000 (host uid ${sb.hostUid}) with no capabilities, no_new_privs and seccomp; its workspace is encrypted at rest`,
        }
      : { name, ok: false, required: true, detail: problems.join('; ') };
  } catch (err) {
    return {
      name,
      ok: false,
      required: true,
      detail: isPalisadeError(err) ? err.message : `unexpected error: ${(err as Error).message}`,
      fix: 'fix the failures above, then run palisade doctor again',
    };
  } finally {
    await engine?.close().catch(() => undefined);
  }
}

/** Real, effective, saved and filesystem uids of the host processes running as `uid`. */
function sandboxProcessUids(uid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const m = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(
        readFileSync(`/proc/${entry}/status`, 'utf8'),
      );
      if (m && m.slice(1).map(Number).includes(uid)) out.push(...m.slice(1).map(Number));
    } catch {
      // process ended
    }
  }
  return out;
}
