import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  createSandboxRuntime,
  type EngineConfig,
  type SandboxRuntime,
} from '../../src/sandbox/index.js';

let counter = 0;

/**
 * An engine with its own data directory, cgroup prefix and uid range, so test files running
 * in parallel never reap each other's sandboxes.
 */
export function testEngineConfig(
  name: string,
  overrides: Partial<EngineConfig> = {},
): EngineConfig {
  const n = (process.pid % 5000) * 10 + (counter++ % 10);
  return {
    dataDir: mkdtempSync(join(tmpdir(), `palisade-${name}-`)),
    cgroupPrefix: `palisade-test-${name}-${process.pid}-${counter}`,
    uidRange: { start: 1_600_000_000 + n * 100, count: 100 },
    workspacePoolBytes: 8 * 1024 ** 3,
    ...overrides,
  };
}

export async function startTestEngine(
  name: string,
  overrides: Partial<EngineConfig> = {},
): Promise<{ engine: SandboxRuntime; config: EngineConfig }> {
  const config = testEngineConfig(name, overrides);
  const engine = await createSandboxRuntime(config);
  return { engine, config };
}

/** Host pids whose real uid is `uid`. */
export function hostPidsOfUid(uid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const m = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${entry}/status`, 'utf8'));
      if (m && Number(m[1]) === uid) out.push(Number(entry));
    } catch {
      // process ended while we looked
    }
  }
  return out;
}

/** Cgroup directories named after the sandbox under any hierarchy. */
export function cgroupDirsFor(prefix: string, id: string): string[] {
  const root = '/sys/fs/cgroup';
  const found: string[] = [];
  for (const h of readdirSync(root)) {
    const dir = join(root, h, prefix, id);
    if (existsSync(dir)) found.push(dir);
  }
  if (existsSync(join(root, prefix, id))) found.push(join(root, prefix, id));
  return found;
}

export function mountsUnder(path: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4]?.startsWith(path));
}

export async function waitFor(cond: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return cond();
}
